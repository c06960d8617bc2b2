//! What a job's workspace should hold, decided without touching disk or cluster: rendered
//! templates, `plan.json`, the planned files still missing, the archive's name.

use std::collections::BTreeSet;

use crate::api::job::Plan;

/// The file the plan is written to, next to the project's files.
pub const PLAN_FILE: &str = "plan.json";

/// A template that could not be rendered, located precisely enough to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {}{detail}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct TemplateError {
    pub path: String,
    pub line: Option<usize>,
    pub detail: String,
}

/// Limits on what a template may do, so a hostile template cannot exhaust the operator.
const MAX_RENDER_BYTES: usize = 4 * 1024 * 1024;
const FUEL: u64 = 5_000_000;

/// Renders a Jinja2 template (minijinja: loops, conditionals, `tojson`, `length`, …) with
/// the JSON `context`. Undefined variables are errors, not empty strings: a typo in a
/// variable name should fail loudly, not produce a silently broken file.
pub fn render_template(
    path: &str,
    source: &str,
    context: &serde_json::Value,
) -> Result<String, TemplateError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // Files end with a newline; Jinja2's default of dropping it would truncate every file.
    env.set_keep_trailing_newline(true);
    let fail = |e: minijinja::Error| TemplateError {
        path: path.to_string(),
        line: e.line(),
        detail: match e.detail() {
            Some(detail) => format!("{}: {detail}", e.kind()),
            None => e.kind().to_string(),
        },
    };
    env.add_template(path, source).map_err(fail)?;
    let template = env.get_template(path).map_err(fail)?;
    let rendered = template.render(context).map_err(fail)?;
    if rendered.len() > MAX_RENDER_BYTES {
        return Err(TemplateError {
            path: path.to_string(),
            line: None,
            detail: format!("rendered output is larger than {MAX_RENDER_BYTES} bytes"),
        });
    }
    Ok(rendered)
}

/// `plan.json`: the plan as pretty JSON.
pub fn plan_json(plan: &Plan) -> String {
    let mut out = serde_json::to_string_pretty(plan).unwrap_or_else(|_| "{}".into());
    out.push('\n');
    out
}

/// Every path the plan names.
pub fn planned_paths(plan: Option<&Plan>) -> BTreeSet<String> {
    plan.map(|p| {
        p.tasks
            .iter()
            .flat_map(|t| t.files.iter().cloned())
            .collect()
    })
    .unwrap_or_default()
}

/// Planned paths that are not among `existing`, sorted.
pub fn missing_files<'a>(
    planned: &BTreeSet<String>,
    existing: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let existing: BTreeSet<&str> = existing.into_iter().collect();
    planned
        .iter()
        .filter(|p| !existing.contains(p.as_str()))
        .cloned()
        .collect()
}

/// `<projectName>.zip` with everything outside `[A-Za-z0-9._-]` replaced by `_`, so the
/// name is safe in a `Content-Disposition` header and on any file system.
pub fn archive_file_name(project_name: &str) -> String {
    let mut name: String = project_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.trim_matches('.').is_empty() {
        name = "project".into();
    }
    format!("{name}.zip")
}

/// Where the archive is downloaded on Kiln's HTTP API.
pub fn download_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/jobs/{name}/download")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_loops_conditionals_and_tojson() {
        let source = "{% for n in names %}{{ n }}{% if not loop.last %},{% endif %}{% endfor %} {{ cfg | tojson }} {{ names | length }}";
        let out = render_template(
            "a.txt",
            source,
            &json!({"names": ["x", "y"], "cfg": {"k": 1}}),
        )
        .unwrap();
        assert_eq!(out, "x,y {\"k\":1} 2");
    }

    #[test]
    fn template_errors_name_file_and_line() {
        let err = render_template("src/app.py", "ok\n{% for x in %}\n", &json!({})).unwrap_err();
        assert_eq!(err.path, "src/app.py");
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with("src/app.py: line 2: "), "{err}");
        let err = render_template("b", "{{ missing }}", &json!({})).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let err = render_template(
            "loop",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &json!({}),
        );
        assert!(err.is_err());
    }

    #[test]
    fn plan_and_missing_files() {
        let plan: Plan = serde_json::from_value(json!({"tasks": [{"name": "a", "files": ["b", "a"]}, {"name": "c", "files": ["a", "z"]}]})).unwrap();
        let planned = planned_paths(Some(&plan));
        assert_eq!(
            planned.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "z"]
        );
        assert_eq!(
            missing_files(&planned, ["a", "other"]),
            vec!["b".to_string(), "z".to_string()]
        );
        assert!(plan_json(&plan).contains("\"tasks\""));
    }

    #[test]
    fn archive_names_are_sanitised() {
        assert_eq!(archive_file_name("hello-world"), "hello-world.zip");
        assert_eq!(
            archive_file_name("../etc/passwd\"\r\n"),
            ".._etc_passwd___.zip"
        );
        assert_eq!(archive_file_name(".."), "project.zip");
        assert_eq!(archive_file_name("héllo wörld"), "h_llo_w_rld.zip");
    }
}
