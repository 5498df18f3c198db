//! The real node: pods really run (an init container fills an emptyDir the main container reads), `logs`
//! and `exec` work, pods reach the API server through the `kubernetes` Service, and stopping the cluster
//! leaves the machine as it was.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{AttachParams, LogParams, PostParams};
use test_kit::real_node::{self, HostSnapshot, NODE_LABEL, PAUSE_BINARY, PAUSE_IMAGE};
use test_kit::{Cluster, ClusterOptions, Lifetime, TestNamespace, Tools, eventually};
use tokio::io::AsyncReadExt as _;

/// The tests compare the machine before and after, so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stops a detached cluster when dropped, so a failing test leaves no control plane behind.
struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Ok(cluster) = Cluster::load(&self.0) {
            let _ = cluster.stop();
        }
    }
}

fn pod(name: &str, spec: serde_json::Value) -> serde_json::Result<Pod> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": spec,
    }))
}

fn container(name: &str, args: &[&str]) -> serde_json::Value {
    let mut command = vec![PAUSE_BINARY];
    command.extend(args);
    serde_json::json!({
        "name": name,
        "image": PAUSE_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
    })
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_on_the_real_node_and_stopping_leaves_the_machine_as_it_was() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let test_start = Instant::now();
    if real_node::unsupported_reason().is_none() {
        // A node an earlier run left would show up in the snapshot and then be gone.
        real_node::remove_crashed_node().unwrap();
    }
    let before = HostSnapshot::take();
    let Some(cluster) = test_kit::start_real_node_cluster(1).await.unwrap() else {
        return;
    };
    let node = cluster.real_node().expect("the cluster has the real node");
    eprintln!(
        "real node Ready {:.1?} after containerd started (cluster up in {:.1?})",
        node.ready_after(),
        test_start.elapsed()
    );
    let ns = TestNamespace::create_in(&cluster).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);

    // The kubelet reports the node, not kwok; the kwok node is still there and Ready.
    let nodes: Api<Node> = Api::all(ns.client.clone());
    let real = nodes.get(real_node::NODE_NAME).await.unwrap();
    let runtime = real
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.container_runtime_version.clone());
    assert!(
        runtime.as_deref().is_some_and(|r| r.starts_with("containerd://")),
        "{runtime:?}"
    );
    assert!(test_kit::node_is_ready(&nodes.get("kwok-node-0").await.unwrap()));

    let on_real_node = serde_json::json!({ NODE_LABEL: "true" });
    let created = Instant::now();
    pods.create(
        &PostParams::default(),
        &pod(
            "reader",
            serde_json::json!({
                "nodeSelector": on_real_node,
                "volumes": [{ "name": "data", "emptyDir": {} }],
                "initContainers": [container("writer", &["write", "/data/greeting", "hello from the init container"])],
                "containers": [container("reader", &["serve-file", "/data/greeting"])],
                "terminationGracePeriodSeconds": 1,
            }),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod(
            "api-caller",
            serde_json::json!({
                "nodeSelector": on_real_node,
                "restartPolicy": "Never",
                "volumes": [{ "name": "data", "emptyDir": {} }],
                "containers": [container("caller", &["connect", "KUBERNETES_SERVICE_HOST", "443"])],
            }),
        )
        .unwrap(),
    )
    .await
    .unwrap();

    eventually("pod reader Ready", Duration::from_secs(90), || async {
        let pod = pods.get("reader").await?;
        let ready = pod
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Ok(ready.then_some(()))
    })
    .await
    .unwrap();
    eprintln!(
        "pod with an init container Ready {:.1?} after creation",
        created.elapsed()
    );

    let logs = pods.logs("reader", &LogParams::default()).await.unwrap();
    assert_eq!(logs, "hello from the init container\n");

    let mut exec = pods
        .exec(
            "reader",
            [PAUSE_BINARY, "cat", "/data/greeting"],
            &AttachParams::default().stderr(false),
        )
        .await
        .unwrap();
    let mut out = String::new();
    exec.stdout()
        .expect("stdout is attached")
        .read_to_string(&mut out)
        .await
        .unwrap();
    exec.join().await.unwrap();
    assert_eq!(out, "hello from the init container\n");

    let phase = eventually("pod api-caller finished", Duration::from_secs(90), || async {
        let pod = pods.get("api-caller").await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
    })
    .await
    .unwrap();
    let logs = pods.logs("api-caller", &LogParams::default()).await.unwrap();
    assert_eq!(
        (phase.as_str(), logs.as_str()),
        (
            "Succeeded",
            format!("connected {}:443\n", real_node::KUBERNETES_SERVICE_IP).as_str()
        ),
        "a pod reaches the API server through the kubernetes Service"
    );

    let memory: Vec<String> = node
        .process_records()
        .iter()
        .map(|p| format!("{} {} MiB", p.name, rss_kib(p.pid) / 1024))
        .collect();
    eprintln!("memory with 2 pods: {}", memory.join(", "));

    drop(ns);
    let stopping = Instant::now();
    cluster.stop().unwrap();
    eprintln!(
        "stopped and cleaned up in {:.1?}; whole test {:.1?}",
        stopping.elapsed(),
        test_start.elapsed()
    );
    let differences = HostSnapshot::take().differences_from(&before);
    assert!(
        differences.is_empty(),
        "the machine differs from before the real node:\n{}",
        differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_real_node_is_cleaned_up_by_the_next_start() {
    let _turn = ONE_AT_A_TIME.lock().await;
    if let Some(reason) = real_node::unsupported_reason() {
        eprintln!("\n*** SKIPPED: real-node test: this machine cannot run the real node: {reason} ***\n");
        return;
    }
    real_node::remove_crashed_node().unwrap();
    let before = HostSnapshot::take();

    // A node whose starter is gone, then its kubelet and containerd killed: what a crash leaves.
    let dir = std::env::temp_dir().join(format!("testkit-crashed-node-{}", std::process::id()));
    let options = ClusterOptions {
        name: "crashed".into(),
        data_dir: dir.clone(),
        nodes: 0,
        workloads: true,
        lifetime: Lifetime::Detached,
        real_node: true,
    };
    let crashed_control_plane = StopOnDrop(dir.clone());
    let crashed = Cluster::start(&Tools::locate().unwrap(), options).await.unwrap();
    let client = crashed.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(
        &PostParams::default(),
        &pod(
            "left-behind",
            serde_json::json!({
                "nodeSelector": { NODE_LABEL: "true" },
                "volumes": [{ "name": "data", "emptyDir": {} }],
                "containers": [container("pause", &[])],
            }),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    eventually("pod left-behind running", Duration::from_secs(90), || async {
        let phase = pods.get("left-behind").await?.status.and_then(|s| s.phase);
        Ok((phase.as_deref() == Some("Running")).then_some(()))
    })
    .await
    .unwrap();
    let node_processes = crashed.real_node().unwrap().process_records();
    crashed.detach();
    for process in &node_processes {
        let pid = rustix::process::Pid::from_raw(process.pid).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    }
    eventually("the node's processes killed", Duration::from_secs(10), || async {
        let alive = node_processes
            .iter()
            .any(|p| test_kit::process::pid_runs_binary(p.pid, &p.binary));
        Ok((!alive).then_some(()))
    })
    .await
    .unwrap();
    let left = HostSnapshot::take().differences_from(&before);
    for trace in ["+ link: dto0", "+ mount: /var/lib/kubelet", "+ process:"] {
        assert!(
            left.iter().any(|l| l.starts_with(trace)),
            "the crash should leave {trace}: {left:#?}"
        );
    }

    // The next start removes the traces and runs a node; stopping it leaves the machine as it was.
    let next = test_kit::start_real_node_cluster(0).await.unwrap().unwrap();
    next.stop().unwrap();
    // The crashed cluster's control plane; its node is gone already.
    drop(crashed_control_plane);
    let differences = HostSnapshot::take().differences_from(&before);
    assert!(
        differences.is_empty(),
        "the machine differs from before the crashed node:\n{}",
        differences.join("\n")
    );
}
