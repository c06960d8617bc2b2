//! The API as the real API server enforces it: the CRDs install without a warning and keep
//! every field, examples apply, invalid objects are refused with a message naming the field,
//! `kubectl get kiln` lists every kind, selectable fields filter server-side.

mod support;

use serde_json::Value;
use support::{control_plane, namespace};

/// The CRDs install cleanly on this API server. An API server silently drops the fields of
/// features it lacks or has switched off (`selectableFields` before Kubernetes 1.32, for one),
/// and answers with warnings what it accepts but dislikes: so every field of `crds/` must be
/// in the stored CRDs, and applying them must print nothing on stderr.
#[tokio::test]
async fn crds_install_cleanly_and_keep_every_field() {
    let cp = control_plane();
    assert!(
        cp.crd_apply_stderr.trim().is_empty(),
        "`kubectl apply --server-side -f crds/` on a new control plane printed:\n{}",
        cp.crd_apply_stderr
    );
    let mut files: Vec<_> = std::fs::read_dir(support::repo().join("crds"))
        .expect("crds/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "crds/ should hold one CRD per kind");
    let mut lost = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read a CRD");
        let sent: Value = serde_saphyr::from_str(&text).expect("crds/ holds YAML");
        let name = sent["metadata"]["name"].as_str().expect("metadata.name");
        let stored: Value =
            serde_json::from_str(&cp.kubectl(&["get", "crd", name, "-o", "json"]).success())
                .expect("kubectl prints JSON");
        let before = lost.len();
        dropped("spec", &sent["spec"], &stored["spec"], &mut lost);
        for entry in &mut lost[before..] {
            *entry = format!("{name}: {entry}");
        }
    }
    assert!(
        lost.is_empty(),
        "the API server did not keep everything crds/ says (a feature this version lacks?):\n{}",
        lost.join("\n")
    );
}

/// The paths under which `stored` lacks or changed what `sent` holds. Whatever the server
/// adds (defaults) is fine.
fn dropped(path: &str, sent: &Value, stored: &Value, out: &mut Vec<String>) {
    match (sent, stored) {
        (Value::Object(sent), Value::Object(stored)) => {
            for (key, value) in sent {
                match stored.get(key) {
                    Some(kept) => dropped(&format!("{path}.{key}"), value, kept, out),
                    None => out.push(format!("{path}.{key} was dropped")),
                }
            }
        }
        (Value::Array(sent), Value::Array(stored)) if sent.len() == stored.len() => {
            for (i, (value, kept)) in sent.iter().zip(stored).enumerate() {
                dropped(&format!("{path}[{i}]"), value, kept, out);
            }
        }
        // YAML's `100.0` comes back as JSON's `100`.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        _ if sent == stored => {}
        _ => out.push(format!("{path}: sent {sent}, stored {stored}")),
    }
}

#[tokio::test]
async fn every_example_applies() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "examples").await;
    let examples = support::repo().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .expect("examples/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "examples/ should hold one sample per kind"
    );
    for file in files {
        cp.kubectl(&["apply", "-n", &ns, "-f", file.to_str().expect("utf-8 path")])
            .success();
    }
    let listed = cp
        .kubectl(&["get", "kiln", "-n", &ns, "-o", "name"])
        .success();
    for expected in [
        "draft.kiln.dev/welcome-email",
        "job.kiln.dev/hello-world",
        "providerconfig.kiln.dev/openai-main",
    ] {
        assert!(
            listed.contains(expected),
            "`kubectl get kiln` did not list {expected}:\n{listed}"
        );
    }
}

/// kubectl prints a `date` column in the future as `<invalid>`; the `Expires` columns are
/// strings so that people read the time itself.
#[tokio::test]
async fn expires_columns_show_the_time() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "columns").await;
    let examples = support::repo().join("examples");
    let expires = "2099-01-02T03:04:05Z";
    for (file, resource) in [
        ("draft.yaml", "draft/welcome-email"),
        ("job.yaml", "jobs.kiln.dev/hello-world"),
    ] {
        let path = examples.join(file);
        cp.kubectl(&["apply", "-n", &ns, "-f", path.to_str().expect("utf-8 path")])
            .success();
        // No operator runs here: the status is set by hand, as Kiln would set it.
        let patch = format!("{{\"status\":{{\"expiresAt\":\"{expires}\"}}}}");
        cp.kubectl(&[
            "patch",
            "-n",
            &ns,
            resource,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .success();
    }
    let table = cp.kubectl(&["get", "kiln", "-n", &ns]).success();
    assert!(!table.contains("<invalid>"), "{table}");
    assert_eq!(table.matches(expires).count(), 2, "{table}");
    assert!(table.contains("EXPIRES"), "{table}");
}

/// One object the API server must refuse, and the words its error must contain.
struct Invalid {
    name: &'static str,
    yaml: &'static str,
    expect: &'static [&'static str],
}

const DRAFT_HEAD: &str = "apiVersion: kiln.dev/v1alpha1\nkind: Draft\nmetadata:\n  name: bad\n";
const JOB_HEAD: &str = "apiVersion: kiln.dev/v1alpha1\nkind: Job\nmetadata:\n  name: bad\n";
const PCFG_HEAD: &str =
    "apiVersion: kiln.dev/v1alpha1\nkind: ProviderConfig\nmetadata:\n  name: bad\n";

fn invalid_objects() -> Vec<Invalid> {
    vec![
        Invalid {
            name: "configId with uppercase and dots",
            yaml: "spec:\n  configType: content\n  config: {id: x}\n  publish: {configId: Bad.Id}\n",
            expect: &["spec.publish.configId"],
        },
        Invalid {
            name: "configId with a path separator",
            yaml: "spec:\n  configType: content\n  config: {id: x}\n  publish: {configId: a/b}\n",
            expect: &["spec.publish.configId"],
        },
        Invalid {
            name: "configId too long for revision names and labels",
            yaml: "spec:\n  configType: content\n  config: {id: x}\n  publish: {configId: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n",
            expect: &["spec.publish.configId"],
        },
        Invalid {
            name: "unknown configType",
            yaml: "spec:\n  configType: poem\n  config: {id: x}\n",
            expect: &["spec.configType"],
        },
        Invalid { name: "missing config", yaml: "spec:\n  configType: content\n", expect: &["spec.config"] },
        Invalid {
            name: "malformed retention",
            yaml: "spec:\n  configType: content\n  config: {id: x}\n  retention: 30 days\n",
            expect: &["spec.retention"],
        },
        Invalid {
            name: "keepRevisions out of range",
            yaml: "spec:\n  configType: content\n  config: {id: x}\n  publish: {configId: ok, keepRevisions: 0}\n",
            expect: &["spec.publish.keepRevisions"],
        },
    ]
    .into_iter()
    .map(|mut i| {
        i.yaml = Box::leak(format!("{DRAFT_HEAD}{}", i.yaml).into_boxed_str());
        i
    })
    .chain(
        [
            ("`..` in a path", "../escape", "'.' or '..' segments"),
            ("`..` inside a path", "a/../../escape", "'.' or '..' segments"),
            ("absolute path", "/etc/passwd", "must be relative"),
            ("backslash", "a\\\\b", "backslash"),
            ("empty segment", "a//b", "empty segments"),
            ("NUL byte", "a\\u0000b", "control characters"),
            ("DEL", "a\\u007fb", "control characters"),
            ("C1 control", "a\\u0085b", "control characters"),
            ("right-to-left override", "invoice\\u202Efdp.exe", "format characters"),
            ("zero-width space", "a\\u200Bb", "format characters"),
            ("left-to-right isolate", "a\\u2066b\\u2069", "format characters"),
            ("first strong isolate", "dir/a\\u2068b", "format characters"),
            ("byte-order mark", "\\uFEFFa", "format characters"),
            ("drive letter", "C:x", "drive letter"),
        ]
        .into_iter()
        .map(|(name, path, words)| Invalid {
            name,
            yaml: Box::leak(
                format!("{JOB_HEAD}spec:\n  projectName: p\n  files:\n  - path: \"{path}\"\n    content: x\n")
                    .into_boxed_str(),
            ),
            expect: Box::leak(Box::new(["spec.files[0].path", words])),
        }),
    )
    .chain([
        Invalid {
            name: "declared file with two sources",
            yaml: Box::leak(
                format!("{JOB_HEAD}spec:\n  projectName: p\n  files:\n  - path: a\n    content: x\n    template: {{source: hello}}\n")
                    .into_boxed_str(),
            ),
            expect: &["spec.files[0]", "exactly one of content, contentFrom and template"],
        },
        Invalid {
            name: "planned path escaping the project",
            yaml: Box::leak(
                format!("{JOB_HEAD}spec:\n  projectName: p\n  plan:\n    tasks:\n    - name: t\n      files: [../x]\n")
                    .into_boxed_str(),
            ),
            expect: &["spec.plan.tasks[0].files[0]"],
        },
        Invalid {
            name: "planned path with a right-to-left override",
            yaml: Box::leak(
                format!("{JOB_HEAD}spec:\n  projectName: p\n  plan:\n    tasks:\n    - name: t\n      files: [\"a\\u202Eb\"]\n")
                    .into_boxed_str(),
            ),
            expect: &["spec.plan.tasks[0].files[0]"],
        },
        Invalid {
            name: "planned path with a zero-width space",
            yaml: Box::leak(
                format!("{JOB_HEAD}spec:\n  projectName: p\n  plan:\n    tasks:\n    - name: t\n      files: [\"dir/\\u200Bx\"]\n")
                    .into_boxed_str(),
            ),
            expect: &["spec.plan.tasks[0].files[0]"],
        },
        Invalid {
            name: "projectName too long",
            yaml: Box::leak(format!("{JOB_HEAD}spec:\n  projectName: {}\n", "p".repeat(101)).into_boxed_str()),
            expect: &["spec.projectName"],
        },
        Invalid {
            name: "malformed ttl",
            yaml: Box::leak(format!("{JOB_HEAD}spec:\n  projectName: p\n  ttl: -5s\n").into_boxed_str()),
            expect: &["spec.ttl"],
        },
        Invalid {
            name: "duplicate apiKey name",
            yaml: Box::leak(
                format!(
                    "{PCFG_HEAD}spec:\n  providerType: openai\n  apiKeys:\n  - name: a\n    secretRef: {{name: s, key: k}}\n  - name: a\n    secretRef: {{name: s, key: k2}}\n"
                )
                .into_boxed_str(),
            ),
            expect: &["spec.apiKeys[1]", "Duplicate value"],
        },
        Invalid {
            name: "providerType not a DNS label",
            yaml: Box::leak(format!("{PCFG_HEAD}spec:\n  providerType: Open_AI\n").into_boxed_str()),
            expect: &["spec.providerType"],
        },
        Invalid {
            name: "apiKey named API_KEY",
            yaml: Box::leak(
                format!("{PCFG_HEAD}spec:\n  providerType: openai\n  apiKeys:\n  - name: API_KEY\n    secretRef: {{name: s, key: k}}\n")
                    .into_boxed_str(),
            ),
            expect: &["spec.apiKeys[0].name", "API_KEY is reserved"],
        },
        Invalid {
            name: "unknown deletionPolicy",
            yaml: Box::leak(
                format!("{PCFG_HEAD}spec:\n  providerType: openai\n  deletionPolicy: Never\n")
                    .into_boxed_str(),
            ),
            expect: &["spec.deletionPolicy", "WhileUnused"],
        },
    ])
    .collect()
}

#[tokio::test]
async fn invalid_objects_are_refused_naming_the_field() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "invalid").await;
    let mut failures = Vec::new();
    for case in invalid_objects() {
        let out = cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], Some(case.yaml));
        if out.status.success() {
            failures.push(format!("{}: accepted\n{}", case.name, case.yaml));
            cp.kubectl_stdin(
                &["delete", "-n", &ns, "-f", "-", "--ignore-not-found"],
                Some(case.yaml),
            );
            continue;
        }
        for word in case.expect {
            if !out.stderr.contains(word) {
                failures.push(format!(
                    "{}: error does not mention {word:?}: {}",
                    case.name,
                    out.stderr.trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} invalid objects were not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "immutable").await;
    cp.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&format!(
            "{DRAFT_HEAD}spec:\n  configType: content\n  config: {{id: x}}\n"
        )),
    )
    .success();
    let err = cp
        .kubectl_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&format!(
                "{DRAFT_HEAD}spec:\n  configType: artifact\n  config: {{id: x}}\n"
            )),
        )
        .failure();
    assert!(
        err.contains("spec.configType") && err.contains("configType is immutable"),
        "{err}"
    );

    cp.kubectl_stdin(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&format!("{PCFG_HEAD}spec:\n  providerType: openai\n")),
    )
    .success();
    let err = cp
        .kubectl_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&format!("{PCFG_HEAD}spec:\n  providerType: anthropic\n")),
        )
        .failure();
    assert!(
        err.contains("spec.providerType") && err.contains("providerType is immutable"),
        "{err}"
    );
}

#[tokio::test]
async fn selectable_fields_filter_on_the_server() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "select").await;
    for (name, ty) in [("c1", "content"), ("a1", "artifact")] {
        cp.kubectl_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&format!("apiVersion: kiln.dev/v1alpha1\nkind: Draft\nmetadata:\n  name: {name}\nspec:\n  configType: {ty}\n  config: {{id: x}}\n")),
        )
        .success();
    }
    let out = cp
        .kubectl(&[
            "get",
            "drafts",
            "-n",
            &ns,
            "--field-selector",
            "spec.configType=content",
            "-o",
            "name",
        ])
        .success();
    assert_eq!(out.trim(), "draft.kiln.dev/c1");
    for (name, ty) in [("p1", "openai"), ("p2", "anthropic")] {
        cp.kubectl_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&format!("apiVersion: kiln.dev/v1alpha1\nkind: ProviderConfig\nmetadata:\n  name: {name}\nspec:\n  providerType: {ty}\n")),
        )
        .success();
    }
    let out = cp
        .kubectl(&[
            "get",
            "pcfg",
            "-n",
            &ns,
            "--field-selector",
            "spec.providerType=openai",
            "-o",
            "name",
        ])
        .success();
    assert_eq!(out.trim(), "providerconfig.kiln.dev/p1");
}
