//! containerd (the runtime of the real node) pulls and unpacks `linux/oneagent:latest` from the fake
//! tenant's registry with Basic credentials, as the kubelet's CRI pull with the pull Secret does: HEAD of the
//! tag challenged, retried with the credentials, manifest by digest, blobs, digests and diff ids checked.
//! A private containerd runs in a temporary directory (its own sockets, root and state), so a real node's
//! containerd on the same machine is not touched. Skipped, loudly, without containerd, ctr or root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use test_fake_tenant::Endpoint;
use tokio::process::Command;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

async fn ctr(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "fake-tenant-test"])
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_the_latest_oneagent_image() {
    let root = rustix::process::geteuid().is_root();
    if !(on_path("containerd") && on_path("ctr") && root) {
        eprintln!(
            "SKIPPED containerd_pulls_the_latest_oneagent_image: needs containerd and ctr on PATH and root \
             (containerd {}, ctr {}, root {root}); install containerd (apt-get install containerd)",
            on_path("containerd"),
            on_path("ctr")
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
            opt = dir.path().join("opt").display(),
        ),
    )
    .unwrap();
    let mut containerd = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("containerd.log")).unwrap(),
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if socket.exists() && ctr(&socket, &["version"]).await.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let built = oci_layout(&layout, &[("1.277.0", b"#!/bin/sh\nexec sleep infinity\n")]);
    let tenant = start().await;
    tenant.add_image("linux/oneagent:1.277.0", &layout).await.unwrap();
    let image = format!("{}/linux/oneagent:latest", tenant.addr());

    let wrong = ctr(
        &socket,
        &[
            "images",
            "pull",
            "--plain-http",
            "--user",
            "abc12345:dt0c01.WRONG",
            &image,
        ],
    )
    .await;
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("401"), "{stderr}");

    tenant.clear_requests();
    let credentials = format!("abc12345:{TOKEN}");
    let pulled = ctr(
        &socket,
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            "--user",
            &credentials,
            &image,
        ],
    )
    .await;
    let log = std::fs::read_to_string(dir.path().join("containerd.log")).unwrap_or_default();
    assert!(
        pulled.status.success(),
        "ctr pull failed: {}\ncontainerd log:\n{log}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let listed = ctr(&socket, &["images", "ls"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&image) && listed.contains(&built[0].manifest_digest),
        "{listed}"
    );
    // What containerd asked: the tag by HEAD (challenged first), the manifest by digest, config and layer.
    let calls: Vec<_> = tenant
        .requests()
        .iter()
        .map(|r| (r.endpoint, r.method.clone(), r.status))
        .collect();
    assert!(
        calls.contains(&(Endpoint::RegistryManifests, "HEAD".into(), 401)),
        "{calls:?}"
    );
    assert!(
        calls.contains(&(Endpoint::RegistryManifests, "HEAD".into(), 200)),
        "{calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.0 == Endpoint::RegistryBlobs && c.2 == 200)
            .count(),
        2,
        "{calls:?}"
    );

    let removed = ctr(&socket, &["images", "rm", "--sync", &image]).await;
    assert!(removed.status.success());
    tenant.shutdown().await;
    // SIGTERM lets containerd close its database and remove its sockets.
    let pid = rustix::process::Pid::from_raw(i32::try_from(containerd.id().unwrap()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    if tokio::time::timeout(Duration::from_secs(10), containerd.wait())
        .await
        .is_err()
    {
        containerd.start_kill().unwrap();
        containerd.wait().await.unwrap();
    }
}
