//! The mutating webhooks through a real API server: `/label-ns` labels a namespace that a DynaKube
//! selects, `/inject` mutates the pods created there (directly and through a Deployment → ReplicaSet → Pod
//! chain run by the real controller manager), a second webhook's container is injected on reinvocation,
//! Pod Security `restricted` admits injected pods, and with the webhook gone pods are still created.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use io_webhook::registration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, EnvVar, Namespace, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use pure_api::dynakube::names::INIT_SECRET;
use serde_json::{Value, json};
use test_kit::TestNamespace;

use common::INSTANCE_LABEL;

const WAIT: Duration = Duration::from_secs(60);
const INIT_IMAGE: &str = "localhost/dynatrace-operator:inject-test";
const TENANT: &str = "abc12345";
const CODE_MODULES_VERSION: &str = "1.277.0.20230914-094321";

/// The webhook server, the CRDs and the DynaKubes shared by the tests of this binary.
struct Env {
    /// Where the DynaKubes live (the webhook's namespace).
    home: String,
    /// The webhook server's plain-HTTP metrics address.
    metrics: std::net::SocketAddr,
}

fn env() -> &'static Env {
    static ENV: test_kit::PerBinary<Env> = test_kit::PerBinary::new();
    ENV.get_or_start("the injection test environment", || async {
        let (env, server) = set_up().await?;
        Ok((env, async move { std::mem::forget(server) }))
    })
}

/// A DynaKube `name` in the given mode, selecting namespaces labelled `inject=<name>` (v1beta1 has the
/// selector at the top of the spec).
fn dynakube(name: &str, one_agent: Value) -> DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": {
            "name": name,
            "annotations": { "feature.dynatrace.com/label-version-detection": "true" }
        },
        "spec": {
            "apiUrl": format!("https://{TENANT}.live.dynatrace.com/api"),
            "networkZone": "zone-a",
            "namespaceSelector": { "matchLabels": { "inject": name } },
            "oneAgent": one_agent,
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
        INIT_IMAGE,
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
    registration::apply_mutating_configuration(&client, &configuration, "inject-tests").await?;

    // The CSI driver's DaemonSet: the modes that use the driver mount it only where it is installed (the
    // webhook falls back to the init container's download otherwise, so no pod waits for a missing driver).
    common::install_csi_driver_marker(&client, &home.name).await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), &home.name);
    for dk in [
        dynakube("cloud", json!({ "cloudNativeFullStack": {} })),
        dynakube(
            "app-csi",
            json!({ "applicationMonitoring": { "useCSIDriver": true } }),
        ),
        // Explicitly never the CSI driver (without the field it would follow the installed driver).
        dynakube(
            "app",
            json!({ "applicationMonitoring": { "useCSIDriver": false } }),
        ),
    ] {
        let name = dk.name_any();
        dynakubes.create(&PostParams::default(), &dk).await?;
        let status = json!({ "status": {
            "oneAgent": { "connectionInfoStatus": {
                "tenantUUID": TENANT,
                "endpoints": "https://tenant.example:443/communication",
                "communicationHosts": [{ "protocol": "https", "host": "tenant.example", "port": 443 }],
            }},
            "codeModules": { "version": CODE_MODULES_VERSION },
        }});
        dynakubes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    // The home namespace stays: it holds the DynaKubes for the whole binary.
    let home_name = home.name.clone();
    std::mem::forget(home);
    let metrics = server.server.metrics_addr;
    Ok((
        Env {
            home: home_name,
            metrics,
        },
        server,
    ))
}

/// A namespace labelled `inject=<dynakube>` with the Secrets the operator would have written, once the
/// namespace webhook has labelled it for that DynaKube (which also shows that the webhook's caches know the
/// DynaKubes).
async fn mapped_namespace(dynakube: &str, extra_labels: &[(&str, &str)]) -> anyhow::Result<TestNamespace> {
    let _ = env();
    let mut labels: BTreeMap<&str, &str> = extra_labels.iter().copied().collect();
    labels.insert("inject", dynakube);
    common::mapped_namespace(dynakube, labels, WAIT).await
}

fn pod(name: &str, containers: &[&str]) -> Pod {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({ "name": c, "image": format!("registry.example/{c}:1") }))
        .collect();
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app.kubernetes.io/version": "7.1" } },
        "spec": { "containers": containers },
    }))
    .unwrap()
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a EnvVar> {
    container.env.iter().flatten().find(|e| e.name == name)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn is_injected(pod: &Pod) -> bool {
    annotation(pod, "oneagent.dynatrace.com/injected") == Some("true")
}

/// Creates `pod` until the webhook's caches have caught up with the namespace and its Secrets (a pod
/// created before that is admitted unchanged, by design), and returns the injected pod.
async fn create_injected(client: &Client, namespace: &str, pod: &Pod) -> anyhow::Result<Pod> {
    create_until(client, namespace, pod, is_injected).await
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

#[tokio::test]
async fn the_namespace_webhook_labels_a_namespace_its_dynakube_selects() {
    let ns = mapped_namespace("cloud", &[]).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    // Selected by no DynaKube any more: the label goes.
    let unlabelled = namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "inject": "nobody" } } })),
        )
        .await
        .unwrap();
    assert_eq!(
        unlabelled.labels().get(INSTANCE_LABEL),
        None,
        "{:?}",
        unlabelled.labels()
    );
}

#[tokio::test]
async fn a_pod_is_injected_for_cloud_native_full_stack() {
    let ns = mapped_namespace("cloud", &[]).await.unwrap();
    let pod = create_injected(&ns.client, &ns.name, &pod("app", &["main", "sidecar"]))
        .await
        .unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap().last().unwrap();
    assert_eq!(init.image.as_deref(), Some(INIT_IMAGE));
    assert_eq!(init.args.as_deref(), Some(&["init".to_owned()][..]));
    assert_eq!(
        env_value(init, "MODE").and_then(|e| e.value.as_deref()),
        Some("provisioned")
    );
    assert_eq!(
        env_value(init, "CONTAINERS_COUNT").and_then(|e| e.value.as_deref()),
        Some("2")
    );
    assert_eq!(
        env_value(init, "VERSION").and_then(|e| e.value.as_deref()),
        Some(CODE_MODULES_VERSION)
    );
    let volumes: BTreeMap<_, _> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let bin = volumes["oneagent-bin"]
        .csi
        .as_ref()
        .expect("oneagent-bin is a CSI volume");
    assert_eq!(bin.driver, "csi.oneagent.dynatrace.com");
    assert!(volumes.contains_key("oneagent-share"));
    assert_eq!(
        volumes["injection-config"]
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .as_deref(),
        Some(INIT_SECRET)
    );
    for container in &spec.containers {
        let preload = env_value(container, "LD_PRELOAD").and_then(|e| e.value.as_deref());
        assert_eq!(
            preload,
            Some("/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so"),
            "{}",
            container.name
        );
        assert_eq!(
            env_value(container, "DT_NETWORK_ZONE").and_then(|e| e.value.as_deref()),
            Some("zone-a")
        );
        assert!(
            env_value(container, "DT_RELEASE_VERSION").is_some(),
            "label version detection"
        );
        let mounts: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.as_str(), m.sub_path.as_deref()))
            .collect();
        assert!(
            mounts.contains(&("/etc/ld.so.preload", Some("ld.so.preload"))),
            "{mounts:?}"
        );
        let conf = format!("container_{}.conf", container.name);
        assert!(
            mounts.contains(&(
                "/var/lib/dynatrace/oneagent/agent/config/container.conf",
                Some(conf.as_str())
            )),
            "{mounts:?}"
        );
    }
    assert_eq!(annotation(&pod, "dynakube.dynatrace.com/injected"), Some("true"));
}

#[tokio::test]
async fn application_monitoring_without_csi_downloads_in_the_init_container() {
    let ns = mapped_namespace("app", &[]).await.unwrap();
    let pod = create_injected(&ns.client, &ns.name, &pod("app", &["main"]))
        .await
        .unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap().last().unwrap();
    assert_eq!(
        env_value(init, "MODE").and_then(|e| e.value.as_deref()),
        Some("installer")
    );
    let bin = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "oneagent-bin")
        .unwrap();
    assert!(bin.empty_dir.is_some(), "{bin:?}");
}

#[tokio::test]
async fn application_monitoring_with_csi_mounts_the_csi_volume() {
    let ns = mapped_namespace("app-csi", &[]).await.unwrap();
    let pod = create_injected(&ns.client, &ns.name, &pod("app", &["main"]))
        .await
        .unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let bin = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "oneagent-bin")
        .unwrap();
    let csi = bin.csi.as_ref().expect("a CSI volume");
    assert_eq!(
        csi.volume_attributes
            .as_ref()
            .unwrap()
            .get("dynakube")
            .map(String::as_str),
        Some("app-csi")
    );
}

#[tokio::test]
async fn a_deployment_pod_names_its_workload_through_the_owner_chain() {
    let ns = mapped_namespace("app", &[]).await.unwrap();
    // Wait until the webhook's caches know the namespace and its Secrets.
    let probe = create_injected(&ns.client, &ns.name, &pod("probe", &["main"]))
        .await
        .unwrap();
    drop(probe);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "shop" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "shop" } },
            "template": {
                "metadata": { "labels": { "app": "shop" } },
                "spec": { "containers": [{ "name": "main", "image": "registry.example/shop:1" }] }
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    // The ReplicaSet must be in the webhook's owner cache before its pod arrives; the controller manager
    // creates both within milliseconds, so the first pod may name the ReplicaSet's kind instead. Wait for
    // the pod and check what it names; then recreate it (the ReplicaSet makes a new one) if needed.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let found = test_kit::eventually("the Deployment's pod named as a Deployment", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=shop")).await?;
        for pod in list.items {
            let init = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .and_then(|c| c.last().cloned());
            let Some(init) = init else {
                pods.delete(&pod.name_any(), &Default::default()).await?;
                continue;
            };
            let kind = env_value(&init, "DT_WORKLOAD_KIND").and_then(|e| e.value.clone());
            let name = env_value(&init, "DT_WORKLOAD_NAME").and_then(|e| e.value.clone());
            if kind.as_deref() == Some("Deployment") {
                return Ok(Some(name));
            }
            pods.delete(&pod.name_any(), &Default::default()).await?;
        }
        Ok(None)
    })
    .await
    .unwrap();
    assert_eq!(found.as_deref(), Some("shop"));
    // The ReplicaSet really is in between.
    let replica_sets = Api::<ReplicaSet>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(replica_sets.items.len(), 1);
}

#[tokio::test]
async fn a_restricted_namespace_admits_injected_pods() {
    let ns = mapped_namespace(
        "app",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await
    .unwrap();
    let restricted: Pod = serde_json::from_value(json!({
        "metadata": { "name": "restricted" },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "main", "image": "registry.example/main:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                }
            }]
        }
    }))
    .unwrap();
    let pod = create_injected(&ns.client, &ns.name, &restricted).await.unwrap();
    let init = pod.spec.unwrap().init_containers.unwrap().pop().unwrap();
    let security = init.security_context.unwrap();
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.run_as_non_root, Some(true));
}

#[tokio::test]
async fn pods_in_unmapped_namespaces_are_not_sent() {
    let _ = env();
    let ns = TestNamespace::create().await.unwrap();
    let created = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &pod("plain", &["main"]))
        .await
        .unwrap();
    assert!(created.spec.as_ref().unwrap().init_containers.is_none());
    assert!(annotation_is_absent(&created));
}

fn annotation_is_absent(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_none_or(|a| !a.keys().any(|k| k.contains("dynatrace")))
}

#[tokio::test]
async fn env_home_holds_the_dynakubes() {
    let env = env();
    let client = test_kit::shared_cluster().await.unwrap().client().await.unwrap();
    let list = Api::<DynaKube>::namespaced(client, &env.home)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(list.items.len(), 3);
}

/// A second mutating webhook, served by the test, that appends a container `late` to pods annotated
/// `test.dynatrace.com/append-container`. Its configuration sorts after ours, so the API server calls it
/// after ours and then re-invokes ours (`reinvocationPolicy: IfNeeded`).
async fn start_appending_webhook(client: &Client) -> anyhow::Result<()> {
    use axum::routing::post;
    let certs_dir = std::env::temp_dir().join(format!("append-webhook-{}", std::process::id()));
    let ca_pem = common::write_certificate(&certs_dir);
    let certificate = io_webhook::tls::ReloadingCertificate::load(&certs_dir)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(certificate.server_config()?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/append",
        post(|body: axum::body::Bytes| async move {
            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
            let uid = review["request"]["uid"].clone();
            let pod = &review["request"]["object"];
            let wanted = pod["metadata"]["annotations"]["test.dynatrace.com/append-container"] == "true";
            let has_late = pod["spec"]["containers"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "late"));
            let mut response = json!({ "uid": uid, "allowed": true });
            if wanted && !has_late {
                let patch = json!([{ "op": "add", "path": "/spec/containers/-",
                    "value": { "name": "late", "image": "registry.example/late:1" } }]);
                use base64::Engine as _;
                response["patchType"] = json!("JSONPatch");
                response["patch"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
            }
            axum::Json(json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response
            }))
        }),
    );
    tokio::spawn(io_serving::serve(
        listener,
        Some(acceptor),
        router,
        Default::default(),
        Default::default(),
    ));
    let mut configuration =
        registration::mutating_configuration("zz-append-container", "https://unused", &ca_pem);
    let webhooks = configuration.webhooks.as_mut().unwrap();
    webhooks.truncate(1);
    webhooks[0].name = "append.test.dynatrace.com".to_owned();
    webhooks[0].client_config.url = Some(format!("https://{addr}/append"));
    webhooks[0].reinvocation_policy = Some("Never".to_owned());
    registration::apply_mutating_configuration(client, &configuration, "inject-tests").await?;
    Ok(())
}

#[tokio::test]
async fn reinvocation_injects_a_container_another_webhook_appended() {
    let ns = mapped_namespace("app", &[]).await.unwrap();
    // Served on this test's runtime, which lives as long as the test.
    start_appending_webhook(&ns.client).await.unwrap();
    let mut with_annotation = pod("reinvoked", &["main"]);
    with_annotation
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(
            "test.dynatrace.com/append-container".to_owned(),
            "true".to_owned(),
        );
    let pod = create_until(&ns.client, &ns.name, &with_annotation, |created| {
        let names: Vec<_> = created
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        is_injected(created) && names == ["main", "late"]
    })
    .await
    .unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let late = &spec.containers[1];
    assert_eq!(
        env_value(late, "LD_PRELOAD").and_then(|e| e.value.as_deref()),
        Some("/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so"),
        "the appended container is injected on reinvocation"
    );
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(
        init.len(),
        1,
        "one init container, not a second one on reinvocation"
    );
    let init = &init[0];
    assert_eq!(
        env_value(init, "CONTAINERS_COUNT").and_then(|e| e.value.as_deref()),
        Some("2")
    );
    assert_eq!(
        env_value(init, "CONTAINER_2_NAME").and_then(|e| e.value.as_deref()),
        Some("late")
    );
    // The first container got its changes once.
    let main = &spec.containers[0];
    let preloads = main
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "LD_PRELOAD")
        .count();
    assert_eq!(preloads, 1);
}

#[tokio::test]
async fn pods_are_created_when_the_webhook_is_gone() {
    let _ = env();
    let cluster = test_kit::shared_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    // A webhook server that stops at once, registered for namespaces labelled `gone-webhook=true`.
    let server = common::start(None).await;
    let base = format!("https://{}", server.server.addr);
    let mut configuration =
        registration::mutating_configuration("dynatrace-webhook-gone", &base, &server.ca_pem);
    let webhooks = configuration.webhooks.as_mut().unwrap();
    webhooks.truncate(1);
    webhooks[0].name = "gone.test.dynatrace.com".to_owned();
    webhooks[0].namespace_selector = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: Some([("gone-webhook".to_owned(), "true".to_owned())].into()),
        ..Default::default()
    });
    registration::apply_mutating_configuration(&client, &configuration, "inject-tests")
        .await
        .unwrap();
    server.server.shutdown().await;
    let ns = TestNamespace::create().await.unwrap();
    Api::<Namespace>::all(ns.client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "gone-webhook": "true" } } })),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let created = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .create(&PostParams::default(), &pod("unhurt", &["main"]))
        .await
        .expect("the API server admits the pod when the webhook cannot be reached");
    assert!(annotation_is_absent(&created));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused connection fails fast: {:?}",
        started.elapsed()
    );
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(client)
        .delete("dynatrace-webhook-gone", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_pod_whose_namespace_lacks_the_init_secret_is_admitted_unchanged_with_a_warning() {
    let env = env();
    let ns = mapped_namespace("app", &[]).await.unwrap();
    // The operator has not written the init Secret yet (or it was deleted): mounting it would leave the
    // pod in ContainerCreating, so the webhook must not inject.
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name)
        .delete(INIT_SECRET, &Default::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let event = test_kit::eventually("a warning event on the namespace", WAIT, || async {
        let created = pods
            .create(&PostParams::default(), &pod("uninjected", &["main"]))
            .await?;
        pods.delete("uninjected", &Default::default()).await?;
        assert!(
            created.spec.as_ref().unwrap().init_containers.is_none(),
            "a pod was injected although its namespace has no init Secret"
        );
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InitSecretMissing")))
    })
    .await
    .unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains(INIT_SECRET) && note.contains(&ns.name), "{note}");
    let regarding = event.regarding.unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Namespace"));
    let metrics = test_kit::http_get(env.metrics.port(), "/metrics").await.unwrap();
    assert!(
        metrics.contains(
            r#"dynatrace_webhook_pod_injections_total{result="failed",reason="InitSecretMissing"}"#
        ),
        "{metrics}"
    );
}
