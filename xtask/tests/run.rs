//! `cargo xtask run --exit-when-ready` end to end, on a cluster of its own: OneAgent pods on the kwok nodes,
//! exit 0, and no process left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable set on xtask only; every process it starts inherits it.
const MARKER_VAR: &str = "XTASK_RUN_TEST_MARKER";

/// The directory of the workspace's binaries: this test runs as `target/debug/deps/run-<hash>`.
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// Pids of the processes whose environment holds `MARKER_VAR=marker`.
fn marked_processes(marker: &str) -> Vec<(u32, String)> {
    let needle = format!("{MARKER_VAR}={marker}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// The version the run publishes on the fake tenant once the pods run.
const NEW_VERSION: &str = "1.278.0.20231001-000000";

#[test]
fn run_puts_oneagent_pods_on_the_kwok_nodes_and_leaves_nothing_running() {
    let binaries = binaries_dir();
    for name in ["dynatrace-operator", "fake-tenant"] {
        assert!(
            binaries.join(name).is_file(),
            "{} is missing. This test runs the built binaries and cannot build them itself (a running \
             `cargo test` holds cargo's build lock): `cargo test --workspace` builds them, or run `cargo build \
             -p dynatrace-operator -p test-fake-tenant` before `cargo test -p xtask`.",
            binaries.join(name).display()
        );
    }
    if let Err(err) = test_kit::Tools::locate() {
        panic!("{err:#}");
    }

    let name = format!("xtask-run-test-{}", std::process::id());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let marker = format!("{name}-{nanos}");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("run")
        .arg("--exit-when-ready")
        .arg("--binaries")
        .arg(&binaries)
        .args(["--name", &name])
        .args(["--update-to", NEW_VERSION])
        .env(MARKER_VAR, &marker)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let root = test_kit::tools::workspace_root();
    let _ = std::fs::remove_dir_all(root.join("target/local-run-logs").join(&name));
    assert!(
        output.status.success(),
        "xtask run failed ({}) after {elapsed:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    let nodes: BTreeSet<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("dynakube-oneagent-"))
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(columns.get(2), Some(&"Running"), "{line}");
            columns[1]
        })
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["kwok-node-0", "kwok-node-1", "kwok-node-2"]),
        "{stdout}"
    );
    assert!(stdout.contains("phase Running"), "{stdout}");
    // The sample application's pod, injected by the webhook: init container, volumes, LD_PRELOAD.
    assert!(
        stdout.contains("Sample application sample-apps/sample-app-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("init container   dynatrace-operator (dynatrace-operator:0.1.0-dev init)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("oneagent-bin (emptyDir)") && stdout.contains("injection-config (secret)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("LD_PRELOAD=/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so"),
        "{stdout}"
    );
    // The update: every pod listed after the rollout runs the new version, on the same three nodes.
    let (_, after) = stdout
        .split_once(&format!("Published OneAgent {NEW_VERSION}"))
        .unwrap_or_else(|| panic!("no update in the output:\n{stdout}"));
    assert!(
        after.contains(&format!("all 3 nodes run {NEW_VERSION}")),
        "{after}"
    );
    let updated: BTreeSet<&str> = after
        .lines()
        .filter(|line| line.starts_with("dynakube-oneagent-"))
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(columns.get(3), Some(&NEW_VERSION), "{line}");
            columns[1]
        })
        .collect();
    assert_eq!(updated, nodes, "{after}");
    assert!(
        stdout.contains(&format!("target/local-clusters/{name}/logs")),
        "{stdout}"
    );

    // Killed children are reaped by init a moment after xtask exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = marked_processes(&marker);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = marked_processes(&marker);
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
    let cluster_dir = root.join("target/local-clusters").join(&name);
    assert!(!cluster_dir.exists(), "{} was not removed", cluster_dir.display());
    eprintln!("xtask run --exit-when-ready took {elapsed:?}");
}

/// `cargo xtask run --real-node --exit-when-ready --update-to <newer fake OneAgent>`: the chart installed
/// with `helm install` (operator, both webhook replicas, CSI driver Ready on the real node), the
/// cloudNativeFullStack OneAgent pod Ready on the real node with what the fake OneAgent printed, the sample
/// application in the namespace it maps with its code module from the CSI driver's cache, then the update,
/// `helm uninstall` leaving nothing of the release but the CRDs, and nothing left behind.
#[test]
fn run_on_the_real_node_shows_the_oneagent_it_started_and_updates_it() {
    if let Some(reason) = test_kit::real_node::unsupported_reason() {
        assert!(
            std::env::var(test_kit::REQUIRE_REAL_NODE_ENV).as_deref() != Ok("1"),
            "{}=1 but this machine cannot run the real node: {reason}",
            test_kit::REQUIRE_REAL_NODE_ENV
        );
        eprintln!(
            "\n*** SKIPPED: xtask run --real-node: this machine cannot run the real node: {reason} ***\n"
        );
        return;
    }
    let binaries = binaries_dir();
    assert!(
        binaries.join("fake-tenant").is_file(),
        "{} is missing: run `cargo build -p test-fake-tenant` before `cargo test -p xtask`",
        binaries.join("fake-tenant").display()
    );
    let (old, new) = (
        test_images::FAKE_ONEAGENT_VERSIONS[0],
        test_images::FAKE_ONEAGENT_VERSIONS[1],
    );
    let name = format!("xtask-run-real-{}", std::process::id());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let marker = format!("{name}-{nanos}");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["run", "--real-node", "--exit-when-ready", "--nodes", "1"])
        .arg("--binaries")
        .arg(&binaries)
        .args(["--name", &name])
        .args(["--update-to", new])
        .env(MARKER_VAR, &marker)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let root = test_kit::tools::workspace_root();
    let _ = std::fs::remove_dir_all(root.join("target/local-run-logs").join(&name));
    assert!(
        output.status.success(),
        "xtask run --real-node failed ({}) after {elapsed:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    // The release, every component Ready on the real node, the webhook with both replicas.
    let installed = stdout
        .lines()
        .find(|l| l.starts_with("Helm release dynatrace-operator of chart "))
        .unwrap_or_else(|| panic!("no Helm release in the output:\n{stdout}"));
    assert!(
        installed.contains("in namespace dynatrace")
            && installed.contains(
                "operator 1/1 Ready, webhook 2/2 Ready, CSI driver 1/1 Ready, all on node real-node"
            ),
        "{installed}"
    );

    // Before the update: the pod on the real node, Running, and what the fake OneAgent printed.
    let (before, after) = stdout
        .split_once(&format!("Published OneAgent {new}"))
        .unwrap_or_else(|| panic!("no update in the output:\n{stdout}"));
    let oneagent_rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|line| line.starts_with("dynakube-oneagent-"))
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let rows = oneagent_rows(before);
    assert_eq!(rows.len(), 1, "{before}");
    assert_eq!(rows[0][1], "real-node", "{before}");
    assert_eq!(rows[0][2], "Running", "{before}");
    let report = |text: &str| -> serde_json::Value {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("fake-oneagent started: "))
            .unwrap_or_else(|| panic!("no report of the fake OneAgent in:\n{text}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    assert_eq!(report(before)["version"], old, "{before}");
    assert!(before.contains("phase Running"), "{before}");

    // The sample application on the real node, its code module from the CSI driver's cache: the pod's
    // oneagent-bin is a CSI volume, the node's status holds the version, the volume the kubelet published
    // is an overlay over the cached version, and the process has the agent library mapped.
    assert!(
        before.contains("Sample application sample-apps/sample-app-") && before.contains("(phase Running)"),
        "{before}"
    );
    assert!(before.contains("oneagent-bin (csi)"), "{before}");
    assert!(before.contains("injected by DynaKube dynakube:"), "{before}");
    let line = |prefix: &str| -> &str {
        before
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{before}"))
    };
    assert!(
        line("CSI driver csi.oneagent.dynatrace.com on node real-node: pod dynatrace-oneagent-csi-driver-")
            .contains("registered with the kubelet (node id real-node)"),
        "{before}"
    );
    let status = line("node status ConfigMap dynatrace/dynatrace-csi-real-node:");
    assert!(
        status.contains(&format!(r#"versions ["{old}"]"#))
            && status.contains(&format!("DynaKube dynakube: version {old}, ready true")),
        "{status}"
    );
    let volume = line("oneagent-bin of pod sample-app-");
    assert!(
        volume.contains("on node real-node, published at /var/lib/kubelet/pods/"),
        "{volume}"
    );
    let overlay = line("overlay mount, lower dirs");
    assert!(overlay.ends_with(&format!("codemodules/{old}")), "{overlay}");
    assert!(
        line("the application's process (pid ")
            .ends_with("has mapped /opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so"),
        "{before}"
    );

    // After the update: the new version's container on the real node.
    let rows = oneagent_rows(after);
    assert_eq!(rows.len(), 1, "{after}");
    assert_eq!(rows[0][1], "real-node", "{after}");
    assert_eq!(rows[0][3], new, "{after}");
    assert_eq!(report(after)["version"], new, "{after}");

    // The uninstall: nothing of the release left but the CRDs, and what users created in the namespace.
    let uninstalled = after
        .lines()
        .find(|l| l.starts_with("helm uninstall dynatrace-operator: nothing of the release is left"))
        .unwrap_or_else(|| panic!("no clean uninstall in the output:\n{after}"));
    assert!(
        uninstalled.contains("but the CRDs dynakubes.dynatrace.com"),
        "{uninstalled}"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = marked_processes(&marker);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = marked_processes(&marker);
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
    let cluster_dir = root.join("target/local-clusters").join(&name);
    assert!(!cluster_dir.exists(), "{} was not removed", cluster_dir.display());
    eprintln!("{stdout}");
    eprintln!("xtask run --real-node --exit-when-ready --update-to {new} took {elapsed:?}");
}
