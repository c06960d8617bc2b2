//! Logging: structured `tracing` output as text or JSON, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` wins over the default `info` level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .init(),
        LogFormat::Text => {
            let colour = use_colour(std::io::stdout().is_terminal());
            registry
                .with(fmt::layer().with_target(false).with_ansi(colour))
                .init()
        }
    }
}

/// Whether text logs carry ANSI colour codes: only on a terminal (the layer writes to
/// stdout). In a pod, a file or a pipe, escape codes would only litter the log collector's
/// lines and break `grep`.
fn use_colour(stdout_is_terminal: bool) -> bool {
    stdout_is_terminal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text layer as `init` builds it, writing into a buffer instead of stdout.
    fn text_log(colour: bool) -> String {
        use std::sync::{Arc, Mutex};
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let buffer = buffer.clone();
            move || Sink(buffer.clone())
        };
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_target(false)
                .with_ansi(colour)
                .with_writer(writer),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(name = "x", "reconciled");
        });
        let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).expect("utf-8 log")
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_colour_codes_unless_on_a_terminal() {
        assert!(!use_colour(false));
        assert!(use_colour(true));
        let plain = text_log(use_colour(false));
        assert!(plain.contains("reconciled"), "{plain}");
        assert!(!plain.contains('\u{1b}'), "escape codes in {plain:?}");
        // The check is meaningful: the same layer with colour does emit escape codes.
        assert!(text_log(use_colour(true)).contains('\u{1b}'));
    }
}
