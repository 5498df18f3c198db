//! The mutated pods as the real API server judges them: every mode's pod passes validation, and pods that
//! pass Pod Security `restricted` still pass it once injected (the API server's PodSecurity admission, not
//! our reading of the rules). Pods are created with `dryRun`, so no node is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use pure_api::dynakube::DynaKube;
use pure_mutation::{NamespaceFacts, PodRequest, PodResult, Settings, Workload, mutate_pod};
use serde_json::json;
use test_kit::TestNamespace;

fn dynakube(one_agent: serde_json::Value, flags: &[(&str, &str)]) -> DynaKube {
    let annotations: BTreeMap<String, String> = flags
        .iter()
        .map(|(k, v)| (format!("feature.dynatrace.com/{k}"), (*v).to_owned()))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1",
        "kind": "DynaKube",
        "metadata": { "name": "dk", "namespace": "dynatrace", "annotations": annotations },
        "spec": { "apiUrl": "https://abc12345.live.dynatrace.com/api", "networkZone": "eu",
                  "activeGate": { "tlsSecretName": "ag-tls" }, "oneAgent": one_agent },
        "status": {
            "oneAgent": { "connectionInfoStatus": { "tenantUUID": "abc12345",
                "communicationHosts": [{ "protocol": "https", "host": "abc12345.live.dynatrace.com", "port": 443 }] } },
            "codeModules": { "version": "1.277.0.20230914-094321" }
        }
    }))
    .unwrap()
}

/// Every mode and option, with whether the CSI driver is installed.
fn modes() -> Vec<(&'static str, DynaKube, bool)> {
    vec![
        (
            "applicationMonitoring",
            dynakube(json!({ "applicationMonitoring": {} }), &[]),
            false,
        ),
        (
            "applicationMonitoring with CSI",
            dynakube(json!({ "applicationMonitoring": { "useCSIDriver": true } }), &[]),
            true,
        ),
        (
            "cloudNativeFullStack, read-only CSI, label versions, connect retry",
            dynakube(
                json!({ "cloudNativeFullStack": {} }),
                &[
                    ("injection-readonly-volume", "true"),
                    ("label-version-detection", "true"),
                    ("oneagent-initial-connect-retry-ms", "500"),
                ],
            ),
            true,
        ),
        (
            "cloudNativeFullStack without the driver, seccomp flag",
            dynakube(
                json!({ "cloudNativeFullStack": {} }),
                &[("init-container-seccomp-profile", "true")],
            ),
            false,
        ),
    ]
}

/// Pods that pass `restricted`: settings at pod level, at container level (group 0), and mixed.
fn restricted_pods() -> Vec<Pod> {
    let hardened = json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] } });
    [
        json!({
            "metadata": { "generateName": "pod-level-" },
            "spec": {
                "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
                "containers": [{ "name": "a", "image": "app:1", "securityContext": hardened }]
            }
        }),
        json!({
            "metadata": { "generateName": "container-level-", "labels": { "app.kubernetes.io/version": "1" } },
            "spec": { "containers": [
                { "name": "a", "image": "app:1", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] },
                    "runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 0,
                    "seccompProfile": { "type": "RuntimeDefault" } },
                  "env": [{ "name": "LD_PRELOAD", "value": "/lib/x.so" }] },
                { "name": "b", "image": "app:2", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] },
                    "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } } }
            ] }
        }),
        json!({
            "metadata": { "generateName": "mixed-" },
            "spec": {
                "securityContext": { "runAsNonRoot": true, "runAsUser": 2000, "runAsGroup": 0 },
                "containers": [{ "name": "a", "image": "app:1", "securityContext": {
                    "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] },
                    "seccompProfile": { "type": "RuntimeDefault" } } }]
            }
        }),
    ]
    .into_iter()
    .map(|p| serde_json::from_value(p).unwrap())
    .collect()
}

/// `pod` mutated for `dynakube` and patched as the API server would.
fn injected(pod: &Pod, dynakube: &DynaKube, csi: bool, namespace: &str) -> Pod {
    let labels = BTreeMap::from([(
        "dynakube.internal.dynatrace.com/instance".to_owned(),
        "dk".to_owned(),
    )]);
    let annotations = BTreeMap::from([(
        "mapping.release.dynatrace.com/stage".to_owned(),
        "metadata.labels['stage']".to_owned(),
    )]);
    let settings = Settings {
        init_image: "registry.example.com/dynatrace-operator:1.0.0".to_owned(),
        cluster_id: "cluster-uid".to_owned(),
        webhook_namespace: "dynatrace".to_owned(),
        csi_driver_installed: csi,
    };
    let outcome = mutate_pod(&PodRequest {
        pod,
        namespace: NamespaceFacts {
            name: namespace,
            labels: &labels,
            annotations: &annotations,
        },
        dynakube: Some(dynakube),
        init_secret_present: true,
        enrichment_secret_present: true,
        workload: Workload {
            kind: "Deployment".to_owned(),
            name: "web".to_owned(),
        },
        settings: &settings,
    });
    assert_eq!(outcome.result, PodResult::Injected, "{:?}", outcome.events);
    let mut value = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut value, &outcome.patch).unwrap();
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn injected_pods_pass_validation_and_pod_security_restricted() -> anyhow::Result<()> {
    let ns = TestNamespace::create().await?;
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            } } })),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // The check is real: a pod that is not restricted is refused.
    let loose: Pod = serde_json::from_value(json!({
        "metadata": { "generateName": "loose-" },
        "spec": { "containers": [{ "name": "a", "image": "app:1" }] }
    }))?;
    let refused = pods.create(&dry_run, &loose).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.message.contains("restricted")),
        "{refused:?}"
    );

    for (mode, dynakube, csi) in modes() {
        for pod in restricted_pods() {
            pods.create(&dry_run, &pod).await?;
            let after = injected(&pod, &dynakube, csi, &ns.name);
            if let Err(error) = pods.create(&dry_run, &after).await {
                panic!(
                    "{mode}: the API server refused the injected pod {:?}: {error}\n{}",
                    pod.metadata.generate_name,
                    serde_json::to_string_pretty(&after)?
                );
            }
        }
    }
    Ok(())
}
