//! The pod webhook through a real API server for DynaKubes written as `dynatrace.com/v1beta6`:
//! applicationMonitoring without `useCSIDriver` uses the CSI driver exactly when it is installed, and
//! `metadataEnrichment.namespaceSelector` enriches the namespaces it selects independently of the
//! code-module injection selector, for a classicFullStack DynaKube too (enrichment only).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use io_webhook::registration;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::names::CSI_DAEMONSET;
use pure_api::dynakube::{DynaKube, v1beta6};
use serde_json::{Value, json};
use test_kit::TestNamespace;

const WAIT: Duration = Duration::from_secs(60);
const TENANT: &str = "abc12345";

/// The webhook server, the CRDs and the DynaKubes shared by the tests of this binary. The CSI driver is
/// not installed at first.
struct Env {
    /// Where the DynaKubes live (the webhook's namespace).
    home: String,
}

fn env() -> &'static Env {
    static ENV: test_kit::PerBinary<Env> = test_kit::PerBinary::new();
    ENV.get_or_start("the enrichment test environment", || async {
        let (env, server) = set_up().await?;
        Ok((env, async move { std::mem::forget(server) }))
    })
}

/// A v1beta6 applicationMonitoring DynaKube `name`, injecting into namespaces labelled `inject=<name>`,
/// with `metadata_enrichment` as its `spec.metadataEnrichment`.
fn dynakube(name: &str, metadata_enrichment: Value) -> v1beta6::DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta6", "kind": "DynaKube",
        "metadata": { "name": name },
        "spec": {
            "apiUrl": format!("https://{TENANT}.live.dynatrace.com/api"),
            "metadataEnrichment": metadata_enrichment,
            "oneAgent": { "applicationMonitoring": {
                "namespaceSelector": { "matchLabels": { "inject": name } },
            } },
        },
    }))
    .unwrap()
}

async fn set_up() -> anyhow::Result<(Env, common::TestServer)> {
    let cluster = test_kit::shared_cluster().await?;
    let client = cluster.client().await?;
    let home = TestNamespace::create_in(cluster).await?;
    let server = common::start_injecting(
        io_webhook::ClusterCache::start(client.clone(), &Default::default()),
        client.clone(),
        "localhost/dynatrace-operator:enrichment-test",
        &home.name,
    )
    .await;
    let base = format!("https://{}", server.server.addr);
    let endpoint = pure_api::crd::ConversionEndpoint::Url {
        url: format!("{base}/convert"),
        ca_bundle_pem: server.ca_pem.clone(),
    };
    test_kit::install_crds(&client, &pure_api::crd::all(&endpoint)).await?;
    let configuration = registration::mutating_configuration("dynatrace-webhook", &base, &server.ca_pem);
    registration::apply_mutating_configuration(&client, &configuration, "enrichment-tests").await?;

    let latest: Api<v1beta6::DynaKube> = Api::namespaced(client.clone(), &home.name);
    let hub: Api<DynaKube> = Api::namespaced(client.clone(), &home.name);
    for dk in [
        // Enrichment follows the injection selector.
        dynakube("follow", json!({ "enabled": true })),
        // Enrichment selects its own namespaces.
        dynakube(
            "split",
            json!({ "enabled": true, "namespaceSelector": { "matchLabels": { "enrich": "split" } } }),
        ),
        // classicFullStack: enrichment only, in the namespaces its enrichment selector selects.
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta6", "kind": "DynaKube",
            "metadata": { "name": "classic" },
            "spec": {
                "apiUrl": format!("https://{TENANT}.live.dynatrace.com/api"),
                "metadataEnrichment": {
                    "enabled": true,
                    "namespaceSelector": { "matchLabels": { "enrich": "classic" } },
                },
                "oneAgent": { "classicFullStack": {} },
            },
        }))?,
    ] {
        let name = dk.name_any();
        // Written through the conversion webhook, as a user of the reference's current version would.
        latest.create(&PostParams::default(), &dk).await?;
        let status = json!({ "status": {
            "oneAgent": { "connectionInfoStatus": {
                "tenantUUID": TENANT,
                "endpoints": "https://tenant.example:443/communication",
                "communicationHosts": [{ "protocol": "https", "host": "tenant.example", "port": 443 }],
            }},
            "codeModules": { "version": "1.277.0.20230914-094321" },
        }});
        hub.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let home_name = home.name.clone();
    std::mem::forget(home);
    Ok((Env { home: home_name }, server))
}

/// A namespace with `labels` and the Secrets the operator would have written, once the namespace webhook
/// has labelled it for `dynakube`.
async fn mapped_namespace(dynakube: &str, labels: &[(&str, &str)]) -> anyhow::Result<TestNamespace> {
    let _ = env();
    common::mapped_namespace(dynakube, labels.iter().copied().collect(), WAIT).await
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "main", "image": "registry.example/main:1" }] },
    }))
    .unwrap()
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// [`common::create_until`] within this binary's wait.
async fn create_until(
    client: &Client,
    namespace: &str,
    pod: &Pod,
    wanted: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    common::create_until(client, namespace, pod, wanted, WAIT).await
}

fn init(pod: &Pod) -> &Container {
    pod.spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()
        .last()
        .unwrap()
}

fn mode(pod: &Pod) -> Option<&str> {
    init(pod)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "MODE")
        .and_then(|e| e.value.as_deref())
}

fn volume_names(pod: &Pod) -> Vec<&str> {
    pod.spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect()
}

/// (code module injected, metadata enrichment injected), from the annotations, checked against the
/// volumes and the application container.
fn parts(pod: &Pod) -> (bool, bool) {
    let oneagent = annotation(pod, "oneagent.dynatrace.com/injected") == Some("true");
    let enrichment = annotation(pod, "data-ingest.dynatrace.com/injected") == Some("true");
    let volumes = volume_names(pod);
    assert_eq!(volumes.contains(&"oneagent-bin"), oneagent, "{volumes:?}");
    assert_eq!(
        volumes.contains(&"data-ingest-endpoint"),
        enrichment,
        "{volumes:?}"
    );
    let main = &pod.spec.as_ref().unwrap().containers[0];
    let preload = main.env.iter().flatten().any(|e| e.name == "LD_PRELOAD");
    assert_eq!(preload, oneagent, "{:?}", main.env);
    (oneagent, enrichment)
}

fn injected(pod: &Pod) -> bool {
    annotation(pod, "dynakube.dynatrace.com/injected") == Some("true")
}

#[tokio::test]
async fn application_monitoring_without_use_csi_driver_follows_the_installed_driver() {
    let ns = mapped_namespace("follow", &[("inject", "follow")]).await.unwrap();
    // No CSI driver: the init container downloads the code module.
    let first = create_until(&ns.client, &ns.name, &pod("before"), injected)
        .await
        .unwrap();
    assert_eq!(mode(&first), Some("installer"));
    assert_eq!(parts(&first), (true, true));

    // The CSI driver is installed: new pods mount its volume.
    let home = &env().home;
    common::install_csi_driver_marker(&ns.client, home).await.unwrap();
    let second = create_until(&ns.client, &ns.name, &pod("after"), |p| {
        injected(p) && mode(p) == Some("provisioned")
    })
    .await
    .unwrap();
    let bin = second
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "oneagent-bin")
        .unwrap();
    assert_eq!(
        bin.csi.as_ref().expect("a CSI volume").driver,
        "csi.oneagent.dynatrace.com"
    );

    // Uninstalled again: back to downloads (no pod waits for a driver that is gone).
    Api::<DaemonSet>::namespaced(ns.client.clone(), home)
        .delete(CSI_DAEMONSET, &Default::default())
        .await
        .unwrap();
    let third = create_until(&ns.client, &ns.name, &pod("gone"), |p| {
        injected(p) && mode(p) == Some("installer")
    })
    .await
    .unwrap();
    assert_eq!(parts(&third), (true, true));
}

#[tokio::test]
async fn a_namespace_selected_only_for_enrichment_gets_enriched_pods_without_oneagent() {
    let enriched = mapped_namespace("split", &[("enrich", "split")]).await.unwrap();
    let pod_there = create_until(&enriched.client, &enriched.name, &pod("enriched"), injected)
        .await
        .unwrap();
    assert_eq!(parts(&pod_there), (false, true));
    let init_env: Vec<&str> = init(&pod_there)
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        init_env.contains(&"DATA_INGEST_INJECTED") && !init_env.contains(&"MODE"),
        "{init_env:?}"
    );

    let injected_only = mapped_namespace("split", &[("inject", "split")]).await.unwrap();
    let pod_there = create_until(
        &injected_only.client,
        &injected_only.name,
        &pod("injected"),
        injected,
    )
    .await
    .unwrap();
    assert_eq!(parts(&pod_there), (true, false));

    let both = mapped_namespace("split", &[("inject", "split"), ("enrich", "split")])
        .await
        .unwrap();
    let pod_there = create_until(&both.client, &both.name, &pod("both"), injected)
        .await
        .unwrap();
    assert_eq!(parts(&pod_there), (true, true));
}

#[tokio::test]
async fn a_classic_full_stack_dynakube_enriches_the_namespaces_its_selector_selects() {
    let enriched = mapped_namespace("classic", &[("enrich", "classic")])
        .await
        .unwrap();
    let pod_there = create_until(&enriched.client, &enriched.name, &pod("classic"), injected)
        .await
        .unwrap();
    assert_eq!(parts(&pod_there), (false, true));
    assert_eq!(mode(&pod_there), None);
}
