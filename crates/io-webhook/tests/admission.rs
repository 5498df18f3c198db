//! The webhooks through a real API server: the CRDs install, the API server calls `/validate` and
//! `/convert` over HTTPS, and users see the answers `kubectl` would show.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use io_webhook::registration;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::{DynaKube, v1alpha1, v1beta2, v1beta3, v1beta4, v1beta5, v1beta6};
use pure_api::oneagent::OneAgent;
use serde_json::{Value, json};
use test_kit::TestNamespace;

const API_URL: &str = "https://abc12345.live.dynatrace.com/api";
const WAIT: Duration = Duration::from_secs(60);

/// The webhook server and CRDs shared by the tests of this binary. The server runs on a runtime of its
/// own, so it outlives each test's runtime.
struct Env {
    kubeconfig: std::path::PathBuf,
}

fn env() -> &'static Env {
    static ENV: test_kit::PerBinary<Env> = test_kit::PerBinary::new();
    ENV.get_or_start("the webhook test environment", || async {
        let (env, server) = set_up().await?;
        // The server's tasks run on this runtime for the life of the test binary.
        Ok((env, async move { std::mem::forget(server) }))
    })
}

async fn set_up() -> anyhow::Result<(Env, common::TestServer)> {
    let cluster = test_kit::shared_cluster().await?;
    let client = cluster.client().await?;
    let server = common::start(Some(io_webhook::ClusterCache::start(
        client.clone(),
        &Default::default(),
    )))
    .await;
    let base = format!("https://{}", server.server.addr);

    // CRDs with conversion through our server, and validation in test namespaces.
    let endpoint = pure_api::crd::ConversionEndpoint::Url {
        url: format!("{base}/convert"),
        ca_bundle_pem: server.ca_pem.clone(),
    };
    test_kit::install_crds(&client, &pure_api::crd::all(&endpoint)).await?;
    let tests_only = LabelSelector {
        match_labels: Some([(test_kit::TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
        ..Default::default()
    };
    let configuration = registration::validating_configuration(
        "dynatrace-webhook-tests",
        &format!("{base}/validate"),
        &server.ca_pem,
        Some(tests_only),
    );
    registration::apply_validating_configuration(&client, &configuration, "webhook-tests").await?;

    // The API server picks webhook configurations up asynchronously: wait until it asks us.
    let probe = TestNamespace::create_in(cluster).await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(probe.client.clone(), &probe.name);
    test_kit::eventually("the API server to call the validating webhook", WAIT, || async {
        // The example URL passes the schema and only the webhook rejects it.
        let bad = dynakube("probe", json!({ "apiUrl": pure_api::dynakube::EXAMPLE_API_URL }));
        match dynakubes.create(&PostParams::default(), &bad).await {
            Err(kube::Error::Api(e)) if e.message.contains("error(s) found") => Ok(Some(())),
            Ok(_) => {
                dynakubes.delete("probe", &Default::default()).await?;
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    })
    .await?;
    Ok((
        Env {
            kubeconfig: cluster.kubeconfig().to_owned(),
        },
        server,
    ))
}

fn dynakube(name: &str, spec: Value) -> DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube", "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap()
}

async fn install_csi_driver_marker(ns: &TestNamespace) -> anyhow::Result<()> {
    common::install_csi_driver_marker(&ns.client, &ns.name).await
}

async fn namespace() -> anyhow::Result<TestNamespace> {
    let _ = env();
    TestNamespace::create().await
}

fn denial(result: Result<DynaKube, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// The YAML blocks of the README that hold a DynaKube.
fn readme_dynakubes() -> Vec<Value> {
    let readme = include_str!("../../../README.md");
    readme
        .split("```yaml")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("kind: DynaKube"))
        .map(|block| serde_saphyr::from_str::<Value>(block).expect("README YAML parses"))
        .collect()
}

/// Every DynaKube version the CRD serves.
const VERSIONS: [&str; 7] = [
    "v1alpha1", "v1beta1", "v1beta2", "v1beta3", "v1beta4", "v1beta5", "v1beta6",
];

/// The DynaKube API of the test's namespace in `version`, untyped, so that any version's object is
/// written and read as it is.
fn dynakubes_as(ns: &TestNamespace, version: &str) -> Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("dynatrace.com", version, "DynaKube");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "dynakubes");
    Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
}

/// The version of an object's `apiVersion`.
fn version_of(object: &Value) -> String {
    object["apiVersion"]
        .as_str()
        .and_then(|v| v.strip_prefix("dynatrace.com/"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn readme_examples_of_every_mode_are_admitted() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let examples = readme_dynakubes();
    // Each documented version shows all four modes.
    let mut versions: Vec<String> = examples.iter().map(version_of).collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions, ["v1beta1", "v1beta6"]);
    for version in &versions {
        let mut modes: Vec<String> = examples
            .iter()
            .filter(|e| version_of(e) == *version)
            .flat_map(|e| {
                e["spec"]["oneAgent"]
                    .as_object()
                    .into_iter()
                    .flat_map(|o| o.keys().filter(|k| k.as_str() != "hostGroup").cloned())
            })
            .collect();
        modes.sort();
        assert_eq!(
            modes,
            [
                "applicationMonitoring",
                "classicFullStack",
                "cloudNativeFullStack",
                "hostMonitoring"
            ],
            "the {version} examples"
        );
    }
    for example in examples {
        let version = version_of(&example);
        let mut object: kube::api::DynamicObject = serde_json::from_value(example)?;
        object.metadata.namespace = None;
        let name = object.name_any();
        dynakubes_as(&ns, &version)
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| anyhow::anyhow!("README example {name} ({version}) was not admitted: {e}"))?;
    }
    Ok(())
}

/// The samples under `samples/dynakube/` (every served version, every mode) are admitted in the version they
/// are written in, and read back in it with every field they set.
#[tokio::test]
async fn the_samples_of_every_version_are_admitted_as_written() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let samples = test_kit::samples::dynakubes()?;
    for sample in &samples {
        let written = sample.confined(API_URL, &format!("sample-{}", ns.name));
        let object: kube::api::DynamicObject = serde_json::from_value(written.clone())?;
        let api = dynakubes_as(&ns, &sample.version);
        let name = sample.name();
        api.create(&PostParams::default(), &object)
            .await
            .map_err(|e| anyhow::anyhow!("the sample {name} was not admitted: {e}"))?;
        let read = serde_json::to_value(api.get(&name).await?)?;
        assert!(
            contains(&read["spec"], &written["spec"]),
            "{name} reads back without a field it sets:\n{:#}\nwritten:\n{:#}",
            read["spec"],
            written["spec"]
        );
    }
    Ok(())
}

/// Whether `outer` has everything `inner` has (objects key by key; anything else equal).
fn contains(outer: &Value, inner: &Value) -> bool {
    match (outer, inner) {
        (Value::Object(outer), Value::Object(inner)) => inner
            .iter()
            .all(|(key, value)| outer.get(key).is_some_and(|o| contains(o, value))),
        _ => outer == inner,
    }
}

/// A DynaKube written in each served version (the README's cloud-native example, as that version shows
/// it) is read back in every other version, and then in its own version unchanged.
#[tokio::test]
async fn a_dynakube_written_in_every_version_reads_back_in_every_other() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let example = readme_dynakubes()
        .into_iter()
        .find(|e| e["metadata"]["name"] == "cloud-native-current")
        .expect("the README's v1beta6 cloud-native example");
    let mut seed: kube::api::DynamicObject = serde_json::from_value(example)?;
    seed.metadata.namespace = None;
    seed.metadata.name = Some("seed".into());
    dynakubes_as(&ns, "v1beta6")
        .create(&PostParams::default(), &seed)
        .await?;
    for version in VERSIONS {
        // As a client of `version` would write it: what that version shows of the seed, under a new name
        // and with a node selector of its own (two DynaKubes may not select the same nodes).
        let shown = dynakubes_as(&ns, version).get("seed").await?;
        let mut object = serde_json::to_value(&shown)?;
        let name = format!("written-in-{version}");
        object["metadata"] = json!({ "name": name });
        for mode in ["cloudNativeFullStack", "classicFullStack"] {
            for path in [&["spec", "oneAgent", mode][..], &["spec", mode][..]] {
                let mut at = &mut object;
                for key in path {
                    at = &mut at[*key];
                }
                if at.is_object() {
                    at["nodeSelector"] = json!({ "node-pool": name });
                }
            }
        }
        let object: kube::api::DynamicObject = serde_json::from_value(object)?;
        let created = dynakubes_as(&ns, version)
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| anyhow::anyhow!("writing a DynaKube in {version}: {e}"))?;
        for other in VERSIONS {
            let read = dynakubes_as(&ns, other)
                .get(&name)
                .await
                .map_err(|e| anyhow::anyhow!("reading {name} in {other}: {e}"))?;
            assert_eq!(
                read.types.as_ref().map(|t| t.api_version.as_str()),
                Some(format!("dynatrace.com/{other}").as_str())
            );
        }
        let back = dynakubes_as(&ns, version).get(&name).await?;
        assert_eq!(
            back.data["spec"], created.data["spec"],
            "{name}: the spec reads back as written after reads in every version"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_seed_invalid_dynakube_is_denied_with_both_api_url_errors() -> anyhow::Result<()> {
    let ns = namespace().await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let invalid = dynakube(
        "invalid-dynakube",
        json!({ "apiUrl": "https://ENVIRONMENTID.live.dynatrace.com", "oneAgent": { "classicFullStack": { "nodeSelector": { "none": "x" } } } }),
    );
    let message = denial(dynakubes.create(&PostParams::default(), &invalid).await);
    assert!(
        message.contains("admission webhook \"webhook.dynatrace.com\" denied the request"),
        "{message}"
    );
    assert!(message.contains("2 error(s) found in the Dynakube"), "{message}");
    assert!(message.contains(
        "1. The DynaKube's specification is missing the API URL or still has the example value set"
    ));
    assert!(message.contains("2. The DynaKube's specification has an invalid API URL value set"));
    assert!(message.contains("including the /api postfix"));
    assert!(
        dynakubes.get_opt("invalid-dynakube").await?.is_none(),
        "a denied object is not stored"
    );
    Ok(())
}

#[tokio::test]
async fn node_selector_conflicts_are_found_from_the_nodes_both_select() -> anyhow::Result<()> {
    let ns = namespace().await?;
    let (pool, zone) = (format!("pool-{}", ns.name), format!("zone-{}", ns.name));
    ns.create_node(
        "shared",
        &[(pool.as_str(), "a"), (zone.as_str(), "z")],
        Vec::new(),
    )
    .await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let first = dynakube(
        "by-pool",
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": { "nodeSelector": { pool.clone(): "a" } } } }),
    );
    dynakubes.create(&PostParams::default(), &first).await?;
    // {pool: a} and {zone: z} are no subsets of each other; the node they both select is the conflict.
    let second = dynakube(
        "by-zone",
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": { "nodeSelector": { zone.clone(): "z" } } } }),
    );
    let message = denial(dynakubes.create(&PostParams::default(), &second).await);
    assert!(
        message.contains(&format!("conflicts with DynaKube {}/by-pool", ns.name)),
        "{message}"
    );
    assert!(message.contains(&format!("{}-shared", ns.name)), "{message}");
    Ok(())
}

#[tokio::test]
async fn objects_written_as_v1beta1_read_back_through_v1alpha1_unchanged() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let original = dynakube(
        "round-trip",
        json!({
            "apiUrl": API_URL,
            "namespaceSelector": { "matchLabels": { "round-trip": ns.name } },
            "oneAgent": { "cloudNativeFullStack": {
                "nodeSelector": { "round-trip": ns.name },
                "args": ["--set-host-group=prod"],
                "tolerations": [{ "key": "dedicated", "operator": "Exists", "effect": "NoSchedule" }],
            } },
        }),
    );
    let created = dynakubes.create(&PostParams::default(), &original).await?;

    let old: Api<v1alpha1::DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let as_alpha = old.get("round-trip").await?;
    assert!(
        as_alpha.spec.classic_full_stack.is_none(),
        "v1alpha1 has no cloudNativeFullStack to show"
    );
    // Written back through v1alpha1, as an old client would do.
    old.replace("round-trip", &PostParams::default(), &as_alpha)
        .await?;

    let back = dynakubes.get("round-trip").await?;
    assert_eq!(
        back.spec, created.spec,
        "nothing was lost on the way through v1alpha1"
    );
    assert_eq!(
        back.metadata.annotations, created.metadata.annotations,
        "no conversion annotation is stored"
    );
    Ok(())
}

/// Reads the DynaKube `name` through version `K` and writes it back unchanged, as a client of that version
/// would; returns what that version showed.
async fn read_and_write_back<K>(ns: &TestNamespace, name: &str) -> anyhow::Result<Value>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(ns.client.clone(), &ns.name);
    let read = api.get(name).await?;
    api.replace(name, &PostParams::default(), &read).await?;
    Ok(serde_json::to_value(read)?)
}

#[tokio::test]
async fn a_v1beta6_object_is_read_and_written_through_every_version_without_loss() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let latest: Api<v1beta6::DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let original: v1beta6::DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta6", "kind": "DynaKube", "metadata": { "name": "latest" },
        "spec": {
            "apiUrl": API_URL,
            "oneAgent": {
                "hostGroup": "prod",
                "cloudNativeFullStack": {
                    "namespaceSelector": { "matchLabels": { "latest": ns.name } },
                    "nodeSelector": { "latest": ns.name },
                    "storageHostPath": "/var/lib/dynatrace",
                    "secCompProfile": "oneagent.json",
                },
            },
            "metadataEnrichment": { "namespaceSelector": { "matchLabels": { "enrich": "yes" } } },
            "telemetryIngest": { "protocols": ["otlp", "zipkin"] },
            "kspm": {},
        },
    }))?;
    let created = latest.create(&PostParams::default(), &original).await?;
    assert_eq!(
        created.spec.dynatrace_api_request_threshold,
        Some(15),
        "the reference's default applies"
    );
    assert_eq!(
        created.spec.metadata_enrichment.as_ref().and_then(|m| m.enabled),
        Some(true)
    );

    let stored: DynaKube = Api::namespaced(ns.client.clone(), &ns.name).get("latest").await?;
    assert_eq!(
        stored
            .spec
            .one_agent
            .as_ref()
            .and_then(|o| o.host_group.as_deref()),
        Some("prod")
    );
    assert!(
        stored.spec.namespace_selector.is_some(),
        "the per-mode selector is the internal one"
    );

    let v1beta3 = read_and_write_back::<v1beta3::DynaKube>(&ns, "latest").await?;
    assert!(
        v1beta3["spec"].get("telemetryIngest").is_none(),
        "v1beta3 has no telemetryIngest"
    );
    let v1alpha1 = read_and_write_back::<v1alpha1::DynaKube>(&ns, "latest").await?;
    assert!(v1alpha1["spec"].get("classicFullStack").is_none());
    read_and_write_back::<DynaKube>(&ns, "latest").await?;
    read_and_write_back::<v1beta2::DynaKube>(&ns, "latest").await?;
    read_and_write_back::<v1beta4::DynaKube>(&ns, "latest").await?;
    read_and_write_back::<v1beta5::DynaKube>(&ns, "latest").await?;

    let back = latest.get("latest").await?;
    assert_eq!(
        back.spec, created.spec,
        "nothing was lost on the way through every version"
    );
    assert_eq!(
        back.metadata.annotations, created.metadata.annotations,
        "no conversion annotation is stored"
    );
    Ok(())
}

#[tokio::test]
async fn a_denial_names_the_field_as_written_in_v1beta6() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let latest: Api<v1beta6::DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let bad: v1beta6::DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta6", "kind": "DynaKube", "metadata": { "name": "bad-selector" },
        "spec": {
            "apiUrl": API_URL,
            "oneAgent": { "cloudNativeFullStack": {
                "namespaceSelector": { "matchLabels": { "not a key!": "x" } },
                "nodeSelector": { "bad-selector": ns.name },
            } },
        },
    }))?;
    let message = match latest.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    assert!(
        message.contains("spec.oneAgent.cloudNativeFullStack.namespaceSelector is invalid"),
        "{message}"
    );
    assert!(!message.contains("spec.namespaceSelector"), "{message}");
    Ok(())
}

/// The HEAD rules (§2.4) hold for a v1beta6 object, every problem in one denial, named as v1beta6 spells it.
#[tokio::test]
async fn the_head_oneagent_rules_deny_a_v1beta6_object_naming_its_fields() -> anyhow::Result<()> {
    let ns = namespace().await?;
    install_csi_driver_marker(&ns).await?;
    let latest: Api<v1beta6::DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let bad: v1beta6::DynaKube = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta6", "kind": "DynaKube", "metadata": { "name": "bad-args" },
        "spec": {
            "apiUrl": API_URL,
            "networkZone": "zone\nb",
            "oneAgent": {
                "hostGroup": "prod\tx",
                "cloudNativeFullStack": {
                    "version": "1.277.0",
                    "args": ["--set-host-id-source=fqdn", "--set-host-group=a", "--set-host-group=b"],
                    "nodeSelector": { "bad-args": ns.name },
                },
            },
        },
    }))?;
    let message = match latest.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    for expected in [
        "5 error(s) found",
        "spec.oneAgent.cloudNativeFullStack.version \"1.277.0\" is not a OneAgent version",
        "spec.oneAgent.cloudNativeFullStack.args sets --set-host-id-source",
        "spec.oneAgent.cloudNativeFullStack.args has --set-host-group more than once",
        "spec.networkZone",
        "spec.oneAgent.hostGroup",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    Ok(())
}

#[tokio::test]
async fn schema_rules_hold_without_the_webhook() -> anyhow::Result<()> {
    let _ = env();
    let cluster = test_kit::shared_cluster().await?;
    let client: Client = cluster.client().await?;
    // A namespace the webhook does not watch stands in for "the webhook is down".
    let name = format!("no-webhook-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } }))?;
    namespaces.create(&PostParams::default(), &namespace).await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(client, &name);

    let two_modes = dynakube(
        "two-modes",
        json!({ "apiUrl": API_URL, "oneAgent": { "classicFullStack": {}, "hostMonitoring": {} } }),
    );
    let message = denial(dynakubes.create(&PostParams::default(), &two_modes).await);
    assert!(message.contains("multiple OneAgent modes"), "{message}");
    let image_without_csi = dynakube(
        "image-without-csi",
        json!({ "apiUrl": API_URL, "oneAgent": { "applicationMonitoring": { "codeModulesImage": "registry/cm:1", "useCSIDriver": false } } }),
    );
    let message = denial(dynakubes.create(&PostParams::default(), &image_without_csi).await);
    assert!(message.contains("codeModulesImage is set"), "{message}");
    let dotted = dynakube("dk.with.dots", json!({ "apiUrl": API_URL }));
    let message = denial(dynakubes.create(&PostParams::default(), &dotted).await);
    assert!(message.contains("DNS-1035"), "{message}");
    namespaces.delete(&name, &Default::default()).await?;
    Ok(())
}

#[tokio::test]
async fn oneagent_resources_are_validated_too() -> anyhow::Result<()> {
    let ns = namespace().await?;
    let oneagents: Api<OneAgent> = Api::namespaced(ns.client.clone(), &ns.name);
    let oneagent = |name: &str, api_url: &str| -> OneAgent {
        serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent", "metadata": { "name": name },
            "spec": { "apiUrl": api_url, "nodeSelector": { "pool": "legacy" } },
        }))
        .unwrap()
    };
    oneagents
        .create(&PostParams::default(), &oneagent("oneagent", API_URL))
        .await?;
    let message = match oneagents
        .create(&PostParams::default(), &oneagent("broken", "https://example.com"))
        .await
    {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    assert!(message.contains("1 error(s) found in the OneAgent"), "{message}");
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_describes_the_modes() -> anyhow::Result<()> {
    let env = env();
    let tools = test_kit::Tools::locate()?;
    let output = tokio::process::Command::new(&tools.kubectl)
        .args(["--kubeconfig", &env.kubeconfig.display().to_string()])
        .args(["explain", "dynakube.spec.oneAgent.cloudNativeFullStack"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubectl explain failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("cached per node by the CSI driver"), "{text}");
    assert!(
        text.contains("codeModulesImage") && text.contains("nodeSelector"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_api_url_gets_the_webhooks_messages_not_the_schemas() -> anyhow::Result<()> {
    let ns = namespace().await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    let empty = dynakube(
        "empty-api-url",
        json!({ "apiUrl": "", "oneAgent": { "classicFullStack": {} } }),
    );
    let message = denial(dynakubes.create(&PostParams::default(), &empty).await);
    assert!(
        message.contains("admission webhook \"webhook.dynatrace.com\" denied the request"),
        "{message}"
    );
    assert!(
        message.contains("missing the API URL or still has the example value set"),
        "{message}"
    );
    assert!(message.contains("including the /api postfix"), "{message}");
    assert!(!message.contains("should be at least 1 chars long"), "{message}");

    let oneagents: Api<OneAgent> = Api::namespaced(ns.client.clone(), &ns.name);
    let oneagent: OneAgent = serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1alpha1", "kind": "OneAgent", "metadata": { "name": "empty-api-url" },
        "spec": { "apiUrl": "" },
    }))?;
    let message = match oneagents.create(&PostParams::default(), &oneagent).await {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    assert!(message.contains("missing the API URL"), "{message}");
    Ok(())
}

#[tokio::test]
async fn the_csi_driver_rule_follows_the_daemonset_from_the_watch() -> anyhow::Result<()> {
    let ns = namespace().await?;
    let dynakubes: Api<DynaKube> = Api::namespaced(ns.client.clone(), &ns.name);
    // Dry runs: the webhook answers, nothing is stored, so the DynaKubes do not conflict with each other.
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let cloud_native = |name: &str| {
        dynakube(
            name,
            json!({ "apiUrl": API_URL, "oneAgent": { "cloudNativeFullStack": { "nodeSelector": { "csi-test": ns.name } } } }),
        )
    };
    let message = denial(dynakubes.create(&dry_run, &cloud_native("before")).await);
    assert!(message.contains("needs the CSI driver"), "{message}");

    install_csi_driver_marker(&ns).await?;
    test_kit::eventually("the DaemonSet to reach the webhook's cache", WAIT, || async {
        match dynakubes.create(&dry_run, &cloud_native("after")).await {
            Ok(_) => Ok(Some(())),
            Err(kube::Error::Api(e)) if e.message.contains("needs the CSI driver") => Ok(None),
            Err(err) => Err(err.into()),
        }
    })
    .await?;
    // Validating reads the cache: the API server counts no GET of a DaemonSet for these admissions.
    let gets_before = daemonset_gets(&ns.client).await?;
    for i in 0..5 {
        dynakubes
            .create(&dry_run, &cloud_native(&format!("more-{i}")))
            .await?;
    }
    assert_eq!(
        daemonset_gets(&ns.client).await?,
        gets_before,
        "GETs of DaemonSets"
    );

    Api::<DaemonSet>::namespaced(ns.client.clone(), &ns.name)
        .delete(pure_api::dynakube::names::CSI_DAEMONSET, &Default::default())
        .await?;
    test_kit::eventually(
        "the DaemonSet's deletion to reach the webhook's cache",
        WAIT,
        || async {
            match dynakubes.create(&dry_run, &cloud_native("gone")).await {
                Ok(_) => {
                    dynakubes.delete("gone", &Default::default()).await?;
                    Ok(None)
                }
                Err(kube::Error::Api(e)) if e.message.contains("needs the CSI driver") => Ok(Some(())),
                Err(err) => Err(err.into()),
            }
        },
    )
    .await?;
    Ok(())
}

/// GET requests for DaemonSets the API server has served, from its metrics.
async fn daemonset_gets(client: &Client) -> anyhow::Result<u64> {
    let metrics = client
        .request_text(axum::http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(metrics
        .lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains(r#"resource="daemonsets""#)
                && line.contains(r#"verb="GET""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
