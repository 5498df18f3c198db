//! The real `dynatrace-operator csi-provisioner` process against the real API server and the fake tenant:
//! killed with SIGKILL in the middle of an unpack and restarted; its garbage collection killed in the
//! middle of deleting a version, a configuration layer and an app volume's directory (at a crash point, and
//! at a random point of a large deletion), then restarted; and (ignored, by hand) the benchmark of unpacking
//! a 1 GiB agent archive: peak RSS and throughput against `unzip` on the same file.
//!
//! ```text
//! cargo test --release -p dynatrace-operator --test csi_provisioner -- --ignored --nocapture
//! ```
//!
//! `BENCH_ARCHIVE_MIB` (default 1024) sets the archive's size; `BENCH_IMAGE_MIB` (default 1024) the data
//! in the code-modules image of the image benchmark (`codeModulesImage`, over HTTPS from the fake
//! tenant's registry, against `tar -xzf` of the same layer). `BENCH_MEMORY_LIMIT_MIB` (for example 100,
//! the chart's limit for the provisioner container) runs the provisioner in a memory cgroup with that
//! limit, page cache included, and fails the benchmark if the kernel OOM-kills it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use pure_api::dynakube::DynaKube;
use pure_csi::layout::{DynakubeRecord, Layout};
use serde_json::json;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::cgroup::MemoryCgroup;
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
        Self::start_on(payload_bytes, Listen::Http).await
    }

    async fn start_on(payload_bytes: u64, listen: Listen) -> Self {
        let ns = TestNamespace::create().await.unwrap();
        test_kit::install_operator_crds(&ns.client).await.unwrap();
        let config = TenantConfig {
            archive_payload_bytes: payload_bytes,
            ..TenantConfig::default()
        };
        let tenant = FakeTenant::start(config, listen).await.unwrap();
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
        self.spawn_with(&[])
    }

    /// [`Self::spawn`] with more environment variables.
    fn spawn_with(&self, env: &[(&str, &str)]) -> (Child, u16) {
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
            .envs(env.iter().copied())
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
        match Api::<Secret>::namespaced(client.clone(), &self.ns.name)
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => panic!("cannot create the token Secret: {error}"),
        }
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

/// Every regular file at or below `dir` (relative path → size): a tree's fingerprint. Empty when `dir`
/// does not exist.
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, u64>) {
        let Ok(read) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in read.map(Result::unwrap) {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(path.strip_prefix(base).unwrap().to_owned(), meta.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Whether `dir` is either gone or still exactly `expected` (never a half-deleted tree under its name).
fn absent_or_intact(dir: &Path, expected: &BTreeMap<PathBuf, u64>) -> Result<(), String> {
    if !dir.exists() {
        return Ok(());
    }
    let now = tree(dir);
    if &now == expected {
        return Ok(());
    }
    Err(format!(
        "{} is half deleted under its own name: {} of {} files left",
        dir.display(),
        now.len(),
        expected.len()
    ))
}

/// Entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|read| {
            read.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One value of the Prometheus text `metrics`.
fn metric(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// The provisioner's GC killed with SIGKILL (crash point `gc-remove-<reason>`) after it deleted the first
/// entry of a directory whose removal it planned: an unused code-module version, an unused configuration
/// layer, or an unmounted app volume's directory. Each of the three is then either gone or untouched (a
/// half-deleted one would look installed: the provisioner reuses a version or layer it finds under its
/// name). Restarted, the next GC run leaves nothing behind and counts what it removed; wanted again, the
/// version is downloaded again and complete.
async fn gc_killed_while_removing(reason: &str, removed_after_restart: u64) {
    let world = World::start(2 << 20).await;
    let (mut child, _) = world.spawn();
    world.dynakube().await;
    world.provisioned(Duration::from_secs(120)).await;
    kill9(&mut child);

    // The DynaKube goes (and its record, as the sweep would remove it): version and layer are unwanted.
    let config = world.record().unwrap().config.unwrap();
    let version_dir = world.layout.codemodule(VERSION).unwrap();
    let layer_dir = world.layout.dynakube_config("dk", &config).unwrap();
    Api::<DynaKube>::namespaced(world.ns.client.clone(), &world.ns.name)
        .delete("dk", &DeleteParams::default())
        .await
        .unwrap();
    std::fs::remove_file(world.layout.dynakube_record("dk").unwrap()).unwrap();
    // An app volume's directory as publish and unpublish leave it: record, upper dir with a pod's
    // writes, work and mount-point dirs, nothing mounted.
    let volume_dir = world.layout.app_mounts().join("csi-0123456789abcdef");
    for sub in ["mapped", "work/work", "var/agent/log"] {
        std::fs::create_dir_all(volume_dir.join(sub)).unwrap();
    }
    std::fs::write(volume_dir.join("volume.json"), r#"{"dynakube":"dk"}"#).unwrap();
    std::fs::write(volume_dir.join("var/agent/log/agent.log"), vec![b'x'; 4096]).unwrap();

    let before = [
        (version_dir.clone(), tree(&version_dir)),
        (layer_dir.clone(), tree(&layer_dir)),
        (volume_dir.clone(), tree(&volume_dir)),
    ];
    for (dir, files) in &before {
        assert!(!files.is_empty(), "{} is empty", dir.display());
    }

    let crash_at = format!("gc-remove-{reason}");
    let gc_env = [("MAX_UNMOUNTED_VOLUME_AGE", "0")];
    let (mut child, _) = world.spawn_with(&[gc_env[0], ("DTO_CSI_CRASH_AT", &crash_at)]);
    let status = eventually("the GC's crash", Duration::from_secs(60), || {
        let status = child.try_wait();
        async move { Ok(status?) }
    })
    .await
    .map_err(|e| {
        format!(
            "{e:#}
{}",
            test_kit::process::log_tail(&world.log, 30)
        )
    })
    .unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let problems: Vec<String> = before
        .iter()
        .filter_map(|(dir, files)| absent_or_intact(dir, files).err())
        .collect();
    assert!(problems.is_empty(), "after the kill: {problems:#?}");
    // The killed deletion did happen (in part): some file of the planned directories is gone.
    let left: usize = before.iter().map(|(dir, _)| tree(dir).len()).sum();
    let all: usize = before.iter().map(|(_, files)| files.len()).sum();
    assert!(left < all, "the crash point was not reached after a deletion");

    // Restarted: the first GC run removes the rest, the crash's leftover included, and counts it.
    let leftover_bytes = bytes_below(world.layout.root());
    let (mut child, port) = world.spawn_with(&gc_env);
    let metrics = eventually(
        "the GC run after the restart",
        Duration::from_secs(60),
        || async {
            let metrics = test_kit::http_get(port, "/metrics").await.unwrap_or_default();
            Ok((metric(&metrics, "dynatrace_csi_driver_gc_folders_removed_total")
                == Some(removed_after_restart))
            .then_some(metrics))
        },
    )
    .await
    .map_err(|e| {
        format!(
            "{e:#}
{}",
            test_kit::process::log_tail(&world.log, 30)
        )
    })
    .unwrap();
    assert_eq!(
        metric(&metrics, "dynatrace_csi_driver_gc_runs_total"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "dynatrace_csi_driver_gc_reclaimed_bytes_total"),
        Some(leftover_bytes),
        "{metrics}"
    );
    for dir in [
        world.layout.codemodules(),
        world.layout.staging(),
        world.layout.dynakubes(),
        world.layout.app_mounts(),
    ] {
        assert_eq!(entries(&dir), Vec::<String>::new(), "left in {}", dir.display());
    }

    // Wanted again: downloaded again, complete.
    world.dynakube().await;
    world.provisioned(Duration::from_secs(120)).await;
    assert_eq!(tree(&version_dir), before[0].1);
    let config = world.record().unwrap().config.unwrap();
    assert_eq!(
        tree(&world.layout.dynakube_config("dk", &config).unwrap()),
        before[1].1
    );
    kill9(&mut child);
}

#[tokio::test]
async fn a_gc_killed_while_removing_a_version_leaves_it_gone_or_whole_and_the_restart_cleans_up() {
    // After the restart: the leftover, the layer, the DynaKube's directory and the volume's.
    gc_killed_while_removing("unused_version", 4).await;
}

#[tokio::test]
async fn a_gc_killed_while_removing_a_config_layer_leaves_it_gone_or_whole_and_the_restart_cleans_up() {
    // After the restart: the leftover, the DynaKube's directory and the volume's.
    gc_killed_while_removing("unused_config_layer", 3).await;
}

#[tokio::test]
async fn a_gc_killed_while_removing_an_app_volume_leaves_it_gone_or_whole_and_the_restart_cleans_up() {
    // After the restart: the leftover.
    gc_killed_while_removing("unmounted_volume", 1).await;
}

/// The GC killed with a plain SIGKILL (no crash point) wherever it is while deleting an unused version of
/// 10,000 files, as soon as the first of its 20 subdirectories is gone: the version is whole or gone, and
/// the restart's GC removes the rest.
#[tokio::test]
async fn a_gc_killed_at_a_random_point_of_a_large_deletion_leaves_no_half_version() {
    const OLD: &str = "1.276.0.20230901-120000";
    let world = World::start(1 << 20).await;
    let version_dir = world.layout.codemodule(OLD).unwrap();
    for dir in 0..20 {
        let dir = version_dir.join(format!("agent/lib{dir:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for file in 0..500 {
            std::fs::write(dir.join(format!("f{file:04}.so")), b"0123456789").unwrap();
        }
    }
    let expected = tree(&version_dir);
    // The tree's `agent/libNN` directories, wherever under the data dir the tree is.
    let staging = world.layout.staging();
    let subdirs = || {
        let roots = std::iter::once(version_dir.clone()).chain(
            std::fs::read_dir(&staging)
                .into_iter()
                .flatten()
                .map(|e| e.unwrap().path()),
        );
        roots
            .map(|root| std::fs::read_dir(root.join("agent")).map_or(0, |read| read.count()))
            .sum::<usize>()
    };

    let (mut child, _) = world.spawn();
    let started = Instant::now();
    while subdirs() == 20 {
        assert!(started.elapsed() < Duration::from_secs(60), "GC never started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    kill9(&mut child);
    absent_or_intact(&version_dir, &expected).unwrap();
    let left = bytes_below(world.layout.root());
    assert!(left > 0, "the kill came after the deletion");
    assert!(left < 100_000, "the kill came before the deletion");

    let (mut child, port) = world.spawn();
    let metrics = eventually(
        "the GC run after the restart",
        Duration::from_secs(60),
        || async {
            let metrics = test_kit::http_get(port, "/metrics").await.unwrap_or_default();
            Ok(
                (metric(&metrics, "dynatrace_csi_driver_gc_folders_removed_total") == Some(1))
                    .then_some(metrics),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(
        metric(&metrics, "dynatrace_csi_driver_gc_reclaimed_bytes_total"),
        Some(left),
        "{metrics}"
    );
    assert_eq!(entries(&world.layout.codemodules()), Vec::<String>::new());
    assert_eq!(entries(&world.layout.staging()), Vec::<String>::new());
    kill9(&mut child);
    eprintln!(
        "killed with {} of {} bytes left",
        left,
        expected.values().sum::<u64>()
    );
}

// Several threads: the fake tenant serves from this runtime while the test waits for curl and unzip.
/// With `BENCH_MEMORY_LIMIT_MIB`, a memory cgroup with that limit holding `child` (the provisioner).
fn memory_limit(child: &Child) -> Option<MemoryCgroup> {
    let limit_mib: u64 = std::env::var("BENCH_MEMORY_LIMIT_MIB").ok()?.parse().ok()?;
    let cgroup = MemoryCgroup::create("dynatrace-csi-provisioner-bench", limit_mib).unwrap();
    cgroup.add(child.id()).unwrap();
    Some(cgroup)
}

/// Runs `work`, failing at once if the kernel OOM-kills the provisioner in its memory cgroup.
async fn unless_oom_killed<T>(
    cgroup: Option<&MemoryCgroup>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(cgroup) = cgroup else {
        return work.await;
    };
    let killed = async {
        while cgroup.usage().unwrap().oom_kills == 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        done = work => done,
        () = killed => panic!("the provisioner was OOM-killed in its memory cgroup: {:?}", cgroup.usage()),
    }
}

/// Prints what the memory cgroup saw, if there is one, and fails on an OOM kill.
fn report_memory_limit(cgroup: Option<&MemoryCgroup>) {
    let Some(cgroup) = cgroup else {
        return;
    };
    let usage = cgroup.usage().unwrap();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "  memory cgroup: limit {:.0} MiB, peak {:.1} MiB (page cache included), limit reached {} times, \
         OOM kills {}",
        mib(usage.limit),
        mib(usage.peak),
        usage.limit_hits,
        usage.oom_kills
    );
    assert_eq!(usage.oom_kills, 0, "the provisioner was OOM-killed");
}

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
    let cgroup = memory_limit(&child);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = status_kib(child.id(), "VmRSS:").unwrap();
    let started = Instant::now();
    world.dynakube().await;
    unless_oom_killed(cgroup.as_ref(), world.provisioned(Duration::from_secs(1800))).await;
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
    report_memory_limit(cgroup.as_ref());
}

// Several threads: the fake tenant serves from this runtime while the test waits for tar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --release --ignored --nocapture"]
async fn bench_installing_a_large_code_modules_image() {
    use k8s_openapi::api::core::v1::ConfigMap;

    let data_mib: u64 = std::env::var("BENCH_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let ca = test_kit::pki::CertificateAuthority::new("fake-tenant-ca").unwrap();
    let leaf = ca
        .issue_server_cert(
            "fake-tenant",
            &["localhost"],
            &[std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        )
        .unwrap();
    let world = World::start_on(
        0,
        Listen::Https {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        },
    )
    .await;
    let images = world.layout.root().parent().unwrap().join("image");
    let built =
        test_fake_tenant::oci_layout::write_large_code_module_image(&images, "bench", VERSION, data_mib)
            .unwrap();
    world
        .tenant
        .add_image("dynatrace/codemodules:bench", &images)
        .await
        .unwrap();
    let blob = images
        .join("blobs/sha256")
        .join(built.layer_digests[0].trim_start_matches("sha256:"));
    let blob_bytes = std::fs::metadata(&blob).unwrap().len();
    let untar_dir = world.layout.root().parent().unwrap().join("untar");
    std::fs::create_dir_all(&untar_dir).unwrap();
    let started = Instant::now();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&blob)
        .arg("-C")
        .arg(&untar_dir)
        .status()
        .unwrap();
    let tar_secs = started.elapsed().as_secs_f64();
    assert!(status.success());
    let unpacked_bytes = bytes_below(&untar_dir);
    std::fs::remove_dir_all(&untar_dir).unwrap();

    let client = &world.ns.client;
    let namespace = &world.ns.name;
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "tenant-ca" }, "data": { "certs": ca.cert_pem() },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    let docker_config = json!({ "auths": { world.tenant.addr().to_string(): {
        "username": "abc12345", "password": "dt0c01.test" } } });
    for secret in [
        json!({ "metadata": { "name": "dk" }, "stringData": { "apiToken": "dt0c01.test" } }),
        json!({ "metadata": { "name": "dk-pull-secret" }, "type": "kubernetes.io/dockerconfigjson",
                "stringData": { ".dockerconfigjson": docker_config.to_string() } }),
    ] {
        let secret: Secret = serde_json::from_value(secret).unwrap();
        Api::<Secret>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    let (mut child, _) = world.spawn();
    let cgroup = memory_limit(&child);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = status_kib(child.id(), "VmRSS:").unwrap();
    let started = Instant::now();
    let dynakube: DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube", "metadata": { "name": "dk" },
        "spec": { "apiUrl": world.tenant.api_url(), "trustedCAs": "tenant-ca",
                  "oneAgent": { "applicationMonitoring": { "useCSIDriver": true } } },
    }))
    .unwrap();
    let api: Api<DynaKube> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &dynakube).await.unwrap();
    let image = format!("{}/dynatrace/codemodules:bench", world.tenant.addr());
    let status = json!({ "status": {
        "codeModules": { "source": "custom-image", "imageID": image },
        "oneAgent": { "connectionInfoStatus": { "tenantUUID": "abc12345" } },
    } });
    api.patch_status("dk", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    let id = built.manifest_digest.replace(':', "-");
    let provisioned = eventually("the image provisioned", Duration::from_secs(1800), || async {
        Ok(world
            .record()
            .filter(|r| r.version.as_deref() == Some(id.as_str()) && r.config.is_some()))
    });
    unless_oom_killed(cgroup.as_ref(), provisioned)
        .await
        .map_err(|e| format!("{e:#}\n{}", test_kit::process::log_tail(&world.log, 30)))
        .unwrap();
    let provisioner_secs = started.elapsed().as_secs_f64();
    let peak = status_kib(child.id(), "VmHWM:").unwrap();
    kill9(&mut child);

    let mib_s = |secs: f64| unpacked_bytes as f64 / (1 << 20) as f64 / secs;
    println!(
        "csi-provisioner, code-modules image: {:.0} MiB layer (gzip), {:.0} MiB unpacked:",
        blob_bytes as f64 / (1 << 20) as f64,
        unpacked_bytes as f64 / (1 << 20) as f64
    );
    println!("  provisioner RSS idle           {:>8.1} MiB", mib(idle_rss));
    println!(
        "  provisioner peak RSS (VmHWM)   {:>8.1} MiB   (goal < 64)",
        mib(peak)
    );
    println!(
        "  provisioner (pull+unpack)      {:>8.2} s  {:>7.1} MiB/s unpacked",
        provisioner_secs,
        mib_s(provisioner_secs)
    );
    println!(
        "  tar -xzf (local file)          {:>8.2} s  {:>7.1} MiB/s unpacked",
        tar_secs,
        mib_s(tar_secs)
    );
    println!(
        "  throughput vs tar              {:>8.0} %",
        100.0 * tar_secs / provisioner_secs
    );
    report_memory_limit(cgroup.as_ref());
}
