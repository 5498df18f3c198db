//! The CSI driver end to end on the real node: the installation's DaemonSet `dynatrace-oneagent-csi-driver`
//! runs there as pods of our image (`csi-server` and `csi-provisioner`, privileged, Bidirectional
//! propagation), the kubelet registers the driver through the server's in-process registrar (the CSINode
//! lists it), and an applicationMonitoring DynaKube with `useCSIDriver` gets its application pods'
//! `oneagent-bin` published by the kubelet through our driver: the application's process loads the agent
//! library from it, a second pod reuses the version the provisioner cached (the fake tenant counts one
//! download), and deleting the pods unpublishes their volumes (the host's mount table). A DynaKube with
//! `codeModulesImage` gets its pod's agent from the image the provisioner pulled from the environment's
//! registry with the operator's pull Secret. A DynaKube whose
//! version can never be provisioned still gets a running pod, with an empty volume and a warning event,
//! within the server's bounded wait.
//!
//! Serialized with the other real-node tests by the node's lock (`test_kit::real_node::LOCK_FILE`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_install::csi::{CSI_DAEMONSET, CSI_DRIVER, CsiDriverOptions};
use pure_install::{FIELD_MANAGER, Installation};
use serde_json::json;
use test_fake_tenant::oci_layout::{self, Layer, TarEntry};
use test_fake_tenant::{Endpoint, FakeTenant, Listen, TenantConfig};
use test_images::{FAKE_ONEAGENT_VERSIONS, ImageArchive, OPERATOR_IMAGE, Profile, SAMPLE_APP_IMAGE};
use test_kit::eventually;
use test_kit::real_node::workloads::{self, loaded_agent_libraries};
use test_kit::real_node::{self, KUBELET_DIR, NODE_LABEL, NODE_NAME};

const NAMESPACE: &str = "dynatrace";
/// The fake tenant's default API token (every scope).
const TOKEN: &str = "dt0c01.test";
/// The DynaKube whose code modules the driver provisions, and the namespace it selects.
const CSI_DYNAKUBE: &str = "csi-apps";
const CSI_NAMESPACE: &str = "csi-apps";
/// The DynaKube that asks for a version the tenant does not have, and its namespace.
const BROKEN_DYNAKUBE: &str = "csi-never";
const BROKEN_NAMESPACE: &str = "csi-never-apps";
const NEVER_VERSION: &str = "1.1.0.20200101-000000";
/// The DynaKube whose code modules come from `codeModulesImage`, and its namespace.
const IMAGE_DYNAKUBE: &str = "csi-image";
const IMAGE_NAMESPACE: &str = "csi-image-apps";
/// The init Secret and the webhook's volume of the code module.
const BIN_VOLUME: &str = "oneagent-bin";
/// Image imports, container starts and the first download on a loaded 2-core machine.
const POD_TIMEOUT: Duration = Duration::from_secs(180);
/// The server's bound on waiting for a version (the contract's default `--max-mount-wait`, 2 minutes), the
/// kubelet's retry backoff after it (up to about a minute at that point) and the pod's start.
const EMPTY_VOLUME_TIMEOUT: Duration = Duration::from_secs(300);

fn image<'a>(images: &'a [ImageArchive], name: &str) -> &'a ImageArchive {
    images.iter().find(|i| i.name == name).unwrap()
}

async fn apply(client: &Client, objects: &[serde_json::Value]) {
    test_kit::setup::apply_objects(client, objects, "e2e-csi")
        .await
        .unwrap();
}

/// The value, or a panic with the error and what [`diagnose`] finds.
async fn or_diagnose<T>(result: anyhow::Result<T>, client: &Client) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{error:#}\n{}", diagnose(client).await),
    }
}

/// Every pod of the test's namespaces with its state, the CSI containers' last log lines and the events.
async fn diagnose(client: &Client) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for namespace in [NAMESPACE, CSI_NAMESPACE, BROKEN_NAMESPACE] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        for pod in pods
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "pod {namespace}/{}: {}",
                pod.name_any(),
                serde_json::to_string(&pod.status).unwrap_or_default()
            );
            if pod.name_any().starts_with(CSI_DAEMONSET) {
                for container in ["server", "provisioner"] {
                    let params = LogParams {
                        container: Some(container.to_owned()),
                        tail_lines: Some(40),
                        ..LogParams::default()
                    };
                    let logs = pods.logs(&pod.name_any(), &params).await.unwrap_or_default();
                    let _ = writeln!(out, "--- {container}:\n{logs}");
                }
            }
        }
        let events: Api<Event> = Api::namespaced(client.clone(), namespace);
        for event in events
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = writeln!(
                out,
                "event {namespace}/{} {}: {}",
                event.involved_object.name.unwrap_or_default(),
                event.reason.unwrap_or_default(),
                event.message.unwrap_or_default()
            );
        }
    }
    out
}

/// Panics with `what` and what [`diagnose`] finds unless `ok`.
async fn ensure(client: &Client, ok: bool, what: &str) {
    if !ok {
        panic!("{what}\n{}", diagnose(client).await);
    }
}

/// A pod of the sample application on the real node.
fn app(images: &[ImageArchive], name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
        "spec": { "nodeSelector": { NODE_LABEL: "true" }, "containers": [{
            "name": "app", "image": image(images, SAMPLE_APP_IMAGE).reference(),
            "imagePullPolicy": "IfNotPresent" }] },
    }))
    .unwrap()
}

/// Creates `pod` until the webhook injects it with a CSI `oneagent-bin` (its caches may see the init Secret
/// a moment after the API server; a pod admitted before that is, by design, not injected).
async fn create_injected(pods: &Api<Pod>, pod: &Pod) -> anyhow::Result<Pod> {
    let name = pod.name_any();
    eventually("a pod injected with the CSI volume", POD_TIMEOUT, || async {
        let created = pods.create(&PostParams::default(), pod).await?;
        if bin_volume_driver(&created).is_some() {
            return Ok(Some(created));
        }
        pods.delete(&name, &DeleteParams::default()).await?;
        eventually("the uninjected pod to go", POD_TIMEOUT, || async {
            Ok(pods.get_opt(&name).await?.is_none().then_some(()))
        })
        .await?;
        Ok(None)
    })
    .await
}

/// The CSI driver of the pod's `oneagent-bin` volume, if it is a CSI volume.
fn bin_volume_driver(pod: &Pod) -> Option<String> {
    let volumes = pod.spec.as_ref()?.volumes.as_ref()?;
    let bin = volumes.iter().find(|v| v.name == BIN_VOLUME)?;
    Some(bin.csi.as_ref()?.driver.clone())
}

/// The application's report line once it runs.
async fn app_report(pods: &Api<Pod>, name: &str, timeout: Duration) -> anyhow::Result<String> {
    eventually("the application to run", timeout, || async {
        let logs = pods.logs(name, &LogParams::default()).await.unwrap_or_default();
        Ok(logs.contains("sample-app started").then_some(logs))
    })
    .await
}

/// Where the kubelet asks the driver to publish a pod's `oneagent-bin`.
fn target_path(pod: &Pod) -> PathBuf {
    workloads::csi_target_path(&pod.uid().unwrap(), BIN_VOLUME)
}

/// Whether `path` is a mount point in this (the host's) mount namespace, read fresh.
fn mounted(path: &Path) -> bool {
    io_csi_driver::mounts::read().unwrap().is_mount_point(path)
}

async fn wait_for_init_secret(client: &Client, namespace: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = eventually("the operator to write the init Secret", POD_TIMEOUT, || async {
        Ok(secrets
            .get_opt(pure_api::dynakube::names::INIT_SECRET)
            .await?
            .map(drop))
    })
    .await;
    or_diagnose(found, client).await;
}

/// An applicationMonitoring DynaKube with `useCSIDriver` and the further `applicationMonitoring` fields of
/// `more` (an object), and the namespace it selects.
fn app_monitoring_with_csi(
    name: &str,
    namespace: &str,
    api_url: &str,
    more: serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut app_monitoring = json!({ "useCSIDriver": true });
    for (key, value) in more.as_object().cloned().unwrap_or_default() {
        app_monitoring[key] = value;
    }
    vec![
        json!({ "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
                "metadata": { "name": name, "namespace": NAMESPACE },
                "spec": { "apiUrl": api_url, "trustedCAs": "tenant-ca", "tokens": "tokens",
                          "namespaceSelector": { "matchLabels": { "e2e.dynatrace.com/csi": name } },
                          "oneAgent": { "applicationMonitoring": app_monitoring } } }),
        json!({ "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": namespace, "labels": { "e2e.dynatrace.com/csi": name } } }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_driver_runs_on_the_real_node_and_publishes_cached_code_modules_into_injected_pods() {
    let started = Instant::now();
    let Some(cluster) = test_kit::start_real_node_cluster(1).await.unwrap() else {
        return;
    };
    let node_ip: IpAddr = cluster.real_node().unwrap().node_ip().parse().unwrap();
    let client = cluster.client().await.unwrap();
    let images = tokio::task::spawn_blocking(|| test_images::build_images(Profile::Test))
        .await
        .unwrap()
        .unwrap();
    for archive in &images {
        real_node::import_image(&archive.path).unwrap();
    }
    eprintln!(
        "cluster, real node and images ready after {:.1?}",
        started.elapsed()
    );

    // The fake tenant on the node's address (the CSI pods have network namespaces of their own), with
    // code-module archives carrying the project's stand-in agent library.
    let ca = test_kit::pki::CertificateAuthority::new("e2e-csi-tenant-ca").unwrap();
    let cert = ca.issue_server_cert("fake-tenant", &[], &[node_ip]).unwrap();
    let agent_library =
        test_images::agent_library(&test_kit::tools::cache_root().unwrap().join("images")).unwrap();
    let config = TenantConfig {
        versions: vec![FAKE_ONEAGENT_VERSIONS[0].to_owned()],
        agent_library: Some(agent_library.clone()),
        ..TenantConfig::default()
    };
    let listen = Listen::Https {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    let tenant = FakeTenant::start_on(config, listen, SocketAddr::new(node_ip, 0))
        .await
        .unwrap();

    // The installation, with its CSI driver on the real node only.
    let mut installation = Installation::new(&image(&images, OPERATOR_IMAGE).reference());
    installation.webhook_replicas = 1;
    installation.node_selector = BTreeMap::from([(NODE_LABEL.to_owned(), "true".to_owned())]);
    installation.csi_driver = Some(CsiDriverOptions {
        node_selector: installation.node_selector.clone(),
        ..CsiDriverOptions::default()
    });
    test_kit::setup::apply_objects(&client, &installation.objects(), FIELD_MANAGER)
        .await
        .unwrap();
    let available = eventually(
        "the operator and webhook pods to be available",
        POD_TIMEOUT,
        || workloads::installation_available(&client, NAMESPACE),
    )
    .await;
    or_diagnose(available, &client).await;

    // The CSI driver's pod: both containers of our image ready (their probes pass), privileged, with the
    // kubelet's pods dir and the data dir mounted Bidirectional.
    let csi_pod = eventually("the CSI driver pod to be ready", POD_TIMEOUT, || {
        workloads::ready_csi_driver_pod(&client, NAMESPACE)
    })
    .await;
    let csi_pod = or_diagnose(csi_pod, &client).await;
    let spec = csi_pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
    for container in &spec.containers {
        assert_eq!(container.image, Some(image(&images, OPERATOR_IMAGE).reference()));
        let context = container.security_context.clone().unwrap();
        assert_eq!(context.privileged, Some(true), "{}", container.name);
        let data = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == "/data")
            .unwrap();
        assert_eq!(data.mount_propagation.as_deref(), Some("Bidirectional"));
    }
    eprintln!("CSI driver pod ready after {:.1?}", started.elapsed());

    // The kubelet registered the driver: the CSINode lists it.
    let registered = eventually("the CSINode to list the driver", POD_TIMEOUT, || {
        workloads::csi_driver_node_id(&client)
    })
    .await;
    let node_id = or_diagnose(registered, &client).await;
    assert_eq!(node_id, NODE_NAME);
    eprintln!("driver registered after {:.1?}", started.elapsed());

    // An applicationMonitoring DynaKube with the CSI driver selects a namespace.
    let mut objects = vec![
        json!({ "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": "tokens", "namespace": NAMESPACE },
                "stringData": { "apiToken": TOKEN, "paasToken": TOKEN } }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "tenant-ca", "namespace": NAMESPACE },
                "data": { "certs": ca.cert_pem() } }),
    ];
    objects.extend(app_monitoring_with_csi(
        CSI_DYNAKUBE,
        CSI_NAMESPACE,
        &tenant.api_url(),
        json!({}),
    ));
    apply(&client, &objects).await;
    wait_for_init_secret(&client, CSI_NAMESPACE).await;

    // The first pod: its oneagent-bin is published by our driver and the process loads the agent from it.
    let app_pods: Api<Pod> = Api::namespaced(client.clone(), CSI_NAMESPACE);
    let first = create_injected(&app_pods, &app(&images, "csi-app-1")).await;
    let first = or_diagnose(first, &client).await;
    assert_eq!(bin_volume_driver(&first).as_deref(), Some(CSI_DRIVER));
    let first_started = Instant::now();
    let report = app_report(&app_pods, "csi-app-1", POD_TIMEOUT).await;
    let report = or_diagnose(report, &client).await;
    const LIBRARY: &str = "/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so";
    ensure(
        &client,
        loaded_agent_libraries(&report).iter().any(|l| l == LIBRARY),
        &format!("the application's process has the agent library from the CSI volume mapped: {report}"),
    )
    .await;
    let first_target = target_path(&first);
    ensure(
        &client,
        mounted(&first_target),
        &format!(
            "the kubelet's target path {} is a mount point on the host",
            first_target.display()
        ),
    )
    .await;
    let downloads = tenant.request_count(Endpoint::Download);
    ensure(
        &client,
        downloads == 1,
        &format!("one code-module download for the first pod, not {downloads}"),
    )
    .await;
    // The provisioner's node status shows the version it holds, ready for the DynaKube.
    let status = eventually("the node status to show the version", POD_TIMEOUT, || async {
        let status = workloads::csi_node_status(&client, NAMESPACE).await?;
        Ok(status.filter(|s| s.ready_version(CSI_DYNAKUBE).is_some()))
    })
    .await;
    let status = or_diagnose(status, &client).await;
    assert_eq!(status.versions, [FAKE_ONEAGENT_VERSIONS[0]], "{status:?}");
    eprintln!(
        "first pod runs with the agent from the driver {:.1?} after its creation ({:.1?} in all)",
        first_started.elapsed(),
        started.elapsed()
    );

    // A second pod on the same node reuses the cached version.
    let second = or_diagnose(
        create_injected(&app_pods, &app(&images, "csi-app-2")).await,
        &client,
    )
    .await;
    let second_started = Instant::now();
    let report = or_diagnose(app_report(&app_pods, "csi-app-2", POD_TIMEOUT).await, &client).await;
    ensure(
        &client,
        loaded_agent_libraries(&report).iter().any(|l| l == LIBRARY),
        &format!("the second pod's process has the agent library mapped: {report}"),
    )
    .await;
    let downloads = tenant.request_count(Endpoint::Download);
    ensure(
        &client,
        downloads == 1,
        &format!("the second pod reused the cached version: {downloads} downloads"),
    )
    .await;
    let second_target = target_path(&second);
    ensure(
        &client,
        mounted(&second_target),
        "the second pod's volume is mounted",
    )
    .await;
    eprintln!(
        "second pod (cached version) runs with the agent {:.1?} after its creation",
        second_started.elapsed()
    );

    // Deleting the pods unpublishes their volumes: neither the target nor any app overlay stays mounted.
    for name in ["csi-app-1", "csi-app-2"] {
        app_pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let appmounts = Path::new(KUBELET_DIR)
        .join("plugins")
        .join(CSI_DRIVER)
        .join("data/appmounts");
    let unpublished = eventually("the volumes to be unpublished", POD_TIMEOUT, || async {
        let table = io_csi_driver::mounts::read()?;
        let left = table.is_mount_point(&first_target)
            || table.is_mount_point(&second_target)
            || table.under(&appmounts).next().is_some();
        let gone = app_pods.list(&ListParams::default()).await?.items.is_empty();
        Ok((!left && gone).then_some(()))
    })
    .await;
    or_diagnose(unpublished, &client).await;
    eprintln!("both volumes unpublished after {:.1?}", started.elapsed());

    // codeModulesImage, as air-gapped clusters use it: the provisioner pulls the image from the
    // environment's registry (HTTPS, trustedCAs, the pull Secret the operator writes) into
    // codemodules/sha256-<hex>, and the pod's process loads the agent library from it.
    let image_dir = tempfile::tempdir().unwrap();
    let in_image = |path: &str| format!("opt/dynatrace/oneagent/{path}");
    let entries = [
        TarEntry::file(
            &in_image(&format!("agent/bin/{}/version", FAKE_ONEAGENT_VERSIONS[0])),
            b"e2e\n",
        ),
        TarEntry::File {
            name: in_image("agent/lib64/liboneagentproc.so"),
            mode: 0o755,
            content: std::fs::read(&agent_library).unwrap(),
        },
        TarEntry::file(&in_image("agent/conf/ruxitagentproc.conf"), b"[general]\n"),
    ];
    let built = oci_layout::write_image(image_dir.path(), "e2e", &[Layer::gzip(&entries).unwrap()]).unwrap();
    tenant
        .add_image("dynatrace/codemodules:e2e", image_dir.path())
        .await
        .unwrap();
    let code_modules_image = format!("{}/dynatrace/codemodules:e2e", tenant.addr());
    apply(
        &client,
        &app_monitoring_with_csi(
            IMAGE_DYNAKUBE,
            IMAGE_NAMESPACE,
            &tenant.api_url(),
            json!({ "codeModulesImage": code_modules_image }),
        ),
    )
    .await;
    wait_for_init_secret(&client, IMAGE_NAMESPACE).await;
    let image_pods: Api<Pod> = Api::namespaced(client.clone(), IMAGE_NAMESPACE);
    let image_app = or_diagnose(
        create_injected(&image_pods, &app(&images, "image-app")).await,
        &client,
    )
    .await;
    assert_eq!(bin_volume_driver(&image_app).as_deref(), Some(CSI_DRIVER));
    let image_started = Instant::now();
    let report = or_diagnose(app_report(&image_pods, "image-app", POD_TIMEOUT).await, &client).await;
    ensure(
        &client,
        loaded_agent_libraries(&report).iter().any(|l| l == LIBRARY),
        &format!("the pod's process has the agent library from the code-modules image mapped: {report}"),
    )
    .await;
    let id = built.manifest_digest.replace(':', "-");
    let status = eventually("the node status to show the image", POD_TIMEOUT, || async {
        let status = workloads::csi_node_status(&client, NAMESPACE).await?;
        Ok(status.filter(|s| s.ready_version(IMAGE_DYNAKUBE) == Some(id.as_str())))
    })
    .await;
    or_diagnose(status, &client).await;
    let blobs = tenant.request_count(Endpoint::RegistryBlobs);
    ensure(
        &client,
        blobs >= 1 && tenant.request_count(Endpoint::Download) == 1,
        &format!("the image came from the registry ({blobs} blob requests), not from a download"),
    )
    .await;
    eprintln!(
        "pod with the code-modules image runs with the agent {:.1?} after its creation",
        image_started.elapsed()
    );
    image_pods
        .delete("image-app", &DeleteParams::default())
        .await
        .unwrap();

    // A DynaKube whose version the tenant does not have: the pod still starts, with an empty volume (no
    // agent) and a warning event, within the server's bound.
    apply(
        &client,
        &app_monitoring_with_csi(
            BROKEN_DYNAKUBE,
            BROKEN_NAMESPACE,
            &tenant.api_url(),
            json!({ "version": NEVER_VERSION }),
        ),
    )
    .await;
    wait_for_init_secret(&client, BROKEN_NAMESPACE).await;
    let broken_pods: Api<Pod> = Api::namespaced(client.clone(), BROKEN_NAMESPACE);
    let broken = create_injected(&broken_pods, &app(&images, "never-app")).await;
    let broken = or_diagnose(broken, &client).await;
    let broken_started = Instant::now();
    let report = app_report(&broken_pods, "never-app", EMPTY_VOLUME_TIMEOUT).await;
    let report = or_diagnose(report, &client).await;
    ensure(
        &client,
        loaded_agent_libraries(&report).is_empty(),
        &format!("the pod started unmonitored: {report}"),
    )
    .await;
    eprintln!(
        "pod with a version that is never provisioned runs (empty volume) {:.1?} after its creation",
        broken_started.elapsed()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), BROKEN_NAMESPACE);
    let broken_name = broken.name_any();
    let warning = eventually(
        "the driver's warning event on the pod",
        Duration::from_secs(60),
        || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(broken_name.as_str())
                    && e.type_.as_deref() == Some("Warning")
                    // The kubelet's FailedMount warnings while the version was not there do not count.
                    && e.source.as_ref().and_then(|s| s.component.as_deref()) != Some("kubelet")
                    && e.reporting_component.as_deref() != Some("kubelet")
                }))
        },
    )
    .await;
    let warning = or_diagnose(warning, &client).await;
    eprintln!(
        "warning event: {} {}",
        warning.reason.unwrap_or_default(),
        warning.message.unwrap_or_default()
    );

    // The CSI pods were refused nothing: the installation's RBAC is enough for them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for container in ["server", "provisioner"] {
        let params = LogParams {
            container: Some(container.to_owned()),
            ..LogParams::default()
        };
        let logs = pods.logs(&csi_pod.name_any(), &params).await.unwrap();
        assert!(
            !logs.contains("forbidden"),
            "{container} was refused a permission:\n{logs}"
        );
    }
    eprintln!(
        "CSI driver end to end on the real node: {:.1?}",
        started.elapsed()
    );
}
