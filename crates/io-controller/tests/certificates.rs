//! The webhook certificate controller on a real control plane, with the webhook server reading its
//! certificate from the Secret: CA rotations under continuous admission and conversion traffic without one
//! failed call, a tampered caBundle repaired within seconds, and a restart that writes nothing.
//!
//! The webhook configuration and the CRD are cluster-scoped, so this test has a private cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_controller::certificates::{self, CertificateConfig, Outcome, SecretChange};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::{DynaKube, v1alpha1};
use pure_webhook_certificates::{
    CA_CERT, CA_CERT_OLD, CertificatePolicy, DYNAKUBE_CRD_NAME, SECRET_NAME, TLS_CERT, WEBHOOK_NAME,
};
use serde_json::json;
use test_kit::TestNamespace;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const API_URL: &str = "https://abc12345.live.dynatrace.com/api";
const WAIT: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "certificates-test";

fn dynakube(name: &str, api_url: &str) -> DynaKube {
    serde_json::from_value(json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": name }, "spec": { "apiUrl": api_url },
    }))
    .unwrap()
}

/// Certificates that rotate every few seconds: the serving certificate every 4 s, the CA every 16 s.
fn fast_policy(namespace: &str) -> CertificatePolicy {
    CertificatePolicy {
        extra_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ca_validity: Duration::from_secs(24),
        server_validity: Duration::from_secs(12),
        renew_before: Duration::from_secs(8),
        ..CertificatePolicy::for_namespace(namespace)
    }
}

/// The certificate controller running in the background until stopped.
struct RunningController(test_kit::RunningTask);

impl RunningController {
    fn start(client: &Client, config: CertificateConfig) -> Self {
        let client = client.clone();
        Self(test_kit::RunningTask::spawn(|stop| {
            certificates::run(client, config, stop)
        }))
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

async fn secret_data(secrets: &Api<Secret>) -> BTreeMap<String, Vec<u8>> {
    secrets
        .get(SECRET_NAME)
        .await
        .unwrap()
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// The caBundle of every validating webhook and of the CRD's conversion webhook.
async fn published_bundles(client: &Client) -> Vec<Option<ByteString>> {
    let configuration = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(WEBHOOK_NAME)
        .await
        .unwrap();
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(DYNAKUBE_CRD_NAME)
        .await
        .unwrap();
    let mut bundles: Vec<_> = configuration
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config.ca_bundle)
        .collect();
    bundles.push(
        crd.spec
            .conversion
            .and_then(|c| c.webhook)
            .and_then(|w| w.client_config)
            .and_then(|c| c.ca_bundle),
    );
    bundles
}

/// What the API server answered while certificates rotated.
#[derive(Debug, Default)]
struct Traffic {
    denials: usize,
    conversions: usize,
    failures: Vec<String>,
}

/// Every ~200 ms: a dry-run create of an invalid DynaKube (only the webhook rejects it) and a read of a
/// stored DynaKube through v1alpha1 (only the conversion webhook can answer it).
fn start_traffic(client: &Client, namespace: &str, stop: Arc<AtomicBool>) -> JoinHandle<Traffic> {
    let current: Api<DynaKube> = Api::namespaced(client.clone(), namespace);
    let old: Api<v1alpha1::DynaKube> = Api::namespaced(client.clone(), namespace);
    tokio::spawn(async move {
        let mut traffic = Traffic::default();
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let invalid = dynakube("invalid", pure_api::dynakube::EXAMPLE_API_URL);
        while !stop.load(Ordering::Relaxed) {
            match current.create(&dry_run, &invalid).await {
                Err(kube::Error::Api(e))
                    if e.message
                        .contains("admission webhook \"webhook.dynatrace.com\" denied the request")
                        && e.message.contains("error(s) found") =>
                {
                    traffic.denials += 1;
                }
                other => traffic.failures.push(format!("admission: {other:?}")),
            }
            match old.get("stored").await {
                Ok(_) => traffic.conversions += 1,
                Err(e) => traffic.failures.push(format!("conversion: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        traffic
    })
}

/// Sets every published caBundle to `pem`, as someone editing the objects by hand would.
async fn tamper(client: &Client, pem: &str) {
    let bundle = serde_json::to_value(ByteString(pem.as_bytes().to_vec())).unwrap();
    let webhooks = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle },
    ]))
    .unwrap();
    webhooks
        .patch(
            WEBHOOK_NAME,
            &PatchParams::default(),
            &Patch::Json::<()>(patch.clone()),
        )
        .await
        .unwrap();
    let crd_patch: json_patch::Patch = serde_json::from_value(json!([
        { "op": "replace", "path": "/spec/conversion/webhook/clientConfig/caBundle", "value": bundle },
    ]))
    .unwrap();
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            DYNAKUBE_CRD_NAME,
            &PatchParams::default(),
            &Patch::Json::<()>(crd_patch),
        )
        .await
        .unwrap();
}

async fn resource_versions(client: &Client, namespace: &str) -> [String; 3] {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(SECRET_NAME)
        .await
        .unwrap();
    let configuration = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get(WEBHOOK_NAME)
        .await
        .unwrap();
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(DYNAKUBE_CRD_NAME)
        .await
        .unwrap();
    [
        secret.resource_version().unwrap(),
        configuration.resource_version().unwrap(),
        crd.resource_version().unwrap(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_call_and_tampering_is_repaired() {
    let started = Instant::now();
    let cluster = test_kit::start_private_cluster(1).await.unwrap();
    let ns = TestNamespace::create_in(&cluster).await.unwrap();
    let client = ns.client.clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    // The webhook server, reading its certificate from the Secret that does not exist yet.
    let stop_server = CancellationToken::new();
    let server = io_webhook::start(
        &io_webhook::ServerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            certificate_source: io_webhook::CertificateSource::Secret {
                client: client.clone(),
                namespace: ns.name.clone(),
                name: SECRET_NAME.into(),
            },
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
    assert!(!server.certificate_loaded());
    let readyz = test_kit::http_get(server.metrics_addr.port(), "/readyz")
        .await
        .unwrap();
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");

    // Registered by URL with a CA that signed nothing the server will ever serve: the controller fixes it.
    let placeholder = test_kit::pki::CertificateAuthority::new("placeholder")
        .unwrap()
        .cert_pem();
    let base = format!("https://{}", server.addr);
    let endpoint = pure_api::crd::ConversionEndpoint::Url {
        url: format!("{base}/convert"),
        ca_bundle_pem: placeholder.clone(),
    };
    io_webhook::registration::apply_crds(&client, &endpoint, FIELD_MANAGER)
        .await
        .unwrap();
    let configuration = io_webhook::registration::validating_configuration(
        WEBHOOK_NAME,
        &format!("{base}/validate"),
        &placeholder,
        None,
    );
    io_webhook::registration::apply_validating_configuration(&client, &configuration, FIELD_MANAGER)
        .await
        .unwrap();

    // No Deployment here: the webhook configuration alone makes the controller act.
    let config = CertificateConfig {
        policy: fast_policy(&ns.name),
        ..CertificateConfig::for_namespace(&ns.name)
    };
    let controller = RunningController::start(&client, config);

    // Ready once the Secret is written, and the API server trusts the server once the bundles are set.
    test_kit::eventually("the webhook server to load the certificate", WAIT, || async {
        Ok(server.certificate_loaded().then_some(()))
    })
    .await
    .unwrap();
    let readyz = test_kit::http_get(server.metrics_addr.port(), "/readyz")
        .await
        .unwrap();
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    let dynakubes: Api<DynaKube> = Api::namespaced(client.clone(), &ns.name);
    test_kit::eventually("the API server to call the webhook", WAIT, || async {
        Ok(dynakubes
            .create(&PostParams::default(), &dynakube("stored", API_URL))
            .await
            .ok())
    })
    .await
    .unwrap();
    let old: Api<v1alpha1::DynaKube> = Api::namespaced(client.clone(), &ns.name);
    test_kit::eventually("the API server to call the conversion webhook", WAIT, || async {
        Ok(old.get("stored").await.ok())
    })
    .await
    .unwrap();
    eprintln!("webhook trusted after {:?}", started.elapsed());

    // Two CA rotations (and a serving certificate every few seconds) under continuous traffic.
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let traffic = start_traffic(&client, &ns.name, stop_traffic.clone());
    let mut data = secret_data(&secrets).await;
    let (mut ca_rotations, mut server_rotations) = (0, 0);
    let deadline = Instant::now() + WAIT;
    while ca_rotations < 2 {
        assert!(
            Instant::now() < deadline,
            "only {ca_rotations} CA rotations within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = secret_data(&secrets).await;
        if now[TLS_CERT] != data[TLS_CERT] {
            server_rotations += 1;
        }
        if now[CA_CERT] != data[CA_CERT] {
            ca_rotations += 1;
            eprintln!("CA rotation {ca_rotations} after {:?}", started.elapsed());
            assert_eq!(
                now[CA_CERT_OLD], data[CA_CERT],
                "the previous CA moved to ca.crt.old"
            );
            // The bundles were published before the Secret changed.
            let expected = ByteString(pure_webhook_certificates::ca_bundle(&now));
            let bundles = published_bundles(&client).await;
            assert!(
                bundles.iter().all(|b| b.as_ref() == Some(&expected)),
                "every caBundle is ca.crt + ca.crt.old"
            );
            let text = String::from_utf8(expected.0).unwrap();
            assert!(text.contains(std::str::from_utf8(&data[CA_CERT]).unwrap()));
            assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 2);
        }
        data = now;
    }
    stop_traffic.store(true, Ordering::Relaxed);
    let traffic = traffic.await.unwrap();
    eprintln!("{traffic:?}, {server_rotations} serving certificates");
    assert!(
        traffic.failures.is_empty(),
        "failed calls: {:#?}",
        traffic.failures
    );
    assert!(traffic.denials >= 30 && traffic.conversions >= 30, "{traffic:?}");
    assert!(server_rotations >= 4, "{server_rotations}");

    // A tampered caBundle is repaired within seconds.
    tamper(&client, &placeholder).await;
    let tampered_at = Instant::now();
    test_kit::eventually("the caBundles to be repaired", Duration::from_secs(5), || async {
        let expected = ByteString(pure_webhook_certificates::ca_bundle(&secret_data(&secrets).await));
        let bundles = published_bundles(&client).await;
        Ok(bundles
            .iter()
            .all(|b| b.as_ref() == Some(&expected))
            .then_some(()))
    })
    .await
    .unwrap();
    eprintln!("caBundles repaired in {:?}", tampered_at.elapsed());
    controller.stop().await;

    // A restart with a valid Secret writes nothing. Longer lifetimes first, so that no renewal falls due.
    let steady = CertificateConfig {
        policy: CertificatePolicy {
            ca_validity: Duration::from_secs(7200),
            server_validity: Duration::from_secs(3600),
            renew_before: Duration::from_secs(600),
            ..fast_policy(&ns.name)
        },
        ..CertificateConfig::for_namespace(&ns.name)
    };
    let outcome = certificates::reconcile_once(&client, &steady).await.unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Reconciled {
                secret: SecretChange::Updated,
                ca_renewed: true,
                ..
            }
        ),
        "a CA shorter-lived than the renewal window is renewed: {outcome:?}"
    );
    let before = resource_versions(&client, &ns.name).await;
    let restarted = RunningController::start(&client, steady.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = certificates::reconcile_once(&client, &steady).await.unwrap();
    assert!(!outcome.wrote(), "{outcome:?}");
    assert_eq!(
        resource_versions(&client, &ns.name).await,
        before,
        "nothing was written"
    );
    restarted.stop().await;
    let denied = dynakubes
        .create(
            &PostParams::default(),
            &dynakube("after", pure_api::dynakube::EXAMPLE_API_URL),
        )
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.message.contains("denied the request")),
        "{denied:?}"
    );

    stop_server.cancel();
    server.wait().await;
    eprintln!("done after {:?}", started.elapsed());
}
