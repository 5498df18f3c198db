//! The real `dynatrace-operator csi-provisioner` process against the real API server and the fake tenant:
//! killed with SIGKILL in the middle of an unpack and restarted, and (ignored, by hand) the benchmark of
//! unpacking a 1 GiB agent archive: peak RSS and throughput against `unzip` on the same file.
//!
//! ```text
//! cargo test --release -p dynatrace-operator --test csi_provisioner -- --ignored --nocapture
//! ```
//!
//! `BENCH_ARCHIVE_MIB` (default 1024) sets the archive's size.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use pure_api::dynakube::DynaKube;
use pure_csi::layout::{DynakubeRecord, Layout};
use serde_json::json;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::procfs::{mib, status_kib};
use test_kit::{TestNamespace, eventually};

const VERSION: &str = "1.277.0.20230914-094321";

struct World {
    ns: TestNamespace,
    tenant: FakeTenant,
    node: String,
    _dir: tempfile::TempDir,
    layout: Layout,
    log: PathBuf,
}

impl World {
    async fn start(payload_bytes: u64) -> Self {
        let ns = TestNamespace::create().await.unwrap();
        test_kit::install_operator_crds(&ns.client).await.unwrap();
        let config = TenantConfig {
            archive_payload_bytes: payload_bytes,
            ..TenantConfig::default()
        };
        let tenant = FakeTenant::start(config, Listen::Http).await.unwrap();
        let node = ns.create_node("csi", &[], Vec::new()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().join("data"));
        let log = dir.path().join("provisioner.log");
        Self {
            node: node.metadata.name.unwrap(),
            ns,
            tenant,
            _dir: dir,
            layout,
            log,
        }
    }

    /// Starts the provisioner binary (`BENCH_PROVISIONER` or this build's), logging to `self.log`;
    /// returns it and the port of its probes and metrics.
    fn spawn(&self) -> (Child, u16) {
        let binary = std::env::var("BENCH_PROVISIONER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_dynatrace-operator").to_owned());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let port = test_kit::cluster::free_port().unwrap();
        let child = Command::new(binary)
            .args(["csi-provisioner", "--node-id", &self.node, "--data-dir"])
            .arg(self.layout.root())
            .args([
                "--health-probe-bind-address",
                &format!("127.0.0.1:{port}"),
                "--gc-interval",
                "1h",
            ])
            .env("POD_NAMESPACE", &self.ns.name)
            .env("KUBECONFIG", self.ns.kubeconfig())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        (child, port)
    }

    async fn dynakube(&self) {
        let client = &self.ns.client;
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "dk" },
            "stringData": { "apiToken": "dt0c01.test" },
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &self.ns.name)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let dynakube: DynaKube = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": "dk" },
            "spec": { "apiUrl": self.tenant.api_url(),
                      "oneAgent": { "applicationMonitoring": { "useCSIDriver": true } } },
        }))
        .unwrap();
        let api: Api<DynaKube> = Api::namespaced(client.clone(), &self.ns.name);
        api.create(&PostParams::default(), &dynakube).await.unwrap();
        let status = json!({ "status": {
            "codeModules": { "version": VERSION },
            "oneAgent": { "connectionInfoStatus": { "tenantUUID": "abc12345" } },
        } });
        api.patch_status("dk", &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }

    fn record(&self) -> Option<DynakubeRecord> {
        io_csi_driver::records::read(&self.layout.dynakube_record("dk").unwrap()).unwrap()
    }

    async fn provisioned(&self, timeout: Duration) {
        eventually("the version provisioned", timeout, || async {
            Ok(self
                .record()
                .filter(|r| r.version.as_deref() == Some(VERSION) && r.config.is_some()))
        })
        .await
        .map_err(|e| format!("{e:#}\n{}", test_kit::process::log_tail(&self.log, 30)))
        .unwrap();
    }
}

/// Bytes of the regular files below `dir`.
fn bytes_below(dir: &Path) -> u64 {
    io_csi_driver::gc::size(dir)
}

fn kill9(child: &mut Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_provisioner_killed_during_an_unpack_leaves_no_half_version_and_completes_after_restart() {
    let world = World::start(200 << 20).await;
    let (mut child, _) = world.spawn();
    world.dynakube().await;
    // Killed once the unpack has written a good part of the payload into staging.
    eventually("the unpack under way", Duration::from_secs(120), || async {
        Ok((bytes_below(&world.layout.staging()) > 20 << 20).then_some(()))
    })
    .await
    .unwrap();
    kill9(&mut child);
    assert!(
        !world.layout.codemodule(VERSION).unwrap().exists(),
        "a half version looks installed"
    );
    let record = world.record().unwrap();
    assert_eq!((record.version, record.config), (None, None));
    assert!(bytes_below(&world.layout.staging()) > 0, "the kill came too late");

    let (mut child, port) = world.spawn();
    world.provisioned(Duration::from_secs(180)).await;
    let version = world.layout.codemodule(VERSION).unwrap();
    assert_eq!(
        std::fs::metadata(version.join("agent/lib64/liboneagentproc.so"))
            .unwrap()
            .len(),
        200 << 20
    );
    // The crash's staging is gone (removed by the GC run at start).
    eventually("staging emptied", Duration::from_secs(30), || async {
        Ok((std::fs::read_dir(world.layout.staging())?.count() == 0).then_some(()))
    })
    .await
    .unwrap();
    let metrics = test_kit::http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("dynatrace_csi_driver_gc_runs_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dynatrace_csi_driver_gc_folders_removed_total 1"),
        "{metrics}"
    );
    assert!(test_kit::http_get(port, "/readyz").await.unwrap().ends_with("ok"));
    kill9(&mut child);
}

// Several threads: the fake tenant serves from this runtime while the test waits for curl and unzip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --release --ignored --nocapture"]
async fn bench_unpacking_a_large_archive() {
    let archive_mib: u64 = std::env::var("BENCH_ARCHIVE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let world = World::start(archive_mib << 20).await;

    // The same archive as a file, for unzip (this also makes the fake tenant generate and cache it, so
    // neither measurement includes that).
    let url = format!(
        "{}/v1/deployment/installer/agent/unix/paas/version/{VERSION}?arch=x86&flavor=default&skipMetadata=true",
        world.tenant.api_url()
    );
    let file = world.layout.root().parent().unwrap().join("agent.zip");
    let status = Command::new("curl")
        .args(["-sSf", "-H", "Authorization: Api-Token dt0c01.test", "-o"])
        .arg(&file)
        .arg(&url)
        .status()
        .unwrap();
    assert!(status.success(), "curl {url}");
    let archive_bytes = std::fs::metadata(&file).unwrap().len();
    let unzip_dir = world.layout.root().parent().unwrap().join("unzip");
    let started = Instant::now();
    let status = Command::new("unzip")
        .args(["-q", "-o"])
        .arg(&file)
        .arg("-d")
        .arg(&unzip_dir)
        .status()
        .unwrap();
    let unzip_secs = started.elapsed().as_secs_f64();
    assert!(status.success());
    std::fs::remove_dir_all(&unzip_dir).unwrap();

    let (mut child, _) = world.spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = status_kib(child.id(), "VmRSS:").unwrap();
    let started = Instant::now();
    world.dynakube().await;
    world.provisioned(Duration::from_secs(1800)).await;
    let provisioner_secs = started.elapsed().as_secs_f64();
    let peak = status_kib(child.id(), "VmHWM:").unwrap();
    kill9(&mut child);

    let mib_s = |secs: f64| archive_bytes as f64 / (1 << 20) as f64 / secs;
    println!(
        "csi-provisioner, {:.0} MiB archive:",
        archive_bytes as f64 / (1 << 20) as f64
    );
    println!("  provisioner RSS idle           {:>8.1} MiB", mib(idle_rss));
    println!(
        "  provisioner peak RSS (VmHWM)   {:>8.1} MiB   (goal < 64)",
        mib(peak)
    );
    println!(
        "  provisioner (download+unpack)  {:>8.2} s  {:>7.1} MiB/s",
        provisioner_secs,
        mib_s(provisioner_secs)
    );
    println!(
        "  unzip (local file)             {:>8.2} s  {:>7.1} MiB/s",
        unzip_secs,
        mib_s(unzip_secs)
    );
    println!(
        "  throughput vs unzip            {:>8.0} %   (goal >= 90)",
        100.0 * unzip_secs / provisioner_secs
    );
}
