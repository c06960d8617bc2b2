//! The operator process: it writes status, serves health and metrics, elects a leader, and
//! exits cleanly on SIGTERM.

mod support;

use std::time::Duration;

use kiln::api::{Draft, KilnJob, ProviderConfig};
use kube::Api;
use support::{Operator, OperatorOptions, control_plane, eventually, http_get, namespace};

/// Every example becomes Ready, and the metrics count objects by phase.
#[tokio::test]
async fn examples_become_ready() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, "examples-ready").await;
    let op = Operator::start(cp, OperatorOptions::namespace(&ns)).await;
    cp.kubectl(&[
        "apply",
        "-n",
        &ns,
        "-f",
        support::repo().join("examples").to_str().expect("path"),
    ])
    .success();
    let ready = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let drafts: Api<Draft> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "the example draft Ready",
        || async {
            let d = drafts.get("welcome-email").await.ok()?;
            ready(&d.status?.conditions).then_some(())
        },
    )
    .await;
    let jobs: Api<KilnJob> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "the example job Ready", || async {
        let j = jobs.get("hello-world").await.ok()?;
        ready(&j.status?.conditions).then_some(())
    })
    .await;
    let pcfgs: Api<ProviderConfig> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "the example provider config Ready",
        || async {
            let p = pcfgs.get("openai-main").await.ok()?;
            ready(&p.status?.conditions).then_some(())
        },
    )
    .await;
    let (_, metrics) = http_get(op.http_addr, "/metrics").await.expect("metrics");
    for line in [
        "kiln_objects{kind=\"Draft\",phase=\"Ready\"} 1",
        "kiln_objects{kind=\"Job\",phase=\"Complete\"} 1",
        // The example job: README.md, src/main.py and plan.json.
        "kiln_workspace{what=\"jobs\"} 1",
        "kiln_workspace{what=\"files\"} 3",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
}

#[tokio::test]
async fn health_metrics_and_clean_sigterm() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "health").await;
    let mut op = Operator::start(cp, OperatorOptions::namespace(&ns)).await;
    let (code, _) = http_get(op.http_addr, "/healthz")
        .await
        .expect("healthz answers");
    assert_eq!(code, 200);
    let (code, body) = http_get(op.http_addr, "/metrics")
        .await
        .expect("metrics answers");
    assert_eq!(code, 200);
    assert!(
        body.contains("kiln_reconciles"),
        "metrics lack kiln_reconciles:\n{body}"
    );
    let status = op.terminate();
    assert!(
        status.success(),
        "kiln exited with {status} on SIGTERM:\n{}",
        op.logs()
    );
    assert!(op.logs().contains("shut down cleanly"), "{}", op.logs());
}

#[tokio::test]
async fn only_the_leader_is_ready() {
    let cp = control_plane();
    let ns = namespace(&cp.client().await, "leader").await;
    let mut first = Operator::start(cp, OperatorOptions::namespace(&ns)).await;
    // Same namespaces, hence the same Lease: the second replica must wait for the first.
    let second = tokio::spawn(Operator::start(
        control_plane(),
        OperatorOptions::namespace(&ns),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !second.is_finished(),
        "a second replica became ready while the first leads"
    );
    // The first releases the Lease on SIGTERM, so the second takes over without waiting for
    // the Lease to expire.
    let status = first.terminate();
    assert!(status.success(), "{}", first.logs());
    assert!(
        first.logs().contains("released the leader Lease"),
        "{}",
        first.logs()
    );
    // Within the Lease duration (15s) plus a margin for the second replica's retry.
    let second = tokio::time::timeout(Duration::from_secs(25), second)
        .await
        .expect("the second replica took over after the first released the Lease")
        .expect("second operator task");
    assert_eq!(
        http_get(second.http_addr, "/readyz").await.map(|(c, _)| c),
        Some(200)
    );
}
