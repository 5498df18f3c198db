//! The DynaKube controller on the real control plane with kwok nodes and the fake tenant.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use api::dynakube::DynaKube;
use fake_tenant::{Endpoint, FakeTenant, Listen, TenantConfig};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;
use testkit::TestNamespace;

const WAIT: Duration = Duration::from_secs(90);

/// The fake tenant and the controller, shared by the tests of this binary on a runtime of their own.
struct Env {
    api_url: String,
    tenant: &'static FakeTenant,
    metrics: controller::Metrics,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let cluster = testkit::shared_cluster().await.unwrap();
                let client = cluster.client().await.unwrap();
                let endpoint = api::crd::ConversionEndpoint::Service {
                    namespace: "dynatrace".into(),
                };
                webhook::registration::apply_crds(&client, &endpoint, "controller-tests")
                    .await
                    .unwrap();
                let tenant: &'static FakeTenant = Box::leak(Box::new(
                    FakeTenant::start(TenantConfig::default(), Listen::Http)
                        .await
                        .unwrap(),
                ));
                let metrics = controller::Metrics::new();
                tx.send(Env {
                    api_url: tenant.api_url(),
                    tenant,
                    metrics: metrics.clone(),
                })
                .unwrap();
                // Short requeues so that back-off and recovery are observable within a test.
                let requeue = controller::Requeue {
                    resync: Duration::from_secs(60),
                    fix_backoff: Duration::from_secs(2),
                    tenant_backoff: Duration::from_secs(2),
                };
                controller::run(
                    client,
                    "0.1.0-test".into(),
                    requeue,
                    metrics,
                    std::future::pending(),
                )
                .await;
            });
        });
        rx.recv().unwrap()
    })
}

fn dynakube(name: &str, api_url: &str, one_agent: serde_json::Value) -> DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": name },
        "spec": { "apiUrl": api_url, "oneAgent": one_agent },
    }))
    .unwrap()
}

/// The OneAgent service account, which the Helm chart installs next to the operator.
async fn oneagent_service_account(ns: &TestNamespace) {
    let account: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "dynatrace-dynakube-oneagent" },
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
}

async fn token_secret(ns: &TestNamespace, name: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
        "stringData": { "apiToken": "dt0c01.test" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test]
async fn classic_full_stack_becomes_oneagent_pods_on_exactly_the_selected_nodes() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("pool-{}", ns.name);
    let mut selected = BTreeSet::new();
    for suffix in ["a", "b"] {
        selected.insert(
            ns.create_node(suffix, &[(pool.as_str(), "oneagent")], Vec::new())
                .await
                .unwrap()
                .name_any(),
        );
    }
    ns.create_node("other", &[(pool.as_str(), "other")], Vec::new())
        .await
        .unwrap();
    oneagent_service_account(&ns).await;
    token_secret(&ns, "dynakube").await;
    let dk = dynakube(
        "dynakube",
        &env.api_url,
        json!({ "classicFullStack": { "nodeSelector": { pool.clone(): "oneagent" } } }),
    );
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let nodes = testkit::eventually("two running OneAgent pods", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=oneagent"))
            .await?;
        let running: BTreeSet<String> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        Ok((running.len() == 2).then_some(running))
    })
    .await
    .unwrap();
    assert_eq!(nodes, selected);

    let daemonset = Api::<DaemonSet>::namespaced(ns.client.clone(), &ns.name)
        .get("dynakube-oneagent")
        .await
        .unwrap();
    let owner = &daemonset.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("DynaKube", "dynakube", Some(true))
    );
    let status = testkit::eventually("the DynaKube to be Running", WAIT, || async {
        let status = dynakubes.get("dynakube").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(status))
    })
    .await
    .unwrap();
    let tokens = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Tokens")
        .unwrap();
    assert_eq!(
        (tokens.status.as_str(), tokens.reason.as_str()),
        ("True", "TokenReady")
    );
    let one_agent = status.one_agent.unwrap();
    assert_eq!(
        one_agent.version.version.as_deref(),
        Some("1.277.0.20230914-094321")
    );
    assert_eq!(
        one_agent.connection_info_status.unwrap().tenant_uuid.as_deref(),
        Some("abc12345")
    );
    let maps: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &ns.name);
    let connection = maps.get("dynakube-oneagent-connection-info").await.unwrap();
    assert_eq!(connection.data.unwrap()["tenant-uuid"], "abc12345");
    assert!(maps.get("dynakube-deployment-metadata").await.is_ok());
    let tenant_secret = Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .get("dynakube-oneagent-tenant-secret")
        .await
        .unwrap();
    assert_eq!(tenant_secret.data.unwrap()["tenant-token"].0, b"tenant-token-abc");
    assert!(env.tenant.request_count(Endpoint::Metainfo) >= 1);
    let metrics = env.metrics.encode();
    let success = r#"dynatrace_operator_reconciles_total{controller="dynakube",outcome="success"}"#;
    assert!(metrics.contains(success), "{metrics}");
}

#[tokio::test]
async fn a_missing_token_secret_is_reported_and_recovers_once_created() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "no-secret",
        &env.api_url,
        json!({ "classicFullStack": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let message = testkit::eventually("a failed Tokens condition", WAIT, || async {
        let status = dynakubes.get("no-secret").await?.status.unwrap_or_default();
        let condition = status
            .conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Tokens" && c.status == "False");
        Ok(condition
            .filter(|_| status.phase.as_deref() == Some("Error"))
            .map(|c| c.message))
    })
    .await
    .unwrap();
    assert!(
        message.contains(&format!("{}:no-secret", ns.name)) && message.contains("apiToken"),
        "{message}"
    );

    token_secret(&ns, "no-secret").await;
    testkit::eventually(
        "the Tokens condition to recover",
        Duration::from_secs(30),
        || async {
            let status = dynakubes.get("no-secret").await?.status.unwrap_or_default();
            Ok(status
                .conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Tokens" && c.status == "True")
                .then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn switching_to_application_monitoring_removes_the_daemonset() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    token_secret(&ns, "switch").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "switch",
        &env.api_url,
        json!({ "hostMonitoring": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    testkit::eventually("the OneAgent DaemonSet", WAIT, || async {
        daemonsets.get_opt("switch-oneagent").await.map_err(Into::into)
    })
    .await
    .unwrap();
    // A merge patch, as `kubectl apply` would send: the controller updates the status meanwhile, so a
    // replace with a stale resourceVersion could conflict.
    let switch = json!({ "spec": { "oneAgent": { "hostMonitoring": null, "applicationMonitoring": {} } } });
    dynakubes
        .patch(
            "switch",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&switch),
        )
        .await
        .unwrap();
    testkit::eventually("the DaemonSet to be removed", WAIT, || async {
        Ok(daemonsets
            .get_opt("switch-oneagent")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tenant_outage_backs_off_with_bounded_calls_and_recovers() {
    env(); // starts the shared controller
    // A fake tenant of this test's own, so that its fault hits no other test.
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    tenant.set_fault(Endpoint::ConnectionInfo, fake_tenant::Fault::Unavailable, None);
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    token_secret(&ns, "outage").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "outage",
        &tenant.api_url(),
        json!({ "classicFullStack": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();

    // During the outage: no OneAgent DaemonSet and no Error phase (an outage is not the user's mistake),
    // and the operator backs off instead of hammering the tenant.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let calls = tenant.request_count(Endpoint::ConnectionInfo);
    assert!((1..=24).contains(&calls), "{calls} connection-info calls in 12 s");
    let status = dynakubes.get("outage").await.unwrap().status.unwrap_or_default();
    assert_ne!(status.phase.as_deref(), Some("Error"), "{status:?}");
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(daemonsets.get_opt("outage-oneagent").await.unwrap().is_none());

    tenant.clear_faults();
    testkit::eventually("the DynaKube to recover after the outage", WAIT, || async {
        let status = dynakubes.get("outage").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap();
    assert!(daemonsets.get_opt("outage-oneagent").await.unwrap().is_some());
    tenant.shutdown().await;
}
