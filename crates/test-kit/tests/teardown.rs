//! The test harness leaves nothing behind: clusters and namespaces are removed when a test panics, and a
//! cluster dies with the process that owns it even when that process is killed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Api;
use test_kit::process::pid_alive;

const WAIT: Duration = Duration::from_secs(60);

/// A pid counts as gone when it no longer exists or is a zombie (exited, not yet reaped by init).
fn gone(pid: i32) -> bool {
    !pid_alive(pid)
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
}

#[tokio::test]
async fn a_private_cluster_is_stopped_and_removed_when_its_test_panics() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let cluster = test_kit::start_private_cluster(1).await.expect("cluster starts");
        let pids: Vec<i32> = cluster.state().processes.iter().map(|p| p.pid).collect();
        tx.send((pids, cluster.state().data_dir.clone()))
            .expect("receiver waits");
        panic!("deliberate failure inside a test that owns a cluster");
    });
    assert!(test.await.expect_err("the task panicked").is_panic());
    let (pids, data_dir) = rx.await.expect("the cluster had started");
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller manager, scheduler, kwok"
    );
    for pid in pids {
        assert!(gone(pid), "process {pid} survived the panic");
    }
    assert!(!data_dir.exists(), "{} survived the panic", data_dir.display());
}

#[tokio::test]
async fn a_namespace_and_its_nodes_are_deleted_when_their_test_panics() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let ns = test_kit::TestNamespace::create().await.expect("namespace");
        ns.create_node("doomed", &[], Vec::new()).await.expect("node");
        tx.send(ns.name.clone()).expect("receiver waits");
        panic!("deliberate failure inside a test that owns a namespace");
    });
    assert!(test.await.expect_err("the task panicked").is_panic());
    let name = rx.await.expect("the namespace was created");

    let client = test_kit::shared_cluster().await.unwrap().client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    test_kit::eventually(
        "the namespace to be deleted and its node removed",
        WAIT,
        || async {
            let terminating = match namespaces.get_opt(&name).await? {
                None => true,
                Some(ns) => ns.metadata.deletion_timestamp.is_some(),
            };
            let node_gone = nodes.get_opt(&format!("{name}-doomed")).await?.is_none();
            Ok((terminating && node_gone).then_some(()))
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tied_cluster_dies_when_its_owner_is_killed() {
    let mut holder = Command::new(env!("CARGO_BIN_EXE_testkit-cluster-holder"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("holder starts");
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("holder reports its cluster");
    let report: serde_json::Value = serde_json::from_str(&line).expect("one JSON line");
    let pids: Vec<i32> = serde_json::from_value(report["pids"].clone()).expect("pids");
    assert_eq!(pids.len(), 5);
    assert!(
        pids.iter().all(|pid| !gone(*pid)),
        "the cluster runs while its owner does"
    );

    holder.kill().expect("SIGKILL the owner");
    holder.wait().expect("reap the owner");
    test_kit::eventually("every cluster process to die with its owner", WAIT, || async {
        Ok(pids.iter().all(|pid| gone(*pid)).then_some(()))
    })
    .await
    .unwrap();
}
