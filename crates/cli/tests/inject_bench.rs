//! Pod-mutation load: the real `dynatrace-operator webhook-server` process, its caches filled from a real
//! API server (a mapped namespace with its Secrets, an applicationMonitoring DynaKube with connection
//! info), answering AdmissionReviews of a typical Deployment pod over TLS with keep-alive. Prints
//! - the throughput with 1, 4, 16 and 64 clients sending back to back, and per second of the server's CPU
//!   time;
//! - p50/p90/p99/max latency at a fixed rate of 1,000 requests/s (open loop: each request's latency counts
//!   from when it was due by a schedule kept by its own thread, so a stalled server is not hidden by a
//!   client that waits), the same from when the client really sent it (the difference is the load
//!   generator's own scheduling), and the server's own time from its latency histogram;
//! - the server's resident memory idle and its peak under load.
//!
//! A benchmark, not a test of the suite; run it by hand on a quiet machine against the shipped build (the
//! static musl binary of the image), with the server on a CPU of its own and the load generator and the
//! control plane on the other:
//!
//! ```text
//! cargo build --release --target x86_64-unknown-linux-musl -p dynatrace-operator
//! BENCH_WEBHOOK=$PWD/target/x86_64-unknown-linux-musl/release/dynatrace-operator BENCH_SERVER_CPU=1 \
//!   taskset -c 0 cargo test --profile bench-fast -p dynatrace-operator --test inject_bench -- --ignored --nocapture
//! ```
//!
//! `BENCH_RATE` (requests/s, default 1000) and `BENCH_SECS` (seconds per phase, default 10) change the load;
//! `BENCH_SERVER_CPU` (a `taskset` CPU list) pins the server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pure_api::dynakube::DynaKube;
use serde_json::{Value, json};
use test_kit::procfs::{cpu_seconds, mib, status_kib};

const INSTANCE_LABEL: &str = "dynakube.internal.dynatrace.com/instance";
const DYNAKUBE: &str = "apps";
const LOG: &str = "target/inject-bench-webhook.log";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The DynaKube's namespace and a mapped application namespace with its Secrets.
async fn set_up(client: &Client) -> (test_kit::TestNamespace, test_kit::TestNamespace) {
    let home = test_kit::TestNamespace::create().await.unwrap();
    let apps = test_kit::TestNamespace::create().await.unwrap();
    let dynakube: DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": DYNAKUBE, "namespace": home.name },
        "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api",
                  "oneAgent": { "applicationMonitoring": {} } },
    }))
    .unwrap();
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), &home.name);
    dynakubes.create(&PostParams::default(), &dynakube).await.unwrap();
    let status = json!({ "status": {
        "oneAgent": { "connectionInfoStatus": {
            "tenantUUID": "abc12345",
            "communicationHosts": [{ "protocol": "https", "host": "tenant.example", "port": 443 }],
        }},
        "codeModules": { "version": "1.277.0.20230914-094321" },
    }});
    dynakubes
        .patch_status(DYNAKUBE, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(
            &apps.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { INSTANCE_LABEL: DYNAKUBE } } })),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &apps.name);
    for name in [
        pure_api::dynakube::names::INIT_SECRET,
        pure_api::dynakube::names::ENRICHMENT_SECRET,
    ] {
        let secret: Secret =
            serde_json::from_value(json!({ "metadata": { "name": name }, "stringData": { "k": "v" } }))
                .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    (home, apps)
}

/// An AdmissionReview of a pod as a ReplicaSet creates it: two containers with env, resources, probes and
/// a service-account token volume, about 3 KiB of JSON.
fn review(namespace: &str, uid: u64) -> Vec<u8> {
    let container = |name: &str| {
        json!({
            "name": name, "image": format!("registry.example/shop/{name}:2.4.1"),
            "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
            "env": [{ "name": "JAVA_OPTS", "value": "-Xmx512m" }, { "name": "PROFILE", "value": "prod" }],
            "resources": { "requests": { "cpu": "100m", "memory": "256Mi" }, "limits": { "memory": "512Mi" } },
            "readinessProbe": { "httpGet": { "path": "/health", "port": 8080 }, "periodSeconds": 10 },
            "volumeMounts": [{ "name": "kube-api-access-x7k2p", "readOnly": true,
                               "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }],
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
        })
    };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "shop-7d9f5c6b8-", "namespace": namespace,
            "labels": { "app": "shop", "pod-template-hash": "7d9f5c6b8", "app.kubernetes.io/version": "2.4.1" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7d9f5c6b8",
                                  "uid": "6f1c2a3e-0000-4000-8000-000000000001", "controller": true,
                                  "blockOwnerDeletion": true }],
        },
        "spec": {
            "containers": [container("shop"), container("cache")],
            "volumes": [{ "name": "kube-api-access-x7k2p", "projected": { "sources": [
                { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } }] } }],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
            "securityContext": {}, "schedulerName": "default-scheduler",
        },
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{uid:012}"),
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": namespace, "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod, "oldObject": null, "dryRun": false,
            "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
        }
    }))
    .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// The server's own `inject` latency histogram: cumulative count per bucket bound (seconds), from its
/// `/metrics`.
async fn server_histogram(metrics_port: u16) -> Vec<(f64, u64)> {
    let text = test_kit::http_get(metrics_port, "/metrics")
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("dynatrace_webhook_request_duration_seconds_bucket")
                && l.contains(r#"endpoint="inject""#)
        })
        .filter_map(|l| {
            let le = l.split(r#"le=""#).nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --ignored --nocapture"]
async fn pod_mutation_throughput_latency_and_memory() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds = env_or("BENCH_SECS", 10);
    let rate = env_or("BENCH_RATE", 1000);
    let cluster = test_kit::shared_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    test_kit::install_crds(
        &client,
        &pure_api::crd::all(&pure_api::crd::ConversionEndpoint::Service {
            namespace: "dynatrace".to_owned(),
        }),
    )
    .await
    .unwrap();
    let (home, apps) = set_up(&client).await;

    // The server, with a certificate for 127.0.0.1.
    let certs = tempfile::tempdir().unwrap();
    let ca = test_kit::pki::CertificateAuthority::new("inject-bench-ca").unwrap();
    let leaf = ca
        .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    std::fs::write(certs.path().join("tls.crt"), leaf.cert_pem).unwrap();
    std::fs::write(certs.path().join("tls.key"), leaf.key_pem).unwrap();
    let (port, metrics_port) = (
        test_kit::cluster::free_port().unwrap(),
        test_kit::cluster::free_port().unwrap(),
    );
    let binary = std::env::var_os("BENCH_WEBHOOK").map_or_else(
        || env!("CARGO_BIN_EXE_dynatrace-operator").into(),
        std::path::PathBuf::from,
    );
    let log_path = test_kit::tools::workspace_root().join(LOG);
    // Optionally on a CPU of its own (`taskset` execs the server, so the pid stays the server's), away
    // from the load generator and the control plane.
    let mut server = match std::env::var("BENCH_SERVER_CPU") {
        Ok(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &cpu]).arg(&binary);
            taskset
        }
        Err(_) => Command::new(&binary),
    };
    let server = server
        .arg("webhook-server")
        .args(["--certs-dir", certs.path().to_str().unwrap()])
        .args(["--namespace", &home.name])
        .args(["--init-image", "registry.example/dynatrace-operator:bench"])
        .args(["--bind-address", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
        ])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = server.id();
    let _server = test_kit::process::KillOnDrop(server);
    test_kit::eventually(
        "the webhook server to be ready",
        Duration::from_secs(60),
        || async {
            let answer = test_kit::http_get(metrics_port, "/readyz")
                .await
                .unwrap_or_default();
            Ok(answer.starts_with("HTTP/1.1 200").then_some(()))
        },
    )
    .await
    .unwrap();

    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.cert_pem().as_bytes()).unwrap())
        .http1_only()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/inject");
    // The caches fill asynchronously after /readyz: wait until a pod is really injected.
    let body = review(&apps.name, 0);
    let first = test_kit::eventually("an injected pod", Duration::from_secs(30), || async {
        let answer: Value = http.post(&url).body(body.clone()).send().await?.json().await?;
        if answer["response"]["patch"].is_string() {
            Ok(Some(answer))
        } else {
            anyhow::bail!("not injected: {answer}")
        }
    })
    .await
    .unwrap();
    assert_eq!(first["response"]["allowed"], true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = status_kib(pid, "VmRSS:").unwrap();

    println!("\nPod mutation through `webhook-server` ({}):", binary.display());
    println!("  review size {} bytes, {seconds} s per phase", body.len());
    println!(
        "  idle RSS                             {:>8.1} MiB",
        mib(idle_rss)
    );

    // Closed loop: each client sends its next review as soon as the previous one is answered.
    let body: Arc<Vec<u8>> = Arc::new(body);
    for clients in [1_u64, 4, 16, 64] {
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let cpu_before = cpu_seconds(pid).unwrap();
        let until = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let (http, url, body, done, errors) = (
                    http.clone(),
                    url.clone(),
                    body.clone(),
                    done.clone(),
                    errors.clone(),
                );
                tokio::spawn(async move {
                    while Instant::now() < until {
                        match http.post(&url).body(body.to_vec()).send().await {
                            Ok(response) if response.status().is_success() => {
                                let _ = response.bytes().await;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let cpu = cpu_seconds(pid).unwrap() - cpu_before;
        let count = done.load(Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let (per_second, per_cpu_second) = (count as f64 / seconds as f64, count as f64 / cpu.max(0.01));
        println!(
            "  {clients:>2} clients back to back              {per_second:>8.0} pods/s, {per_cpu_second:>6.0} per \
             CPU-second of the server ({cpu:.1} s CPU), {} errors",
            errors.load(Ordering::Relaxed)
        );
    }

    // Open loop at a fixed rate. The schedule is kept by a plain thread (`thread::sleep` is accurate to
    // tens of microseconds, tokio's timer only to its 1 ms tick, which would add up to 1 ms to every
    // latency), which spawns each request's task when it is due. A latency counts from when its request
    // was due, so neither a stalled server nor a slow client is hidden; the time from when the client
    // really sent it is reported as well, to tell the client's own delay from the server's.
    let period = Duration::from_secs(1) / u32::try_from(rate).unwrap();
    let total = rate * seconds;
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(pid).unwrap();
    let histogram_before = server_histogram(metrics_port).await;
    let started = Instant::now();
    let scheduler = {
        let (runtime, http, url, body, errors) = (
            tokio::runtime::Handle::current(),
            http.clone(),
            url.clone(),
            body.clone(),
            errors.clone(),
        );
        std::thread::spawn(move || {
            let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap());
            for i in 0..u32::try_from(total).unwrap() {
                let due = started + period * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (http, url, body, errors) = (http.clone(), url.clone(), body.clone(), errors.clone());
                tasks.push(runtime.spawn(async move {
                    let sent = Instant::now();
                    match http.post(&url).body(body.to_vec()).send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    (due.elapsed(), sent.elapsed())
                }));
            }
            tasks
        })
    };
    let tasks = tokio::task::spawn_blocking(move || scheduler.join().unwrap())
        .await
        .unwrap();
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut from_send = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (latency, since_sent) = task.await.unwrap();
        latencies.push(latency);
        from_send.push(since_sent);
    }
    from_send.sort();
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(pid).unwrap() - cpu_before;
    latencies.sort();
    let peak_rss = status_kib(pid, "VmHWM:").unwrap();
    #[allow(clippy::cast_precision_loss)]
    let achieved = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "  open loop at {rate}/s                  {achieved:>8.0} pods/s achieved, server CPU {:.0} %",
        cpu / elapsed.as_secs_f64() * 100.0
    );
    println!(
        "  latency p50 / p90 / p99 / max         {:.2?} / {:.2?} / {:.2?} / {:.2?}, {} errors",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.90),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "  from the send, p50 / p90 / p99 / max  {:.2?} / {:.2?} / {:.2?} / {:.2?}",
        percentile(&from_send, 0.50),
        percentile(&from_send, 0.90),
        percentile(&from_send, 0.99),
        from_send.last().copied().unwrap_or_default(),
    );
    // How much of the tail is the server's: its own time from request to answer (TLS and the client's
    // scheduling excluded), as shares of requests within each bucket bound.
    let histogram_after = server_histogram(metrics_port).await;
    let total_after = histogram_after.last().map_or(0, |b| b.1);
    let total_before = histogram_before.last().map_or(0, |b| b.1);
    let answered = total_after.saturating_sub(total_before).max(1);
    let shares: Vec<String> = histogram_after
        .iter()
        .filter(|(le, _)| *le <= 0.004)
        .map(|(le, after)| {
            let before = histogram_before.iter().find(|(b, _)| b == le).map_or(0, |b| b.1);
            #[allow(clippy::cast_precision_loss)]
            let share = (after - before) as f64 / answered as f64 * 100.0;
            format!("{share:.2} % <= {:.2} ms", le * 1000.0)
        })
        .collect();
    println!("  server's own time                     {}", shares.join(", "));
    println!(
        "  peak RSS (VmHWM)                     {:>8.1} MiB",
        mib(peak_rss)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0, "see {}", log_path.display());
}
