//! `csi-server` driven exactly as the kubelet drives it for the `oneagent-bin` ephemeral inline volume,
//! over its real unix socket, with real overlayfs and bind mounts (the tests run as root) on a data dir
//! prepared as the provisioner leaves it.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use io_csi_driver::proto::csi::node_client::NodeClient;
use io_csi_driver::proto::registration::{self as reg, registration_client::RegistrationClient};
use io_csi_driver::server::{self, Options};
use tokio_util::sync::CancellationToken;
use tonic::Code;

struct Server {
    socket: PathBuf,
    health: std::net::SocketAddr,
    shutdown: CancellationToken,
    running: Option<server::Running>,
    node: NodeClient<tonic::transport::Channel>,
}

impl Server {
    async fn start(root: &Path, max_mount_wait: Duration, registration: bool) -> Self {
        let socket = root.join("plugin/csi.sock");
        let metrics = io_csi_driver::metrics::Metrics::new();
        let events = io_csi_driver::events::PodEvents::disabled(metrics.clone());
        let shutdown = CancellationToken::new();
        let options = Options {
            endpoint: format!("unix://{}", socket.display()),
            node_id: "node-1".into(),
            data_dir: root.join("data"),
            registration_dir: registration.then(|| root.join("plugins_registry")),
            kubelet_registration_path: "/var/lib/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock".into(),
            health_address: "127.0.0.1:0".parse().unwrap(),
            max_mount_wait,
            version: "0.1.0-test".into(),
        };
        let running = server::start(options, metrics, events, shutdown.clone())
            .await
            .unwrap();
        let node = NodeClient::new(connect(&socket).await);
        Self {
            socket,
            health: running.health_address,
            shutdown,
            running: Some(running),
            node,
        }
    }

    fn metrics(&self) -> String {
        self.running.as_ref().unwrap().driver.metrics().encode()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        self.running.take().unwrap().wait().await.unwrap();
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn an_app_volume_shows_the_version_under_its_configuration_and_writes_go_to_the_upper_dir() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 10);
    let mut server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "pod-uid-1", "app");

    volume.publish(&mut server.node).await.unwrap();
    let target = &volume.target;
    assert!(is_mounted(target), "the target is a mount point");
    assert_eq!(
        std::fs::read(target.join("agent/lib64/liboneagentproc.so")).unwrap(),
        LIBRARY
    );
    let conf = std::fs::read_to_string(target.join("agent/conf/ruxitagentproc.conf")).unwrap();
    assert!(
        conf.contains("from=config"),
        "the configuration layer covers the version's file: {conf}"
    );

    // What the pod's agent writes lands in the volume's upper dir, never in the shared version.
    std::fs::create_dir_all(target.join("agent/log")).unwrap();
    std::fs::write(target.join("agent/log/agent.log"), "hello").unwrap();
    std::fs::write(
        target.join("agent/conf/ruxitagentproc.conf"),
        "changed by the pod",
    )
    .unwrap();
    let app = layout.app_mount(&volume.volume_id).unwrap();
    assert_eq!(
        std::fs::read_to_string(app.upper().join("agent/log/agent.log")).unwrap(),
        "hello"
    );
    let version_conf = layout
        .codemodule(VERSION)
        .unwrap()
        .join("agent/conf/ruxitagentproc.conf");
    assert_eq!(
        std::fs::read_to_string(version_conf).unwrap(),
        "[general]\nfrom=version\n"
    );
    let config_conf = layout
        .dynakube_config(DYNAKUBE, CONFIG)
        .unwrap()
        .join("agent/conf/ruxitagentproc.conf");
    assert!(
        std::fs::read_to_string(config_conf)
            .unwrap()
            .contains("from=config")
    );
    assert!(
        server.metrics().contains(&format!(
            "dynatrace_csi_driver_agent_versions{{version=\"{VERSION}\"}} 1"
        )),
        "{}",
        server.metrics()
    );

    // A second publish (the kubelet's retry) succeeds and mounts nothing more.
    let before = tmp.mounts().len();
    volume.publish(&mut server.node).await.unwrap();
    assert_eq!(tmp.mounts().len(), before);

    volume.unpublish(&mut server.node).await.unwrap();
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    assert!(!target.exists(), "the target directory is removed");
    assert!(
        app.upper().join("agent/log/agent.log").exists(),
        "the upper dir stays for the GC"
    );
    assert!(!app.record().exists());
    // A second unpublish is a no-op.
    volume.unpublish(&mut server.node).await.unwrap();
    let metrics = server.metrics();
    assert!(!metrics.contains("agent_versions{"), "{metrics}");
    assert!(
        metrics.contains("dynatrace_csi_driver_publishes_total{mode=\"app\",outcome=\"mounted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dynatrace_csi_driver_publishes_total{mode=\"app\",outcome=\"already_mounted\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_host_volume_binds_the_tenants_persistent_storage() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 10);
    let mut server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "oneagent-pod", "host");
    volume.publish(&mut server.node).await.unwrap();
    assert!(is_mounted(&volume.target));
    std::fs::write(volume.target.join("state"), "kept").unwrap();
    assert!(layout.host_mount_record(&volume.volume_id).unwrap().exists());
    volume.publish(&mut server.node).await.unwrap();
    volume.unpublish(&mut server.node).await.unwrap();
    volume.unpublish(&mut server.node).await.unwrap();
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    assert_eq!(
        std::fs::read_to_string(layout.host_storage(TENANT).unwrap().join("state")).unwrap(),
        "kept",
        "the host OneAgent's storage survives its pod"
    );
    assert!(!layout.host_mount_record(&volume.volume_id).unwrap().exists());
    server.stop().await;
}

#[tokio::test]
async fn a_version_that_is_not_ready_is_retried_then_published_empty_after_the_attempts() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 2);
    write_record(&layout, None, None, 2);
    let mut server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "pod-uid-2", "app");
    for attempt in 1..=2 {
        let err = volume.publish(&mut server.node).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "attempt {attempt}: {err}");
        assert!(err.message().contains("not finished installing"), "{err}");
        assert!(!is_mounted(&volume.target));
    }
    volume.publish(&mut server.node).await.unwrap();
    assert!(is_mounted(&volume.target), "published, as an empty directory");
    assert_eq!(std::fs::read_dir(&volume.target).unwrap().count(), 0);
    let record: pure_csi::layout::AppVolumeRecord =
        io_csi_driver::records::read(&layout.app_mount(&volume.volume_id).unwrap().record())
            .unwrap()
            .unwrap();
    assert!(record.empty && record.failed_attempts == 2, "{record:?}");
    // Even once the version is ready, this volume stays what it was published as.
    write_record(&layout, Some(VERSION), Some(CONFIG), 2);
    volume.publish(&mut server.node).await.unwrap();
    assert_eq!(std::fs::read_dir(&volume.target).unwrap().count(), 0);
    let metrics = server.metrics();
    assert!(
        metrics.contains("dynatrace_csi_driver_empty_volumes_total 1"),
        "{metrics}"
    );
    volume.unpublish(&mut server.node).await.unwrap();
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    server.stop().await;
}

#[tokio::test]
async fn a_missing_record_is_retried_then_published_empty_after_the_time_bound() {
    let tmp = MountedTempDir::new();
    let mut server = Server::start(tmp.path(), Duration::from_secs(1), false).await;
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "pod-uid-3", "app");
    let err = volume.publish(&mut server.node).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("no dynakube.json"), "{err}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    volume.publish(&mut server.node).await.unwrap();
    assert!(is_mounted(&volume.target));
    volume.unpublish(&mut server.node).await.unwrap();
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    server.stop().await;
}

#[tokio::test]
async fn requests_without_what_the_driver_needs_are_invalid_arguments() {
    let tmp = MountedTempDir::new();
    let mut server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "pod-uid-4", "app");
    let mut cases = Vec::new();
    let mut request = volume.publish_request();
    request.volume_id.clear();
    cases.push((request, "volume_id"));
    let mut request = volume.publish_request();
    request.target_path.clear();
    cases.push((request, "target_path"));
    let mut request = volume.publish_request();
    request.volume_capability = None;
    cases.push((request, "volume_capability"));
    let mut request = volume.publish_request();
    request.volume_context.remove("dynakube");
    cases.push((request, "volume_context.dynakube"));
    for (request, field) in cases {
        let err = server.node.node_publish_volume(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains(field), "{err}");
    }
    // Unpublish of a volume the driver never saw succeeds.
    volume.unpublish(&mut server.node).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_publishes_of_one_version_all_mount_and_all_unmount() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 10);
    let server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    let kubelet = tmp.path().join("kubelet");
    let volumes: Vec<_> = (0..200)
        .map(|i| KubeletVolume::new(&kubelet, &format!("pod-{i}"), "app"))
        .collect();
    let publishes = volumes.iter().map(|volume| {
        let mut node = server.node.clone();
        async move { volume.publish(&mut node).await }
    });
    for result in futures::future::join_all(publishes).await {
        result.unwrap();
    }
    let table = io_csi_driver::mounts::read().unwrap();
    for volume in &volumes {
        let target = std::fs::canonicalize(&volume.target).unwrap();
        assert_eq!(table.at(&target).count(), 1, "{} mounted once", target.display());
        assert_eq!(
            std::fs::read(volume.target.join("agent/lib64/liboneagentproc.so")).unwrap(),
            LIBRARY
        );
    }
    assert!(table.in_use_as_lower_dir(&std::fs::canonicalize(layout.codemodule(VERSION).unwrap()).unwrap()));
    assert!(
        server
            .metrics()
            .contains(&format!("agent_versions{{version=\"{VERSION}\"}} 200")),
        "{}",
        server.metrics()
    );
    let unpublishes = volumes.iter().map(|volume| {
        let mut node = server.node.clone();
        async move { volume.unpublish(&mut node).await }
    });
    for result in futures::future::join_all(unpublishes).await {
        result.unwrap();
    }
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    assert!(!server.metrics().contains("agent_versions{"));
    server.stop().await;
}

#[tokio::test]
async fn the_registrar_answers_the_kubelet_and_readiness_follows_its_verdict() {
    let tmp = MountedTempDir::new();
    let server = Server::start(tmp.path(), Duration::from_secs(120), true).await;
    let reg_socket = tmp
        .path()
        .join("plugins_registry/csi.oneagent.dynatrace.com-reg.sock");
    let mut registration = RegistrationClient::new(connect(&reg_socket).await);

    let (status, body) = http_get(server.health, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the kubelet"), "{body}");

    let info = registration
        .get_info(reg::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "csi.oneagent.dynatrace.com");
    assert_eq!(
        info.endpoint,
        "/var/lib/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock"
    );
    assert_eq!(info.supported_versions, ["1.0.0"]);

    registration
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: false,
            error: "socket not found".into(),
        })
        .await
        .unwrap();
    let (status, body) = http_get(server.health, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("socket not found"), "{body}");
    registration
        .notify_registration_status(reg::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(http_get(server.health, "/readyz").await.0, 200);
    assert_eq!(http_get(server.health, "/livez").await.0, 200);
    assert_eq!(http_get(server.health, "/healthz").await, (200, "ok".to_owned()));
    let (status, metrics) = http_get(server.health, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("dynatrace_csi_driver_empty_volumes_total"),
        "{metrics}"
    );

    // /healthz calls Probe on the CSI socket: without the socket it fails.
    std::fs::remove_file(&server.socket).unwrap();
    let (status, body) = http_get(server.health, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_read_only_volume_is_mounted_read_only() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 10);
    std::fs::create_dir_all(layout.host_storage(TENANT).unwrap()).unwrap();
    std::fs::write(layout.host_storage(TENANT).unwrap().join("state"), "kept").unwrap();
    let mut server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    for (pod, mode, file) in [
        ("ro-app", "app", "agent/lib64/liboneagentproc.so"),
        ("ro-host", "host", "state"),
    ] {
        let volume = KubeletVolume::new(&tmp.path().join("kubelet"), pod, mode);
        let mut request = volume.publish_request();
        request.readonly = true;
        server.node.node_publish_volume(request).await.unwrap();
        assert!(volume.target.join(file).exists(), "{mode}: readable");
        let err = std::fs::write(volume.target.join("new-file"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(30), "{mode}: EROFS, not {err}");
        volume.unpublish(&mut server.node).await.unwrap();
    }
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    server.stop().await;
}

#[tokio::test]
async fn a_torn_dynakube_record_ends_in_an_empty_volume_not_an_endless_error() {
    let tmp = MountedTempDir::new();
    let layout = prepare_data_dir(&tmp.path().join("data"), 1);
    std::fs::write(layout.dynakube_record(DYNAKUBE).unwrap(), b"{\"tenantUu").unwrap();
    let mut server = Server::start(tmp.path(), Duration::from_secs(120), false).await;
    let volume = KubeletVolume::new(&tmp.path().join("kubelet"), "pod-torn", "app");
    let mut codes = Vec::new();
    for _ in 0..11 {
        match volume.publish(&mut server.node).await {
            Ok(()) => break,
            Err(err) => codes.push(err.code()),
        }
    }
    assert!(codes.iter().all(|c| *c == Code::Unavailable), "{codes:?}");
    assert_eq!(
        codes.len(),
        10,
        "the default limit of 10 failed attempts, then empty"
    );
    assert!(is_mounted(&volume.target));
    volume.unpublish(&mut server.node).await.unwrap();
    server.stop().await;
}
