//! The DynaKube controller on the real control plane with kwok nodes and the fake tenant.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Api, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use serde_json::json;
use test_fake_tenant::{Endpoint, FakeTenant, Listen, TenantConfig};
use test_kit::TestNamespace;

const WAIT: Duration = Duration::from_secs(90);
/// How long the pods of a deleted node may take to leave a status: the pod garbage collector deletes them
/// after a quarantine of 40 s (it looks every 20 s), and the status follows at the next reconcile, which
/// the test controller does at least every 60 s.
const GONE_NODE_WAIT: Duration = Duration::from_secs(180);

/// The fake tenant and the controller, shared by the tests of this binary on a runtime of their own.
/// The CSI provisioner installs the version the operator writes to `status.codeModules`: the tenant's latest
/// code modules, or the pinned `applicationMonitoring.version` as written.
#[tokio::test]
async fn application_monitoring_with_csi_gets_its_code_modules_version_in_the_status() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    for (name, app, expected) in [
        (
            "latest",
            json!({ "useCSIDriver": true }),
            TenantConfig::default().versions.last().unwrap().clone(),
        ),
        (
            "pinned",
            json!({ "useCSIDriver": true, "version": "1.2.3.20200101-000000" }),
            "1.2.3.20200101-000000".to_owned(),
        ),
    ] {
        token_secret(&ns, name).await;
        let dk = dynakube(name, &env.api_url, json!({ "applicationMonitoring": app }));
        dynakubes.create(&PostParams::default(), &dk).await.unwrap();
        let status = probed_code_modules(&dynakubes, name).await;
        assert_eq!(
            status.version.as_deref(),
            Some(expected.as_str()),
            "{name}: {status:?}"
        );
        assert!(
            status.source.is_some() && status.last_probe_timestamp.is_some(),
            "{status:?}"
        );
    }
}

/// Once `status.codeModules` is written, later reconciles within the API request threshold neither look
/// the version up again nor rewrite the status: "nothing is rewritten when nothing changed".
#[tokio::test]
async fn reconciles_after_the_code_modules_probe_leave_the_status_alone() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    token_secret(&ns, "settled").await;
    let dk = dynakube(
        "settled",
        &env.api_url,
        json!({ "applicationMonitoring": { "useCSIDriver": true } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let probed = probed_code_modules(&dynakubes, "settled").await;
    // Let the reconciles the first writes cause run out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    touches_write_no_status(&dynakubes, "settled").await;
    let now = dynakubes.get("settled").await.unwrap();
    assert_eq!(
        now.status.and_then(|s| s.code_modules),
        Some(probed),
        "the code-module version was not looked up again"
    );
}

/// `name`'s `status.codeModules` once the operator has written a version there.
async fn probed_code_modules(
    dynakubes: &Api<DynaKube>,
    name: &str,
) -> pure_api::dynakube::v1beta1::VersionStatus {
    test_kit::eventually("status.codeModules", WAIT, || async {
        let dk = dynakubes.get(name).await?;
        Ok(dk
            .status
            .and_then(|s| s.code_modules)
            .filter(|c| c.version.is_some()))
    })
    .await
    .unwrap()
}

struct Env {
    api_url: String,
    tenant: &'static FakeTenant,
    metrics: io_controller::Metrics,
}

fn env() -> &'static Env {
    static ENV: test_kit::PerBinary<Env> = test_kit::PerBinary::new();
    ENV.get_or_start("the DynaKube controller", || async {
        let client = test_kit::shared_cluster().await?.client().await?;
        test_kit::install_operator_crds(&client).await?;
        let tenant: &'static FakeTenant = Box::leak(Box::new(
            FakeTenant::start(TenantConfig::default(), Listen::Http).await?,
        ));
        let metrics = io_controller::Metrics::new();
        let env = Env {
            api_url: tenant.api_url(),
            tenant,
            metrics: metrics.clone(),
        };
        // Short requeues so that back-off and recovery are observable within a test.
        let requeue = io_controller::Requeue {
            resync: Duration::from_secs(60),
            fix_backoff: Duration::from_secs(2),
            tenant_backoff: Duration::from_secs(2),
            ..Default::default()
        };
        let controller = io_controller::run(
            client,
            "0.1.0-test".into(),
            requeue,
            metrics,
            std::future::pending(),
        );
        Ok((env, controller))
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
    service_account(ns, "dynatrace-dynakube-oneagent").await;
}

/// A ServiceAccount `name` in the test namespace (the legacy OneAgent pods use `dynatrace-oneagent`).
async fn service_account(ns: &TestNamespace, name: &str) {
    let account: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": name },
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
}

async fn token_secret(ns: &TestNamespace, name: &str) {
    token_secret_with(ns, name, json!({ "apiToken": "dt0c01.test" })).await;
}

/// A token Secret with both tokens, as a legacy OneAgent needs.
async fn legacy_token_secret(ns: &TestNamespace, name: &str) {
    token_secret_with(
        ns,
        name,
        json!({ "apiToken": "dt0c01.test", "paasToken": "dt0c01.test" }),
    )
    .await;
}

async fn token_secret_with(ns: &TestNamespace, name: &str, tokens: serde_json::Value) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
        "stringData": tokens,
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
    let nodes = test_kit::eventually("two running OneAgent pods", WAIT, || async {
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
    // Running can be reported before the DaemonSet controller counted the second node; the status
    // follows once it has.
    let status = test_kit::eventually("the DynaKube to be Running on both nodes", WAIT, || async {
        let status = dynakubes.get("dynakube").await?.status.unwrap_or_default();
        let nodes = status
            .one_agent
            .as_ref()
            .and_then(|o| o.instances.as_ref())
            .map_or(0, BTreeMap::len);
        Ok((status.phase.as_deref() == Some("Running") && nodes == selected.len()).then_some(status))
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
    let instances = one_agent.instances.clone().unwrap_or_default();
    assert_eq!(
        instances.keys().cloned().collect::<BTreeSet<_>>(),
        selected,
        "{instances:?}"
    );
    assert!(instances.values().all(|i| {
        i.pod_name
            .as_deref()
            .is_some_and(|n| n.starts_with("dynakube-oneagent-"))
    }));
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
    let message = wait_tokens_condition(&dynakubes, "no-secret", false).await;
    assert!(
        message.contains(&format!("{}:no-secret", ns.name)) && message.contains("apiToken"),
        "{message}"
    );

    token_secret(&ns, "no-secret").await;
    wait_tokens_condition(&dynakubes, "no-secret", true).await;
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
    test_kit::eventually("the OneAgent DaemonSet", WAIT, || async {
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
    test_kit::eventually("the DaemonSet to be removed", WAIT, || async {
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
    tenant.set_fault(
        Endpoint::ConnectionInfo,
        test_fake_tenant::Fault::Unavailable,
        None,
    );
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
    let api = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DynatraceAPI")
        .unwrap_or_else(|| panic!("no DynatraceAPI condition: {status:?}"));
    assert_eq!(
        (api.status.as_str(), api.reason.as_str()),
        ("False", "Unavailable")
    );
    assert!(
        api.message.contains("connection") && api.message.contains("retrying in"),
        "{}",
        api.message
    );
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(daemonsets.get_opt("outage-oneagent").await.unwrap().is_none());

    tenant.clear_faults();
    test_kit::eventually("the DynaKube to recover after the outage", WAIT, || async {
        let status = dynakubes.get("outage").await?.status.unwrap_or_default();
        let reachable = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "DynatraceAPI" && c.status == "True");
        Ok((status.phase.as_deref() == Some("Running") && reachable).then_some(()))
    })
    .await
    .unwrap();
    assert!(daemonsets.get_opt("outage-oneagent").await.unwrap().is_some());
    tenant.shutdown().await;
}

/// Waits until the DynaKube's Tokens condition is `ok` (a failure also sets the phase Error); returns its
/// message. A recovery must come within 30 s: the Secret's change triggers it.
async fn wait_tokens_condition(dynakubes: &Api<DynaKube>, name: &str, ok: bool) -> String {
    let (wanted, within) = if ok {
        ("True", Duration::from_secs(30))
    } else {
        ("False", WAIT)
    };
    test_kit::eventually(&format!("Tokens={wanted} on {name}"), within, || async {
        let status = dynakubes.get(name).await?.status.unwrap_or_default();
        let phase_fits = ok || status.phase.as_deref() == Some("Error");
        Ok(status
            .conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Tokens" && c.status == wanted)
            .filter(|_| phase_fits)
            .map(|c| c.message))
    })
    .await
    .unwrap()
}

/// Names of the nodes with a Running OneAgent pod of `daemonset` in the namespace.
async fn nodes_with_running_pods(ns: &TestNamespace, daemonset: &str) -> anyhow::Result<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=oneagent"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.owner_references().iter().any(|o| o.name == daemonset))
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect())
}

/// Waits until exactly `expected` nodes run a OneAgent pod of `daemonset`.
async fn wait_for_pods_on(ns: &TestNamespace, daemonset: &str, expected: &BTreeSet<String>) {
    test_kit::eventually(
        &format!("pods of {daemonset} on exactly {expected:?}"),
        WAIT,
        || async {
            let nodes = nodes_with_running_pods(ns, daemonset).await?;
            Ok((&nodes == expected).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// Reasons of the events about the DynaKube `name`.
async fn event_reasons(ns: &TestNamespace, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("DynaKube") && r.name.as_deref() == Some(name))
        })
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn host_monitoring_reaches_tainted_nodes_only_with_a_toleration() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("pool-{}", ns.name);
    let labels = [(pool.as_str(), "monitored")];
    let plain = ns
        .create_node("plain", &labels, Vec::new())
        .await
        .unwrap()
        .name_any();
    let taint = k8s_openapi::api::core::v1::Taint {
        key: "dedicated".into(),
        value: Some("database".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    let tainted = ns
        .create_node("tainted", &labels, vec![taint])
        .await
        .unwrap()
        .name_any();
    oneagent_service_account(&ns).await;
    token_secret(&ns, "taints").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "taints",
        &env.api_url,
        json!({ "hostMonitoring": { "nodeSelector": { pool.clone(): "monitored" } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    wait_for_pods_on(&ns, "taints-oneagent", &BTreeSet::from([plain.clone()])).await;

    let toleration = json!({ "spec": { "oneAgent": { "hostMonitoring": { "tolerations": [
        { "key": "dedicated", "operator": "Equal", "value": "database", "effect": "NoSchedule" }
    ] } } } });
    dynakubes
        .patch(
            "taints",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&toleration),
        )
        .await
        .unwrap();
    wait_for_pods_on(&ns, "taints-oneagent", &BTreeSet::from([plain, tainted])).await;
    let reasons = event_reasons(&ns, "taints").await;
    for reason in ["DaemonSetCreated", "DaemonSetUpdated", "OneAgentVersion"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} missing in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn two_dynakubes_monitor_disjoint_node_groups_for_different_tenants() {
    env(); // starts the shared controller
    let second = TenantConfig {
        environment_id: "xyz98765".into(),
        tokens: vec![test_fake_tenant::TokenConfig {
            value: "dt0c01.second".into(),
            scopes: TenantConfig::default().tokens[0].scopes.clone(),
        }],
        tenant_token: "tenant-token-xyz".into(),
        communication_endpoints: vec!["https://xyz98765.live.dynatrace.com:443/communication".into()],
        ..TenantConfig::default()
    };
    let tenants = [
        FakeTenant::start(TenantConfig::default(), Listen::Http)
            .await
            .unwrap(),
        FakeTenant::start(second, Listen::Http).await.unwrap(),
    ];
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    let pool = format!("pool-{}", ns.name);
    let mut groups = [BTreeSet::new(), BTreeSet::new()];
    for (group, suffixes) in [(0, ["a1", "a2"].as_slice()), (1, ["b1"].as_slice())] {
        for suffix in suffixes {
            let value = if group == 0 { "first" } else { "second" };
            let node = ns
                .create_node(suffix, &[(pool.as_str(), value)], Vec::new())
                .await
                .unwrap();
            groups[group].insert(node.name_any());
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    for (name, group, token, tenant) in [
        ("first", "first", "dt0c01.test", &tenants[0]),
        ("second", "second", "dt0c01.second", &tenants[1]),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
            "stringData": { "apiToken": token },
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let dk = dynakube(
            name,
            &tenant.api_url(),
            json!({ "classicFullStack": { "nodeSelector": { pool.clone(): group } } }),
        );
        dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    }
    wait_for_pods_on(&ns, "first-oneagent", &groups[0]).await;
    wait_for_pods_on(&ns, "second-oneagent", &groups[1]).await;

    // Each DynaKube's objects come from its own tenant.
    for (name, uuid, tenant_token) in [
        ("first", "abc12345", "tenant-token-abc"),
        ("second", "xyz98765", "tenant-token-xyz"),
    ] {
        let status = dynakubes.get(name).await.unwrap().status.unwrap();
        let info = status.one_agent.unwrap().connection_info_status.unwrap();
        assert_eq!(info.tenant_uuid.as_deref(), Some(uuid));
        let secret = secrets
            .get(&format!("{name}-oneagent-tenant-secret"))
            .await
            .unwrap();
        assert_eq!(secret.data.unwrap()["tenant-token"].0, tenant_token.as_bytes());
        let daemonset = Api::<DaemonSet>::namespaced(ns.client.clone(), &ns.name)
            .get(&format!("{name}-oneagent"))
            .await
            .unwrap();
        let image = daemonset.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap();
        assert!(
            image.contains(&format!(
                "127.0.0.1:{}",
                tenant_port(&tenants[usize::from(name == "second")])
            )),
            "{image}"
        );
    }
    for tenant in &tenants {
        assert!(tenant.request_count(Endpoint::ConnectionInfo) >= 1);
        let foreign = tenant.requests().into_iter().filter(|r| r.status == 401).count();
        assert_eq!(foreign, 0, "a tenant got another tenant's token");
    }
    for tenant in tenants {
        tenant.shutdown().await;
    }
}

fn tenant_port(tenant: &FakeTenant) -> u16 {
    tenant.addr().port()
}

#[tokio::test]
async fn a_token_without_a_needed_scope_is_reported_with_bounded_calls_and_recovers() {
    env(); // starts the shared controller
    let config = TenantConfig {
        tokens: vec![
            test_fake_tenant::TokenConfig {
                value: "dt0c01.narrow".into(),
                scopes: vec!["DataExport".into()],
            },
            TenantConfig::default().tokens[0].clone(),
        ],
        ..TenantConfig::default()
    };
    let tenant = FakeTenant::start(config, Listen::Http).await.unwrap();
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "scopes" },
        "stringData": { "apiToken": "dt0c01.narrow" },
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "scopes",
        &tenant.api_url(),
        json!({ "classicFullStack": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let message = wait_tokens_condition(&dynakubes, "scopes", false).await;
    assert!(
        message.contains("lacks scope InstallerDownload") && message.contains(&format!("{}:scopes", ns.name)),
        "{message}"
    );
    // The controller requeues every 2 s here, but the failed check is repeated from the status: the
    // tenant is asked once until the threshold passes or the Secret changes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(tenant.request_count(Endpoint::ApiTokensLookup), 1);
    assert_eq!(tenant.request_count(Endpoint::ConnectionInfo), 0);
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    assert!(daemonsets.get_opt("scopes-oneagent").await.unwrap().is_none());
    assert!(
        event_reasons(&ns, "scopes")
            .await
            .contains(&"TokenError".to_owned())
    );

    let fixed = json!({ "stringData": { "apiToken": "dt0c01.test" } });
    secrets
        .patch(
            "scopes",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&fixed),
        )
        .await
        .unwrap();
    wait_tokens_condition(&dynakubes, "scopes", true).await;
    assert!(daemonsets.get_opt("scopes-oneagent").await.unwrap().is_some());
    assert_eq!(
        tenant.request_count(Endpoint::ApiTokensLookup),
        2,
        "one check per Secret version"
    );
    assert!(
        event_reasons(&ns, "scopes")
            .await
            .contains(&"TokenReady".to_owned())
    );
    tenant.shutdown().await;
}

/// `spec.dynatraceApiRequestThreshold` (v1beta2 and later) wins over the flag: with the flag at 0 (no
/// throttling) and the field at 60 minutes, a failing token check is made once, not on every requeue.
#[tokio::test]
async fn the_api_request_threshold_field_wins_over_the_flag() {
    env(); // starts the shared controller
    let config = TenantConfig {
        tokens: vec![test_fake_tenant::TokenConfig {
            value: "dt0c01.narrow".into(),
            scopes: vec!["DataExport".into()],
        }],
        ..TenantConfig::default()
    };
    let tenant = FakeTenant::start(config, Listen::Http).await.unwrap();
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "threshold" },
        "stringData": { "apiToken": "dt0c01.narrow" },
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut dk = dynakube(
        "threshold",
        &tenant.api_url(),
        json!({ "classicFullStack": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dk.metadata.annotations = Some(
        [(
            "feature.dynatrace.com/dynatrace-api-request-threshold".to_owned(),
            "0".to_owned(),
        )]
        .into(),
    );
    dk.spec.dynatrace_api_request_threshold = Some(60);
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    wait_tokens_condition(&dynakubes, "threshold", false).await;
    // The controller requeues every 2 s here; the flag alone would let every reconcile ask again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(tenant.request_count(Endpoint::ApiTokensLookup), 1);
    tenant.shutdown().await;
}

#[tokio::test]
async fn the_applied_daemonset_matches_the_reviewed_snapshot_field_by_field() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    token_secret(&ns, "fields").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "fields",
        &env.api_url,
        json!({ "cloudNativeFullStack": {
            "nodeSelector": { "none": ns.name.clone() },
            "tolerations": [{ "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" }],
            "priorityClassName": "system-node-critical",
            "args": ["--set-host-group=production"],
            "env": [{ "name": "ONEAGENT_ENABLE_VOLUME_STORAGE", "value": "true" }],
            "oneAgentResources": { "requests": { "cpu": "100m", "memory": "512Mi" }, "limits": { "cpu": "300m", "memory": "1Gi" } },
            "labels": { "team": "platform" },
            "annotations": { "example.com/owner": "platform" },
        } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    let mut daemonset = test_kit::eventually("the OneAgent DaemonSet", WAIT, || async {
        daemonsets.get_opt("fields-oneagent").await.map_err(Into::into)
    })
    .await
    .unwrap();
    // What the API server or this run decides (identity, times, ports), not what the operator builds.
    daemonset.metadata.managed_fields = None;
    daemonset.metadata.resource_version = None;
    daemonset.metadata.uid = None;
    daemonset.metadata.creation_timestamp = None;
    daemonset.metadata.generation = None;
    for owner in daemonset.metadata.owner_references.iter_mut().flatten() {
        owner.uid = "DYNAKUBE-UID".into();
    }
    daemonset.status = None;
    let cluster_id = Api::<k8s_openapi::api::core::v1::Namespace>::all(ns.client.clone())
        .get("kube-system")
        .await
        .unwrap()
        .uid()
        .unwrap();
    let mut yaml = serde_saphyr::to_string(&daemonset).unwrap();
    let hash = daemonset.annotations()[pure_desired::hash::TEMPLATE_HASH_ANNOTATION].clone();
    for (value, placeholder) in [
        (hash.as_str(), "TEMPLATE-HASH"),
        (cluster_id.as_str(), "CLUSTER-ID"),
        (
            &format!("127.0.0.1:{}", env.tenant.addr().port()),
            "TENANT-ADDRESS",
        ),
        (ns.name.as_str(), "NAMESPACE"),
    ] {
        yaml = yaml.replace(value, placeholder);
    }
    insta::assert_snapshot!(yaml);
}

#[tokio::test]
async fn two_legacy_oneagents_monitor_disjoint_node_groups_for_different_tenants() {
    use pure_api::oneagent::OneAgent;
    env(); // starts the shared controller
    let second = TenantConfig {
        environment_id: "lmn45678".into(),
        tokens: vec![test_fake_tenant::TokenConfig {
            value: "dt0c01.legacy".into(),
            scopes: TenantConfig::default().tokens[0].scopes.clone(),
        }],
        versions: vec!["1.279.0.20231020-101010".into()],
        ..TenantConfig::default()
    };
    let tenants = [
        FakeTenant::start(TenantConfig::default(), Listen::Http)
            .await
            .unwrap(),
        FakeTenant::start(second, Listen::Http).await.unwrap(),
    ];
    let ns = TestNamespace::create().await.unwrap();
    service_account(&ns, "dynatrace-oneagent").await;
    let pool = format!("legacy-{}", ns.name);
    let mut groups = [BTreeSet::new(), BTreeSet::new()];
    for (group, suffix) in [(0, "x1"), (0, "x2"), (1, "y1")] {
        let value = ["east", "west"][group];
        let node = ns
            .create_node(suffix, &[(pool.as_str(), value)], Vec::new())
            .await
            .unwrap();
        groups[group].insert(node.name_any());
    }
    let secrets: Api<Secret> = Api::namespaced(ns.client.clone(), &ns.name);
    let oneagents: Api<OneAgent> = Api::namespaced(ns.client.clone(), &ns.name);
    for (name, token, tenant) in [
        ("east", "dt0c01.test", &tenants[0]),
        ("west", "dt0c01.legacy", &tenants[1]),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
            "stringData": { "apiToken": token, "paasToken": token },
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let oneagent: OneAgent = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
            "metadata": { "name": name },
            "spec": {
                "apiUrl": tenant.api_url(),
                "nodeSelector": { pool.clone(): name },
                "tolerations": [{ "effect": "NoSchedule", "key": "node-role.kubernetes.io/master", "operator": "Exists" }],
            },
        }))
        .unwrap();
        oneagents.create(&PostParams::default(), &oneagent).await.unwrap();
    }
    let pods_on = |name: &'static str| {
        let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("dynatrace=oneagent,oneagent={name}")))
                .await?;
            anyhow::Ok(
                list.items
                    .iter()
                    .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                    .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                    .collect::<BTreeSet<_>>(),
            )
        }
    };
    for (name, group, uuid, version) in [
        ("east", &groups[0], "abc12345", "1.277.0.20230914-094321"),
        ("west", &groups[1], "lmn45678", "1.279.0.20231020-101010"),
    ] {
        test_kit::eventually(&format!("pods of OneAgent {name}"), WAIT, || async {
            Ok((&pods_on(name).await? == group).then_some(()))
        })
        .await
        .unwrap();
        let status = test_kit::eventually(&format!("OneAgent {name} Running"), WAIT, || async {
            let status = oneagents.get(name).await?.status.unwrap_or_default();
            let instances = status.instances.clone().unwrap_or_default();
            Ok(
                (status.phase.as_deref() == Some("Running") && instances.len() == group.len())
                    .then_some(status),
            )
        })
        .await
        .unwrap();
        assert_eq!(status.environment_id.as_deref(), Some(uuid));
        assert_eq!(status.version.as_deref(), Some(version));
        assert_eq!(status.tokens.as_deref(), Some(name));
        let instances = status.instances.unwrap();
        assert_eq!(&instances.keys().cloned().collect::<BTreeSet<_>>(), group);
        for condition in ["APIToken", "PaaSToken"] {
            let found = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == condition)
                .unwrap();
            assert_eq!(
                (found.status.as_str(), found.reason.as_str()),
                ("True", "TokenReady")
            );
        }
    }
    for tenant in &tenants {
        assert!(
            tenant.requests().iter().all(|r| r.status != 401),
            "a tenant got another tenant's token"
        );
    }

    // Deleting a OneAgent removes its DaemonSet (owner reference) and leaves the other alone.
    oneagents.delete("west", &Default::default()).await.unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    test_kit::eventually("the west DaemonSet to be collected", WAIT, || async {
        Ok(daemonsets.get_opt("west").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    assert!(daemonsets.get_opt("east").await.unwrap().is_some());
    for tenant in tenants {
        tenant.shutdown().await;
    }
}

#[tokio::test]
async fn every_mode_with_a_daemonset_runs_pods_on_exactly_its_selected_nodes() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    let pool = format!("modes-{}", ns.name);
    let modes = ["classicFullStack", "hostMonitoring", "cloudNativeFullStack"];
    let mut expected = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let group = mode.to_lowercase();
        let mut nodes = BTreeSet::new();
        for n in 0..=i {
            let node = ns
                .create_node(
                    &format!("{group}-{n}"),
                    &[(pool.as_str(), group.as_str())],
                    Vec::new(),
                )
                .await
                .unwrap();
            nodes.insert(node.name_any());
        }
        expected.push((group, nodes));
    }
    // A node no DynaKube selects.
    ns.create_node("unselected", &[(pool.as_str(), "none")], Vec::new())
        .await
        .unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    for (mode, (group, _)) in modes.iter().zip(&expected) {
        token_secret(&ns, group).await;
        let dk = dynakube(
            group,
            &env.api_url,
            json!({ *mode: { "nodeSelector": { pool.clone(): group } } }),
        );
        dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    }
    for (group, nodes) in &expected {
        wait_for_pods_on(&ns, &format!("{group}-oneagent"), nodes).await;
    }
}

/// The condition types whose entries `manager` owns in the status of `object` (from its managedFields).
fn owned_condition_types(object: &impl kube::Resource, manager: &str) -> BTreeSet<String> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some(manager))
        .filter_map(|entry| entry.fields_v1.as_ref())
        .filter_map(|fields| fields.0.pointer("/f:status/f:conditions")?.as_object().cloned())
        .flat_map(|conditions| conditions.into_iter().map(|(key, _)| key))
        .filter_map(|key| {
            let item: serde_json::Value = serde_json::from_str(key.strip_prefix("k:")?).ok()?;
            Some(item["type"].as_str()?.to_owned())
        })
        .collect()
}

/// Deletes a node; the pod garbage collector then removes its pods.
async fn delete_node(ns: &TestNamespace, node: &str) {
    Api::<k8s_openapi::api::core::v1::Node>::all(ns.client.clone())
        .delete(node, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_status_forgets_what_is_no_longer_reported_and_keeps_other_controllers_conditions() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("status-{}", ns.name);
    let mut nodes = Vec::new();
    for suffix in ["s1", "s2"] {
        let node = ns
            .create_node(suffix, &[(pool.as_str(), "oneagent")], Vec::new())
            .await
            .unwrap();
        nodes.push(node.name_any());
    }
    oneagent_service_account(&ns).await;
    token_secret(&ns, "status").await;
    let dk = dynakube(
        "status",
        &env.api_url,
        json!({ "classicFullStack": { "nodeSelector": { pool.clone(): "oneagent" } } }),
    );
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let instances_are = |expected: Vec<String>, wait: Duration| {
        let dynakubes = dynakubes.clone();
        async move {
            test_kit::eventually(&format!("instances {expected:?}"), wait, || async {
                let status = dynakubes.get("status").await?.status.unwrap_or_default();
                let one_agent = status.one_agent.clone().unwrap_or_default();
                let instances: Vec<String> = one_agent.instances.unwrap_or_default().into_keys().collect();
                Ok((status.phase.as_deref() == Some("Running") && instances == expected).then_some(status))
            })
            .await
            .unwrap()
        }
    };
    instances_are(nodes.clone(), WAIT).await;

    // The namespace controller's condition, written as that controller writes it.
    let conflict = json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": "status", "namespace": ns.name },
        "status": { "conditions": [ {
            "type": "NamespaceConflict", "status": "True", "reason": "SelectedByOtherDynaKubes",
            "message": "shared (also other/dk; not injected)", "lastTransitionTime": "2026-01-01T00:00:00Z",
        } ] },
    });
    dynakubes
        .patch_status(
            "status",
            &PatchParams::apply(io_controller::status::NAMESPACES_MANAGER).force(),
            &Patch::Apply(&conflict),
        )
        .await
        .unwrap();

    // A node that is gone leaves `instances`.
    delete_node(&ns, &nodes[1]).await;
    instances_are(vec![nodes[0].clone()], GONE_NODE_WAIT).await;

    // Without OneAgents on the nodes, nothing about them stays in the status. (Without the CSI driver: a
    // DynaKube that may use it also gets `status.codeModules`, whose first probe is one more status write.)
    let switch = json!({ "spec": { "oneAgent": {
        "classicFullStack": null,
        "applicationMonitoring": { "useCSIDriver": false },
    } } });
    dynakubes
        .patch("status", &PatchParams::default(), &Patch::Merge(&switch))
        .await
        .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    test_kit::eventually("the DaemonSet to be removed", WAIT, || async {
        Ok(daemonsets
            .get_opt("status-oneagent")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .unwrap();
    let dk = test_kit::eventually("the status without OneAgent instances", WAIT, || async {
        let dk = dynakubes.get("status").await?;
        let one_agent = dk
            .status
            .clone()
            .unwrap_or_default()
            .one_agent
            .unwrap_or_default();
        Ok((one_agent.instances.is_none() && one_agent.rollout.is_none()).then_some(dk))
    })
    .await
    .unwrap();
    let status = dk.status.clone().unwrap();
    let types: BTreeSet<String> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.clone())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "DynatraceAPI".to_owned(),
            "NamespaceConflict".to_owned(),
            "Tokens".to_owned()
        ]),
        "no rollout condition without a rollout, and the namespace controller's condition stays"
    );
    let one_agent = status.one_agent.clone().unwrap();
    assert_eq!(one_agent.version.version, None, "{one_agent:?}");
    assert!(one_agent.connection_info_status.is_some(), "{one_agent:?}");
    assert_eq!(
        owned_condition_types(&dk, io_controller::status::DYNAKUBE_MANAGER),
        BTreeSet::from(["DynatraceAPI".to_owned(), "Tokens".to_owned()])
    );
    assert_eq!(
        owned_condition_types(&dk, io_controller::status::NAMESPACES_MANAGER),
        BTreeSet::from(["NamespaceConflict".to_owned()])
    );

    // A steady DynaKube's status is not written again: reconciles caused by a metadata change find
    // nothing to report.
    touches_write_no_status(&dynakubes, "status").await;
}

/// Changes `name`'s metadata three times, each of which makes the controller reconcile, and checks that
/// the object then keeps the resourceVersion the change gave it: the reconcile wrote no status.
async fn touches_write_no_status(dynakubes: &Api<DynaKube>, name: &str) {
    for round in 0..3 {
        let touched = dynakubes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { "touch": round.to_string() } } })),
            )
            .await
            .unwrap();
        // Past the second that timestamps resolve, so that a new probe or write would show.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let now = dynakubes.get(name).await.unwrap();
        assert_eq!(
            now.resource_version(),
            touched.resource_version(),
            "{name}, round {round}: the status was written again without a change: {:?}",
            now.status
        );
    }
}

/// The DynaKube's condition of `type_`: (status, reason, message).
async fn condition_of(
    dynakubes: &Api<DynaKube>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let dk = dynakubes.get(name).await.ok()?;
    dk.status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

#[tokio::test]
async fn a_rejected_network_zone_and_a_rejected_token_name_what_to_fix() {
    env();
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    tenant.set_fault(
        Endpoint::ConnectionInfo,
        test_fake_tenant::Fault::BadRequest {
            message: "Unknown network zone \"nowhere\"".into(),
        },
        None,
    );
    let ns = TestNamespace::create().await.unwrap();
    token_secret(&ns, "zone").await;
    let mut dk = dynakube(
        "zone",
        &tenant.api_url(),
        json!({ "hostMonitoring": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dk.spec.network_zone = Some("nowhere".into());
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let (_, reason, message) = test_kit::eventually("the network zone to be reported", WAIT, || async {
        Ok(condition_of(&dynakubes, "zone", "DynatraceAPI")
            .await
            .filter(|(status, _, _)| status == "False"))
    })
    .await
    .unwrap();
    assert_eq!(reason, "NetworkZoneRejected");
    assert!(
        message.contains("network zone \"nowhere\"") && message.contains("set spec.networkZone"),
        "{message}"
    );
    let events = event_reasons(&ns, "zone").await;
    assert!(events.contains(&"NetworkZoneRejected".to_owned()), "{events:?}");
    let phase = dynakubes.get("zone").await.unwrap().status.unwrap().phase;
    assert_eq!(phase.as_deref(), Some("Error"));

    // A token the environment does not know is a token problem, not an unavailable API.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "unknown-token" },
        "stringData": { "apiToken": "dt0c01.unknown" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let dk = dynakube(
        "unknown-token",
        &tenant.api_url(),
        json!({ "hostMonitoring": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    let message = wait_tokens_condition(&dynakubes, "unknown-token", false).await;
    assert!(message.contains("rejected the token"), "{message}");
    let events = event_reasons(&ns, "unknown-token").await;
    assert!(events.contains(&"TokenError".to_owned()), "{events:?}");
    assert!(
        !events.contains(&"DynatraceAPIUnavailable".to_owned()),
        "{events:?}"
    );
    tenant.shutdown().await;
}

#[tokio::test]
async fn pods_the_cluster_refuses_are_reported_with_what_to_fix_and_recover() {
    use pure_api::oneagent::OneAgent;
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("refused-{}", ns.name);
    ns.create_node("r1", &[(pool.as_str(), "dk")], Vec::new())
        .await
        .unwrap();
    ns.create_node("r2", &[(pool.as_str(), "legacy")], Vec::new())
        .await
        .unwrap();
    // No ServiceAccounts: the DaemonSet controller cannot create the pods.
    token_secret(&ns, "refused").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "refused",
        &env.api_url,
        json!({ "classicFullStack": { "nodeSelector": { pool.clone(): "dk" } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    legacy_token_secret(&ns, "legacy").await;
    let oneagents: Api<OneAgent> = Api::namespaced(ns.client.clone(), &ns.name);
    let oneagent: OneAgent = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
        "metadata": { "name": "legacy" },
        "spec": { "apiUrl": env.api_url, "nodeSelector": { pool.clone(): "legacy" } },
    }))
    .unwrap();
    oneagents.create(&PostParams::default(), &oneagent).await.unwrap();

    let (_, _, message) = test_kit::eventually("the DynaKube's refused pods", WAIT, || async {
        Ok(condition_of(&dynakubes, "refused", "OneAgentRollout")
            .await
            .filter(|(_, reason, _)| reason == "PodsNotCreated"))
    })
    .await
    .unwrap();
    assert!(
        message.contains("cannot create OneAgent pods: 1 of 1 nodes have none")
            && message.contains("dynatrace-dynakube-oneagent")
            && message.contains("Create the ServiceAccount"),
        "{message}"
    );
    let status = dynakubes.get("refused").await.unwrap().status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Error"));
    let events = event_reasons(&ns, "refused").await;
    assert!(events.contains(&"DaemonSetFailedCreate".to_owned()), "{events:?}");
    let legacy = test_kit::eventually("the OneAgent's refused pods", WAIT, || async {
        let status = oneagents.get("legacy").await?.status.unwrap_or_default();
        let condition = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "OneAgentRollout" && c.reason == "PodsNotCreated")
            .cloned();
        Ok(condition.map(|c| (status.phase.clone(), c.message)))
    })
    .await
    .unwrap();
    assert_eq!(legacy.0.as_deref(), Some("Error"));
    assert!(legacy.1.contains("dynatrace-oneagent"), "{}", legacy.1);

    // Fixed: the pods come and the conditions say so.
    oneagent_service_account(&ns).await;
    service_account(&ns, "dynatrace-oneagent").await;
    test_kit::eventually("the DynaKube's pods", Duration::from_secs(180), || async {
        Ok(condition_of(&dynakubes, "refused", "OneAgentRollout")
            .await
            .filter(|(status, _, _)| status == "True"))
    })
    .await
    .unwrap();
    test_kit::eventually("the OneAgent's pods", Duration::from_secs(180), || async {
        let status = oneagents.get("legacy").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap();
}

/// Whether the operator wrote `object`: a `dynatrace-operator*` field manager in its managedFields, or its
/// label `app.kubernetes.io/managed-by: dynatrace-operator` on an object no controller made (the
/// DaemonSet's pods and revisions carry the label of its template, but the DaemonSet controller made them).
fn written_by_the_operator(object: &DynamicObject) -> bool {
    let meta = &object.metadata;
    let by_manager = meta.managed_fields.iter().flatten().any(|f| {
        f.manager
            .as_deref()
            .is_some_and(|m| m.starts_with("dynatrace-operator"))
    });
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/managed-by"))
        .is_some_and(|v| v == "dynatrace-operator");
    let controlled = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true));
    by_manager || (labelled && !controlled)
}

/// Every object the operator wrote in the namespace, of every namespaced kind the API server lists, except
/// Events and Leases (never a resource's) and the object `except_uid` itself (the operator writes its
/// status). Found by what wrote them, not by name, so that an object added later is checked too.
async fn operator_objects(
    ns: &TestNamespace,
    except_uid: &str,
) -> anyhow::Result<Vec<(ApiResource, DynamicObject)>> {
    let discovery = Discovery::new(ns.client.clone()).run().await?;
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            let skipped = matches!(
                (resource.group.as_str(), resource.kind.as_str()),
                ("" | "events.k8s.io", "Event") | ("coordination.k8s.io", "Lease")
            );
            if skipped
                || capabilities.scope != Scope::Namespaced
                || !capabilities.supports_operation(verbs::LIST)
            {
                continue;
            }
            // DynaKubes are listed at their storage version: the recommended one (v1beta6) would be
            // converted through the webhook, which this cluster does not run.
            let mut resource = resource.clone();
            if resource.group == "dynatrace.com" && resource.kind == "DynaKube" {
                resource.version = pure_api::crd::DYNAKUBE_STORAGE_VERSION.to_owned();
                resource.api_version = format!("dynatrace.com/{}", resource.version);
            }
            let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &resource);
            for object in api.list(&ListParams::default()).await?.items {
                if written_by_the_operator(&object) && object.metadata.uid.as_deref() != Some(except_uid) {
                    found.push((resource.clone(), object));
                }
            }
        }
    }
    Ok(found)
}

/// Checks that everything the operator wrote in the namespace for `owner` (already converged) names it
/// as controlling owner with blockOwnerDeletion, deletes `owner`, and waits until the garbage collector
/// of kube-controller-manager removed all of it. `expected` are kinds and names that must be among them,
/// so that the check is not vacuous.
async fn everything_written_is_owned_and_goes_with<K>(
    ns: &TestNamespace,
    owners: &Api<K>,
    name: &str,
    expected: &[(&str, String)],
) where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let owner = owners.get(name).await.unwrap();
    let uid = owner.uid().unwrap();
    let written = operator_objects(ns, &uid).await.unwrap();
    let listed: BTreeSet<(String, String)> = written
        .iter()
        .map(|(resource, object)| (resource.kind.clone(), object.name_any()))
        .collect();
    for (kind, object) in expected {
        assert!(
            listed.contains(&((*kind).to_owned(), object.clone())),
            "{kind} {object} is not among the operator's objects {listed:?}"
        );
    }
    let not_owned: Vec<String> = written
        .iter()
        .filter(|(_, object)| {
            !object.owner_references().iter().any(|o| {
                o.uid == uid
                    && o.kind == K::kind(&())
                    && o.api_version == K::api_version(&())
                    && o.name == name
                    && o.controller == Some(true)
                    && o.block_owner_deletion == Some(true)
            })
        })
        .map(|(resource, object)| {
            format!(
                "{} {} (owners {:?})",
                resource.kind,
                object.name_any(),
                object.owner_references()
            )
        })
        .collect();
    assert!(
        not_owned.is_empty(),
        "not owned by {} {name} as controller with blockOwnerDeletion: {not_owned:#?}",
        K::kind(&())
    );

    let deleted = std::time::Instant::now();
    owners.delete(name, &DeleteParams::default()).await.unwrap();
    let left_over = || async {
        let mut left = Vec::new();
        for (resource, object) in &written {
            let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, resource);
            let current = api.get_opt(&object.name_any()).await?;
            if current.is_some_and(|c| c.metadata.uid == object.metadata.uid) {
                left.push(format!("{} {}", resource.kind, object.name_any()));
            }
        }
        anyhow::Ok(left)
    };
    let collected = test_kit::eventually(
        &format!("everything the operator wrote for {name} to be collected"),
        WAIT,
        || async { Ok(left_over().await?.is_empty().then_some(())) },
    )
    .await;
    if let Err(error) = collected {
        panic!("{error}; left: {:?}", left_over().await);
    }
    println!(
        "{} objects of {} {name} collected {:?} after its deletion",
        written.len(),
        K::kind(&()),
        deleted.elapsed()
    );
}

#[tokio::test]
async fn everything_written_for_a_dynakube_is_owned_by_it_and_deleted_with_it() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    token_secret(&ns, "owned").await;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let dk = dynakube(
        "owned",
        &env.api_url,
        json!({ "cloudNativeFullStack": { "nodeSelector": { "none": ns.name.clone() } } }),
    );
    dynakubes.create(&PostParams::default(), &dk).await.unwrap();
    test_kit::eventually("the DynaKube to be Running", WAIT, || async {
        let status = dynakubes.get("owned").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap();
    let expected = [
        ("Secret", "owned-oneagent-tenant-secret"),
        ("Secret", "owned-pull-secret"),
        ("ConfigMap", "owned-deployment-metadata"),
        ("ConfigMap", "owned-oneagent-connection-info"),
        ("DaemonSet", "owned-oneagent"),
    ]
    .map(|(kind, name)| (kind, name.to_owned()));
    everything_written_is_owned_and_goes_with(&ns, &dynakubes, "owned", &expected).await;
    // The token Secret is the user's: it stays.
    assert!(
        Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
            .get_opt("owned")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn everything_written_for_a_legacy_oneagent_is_owned_by_it_and_deleted_with_it() {
    use pure_api::oneagent::OneAgent;
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    service_account(&ns, "dynatrace-oneagent").await;
    legacy_token_secret(&ns, "legacy").await;
    // Immutable mode: the only one with a pull Secret.
    let oneagent: OneAgent = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
        "metadata": { "name": "legacy" },
        "spec": {
            "apiUrl": env.api_url,
            "useImmutableImage": true,
            "nodeSelector": { "none": ns.name.clone() },
        },
    }))
    .unwrap();
    let oneagents: Api<OneAgent> = Api::namespaced(ns.client.clone(), &ns.name);
    oneagents.create(&PostParams::default(), &oneagent).await.unwrap();
    test_kit::eventually("the OneAgent to be Running", WAIT, || async {
        let status = oneagents.get("legacy").await?.status.unwrap_or_default();
        Ok((status.phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap();
    let expected = [("Secret", "legacy-pull-secret"), ("DaemonSet", "legacy")]
        .map(|(kind, name)| (kind, name.to_owned()));
    everything_written_is_owned_and_goes_with(&ns, &oneagents, "legacy", &expected).await;
}

#[tokio::test]
async fn a_legacy_oneagent_forgets_the_instances_of_nodes_that_are_gone() {
    use pure_api::oneagent::OneAgent;
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    let pool = format!("gone-{}", ns.name);
    let mut nodes = Vec::new();
    for suffix in ["g1", "g2"] {
        let node = ns
            .create_node(suffix, &[(pool.as_str(), "legacy")], Vec::new())
            .await
            .unwrap();
        nodes.push(node.name_any());
    }
    service_account(&ns, "dynatrace-oneagent").await;
    legacy_token_secret(&ns, "gone").await;
    let oneagents: Api<OneAgent> = Api::namespaced(ns.client.clone(), &ns.name);
    let oneagent: OneAgent = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent",
        "metadata": { "name": "gone" },
        "spec": { "apiUrl": env.api_url, "nodeSelector": { pool.clone(): "legacy" } },
    }))
    .unwrap();
    oneagents.create(&PostParams::default(), &oneagent).await.unwrap();
    let instances_are = |expected: Vec<String>, wait: Duration| {
        let oneagents = oneagents.clone();
        async move {
            test_kit::eventually(&format!("instances {expected:?}"), wait, || async {
                let status = oneagents.get("gone").await?.status.unwrap_or_default();
                let instances: Vec<String> = status.instances.unwrap_or_default().into_keys().collect();
                Ok((instances == expected).then_some(()))
            })
            .await
            .unwrap();
        }
    };
    instances_are(nodes.clone(), WAIT).await;
    delete_node(&ns, &nodes[1]).await;
    instances_are(vec![nodes[0].clone()], GONE_NODE_WAIT).await;
}

/// The samples under `samples/dynakube/` (every served version, every mode), stored at the storage version as
/// the conversion webhook would store them, are reconciled: each reaches phase Running, and each host mode's
/// DaemonSet runs a OneAgent pod on exactly the node its sample selects.
#[tokio::test]
async fn the_samples_of_every_version_are_reconciled() {
    let env = env();
    let ns = TestNamespace::create().await.unwrap();
    oneagent_service_account(&ns).await;
    let node_label = format!("sample-{}", ns.name);
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let samples = test_kit::samples::dynakubes().unwrap();
    let mut daemonsets = Vec::new();
    for sample in &samples {
        let name = sample.name();
        let stored = pure_api::dynakube::conversion::convert(
            sample.confined(&env.api_url, &node_label),
            pure_api::dynakube::conversion::HUB_API_VERSION,
        )
        .unwrap_or_else(|e| panic!("converting the sample {name}: {e}"));
        let dynakube: DynaKube = serde_json::from_value(stored).unwrap();
        if dynakube.needs_one_agent() {
            let node = ns
                .create_node(&name, &[(node_label.as_str(), name.as_str())], Vec::new())
                .await
                .unwrap();
            daemonsets.push((format!("{name}-oneagent"), BTreeSet::from([node.name_any()])));
        }
        token_secret(&ns, &name).await;
        dynakubes.create(&PostParams::default(), &dynakube).await.unwrap();
    }
    for sample in &samples {
        let name = sample.name();
        test_kit::eventually(&format!("the sample {name} to be Running"), WAIT, || async {
            let dk = dynakubes.get(&name).await?;
            Ok((dk.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(()))
        })
        .await
        .unwrap();
    }
    let applied: Api<DaemonSet> = Api::namespaced(ns.client.clone(), &ns.name);
    for (daemonset, nodes) in &daemonsets {
        wait_for_pods_on(&ns, daemonset, nodes).await;
        // The samples' toleration of control-plane nodes reaches the pods.
        let tolerations = applied
            .get(daemonset)
            .await
            .unwrap()
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.tolerations)
            .unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node-role.kubernetes.io/control-plane")),
            "{daemonset}: {tolerations:?}"
        );
    }
    // Every host mode of every version: the v1alpha1 sample and three per later version.
    assert_eq!(daemonsets.len(), 1 + 3 * 6);
}
