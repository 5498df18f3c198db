//! Drop-in on a live cluster: a CRD shaped like the reference's (v1beta4..v1beta6 served, storage moved from
//! v1beta5 to v1beta6 so that `status.storedVersions` holds both) stores DynaKubes; then ours replaces it,
//! the webhook server converts and the operator runs. Every stored object is served in every version without
//! losing a field, is reconciled, and the operator migrates storage until `storedVersions` is `["v1beta1"]`,
//! after which every object still reads the same.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pure_api::crd::ConversionEndpoint;
use serde_json::{Value, json};
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};
use test_kit::process::KillOnDrop;

const CRD: &str = "dynakubes.dynatrace.com";
const NAMESPACE: &str = "dynatrace";
const TOKEN: &str = "dt0c01.dropin";
const TIMEOUT: Duration = Duration::from_secs(120);
const VERSIONS: [&str; 7] = [
    "v1alpha1", "v1beta1", "v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6",
];

/// DynaKubes as users of the reference write them: `(version, name, spec, annotations)`.
fn written(api_url: &str) -> Vec<(&'static str, &'static str, Value, Value)> {
    let enrichment = json!({ "enabled": true, "namespaceSelector": { "matchLabels": { "enrich": "yes" } } });
    vec![
        (
            "v1beta5",
            "cloud-native",
            json!({
                "apiUrl": api_url,
                "skipCertCheck": false,
                "networkZone": "zone-a",
                "metadataEnrichment": enrichment,
                "oneAgent": {
                    "hostGroup": "prod",
                    "cloudNativeFullStack": {
                        "namespaceSelector": { "matchLabels": { "monitor": "true" } },
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": [{ "effect": "NoSchedule", "key": "node-role.kubernetes.io/master", "operator": "Exists" }],
                        "args": ["--set-proxy=none"],
                        "env": [{ "name": "ONEAGENT_ENABLE_VOLUME_STORAGE", "value": "false" }],
                    },
                },
                "activeGate": {
                    "capabilities": ["routing", "kubernetes-monitoring", "dynatrace-api"],
                    "resources": { "requests": { "cpu": "500m", "memory": "512Mi" } },
                },
                "logMonitoring": {},
                "kspm": {},
                "templates": {
                    "logMonitoring": { "imageRef": { "repository": "registry.example/logmodule", "tag": "1.0" } },
                    "kspmNodeConfigurationCollector": { "imageRef": { "repository": "registry.example/ncc", "tag": "2.0" } },
                },
            }),
            json!({ "feature.dynatrace.com/automatic-kubernetes-api-monitoring": "true", "team": "platform" }),
        ),
        (
            "v1beta5",
            "app-only",
            json!({
                "apiUrl": api_url,
                "oneAgent": { "applicationMonitoring": {
                    "namespaceSelector": { "matchExpressions": [{ "key": "team", "operator": "In", "values": ["a", "b"] }] },
                } },
            }),
            json!({ "owner": "apps" }),
        ),
        (
            "v1beta6",
            "host-monitoring",
            json!({
                "apiUrl": api_url,
                "metadataEnrichment": { "enabled": false },
                "oneAgent": { "hostGroup": "infra", "hostMonitoring": {
                    "nodeSelector": { "pool": "infra" },
                    "priorityClassName": "critical",
                } },
                "logMonitoring": { "ingestRuleMatchers": [{ "attribute": "k8s.namespace.name", "values": ["kube-system"] }] },
            }),
            json!({ "feature.dynatrace.com/oneagent-ignore-proxy": "true" }),
        ),
        (
            "v1beta6",
            "classic",
            json!({
                "apiUrl": api_url,
                "oneAgent": { "classicFullStack": {
                    "tolerations": [{ "effect": "NoExecute", "operator": "Exists" }],
                    "env": [{ "name": "A", "value": "b" }],
                } },
                "kspm": {},
                "templates": { "kspmNodeConfigurationCollector": { "imageRef": { "repository": "r", "tag": "t" } } },
            }),
            json!({}),
        ),
    ]
}

fn api(client: &Client, version: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("dynatrace.com", version, "DynaKube"),
        "dynakubes",
    );
    Api::namespaced_with(client.clone(), NAMESPACE, &resource)
}

/// What a version must show of an object: its spec and its user annotations (the conversion's own
/// annotations, which carry what a version cannot express, are left out).
fn visible(object: &Value) -> Value {
    let mut annotations = object["metadata"]["annotations"].clone();
    if let Some(map) = annotations.as_object_mut() {
        map.retain(|k, _| !k.starts_with("internal.operator.dynatrace.com/"));
        if map.is_empty() {
            annotations = Value::Null;
        }
    }
    json!({ "spec": object["spec"], "annotations": annotations, "labels": object["metadata"]["labels"] })
}

/// Whether `outer` holds every field of `inner` with the same value (the API server adds the schema's
/// defaults, such as `dynatraceApiRequestThreshold: 15`, on read).
fn holds(outer: &Value, inner: &Value) -> bool {
    match (outer, inner) {
        (Value::Object(o), Value::Object(i)) => {
            i.iter().all(|(k, v)| o.get(k).is_some_and(|ov| holds(ov, v)))
        }
        _ => outer == inner,
    }
}

/// Reads every object in every version and checks it against what was written: in the version it was
/// written in it holds every written field; in every other version it is what the operator's own conversion
/// makes of that, and converted back it is that again. Returns the readings.
async fn read_all(client: &Client, objects: &[(String, Value)]) -> Vec<(String, String, Value)> {
    let mut readings = Vec::new();
    for (name, original) in objects {
        let written_api_version = original["apiVersion"].as_str().unwrap().to_owned();
        let written_version = written_api_version.trim_start_matches("dynatrace.com/");
        let get = |version: &str| {
            let api = api(client, version);
            let name = name.clone();
            let version = version.to_owned();
            async move {
                let read = api
                    .get(&name)
                    .await
                    .unwrap_or_else(|e| panic!("reading {name} in {version}: {e}"));
                serde_json::to_value(&read).unwrap()
            }
        };
        let as_written = get(written_version).await;
        assert!(
            holds(&visible(&as_written), &visible(original)),
            "{name} read back in {written_version}: {as_written:#}\nwritten: {original:#}"
        );
        for version in VERSIONS {
            let api_version = format!("dynatrace.com/{version}");
            let read = get(version).await;
            let expected = pure_api::dynakube::conversion::convert(as_written.clone(), &api_version).unwrap();
            assert_eq!(
                visible(&read)["spec"],
                visible(&expected)["spec"],
                "{name} read in {version}"
            );
            let back = pure_api::dynakube::conversion::convert(read.clone(), &written_api_version).unwrap();
            assert_eq!(
                visible(&back)["spec"],
                as_written["spec"],
                "{name} read in {version} and converted back to {written_version}"
            );
            readings.push((name.clone(), version.to_owned(), visible(&read)));
        }
    }
    readings
}

#[tokio::test]
async fn the_reference_crd_is_replaced_every_stored_dynakube_is_served_reconciled_and_migrated() {
    let started = Instant::now();
    // Private: this test replaces the DynaKube CRD.
    let cluster = test_kit::start_private_cluster(1).await.unwrap();
    let client = cluster.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply("reference-operator").force();
    // The installation's accounts and RBAC: the operator runs as its ServiceAccount, so the migration's
    // rules are proven too.
    let installation = pure_install::Installation::new("dynatrace-operator:dropin-test");
    assert_eq!(installation.namespace, NAMESPACE);
    let objects: Vec<Value> = installation
        .objects()
        .into_iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "Namespace"
                        | "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect();
    test_kit::setup::apply_objects(&client, &objects, "dropin-test")
        .await
        .unwrap();

    // The reference's CRD, first storing v1beta5, then (an upgrade) v1beta6.
    let tenant = FakeTenant::start(TenantConfig::default(), Listen::Http)
        .await
        .unwrap();
    let api_url = tenant.api_url();
    let mut objects = Vec::new();
    for storage in ["v1beta5", "v1beta6"] {
        crds.patch(
            CRD,
            &apply,
            &Patch::Apply(test_kit::setup::reference_dynakube_crd(storage)),
        )
        .await
        .unwrap();
        test_kit::eventually("the reference CRD to store the version", TIMEOUT, || async {
            let crd = crds.get(CRD).await?;
            let stored = crd.status.and_then(|s| s.stored_versions).unwrap_or_default();
            let established = api(&client, storage).list(&Default::default()).await.is_ok();
            Ok((stored.iter().any(|v| v == storage) && established).then_some(()))
        })
        .await
        .unwrap();
        for (version, name, spec, annotations) in written(&api_url).into_iter().filter(|w| w.0 == storage) {
            let object = json!({
                "apiVersion": format!("dynatrace.com/{version}"), "kind": "DynaKube",
                "metadata": { "name": name, "namespace": NAMESPACE, "annotations": annotations, "labels": { "written-in": version } },
                "spec": spec,
            });
            api(&client, version)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(object.clone()).unwrap(),
                )
                .await
                .unwrap_or_else(|e| panic!("storing {name} through the reference CRD: {e}"));
            objects.push((name.to_owned(), object));
        }
    }
    let stored = crds
        .get(CRD)
        .await
        .unwrap()
        .status
        .unwrap()
        .stored_versions
        .unwrap();
    assert_eq!(stored, ["v1beta5", "v1beta6"]);

    // The webhook server (conversion) with a certificate of the test's CA, and our CRDs pointing at it.
    let dir = tempfile::tempdir().unwrap();
    let ca = test_kit::pki::CertificateAuthority::new("dropin-test-ca").unwrap();
    let leaf = ca
        .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), leaf.key_pem).unwrap();
    let (port, metrics_port) = (
        test_kit::cluster::free_port().unwrap(),
        test_kit::cluster::free_port().unwrap(),
    );
    let webhook_log = dir.path().join("webhook.log");
    let log = std::fs::File::create(&webhook_log).unwrap();
    let _webhook = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
            .args([
                "webhook-server",
                "--bind-address",
                "127.0.0.1",
                "--namespace",
                NAMESPACE,
            ])
            .args([
                "--port",
                &port.to_string(),
                "--metrics-port",
                &metrics_port.to_string(),
            ])
            .arg("--certs-dir")
            .arg(dir.path())
            .env("KUBECONFIG", cluster.kubeconfig())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = ConversionEndpoint::Url {
        url: format!("https://127.0.0.1:{port}/convert"),
        ca_bundle_pem: ca.cert_pem(),
    };
    io_webhook::registration::apply_crds(&client, &endpoint, "dropin-test")
        .await
        .unwrap();
    let replaced = Instant::now();
    test_kit::eventually("the webhook server to be ready", TIMEOUT, || async {
        Ok(test_kit::http_get(metrics_port, "/readyz")
            .await
            .filter(|a| a.starts_with("HTTP/1.1 200")))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", test_kit::process::log_tail(&webhook_log, 30)));

    // Served in every version, nothing lost, before the operator runs.
    let before = read_all(&client, &objects).await;

    // The operator: it reconciles them and migrates storage.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "namespace": NAMESPACE },
        "stringData": { "apiToken": TOKEN, "dataIngestToken": TOKEN },
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    for (name, _) in &objects {
        let mut secret = secret.clone();
        secret.metadata.name = Some(name.clone());
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }
    let health = test_kit::cluster::free_port().unwrap();
    let operator_log = dir.path().join("operator.log");
    let log = std::fs::File::create(&operator_log).unwrap();
    let operator_kubeconfig = dir.path().join("operator.kubeconfig");
    cluster
        .service_account_kubeconfig(NAMESPACE, pure_install::OPERATOR, &operator_kubeconfig)
        .await
        .unwrap();
    let _operator = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
            .args(["operator", "--namespace", NAMESPACE, "--pod-name", "operator-0"])
            .args(["--health-address", &format!("127.0.0.1:{health}")])
            .env("KUBECONFIG", &operator_kubeconfig)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let fail = |e: anyhow::Error| -> ! {
        panic!(
            "{e:#}\n--- operator\n{}\n--- webhook\n{}",
            test_kit::process::log_tail(&operator_log, 40),
            test_kit::process::log_tail(&webhook_log, 20)
        )
    };
    for (name, _) in &objects {
        test_kit::eventually(
            &format!("the operator to write the status of {name}"),
            TIMEOUT,
            || async {
                let read = api(&client, "v1beta1").get(name).await?;
                let status = read.data.get("status").cloned().unwrap_or(Value::Null);
                Ok(status.get("phase").is_some().then_some(()))
            },
        )
        .await
        .unwrap_or_else(|e| fail(e));
    }
    test_kit::eventually("the operator to migrate storage to v1beta1", TIMEOUT, || async {
        let crd = crds.get(CRD).await?;
        let stored = crd.status.and_then(|s| s.stored_versions).unwrap_or_default();
        Ok((stored == ["v1beta1"]).then_some(()))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let migrated = replaced.elapsed();

    // After the migration every object reads as before in every version.
    let after = read_all(&client, &objects).await;
    assert_eq!(after, before, "what every version shows after the migration");
    // Proof that the objects were re-encoded, not only the list trimmed: with v1beta5 and v1beta6 gone from
    // the CRD, the API server can no longer decode an object still stored at either.
    let mut crd = crds.get(CRD).await.unwrap();
    crd.spec
        .versions
        .retain(|v| !matches!(v.name.as_str(), "v1beta5" | "v1beta6"));
    crd.metadata.managed_fields = None;
    crds.replace(CRD, &PostParams::default(), &crd).await.unwrap();
    test_kit::eventually("the API server to drop v1beta6", TIMEOUT, || async {
        Ok(api(&client, "v1beta6")
            .list(&Default::default())
            .await
            .is_err()
            .then_some(()))
    })
    .await
    .unwrap();
    for (name, original) in &objects {
        let read = api(&client, "v1beta1")
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name} is still stored at a dropped version: {e}"));
        let expected =
            pure_api::dynakube::conversion::convert(original.clone(), "dynatrace.com/v1beta1").unwrap();
        assert!(
            holds(&serde_json::to_value(&read).unwrap()["spec"], &expected["spec"]),
            "{name}"
        );
    }
    let log = std::fs::read_to_string(&operator_log).unwrap();
    assert!(
        log.contains("storage migration"),
        "the operator logs the migration:\n{log}"
    );
    eprintln!(
        "drop-in: {} objects, CRD replaced to storage migrated in {:.1} s, whole test {:.1} s",
        objects.len(),
        migrated.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
