//! What one pod costs the webhook in `pure-mutation`: decision, mutation and the JSON patch, for a
//! typical pod (one container) and one with ten containers, a first injection and a reinvocation that
//! finds nothing to do. Run with `cargo bench -p pure-mutation --bench mutate` (the shipped release
//! profile, about 10 minutes to build on 2 cores; `--profile bench-fast` builds faster and measures
//! about 40% more CPU time). It prints the CPU time per pod first, then criterion's wall-clock
//! statistics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: any failure aborts the run

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use pure_api::dynakube::DynaKube;
use pure_mutation::{NamespaceFacts, PodRequest, PodResult, Settings, Workload, mutate_pod};
use serde_json::json;

fn dynakube() -> DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": { "name": "dk", "namespace": "dynatrace" },
        "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "oneAgent": { "cloudNativeFullStack": {} } },
        "status": {
            "oneAgent": { "connectionInfoStatus": { "tenantUUID": "abc12345",
                "communicationHosts": [{ "protocol": "https", "host": "abc12345.live.dynatrace.com", "port": 443 }] } },
            "codeModules": { "version": "1.277.0.20230914-094321" }
        }
    }))
    .unwrap()
}

/// A Deployment's pod as the API server sends it: labels, owner, probes, resources, a few variables.
fn pod(containers: usize) -> Pod {
    let container = |i: usize| {
        json!({
            "name": format!("app-{i}"),
            "image": format!("registry.example.com/shop/app-{i}:1.2.3"),
            "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
            "env": [
                { "name": "JAVA_OPTS", "value": "-Xmx512m" },
                { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }
            ],
            "resources": { "requests": { "cpu": "100m", "memory": "256Mi" }, "limits": { "memory": "512Mi" } },
            "readinessProbe": { "httpGet": { "path": "/ready", "port": 8080 } },
            "volumeMounts": [{ "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }]
        })
    };
    serde_json::from_value(json!({
        "metadata": {
            "generateName": "web-7d9f5c-",
            "namespace": "shop",
            "labels": { "app": "web", "pod-template-hash": "7d9f5c" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f5c",
                                  "uid": "1b4f", "controller": true, "blockOwnerDeletion": true }]
        },
        "spec": {
            "containers": (0..containers).map(container).collect::<Vec<_>>(),
            "volumes": [{ "name": "kube-api-access", "projected": { "sources": [{ "serviceAccountToken": { "path": "token" } }] } }],
            "serviceAccountName": "default",
            "restartPolicy": "Always"
        }
    }))
    .unwrap()
}

/// This thread's CPU time in nanoseconds (`/proc/thread-self/schedstat`, first field): on a machine
/// shared with other work, wall-clock timings grow with the load, CPU time much less.
fn thread_cpu_nanos() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The median CPU time of `f` in microseconds, over 11 batches of at least 100 ms each (the scheduler's
/// CPU accounting advances in steps of a few milliseconds).
fn cpu_micros_per_call(mut f: impl FnMut()) -> f64 {
    let mut calls: u32 = 100;
    loop {
        let start = thread_cpu_nanos();
        for _ in 0..calls {
            f();
        }
        if thread_cpu_nanos() - start >= 100_000_000 {
            break;
        }
        calls *= 2;
    }
    let mut batches: Vec<f64> = (0..11)
        .map(|_| {
            let start = thread_cpu_nanos();
            for _ in 0..calls {
                f();
            }
            (thread_cpu_nanos() - start) as f64 / f64::from(calls) / 1000.0
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[batches.len() / 2]
}

fn bench(c: &mut Criterion) {
    let dynakube = dynakube();
    let labels = BTreeMap::from([(
        "dynakube.internal.dynatrace.com/instance".to_owned(),
        "dk".to_owned(),
    )]);
    let annotations = BTreeMap::new();
    let settings = Settings {
        init_image: "registry.example.com/dynatrace-operator:1.0.0".to_owned(),
        cluster_id: "3f1e9c1a-7b1d-4c55-9a55-0b7d0f1c2e3a".to_owned(),
        webhook_namespace: "dynatrace".to_owned(),
        csi_driver_installed: true,
    };
    let workload = Workload {
        kind: "Deployment".to_owned(),
        name: "web".to_owned(),
    };
    for containers in [1, 10] {
        let fresh = pod(containers);
        let request = |pod| PodRequest {
            pod,
            namespace: NamespaceFacts {
                name: "shop",
                labels: &labels,
                annotations: &annotations,
            },
            dynakube: Some(&dynakube),
            init_secret_present: true,
            enrichment_secret_present: true,
            workload: workload.clone(),
            settings: &settings,
        };
        let outcome = mutate_pod(&request(&fresh));
        assert_eq!(outcome.result, PodResult::Injected);
        let mut injected = serde_json::to_value(&fresh).unwrap();
        json_patch::patch(&mut injected, &outcome.patch).unwrap();
        let injected: Pod = serde_json::from_value(injected).unwrap();

        for (name, pod) in [("inject", &fresh), ("reinvoke-unchanged", &injected)] {
            println!(
                "{name}/{containers}-containers: {:.1} µs CPU per pod (thread CPU time, immune to other load)",
                cpu_micros_per_call(|| {
                    black_box(mutate_pod(black_box(&request(pod))));
                })
            );
        }
        c.bench_function(&format!("inject/{containers}-containers"), |b| {
            b.iter(|| mutate_pod(black_box(&request(&fresh))))
        });
        c.bench_function(&format!("reinvoke-unchanged/{containers}-containers"), |b| {
            b.iter(|| mutate_pod(black_box(&request(&injected))))
        });
    }
}

// The macro's generated function has no doc comment.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
