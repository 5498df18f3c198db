//! Missed-injection detection on a real control plane. No webhook is registered here, so every pod created
//! in a mapped namespace runs without injection, exactly as when the webhook is down: the count in
//! `status.injection` and the gauge, the warning event, the count dropping as the pods go, and with the
//! feature flag a Deployment restarted once (pod-template annotation) while a bare pod stays, the budget per
//! interval, and no second restart while the restarted pods are still not injected.
//!
//! One check controller runs for the binary (interval [`INTERVAL`]); each test has its own namespace and
//! DynaKube (the namespace is labelled for its DynaKube by the test, as the namespace controller would).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use io_controller::Metrics;
use io_controller::injection::{self, InjectionConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use pure_desired::missed::{RESTART_ANNOTATION, RESTART_CAUSE_ANNOTATION};
use serde_json::{Value, json};

const INSTANCE_LABEL: &str = "dynakube.internal.dynatrace.com/instance";
const INTERVAL: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

/// The check controller of this binary, and its metrics.
fn metrics() -> &'static Metrics {
    static STARTED: test_kit::PerBinary<Metrics> = test_kit::PerBinary::new();
    STARTED.get_or_start("the missed-injection check", || async {
        let client = test_kit::shared_cluster().await?.client().await?;
        test_kit::install_operator_crds(&client).await?;
        let metrics = Metrics::new();
        let config = InjectionConfig {
            interval: INTERVAL,
            metrics: metrics.clone(),
        };
        Ok((metrics, injection::run(client, config, std::future::pending())))
    })
}

/// A namespace mapped to DynaKube `dk` (in the same namespace) with `annotations` (feature flags).
async fn setup(dk: &str, annotations: Value) -> test_kit::TestNamespace {
    let _ = metrics();
    let ns = test_kit::TestNamespace::create().await.unwrap();
    Api::<Namespace>::all(ns.client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { INSTANCE_LABEL: dk } } })),
        )
        .await
        .unwrap();
    let dynakube: DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": dk, "annotations": annotations },
        "spec": {
            "apiUrl": "https://abc12345.live.dynatrace.com/api",
            "oneAgent": { "applicationMonitoring": {} },
        },
    }))
    .unwrap();
    Api::<DynaKube>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &dynakube)
        .await
        .unwrap();
    ns
}

async fn create_pod(client: &Client, namespace: &str, name: &str, annotations: Value) {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations },
        "spec": { "containers": [{ "name": "app", "image": "registry.example/app:1" }] },
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

async fn create_deployment(client: &Client, namespace: &str, name: &str) {
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "registry.example/app:1" }] },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
}

/// `status.injection` of the DynaKube, as JSON.
async fn injection_status(ns: &test_kit::TestNamespace, dk: &str) -> Value {
    let dynakube = Api::<DynaKube>::namespaced(ns.client.clone(), &ns.name)
        .get(dk)
        .await
        .unwrap();
    dynakube
        .status
        .and_then(|s| s.injection)
        .map_or(Value::Null, |i| serde_json::to_value(i).unwrap())
}

async fn wait_for_count(ns: &test_kit::TestNamespace, dk: &str, count: i64) -> Value {
    test_kit::eventually(
        &format!("status.injection.podsNotInjected = {count}"),
        WAIT,
        || async {
            let status = injection_status(ns, dk).await;
            Ok((status["podsNotInjected"] == count).then_some(status))
        },
    )
    .await
    .unwrap()
}

/// The events about DynaKube `dk`: (type, reason, note), oldest first.
async fn events(ns: &test_kit::TestNamespace, dk: &str) -> Vec<(String, String, String)> {
    let mut events: Vec<Event> = Api::<Event>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(dk))
        .collect();
    events.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    events
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

fn gauge_line(ns: &str, dk: &str, count: i64) -> String {
    format!(r#"dynatrace_operator_pods_not_injected{{namespace="{ns}",dynakube="{dk}"}} {count}"#)
}

async fn wait_running(client: &Client, namespace: &str, wanted: usize) {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    test_kit::eventually(&format!("{wanted} running pods in {namespace}"), WAIT, || async {
        let running = pods
            .list(&ListParams::default().fields("status.phase=Running"))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        Ok((running == wanted).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn missed_pods_are_counted_reported_and_forgotten_when_they_go() {
    let dk = "dk-count";
    let ns = setup(dk, json!({})).await;
    let client = &ns.client;
    create_pod(client, &ns.name, "missed-a", json!({})).await;
    create_pod(client, &ns.name, "missed-b", json!({})).await;
    create_pod(
        client,
        &ns.name,
        "injected",
        json!({ "dynakube.dynatrace.com/injected": "true" }),
    )
    .await;
    create_pod(
        client,
        &ns.name,
        "opted-out",
        json!({ "dynatrace.com/inject": "false" }),
    )
    .await;
    wait_running(client, &ns.name, 4).await;

    let status = wait_for_count(&ns, dk, 2).await;
    assert_eq!(
        status["examples"],
        json!([format!("{}/missed-a", ns.name), format!("{}/missed-b", ns.name)])
    );
    assert!(status["lastCheckTime"].is_string(), "{status}");
    let text = metrics().encode();
    assert!(text.contains(&gauge_line(&ns.name, dk, 2)), "{text}");
    // A check may have run while only some of the pods were running: that gave an event of its own (the
    // set changed since), so look for the one about both.
    let warnings = test_kit::eventually("the PodsNotInjected event about both pods", WAIT, || async {
        let found: Vec<_> = events(&ns, dk)
            .await
            .into_iter()
            .filter(|(_, reason, note)| reason == "PodsNotInjected" && note.starts_with("2 running pod(s)"))
            .collect();
        Ok((!found.is_empty()).then_some(found))
    })
    .await
    .unwrap();
    let (type_, _, note) = &warnings[0];
    assert_eq!(type_, "Warning");
    assert!(
        note.starts_with("2 running pod(s) have no OneAgent code module"),
        "{note}"
    );
    assert!(note.contains(&format!("{}/missed-a", ns.name)), "{note}");
    assert!(note.contains("webhook was unavailable"), "{note}");
    assert!(note.contains("restart-missed-injections"), "{note}");

    // Unchanged: neither the status nor the events are written again over several checks.
    let version = Api::<DynaKube>::namespaced(client.clone(), &ns.name)
        .get(dk)
        .await
        .unwrap()
        .resource_version();
    tokio::time::sleep(INTERVAL * 3).await;
    let again = Api::<DynaKube>::namespaced(client.clone(), &ns.name)
        .get(dk)
        .await
        .unwrap()
        .resource_version();
    assert_eq!(version, again, "the status was written although nothing changed");
    let before = events(&ns, dk).await.len();
    tokio::time::sleep(INTERVAL * 2).await;
    assert_eq!(
        events(&ns, dk).await.len(),
        before,
        "no new event while the set stays the same"
    );

    // The pods go: the count follows, and the end is reported once.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    pods.delete("missed-a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let status = wait_for_count(&ns, dk, 1).await;
    assert_eq!(status["examples"], json!([format!("{}/missed-b", ns.name)]));
    pods.delete("missed-b", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let status = wait_for_count(&ns, dk, 0).await;
    assert!(status.get("examples").is_none(), "{status}");
    test_kit::eventually("the gauge at 0", WAIT, || async {
        Ok(metrics()
            .encode()
            .contains(&gauge_line(&ns.name, dk, 0))
            .then_some(()))
    })
    .await
    .unwrap();
    let all = test_kit::eventually("the AllPodsInjected event", WAIT, || async {
        let all = events(&ns, dk).await;
        Ok(all.iter().any(|(_, r, _)| r == "AllPodsInjected").then_some(all))
    })
    .await
    .unwrap();
    // One event per change of the set: the sets seen while the pods started (2 pods, perhaps 1 before),
    // then 1 pod, then none; never the same set twice in a row.
    let (last, earlier) = all.split_last().unwrap();
    assert_eq!(last.1, "AllPodsInjected", "{all:?}");
    assert!(earlier.iter().all(|(_, r, _)| r == "PodsNotInjected"), "{all:?}");
    assert!(
        earlier.windows(2).all(|w| w[0].2 != w[1].2),
        "the same set reported twice in a row: {all:?}"
    );
    assert!(
        earlier.last().unwrap().2.starts_with("1 running pod(s)"),
        "{all:?}"
    );
}

/// The restart annotation of a Deployment's pod template and its cause annotation.
async fn restart_of(client: &Client, namespace: &str, name: &str) -> Option<(String, String)> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap();
    let template: Option<&BTreeMap<String, String>> = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let value = template?.get(RESTART_ANNOTATION)?.clone();
    let cause = deployment.annotations().get(RESTART_CAUSE_ANNOTATION)?.clone();
    Some((value, cause))
}

#[tokio::test]
async fn with_the_flag_a_deployment_is_restarted_once_and_a_bare_pod_never() {
    let dk = "dk-restart";
    let ns = setup(
        dk,
        json!({ "feature.dynatrace.com/restart-missed-injections": "true" }),
    )
    .await;
    let client = &ns.client;
    create_deployment(client, &ns.name, "web").await;
    create_pod(client, &ns.name, "bare", json!({})).await;
    let bare_uid = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .get("bare")
        .await
        .unwrap()
        .uid();

    let (value, cause) = test_kit::eventually("the Deployment restarted", WAIT, || async {
        Ok(restart_of(client, &ns.name, "web").await)
    })
    .await
    .unwrap();
    assert!(value.starts_with("deployment/web@"), "{value}");
    assert!(cause.contains(&format!("DynaKube {dk}")), "{cause}");
    assert!(
        cause.contains("was unavailable or before the namespace was mapped"),
        "{cause}"
    );
    // The restart rolls the pods: the new pod carries the restart's annotation (and is not injected
    // either: there is no webhook).
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    test_kit::eventually("a pod of the restart running", WAIT, || async {
        let restarted = pods
            .list(
                &ListParams::default()
                    .labels("app=web")
                    .fields("status.phase=Running"),
            )
            .await?
            .items
            .into_iter()
            .any(|p| p.annotations().get(RESTART_ANNOTATION) == Some(&value));
        Ok(restarted.then_some(()))
    })
    .await
    .unwrap();

    // Several checks later: not restarted again for the same cause, the bare pod untouched.
    tokio::time::sleep(INTERVAL * 3).await;
    let (again, _) = restart_of(client, &ns.name, "web").await.unwrap();
    assert_eq!(again, value, "restarted a second time for the same cause");
    let bare = pods.get("bare").await.unwrap();
    assert_eq!(bare.uid(), bare_uid);
    assert!(bare.metadata.deletion_timestamp.is_none());
    let restarts: Vec<_> = events(&ns, dk)
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "MissedInjectionRestart")
        .collect();
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(
        restarts[0].2.contains(&format!("deployment {}/web", ns.name)),
        "{restarts:?}"
    );
    // The bare pod and the restarted pod are still counted and reported.
    let status = wait_for_count(&ns, dk, 2).await;
    assert!(status["examples"].to_string().contains("/bare"), "{status}");
    let text = metrics().encode();
    assert!(
        text.contains(&format!(
            r#"dynatrace_operator_missed_injection_restarts_total{{namespace="{}",dynakube="{dk}"}} 1"#,
            ns.name
        )),
        "{text}"
    );
}

/// When the restart value (`<kind>/<name>@<RFC 3339>`) was written.
fn restart_time(value: &str) -> k8s_openapi::jiff::Timestamp {
    value.split_once('@').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn the_budget_spreads_restarts_over_intervals() {
    let dk = "dk-budget";
    let ns = setup(
        dk,
        json!({
            "feature.dynatrace.com/restart-missed-injections": "true",
            "feature.dynatrace.com/restart-missed-injections-budget": "1",
        }),
    )
    .await;
    let client = &ns.client;
    for name in ["one", "two", "three"] {
        create_deployment(client, &ns.name, name).await;
    }
    wait_running(client, &ns.name, 3).await;
    let times = test_kit::eventually("the three Deployments restarted", WAIT, || async {
        let mut times = Vec::new();
        for name in ["one", "two", "three"] {
            match restart_of(client, &ns.name, name).await {
                Some((value, _)) => times.push(restart_time(&value)),
                None => return Ok(None),
            }
        }
        Ok(Some(times))
    })
    .await
    .unwrap();
    let mut sorted = times.clone();
    sorted.sort();
    for pair in sorted.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        // The values have whole seconds.
        assert!(
            gap.as_secs() + 1 >= i64::try_from(INTERVAL.as_secs()).unwrap(),
            "two restarts within one interval: {times:?}"
        );
    }
    // Each check restarts one workload and says how many wait. Which check first saw all three pods
    // depends on timing, so any restart event may be the one that names the waiting ones.
    let restarts: Vec<_> = events(&ns, dk)
        .await
        .into_iter()
        .filter(|(_, reason, _)| reason == "MissedInjectionRestart")
        .collect();
    assert!(
        !restarts.is_empty() && restarts.iter().all(|e| e.2.contains("restarted 1 workload(s)")),
        "{restarts:?}"
    );
    assert!(
        restarts
            .iter()
            .any(|e| e.2.contains("more wait for the next check")),
        "{restarts:?}"
    );
}
