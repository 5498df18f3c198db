//! The `dynatrace-operator csi-server` binary: csi-sanity against it, and crash tests that kill it with
//! SIGKILL between two steps of publish or unpublish, restart it, and let the kubelet's retry converge.
//! Real mounts (the tests run as root); every mount below a test's directory is undone even on failure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../io-csi-driver/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use io_csi_driver::proto::csi::node_client::NodeClient;

/// A `csi-server` process of the binary under test.
struct ServerProcess {
    child: Child,
    socket: PathBuf,
}

impl ServerProcess {
    /// Starts the binary on `<root>/plugin/csi.sock` with data dir `<root>/data`, killing itself after
    /// `crash_at` when given.
    fn start(root: &Path, crash_at: Option<&str>) -> Self {
        Self::spawn(root, crash_at, &root.join("no-kubeconfig"))
    }

    /// Starts the binary with a kubeconfig, so that it writes events.
    fn start_with_kubeconfig(root: &Path, kubeconfig: &Path) -> Self {
        Self::spawn(root, None, kubeconfig)
    }

    fn spawn(root: &Path, crash_at: Option<&str>, kubeconfig: &Path) -> Self {
        let socket = root.join("plugin/csi.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("server.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"));
        command
            .args(["csi-server", "--node-id", "node-1", "--registration-dir", ""])
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg(format!("--data-dir={}", root.join("data").display()))
            .args(["--health-probe-bind-address", "127.0.0.1:0"])
            // Without a kubeconfig, events are logged, never sent.
            .env("KUBECONFIG", kubeconfig)
            .env_remove(io_csi_driver::publish::CRASH_AT_ENV)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        if let Some(step) = crash_at {
            command.env(io_csi_driver::publish::CRASH_AT_ENV, step);
        }
        Self {
            child: command.spawn().unwrap(),
            socket,
        }
    }

    async fn node(&self) -> NodeClient<tonic::transport::Channel> {
        for _ in 0..400 {
            if self.socket.exists()
                && let Ok(channel) = io_csi_driver::server::connect(&self.socket).await
            {
                return NodeClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("csi-server did not open {}", self.socket.display());
    }

    /// Waits for the process to end by itself (the crash point) and checks that SIGKILL ended it.
    fn expect_killed(mut self) {
        use std::os::unix::process::ExitStatusExt as _;
        let status = self.child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "csi-server ended by SIGKILL, not {status:?}"
        );
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// csi-sanity's specs that do not apply to a node-only driver: the controller blocks (csi-sanity does
/// not skip them when CONTROLLER_SERVICE is not advertised) and the Node specs that call CreateVolume
/// unconditionally.
const SANITY_SKIP: &str = r"\[Controller Server\]|GroupController|should remove target path|should fail when volume does not exist on the specified path";

#[tokio::test]
async fn csi_sanity_passes_for_the_node_only_driver() {
    let sanity = match test_kit::tools::locate_csi_sanity() {
        Ok(path) => path,
        Err(err) if std::env::var_os(test_kit::tools::REQUIRE_TOOLS_ENV).is_none() => {
            eprintln!(
                "SKIPPED: {err} (set {}=1 to fail instead)",
                test_kit::tools::REQUIRE_TOOLS_ENV
            );
            return;
        }
        Err(err) => panic!("{err}"),
    };
    let tmp = MountedTempDir::new();
    let server = ServerProcess::start(tmp.path(), None);
    drop(server.node().await);
    let output = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", server.socket.display()))
        .arg(format!(
            "--csi.mountdir={}",
            tmp.path().join("sanity-target").display()
        ))
        .arg(format!(
            "--csi.stagingdir={}",
            tmp.path().join("sanity-staging").display()
        ))
        .arg(format!("--ginkgo.skip={SANITY_SKIP}"))
        .arg(format!(
            "--ginkgo.junit-report={}",
            tmp.path().join("csi-sanity.xml").display()
        ))
        .args(["--ginkgo.no-color", "--ginkgo.timeout=5m"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop();
    assert!(output.status.success(), "csi-sanity failed:\n{text}");
    // Identity (3), NodeGetCapabilities, NodeGetInfo, NodePublishVolume (3) and NodeUnpublishVolume (2).
    assert!(text.contains("10 Passed | 0 Failed"), "{text}");
}

/// Publishes after a crash at `step`, then checks that the retry converged to one mount of each kind.
async fn publish_survives_a_crash_at(step: &str) {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 10);
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), &format!("pod-{step}"), "app");

    let crashing = ServerProcess::start(tmp.path(), Some(step));
    let err = volume.publish(&mut crashing.node().await).await.unwrap_err();
    crashing.expect_killed();
    eprintln!("{step}: the kubelet saw {:?}: {}", err.code(), err.message());

    let server = ServerProcess::start(tmp.path(), None);
    let mut node = server.node().await;
    volume.publish(&mut node).await.unwrap();
    let table = io_csi_driver::mounts::read().unwrap();
    let target = std::fs::canonicalize(&volume.target).unwrap();
    let mapped = std::fs::canonicalize(layout.app_mount(&volume.volume_id).unwrap().mapped()).unwrap();
    assert_eq!(
        table.at(&target).count(),
        1,
        "{step}: target mounted once: {:?}",
        tmp.mounts()
    );
    assert_eq!(
        table.at(&mapped).count(),
        1,
        "{step}: overlay mounted once: {:?}",
        tmp.mounts()
    );
    assert_eq!(
        std::fs::read(volume.target.join("agent/lib64/liboneagentproc.so")).unwrap(),
        LIBRARY
    );
    volume.unpublish(&mut node).await.unwrap();
    assert!(
        tmp.mounts().is_empty(),
        "{step}: left mounted: {:?}",
        tmp.mounts()
    );
    server.stop();
}

/// Unpublishes with a crash at `step`, then checks that the retried unpublish leaves nothing behind.
async fn unpublish_survives_a_crash_at(step: &str) {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 10);
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), &format!("pod-{step}"), "app");
    let server = ServerProcess::start(tmp.path(), None);
    volume.publish(&mut server.node().await).await.unwrap();
    server.stop();

    let crashing = ServerProcess::start(tmp.path(), Some(step));
    assert!(volume.unpublish(&mut crashing.node().await).await.is_err());
    crashing.expect_killed();

    let server = ServerProcess::start(tmp.path(), None);
    let mut node = server.node().await;
    volume.unpublish(&mut node).await.unwrap();
    assert!(
        tmp.mounts().is_empty(),
        "{step}: left mounted: {:?}",
        tmp.mounts()
    );
    assert!(!layout.app_mount(&volume.volume_id).unwrap().record().exists());
    // The pod's volume can be published again (a new pod on the same node, same version).
    let next = KubeletVolume::new(&tmp.path().join("kubelet"), &format!("next-{step}"), "app");
    next.publish(&mut node).await.unwrap();
    next.unpublish(&mut node).await.unwrap();
    assert!(
        tmp.mounts().is_empty(),
        "{step}: left mounted: {:?}",
        tmp.mounts()
    );
    server.stop();
}

#[tokio::test]
async fn a_crash_during_publish_converges_on_the_kubelets_retry() {
    for step in ["publish-record", "publish-overlay", "publish-bind"] {
        publish_survives_a_crash_at(step).await;
    }
}

#[tokio::test]
async fn a_crash_during_unpublish_converges_on_the_kubelets_retry() {
    for step in ["unpublish-target", "unpublish-mapped"] {
        unpublish_survives_a_crash_at(step).await;
    }
}

#[tokio::test]
async fn a_crash_while_publishing_an_empty_volume_converges() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 0);
    write_record(&layout, None, None, 0);
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "pod-empty", "app");
    let crashing = ServerProcess::start(tmp.path(), Some("publish-record"));
    assert!(volume.publish(&mut crashing.node().await).await.is_err());
    crashing.expect_killed();
    let server = ServerProcess::start(tmp.path(), None);
    let mut node = server.node().await;
    volume.publish(&mut node).await.unwrap();
    assert!(is_mounted(&volume.target));
    assert_eq!(
        std::fs::read_dir(&volume.target).unwrap().count(),
        0,
        "published empty"
    );
    volume.unpublish(&mut node).await.unwrap();
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    server.stop();
}

#[tokio::test]
async fn an_empty_volume_puts_a_warning_event_on_its_pod() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams, PostParams};

    let namespace = test_kit::TestNamespace::create().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(namespace.client.clone(), &namespace.name);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();

    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 0);
    write_record(&layout, None, None, 0);
    let mut volume = KubeletVolume::new(&tmp.path().join("kubelet"), &uid, "app");
    volume
        .context
        .insert("csi.storage.k8s.io/pod.name".into(), "app".into());
    volume
        .context
        .insert("csi.storage.k8s.io/pod.namespace".into(), namespace.name.clone());

    let server = ServerProcess::start_with_kubeconfig(tmp.path(), namespace.kubeconfig());
    let mut node = server.node().await;
    let started = std::time::Instant::now();
    volume.publish(&mut node).await.unwrap();
    let publish_took = started.elapsed();
    assert!(is_mounted(&volume.target));

    let events: Api<Event> = Api::namespaced(namespace.client.clone(), &namespace.name);
    let event = test_kit::eventually(
        "the empty-volume event on the pod",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("OneAgentVolumeEmpty")))
        },
    )
    .await
    .unwrap();
    let regarding = event.regarding.unwrap();
    assert_eq!(regarding.name.as_deref(), Some("app"));
    assert_eq!(regarding.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap().contains("without the OneAgent code module"));
    // The event is written after the answer, not before it.
    assert!(
        publish_took < Duration::from_secs(1),
        "publish took {publish_took:?}"
    );

    volume.unpublish(&mut node).await.unwrap();
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    server.stop();
}

#[tokio::test]
async fn kills_at_arbitrary_moments_under_concurrent_publishes_and_unpublishes_converge() {
    let tmp = MountedTempDir::new();
    prepare_data_dir(&tmp.path().join("data"), 10);
    let kubelet = tmp.path().join("kubelet");
    let volumes: Vec<_> = (0..20)
        .map(|i| KubeletVolume::new(&kubelet, &format!("pod-{i}"), "app"))
        .collect();
    // Deterministic delays, so that a failure reproduces: each round kills the server this long after
    // the kubelet's calls started, half of the rounds while publishing, half while unpublishing.
    for (round, delay_ms) in [4u64, 7, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40]
        .into_iter()
        .enumerate()
    {
        let unpublishing = round % 2 == 1;
        let server = ServerProcess::start(tmp.path(), None);
        let node = server.node().await;
        if unpublishing {
            for volume in &volumes {
                volume.publish(&mut node.clone()).await.unwrap();
            }
        }
        let calls = futures::future::join_all(volumes.iter().map(|volume| {
            let mut node = node.clone();
            async move {
                if unpublishing {
                    volume.unpublish(&mut node).await
                } else {
                    volume.publish(&mut node).await
                }
            }
        }));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            server.stop();
        };
        let (results, ()) = tokio::join!(calls, kill);
        let interrupted = results.iter().filter(|r| r.is_err()).count();
        eprintln!(
            "round {round}: killed after {delay_ms} ms while {}: {interrupted} of {} calls failed",
            if unpublishing {
                "unpublishing"
            } else {
                "publishing"
            },
            volumes.len()
        );

        // The kubelet retries every call until it succeeds, on the restarted server.
        let server = ServerProcess::start(tmp.path(), None);
        let mut node = server.node().await;
        for volume in &volumes {
            if unpublishing {
                volume.unpublish(&mut node).await.unwrap();
                assert!(
                    !is_mounted(&volume.target),
                    "round {round}: {} still mounted",
                    volume.volume_id
                );
            } else {
                volume.publish(&mut node).await.unwrap();
                assert_eq!(
                    std::fs::read(volume.target.join("agent/lib64/liboneagentproc.so")).unwrap(),
                    LIBRARY
                );
            }
        }
        if !unpublishing {
            let table = io_csi_driver::mounts::read().unwrap();
            for volume in &volumes {
                let target = std::fs::canonicalize(&volume.target).unwrap();
                assert_eq!(
                    table.at(&target).count(),
                    1,
                    "round {round}: {} mounted once",
                    target.display()
                );
            }
            for volume in &volumes {
                volume.unpublish(&mut node).await.unwrap();
            }
        }
        assert!(
            tmp.mounts().is_empty(),
            "round {round}: left mounted: {:?}",
            tmp.mounts()
        );
        server.stop();
    }
}
