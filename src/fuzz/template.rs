//! Template rendering with hostile templates: whatever the template, rendering ends (fuel),
//! its output stays within the limit, errors name the file, and the same template renders
//! the same way twice.
//!
//! Generated templates nest loops, conditionals, macros (recursive ones too), `set`, filters,
//! string repetition and broken syntax. Inside macro bodies and `set` blocks the sizes stay
//! small: minijinja buffers what those capture itself, beyond Kiln's output limit (a known
//! limit of the guarantee, stated in docs/reliability.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;

use super::run;
use crate::desired::job::render_template;

/// The output limit `render_template` enforces (kept in step with `desired::job`).
const MAX_RENDER_BYTES: usize = 4 * 1024 * 1024;
/// A generous bound on one render: fuel stops runaway templates long before this, even in an
/// unoptimised build on a busy machine.
const MAX_RENDER_TIME: Duration = Duration::from_secs(120);

fn expression(big: bool) -> BoxedStrategy<String> {
    let repeat = if big { 0u64..2_000_000 } else { 0u64..2_000 };
    let count = if big { 0u64..200_000 } else { 0u64..50 };
    prop_oneof![
        prop::sample::select(vec![
            "names",
            "cfg",
            "cfg.k",
            "names[0]",
            "names|length",
            "cfg|tojson",
            "names|join(',')",
            "missing",
            "cfg.missing",
            "names[99]",
            "1/0",
            "none",
            "loop.index",
            "i",
            "caller()",
            "self",
            "namespace()",
            "range(3)|list",
            "'a' ~ names",
            "cfg|items|list",
        ])
        .prop_map(str::to_owned),
        repeat.prop_map(|n| format!("'ab' * {n}")),
        count.prop_map(|n| format!("range({n})|length")),
        "[a-z0-9 +*/~|().'\"-]{0,12}",
    ]
    .boxed()
}

fn template(big: bool) -> impl Strategy<Value = String> {
    let count = if big { 0u64..100_000 } else { 0u64..20 };
    let leaf = prop_oneof![
        3 => "[a-zA-Z0-9 \n.,]{0,16}",
        3 => expression(big).prop_map(|e| format!("{{{{ {e} }}}}")),
        1 => prop::sample::select(vec![
            "{{", "}}", "{%", "%}", "{#", "#}", "{% endfor %}", "{% raw %}", "{%- if", "{{-",
            "\u{0}", "\u{202E}",
        ])
        .prop_map(str::to_owned),
    ];
    let expr = expression(big);
    leaf.prop_recursive(4, 24, 4, move |inner| {
        let body = prop::collection::vec(inner.clone(), 1..4).prop_map(|b| b.concat());
        prop_oneof![
            (count.clone(), body.clone())
                .prop_map(|(n, b)| format!("{{% for i in range({n}) %}}{b}{{% endfor %}}")),
            (expr.clone(), body.clone(), body.clone())
                .prop_map(|(c, a, b)| { format!("{{% if {c} %}}{a}{{% else %}}{b}{{% endif %}}") }),
            (expr.clone(), body.clone())
                .prop_map(|(e, b)| format!("{{% set v = {e} %}}{b}{{{{ v }}}}")),
            // Macro bodies are small templates: see the module docs.
            (0u32..50, template_small()).prop_map(|(n, b)| format!(
                "{{% macro m(n) %}}{b}{{% if n > 0 %}}{{{{ m(n - 1) }}}}{{% endif %}}\
                 {{% endmacro %}}{{{{ m({n}) }}}}"
            )),
            prop::collection::vec(inner, 2..4).prop_map(|b| b.concat()),
        ]
    })
}

fn template_small() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        "[a-z ]{0,8}",
        expression(false).prop_map(|e| format!("{{{{ {e} }}}}")),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        (0u64..10, prop::collection::vec(inner, 1..3))
            .prop_map(|(n, b)| format!("{{% for i in range({n}) %}}{}{{% endfor %}}", b.concat()))
    })
    .boxed()
}

#[test]
fn fuzz_templates() {
    let context = json!({"names": ["x", "y"], "cfg": {"k": 1, "s": "é\u{0}"}});
    let input = prop_oneof![
        3 => template(false),
        2 => template(true),
        1 => any::<String>(),
    ];
    // How often the limits were what stopped a template: the figures show they were reached.
    let outcomes: [AtomicU64; 4] = Default::default();
    let slowest = AtomicU64::new(0);
    run("template", 32, input, |source| {
        let start = Instant::now();
        let first = render_template("dir/file.txt", &source, &context);
        let took = start.elapsed();
        slowest.fetch_max(took.as_millis() as u64, Ordering::Relaxed);
        prop_assert!(took < MAX_RENDER_TIME, "rendering took {:?}", took);
        let outcome = match &first {
            Ok(_) => 0,
            Err(e) if e.detail.contains("out of fuel") => 1,
            Err(e) if e.detail.contains("rendered output is larger") => 2,
            Err(_) => 3,
        };
        outcomes[outcome].fetch_add(1, Ordering::Relaxed);
        match &first {
            Ok(out) => prop_assert!(out.len() <= MAX_RENDER_BYTES, "{} bytes", out.len()),
            Err(e) => {
                prop_assert_eq!(e.path.as_str(), "dir/file.txt");
                prop_assert!(e.to_string().starts_with("dir/file.txt: "));
            }
        }
        // Reconciling twice must not write a different file: rendering is deterministic.
        let second = render_template("dir/file.txt", &source, &context);
        prop_assert_eq!(first, second);
        Ok(())
    });
    let [ok, fuel, output, other] = outcomes.map(|n| n.into_inner());
    eprintln!(
        "fuzz template outcomes (shrinking included): {ok} rendered, {fuel} stopped by fuel, \
         {output} stopped by the output limit, {other} other errors; slowest render {} ms",
        slowest.into_inner()
    );
}
