//! Automatic OneAgent updates on the real control plane with kwok nodes and the fake tenant: a new version
//! published by the tenant rolls through the nodes with at most maxUnavailable of them down (asserted from
//! pod watch events), pinned versions and `autoUpdate: false` stop updates, a pod that never becomes ready
//! blocks the rollout with a clear status, and an operator killed mid-rollout leaves nothing recycled twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use serde_json::json;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::TestNamespace;

const WAIT: Duration = Duration::from_secs(90);
const NEW_VERSION: &str = "1.278.0.20231001-000000";
const OLD_VERSION: &str = "1.277.0.20230914-094321";

/// Requeues fast and a short ready timeout, so that rollouts and their blocking are seen within a test.
fn requeue() -> io_controller::Requeue {
    io_controller::Requeue {
        resync: Duration::from_secs(2),
        fix_backoff: Duration::from_secs(2),
        tenant_backoff: Duration::from_secs(2),
        ready_timeout: Duration::from_secs(6),
        legacy_probe_interval: Duration::from_secs(2),
        ..Default::default()
    }
}

/// Runs a controller on its own thread and runtime for the rest of the test binary.
fn shared_controller() {
    static STARTED: test_kit::PerBinary<()> = test_kit::PerBinary::new();
    STARTED.get_or_start("the shared controller", || async {
        let client = test_kit::shared_cluster().await?.client().await?;
        test_kit::install_operator_crds(&client).await?;
        let metrics = io_controller::Metrics::new();
        let controller = io_controller::run(
            client,
            "0.1.0-test".into(),
            requeue(),
            metrics,
            std::future::pending(),
        );
        Ok(((), controller))
    });
}

/// The ServiceAccount and token Secret a DynaKube `name` needs.
async fn prerequisites(client: &Client, namespace: &str, name: &str) {
    let account: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "dynatrace-dynakube-oneagent" },
    }))
    .unwrap();
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    if accounts
        .get_opt("dynatrace-dynakube-oneagent")
        .await
        .unwrap()
        .is_none()
    {
        accounts.create(&PostParams::default(), &account).await.unwrap();
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
        "stringData": { "apiToken": "dt0c01.test" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// A classicFullStack DynaKube on the nodes labelled `pool=<pool>`, asking the tenant on every reconcile.
fn dynakube(
    name: &str,
    api_url: &str,
    pool: &str,
    max_unavailable: u32,
    extra: serde_json::Value,
) -> DynaKube {
    let mut host = json!({ "nodeSelector": { "pool": pool } });
    if let (Some(host), Some(extra)) = (host.as_object_mut(), extra.as_object()) {
        host.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": name, "annotations": {
            "feature.dynatrace.com/dynatrace-api-request-threshold": "0",
            "feature.dynatrace.com/oneagent-max-unavailable": max_unavailable.to_string(),
        } },
        "spec": { "apiUrl": api_url, "oneAgent": { "classicFullStack": host } },
    }))
    .unwrap()
}

async fn create_nodes(ns: &TestNamespace, pool: &str, count: usize) -> BTreeSet<String> {
    let mut nodes = BTreeSet::new();
    for i in 0..count {
        let node = ns
            .create_node(&format!("{pool}-{i}"), &[("pool", pool)], Vec::new())
            .await
            .unwrap();
        nodes.insert(node.name_any());
    }
    nodes
}

fn rollout_condition(dynakube: &DynaKube) -> Option<(String, String, String)> {
    dynakube
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "OneAgentRollout")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the DynaKube's rollout of `version` is complete.
async fn wait_rolled_out(dynakubes: &Api<DynaKube>, name: &str, version: &str) -> DynaKube {
    test_kit::eventually(&format!("{name} rolled out to {version}"), WAIT, || async {
        let dynakube = dynakubes.get(name).await?;
        let rollout = dynakube
            .status
            .as_ref()
            .and_then(|s| s.one_agent.as_ref())
            .and_then(|o| o.rollout.clone());
        let done = rollout_condition(&dynakube).is_some_and(|(status, _, _)| status == "True")
            && rollout.is_some_and(|r| r.target_version.as_deref() == Some(version) && r.nodes_pending == 0);
        Ok(done.then_some(dynakube))
    })
    .await
    .unwrap()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What the pod watch saw during a rollout.
#[derive(Debug, Default, Clone)]
struct Timeline {
    /// Ready pods by node (pod name → ready), as of the last event.
    pods: BTreeMap<String, BTreeMap<String, bool>>,
    /// Most nodes without a ready OneAgent pod at any one time.
    max_unavailable: usize,
    /// Pods created per node after the watch started.
    created: BTreeMap<String, BTreeSet<String>>,
    /// When `max_unavailable` was last raised: the event that did it and each down node's pods (name:
    /// ready or not, terminating), so that a failure says why the nodes were down.
    worst: Vec<String>,
}

/// Watches the OneAgent pods in the namespace and records, event by event, how many of `nodes` had no
/// ready pod.
fn watch_pods(client: &Client, namespace: &str, nodes: BTreeSet<String>) -> Arc<Mutex<Timeline>> {
    watch_pods_with(client, namespace, nodes, "app.kubernetes.io/name=oneagent")
}

/// [`watch_pods`] for the pods matching `selector`.
fn watch_pods_with(
    client: &Client,
    namespace: &str,
    nodes: BTreeSet<String>,
    selector: &str,
) -> Arc<Mutex<Timeline>> {
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let record = timeline.clone();
    let config = watcher::Config::default().labels(selector);
    tokio::spawn(async move {
        let mut initial = BTreeSet::new();
        let mut listing = true;
        let mut last_event = String::new();
        let mut events = std::pin::pin!(watcher(api, config));
        loop {
            let event = match events.try_next().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(error) => {
                    eprintln!("pod watch: {error}");
                    continue;
                }
            };
            let mut t = record.lock().unwrap();
            match event {
                watcher::Event::Init => listing = true,
                watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                        continue;
                    };
                    let name = pod.name_any();
                    if listing {
                        initial.insert(name.clone());
                    } else if !initial.contains(&name) {
                        t.created.entry(node.clone()).or_default().insert(name.clone());
                    }
                    let ready = is_ready(&pod) && pod.metadata.deletion_timestamp.is_none();
                    last_event = format!(
                        "{name} on {node}: ready {}, terminating {}, phase {:?}",
                        is_ready(&pod),
                        pod.metadata.deletion_timestamp.is_some(),
                        pod.status.as_ref().and_then(|s| s.phase.clone())
                    );
                    t.pods.entry(node).or_default().insert(name, ready);
                }
                watcher::Event::Delete(pod) => {
                    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                        last_event = format!("{} on {node}: deleted", pod.name_any());
                        t.pods.entry(node).or_default().remove(&pod.name_any());
                    }
                }
                watcher::Event::InitDone => listing = false,
            }
            if listing {
                continue;
            }
            let down: Vec<String> = nodes
                .iter()
                .filter(|n| !t.pods.get(*n).is_some_and(|p| p.values().any(|ready| *ready)))
                .map(|n| format!("{n} {:?}", t.pods.get(n)))
                .collect();
            if down.len() > t.max_unavailable {
                t.max_unavailable = down.len();
                t.worst = std::iter::once(format!("after {last_event}"))
                    .chain(down)
                    .collect();
            }
        }
    });
    timeline
}

async fn pod_versions(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=oneagent"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            Some((node, p.labels().get("app.kubernetes.io/version")?.clone()))
        })
        .collect()
}

#[tokio::test]
async fn a_new_version_rolls_through_every_node_with_at_most_max_unavailable_down() {
    shared_controller();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("roll-{}", ns.name);
    let nodes = create_nodes(&ns, &pool, 5).await;
    prerequisites(&ns.client, &ns.name, "roll").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    dynakubes
        .create(
            &PostParams::default(),
            &dynakube("roll", &tenant.api_url(), &pool, 2, json!({})),
        )
        .await
        .unwrap();
    wait_rolled_out(&dynakubes, "roll", OLD_VERSION).await;

    let timeline = watch_pods(&ns.client, &ns.name, nodes.clone());
    tokio::time::sleep(Duration::from_millis(500)).await; // the watch has listed
    tenant.publish_version(NEW_VERSION);
    let dynakube = wait_rolled_out(&dynakubes, "roll", NEW_VERSION).await;
    let versions = pod_versions(&ns.client, &ns.name).await;
    assert_eq!(versions.keys().cloned().collect::<BTreeSet<_>>(), nodes);
    assert!(versions.values().all(|v| v == NEW_VERSION), "{versions:?}");
    let rollout = dynakube.status.unwrap().one_agent.unwrap().rollout.unwrap();
    assert_eq!((rollout.nodes_done, rollout.nodes_pending), (5, 0));

    let t = timeline.lock().unwrap().clone();
    assert!(
        t.max_unavailable <= 2,
        "{} nodes were down at once: {t:?}",
        t.max_unavailable
    );
    assert!(t.max_unavailable >= 1, "the watch saw the rollout: {t:?}");
    for node in &nodes {
        let created = t.created.get(node).map_or(0, BTreeSet::len);
        assert_eq!(created, 1, "node {node} was recycled {created} times: {t:?}");
    }
    tenant.shutdown().await;
}

#[tokio::test]
async fn a_pinned_version_and_auto_update_off_stop_updates() {
    shared_controller();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let ns = TestNamespace::create().await.unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    for (name, extra) in [
        ("pinned", json!({ "version": OLD_VERSION })),
        ("frozen", json!({ "autoUpdate": false })),
    ] {
        let pool = format!("{name}-{}", ns.name);
        create_nodes(&ns, &pool, 1).await;
        prerequisites(&ns.client, &ns.name, name).await;
        dynakubes
            .create(
                &PostParams::default(),
                &dynakube(name, &tenant.api_url(), &pool, 1, extra),
            )
            .await
            .unwrap();
        wait_rolled_out(&dynakubes, name, OLD_VERSION).await;
    }
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    let generation = |ds: DaemonSet| ds.metadata.generation;
    let before = (
        generation(daemonsets.get("pinned-oneagent").await.unwrap()),
        generation(daemonsets.get("frozen-oneagent").await.unwrap()),
    );
    let probes = tenant.request_count(test_fake_tenant::Endpoint::Metainfo);
    tenant.publish_version(NEW_VERSION);
    // Several reconciles later (they run every 2 s and ask the tenant each time): nothing moved.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for name in ["pinned", "frozen"] {
        let status = dynakubes.get(name).await.unwrap().status.unwrap();
        assert_eq!(
            status.one_agent.unwrap().version.version.as_deref(),
            Some(OLD_VERSION),
            "{name} was updated"
        );
    }
    let after = (
        generation(daemonsets.get("pinned-oneagent").await.unwrap()),
        generation(daemonsets.get("frozen-oneagent").await.unwrap()),
    );
    assert_eq!(before, after, "a DaemonSet changed");
    assert!(
        pod_versions(&ns.client, &ns.name)
            .await
            .values()
            .all(|v| v == OLD_VERSION)
    );
    // The pinned DynaKube never asks for the latest version; the frozen one keeps its version once set.
    assert_eq!(tenant.request_count(test_fake_tenant::Endpoint::Metainfo), probes);
    tenant.shutdown().await;
}

#[tokio::test]
async fn a_node_whose_new_pod_never_gets_ready_blocks_the_rollout_with_a_clear_status() {
    shared_controller();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("stuck-{}", ns.name);
    let nodes = create_nodes(&ns, &pool, 3).await;
    prerequisites(&ns.client, &ns.name, "stuck").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    dynakubes
        .create(
            &PostParams::default(),
            &dynakube("stuck", &tenant.api_url(), &pool, 1, json!({})),
        )
        .await
        .unwrap();
    wait_rolled_out(&dynakubes, "stuck", OLD_VERSION).await;

    // The new version's pods never become ready (kwok skips pods with this annotation).
    let never_ready = json!({ "spec": { "oneAgent": { "classicFullStack": {
        "annotations": { test_kit::cluster::NEVER_READY_ANNOTATION: "true" }
    } } } });
    dynakubes
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&never_ready))
        .await
        .unwrap();
    // Publish only once the DaemonSet carries the annotation: a reconcile already under way could
    // otherwise roll the new version out without it first.
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    test_kit::eventually("the DaemonSet to carry the annotation", WAIT, || async {
        let ds = daemonsets.get("stuck-oneagent").await?;
        let template = ds.spec.map(|s| {
            s.template
                .metadata
                .unwrap_or_default()
                .annotations
                .unwrap_or_default()
        });
        Ok(template
            .filter(|a| a.contains_key(test_kit::cluster::NEVER_READY_ANNOTATION))
            .map(|_| ()))
    })
    .await
    .unwrap();
    tenant.publish_version(NEW_VERSION);
    let (dynakube, message) = test_kit::eventually("the rollout to be blocked", WAIT, || async {
        let dynakube = dynakubes.get("stuck").await?;
        Ok(rollout_condition(&dynakube)
            .filter(|(status, reason, _)| status == "False" && reason == "Blocked")
            .map(|(_, _, message)| (dynakube, message)))
    })
    .await
    .unwrap();
    let rollout = dynakube.status.unwrap().one_agent.unwrap().rollout.unwrap();
    let blocked = rollout.blocked_node.clone().unwrap();
    assert!(nodes.contains(&blocked), "{rollout:?}");
    assert_eq!(rollout.target_version.as_deref(), Some(NEW_VERSION));
    assert_eq!((rollout.nodes_done, rollout.nodes_pending), (0, 3), "{rollout:?}");
    assert!(
        message.starts_with(&format!("blocked on node {blocked}: OneAgent pod "))
            && message.contains("has not become ready"),
        "{message}"
    );
    // The failure did not spread: every other node still runs its ready pod of the old version.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = pod_versions(&ns.client, &ns.name).await;
    for node in nodes.iter().filter(|n| **n != blocked) {
        assert_eq!(
            versions.get(node).map(String::as_str),
            Some(OLD_VERSION),
            "{versions:?}"
        );
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.contains(&"RolloutBlocked".to_owned()), "{reasons:?}");

    // Fixed: the rollout goes on and completes.
    let fixed = json!({ "spec": { "oneAgent": { "classicFullStack": { "annotations": null } } } });
    dynakubes
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    let recovered = wait_rolled_out(&dynakubes, "stuck", NEW_VERSION).await;
    let rollout = recovered.status.unwrap().one_agent.unwrap().rollout.unwrap();
    assert_eq!(
        rollout.blocked_node, None,
        "a recovered rollout names no blocked node: {rollout:?}"
    );
    tenant.shutdown().await;
}

#[tokio::test]
async fn an_operator_killed_mid_rollout_finishes_it_after_restart_without_recycling_twice() {
    // A cluster of its own: this test's operators must be the only ones reconciling.
    let cluster = test_kit::start_private_cluster(0).await.unwrap();
    let client = cluster.client().await.unwrap();
    test_kit::install_operator_crds(&client).await.unwrap();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let ns = TestNamespace::create_in(&cluster).await.unwrap();
    let pool = format!("restart-{}", ns.name);
    let nodes = create_nodes(&ns, &pool, 4).await;
    prerequisites(&client, &ns.name, "restart").await;
    let start_operator = |client: Client| {
        tokio::spawn(io_controller::run(
            client,
            "0.1.0-test".into(),
            requeue(),
            io_controller::Metrics::new(),
            std::future::pending(),
        ))
    };
    let first = start_operator(client.clone());
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), &ns.name);
    dynakubes
        .create(
            &PostParams::default(),
            &dynakube("restart", &tenant.api_url(), &pool, 1, json!({})),
        )
        .await
        .unwrap();
    wait_rolled_out(&dynakubes, "restart", OLD_VERSION).await;

    let timeline = watch_pods(&client, &ns.name, nodes.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    tenant.publish_version(NEW_VERSION);
    test_kit::eventually("the first node to be recycled", WAIT, || async {
        Ok((!timeline.lock().unwrap().created.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    first.abort(); // killed: no shutdown, no cleanup
    let _ = first.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _second = start_operator(client.clone());
    wait_rolled_out(&dynakubes, "restart", NEW_VERSION).await;

    let t = timeline.lock().unwrap().clone();
    assert!(t.max_unavailable <= 1, "{t:?}");
    for node in &nodes {
        let created = t.created.get(node).map_or(0, BTreeSet::len);
        assert_eq!(created, 1, "node {node} was recycled {created} times: {t:?}");
    }
    let watch = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let remaining: Vec<_> = watch
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(remaining.len(), nodes.len(), "{remaining:?}");
    tenant.shutdown().await;
}

/// Gives a kwok node an InternalIP of its own (kwok's default is one address for every node), so that
/// the hosts API can tell the nodes apart.
async fn set_node_ip(client: &Client, node: &str, ip: &str) {
    let patch = json!({ "status": { "addresses": [
        { "type": "InternalIP", "address": ip },
        { "type": "Hostname", "address": node },
    ] } });
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// A legacy OneAgent on `pool`, its Secret and ServiceAccount, and a host per node at the tenant.
async fn legacy_setup(
    ns: &TestNamespace,
    tenant: &FakeTenant,
    name: &str,
    pool: &str,
    nodes: &BTreeSet<String>,
    subnet: u8,
    extra: serde_json::Value,
) -> Api<pure_api::oneagent::OneAgent> {
    for (i, node) in nodes.iter().enumerate() {
        let ip = format!("10.{subnet}.0.{}", i + 1);
        set_node_ip(&ns.client, node, &ip).await;
        tenant.add_host(test_fake_tenant::Host {
            entity_id: format!("HOST-{subnet}-{i}"),
            ip_addresses: vec![ip],
            agent_version: OLD_VERSION.into(),
            network_zone: None,
        });
    }
    let accounts = Api::<ServiceAccount>::namespaced(ns.client.clone(), &ns.name);
    if accounts.get_opt("dynatrace-oneagent").await.unwrap().is_none() {
        let account: ServiceAccount = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "dynatrace-oneagent" },
        }))
        .unwrap();
        accounts.create(&PostParams::default(), &account).await.unwrap();
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
        "stringData": { "apiToken": "dt0c01.test", "paasToken": "dt0c01.test" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut spec =
        json!({ "apiUrl": tenant.api_url(), "nodeSelector": { "pool": pool }, "waitReadySeconds": 30 });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let oneagent: pure_api::oneagent::OneAgent = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent", "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap();
    let oneagents = Api::<pure_api::oneagent::OneAgent>::namespaced(ns.client.clone(), &ns.name);
    oneagents.create(&PostParams::default(), &oneagent).await.unwrap();
    oneagents
}

/// Waits until the legacy OneAgent reports every node up to date with `version`.
async fn wait_legacy_up_to_date(oneagents: &Api<pure_api::oneagent::OneAgent>, name: &str, version: &str) {
    test_kit::eventually(
        &format!("OneAgent {name} up to date with {version}"),
        WAIT,
        || async {
            let status = oneagents.get(name).await?.status.unwrap_or_default();
            let up_to_date = status.conditions.iter().flatten().any(|c| {
                c.type_ == "OneAgentRollout" && c.reason == "UpToDate" && c.message.ends_with(version)
            });
            Ok((up_to_date && status.phase.as_deref() == Some("Running")).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_legacy_oneagent_recycles_outdated_hosts_one_at_a_time_and_each_once() {
    shared_controller();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("legacy-{}", ns.name);
    let nodes = create_nodes(&ns, &pool, 3).await;
    let oneagents = legacy_setup(&ns, &tenant, "legacy", &pool, &nodes, 61, json!({})).await;
    wait_legacy_up_to_date(&oneagents, "legacy", OLD_VERSION).await;

    let timeline = watch_pods_with(&ns.client, &ns.name, nodes.clone(), "dynatrace=oneagent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The hosts keep reporting the old version: the agents of this test never really update. The
    // operator must still recycle each node once, not over and over.
    tenant.publish_version(NEW_VERSION);
    wait_legacy_up_to_date(&oneagents, "legacy", NEW_VERSION).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // a few more reconciles: nothing more happens
    let t = timeline.lock().unwrap().clone();
    assert!(t.max_unavailable <= 1, "{t:?}");
    for node in &nodes {
        let created = t.created.get(node).map_or(0, BTreeSet::len);
        assert_eq!(created, 1, "node {node} was recycled {created} times: {t:?}");
    }
    let status = oneagents.get("legacy").await.unwrap().status.unwrap();
    assert_eq!(status.version.as_deref(), Some(NEW_VERSION));
    let instances = status.instances.unwrap();
    assert_eq!(instances.keys().cloned().collect::<BTreeSet<_>>(), nodes);
    assert!(
        instances
            .values()
            .all(|i| i.ip_address.is_some() && i.pod_name.is_some()),
        "{instances:?}"
    );
    tenant.shutdown().await;
}

#[tokio::test]
async fn a_legacy_oneagent_with_agent_updates_disabled_recycles_nothing() {
    shared_controller();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("frozen-{}", ns.name);
    let nodes = create_nodes(&ns, &pool, 2).await;
    let oneagents = legacy_setup(
        &ns,
        &tenant,
        "frozen",
        &pool,
        &nodes,
        62,
        json!({ "disableAgentUpdate": true }),
    )
    .await;
    test_kit::eventually("OneAgent frozen Running", WAIT, || async {
        let status = oneagents.get("frozen").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap();
    let timeline = watch_pods_with(&ns.client, &ns.name, nodes.clone(), "dynatrace=oneagent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tenant.publish_version(NEW_VERSION);
    test_kit::eventually("the new version in the status", WAIT, || async {
        let status = oneagents.get("frozen").await?.status.unwrap_or_default();
        Ok((status.version.as_deref() == Some(NEW_VERSION)).then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let t = timeline.lock().unwrap().clone();
    assert!(t.created.is_empty(), "pods were recycled: {t:?}");
    tenant.shutdown().await;
}
