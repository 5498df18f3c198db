//! `dynatrace-operator init` run as a process, as the pod runs it, against the fake tenant, into temporary
//! directories (`--root`): both modes, both failure policies, the tenant's faults, hostile archives,
//! `INSTALLER_URL`, environment and configuration errors, and the memory of a large streamed install.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pure_desired::mapping::InitConfig;
use test_fake_tenant::{Endpoint, FakeTenant, Fault, HostileArchive, Listen, TenantConfig};

const VERSION: &str = "1.277.0.20230914-094321";
const TENANT: &str = "abc12345";
const NODE: &str = "node-1";

/// The agent library built from `tools/images/liboneagentproc.c`.
fn agent_library() -> PathBuf {
    let cache = test_kit::tools::cache_root().unwrap().join("images");
    test_images::agent_library(&cache).unwrap()
}

async fn tenant_with(config: TenantConfig) -> FakeTenant {
    FakeTenant::start(config, Listen::Http).await.unwrap()
}

async fn tenant() -> FakeTenant {
    tenant_with(TenantConfig {
        agent_library: Some(agent_library()),
        ..TenantConfig::default()
    })
    .await
}

/// A pod's file system below a temporary directory.
struct Pod {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
    /// `--download-timeout` in seconds.
    timeout: u64,
}

impl Pod {
    /// An injected pod (OneAgent and enrichment) in `mode`, with the init configuration for `tenant`.
    fn new(api_url: &str, mode: &str, policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env: BTreeMap<String, String> = [
            ("FAILURE_POLICY", policy),
            ("ONEAGENT_INJECTED", "true"),
            ("DATA_INGEST_INJECTED", "true"),
            ("K8S_PODNAME", "app-7d9f-x1"),
            ("K8S_PODUID", "uid-1"),
            ("K8S_NAMESPACE", "apps"),
            ("K8S_CLUSTER_ID", "cluster-1"),
            ("K8S_NODE_NAME", NODE),
            ("K8S_BASEPODNAME", "app-7d9f"),
            ("MODE", mode),
            ("TECHNOLOGIES", "all"),
            ("INSTALLPATH", "/opt/dynatrace/oneagent-paas"),
            ("CONTAINERS_COUNT", "2"),
            ("CONTAINER_1_NAME", "app"),
            ("CONTAINER_1_IMAGE", "registry/app:1"),
            ("CONTAINER_2_NAME", "sidecar"),
            ("CONTAINER_2_IMAGE", "registry/sidecar:2"),
            ("DT_WORKLOAD_KIND", "Deployment"),
            ("DT_WORKLOAD_NAME", "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod = Self { dir, env, timeout: 2 };
        pod.write_config(&InitConfig {
            api_url: api_url.to_owned(),
            api_token: "dt0c01.test".into(),
            paas_token: "dt0c01.test".into(),
            tenant_uuid: TENANT.into(),
            has_host: true,
            monitoring_nodes: BTreeMap::from([(NODE.to_owned(), TENANT.to_owned())]),
            tls_cert: "-----BEGIN CERTIFICATE-----\nAG\n-----END CERTIFICATE-----\n".into(),
            host_group: "prod".into(),
            cluster_id: "cluster-1".into(),
            initial_connect_retry: 6000,
            ..InitConfig::default()
        });
        pod
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }

    fn write_config(&self, config: &InitConfig) {
        let path = self.path("mnt/config/config");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(config).unwrap()).unwrap();
    }

    fn config(&self) -> InitConfig {
        serde_json::from_slice(&std::fs::read(self.path("mnt/config/config")).unwrap()).unwrap()
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_owned(), value.to_owned());
    }

    fn unset(&mut self, name: &str) {
        self.env.remove(name);
    }

    /// Runs `init`; returns whether it exited 0 and its log lines (JSON).
    async fn run(&self) -> (Option<i32>, Vec<serde_json::Value>, String) {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
            .arg("init")
            .arg("--root")
            .arg(self.root())
            .args(["--download-timeout", &self.timeout.to_string(), "--attempts", "2"])
            .env_clear()
            .envs(&self.env)
            .env("RUST_LOG", "info")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        (output.status.code(), lines, text)
    }

    /// Whether the code module volume holds nothing but what was there before (no tree, no staging).
    fn bin_is_empty(&self) -> bool {
        match std::fs::read_dir(self.path("mnt/bin")) {
            Err(_) => true,
            Ok(dir) => dir.count() == 0,
        }
    }

    /// Every path below the root, relative.
    fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if entry.file_type().unwrap().is_dir() {
                    walk(&path, root, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root(), self.root(), &mut out);
        out.sort();
        out
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn message(lines: &[serde_json::Value], level: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["level"] == level)
        .map(|l| l["fields"]["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installer_mode_installs_the_real_agent_and_writes_every_file() {
    let tenant = tenant().await;
    let pod = Pod::new(&tenant.api_url(), "installer", "fail");
    let (code, lines, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(message(&lines, "ERROR").is_empty(), "{text}");

    // The code module: the real library, the version link, the merged configuration.
    let library = pod.path("mnt/bin/agent/lib64/liboneagentproc.so");
    assert_eq!(
        std::fs::read(&library).unwrap(),
        std::fs::read(agent_library()).unwrap()
    );
    assert_eq!(
        std::fs::read_link(pod.path("mnt/bin/agent/bin/current")).unwrap(),
        PathBuf::from(VERSION)
    );
    let conf = read(&pod.path("mnt/bin/agent/conf/ruxitagentproc.conf"));
    assert!(conf.contains("storage /var/lib/dynatrace/oneagent\n"), "{conf}");
    assert!(
        conf.contains("hostGroup prod\n"),
        "the host group applies without CSI: {conf}"
    );
    assert!(
        !conf.contains("hostGroup fake"),
        "ours wins over the tenant's: {conf}"
    );
    assert_eq!(
        read(&pod.path("mnt/bin/agent/conf/_ruxitagentproc.conf")),
        format!("[general]\nversion {VERSION}\n"),
        "the original is kept"
    );
    assert_eq!(
        mode_of(&pod.path("mnt/bin/agent/conf/ruxitagentproc.conf")),
        0o666
    );
    assert_eq!(
        mode_of(&pod.path(&format!("mnt/bin/agent/bin/{VERSION}/oneagentutil"))),
        0o755
    );
    assert!(
        !pod.tree().iter().any(|p| p.contains(".install-")),
        "no staging left: {:?}",
        pod.tree()
    );

    // The per-pod files, read-only.
    assert_eq!(
        read(&pod.path("mnt/share/ld.so.preload")),
        "/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so\n"
    );
    let app = read(&pod.path("mnt/share/container_app.conf"));
    assert!(
        app.starts_with("[container]\ncontainerName app\nimageName registry/app:1\n"),
        "{app}"
    );
    assert!(
        app.ends_with(&format!(
            "k8s_node_name {NODE}\n[host]\ntenant {TENANT}\nisCloudNativeFullStack true\n"
        )),
        "{app}"
    );
    assert!(read(&pod.path("mnt/share/container_sidecar.conf")).contains("imageName registry/sidecar:2\n"));
    assert!(read(&pod.path("mnt/share/custom.pem")).contains("AG"));
    assert_eq!(
        read(&pod.path("mnt/share/curl_options.conf")),
        "initialConnectRetryMs 6000\n"
    );
    let properties = read(&pod.path("var/lib/dynatrace/enrichment/dt_metadata.properties"));
    assert!(
        properties.contains("dt.kubernetes.workload.kind=Deployment\n"),
        "{properties}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&read(&pod.path("var/lib/dynatrace/enrichment/dt_metadata.json"))).unwrap();
    assert_eq!(json["k8s.pod.uid"], "uid-1");
    for file in [
        "mnt/share/ld.so.preload",
        "mnt/share/container_app.conf",
        "var/lib/dynatrace/enrichment/dt_metadata.json",
    ] {
        assert_eq!(mode_of(&pod.path(file)), 0o444, "{file}");
    }

    // The library really loads and leaves its evidence.
    let evidence = pod.path("evidence");
    let status = std::process::Command::new("/bin/true")
        .env("LD_PRELOAD", &library)
        .env("DT_AGENT_EVIDENCE", &evidence)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        read(&evidence).starts_with("liboneagentproc loaded pid="),
        "{}",
        read(&evidence)
    );

    // A restarted init container (same volumes) does it again.
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(read(&pod.path("mnt/bin/agent/conf/ruxitagentproc.conf")).contains("hostGroup prod\n"));
    let downloads = tenant
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::Download);
    assert!(
        downloads.clone().all(|r| r.path.ends_with("/latest")),
        "no VERSION: the latest"
    );
    assert_eq!(downloads.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_is_downloaded_by_version() {
    let tenant = tenant().await;
    let mut pod = Pod::new(&tenant.api_url(), "installer", "fail");
    pod.set("VERSION", "1.276.0.20230901-120000");
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        std::fs::read_link(pod.path("mnt/bin/agent/bin/current")).unwrap(),
        PathBuf::from("1.276.0.20230901-120000")
    );
    pod.set("VERSION", "9.9.9.20990101-000000");
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("9.9.9.20990101-000000"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_mode_downloads_nothing_and_copies_a_read_only_volume_conf() {
    let tenant = tenant().await;
    let mut pod = Pod::new(&tenant.api_url(), "provisioned", "fail");
    pod.set("CSI_VOLUME_READONLY", "true");
    // What the CSI driver mounted.
    std::fs::create_dir_all(pod.path("mnt/bin/agent/conf")).unwrap();
    std::fs::write(pod.path("mnt/bin/agent/conf/ruxitagentproc.conf"), "[general]\n").unwrap();
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(tenant.request_count(Endpoint::Download), 0);
    assert_eq!(
        read(&pod.path("mnt/agent-conf/ruxitagentproc.conf")),
        "[general]\n"
    );
    assert!(pod.path("mnt/share/container_app.conf").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_from_monitoring_nodes_still_gets_its_container_config() {
    let tenant = tenant().await;
    let pod = Pod::new(&tenant.api_url(), "provisioned", "fail");
    let mut config = pod.config();
    config.monitoring_nodes.clear();
    pod.write_config(&config);
    let (code, lines, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    let app = read(&pod.path("mnt/share/container_app.conf"));
    assert!(
        app.contains("containerName app\n") && !app.contains("[host]"),
        "{app}"
    );
    let warnings = message(&lines, "WARN");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(NODE) && w.contains("monitoringNodes")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_configuration_errors_follow_the_failure_policy() {
    let tenant = tenant().await;
    for (policy, expected) in [("silent", 0), ("fail", 1)] {
        let mut pod = Pod::new(&tenant.api_url(), "installer", policy);
        pod.unset("K8S_PODUID");
        pod.unset("CONTAINER_2_IMAGE");
        let (code, lines, text) = pod.run().await;
        assert_eq!(code, Some(expected), "{policy}: {text}");
        let errors = message(&lines, "ERROR");
        assert_eq!(errors.len(), 1, "one clear error: {text}");
        assert!(
            errors[0].contains("K8S_PODUID, CONTAINER_2_IMAGE"),
            "{}",
            errors[0]
        );
        assert!(pod.bin_is_empty());

        let pod = Pod::new(&tenant.api_url(), "installer", policy);
        std::fs::write(pod.path("mnt/config/config"), "{not json").unwrap();
        let (code, lines, text) = pod.run().await;
        assert_eq!(code, Some(expected), "{policy}: {text}");
        assert!(
            message(&lines, "ERROR")[0].contains("mnt/config/config"),
            "{text}"
        );
    }
    // No FAILURE_POLICY at all: silent.
    let mut pod = Pod::new(&tenant.api_url(), "installer", "silent");
    pod.unset("FAILURE_POLICY");
    pod.unset("MODE");
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(tenant.request_count(Endpoint::Download), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_faults_leave_no_partial_tree() {
    let tenant = tenant().await;
    let faults = [
        ("5xx", Fault::Unavailable),
        ("timeout", Fault::Latency { millis: 5_000 }),
        ("truncated body", Fault::CutAfter { bytes: 20_000 }),
        ("corrupt body", Fault::Corrupt),
    ];
    for (name, fault) in faults {
        tenant.set_fault(Endpoint::Download, fault, None);
        for (policy, expected) in [("fail", 1), ("silent", 0)] {
            let pod = Pod::new(&tenant.api_url(), "installer", policy);
            let started = Instant::now();
            let (code, lines, text) = pod.run().await;
            assert_eq!(code, Some(expected), "{name}, {policy}: {text}");
            assert_eq!(message(&lines, "ERROR").len(), 1, "{name}: {text}");
            assert!(pod.bin_is_empty(), "{name}: {:?}", pod.tree());
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} took {:?}",
                started.elapsed()
            );
        }
        tenant.clear_faults();
    }
    // A single 503 is retried.
    tenant.set_fault(Endpoint::Download, Fault::Unavailable, Some(1));
    let pod = Pod::new(&tenant.api_url(), "installer", "fail");
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(pod.path("mnt/bin/agent/lib64/liboneagentproc.so").is_file());
    // The process-module configuration failing fails the install too.
    tenant.set_fault(Endpoint::ProcessModuleConfig, Fault::Unauthorized, None);
    let pod = Pod::new(&tenant.api_url(), "installer", "fail");
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("process-module configuration"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_rejected_naming_the_entry() {
    let tenant = tenant().await;
    let outside = tempfile::tempdir().unwrap();
    for kind in HostileArchive::ALL {
        tenant.set_fault(Endpoint::Download, Fault::Hostile { archive: kind }, None);
        for (policy, expected) in [("fail", 1), ("silent", 0)] {
            // The pod's root two levels below `outside`, so that `../../x` would land in it.
            let mut pod = Pod::new(&tenant.api_url(), "installer", policy);
            pod.dir = tempfile::tempdir_in(outside.path()).unwrap();
            let config = InitConfig {
                api_url: tenant.api_url(),
                api_token: "dt0c01.test".into(),
                ..InitConfig::default()
            };
            pod.write_config(&config);
            let (code, lines, text) = pod.run().await;
            assert_eq!(code, Some(expected), "{kind:?}, {policy}: {text}");
            let errors = message(&lines, "ERROR");
            assert_eq!(errors.len(), 1, "{kind:?}: {text}");
            assert!(
                errors[0].contains(&format!("{:?}", kind.bad_entry())),
                "{kind:?}: {}",
                errors[0]
            );
            assert!(pod.bin_is_empty(), "{kind:?}: no partial tree: {:?}", pod.tree());
            let beside: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
            assert_eq!(beside.len(), 1, "{kind:?}: nothing next to the pod's root");
            assert!(!Path::new(HostileArchive::ABSOLUTE_PATH).exists(), "{kind:?}");
        }
    }
}

/// A zip like the environment's: a version directory with an executable, the configuration, the library
/// and a relative symlink, deflated, written as a stream (CRC and sizes in data descriptors after the
/// data, as streaming writers such as Java's produce).
fn small_agent_zip() -> Vec<u8> {
    use std::io::Write as _;
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new_stream(Vec::new());
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.add_directory(format!("agent/bin/{VERSION}/"), options)
        .unwrap();
    zip.start_file(
        format!("agent/bin/{VERSION}/oneagentutil"),
        options.unix_permissions(0o755),
    )
    .unwrap();
    zip.write_all(b"#!/bin/sh\n").unwrap();
    zip.start_file("agent/conf/ruxitagentproc.conf", options).unwrap();
    zip.write_all(b"[general]\nstorage x\n").unwrap();
    zip.start_file("agent/lib64/liboneagentproc.so", options).unwrap();
    zip.write_all(&std::fs::read(agent_library()).unwrap()).unwrap();
    zip.add_symlink(
        "agent/lib/liboneagentproc.so",
        "../lib64/liboneagentproc.so",
        options,
    )
    .unwrap();
    zip.finish().unwrap().into_inner()
}

/// Serves `body` to every GET on a local port; reports the requests' Authorization headers.
async fn serve_plain(body: Vec<u8>) -> (String, tokio::sync::mpsc::UnboundedReceiver<Option<String>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/agent.zip", listener.local_addr().unwrap());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&request).to_lowercase();
            let auth = text
                .lines()
                .find_map(|l| l.strip_prefix("authorization:").map(|v| v.trim().to_owned()));
            let _ = sender.send(auth);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&body).await.unwrap();
            socket.shutdown().await.unwrap();
        }
    });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installer_url_is_a_plain_get_without_the_token() {
    let tenant = tenant().await;
    let (url, mut requests) = serve_plain(small_agent_zip()).await;
    let mut pod = Pod::new(&tenant.api_url(), "installer", "fail");
    pod.set("INSTALLER_URL", &url);
    let (code, _, text) = pod.run().await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(requests.recv().await.unwrap(), None, "no Authorization header");
    assert_eq!(tenant.request_count(Endpoint::Download), 0);
    assert_eq!(
        std::fs::read_link(pod.path("mnt/bin/agent/lib/liboneagentproc.so")).unwrap(),
        PathBuf::from("../lib64/liboneagentproc.so"),
        "symlinks from the central directory"
    );
    assert_eq!(
        mode_of(&pod.path(&format!("mnt/bin/agent/bin/{VERSION}/oneagentutil"))),
        0o755
    );
    assert!(read(&pod.path("mnt/bin/agent/conf/ruxitagentproc.conf")).contains("hostGroup prod\n"));
}

/// Peak RSS of `init` while it streams a large archive: flat, whatever the size. The size is
/// `INIT_BENCH_MB` (default 500); the numbers are in the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_archive_unpacks_in_flat_memory() {
    let megabytes: u64 = std::env::var("INIT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut results = Vec::new();
    for size in [1, megabytes] {
        let tenant = tenant_with(TenantConfig {
            archive_payload_bytes: size << 20,
            ..TenantConfig::default()
        })
        .await;
        // Generate the archive before timing the install (the tenant answers once it is written).
        let mut pod = Pod::new(&tenant.api_url(), "installer", "fail");
        pod.timeout = 300;
        let (code, _, text) = pod.run().await;
        assert_eq!(code, Some(0), "{text}");
        // Disk: the archive in the tenant's cache plus one unpacked copy at a time.
        std::fs::remove_dir_all(pod.path("mnt/bin")).unwrap();
        let started = Instant::now();
        let (code, lines, text) = pod.run().await;
        let elapsed = started.elapsed();
        assert_eq!(code, Some(0), "{text}");
        let finished = lines
            .iter()
            .find(|l| l["fields"]["message"] == "init finished")
            .unwrap();
        let rss = finished["fields"]["peak_rss_kib"].as_u64().unwrap();
        let installed = std::fs::metadata(pod.path("mnt/bin/agent/lib64/liboneagentproc.so"))
            .unwrap()
            .len();
        assert_eq!(installed, size << 20);
        eprintln!(
            "init: {size} MiB archive in {:.1} s, peak RSS {:.1} MiB",
            elapsed.as_secs_f64(),
            rss as f64 / 1024.0
        );
        results.push(rss);
        tenant.shutdown().await;
    }
    assert!(
        results[1] < results[0] + 16 * 1024,
        "peak RSS grows with the archive: {results:?} KiB"
    );
}
