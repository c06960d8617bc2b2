use std::process::ExitCode;

use clap::Parser;
use kiln::cli::{Cli, Command, RollbackCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => {
            let mut out = std::io::stdout().lock();
            return verdict(
                kiln::offline::validate::run(&args.files, args.schema_dir.as_deref(), &mut out)
                    .await
                    .map(|summary| {
                        eprintln!(
                            "kiln: {} draft(s) checked, {} invalid",
                            summary.drafts, summary.invalid
                        );
                        summary.passed()
                    }),
            );
        }
        Command::Render(args) => {
            let mut out = std::io::stdout().lock();
            let limits = args.limits();
            return verdict(
                kiln::offline::render::run(
                    &args.files,
                    &args.from_file,
                    &args.out,
                    limits,
                    &mut out,
                )
                .await
                .map(|summary| {
                    eprintln!(
                        "kiln: {} file(s) written to {}, {} problem(s)",
                        summary.written.len(),
                        args.out.display(),
                        summary.problems
                    );
                    summary.passed()
                }),
            );
        }
        Command::Run(args) => {
            kiln::telemetry::init(args.log_format);
            kiln::run::run(*args).await
        }
        Command::Crds(args) => match args.output_dir {
            Some(dir) => kiln::crdgen::write_dir(&dir),
            None => kiln::crdgen::all_yaml().map(|yaml| print!("{yaml}")),
        },
        Command::Rollback(RollbackCommand::Draft {
            name,
            to_revision,
            namespace,
        }) => kiln::rollback::draft(&name, to_revision, namespace.as_deref()).await,
        Command::Version => {
            println!("kiln {}", kiln::cli::VERSION);
            Ok(())
        }
    };
    verdict(result.map(|()| true))
}

/// Exit code 0 when the command succeeded and passed, 1 when it found errors or failed.
fn verdict(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("kiln: {error:#}");
            ExitCode::FAILURE
        }
    }
}
