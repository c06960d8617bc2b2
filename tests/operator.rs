//! The operator process: it writes status, serves health and metrics, elects a leader, and
//! exits cleanly on SIGTERM.

mod support;

use std::time::Duration;

use kiln::api::{Draft, KilnJob, ProviderConfig};
use kube::Api;
use support::{Operator, OperatorOptions, control_plane, eventually, http_get, namespace};

#[tokio::test]
async fn skeleton_writes_status_for_every_kind() {
    let cp = control_plane();
    let client = cp.client().await;
    let ns = namespace(&client, "skeleton").await;
    let _op = Operator::start(cp, OperatorOptions::namespace(&ns)).await;
    for file in ["draft.yaml", "job.yaml", "providerconfig.yaml"] {
        cp.kubectl(&[
            "apply",
            "-n",
            &ns,
            "-f",
            support::repo()
                .join("examples")
                .join(file)
                .to_str()
                .expect("path"),
        ])
        .success();
    }
    let drafts: Api<Draft> = Api::namespaced(client.clone(), &ns);
    let draft = eventually(Duration::from_secs(20), "the draft's status", || async {
        let d = drafts.get("welcome-email").await.ok()?;
        let observed = d.status.as_ref()?.observed_generation?;
        (Some(observed) == d.metadata.generation).then_some(d)
    })
    .await;
    let conditions = &draft.status.as_ref().expect("status").conditions;
    assert!(
        conditions.iter().any(|c| c.type_ == "Ready"),
        "no Ready condition: {conditions:?}"
    );
    let jobs: Api<KilnJob> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(20), "the job's status", || async {
        jobs.get("hello-world")
            .await
            .ok()?
            .status?
            .observed_generation
    })
    .await;
    let pcfgs: Api<ProviderConfig> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(20),
        "the provider config's status",
        || async {
            pcfgs
                .get("openai-main")
                .await
                .ok()?
                .status?
                .observed_generation
        },
    )
    .await;
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
