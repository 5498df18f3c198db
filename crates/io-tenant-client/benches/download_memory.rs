//! Downloads a large agent archive (1 GiB by default; `DTO_BENCH_BYTES` overrides) from the fake tenant on
//! 127.0.0.1 and prints the throughput and the process's memory before and at its peak during the
//! download. Run with `cargo bench -p io-tenant-client --bench download_memory`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: any failure aborts the run

use std::time::{Duration, Instant};

use io_tenant_client::{AgentSelector, ClientConfig, DownloadRequest, TenantClient};
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};

/// A field of /proc/self/status in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bytes: u64 = std::env::var("DTO_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let tenant = FakeTenant::start(
        TenantConfig {
            archive_payload_bytes: bytes,
            ..TenantConfig::default()
        },
        Listen::Http,
    )
    .await
    .unwrap();
    let mut config = ClientConfig::new(tenant.api_url(), "dt0c01.test");
    config.download_idle_timeout = Duration::from_secs(300);
    let client = TenantClient::new(config).unwrap();
    let request = DownloadRequest {
        agent: AgentSelector::code_modules(),
        version: None,
        technologies: Vec::new(),
        skip_metadata: true,
        expected_sha256: None,
    };
    let dir = std::env::temp_dir().join(format!("download-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The first download makes the fake generate its archive on disk; measure the second.
    client
        .download_agent(&request, &dir.join("warmup.zip"), |_| {})
        .await
        .unwrap();
    std::fs::remove_file(dir.join("warmup.zip")).unwrap();
    // Reset the peak-RSS mark so that it covers only the measured download.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let started = Instant::now();
    let file = client
        .download_agent(&request, &dir.join("agent.zip"), |_| {})
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let peak = status_kib("VmHWM:");
    let mib = file.size as f64 / (1024.0 * 1024.0);
    println!(
        "downloaded {mib:.0} MiB in {:.2} s ({:.0} MiB/s), verified sha256 {}",
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64(),
        &file.sha256[..12]
    );
    println!(
        "RSS before: {} MiB, peak during the download: {} MiB (client and fake tenant in one process)",
        before / 1024,
        peak / 1024
    );
    std::fs::remove_dir_all(&dir).unwrap();
    tenant.shutdown().await;
}
