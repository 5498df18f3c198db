//! The node controller on the real control plane with kwok nodes and the fake tenant.
//!
//! Nodes are cluster-scoped and the cluster is shared, but each test runs its own controller with its own
//! namespace as the operator namespace: only the nodes its DynaKube lists in `status.oneAgent.instances`
//! are cached or marked, so the nodes of other tests (and the cluster's default nodes) do not interfere.
//! No DynaKube controller runs here: the tests write the instances into the status themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use io_controller::nodes::{NodeConfig, run};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pure_api::dynakube::DynaKube;
use serde_json::{Value, json};
use test_fake_tenant::{Endpoint, FakeTenant, Fault, Host, Listen, TenantConfig};
use test_kit::TestNamespace;

const WAIT: Duration = Duration::from_secs(30);
const CACHE: &str = "dynatrace-node-cache";
const NEVER: &str = "0001-01-01T00:00:00Z";

/// One test's world: namespace, fake tenant, DynaKube, nodes with their IPs, and the running controller.
struct World {
    ns: TestNamespace,
    tenant: FakeTenant,
    /// Node suffix → (node name, IP).
    nodes: BTreeMap<&'static str, (String, String)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    controller: Option<tokio::task::JoinHandle<()>>,
}

impl World {
    /// Creates kwok nodes `suffixes`, a DynaKube listing them with IPs `<ip_prefix>.<n>`, the token Secret,
    /// a host in the fake tenant for each IP in `hosts` (by suffix), and starts the node controller.
    async fn start(ip_prefix: &str, suffixes: &[&'static str], hosts: &[&'static str]) -> Self {
        let ns = TestNamespace::create().await.unwrap();
        install_crds(&ns.client).await;
        let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
            .await
            .unwrap();
        let nodes: BTreeMap<_, _> = suffixes
            .iter()
            .enumerate()
            .map(|(i, suffix)| {
                let name = format!("{}-{suffix}", ns.name);
                (*suffix, (name, format!("{ip_prefix}.{}", i + 1)))
            })
            .collect();
        for suffix in hosts {
            tenant.add_host(Host {
                entity_id: host_id(suffix),
                ip_addresses: vec![nodes[suffix].1.clone()],
                agent_version: "1.277.0.20230914-094321".into(),
                network_zone: None,
            });
        }
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "dynakube" },
            "stringData": { "apiToken": "dt0c01.test" },
        }))
        .unwrap();
        Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let dynakube: DynaKube = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": "dynakube" },
            "spec": { "apiUrl": tenant.api_url(), "oneAgent": { "classicFullStack": {} } },
        }))
        .unwrap();
        let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
        dynakubes.create(&PostParams::default(), &dynakube).await.unwrap();
        let instances: serde_json::Map<String, Value> = nodes
            .values()
            .map(|(name, ip)| {
                let pod = format!("dynakube-oneagent-{name}");
                (name.clone(), json!({ "podName": pod, "ipAddress": ip }))
            })
            .collect();
        dynakubes
            .patch_status(
                "dynakube",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "oneAgent": { "instances": instances } } })),
            )
            .await
            .unwrap();
        for suffix in suffixes {
            ns.create_node(suffix, &[], Vec::new()).await.unwrap();
        }

        let mut config = NodeConfig::new(ns.name.clone(), io_controller::Metrics::new());
        // Quick retries, so that a failed event is retried within the test.
        config.min_backoff = Duration::from_millis(500);
        config.max_backoff = Duration::from_secs(2);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let controller = tokio::spawn(run(ns.client.clone(), config, async move {
            let _ = stopped.await;
        }));
        Self {
            ns,
            tenant,
            nodes,
            stop: Some(stop),
            controller: Some(controller),
        }
    }

    fn node(&self, suffix: &str) -> &str {
        &self.nodes[suffix].0
    }

    fn ip(&self, suffix: &str) -> &str {
        &self.nodes[suffix].1
    }

    async fn patch_node(&self, suffix: &str, patch: Value) {
        Api::<Node>::all(self.ns.client.clone())
            .patch(self.node(suffix), &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn cordon(&self, suffix: &str, unschedulable: bool) {
        self.patch_node(suffix, json!({ "spec": { "unschedulable": unschedulable } }))
            .await;
    }

    async fn delete_node(&self, suffix: &str) {
        let nodes: Api<Node> = Api::all(self.ns.client.clone());
        nodes
            .delete(self.node(suffix), &DeleteParams::default())
            .await
            .unwrap();
        test_kit::eventually("the node to be gone", WAIT, || async {
            Ok(nodes.get_opt(self.node(suffix)).await?.is_none().then_some(()))
        })
        .await
        .unwrap();
    }

    /// The cache ConfigMap, when it exists.
    async fn cache(&self) -> Option<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.ns.client.clone(), &self.ns.name)
            .get_opt(CACHE)
            .await
            .unwrap()
    }

    /// The cache entries (parsed), once `check` accepts them.
    async fn cache_until(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> BTreeMap<String, Value> {
        test_kit::eventually(what, WAIT, || async {
            let Some(config_map) = self.cache().await else {
                return Ok(None);
            };
            let entries: BTreeMap<String, Value> = config_map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
                .collect();
            Ok(check(&entries).then_some(entries))
        })
        .await
        .unwrap()
    }

    /// The events the fake tenant received for the host of `suffix`.
    fn events_for(&self, suffix: &str) -> Vec<Value> {
        let id = host_id(suffix);
        self.tenant
            .events()
            .into_iter()
            .filter(|e| e["attachRules"]["entityIds"] == json!([id]))
            .collect()
    }

    /// Waits until the host of `suffix` got an event, and returns it.
    async fn first_event(&self, suffix: &str) -> Value {
        test_kit::eventually(&format!("an event for node {suffix}"), WAIT, || async {
            Ok(self.events_for(suffix).into_iter().next())
        })
        .await
        .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(controller) = self.controller.take() {
            tokio::time::timeout(Duration::from_secs(15), controller)
                .await
                .expect("the node controller stops on shutdown")
                .unwrap();
        }
        self.tenant.shutdown().await;
    }
}

fn host_id(suffix: &str) -> String {
    format!("HOST-{}", suffix.to_uppercase())
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn rfc3339_ms(text: &str) -> i64 {
    let time: k8s_openapi::jiff::Timestamp = text.parse().unwrap();
    time.as_millisecond()
}

/// The CRDs, installed once per test binary.
async fn install_crds(client: &Client) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async { test_kit::install_operator_crds(client).await.unwrap() })
        .await;
}

/// Asserts the reference's format of one entry: the four keys, RFC 3339 times.
fn assert_entry(entry: &Value, ip: &str) {
    let keys: BTreeSet<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["instance", "ip", "seen", "marked"]),
        "{entry}"
    );
    assert_eq!(entry["instance"], "dynakube");
    assert_eq!(entry["ip"], ip);
    let seen = rfc3339_ms(entry["seen"].as_str().unwrap());
    assert!((now_ms() - seen).abs() < 120_000, "{entry}");
    rfc3339_ms(entry["marked"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordoned_tainted_and_deleted_nodes_are_each_marked_once() {
    let world = World::start("10.201.0", &["a", "b", "c"], &["a", "b", "c"]).await;
    let (a, b, c) = (world.node("a"), world.node("b"), world.node("c"));

    // Every listed node gets an entry in the reference's format; no other node of the cluster does.
    let entries = world
        .cache_until("the three nodes in the cache", |e| e.len() == 3)
        .await;
    assert_eq!(
        entries.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from([a, b, c])
    );
    for suffix in ["a", "b", "c"] {
        let entry = &entries[world.node(suffix)];
        assert_entry(entry, world.ip(suffix));
        assert_eq!(entry["marked"], NEVER, "not marked yet");
    }
    let config_map = world.cache().await.unwrap();
    let raw = &config_map.data.as_ref().unwrap()[a];
    assert!(
        raw.starts_with(r#"{"instance":"dynakube","ip":"#),
        "the reference's key order: {raw}"
    );
    // The first cleanup stamps the cache.
    let stamp = test_kit::eventually("the cleanup time stamp", WAIT, || async {
        let config_map = world.cache().await.unwrap();
        Ok(config_map
            .metadata
            .annotations
            .and_then(|a| a.get("DTOperatorLastUpdated").cloned()))
    })
    .await
    .unwrap();
    assert!((now_ms() - rfc3339_ms(&stamp)).abs() < 120_000, "{stamp}");
    assert!(world.tenant.events().is_empty());

    // Cordoning a node marks its host once, ten minutes before it was last seen.
    let before = now_ms();
    world.cordon("a", true).await;
    let event = world.first_event("a").await;
    let after = now_ms();
    assert_eq!(event["eventType"], "MARKED_FOR_TERMINATION");
    assert_eq!(event["source"], "Dynatrace Operator");
    assert_eq!(event["start"], event["end"]);
    let start = event["start"].as_i64().unwrap();
    assert!(
        (before - 600_000 - 1000..=after - 600_000).contains(&start),
        "start {start} not ten minutes before the cordon ({before}..{after})"
    );
    let description = event["description"].as_str().unwrap();
    assert!(
        description.contains(a) && description.contains("cordoned"),
        "{description}"
    );
    let entries = world
        .cache_until("node a marked in the cache", |e| e[a]["marked"] != NEVER)
        .await;
    assert_entry(&entries[a], world.ip("a"));

    // Uncordoned and cordoned again within the hour: no second event.
    world.cordon("a", false).await;
    world.cordon("a", true).await;

    // The autoscaler's taint marks another node once, and is told apart from a cordon.
    world
        .patch_node(
            "b",
            json!({ "spec": { "taints": [
                { "key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule" }
            ] } }),
        )
        .await;
    let event = world.first_event("b").await;
    let description = event["description"].as_str().unwrap();
    assert!(
        description.contains("ToBeDeletedByClusterAutoscaler"),
        "{description}"
    );

    // Deleting a node marks it once, from the time it was last seen, and drops it from the cache.
    let seen_c = rfc3339_ms(entries[c]["seen"].as_str().unwrap());
    world.delete_node("c").await;
    let event = world.first_event("c").await;
    assert_eq!(event["start"].as_i64().unwrap(), seen_c - 600_000);
    assert!(event["description"].as_str().unwrap().contains("deleted"));
    world
        .cache_until("node c dropped from the cache", |e| !e.contains_key(c))
        .await;

    // Deleting the cordoned node, already marked within the hour, sends nothing more.
    world.delete_node("a").await;
    world
        .cache_until("node a dropped from the cache", |e| !e.contains_key(a))
        .await;

    // Give late reconciles a moment, then count: one event per node, nothing else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for suffix in ["a", "b", "c"] {
        assert_eq!(world.events_for(suffix).len(), 1, "events for {suffix}");
    }
    assert_eq!(world.tenant.events().len(), 3);
    assert_eq!(world.tenant.request_count(Endpoint::Events), 3);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_event_is_retried_and_an_unknown_host_is_skipped() {
    // Node b's IP is unknown to the tenant.
    let world = World::start("10.202.0", &["a", "b"], &["a"]).await;
    let (a, b) = (world.node("a"), world.node("b"));
    world
        .cache_until("both nodes in the cache", |e| e.len() == 2)
        .await;

    // The first event is rejected (401, not retried by the client): the reconcile backs off and retries.
    world
        .tenant
        .set_fault(Endpoint::Events, Fault::Unauthorized, Some(1));
    world.cordon("a", true).await;
    world.first_event("a").await;
    let attempts = world
        .tenant
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Events)
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert_eq!(attempts, [401, 201]);
    world
        .cache_until("node a marked in the cache", |e| e[a]["marked"] != NEVER)
        .await;

    // No host with node b's IP: nothing is sent, and the attempt counts as settled for the hour.
    let hosts_before = world.tenant.request_count(Endpoint::Hosts);
    world.cordon("b", true).await;
    world
        .cache_until("node b settled in the cache", |e| e[b]["marked"] != NEVER)
        .await;
    assert!(world.tenant.request_count(Endpoint::Hosts) > hosts_before);
    world.delete_node("b").await;
    world
        .cache_until("node b dropped from the cache", |e| !e.contains_key(b))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(world.tenant.events().len(), 1);
    world.stop().await;
}
