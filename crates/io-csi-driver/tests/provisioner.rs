//! `csi-provisioner` on the real control plane (a kwok node stands for this node) with the fake tenant,
//! and its GC with real overlay mounts (the tests run as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use io_csi_driver::provisioner::{self, FAILED_INSTALL, INSTALLED, Metrics, ProvisionerConfig};
use io_csi_driver::{gc, records};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pure_api::dynakube::DynaKube;
use pure_csi::gc::Policy;
use pure_csi::layout::{DynakubeRecord, Layout};
use serde_json::{Value, json};
use test_fake_tenant::oci_layout::{self, BuiltImage, Layer, TarEntry};
use test_fake_tenant::{Endpoint, FakeTenant, Fault, HostileArchive, Listen, TenantConfig};
use test_kit::{TestNamespace, eventually};

const V1: &str = "1.276.0.20230901-120000";
const V2: &str = "1.277.0.20230914-094321";
const WAIT: Duration = Duration::from_secs(60);

struct World {
    ns: TestNamespace,
    tenant: FakeTenant,
    node: String,
    /// Holds the data dir; the layout is below it so that escapes land in the temporary directory. Its
    /// mounts are undone when the test ends, even when it fails.
    dir: common::MountedTempDir,
    layout: Layout,
    metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Set when the tenant listens on HTTPS: every DynaKube gets its CA through `trustedCAs`.
    https: bool,
    /// OCI layouts the registry serves in place (outside the data dir's temporary directory).
    images: tempfile::TempDir,
}

/// The trusted-CAs ConfigMap of HTTPS worlds.
const TRUSTED_CAS: &str = "tenant-ca";

impl World {
    async fn start(gc_interval: Duration) -> Self {
        Self::start_with(gc_interval, |_, _, _| async {}).await
    }

    /// Like [`World::start`], with `prepare(client, namespace, node)` run before the provisioner starts.
    async fn start_with<F, Fut>(gc_interval: Duration, prepare: F) -> Self
    where
        F: FnOnce(Client, String, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        Self::start_inner(gc_interval, false, prepare).await
    }

    /// Like [`World::start`] with the tenant (API and registry) on HTTPS, its CA given to every
    /// DynaKube through `trustedCAs`.
    async fn start_https(gc_interval: Duration) -> Self {
        Self::start_inner(gc_interval, true, |_, _, _| async {}).await
    }

    async fn start_inner<F, Fut>(gc_interval: Duration, https: bool, prepare: F) -> Self
    where
        F: FnOnce(Client, String, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let ns = TestNamespace::create().await.unwrap();
        install_crds(&ns.client).await;
        let listen = if https {
            let ca = test_kit::pki::CertificateAuthority::new("fake-tenant-ca").unwrap();
            let leaf = ca
                .issue_server_cert(
                    "fake-tenant",
                    &["localhost"],
                    &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
                )
                .unwrap();
            let config_map: ConfigMap = serde_json::from_value(json!({
                "metadata": { "name": TRUSTED_CAS },
                "data": { "certs": ca.cert_pem() },
            }))
            .unwrap();
            Api::<ConfigMap>::namespaced(ns.client.clone(), &ns.name)
                .create(&PostParams::default(), &config_map)
                .await
                .unwrap();
            Listen::Https {
                cert_pem: leaf.cert_pem,
                key_pem: leaf.key_pem,
            }
        } else {
            Listen::Http
        };
        let tenant = FakeTenant::start(TenantConfig::default(), listen).await.unwrap();
        let node = ns.create_node("csi", &[], Vec::new()).await.unwrap();
        prepare(
            ns.client.clone(),
            ns.name.clone(),
            node.metadata.name.clone().unwrap(),
        )
        .await;
        let dir = common::MountedTempDir::new();
        let layout = Layout::new(dir.path().join("a/b/data"));
        let mut world = Self {
            node: node.metadata.name.unwrap(),
            ns,
            tenant,
            dir,
            layout,
            metrics: Metrics::new(),
            stop: None,
            task: None,
            https,
            images: tempfile::tempdir().unwrap(),
        };
        world.run_provisioner(gc_interval);
        world
    }

    fn run_provisioner(&mut self, gc_interval: Duration) {
        let mut config = ProvisionerConfig::new(
            self.node.clone(),
            self.ns.name.clone(),
            self.layout.root().to_owned(),
        );
        config.gc_interval = gc_interval;
        config.min_backoff = Duration::from_millis(200);
        config.max_backoff = Duration::from_secs(1);
        config.sweep_interval = Duration::from_millis(200);
        config.max_unmounted_volume_age = Duration::ZERO;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(provisioner::run(
            self.ns.client.clone(),
            config,
            self.metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        )));
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    fn dynakubes(&self) -> Api<DynaKube> {
        Api::namespaced(self.ns.client.clone(), &self.ns.name)
    }

    /// Creates the token Secret and a DynaKube `name` in `mode` with `status.codeModules.version` set as
    /// the operator sets it.
    async fn dynakube(&self, name: &str, one_agent: Value, version: Option<&str>) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
            "stringData": { "apiToken": "dt0c01.test" },
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.ns.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let dynakube: DynaKube = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": name },
            "spec": {
                "apiUrl": self.tenant.api_url(),
                "oneAgent": one_agent,
                "trustedCAs": self.https.then_some(TRUSTED_CAS),
            },
        }))
        .unwrap();
        self.dynakubes()
            .create(&PostParams::default(), &dynakube)
            .await
            .unwrap();
        let tenant_secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": pure_api::dynakube::names::tenant_secret(name) },
            "stringData": { "tenant-token": "tenant-token-abc" },
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.ns.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &tenant_secret)
            .await
            .unwrap();
        if let Some(version) = version {
            self.set_version(name, version).await;
        }
    }

    /// Sets what the operator finds: the code-module version and the connection info.
    async fn set_version(&self, name: &str, version: &str) {
        let status = json!({ "status": {
            "codeModules": { "version": version },
            "oneAgent": { "connectionInfoStatus": {
                "tenantUUID": "abc12345",
                "endpoints": "https://abc12345.live.dynatrace.com:443/communication",
            } },
        } });
        self.dynakubes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    /// Sets what the operator writes for `codeModulesImage`: the image as written, no version.
    async fn set_image(&self, name: &str, image: &str) {
        let status = json!({ "status": {
            "codeModules": { "source": "custom-image", "imageID": image },
            "oneAgent": { "connectionInfoStatus": {
                "tenantUUID": "abc12345",
                "endpoints": "https://abc12345.live.dynatrace.com:443/communication",
            } },
        } });
        self.dynakubes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    /// Serves an image of `layers` as `<registry>/<repository>:<tag>` and returns its reference and
    /// what was built.
    async fn add_image(&self, repository_tag: &str, layers: &[Layer]) -> (String, BuiltImage) {
        let dir = self.images.path().join(repository_tag.replace([':', '/'], "_"));
        let tag = repository_tag.rsplit_once(':').unwrap().1;
        let built = oci_layout::write_image(&dir, tag, layers).unwrap();
        self.tenant.add_image(repository_tag, &dir).await.unwrap();
        (format!("{}/{repository_tag}", self.tenant.addr()), built)
    }

    /// The pull Secret `<name>-pull-secret` with Basic credentials for the tenant's registry.
    async fn pull_secret(&self, name: &str, password: &str) {
        let config = json!({ "auths": { self.tenant.addr().to_string(): {
            "username": "abc12345", "password": password,
        } } });
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": pure_api::dynakube::names::pull_secret(name) },
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": { ".dockerconfigjson": config.to_string() },
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.ns.client.clone(), &self.ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// Names under `codemodules/`.
    fn codemodules(&self) -> Vec<String> {
        std::fs::read_dir(self.layout.codemodules())
            .map(|read| {
                read.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The record; `None` also while it is not valid (one test damages it on purpose).
    fn record(&self, name: &str) -> Option<DynakubeRecord> {
        records::read(&self.layout.dynakube_record(name).unwrap())
            .ok()
            .flatten()
    }

    /// Waits until `name`'s record names `version` and a layer, and returns the record.
    async fn provisioned(&self, name: &str, version: &str) -> DynakubeRecord {
        eventually(&format!("{name} provisioned with {version}"), WAIT, || async {
            Ok(self
                .record(name)
                .filter(|r| r.version.as_deref() == Some(version) && r.config.is_some()))
        })
        .await
        .unwrap()
    }

    async fn events(&self, name: &str, reason: &str) -> Vec<String> {
        Api::<Event>::namespaced(self.ns.client.clone(), &self.ns.name)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }

    async fn event(&self, name: &str, reason: &str) -> String {
        eventually(&format!("event {reason} on {name}"), WAIT, || async {
            Ok(self.events(name, reason).await.into_iter().next())
        })
        .await
        .unwrap()
    }

    async fn node_status(&self) -> Option<ConfigMap> {
        Api::<ConfigMap>::namespaced(self.ns.client.clone(), &self.ns.name)
            .get_opt(&pure_csi::status::config_map_name(&self.node))
            .await
            .unwrap()
    }

    /// Every path in the temporary directory (the data dir and what is around it).
    fn all_paths(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                out.push(entry.path());
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

/// `csi-server` on a [`World`]'s data dir, as it runs beside the provisioner on a node.
struct NodeServer {
    node: io_csi_driver::proto::csi::node_client::NodeClient<tonic::transport::Channel>,
    shutdown: tokio_util::sync::CancellationToken,
    running: io_csi_driver::server::Running,
}

impl NodeServer {
    async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await.unwrap();
    }
}

impl World {
    /// Starts `csi-server` on this world's data dir (no kubelet registration, no pod events).
    async fn start_server(&self) -> NodeServer {
        let socket = self.dir.path().join("plugin/csi.sock");
        let metrics = io_csi_driver::metrics::Metrics::new();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = io_csi_driver::server::start(
            io_csi_driver::server::Options {
                endpoint: format!("unix://{}", socket.display()),
                node_id: self.node.clone(),
                data_dir: self.layout.root().to_owned(),
                registration_dir: None,
                kubelet_registration_path: "/var/lib/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock"
                    .into(),
                health_address: "127.0.0.1:0".parse().unwrap(),
                max_mount_wait: Duration::from_secs(120),
                version: "0.1.0-test".into(),
            },
            metrics.clone(),
            io_csi_driver::events::PodEvents::disabled(metrics),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let node = io_csi_driver::proto::csi::node_client::NodeClient::new(common::connect(&socket).await);
        NodeServer {
            node,
            shutdown,
            running,
        }
    }
}

async fn install_crds(client: &Client) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async { test_kit::install_operator_crds(client).await.unwrap() })
        .await;
}

fn app_monitoring_csi() -> Value {
    json!({ "applicationMonitoring": { "useCSIDriver": true } })
}

#[tokio::test]
async fn a_dynakube_gets_its_version_config_layer_record_status_and_event() {
    let mut world = World::start(Duration::from_secs(3600)).await;
    world
        .dynakube("dk", json!({ "cloudNativeFullStack": {} }), Some(V2))
        .await;
    let record = world.provisioned("dk", V2).await;
    assert_eq!(record.tenant_uuid, "abc12345");

    let version = world.layout.codemodule(V2).unwrap();
    assert_eq!(
        std::fs::read_link(version.join("agent/bin/current")).unwrap(),
        Path::new(V2)
    );
    assert!(version.join(format!("agent/bin/{V2}/oneagentutil")).is_file());
    // The version itself stays pristine; the DynaKube's settings are in its own layer.
    let pristine = std::fs::read_to_string(version.join("agent/conf/ruxitagentproc.conf")).unwrap();
    assert!(!pristine.contains("tenant abc12345"), "{pristine}");
    let layer = world
        .layout
        .dynakube_config("dk", record.config.as_deref().unwrap())
        .unwrap()
        .join("agent/conf/ruxitagentproc.conf");
    let conf = std::fs::read_to_string(&layer).unwrap();
    assert!(conf.contains("tenant abc12345"), "{conf}");
    assert!(conf.contains("storage /var/lib/dynatrace/oneagent"), "{conf}");
    assert!(conf.contains("tenantToken tenant-token-abc"), "{conf}");
    assert!(
        conf.contains("serverAddress {https://abc12345.live.dynatrace.com:443/communication}"),
        "{conf}"
    );

    let note = world.event("dk", INSTALLED).await;
    assert!(note.contains(V2) && note.contains(&world.node), "{note}");

    let status = eventually("node status", WAIT, || async {
        Ok(world.node_status().await.filter(|m| {
            m.data
                .as_ref()
                .is_some_and(|d| d["dynakubes"].contains("\"ready\":true"))
        }))
    })
    .await
    .unwrap();
    let data = status.data.unwrap();
    assert_eq!(data["versions"], format!("[\"{V2}\"]"));
    // No CSI DaemonSet in this namespace (the provisioner runs as a task): no owner.
    assert_eq!(status.metadata.owner_references.unwrap_or_default(), []);

    // A DynaKube that no longer needs the driver loses its record.
    world
        .dynakubes()
        .patch(
            "dk",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "oneAgent": { "cloudNativeFullStack": null, "classicFullStack": {} } } }),
            ),
        )
        .await
        .unwrap();
    eventually("record removed", WAIT, || async {
        Ok(world.record("dk").is_none().then_some(()))
    })
    .await
    .unwrap();
    world.stop().await;
}

/// applicationMonitoring without `useCSIDriver` (v1beta3 and later have none) uses the driver wherever it
/// is installed, and the provisioner runs only there: it provisions such a DynaKube too.
#[tokio::test]
async fn application_monitoring_without_use_csi_driver_is_provisioned() {
    let mut world = World::start(Duration::from_secs(3600)).await;
    world
        .dynakube("follow", json!({ "applicationMonitoring": {} }), Some(V2))
        .await;
    let record = world.provisioned("follow", V2).await;
    assert_eq!(record.tenant_uuid, "abc12345");
    world.stop().await;
}

#[tokio::test]
async fn the_status_is_owned_by_the_csi_daemon_set_also_when_an_earlier_version_gave_it_to_the_node() {
    let mut world = World::start_with(Duration::from_secs(3600), |client, ns, node| async move {
        let daemon_set: DaemonSet = serde_json::from_value(json!({
            "metadata": { "name": pure_install::csi::CSI_DAEMONSET },
            "spec": {
                "selector": { "matchLabels": { "app": "csi" } },
                "template": {
                    "metadata": { "labels": { "app": "csi" } },
                    // On no node: only the DaemonSet's identity matters.
                    "spec": {
                        "nodeSelector": { "no-such-label": "x" },
                        "containers": [{ "name": "csi", "image": "csi" }],
                    },
                },
            },
        }))
        .unwrap();
        Api::<DaemonSet>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &daemon_set)
            .await
            .unwrap();
        // The status as an earlier version wrote it: owned by the Node.
        let node_object = Api::<Node>::all(client.clone()).get(&node).await.unwrap();
        let old = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": pure_csi::status::config_map_name(&node),
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": node,
                    "uid": node_object.metadata.uid.unwrap(), "controller": false,
                }],
            },
            "data": { "versions": "[]" },
        });
        Api::<ConfigMap>::namespaced(client, &ns)
            .patch(
                &pure_csi::status::config_map_name(&node),
                &PatchParams::apply(io_csi_driver::status::FIELD_MANAGER).force(),
                &Patch::Apply(old),
            )
            .await
            .unwrap();
    })
    .await;
    let daemon_set = Api::<DaemonSet>::namespaced(world.ns.client.clone(), &world.ns.name)
        .get(pure_install::csi::CSI_DAEMONSET)
        .await
        .unwrap();
    world
        .dynakube("dk", json!({ "cloudNativeFullStack": {} }), Some(V2))
        .await;
    world.provisioned("dk", V2).await;
    let status = eventually("the status written by this version", WAIT, || async {
        Ok(world
            .node_status()
            .await
            .filter(|m| m.data.as_ref().is_some_and(|d| d["versions"].contains(V2))))
    })
    .await
    .unwrap();
    let owners = status.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owners.len(),
        1,
        "only the DaemonSet, no longer the Node: {owners:?}"
    );
    let owner = &owners[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        (
            "DaemonSet",
            pure_install::csi::CSI_DAEMONSET,
            daemon_set.metadata.uid.as_deref().unwrap()
        )
    );
    assert_ne!(
        owner.controller,
        Some(true),
        "the DaemonSet does not control ConfigMaps"
    );
    assert_ne!(owner.block_owner_deletion, Some(true));
    assert_eq!(
        status.metadata.labels.unwrap()[pure_csi::status::NODE_LABEL],
        world.node,
        "the label the operator finds stale statuses by"
    );
    world.stop().await;
}

#[tokio::test]
async fn two_dynakubes_of_one_version_download_it_once() {
    let mut world = World::start(Duration::from_secs(3600)).await;
    // Slow downloads, so that both reconciles want the version while the first install runs.
    world
        .tenant
        .set_fault(Endpoint::Download, Fault::Latency { millis: 1500 }, None);
    // A record damaged by hand is rewritten, not a reason to stop.
    world.dynakube("one", app_monitoring_csi(), None).await;
    let damaged = world.layout.dynakube_record("one").unwrap();
    eventually("the first record", WAIT, || async {
        Ok(damaged.exists().then_some(()))
    })
    .await
    .unwrap();
    std::fs::write(&damaged, "{not json").unwrap();
    world.set_version("one", V2).await;
    world
        .dynakube("two", json!({ "cloudNativeFullStack": {} }), Some(V2))
        .await;
    let first = world.provisioned("one", V2).await;
    let second = world.provisioned("two", V2).await;
    assert_eq!(world.tenant.request_count(Endpoint::Download), 1);
    // Each DynaKube has its own layer (same tenant, same content, but its own directory).
    assert!(
        world
            .layout
            .dynakube_config("one", first.config.as_deref().unwrap())
            .unwrap()
            .is_dir()
    );
    assert!(
        world
            .layout
            .dynakube_config("two", second.config.as_deref().unwrap())
            .unwrap()
            .is_dir()
    );
    // Only one of them installed it.
    let installed = world.events("one", INSTALLED).await.len() + world.events("two", INSTALLED).await.len();
    assert_eq!(installed, 1);

    // A deleted DynaKube loses its record.
    world
        .dynakubes()
        .delete("two", &Default::default())
        .await
        .unwrap();
    eventually("record of a deleted DynaKube removed", WAIT, || async {
        Ok(world.record("two").is_none().then_some(()))
    })
    .await
    .unwrap();
    assert!(world.record("one").is_some());
    world.stop().await;
}

/// The driver's two halves together, as on a node: 200 pods of one DynaKube ask for their volume while
/// its version is still downloading. The kubelet retries each `Unavailable` with a growing delay; the
/// version is downloaded once, every volume is then mounted with the agent library, and all unmount
/// cleanly.
#[tokio::test]
async fn two_hundred_pods_waiting_for_one_version_cause_one_download_and_all_mount() {
    use common::{DYNAKUBE, KubeletVolume};

    let mut world = World::start(Duration::from_secs(3600)).await;
    // Slow enough that every pod asks before the version is there.
    world
        .tenant
        .set_fault(Endpoint::Download, Fault::Latency { millis: 2000 }, None);
    let server = world.start_server().await;
    let node = server.node.clone();
    world.dynakube(DYNAKUBE, app_monitoring_csi(), Some(V1)).await;

    let kubelet = world.dir.path().join("kubelet");
    let volumes: Vec<_> = (0..200)
        .map(|i| KubeletVolume::new(&kubelet, &format!("pod-{i}"), "app"))
        .collect();
    let unavailable = std::sync::atomic::AtomicUsize::new(0);
    let publishes = volumes.iter().map(|volume| {
        let mut node = node.clone();
        let unavailable = &unavailable;
        async move {
            // The kubelet's retry of a failed mount: a delay that doubles, here from 250 ms up to 2 s.
            let mut delay = Duration::from_millis(250);
            loop {
                match volume.publish(&mut node).await {
                    Ok(()) => return,
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                    Err(status) => panic!("publish of {}: {status}", volume.volume_id),
                }
            }
        }
    });
    tokio::time::timeout(WAIT, futures::future::join_all(publishes))
        .await
        .expect("every pod's volume published within a minute");
    assert!(
        unavailable.load(std::sync::atomic::Ordering::Relaxed) >= volumes.len(),
        "every pod asked before the version was there"
    );
    assert_eq!(world.tenant.request_count(Endpoint::Download), 1);
    let table = io_csi_driver::mounts::read().unwrap();
    let version = std::fs::canonicalize(world.layout.codemodule(V1).unwrap()).unwrap();
    assert!(table.in_use_as_lower_dir(&version));
    for volume in &volumes {
        let target = std::fs::canonicalize(&volume.target).unwrap();
        assert_eq!(table.at(&target).count(), 1, "{} mounted once", target.display());
        assert!(
            volume.target.join("agent/lib64/liboneagentproc.so").is_file(),
            "{} has the agent library, not an empty volume",
            volume.target.display()
        );
        let config = std::fs::read_to_string(volume.target.join("agent/conf/ruxitagentproc.conf")).unwrap();
        assert!(config.contains("abc12345"), "the layer's configuration: {config}");
    }

    let unpublishes = volumes.iter().map(|volume| {
        let mut node = node.clone();
        async move { volume.unpublish(&mut node).await }
    });
    for result in futures::future::join_all(unpublishes).await {
        result.unwrap();
    }
    assert!(
        world.dir.mounts().is_empty(),
        "left mounted: {:?}",
        world.dir.mounts()
    );
    server.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn hostile_archives_and_faults_install_nothing_then_a_retry_succeeds() {
    let mut world = World::start(Duration::from_secs(3600)).await;
    let faults: Vec<Fault> = HostileArchive::ALL
        .iter()
        .map(|&archive| Fault::Hostile { archive })
        .chain([
            Fault::Corrupt,
            Fault::CutAfter { bytes: 1000 },
            Fault::Unavailable,
        ])
        .collect();
    for (i, fault) in faults.iter().enumerate() {
        let name = format!("dk{i}");
        world.tenant.clear_requests();
        world.tenant.set_fault(Endpoint::Download, fault.clone(), None);
        world.dynakube(&name, app_monitoring_csi(), Some(V2)).await;
        let note = world.event(&name, FAILED_INSTALL).await;
        if let Fault::Hostile { archive } = fault {
            assert!(note.contains(archive.bad_entry()), "{fault:?}: {note}");
        }
        assert!(
            note.contains(V2) && note.contains("tries again"),
            "{fault:?}: {note}"
        );
        // Retried with backoff.
        eventually(&format!("{fault:?}: retried"), WAIT, || async {
            Ok((world.tenant.request_count(Endpoint::Download) >= 3).then_some(()))
        })
        .await
        .unwrap();
        assert!(!world.layout.codemodule(V2).unwrap().exists(), "{fault:?}");
        let record = world.record(&name).unwrap();
        assert_eq!((record.version, record.config), (None, None), "{fault:?}");
        let outside: Vec<_> = world
            .all_paths()
            .into_iter()
            .filter(|p| !p.starts_with(world.layout.root()))
            .filter(|p| !world.layout.root().starts_with(p))
            .collect();
        assert!(
            outside.is_empty(),
            "{fault:?}: written outside the data dir: {outside:?}"
        );
        assert!(!Path::new(HostileArchive::ABSOLUTE_PATH).exists());
        world
            .dynakubes()
            .delete(&name, &Default::default())
            .await
            .unwrap();
    }

    // The fault goes away: the next retry installs.
    world.tenant.set_fault(
        Endpoint::Download,
        Fault::Hostile {
            archive: HostileArchive::ZipSlip,
        },
        None,
    );
    world.dynakube("later", app_monitoring_csi(), Some(V2)).await;
    world.event("later", FAILED_INSTALL).await;
    world.tenant.clear_faults();
    world.provisioned("later", V2).await;
    world.event("later", INSTALLED).await;
    // Nothing left in staging by the failed attempts.
    let staging: Vec<_> = std::fs::read_dir(world.layout.staging()).unwrap().collect();
    assert!(staging.is_empty(), "{staging:?}");
    world.stop().await;
}

fn mount_overlay(lower: &[&Path], upper: &Path, work: &Path, target: &Path) {
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(target)
        .status()
        .unwrap();
    assert!(status.success(), "mount -o {options} {}", target.display());
}

fn umount(target: &Path) {
    let status = Command::new("umount").arg(target).status().unwrap();
    assert!(status.success());
}

fn make_version(layout: &Layout, version: &str) {
    let dir = layout.codemodule(version).unwrap();
    std::fs::create_dir_all(dir.join("agent/conf")).unwrap();
    std::fs::write(dir.join("agent/conf/ruxitagentproc.conf"), "[general]\n").unwrap();
    std::fs::write(dir.join("agent/lib.so"), vec![1u8; 4096]).unwrap();
}

fn age(path: &Path, days: u64) {
    let when = SystemTime::now() - Duration::from_secs(days * 86_400);
    std::fs::File::open(path).unwrap().set_modified(when).unwrap();
}

/// GC with real overlay mounts: what an overlay uses is kept whatever the records say, what nothing uses
/// or wants goes, and unmounted volume dirs go by age.
#[test]
fn gc_keeps_what_is_mounted_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("data"));
    let (mounted, unwanted, wanted) = ("1.1.0.0-0", "1.2.0.0-0", "1.3.0.0-0");
    for version in [mounted, unwanted, wanted] {
        make_version(&layout, version);
    }
    records::write(
        &layout.dynakube_record("dk").unwrap(),
        &DynakubeRecord {
            tenant_uuid: "abc".into(),
            version: Some(wanted.into()),
            config: Some("current".into()),
            max_failed_mount_attempts: 10,
        },
    )
    .unwrap();
    for id in ["current", "old-mounted", "old"] {
        let conf = layout.dynakube_config("dk", id).unwrap().join("agent/conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("ruxitagentproc.conf"), id).unwrap();
    }
    // A live volume of the old version (no record wants it any more), old enough to be collected if it
    // were unmounted.
    let live = layout.app_mount("csi-live").unwrap();
    mount_overlay(
        &[
            &layout.dynakube_config("dk", "old-mounted").unwrap(),
            &layout.codemodule(mounted).unwrap(),
        ],
        &live.upper(),
        &live.work(),
        &live.mapped(),
    );
    age(live.dir(), 30);
    // Unmounted volumes: an old one and a young one.
    let old = layout.app_mount("csi-old").unwrap();
    let young = layout.app_mount("csi-young").unwrap();
    for volume in [&old, &young] {
        std::fs::create_dir_all(volume.upper().join("log")).unwrap();
        std::fs::create_dir_all(volume.mapped()).unwrap();
        std::fs::write(volume.upper().join("log/agent.log"), vec![0u8; 1000]).unwrap();
    }
    age(old.dir(), 8);
    age(young.dir(), 1);
    std::fs::create_dir_all(layout.staging().join("crashed-install/agent")).unwrap();
    // An install that started after the policy's snapshot of the active staging names.
    std::fs::create_dir_all(layout.staging().join("late-install")).unwrap();

    let metrics = gc::GcMetrics::default();
    let policy = Policy {
        max_unmounted_volume_age: Duration::from_secs(7 * 86_400),
        active_staging: BTreeSet::new(),
    };
    let result = gc::run_once(&layout, &policy, &|name| name == "late-install", &metrics);
    umount(&live.mapped());
    let report = result.unwrap();

    let removed: BTreeSet<PathBuf> = report.removed.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        removed,
        BTreeSet::from([
            layout.codemodule(unwanted).unwrap(),
            layout.dynakube_config("dk", "old").unwrap(),
            old.dir().to_owned(),
            layout.staging().join("crashed-install"),
        ])
    );
    assert!(layout.codemodule(mounted).unwrap().join("agent/lib.so").is_file());
    assert!(layout.codemodule(wanted).unwrap().is_dir());
    assert!(layout.dynakube_config("dk", "old-mounted").unwrap().is_dir());
    assert!(layout.dynakube_config("dk", "current").unwrap().is_dir());
    assert!(live.dir().is_dir() && young.dir().is_dir());
    assert!(layout.staging().join("late-install").is_dir());
    assert_eq!(metrics.runs.get(), 1);
    assert_eq!(metrics.folders_removed.get(), 4);
    // The unwanted version (4096 + 10 bytes), the old layer (3), the old volume's log (1000).
    assert_eq!(report.reclaimed_bytes, 4096 + 10 + 3 + 1000);
    assert_eq!(metrics.reclaimed_bytes.get(), report.reclaimed_bytes);

    // Unmounted now, and no record wants it: the next run collects the old version and its layer.
    std::fs::remove_dir(layout.staging().join("late-install")).unwrap();
    let report = gc::run_once(&layout, &policy, &|_| false, &metrics).unwrap();
    let removed: BTreeSet<PathBuf> = report.removed.iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        removed,
        BTreeSet::from([
            layout.codemodule(mounted).unwrap(),
            layout.dynakube_config("dk", "old-mounted").unwrap(),
            live.dir().to_owned(),
        ])
    );
}

/// The provisioner's own GC loop: a version replaced in the DynaKube's status goes once unmounted,
/// while a mounted one stays.
#[tokio::test]
async fn the_provisioner_collects_a_replaced_version_only_when_unmounted() {
    let mut world = World::start(Duration::from_millis(300)).await;
    world.dynakube("dk", app_monitoring_csi(), Some(V1)).await;
    let first = world.provisioned("dk", V1).await;
    let volume = world.layout.app_mount("csi-1").unwrap();
    mount_overlay(
        &[
            &world
                .layout
                .dynakube_config("dk", first.config.as_deref().unwrap())
                .unwrap(),
            &world.layout.codemodule(V1).unwrap(),
        ],
        &volume.upper(),
        &volume.work(),
        &volume.mapped(),
    );
    world.set_version("dk", V2).await;
    world.provisioned("dk", V2).await;
    let runs = world.metrics.gc.runs.get();
    eventually("two more GC runs", WAIT, || async {
        Ok((world.metrics.gc.runs.get() >= runs + 2).then_some(()))
    })
    .await
    .unwrap();
    let still_there = world.layout.codemodule(V1).unwrap().is_dir();
    umount(&volume.mapped());
    assert!(still_there, "a mounted version was collected");
    eventually("the old version collected", WAIT, || async {
        Ok((!world.layout.codemodule(V1).unwrap().exists()).then_some(()))
    })
    .await
    .unwrap();
    assert!(world.layout.codemodule(V2).unwrap().is_dir());
    let text = io_serving::probes::encode(&world.metrics.registry);
    assert!(text.contains("dynatrace_csi_driver_gc_runs_total"), "{text}");
    assert!(
        text.contains("dynatrace_csi_driver_gc_folders_removed_total"),
        "{text}"
    );
    assert!(
        text.contains("dynatrace_csi_driver_gc_reclaimed_bytes_total"),
        "{text}"
    );
    world.stop().await;
}

/// A changed setting gives a new layer (layers are never changed under a live overlay); the old one is
/// collected once nothing mounts it.
#[tokio::test]
async fn a_changed_host_group_gives_a_new_layer_and_the_old_one_is_collected() {
    let mut world = World::start(Duration::from_millis(300)).await;
    world
        .dynakube("dk", json!({ "cloudNativeFullStack": {} }), Some(V2))
        .await;
    let first = world.provisioned("dk", V2).await.config.unwrap();
    world
        .dynakubes()
        .patch(
            "dk",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "oneAgent": { "cloudNativeFullStack": {
                "args": ["--set-host-group=blue"] } } } })),
        )
        .await
        .unwrap();
    let second = eventually("a new layer", WAIT, || async {
        Ok(world.record("dk").and_then(|r| r.config).filter(|c| *c != first))
    })
    .await
    .unwrap();
    let conf = std::fs::read_to_string(
        world
            .layout
            .dynakube_config("dk", &second)
            .unwrap()
            .join("agent/conf/ruxitagentproc.conf"),
    )
    .unwrap();
    assert!(conf.contains("hostGroup blue"), "{conf}");
    // The environment's settings are still there, whether the second reconcile got them again or was
    // told they had not changed (304).
    assert!(conf.contains("storage /var/lib/dynatrace/oneagent"), "{conf}");
    let answers: Vec<(String, u16)> = world
        .tenant
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::ProcessModuleConfig)
        .map(|r| (r.query, r.status))
        .collect();
    assert_eq!(answers[0], ("revision=0".to_owned(), 200), "{answers:?}");
    assert_eq!(answers[1], ("revision=1".to_owned(), 304), "{answers:?}");
    eventually("the old layer collected", WAIT, || async {
        Ok((!world.layout.dynakube_config("dk", &first).unwrap().exists()).then_some(()))
    })
    .await
    .unwrap();
    // The version was downloaded once.
    assert_eq!(world.tenant.request_count(Endpoint::Download), 1);

    // The node status is written only when it changed: GC runs and resyncs leave it alone.
    let version = world.node_status().await.unwrap().metadata.resource_version;
    let runs = world.metrics.gc.runs.get();
    eventually("three more GC runs", WAIT, || async {
        Ok((world.metrics.gc.runs.get() >= runs + 3).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        world.node_status().await.unwrap().metadata.resource_version,
        version
    );
    world.stop().await;
}

/// The data dir given through a symlink (or a relative path): the mount table names the real path, and
/// a mounted version must still be seen as mounted.
#[test]
fn gc_through_a_symlinked_data_dir_keeps_a_mounted_version() {
    let dir = tempfile::tempdir().unwrap();
    let real = Layout::new(dir.path().join("real"));
    make_version(&real, V1);
    let volume = real.app_mount("csi-1").unwrap();
    mount_overlay(
        &[&real.codemodule(V1).unwrap()],
        &volume.upper(),
        &volume.work(),
        &volume.mapped(),
    );
    std::os::unix::fs::symlink(real.root(), dir.path().join("link")).unwrap();
    let through_link = Layout::new(dir.path().join("link"));
    let policy = Policy {
        max_unmounted_volume_age: Duration::ZERO,
        active_staging: BTreeSet::new(),
    };
    let result = gc::run_once(&through_link, &policy, &|_| false, &gc::GcMetrics::default());
    let kept = real.codemodule(V1).unwrap().join("agent/lib.so").is_file();
    umount(&volume.mapped());
    let report = result.unwrap();
    assert!(kept, "a mounted version was deleted: {report:?}");
    assert!(report.removed.is_empty(), "{report:?}");
}

/// `opt/dynatrace/oneagent/<rel>` as a tar name.
fn in_image(rel: &str) -> String {
    format!("opt/dynatrace/oneagent/{rel}")
}

/// The entries of a code-modules image's base layer: the agent under `opt/dynatrace/oneagent/`, and
/// things around it that are not the code module.
fn agent_entries() -> Vec<TarEntry> {
    vec![
        TarEntry::Dir("./".into()),
        TarEntry::file("etc/hostname", b"builder\n"),
        TarEntry::Dir("opt/".into()),
        TarEntry::Dir("opt/dynatrace/".into()),
        TarEntry::Dir("opt/dynatrace/oneagent/".into()),
        TarEntry::Dir(in_image("agent/")),
        TarEntry::File {
            name: in_image(&format!("agent/bin/{V2}/oneagentutil")),
            mode: 0o755,
            content: b"#!/bin/sh\n".to_vec(),
        },
        TarEntry::file(
            &in_image("agent/lib64/liboneagentproc.so"),
            b"\x7fELF the agent library",
        ),
        TarEntry::file(
            &in_image("agent/conf/ruxitagentproc.conf"),
            b"[general]\nkey value\n",
        ),
    ]
}

/// A DynaKube with `codeModulesImage` (a tag) installs the image's code module once: the tree without
/// the prefix, later layers' whiteouts applied, record, layer, node status and event; a second DynaKube
/// naming the same image by digest uses it without a registry call.
#[tokio::test]
async fn a_code_modules_image_is_installed_once_with_its_layers_and_whiteouts() {
    let mut world = World::start_https(Duration::from_secs(3600)).await;
    let mut base = agent_entries();
    base.extend([
        TarEntry::file(&in_image("agent/lib64/old.so"), b"old"),
        TarEntry::file(&in_image("agent/plugins/a/x"), b"x"),
        TarEntry::file(&in_image("agent/tmp/y"), b"y"),
    ]);
    let upper = vec![
        TarEntry::file(&in_image("agent/lib64/.wh.old.so"), b""),
        TarEntry::file(&in_image("agent/plugins/.wh..wh..opq"), b""),
        TarEntry::file(&in_image("agent/plugins/b"), b"b"),
        TarEntry::file(&in_image("agent/.wh.tmp"), b""),
        TarEntry::Symlink(in_image("agent/lib"), "lib64".into()),
        TarEntry::HardLink(
            in_image("agent/lib64/copy.so"),
            in_image("agent/lib64/liboneagentproc.so"),
        ),
    ];
    let top = Layer {
        media_type: oci_layout::DOCKER_TAR_GZIP,
        blob: oci_layout::gzip(
            &oci_layout::tar(&[TarEntry::file(&in_image("agent/plugins/c"), b"c")]).unwrap(),
        )
        .unwrap(),
    };
    let (image, built) = world
        .add_image(
            "dynatrace/codemodules:1.0",
            &[Layer::gzip(&base).unwrap(), Layer::tar(&upper).unwrap(), top],
        )
        .await;
    let id = built.manifest_digest.replace(':', "-");

    world
        .dynakube("img", json!({ "cloudNativeFullStack": {} }), None)
        .await;
    world.pull_secret("img", "dt0c01.test").await;
    world.set_image("img", &image).await;
    let record = world.provisioned("img", &id).await;
    assert_eq!(world.tenant.request_count(Endpoint::RegistryBlobs), 3);

    let dir = world.layout.codemodule(&id).unwrap();
    assert_eq!(
        std::fs::read(dir.join("agent/lib64/liboneagentproc.so")).unwrap(),
        b"\x7fELF the agent library"
    );
    assert_eq!(
        std::fs::read_link(dir.join("agent/bin/current")).unwrap(),
        Path::new(V2)
    );
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let util = std::fs::metadata(dir.join(format!("agent/bin/{V2}/oneagentutil"))).unwrap();
        assert_eq!(util.permissions().mode() & 0o777, 0o755);
        let conf = std::fs::metadata(dir.join("agent/conf/ruxitagentproc.conf")).unwrap();
        assert_eq!(conf.permissions().mode() & 0o777, 0o666);
        let library = std::fs::metadata(dir.join("agent/lib64/liboneagentproc.so")).unwrap();
        let copy = std::fs::metadata(dir.join("agent/lib64/copy.so")).unwrap();
        assert_eq!(library.ino(), copy.ino(), "a hard link");
    }
    // Whiteouts: a deleted file, an opaque directory (keeps what its own layer and later ones wrote),
    // a deleted directory.
    assert!(!dir.join("agent/lib64/old.so").exists());
    let mut plugins: Vec<String> = std::fs::read_dir(dir.join("agent/plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    plugins.sort();
    assert_eq!(plugins, ["b", "c"]);
    assert!(!dir.join("agent/tmp").exists());
    assert_eq!(
        std::fs::read_link(dir.join("agent/lib")).unwrap(),
        Path::new("lib64")
    );
    // Only the code module: nothing of the image around it, no whiteout files.
    let mut top_level: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top_level.sort();
    assert_eq!(top_level, ["agent"]);
    let layer = world
        .layout
        .dynakube_config("img", record.config.as_deref().unwrap())
        .unwrap()
        .join("agent/conf/ruxitagentproc.conf");
    let conf = std::fs::read_to_string(&layer).unwrap();
    assert!(
        conf.contains("key value") && conf.contains("tenant abc12345"),
        "{conf}"
    );

    let note = world.event("img", INSTALLED).await;
    assert!(
        note.contains(&image) && note.contains(&built.manifest_digest),
        "{note}"
    );
    eventually("node status", WAIT, || async {
        Ok(world
            .node_status()
            .await
            .filter(|m| m.data.as_ref().is_some_and(|d| d["versions"].contains(&id))))
    })
    .await
    .unwrap();

    // The same image by digest: no registry call at all, the same directory.
    let (manifests, blobs) = (
        world.tenant.request_count(Endpoint::RegistryManifests),
        world.tenant.request_count(Endpoint::RegistryBlobs),
    );
    let pinned = format!(
        "{}/dynatrace/codemodules@{}",
        world.tenant.addr(),
        built.manifest_digest
    );
    world.dynakube("pinned", app_monitoring_csi(), None).await;
    world.set_image("pinned", &pinned).await;
    world.provisioned("pinned", &id).await;
    assert_eq!(world.tenant.request_count(Endpoint::RegistryBlobs), blobs);
    assert_eq!(world.tenant.request_count(Endpoint::RegistryManifests), manifests);
    assert!(world.events("pinned", INSTALLED).await.is_empty());
    assert_eq!(world.codemodules(), [id]);
    world.stop().await;
}

/// A multi-platform image (an index): the node's architecture is installed, named by the index's
/// digest (what the tag resolves to).
#[tokio::test]
async fn an_image_index_installs_the_image_of_the_node_architecture() {
    let mut world = World::start_https(Duration::from_secs(3600)).await;
    let ours = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if ours == "amd64" { "arm64" } else { "amd64" };
    let platform = |library: &[u8]| {
        let mut entries = agent_entries();
        entries.retain(|e| !matches!(e, TarEntry::File { name, .. } if name.ends_with("liboneagentproc.so")));
        entries.push(TarEntry::file(
            &in_image("agent/lib64/liboneagentproc.so"),
            library,
        ));
        vec![Layer::gzip(&entries).unwrap()]
    };
    let dir = world.images.path().join("multi");
    let (index_digest, _) = oci_layout::write_multi_platform_image(
        &dir,
        "1.0",
        &[
            (other, platform(b"the other architecture")),
            (ours, platform(b"this architecture")),
        ],
    )
    .unwrap();
    world.tenant.add_image("dynatrace/multi:1.0", &dir).await.unwrap();
    let image = format!("{}/dynatrace/multi:1.0", world.tenant.addr());
    world.dynakube("multi", app_monitoring_csi(), None).await;
    world.pull_secret("multi", "dt0c01.test").await;
    world.set_image("multi", &image).await;
    let id = index_digest.replace(':', "-");
    world.provisioned("multi", &id).await;
    assert_eq!(
        std::fs::read(
            world
                .layout
                .codemodule(&id)
                .unwrap()
                .join("agent/lib64/liboneagentproc.so")
        )
        .unwrap(),
        b"this architecture"
    );
    assert_eq!(world.tenant.request_count(Endpoint::RegistryBlobs), 1);
    world.stop().await;
}

/// Wrong credentials, hostile layers and broken or unsupported blobs: each fails with an event naming
/// the problem, leaves nothing under `codemodules/` and nothing outside the data dir; then a good image
/// installs.
#[tokio::test]
async fn hostile_code_modules_images_install_nothing_then_a_good_one_installs() {
    let mut world = World::start_https(Duration::from_secs(3600)).await;
    let escape = world.images.path().join("escaped");
    let with = |extra: Vec<TarEntry>| {
        let mut entries = agent_entries();
        entries.extend(extra);
        vec![Layer::gzip(&entries).unwrap()]
    };
    let bomb = TarEntry::File {
        name: in_image("agent/lib64/bomb.so"),
        mode: 0o644,
        content: vec![0u8; 64 << 20],
    };
    let traversal = in_image("../../../../escaped");
    let absolute = format!("{}/absolute", escape.display());
    let zstd = vec![Layer {
        media_type: oci_layout::TAR_ZSTD,
        blob: b"(zstd bytes)".to_vec(),
    }];
    let no_agent = vec![Layer::gzip(&[TarEntry::file("opt/dynatrace/oneagent/README", b"hi")]).unwrap()];
    // (name, layers, password, blob fault, what the event must name)
    type Case<'a> = (&'a str, Vec<Layer>, &'a str, Option<Fault>, String);
    let cases: Vec<Case> = vec![
        ("creds", with(vec![]), "dt0c01.WRONG", None, "-pull-secret".into()),
        (
            "traversal",
            with(vec![TarEntry::file(&traversal, b"x")]),
            "dt0c01.test",
            None,
            traversal.clone(),
        ),
        (
            "absolute",
            with(vec![TarEntry::file(&absolute, b"x")]),
            "dt0c01.test",
            None,
            absolute.clone(),
        ),
        (
            "symlink",
            with(vec![TarEntry::Symlink(
                in_image("agent/evil"),
                "../../../../../..".into(),
            )]),
            "dt0c01.test",
            None,
            "agent/evil".into(),
        ),
        (
            "hardlink",
            with(vec![TarEntry::HardLink(
                in_image("agent/shadow"),
                "etc/hostname".into(),
            )]),
            "dt0c01.test",
            None,
            "hard link to \"etc/hostname\", which is outside".into(),
        ),
        (
            "bomb",
            with(vec![bomb]),
            "dt0c01.test",
            None,
            in_image("agent/lib64/bomb.so"),
        ),
        (
            "truncated",
            with(vec![]),
            "dt0c01.test",
            Some(Fault::CutAfter { bytes: 100 }),
            "bytes".into(),
        ),
        (
            "corrupt",
            with(vec![]),
            "dt0c01.test",
            Some(Fault::Corrupt),
            "sha256 is".into(),
        ),
        ("zstd", zstd, "dt0c01.test", None, "tar+zstd".into()),
        (
            "noagent",
            no_agent,
            "dt0c01.test",
            None,
            "/opt/dynatrace/oneagent/agent".into(),
        ),
    ];
    for (name, layers, password, fault, expected) in cases {
        let (image, _) = world.add_image(&format!("hostile/{name}:1"), &layers).await;
        match &fault {
            Some(fault) => world
                .tenant
                .set_fault(Endpoint::RegistryBlobs, fault.clone(), None),
            None => world.tenant.clear_faults(),
        }
        world.dynakube(name, app_monitoring_csi(), None).await;
        world.pull_secret(name, password).await;
        world.set_image(name, &image).await;
        let note = world.event(name, FAILED_INSTALL).await;
        println!("{name}: {note}");
        assert!(
            note.contains(&image) && note.contains(&expected),
            "{name}: expected {expected:?} in {note}"
        );
        if name == "creds" {
            assert!(
                note.contains(&format!("{}:{name}-pull-secret", world.ns.name)),
                "{note}"
            );
            // Retried with the backoff: the tag is asked for again.
            let asked = world.tenant.request_count(Endpoint::RegistryManifests);
            eventually("retried", WAIT, || async {
                Ok((world.tenant.request_count(Endpoint::RegistryManifests) >= asked + 2).then_some(()))
            })
            .await
            .unwrap();
        }
        assert!(
            world.codemodules().is_empty(),
            "{name}: {:?}",
            world.codemodules()
        );
        let record = world.record(name).unwrap();
        assert_eq!((record.version, record.config), (None, None), "{name}");
        let outside: Vec<_> = world
            .all_paths()
            .into_iter()
            .filter(|p| !p.starts_with(world.layout.root()))
            .filter(|p| !world.layout.root().starts_with(p))
            .collect();
        assert!(
            outside.is_empty(),
            "{name}: written outside the data dir: {outside:?}"
        );
        assert!(!escape.exists(), "{name}");
        world.dynakubes().delete(name, &Default::default()).await.unwrap();
    }

    // A good image installs, and the failed attempts left nothing in staging.
    world.tenant.clear_faults();
    let (image, built) = world.add_image("good/image:1", &with(vec![])).await;
    world.dynakube("good", app_monitoring_csi(), None).await;
    world.pull_secret("good", "dt0c01.test").await;
    world.set_image("good", &image).await;
    world
        .provisioned("good", &built.manifest_digest.replace(':', "-"))
        .await;
    eventually("staging emptied", WAIT, || async {
        Ok(std::fs::read_dir(world.layout.staging())
            .map(|r| r.count() == 0)
            .unwrap_or(true)
            .then_some(()))
    })
    .await
    .unwrap();
    world.stop().await;
}

/// The image's code module as a pod sees it: `csi-server` beside the provisioner publishes the volume
/// with the agent library from the installed image.
#[tokio::test]
async fn an_installed_code_modules_image_is_published_to_a_pod() {
    use common::{DYNAKUBE, KubeletVolume};

    let mut world = World::start_https(Duration::from_secs(3600)).await;
    let server = world.start_server().await;
    let mut node = server.node.clone();
    let (image, built) = world
        .add_image(
            "dynatrace/codemodules:2.0",
            &[Layer::gzip(&agent_entries()).unwrap()],
        )
        .await;
    world.dynakube(DYNAKUBE, app_monitoring_csi(), None).await;
    world.pull_secret(DYNAKUBE, "dt0c01.test").await;
    world.set_image(DYNAKUBE, &image).await;

    let volume = KubeletVolume::new(&world.dir.path().join("kubelet"), "pod-1", "app");
    tokio::time::timeout(WAIT, async {
        loop {
            match volume.publish(&mut node).await {
                Ok(()) => return,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(status) => panic!("publish: {status}"),
            }
        }
    })
    .await
    .expect("the volume published within a minute");
    assert_eq!(
        std::fs::read(volume.target.join("agent/lib64/liboneagentproc.so")).unwrap(),
        b"\x7fELF the agent library"
    );
    let config = std::fs::read_to_string(volume.target.join("agent/conf/ruxitagentproc.conf")).unwrap();
    assert!(config.contains("abc12345"), "the layer's configuration: {config}");
    let table = io_csi_driver::mounts::read().unwrap();
    let id = built.manifest_digest.replace(':', "-");
    let installed = std::fs::canonicalize(world.layout.codemodule(&id).unwrap()).unwrap();
    assert!(table.in_use_as_lower_dir(&installed));

    volume.unpublish(&mut node).await.unwrap();
    assert!(
        world.dir.mounts().is_empty(),
        "left mounted: {:?}",
        world.dir.mounts()
    );
    server.stop().await;
    world.stop().await;
}
