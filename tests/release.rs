//! The release chain: the tag `vX.Y.Z` releases the crate version X.Y.Z (Cargo.toml), the
//! chart X.Y.Z whose appVersion is X.Y.Z, and the image `<repository>:X.Y.Z` that the chart
//! deploys by default and that `.github/workflows/release.yml` pushes. No cluster.
//!
//! The release workflow runs this test with `KILN_RELEASE_TAG` set to the pushed tag and
//! publishes nothing unless it passes; without the variable (`cargo test`) the tag is not
//! checked, everything else is. hack/test-chart.sh checks the rendered side: the default
//! Deployment runs `<repository>:<crate version>`.

use std::path::Path;

use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CHART: &str = "charts/kiln/Chart.yaml";
const VALUES: &str = "charts/kiln/values.yaml";
const WORKFLOW: &str = ".github/workflows/release.yml";
/// The step of the workflow that checks the tag: this test, with the tag.
const TAG_CHECK: &str = "cargo test --locked --test release";

fn yaml(path: &str) -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text<'a>(doc: &'a Value, pointer: &str) -> Option<&'a str> {
    doc.pointer(pointer).and_then(Value::as_str)
}

/// Every broken link of the chain, one line each naming the file to fix; empty when it holds.
fn chain_problems(version: &str, chart: &Value, values: &Value, workflow: &Value) -> Vec<String> {
    let expect = |what: String, found: Option<&str>, want: &str| {
        (found != Some(want)).then(|| match found {
            Some(found) => format!("{what} is {found:?}, expected {want:?}"),
            None => format!("{what} is missing (or not a string), expected {want:?}"),
        })
    };
    let mut problems: Vec<String> = Vec::new();
    // The chart is released with the operator, from the same tag: one version for both.
    problems.extend(expect(
        format!("{CHART} version"),
        text(chart, "/version"),
        version,
    ));
    problems.extend(expect(
        format!("{CHART} appVersion"),
        text(chart, "/appVersion"),
        version,
    ));
    // The default image tag is appVersion (templates/_helpers.tpl) unless values set one.
    let tag = text(values, "/image/tag");
    if tag != Some("") && tag != Some(version) {
        problems.push(format!(
            "{VALUES} image.tag is {}: leave it \"\" (the chart's appVersion) or set {version:?}",
            tag.map_or("missing".to_owned(), |t| format!("{t:?}"))
        ));
    }
    problems.extend(expect(
        format!("{VALUES} image.digest"),
        text(values, "/image/digest"),
        "",
    ));
    let repository = text(values, "/image/repository").unwrap_or_default();
    problems.extend(expect(
        format!("{WORKFLOW} env.IMAGE (where the release pushes the image)"),
        text(workflow, "/env/IMAGE"),
        repository,
    ));
    let tags = workflow.pointer("/on/push/tags");
    if tags != Some(&serde_json::json!(["v*"])) {
        problems.push(format!(
            "{WORKFLOW} on.push.tags is {tags:?}, expected [\"v*\"]"
        ));
    }
    problems.extend(tag_gate_problems(workflow));
    problems
}

/// The workflow checks the tag before anything else: one job runs [`TAG_CHECK`] with
/// `KILN_RELEASE_TAG` set to the tag, and every other job needs it, directly or not.
fn tag_gate_problems(workflow: &Value) -> Vec<String> {
    let Some(jobs) = workflow.get("jobs").and_then(Value::as_object) else {
        return vec![format!("{WORKFLOW} has no jobs")];
    };
    let checks_tag = |job: &Value| {
        let steps = job.get("steps").and_then(Value::as_array);
        steps.into_iter().flatten().any(|step| {
            text(step, "/run").is_some_and(|run| run.trim() == TAG_CHECK)
                && text(step, "/env/KILN_RELEASE_TAG") == Some("${{ github.ref_name }}")
        })
    };
    let gates: Vec<&String> = jobs
        .iter()
        .filter(|(_, j)| checks_tag(j))
        .map(|(n, _)| n)
        .collect();
    let [gate] = gates[..] else {
        return vec![format!(
            "{WORKFLOW}: expected one job with a step `run: {TAG_CHECK}` and \
             `env: {{KILN_RELEASE_TAG: ${{{{ github.ref_name }}}}}}`, found {gates:?}"
        )];
    };
    let needs = |name: &str| -> Vec<String> {
        match jobs.get(name).and_then(|j| j.get("needs")) {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut problems = Vec::new();
    for name in jobs.keys().filter(|name| *name != gate) {
        // Follow `needs` to the roots; the job is gated when the tag check is among them.
        let (mut seen, mut todo) = (Vec::new(), needs(name));
        while let Some(next) = todo.pop() {
            if !seen.contains(&next) {
                todo.extend(needs(&next));
                seen.push(next);
            }
        }
        if !seen.contains(gate) {
            problems.push(format!(
                "{WORKFLOW}: job {name} does not need job {gate} (the tag check)"
            ));
        }
    }
    problems
}

/// Why `tag` cannot release crate version `version`, if it cannot.
fn tag_problem(tag: &str, version: &str) -> Option<String> {
    (tag != format!("v{version}")).then(|| {
        format!(
            "the tag {tag:?} does not release Kiln {version}: \
             the tag must be \"v{version}\" (Cargo.toml's version)"
        )
    })
}

#[test]
fn the_crate_chart_image_and_workflow_versions_agree() {
    let problems = chain_problems(VERSION, &yaml(CHART), &yaml(VALUES), &yaml(WORKFLOW));
    assert!(
        problems.is_empty(),
        "the release chain is broken:\n  {}",
        problems.join("\n  ")
    );
}

/// The release workflow's gate: with `KILN_RELEASE_TAG` set, it must be `v` + the crate version.
#[test]
fn the_release_tag_is_v_and_the_crate_version() {
    let Some(tag) = std::env::var_os("KILN_RELEASE_TAG") else {
        return;
    };
    let tag = tag.to_string_lossy();
    if let Some(problem) = tag_problem(&tag, VERSION) {
        panic!("{problem}");
    }
}

#[test]
fn a_tag_must_be_v_and_the_exact_version() {
    assert_eq!(tag_problem("v1.2.3", "1.2.3"), None);
    assert_eq!(tag_problem("v1.2.3-rc.1", "1.2.3-rc.1"), None);
    for tag in [
        "1.2.3",
        "v1.2.4",
        "v1.2.3-rc.1",
        "v1.2",
        "V1.2.3",
        "v1.2.3 ",
        "release-1.2.3",
        "",
    ] {
        let problem = tag_problem(tag, "1.2.3").unwrap_or_else(|| panic!("{tag:?} was accepted"));
        assert!(problem.contains("\"v1.2.3\""), "{problem}");
    }
}

/// Each link, changed alone, breaks the chain, and the message names what to fix.
#[test]
fn a_drifted_link_breaks_the_chain() {
    let (chart, values, workflow) = (yaml(CHART), yaml(VALUES), yaml(WORKFLOW));
    type Edit = fn(&mut Value, &mut Value, &mut Value);
    let cases: [(&str, Edit, &str); 9] = [
        (
            "crate version bumped alone",
            |_, _, _| {},
            "Chart.yaml version",
        ),
        (
            "chart version",
            |c, _, _| c["version"] = "9.9.9".into(),
            "Chart.yaml version",
        ),
        (
            "appVersion",
            |c, _, _| c["appVersion"] = "9.9.9".into(),
            "Chart.yaml appVersion",
        ),
        (
            "values tag",
            |_, v, _| v["image"]["tag"] = "latest".into(),
            "image.tag",
        ),
        (
            "values digest",
            |_, v, _| v["image"]["digest"] = "sha256:00".into(),
            "image.digest",
        ),
        (
            "image repository",
            |_, v, _| v["image"]["repository"] = "example.org/kiln".into(),
            "env.IMAGE",
        ),
        (
            "workflow trigger",
            |_, _, w| w["on"]["push"]["tags"] = serde_json::json!(["*"]),
            "on.push.tags",
        ),
        (
            "tag check removed",
            |_, _, w| w["jobs"]["version"]["steps"] = serde_json::json!([]),
            "expected one job with a step",
        ),
        (
            "a job that skips the tag check",
            |_, _, w| w["jobs"]["chart"]["needs"] = serde_json::json!([]),
            "job chart does not need job version",
        ),
    ];
    for (name, edit, expected) in cases {
        let (mut c, mut v, mut w) = (chart.clone(), values.clone(), workflow.clone());
        edit(&mut c, &mut v, &mut w);
        let version = if name.starts_with("crate") {
            "9.9.9"
        } else {
            VERSION
        };
        let problems = chain_problems(version, &c, &v, &w).join("\n");
        assert!(
            problems.contains(expected),
            "{name}: expected a problem with {expected:?}, got:\n{problems}"
        );
    }
}
