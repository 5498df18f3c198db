//! The storage migration against a real API server, with no DynaKube controller running (whose status
//! writes would re-encode the objects too): DynaKubes stored at v1beta5 through a reference-shaped CRD in
//! two namespaces, more than a list page of them, are all rewritten at v1beta1 and `storedVersions` is
//! trimmed; a second pass does nothing. Proof that each object was re-encoded: the CRD then drops v1beta5
//! and v1beta6, and every object still reads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use io_controller::storage_migration::{Outcome, migrate_once};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pure_api::storage_migration::StorageMigration;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const CRD: &str = "dynakubes.dynatrace.com";
const NAMESPACES: [&str; 2] = ["migrate-a", "migrate-b"];
/// More than the migration's page of 100.
const PER_NAMESPACE: usize = 60;
const TIMEOUT: Duration = Duration::from_secs(60);
fn api(client: &Client, version: &str, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("dynatrace.com", version, "DynaKube"),
        "dynakubes",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dynakube_is_rewritten_at_the_storage_version_and_stored_versions_trimmed() {
    let cluster = test_kit::start_private_cluster(0).await.unwrap();
    let client = cluster.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());

    crds.patch(
        CRD,
        &PatchParams::apply("reference-operator").force(),
        &Patch::Apply(test_kit::setup::reference_dynakube_crd("v1beta5")),
    )
    .await
    .unwrap();
    test_kit::eventually("the reference CRD to serve v1beta5", TIMEOUT, || async {
        Ok(api(&client, "v1beta5", "default")
            .list(&ListParams::default())
            .await
            .is_ok()
            .then_some(()))
    })
    .await
    .unwrap();
    for namespace in NAMESPACES {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": namespace } })).unwrap(),
            )
            .await
            .unwrap();
        for i in 0..PER_NAMESPACE {
            let object = json!({
                "apiVersion": "dynatrace.com/v1beta5", "kind": "DynaKube",
                "metadata": { "name": format!("dk-{i}"), "namespace": namespace },
                "spec": {
                    "apiUrl": "https://tenant.example/api",
                    "oneAgent": { "hostGroup": format!("group-{i}"), "cloudNativeFullStack": {} },
                    "kspm": {},
                },
            });
            api(&client, "v1beta5", namespace)
                .create(&PostParams::default(), &serde_json::from_value(object).unwrap())
                .await
                .unwrap();
        }
    }

    // Our CRD, converting through an in-process webhook server.
    let dir = tempfile::tempdir().unwrap();
    let ca = test_kit::pki::CertificateAuthority::new("migration-test-ca").unwrap();
    let leaf = ca
        .issue_server_cert("webhook", &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), leaf.key_pem).unwrap();
    let stop_server = CancellationToken::new();
    let server = io_webhook::start(
        &io_webhook::ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            certificate_source: io_webhook::CertificateSource::Dir(dir.path().to_owned()),
        },
        io_webhook::AppState {
            cluster: None,
            metrics: io_webhook::Metrics::new(),
            injection: None,
        },
        stop_server.clone(),
    )
    .await
    .unwrap();
    let endpoint = pure_api::crd::ConversionEndpoint::Url {
        url: format!("https://{}/convert", server.addr),
        ca_bundle_pem: ca.cert_pem(),
    };
    io_webhook::registration::apply_crds(&client, &endpoint, "migration-test")
        .await
        .unwrap();

    let metrics = io_controller::Metrics::new();
    let outcome = migrate_once(&client, &metrics).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Migrated {
            stale: vec!["v1beta5".to_owned()],
            rewritten: NAMESPACES.len() * PER_NAMESPACE,
        }
    );
    let stored = crds
        .get(CRD)
        .await
        .unwrap()
        .status
        .unwrap()
        .stored_versions
        .unwrap();
    assert_eq!(stored, ["v1beta1"]);
    assert_eq!(
        migrate_once(&client, &metrics).await.unwrap(),
        Outcome::Skipped(StorageMigration::Done)
    );
    let exposition = metrics.encode();
    assert!(
        exposition.contains(&format!(
            "dynatrace_operator_storage_migration_rewrites_total {}",
            NAMESPACES.len() * PER_NAMESPACE
        )) && exposition.contains("dynatrace_operator_storage_migrations_total 1"),
        "{exposition}"
    );

    // An object still stored at v1beta5 cannot be read once the CRD no longer lists it.
    let mut crd = crds.get(CRD).await.unwrap();
    crd.spec
        .versions
        .retain(|v| !matches!(v.name.as_str(), "v1beta5" | "v1beta6"));
    crd.metadata.managed_fields = None;
    crds.replace(CRD, &PostParams::default(), &crd).await.unwrap();
    test_kit::eventually("the API server to drop v1beta5", TIMEOUT, || async {
        Ok(api(&client, "v1beta5", "default")
            .list(&ListParams::default())
            .await
            .is_err()
            .then_some(()))
    })
    .await
    .unwrap();
    for namespace in NAMESPACES {
        let read = api(&client, "v1beta1", namespace)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("a DynaKube in {namespace} is still stored at v1beta5: {e}"));
        assert_eq!(read.items.len(), PER_NAMESPACE);
        for object in &read.items {
            let name = object.metadata.name.as_deref().unwrap();
            let i = name.trim_start_matches("dk-");
            assert_eq!(
                object.data["spec"]["oneAgent"]["hostGroup"],
                json!(format!("group-{i}")),
                "{namespace}/{name}"
            );
        }
    }
    stop_server.cancel();
}
