//! End to end on the real node: the operator and the webhook server run **in the cluster** as pods of the
//! `dynatrace-operator` image (in-cluster config, the webhook behind its Service with certificates from the
//! operator), a DynaKube is validated by that webhook and reconciled by that operator, the OneAgent
//! DaemonSet's pod runs the fake OneAgent image pulled from the fake tenant's registry (pull Secret,
//! `imagePullPolicy: Always`, probes passing), an automatic update replaces it with the new version's
//! container, and the sample application runs next to it.
//!
//! The fake tenant listens on the node's address (not loopback: the operator pod has a network namespace
//! of its own) over HTTPS with a CA that the DynaKube names in `trustedCAs` and containerd trusts for the
//! registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use pure_install::{FIELD_MANAGER, Installation};
use serde_json::json;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_images::{FAKE_ONEAGENT_VERSIONS, ImageArchive, OPERATOR_IMAGE, Profile, SAMPLE_APP_IMAGE};
use test_kit::eventually;
use test_kit::real_node::{self, NODE_LABEL};

const NAMESPACE: &str = "dynatrace";
const DYNAKUBE: &str = "e2e";
/// The DynaKube that injects code modules, and the namespace it selects.
const APPS_DYNAKUBE: &str = "apps";
const APPS_NAMESPACE: &str = "sample-apps";
/// The fake tenant's default API token (every scope).
const TOKEN: &str = "dt0c01.test";
/// Image pulls, container starts and the operator's first reconcile on a loaded 2-core machine.
const POD_TIMEOUT: Duration = Duration::from_secs(180);

fn image<'a>(images: &'a [ImageArchive], name: &str) -> &'a ImageArchive {
    images.iter().find(|i| i.name == name).unwrap()
}

async fn apply(client: &Client, objects: &[serde_json::Value]) {
    test_kit::setup::apply_objects(client, objects, "e2e")
        .await
        .unwrap();
}

/// The OneAgent pod on the real node with a Ready container, and the version its process reported.
async fn ready_oneagent(client: &Client) -> anyhow::Result<Option<(String, String)>> {
    Ok(real_node::workloads::ready_fake_oneagent(client, NAMESPACE)
        .await?
        .map(|agent| (agent.pod, agent.version)))
}

/// The value, or a panic with the error and what [`diagnose`] finds.
async fn or_diagnose<T>(result: anyhow::Result<T>, client: &Client) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{error:#}\n{}", diagnose(client).await),
    }
}

/// What a person debugging a failed run needs: the DynaKube's status, every pod's state, the events and
/// the operator's last log lines.
async fn diagnose(client: &Client) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), NAMESPACE);
    if let Ok(dk) = dynakubes.get(DYNAKUBE).await {
        let _ = writeln!(
            out,
            "DynaKube status: {}",
            serde_json::to_string(&dk.status).unwrap_or_default()
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for pod in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let _ = writeln!(
            out,
            "pod {}: {}",
            pod.name_any(),
            serde_json::to_string(&pod.status).unwrap_or_default()
        );
        if pod.name_any().starts_with("dynatrace-operator") {
            let params = LogParams {
                tail_lines: Some(30),
                ..LogParams::default()
            };
            let _ = writeln!(
                out,
                "{}",
                pods.logs(&pod.name_any(), &params).await.unwrap_or_default()
            );
        }
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NAMESPACE);
    for event in events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let _ = writeln!(
            out,
            "event {} {}: {}",
            event.involved_object.name.unwrap_or_default(),
            event.reason.unwrap_or_default(),
            event.message.unwrap_or_default()
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_and_webhook_run_as_pods_and_the_oneagent_runs_updates_and_is_injected_on_the_real_node()
{
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

    // The fake tenant on the node's address, serving both fake OneAgent versions, the older one latest.
    let ca = test_kit::pki::CertificateAuthority::new("e2e-tenant-ca").unwrap();
    let cert = ca.issue_server_cert("fake-tenant", &[], &[node_ip]).unwrap();
    let (old, new) = (FAKE_ONEAGENT_VERSIONS[0], FAKE_ONEAGENT_VERSIONS[1]);
    // Code-module archives with the project's stand-in agent library (tools/images/liboneagentproc.c).
    let agent_library =
        test_images::agent_library(&test_kit::tools::cache_root().unwrap().join("images")).unwrap();
    let config = TenantConfig {
        versions: vec![old.to_owned()],
        agent_library: Some(agent_library),
        ..TenantConfig::default()
    };
    let listen = Listen::Https {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    let tenant = FakeTenant::start_on(config, listen, SocketAddr::new(node_ip, 0))
        .await
        .unwrap();
    for archive in images
        .iter()
        .filter(|i| i.name == test_images::FAKE_ONEAGENT_IMAGE)
    {
        tenant
            .add_image(&format!("linux/oneagent:{}", archive.tag), &archive.path)
            .await
            .unwrap();
    }

    real_node::write_registry_host(&tenant.addr().to_string(), &ca.cert_pem()).unwrap();

    // The operator and the webhook as pods of our image on the real node.
    let mut installation = Installation::new(&image(&images, OPERATOR_IMAGE).reference());
    installation.webhook_replicas = 1;
    installation.node_selector = BTreeMap::from([(NODE_LABEL.to_owned(), "true".to_owned())]);
    // The CSI driver only where pods really run (kwok nodes have no kubelet to register it with).
    if let Some(csi) = installation.csi_driver.as_mut() {
        csi.node_selector = installation.node_selector.clone();
    }
    test_kit::setup::apply_objects(&client, &installation.objects(), FIELD_MANAGER)
        .await
        .unwrap();
    eventually(
        "the operator and webhook pods to be available",
        POD_TIMEOUT,
        || real_node::workloads::installation_available(&client, NAMESPACE),
    )
    .await
    .unwrap();
    eprintln!(
        "operator and webhook pods available after {:.1?}",
        started.elapsed()
    );

    // The webhook in the cluster answers through its Service: an invalid DynaKube is denied with its
    // message (eventually: the webhook pod reads the certificate the operator just wrote).
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), NAMESPACE);
    let invalid: DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": "invalid" },
        "spec": { "apiUrl": "https://ENVIRONMENTID.live.dynatrace.com/api" },
    }))
    .unwrap();
    let denial = eventually(
        "the in-cluster webhook to deny an invalid DynaKube",
        Duration::from_secs(90),
        || async {
            match dynakubes.create(&PostParams::default(), &invalid).await {
                Err(kube::Error::Api(status)) if status.message.contains("denied the request") => {
                    Ok(Some(status.message))
                }
                Err(kube::Error::Api(status)) => {
                    eprintln!("not yet: {}", status.message);
                    Ok(None)
                }
                Err(other) => Err(other.into()),
                Ok(_) => panic!("the invalid DynaKube was admitted"),
            }
        },
    )
    .await
    .unwrap();
    assert!(denial.contains("API URL"), "{denial}");

    // A classicFullStack DynaKube on the real node.
    apply(
        &client,
        &[
            json!({ "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": DYNAKUBE, "namespace": NAMESPACE },
                    "stringData": { "apiToken": TOKEN, "paasToken": TOKEN } }),
            json!({ "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": { "name": "tenant-ca", "namespace": NAMESPACE },
                    "data": { "certs": ca.cert_pem() } }),
            json!({ "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
                    "metadata": { "name": DYNAKUBE, "namespace": NAMESPACE, "annotations": {
                        "feature.dynatrace.com/dynatrace-api-request-threshold": "0" } },
                    "spec": { "apiUrl": tenant.api_url(), "trustedCAs": "tenant-ca",
                              "oneAgent": { "classicFullStack": {
                                  "nodeSelector": { NODE_LABEL: "true" } } } } }),
        ],
    )
    .await;
    let ready = eventually(
        "the OneAgent pod to be Ready on the real node",
        POD_TIMEOUT,
        || ready_oneagent(&client),
    )
    .await;
    let (first_pod, version) = or_diagnose(ready, &client).await;
    assert_eq!(
        version, old,
        "the first OneAgent pod runs the latest version at the time"
    );
    let pulls = tenant.request_count(test_fake_tenant::Endpoint::RegistryManifests);
    assert!(
        pulls >= 1,
        "the kubelet pulled the OneAgent image from the tenant's registry"
    );
    eprintln!(
        "OneAgent {version} Ready on the real node after {:.1?}",
        started.elapsed()
    );

    // An automatic update: the tenant publishes the new version, the operator rolls it out, and the
    // kubelet pulls `latest` again, which now is the new version's image.
    tenant.publish_version(new);
    // The operator asks the tenant when it reconciles, which in a quiet cluster is its 5-minute resync; an
    // annotation (no change to what the DynaKube asks for) makes it reconcile now, as `cargo xtask run` does.
    let touch = json!({ "metadata": { "annotations": { "e2e.dynatrace.com/touched": new } } });
    dynakubes
        .patch(
            DYNAKUBE,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&touch),
        )
        .await
        .unwrap();
    let updated = eventually("the updated OneAgent pod", POD_TIMEOUT, || async {
        Ok(ready_oneagent(&client).await?.filter(|(_, v)| v == new))
    })
    .await;
    let (second_pod, version) = or_diagnose(updated, &client).await;
    assert_ne!(first_pod, second_pod);
    assert_eq!(version, new);
    eprintln!("OneAgent updated to {version} after {:.1?}", started.elapsed());

    // The sample application runs on the real node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let sample: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "sample-app" },
        "spec": { "nodeSelector": { NODE_LABEL: "true" }, "containers": [{
            "name": "app", "image": image(&images, SAMPLE_APP_IMAGE).reference(),
            "imagePullPolicy": "IfNotPresent" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &sample).await.unwrap();
    let logs = eventually("the sample application to run", POD_TIMEOUT, || async {
        let logs = pods
            .logs("sample-app", &LogParams::default())
            .await
            .unwrap_or_default();
        Ok(logs.contains("sample-app started").then_some(logs))
    })
    .await
    .unwrap();
    assert!(logs.contains("sample-app started"), "{logs}");
    assert!(
        logs.contains("\"oneagent_libraries\":[]"),
        "no agent outside a mapped namespace: {logs}"
    );

    // Code-module injection, installer mode (useCSIDriver: false, since without it the installed CSI
    // driver would serve the code module): an applicationMonitoring DynaKube selects the namespace
    // sample-apps; the operator labels it and writes its init Secret; the webhook pod injects the sample
    // application's pod; its init container (our image, `init`) downloads the code module from the fake
    // tenant, and the application's process really loads the agent library.
    apply(
        &client,
        &[
            json!({ "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
                    "metadata": { "name": APPS_DYNAKUBE, "namespace": NAMESPACE },
                    "spec": { "apiUrl": tenant.api_url(), "trustedCAs": "tenant-ca", "tokens": DYNAKUBE,
                              "namespaceSelector": { "matchLabels": { "e2e.dynatrace.com/inject": "true" } },
                              "oneAgent": { "applicationMonitoring": { "useCSIDriver": false } } } }),
            json!({ "apiVersion": "v1", "kind": "Namespace",
                    "metadata": { "name": APPS_NAMESPACE, "labels": { "e2e.dynatrace.com/inject": "true" } } }),
        ],
    )
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), APPS_NAMESPACE);
    let init_secret = eventually("the operator to write the init Secret", POD_TIMEOUT, || async {
        Ok(secrets
            .get_opt(pure_api::dynakube::names::INIT_SECRET)
            .await?
            .map(drop))
    })
    .await;
    or_diagnose(init_secret, &client).await;
    let app_pods: Api<Pod> = Api::namespaced(client.clone(), APPS_NAMESPACE);
    let app = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
            "spec": { "nodeSelector": { NODE_LABEL: "true" }, "containers": [{
                "name": "app", "image": image(&images, SAMPLE_APP_IMAGE).reference(),
                "imagePullPolicy": "IfNotPresent" }] },
        }))
        .unwrap()
    };
    // The webhook's caches may see the Secret a moment after the API server: a pod admitted before that is
    // (by design) not injected, so it is replaced until one is.
    let injected = eventually("an injected sample application pod", POD_TIMEOUT, || async {
        let created = app_pods
            .create(&PostParams::default(), &app("injected-app"))
            .await?;
        if created
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some()
        {
            return Ok(Some(created));
        }
        app_pods.delete("injected-app", &Default::default()).await?;
        eventually("the uninjected pod to go", POD_TIMEOUT, || async {
            Ok(app_pods.get_opt("injected-app").await?.is_none().then_some(()))
        })
        .await?;
        Ok(None)
    })
    .await;
    let injected = or_diagnose(injected, &client).await;
    let init = &injected.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image, Some(image(&images, OPERATOR_IMAGE).reference()));
    let logs = eventually(
        "the injected application to run with the agent",
        POD_TIMEOUT,
        || async {
            let logs = app_pods
                .logs("injected-app", &LogParams::default())
                .await
                .unwrap_or_default();
            Ok(logs.contains("sample-app started").then_some(logs))
        },
    )
    .await;
    let logs = or_diagnose(logs, &client).await;
    assert!(
        logs.contains("/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so"),
        "the application's process has the agent library mapped: {logs}"
    );
    let init_logs = app_pods
        .logs(
            "injected-app",
            &LogParams {
                container: Some(init.name.clone()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert!(init_logs.contains("init finished"), "{init_logs}");
    eprintln!(
        "injected application runs with the agent after {:.1?}",
        started.elapsed()
    );

    // The operator logged no permission error: the installation's RBAC is enough for this scenario.
    for name in ["dynatrace-operator", "dynatrace-webhook"] {
        let selector = format!("internal.dynatrace.com/app={name}");
        for pod in pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
        {
            let logs = pods.logs(&pod.name_any(), &LogParams::default()).await.unwrap();
            assert!(
                !logs.contains("forbidden"),
                "{name} was refused a permission:\n{logs}"
            );
        }
    }
    // With the tenant down and the default failure policy (silent) the application still starts, without
    // the agent.
    tenant.shutdown().await;
    app_pods
        .create(&PostParams::default(), &app("tenant-down-app"))
        .await
        .unwrap();
    let logs = eventually(
        "the application to start with the tenant down",
        POD_TIMEOUT,
        || async {
            let logs = app_pods
                .logs("tenant-down-app", &LogParams::default())
                .await
                .unwrap_or_default();
            Ok(logs.contains("sample-app started").then_some(logs))
        },
    )
    .await;
    let logs = or_diagnose(logs, &client).await;
    assert!(logs.contains("\"oneagent_libraries\":[]"), "{logs}");
    eprintln!("end to end on the real node: {:.1?}", started.elapsed());
}
