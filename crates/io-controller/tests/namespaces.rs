//! The namespace mapping controller on a real control plane: labels that follow the DynaKubes' selectors
//! and the namespaces' labels, new namespaces labelled within seconds, the operator's and ignored
//! namespaces never labelled, conflicts reported without blocking anything, the per-namespace Secrets
//! created, updated and deleted with the mapping, and 1,000 namespaces.
//!
//! Namespaces are cluster-wide and a DynaKube with a broad selector maps every namespace, so tests of one
//! binary would see each other's namespaces and DynaKubes (and two controllers with different operator
//! namespaces would fight). Each test therefore has a private cluster (about 6 s to start) with its own
//! controller; the tests still run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use io_controller::namespaces::{self, NamespaceConfig};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::DynaKube;
use serde_json::{Value, json};

const OPERATOR_NS: &str = "dynatrace";
const INSTANCE_LABEL: &str = "dynakube.internal.dynatrace.com/instance";
const INIT_SECRET: &str = "dynatrace-dynakube-config";
const INGEST_SECRET: &str = "dynatrace-data-ingest-endpoint";
const API_URL: &str = "https://abc12345.live.dynatrace.com/api";
const WAIT: Duration = Duration::from_secs(30);

/// A private cluster with the CRDs, the operator namespace and the controller running in-process.
struct Env {
    _cluster: test_kit::Cluster,
    client: Client,
    controller: test_kit::RunningTask,
}

impl Env {
    async fn start() -> Self {
        let cluster = test_kit::start_private_cluster(1).await.unwrap();
        let client = cluster.client().await.unwrap();
        // The CRDs convert through the webhook Service in the operator namespace.
        assert_eq!(OPERATOR_NS, test_kit::setup::OPERATOR_NAMESPACE);
        test_kit::install_operator_crds(&client).await.unwrap();
        create_namespace(&client, OPERATOR_NS, &[]).await;
        let controller_client = client.clone();
        let controller = test_kit::RunningTask::spawn(|stop| {
            namespaces::run(controller_client, NamespaceConfig::new(OPERATOR_NS), stop)
        });
        Self {
            _cluster: cluster,
            client,
            controller,
        }
    }

    async fn stop(self) {
        self.controller.stop().await;
    }

    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    fn dynakubes(&self) -> Api<DynaKube> {
        Api::namespaced(self.client.clone(), OPERATOR_NS)
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        create_namespace(&self.client, name, labels).await;
    }

    /// Sets (or with `None` removes) labels of a namespace.
    async fn relabel(&self, name: &str, labels: Value) {
        self.namespaces()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": labels } })),
            )
            .await
            .unwrap();
    }

    async fn create_dynakube(&self, name: &str, spec: Value, annotations: Value) {
        let mut spec = spec;
        spec["apiUrl"] = json!(API_URL);
        let dynakube: DynaKube = serde_json::from_value(json!({
            "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
            "metadata": { "name": name, "annotations": annotations },
            "spec": spec,
        }))
        .unwrap();
        self.dynakubes()
            .create(&PostParams::default(), &dynakube)
            .await
            .unwrap();
    }

    async fn patch_dynakube(&self, name: &str, patch: Value) {
        self.dynakubes()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn delete_dynakube(&self, name: &str) {
        self.dynakubes()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// What the DynaKube reconcile writes once it read the connection info.
    async fn set_tenant_uuid(&self, name: &str, uuid: &str) {
        self.dynakubes()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "status": { "oneAgent": { "connectionInfoStatus": { "tenantUUID": uuid } } } }),
                ),
            )
            .await
            .unwrap();
    }

    async fn token_secret(&self, name: &str, tokens: Value) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": tokens,
        }))
        .unwrap();
        self.secrets(OPERATOR_NS)
            .patch(
                name,
                &PatchParams::apply("namespaces-tests").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    /// Namespace name → value of the instance label, for every namespace that has one.
    async fn labels(&self) -> BTreeMap<String, String> {
        self.namespaces()
            .list_metadata(&ListParams::default().labels(INSTANCE_LABEL))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|ns| {
                let value = ns.labels()[INSTANCE_LABEL].clone();
                (ns.name_any(), value)
            })
            .collect()
    }

    /// Waits until exactly `expected` namespaces carry the instance label, with these values.
    async fn wait_for_labels(&self, what: &str, expected: &[(&str, &str)]) {
        let expected: BTreeMap<String, String> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let result = test_kit::eventually(what, WAIT, || async {
            Ok((self.labels().await == expected).then_some(()))
        })
        .await;
        if let Err(error) = result {
            panic!(
                "{error:#}; labels now: {:?}, expected {expected:?}",
                self.labels().await
            );
        }
    }

    async fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.secrets(namespace).get_opt(name).await.unwrap()
    }

    async fn wait_for_secret(&self, namespace: &str, name: &str, check: impl Fn(&Secret) -> bool) -> Secret {
        test_kit::eventually(&format!("Secret {namespace}:{name}"), WAIT, || async {
            Ok(self.secret(namespace, name).await.filter(&check))
        })
        .await
        .unwrap()
    }

    async fn wait_for_no_secret(&self, namespace: &str, name: &str) {
        test_kit::eventually(&format!("Secret {namespace}:{name} to go"), WAIT, || async {
            Ok(self.secret(namespace, name).await.is_none().then_some(()))
        })
        .await
        .unwrap();
    }

    async fn conflict_condition(&self, name: &str) -> Option<Condition> {
        self.dynakubes()
            .get(name)
            .await
            .unwrap()
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "NamespaceConflict")
    }

    async fn wait_for_condition(&self, name: &str, check: impl Fn(&Condition) -> bool) -> Condition {
        test_kit::eventually(
            &format!("the NamespaceConflict condition of {name}"),
            WAIT,
            || async { Ok(self.conflict_condition(name).await.filter(&check)) },
        )
        .await
        .unwrap()
    }

    /// (reason, note) of the events about the DynaKube `name`.
    async fn events(&self, name: &str) -> Vec<(String, String)> {
        Api::<Event>::namespaced(self.client.clone(), OPERATOR_NS)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("DynaKube") && r.name.as_deref() == Some(name))
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let namespace: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels },
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

fn cloud_native(selector: Value) -> Value {
    json!({ "namespaceSelector": selector, "oneAgent": { "cloudNativeFullStack": {} } })
}

fn application_monitoring(selector: Value) -> Value {
    json!({ "namespaceSelector": selector, "oneAgent": { "applicationMonitoring": {} } })
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn config(secret: &Secret) -> Value {
    serde_json::from_str(&data(secret, "config")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_follow_selectors_and_namespace_labels() {
    let env = Env::start().await;
    env.relabel(OPERATOR_NS, json!({ "inject": "yes" })).await;
    env.namespace("apps", &[("inject", "yes")]).await;
    env.namespace("web", &[]).await;
    env.namespace("kube-apps", &[("inject", "yes")]).await;
    env.create_dynakube(
        "dk",
        cloud_native(json!({ "matchLabels": { "inject": "yes" } })),
        json!({}),
    )
    .await;
    env.wait_for_labels("apps labelled", &[("apps", "dk")]).await;
    let apps = env.namespaces().get("apps").await.unwrap();
    assert_eq!(
        apps.annotations()
            .get("dynatrace.com/updated-via-operator")
            .map(String::as_str),
        Some("true")
    );

    env.relabel("web", json!({ "inject": "yes" })).await;
    env.wait_for_labels("web labelled", &[("apps", "dk"), ("web", "dk")])
        .await;
    env.relabel("apps", json!({ "inject": "no" })).await;
    env.wait_for_labels("apps unlabelled", &[("web", "dk")]).await;

    // A new namespace is labelled within seconds of its creation.
    let created = Instant::now();
    env.namespace("fresh", &[("inject", "yes")]).await;
    env.wait_for_labels("fresh labelled", &[("fresh", "dk"), ("web", "dk")])
        .await;
    let took = created.elapsed();
    println!("a new namespace was labelled {took:?} after its creation");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // The DynaKube's selector changes: an expression now.
    env.patch_dynakube(
        "dk",
        json!({ "spec": { "namespaceSelector": { "matchLabels": null, "matchExpressions": [
            { "key": "inject", "operator": "In", "values": ["no"] },
        ] } } }),
    )
    .await;
    env.wait_for_labels("apps relabelled by the new selector", &[("apps", "dk")])
        .await;

    // Another DynaKube takes over a namespace when the first stops selecting it.
    env.create_dynakube(
        "other",
        application_monitoring(json!({ "matchLabels": { "team": "b" } })),
        json!({}),
    )
    .await;
    env.relabel("apps", json!({ "inject": "yes", "team": "b" })).await;
    env.wait_for_labels("apps moved to other", &[("apps", "other")])
        .await;

    // A mode without injection drops its labels; deleting a DynaKube drops its labels.
    env.patch_dynakube(
        "other",
        json!({ "spec": { "oneAgent": { "applicationMonitoring": null, "hostMonitoring": {} } } }),
    )
    .await;
    env.wait_for_labels("hostMonitoring labels nothing", &[]).await;
    env.relabel("web", json!({ "inject": "no" })).await;
    env.wait_for_labels("web labelled again", &[("web", "dk")]).await;
    env.delete_dynakube("dk").await;
    env.wait_for_labels("a deleted DynaKube's labels go", &[]).await;

    // The operator namespace and kube-apps matched the first selector the whole time but never got a label
    // (the waits above compare the complete set of labelled namespaces).
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_reported_and_block_nothing() {
    let env = Env::start().await;
    // The DynaKubes first: a namespace labelled by one before the other existed would keep that label.
    env.create_dynakube(
        "a",
        cloud_native(json!({ "matchLabels": { "team": "a" } })),
        json!({}),
    )
    .await;
    env.create_dynakube(
        "b",
        application_monitoring(json!({ "matchLabels": { "env": "prod" } })),
        json!({}),
    )
    .await;
    env.namespace("shared", &[("team", "a"), ("env", "prod")]).await;
    env.namespace("only-a", &[("team", "a")]).await;
    env.namespace("only-b", &[("env", "prod")]).await;
    env.wait_for_labels(
        "the unambiguous namespaces mapped",
        &[("only-a", "a"), ("only-b", "b")],
    )
    .await;
    for (dk, other) in [("a", "dynatrace/b"), ("b", "dynatrace/a")] {
        let condition = env
            .wait_for_condition(dk, |c| c.status == "True" && c.message.contains("shared"))
            .await;
        assert_eq!(condition.reason, "SelectedByOtherDynaKubes");
        assert!(
            condition
                .message
                .contains(&format!("shared (also {other}; not injected)")),
            "{}",
            condition.message
        );
        let events = test_kit::eventually("the conflict event", WAIT, || async {
            let events = env.events(dk).await;
            Ok(events
                .iter()
                .any(|(reason, _)| reason == "NamespaceConflict")
                .then_some(events))
        })
        .await
        .unwrap();
        assert!(
            events.iter().any(|(_, note)| note.contains("shared")),
            "{events:?}"
        );
    }

    // Nothing is blocked: new namespaces are created and mapped, a second conflict is added to the report.
    env.namespace("only-a-2", &[("team", "a")]).await;
    env.namespace("shared-2", &[("team", "a"), ("env", "prod")]).await;
    env.wait_for_labels(
        "the new namespace mapped",
        &[("only-a", "a"), ("only-a-2", "a"), ("only-b", "b")],
    )
    .await;
    env.wait_for_condition("a", |c| c.message.contains("shared-2"))
        .await;

    // The DynaKube reconcile writes its own conditions from its copy of the status, without ours: the
    // conflict condition comes back and the other condition stays.
    env.dynakubes()
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "conditions": [ {
                "type": "Tokens", "status": "True", "reason": "TokenReady", "message": "ok",
                "lastTransitionTime": "2024-01-01T00:00:00Z",
            } ] } })),
        )
        .await
        .unwrap();
    env.wait_for_condition("a", |c| c.status == "True").await;
    let status = env.dynakubes().get("a").await.unwrap().status.unwrap();
    let types: BTreeSet<String> = status.conditions.unwrap().into_iter().map(|c| c.type_).collect();
    assert_eq!(
        types,
        BTreeSet::from(["NamespaceConflict".to_owned(), "Tokens".to_owned()])
    );
    let warnings = env
        .events("a")
        .await
        .into_iter()
        .filter(|(r, _)| r == "NamespaceConflict")
        .count();
    assert_eq!(
        warnings, 2,
        "one per change of the conflicts, none for the restored condition"
    );

    // Resolving the conflicts maps the namespaces and clears the condition.
    env.relabel("shared", json!({ "env": null })).await;
    env.relabel("shared-2", json!({ "team": null })).await;
    env.wait_for_labels(
        "the former conflicts mapped",
        &[
            ("only-a", "a"),
            ("only-a-2", "a"),
            ("only-b", "b"),
            ("shared", "a"),
            ("shared-2", "b"),
        ],
    )
    .await;
    for dk in ["a", "b"] {
        let condition = env.wait_for_condition(dk, |c| c.status == "False").await;
        assert_eq!(condition.reason, "NoConflict");
        test_kit::eventually("the resolved event", WAIT, || async {
            let events = env.events(dk).await;
            Ok(events
                .iter()
                .any(|(reason, _)| reason == "NamespaceConflictResolved")
                .then_some(()))
        })
        .await
        .unwrap();
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_follow_the_mapping() {
    let env = Env::start().await;
    env.token_secret(
        "dk",
        json!({ "apiToken": "dt0c01.API", "paasToken": "dt0c01.PAAS", "dataIngestToken": "dt0c01.INGEST" }),
    )
    .await;
    env.namespace("apps", &[("inject", "yes")]).await;
    env.namespace("other", &[]).await;
    // A Secret of the same name that is not the operator's is never touched.
    let users: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": INIT_SECRET },
        "stringData": { "mine": "yes" },
    }))
    .unwrap();
    env.secrets("other")
        .create(&PostParams::default(), &users)
        .await
        .unwrap();
    env.create_dynakube(
        "dk",
        cloud_native(json!({ "matchLabels": { "inject": "yes" } })),
        json!({ "feature.dynatrace.com/no-proxy": "internal.example" }),
    )
    .await;
    env.wait_for_labels("apps labelled", &[("apps", "dk")]).await;
    // Labelled before the tenant UUID is known, but without Secrets.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(env.secret("apps", INIT_SECRET).await.is_none());

    env.set_tenant_uuid("dk", "abc12345").await;
    let init = env.wait_for_secret("apps", INIT_SECRET, |_| true).await;
    let kube_system = env.namespaces().get("kube-system").await.unwrap();
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(env.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items[0]
        .name_any();
    let init_config = config(&init);
    assert_eq!(init_config["tenantUUID"], "abc12345");
    assert_eq!(init_config["apiUrl"], API_URL);
    assert_eq!(init_config["apiToken"], "dt0c01.API");
    assert_eq!(init_config["paasToken"], "dt0c01.PAAS");
    assert_eq!(init_config["noProxy"], "internal.example");
    assert_eq!(init_config["hasHost"], true);
    assert_eq!(init_config["clusterID"], kube_system.uid().unwrap());
    assert_eq!(init_config["monitoringNodes"], json!({ node: "abc12345" }));
    assert_eq!(init_config["initialConnectRetry"], -1);
    assert_eq!(data(&init, "proxy"), "");
    let labels = init.labels();
    assert_eq!(labels["app.kubernetes.io/created-by"], "dk");
    assert_eq!(labels["app.kubernetes.io/name"], "dynatrace-operator");
    assert_eq!(labels["app.kubernetes.io/component"], "webhook");
    let ingest = env.wait_for_secret("apps", INGEST_SECRET, |_| true).await;
    assert_eq!(
        data(&ingest, "endpoint.properties"),
        format!(
            "DT_METRICS_INGEST_URL={API_URL}/v2/metrics/ingest\nDT_METRICS_INGEST_API_TOKEN=dt0c01.INGEST\n"
        )
    );

    // A changed token Secret updates the Secrets.
    env.token_secret(
        "dk",
        json!({ "apiToken": "dt0c01.API2", "paasToken": "dt0c01.PAAS", "dataIngestToken": "dt0c01.INGEST2" }),
    )
    .await;
    env.wait_for_secret("apps", INIT_SECRET, |s| {
        serde_json::from_str::<Value>(&data(s, "config")).unwrap()["apiToken"] == "dt0c01.API2"
    })
    .await;
    env.wait_for_secret("apps", INGEST_SECRET, |s| {
        data(s, "endpoint.properties").contains("dt0c01.INGEST2")
    })
    .await;

    // A Secret changed by hand is repaired; a new namespace gets its Secrets.
    env.secrets("apps")
        .patch(
            INIT_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "config": "{}" } })),
        )
        .await
        .unwrap();
    env.wait_for_secret("apps", INIT_SECRET, |s| config(s)["tenantUUID"] == "abc12345")
        .await;
    env.namespace("web", &[("inject", "yes")]).await;
    env.wait_for_secret("web", INIT_SECRET, |_| true).await;
    env.wait_for_secret("web", INGEST_SECRET, |_| true).await;

    // A namespace that is no longer mapped loses its Secrets.
    env.relabel("apps", json!({ "inject": null })).await;
    env.wait_for_labels("apps unlabelled", &[("web", "dk")]).await;
    env.wait_for_no_secret("apps", INIT_SECRET).await;
    env.wait_for_no_secret("apps", INGEST_SECRET).await;

    // Without metadata enrichment there is no data-ingest Secret.
    env.patch_dynakube(
        "dk",
        json!({ "metadata": { "annotations": { "feature.dynatrace.com/metadata-enrichment": "false" } } }),
    )
    .await;
    env.wait_for_no_secret("web", INGEST_SECRET).await;
    assert!(env.secret("web", INIT_SECRET).await.is_some());

    // Deleting the DynaKube removes its labels and Secrets.
    env.delete_dynakube("dk").await;
    env.wait_for_labels("the labels go with the DynaKube", &[]).await;
    env.wait_for_no_secret("web", INIT_SECRET).await;
    let users = env
        .secret("other", INIT_SECRET)
        .await
        .expect("the user's Secret stays");
    assert_eq!(data(&users, "mine"), "yes");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_namespaces_are_mapped() {
    const COUNT: usize = 1000;
    let env = Env::start().await;
    let names: Vec<String> = (0..COUNT).map(|i| format!("bulk-{i:04}")).collect();
    let started = Instant::now();
    futures::stream::iter(&names)
        .map(|name| env.namespace(name, &[("bulk", "yes")]))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!("created {COUNT} namespaces in {:?}", started.elapsed());

    let expected: BTreeMap<String, String> = names.iter().map(|n| (n.clone(), "dk".to_owned())).collect();
    let started = Instant::now();
    env.create_dynakube(
        "dk",
        application_monitoring(json!({ "matchLabels": { "bulk": "yes" } })),
        json!({}),
    )
    .await;
    test_kit::eventually("every namespace labelled", Duration::from_secs(60), || async {
        Ok((env.labels().await == expected).then_some(()))
    })
    .await
    .unwrap();
    let mapped = started.elapsed();
    println!("mapped {COUNT} namespaces {mapped:?} after the DynaKube was created");

    // Both Secrets in every namespace once the tenant UUID is known.
    let secrets = |name: &'static str| {
        let api: Api<Secret> = Api::all(env.client.clone());
        async move {
            let selector = "app.kubernetes.io/created-by=dk,app.kubernetes.io/name=dynatrace-operator";
            let list = api
                .list_metadata(&ListParams::default().labels(selector))
                .await
                .unwrap();
            list.items.iter().filter(|s| s.name_any() == name).count()
        }
    };
    env.token_secret(
        "dk",
        json!({ "apiToken": "dt0c01.API", "dataIngestToken": "dt0c01.INGEST" }),
    )
    .await;
    let started = Instant::now();
    env.set_tenant_uuid("dk", "abc12345").await;
    test_kit::eventually("every namespace's Secrets", Duration::from_secs(60), || async {
        let all = secrets(INIT_SECRET).await == COUNT && secrets(INGEST_SECRET).await == COUNT;
        Ok(all.then_some(()))
    })
    .await
    .unwrap();
    println!(
        "wrote {} Secrets {:?} after the tenant UUID was set",
        2 * COUNT,
        started.elapsed()
    );

    let started = Instant::now();
    env.delete_dynakube("dk").await;
    test_kit::eventually(
        "every label and Secret removed",
        Duration::from_secs(60),
        || async {
            let gone = env.labels().await.is_empty()
                && secrets(INIT_SECRET).await == 0
                && secrets(INGEST_SECRET).await == 0;
            Ok(gone.then_some(()))
        },
    )
    .await
    .unwrap();
    println!(
        "removed {COUNT} labels and {} Secrets {:?} after the DynaKube was deleted",
        2 * COUNT,
        started.elapsed()
    );
    env.stop().await;
}

/// A classicFullStack DynaKube with an enrichment selector claims the namespaces it selects for enrichment
/// only: they are labelled and get the data-ingest Secret, never the init Secret (nothing injects code
/// modules there). Without the selector it claims none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_only_dynakubes_label_and_get_the_data_ingest_secret_only() {
    let env = Env::start().await;
    env.token_secret(
        "classic",
        json!({ "apiToken": "dt0c01.API", "dataIngestToken": "dt0c01.INGEST" }),
    )
    .await;
    env.namespace("shop", &[("enrich", "yes")]).await;
    env.namespace("blog", &[]).await;
    env.create_dynakube(
        "classic",
        json!({
            "metadataEnrichment": { "enabled": true, "namespaceSelector": { "matchLabels": { "enrich": "yes" } } },
            "oneAgent": { "classicFullStack": {} },
        }),
        json!({}),
    )
    .await;
    env.wait_for_labels("shop labelled for enrichment", &[("shop", "classic")])
        .await;
    env.set_tenant_uuid("classic", "abc12345").await;
    let ingest = env.wait_for_secret("shop", INGEST_SECRET, |_| true).await;
    assert!(data(&ingest, "endpoint.properties").contains("dt0c01.INGEST"));
    // The init Secret would have come with the data-ingest Secret, in the same pass.
    assert!(env.secret("shop", INIT_SECRET).await.is_none());
    assert!(env.secret("blog", INGEST_SECRET).await.is_none());

    // Without the enrichment selector the DynaKube claims nothing: label and Secret go.
    env.patch_dynakube(
        "classic",
        json!({ "spec": { "metadataEnrichment": { "namespaceSelector": null } } }),
    )
    .await;
    env.wait_for_labels("the label goes without the selector", &[])
        .await;
    env.wait_for_no_secret("shop", INGEST_SECRET).await;
    env.stop().await;
}
