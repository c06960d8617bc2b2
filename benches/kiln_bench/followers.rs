//! Followers: the time from a new published revision to the last of N followers' pod
//! templates carrying it, against the same N pod-template patches sent directly, one after
//! the other as Kiln sends them, in the same run.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use kiln::api::Draft;

use crate::Args;
use crate::cluster::{Bench, start_kiln, stop_kiln};
use crate::report::{Report, median, round};

const CONFIG: &str = "bench-content";
const MARK: &str = "kiln.dev/config-revision-bench-content";

fn deployment(name: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kiln.dev/follow-config": CONFIG}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}})
}

fn config(v: usize) -> serde_json::Value {
    json!({"id": format!("v{v}"), "type": "content",
        "metadata": {"title": "T", "tags": ["a"]}, "instructions": "Write it.",
        "inputs": [{"name": "who", "type": "string"}],
        "generation": {"patterns": [{"type": "template", "template": "Hi {{who}}"}]}})
}

/// Waits until every Deployment's pod template carries `value` under `key`.
async fn all_carry(api: &Api<Deployment>, n: usize, key: &str, value: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = api.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|d| {
                d.spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.annotations.as_ref())
                    .and_then(|a| a.get(key))
                    .map(String::as_str)
                    == Some(value)
            })
            .count();
        if done == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} followers carry {key}={value} after 120s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(b: &Bench, args: &Args) -> anyhow::Result<Report> {
    let n = args.followers();
    let ns = b.namespace("bench-follow").await;
    let deployments: Api<Deployment> = Api::namespaced(b.client.clone(), &ns);
    for i in 0..n {
        let name = format!("web-{i:03}");
        deployments
            .patch(
                &name,
                &PatchParams::apply("bench").force(),
                &Patch::Apply(deployment(&name)),
            )
            .await
            .with_context(|| format!("creating Deployment {name}"))?;
    }
    // No debounce: the figure is Kiln's own work; a real debounce adds its window on top.
    let mut kiln = start_kiln(b, &ns, &["--rollout-debounce=0s"]).await;
    let drafts: Api<Draft> = Api::namespaced(b.client.clone(), &ns);
    let draft: Draft = serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "Draft", "metadata": {"name": "bench"},
        "spec": {"configType": "content", "config": config(1), "publish": {"configId": "bench"}}
    }))?;
    drafts.create(&PostParams::default(), &draft).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = drafts.get("bench").await?;
        let s = d.status.unwrap_or_default();
        if s.published.is_some() && s.followers.len() == n {
            break;
        }
        if Instant::now() > deadline {
            bail!("the draft did not list its {n} followers within 60s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut kiln_s = Vec::new();
    let mut direct_s = Vec::new();
    for rep in 0..args.reps {
        let revision = rep + 2;
        let t = Instant::now();
        let patch = json!({"spec": {"config": config(revision)}});
        drafts
            .patch("bench", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        all_carry(&deployments, n, MARK, &revision.to_string()).await?;
        kiln_s.push(t.elapsed().as_secs_f64());

        // The baseline: the same pod-template change, one merge patch per workload.
        let key = "bench.example/direct";
        let t = Instant::now();
        for i in 0..n {
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {key: revision.to_string()}}}}});
            deployments
                .patch(
                    &format!("web-{i:03}"),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        direct_s.push(t.elapsed().as_secs_f64());
        // Let the Deployment controller's own writes settle between repetitions.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop_kiln(&mut kiln)?;

    let (k, d) = (median(&kiln_s), median(&direct_s));
    let mut r = Report::new(
        format!("followers-n{n}"),
        "Followers: new revision → rolled-out pod templates",
        true,
    );
    r.line(format!(
        "{n} Deployments follow one published config (`kiln.dev/follow-config`); Kiln runs with \
         `--rollout-debounce=0s`, so the time is Kiln's own: the spec edit, the new revision, \
         the status, and {n} conditional pod-template patches. The baseline sends the same {n} \
         pod-template patches directly, one after the other. Median of {} repetitions.\n",
        args.reps
    ));
    r.line("| | seconds (median) | per follower (ms) |\n|---|---:|---:|");
    r.line(format!(
        "| Kiln: spec edit → last follower rolled out | {:.2} | {:.1} |",
        k,
        k * 1000.0 / n as f64
    ));
    r.line(format!(
        "| direct: {n} patches | {:.2} | {:.1} |",
        d,
        d * 1000.0 / n as f64
    ));
    r.line(format!(
        "\nRatio Kiln ÷ direct: **{:.2}×**. With the default 30 s debounce, add the window.",
        k / d
    ));
    r.set("followers", n);
    r.set(
        "kilnSeconds",
        kiln_s.iter().map(|x| round(*x, 3)).collect::<Vec<_>>(),
    );
    r.set(
        "directSeconds",
        direct_s.iter().map(|x| round(*x, 3)).collect::<Vec<_>>(),
    );
    r.set("ratio", round(k / d, 2));
    Ok(r)
}
