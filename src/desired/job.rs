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
    // The limit is enforced while rendering, not after: fuel bounds the instructions, but one
    // instruction can emit up to 100 MB (minijinja's cap on `"x" * n`), so a loop well
    // within the fuel could otherwise build gigabytes before a check at the end saw them.
    // (Output captured inside the template, by a macro call or `{% set %}` block, is
    // minijinja's own buffer and not bounded here; docs/reliability.md says so.)
    let mut out = BoundedOutput::default();
    let too_large = |line| TemplateError {
        path: path.to_string(),
        line,
        detail: format!("rendered output is larger than {MAX_RENDER_BYTES} bytes"),
    };
    match template.render_captured_to(context, &mut out) {
        Ok(_) => {}
        Err(e) if out.overflowed => return Err(too_large(e.line())),
        Err(e) => return Err(fail(e)),
    }
    // minijinja only ever writes whole `str`s, so this cannot fail; checked all the same.
    String::from_utf8(out.bytes).map_err(|_| TemplateError {
        path: path.to_string(),
        line: None,
        detail: "rendered output is not valid UTF-8".to_string(),
    })
}

/// A sink that refuses to grow past [`MAX_RENDER_BYTES`], so a runaway template fails as
/// soon as its output is too large, holding at most the limit in memory.
#[derive(Default)]
struct BoundedOutput {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDER_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
    fn output_limit_holds_while_rendering() {
        // 1,000 × 100 MB within the fuel: before the limit was enforced during rendering,
        // this built the whole output (100 GB) before checking its size.
        let err = render_template(
            "big",
            "{% for i in range(1000) %}{{ \"x\" * 100000000 }}{% endfor %}",
            &json!({}),
        )
        .unwrap_err();
        assert!(err.detail.contains("larger than"), "{err}");
        let err = render_template(
            "many",
            "{% for i in range(100000) %}{{ \"y\" * 100 }}{% endfor %}",
            &json!({}),
        )
        .unwrap_err();
        assert!(err.detail.contains("larger than"), "{err}");
        // Exactly at the limit is fine.
        let exact = render_template(
            "exact",
            &format!("{{{{ \"z\" * {MAX_RENDER_BYTES} }}}}"),
            &json!({}),
        )
        .unwrap();
        assert_eq!(exact.len(), MAX_RENDER_BYTES);
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
