//! Benchmark (ignored by default): 1,000 NodePublishVolume calls with a warm cache (the version is
//! installed, the server and the connection are up), each followed by its NodeUnpublishVolume, over the
//! real unix socket with real overlay and bind mounts. Prints p50/p99/max of both. Run:
//!
//! ```text
//! cargo test -p io-csi-driver --profile bench-fast --test bench_publish -- --ignored --nocapture
//! ```

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use io_csi_driver::proto::csi::node_client::NodeClient;
use tokio_util::sync::CancellationToken;

const VOLUMES: usize = 1_000;
const WARM_UP: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p99 = percentile(&samples, 0.99);
    println!(
        "{name:<22} n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn publish_latency_with_a_warm_cache() {
    let tmp = MountedTempDir::new();
    prepare_data_dir(&tmp.path().join("data"), 10);
    let socket = tmp.path().join("plugin/csi.sock");
    let metrics = io_csi_driver::metrics::Metrics::new();
    let shutdown = CancellationToken::new();
    let options = io_csi_driver::server::Options {
        endpoint: socket.display().to_string(),
        node_id: "bench".into(),
        data_dir: tmp.path().join("data"),
        registration_dir: None,
        kubelet_registration_path: String::new(),
        health_address: "127.0.0.1:0".parse().unwrap(),
        max_mount_wait: Duration::from_secs(120),
        version: "bench".into(),
    };
    let events = io_csi_driver::events::PodEvents::disabled(metrics.clone());
    let running = io_csi_driver::server::start(options, metrics, events, shutdown.clone())
        .await
        .unwrap();
    let mut node = NodeClient::new(connect(&socket).await);
    let kubelet = tmp.path().join("kubelet");

    for i in 0..WARM_UP {
        let volume = KubeletVolume::new(&kubelet, &format!("warm-{i}"), "app");
        volume.publish(&mut node).await.unwrap();
        volume.unpublish(&mut node).await.unwrap();
    }
    let volumes: Vec<_> = (0..VOLUMES)
        .map(|i| KubeletVolume::new(&kubelet, &format!("pod-{i}"), "app"))
        .collect();
    let mut publishes = Vec::with_capacity(VOLUMES);
    let mut unpublishes = Vec::with_capacity(VOLUMES);
    for volume in &volumes {
        let started = Instant::now();
        volume.publish(&mut node).await.unwrap();
        publishes.push(started.elapsed());
        let started = Instant::now();
        volume.unpublish(&mut node).await.unwrap();
        unpublishes.push(started.elapsed());
    }
    println!("csi-server, warm cache, {VOLUMES} volumes, sequential over the unix socket:");
    let p99 = summary("NodePublishVolume", publishes);
    summary("NodeUnpublishVolume", unpublishes);
    println!(
        "mount table: {} lines",
        io_csi_driver::mounts::read().unwrap().mounts.len()
    );
    assert!(tmp.mounts().is_empty(), "left mounted: {:?}", tmp.mounts());
    shutdown.cancel();
    running.wait().await.unwrap();
    println!(
        "goal p99 <= 5 ms: {}",
        if p99 <= Duration::from_millis(5) {
            "met"
        } else {
            "NOT met"
        }
    );
}
