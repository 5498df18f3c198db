//! The webhook on a local cluster, registered by URL: `cargo xtask webhook` serves it in this process until
//! Ctrl-C; `cargo xtask run` uses the same certificates and registration for a `dynatrace-operator
//! webhook-server` child process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context as _;
use io_webhook::registration;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use test_kit::Cluster;
use test_kit::pki::CertificateAuthority;
use tokio_util::sync::CancellationToken;

/// Name of the ValidatingWebhookConfiguration, as in the Helm chart.
pub const CONFIGURATION: &str = "dynatrace-webhook";
/// Namespace the CRD registration creates, where the examples and `cargo xtask run` put their DynaKubes.
pub const NAMESPACE: &str = "dynatrace";
const FIELD_MANAGER: &str = "xtask-webhook";

/// Starts the webhook for the local cluster `cluster_dir` and serves until Ctrl-C.
pub fn run(cluster_dir: &Path, port: u16) -> anyhow::Result<()> {
    let cluster = Cluster::load(cluster_dir)
        .context("no local cluster there; start one with `cargo xtask cluster up`")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(&cluster, &cluster_dir.join("webhook"), port))
}

async fn serve(cluster: &Cluster, certs_dir: &Path, port: u16) -> anyhow::Result<()> {
    let client = cluster.client().await?;
    let ca_pem = write_certificates(certs_dir)?;

    let shutdown = CancellationToken::new();
    let state = io_webhook::AppState {
        cluster: Some(io_webhook::ClusterCache::start(client.clone(), &shutdown)),
        metrics: io_webhook::Metrics::new(),
        injection: None,
    };
    let config = io_webhook::ServerConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        certificate_source: io_webhook::CertificateSource::Dir(certs_dir.to_owned()),
    };
    let server = io_webhook::start(&config, state, shutdown.clone()).await?;
    let base = format!("https://{}", server.addr);
    install_crds(&client, &base, &ca_pem).await?;
    register_validating(&client, &base, &ca_pem).await?;

    println!(
        "Webhook server on {base} (metrics on http://{}/metrics), registered with the cluster.",
        server.metrics_addr
    );
    println!("Apply a DynaKube, for example one of the README's, with:");
    println!(
        "  kubectl --kubeconfig {} apply -f dynakube.yaml",
        cluster.kubeconfig().display()
    );
    println!("Stop with Ctrl-C (the ValidatingWebhookConfiguration is removed then).");
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    unregister(&client).await?;
    server.shutdown().await;
    Ok(())
}

/// Writes a new CA's serving certificate for 127.0.0.1 and `localhost` as `tls.crt` and `tls.key` into
/// `certs_dir`, the files `webhook-server --certs-dir` reads. Returns the CA (PEM) the API server must trust.
pub fn write_certificates(certs_dir: &Path) -> anyhow::Result<String> {
    let ca = CertificateAuthority::new("dynatrace-webhook-local-ca")?;
    let serving = ca.issue_server_cert(
        "dynatrace-webhook",
        &["localhost"],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )?;
    std::fs::create_dir_all(certs_dir).with_context(|| format!("creating {}", certs_dir.display()))?;
    for (file, pem) in [
        (io_webhook::tls::CERT_FILE, &serving.cert_pem),
        (io_webhook::tls::KEY_FILE, &serving.key_pem),
    ] {
        let path = certs_dir.join(file);
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ca.cert_pem())
}

/// Installs the CRDs with conversion by URL (`<base>/convert`, trusting `ca_pem`) and the `dynatrace`
/// namespace.
pub async fn install_crds(client: &Client, base: &str, ca_pem: &str) -> anyhow::Result<()> {
    let endpoint = pure_api::crd::ConversionEndpoint::Url {
        url: format!("{base}/convert"),
        ca_bundle_pem: ca_pem.to_owned(),
    };
    registration::apply_crds(client, &endpoint, FIELD_MANAGER)
        .await
        .context("installing the CRDs")?;
    let namespace: Namespace = serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE } }),
    )?;
    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&namespace),
        )
        .await
        .with_context(|| format!("creating the namespace {NAMESPACE}"))?;
    Ok(())
}

/// Registers the validating webhook at `<base>/validate`, trusting `ca_pem`, for every namespace.
pub async fn register_validating(client: &Client, base: &str, ca_pem: &str) -> anyhow::Result<()> {
    let configuration =
        registration::validating_configuration(CONFIGURATION, &format!("{base}/validate"), ca_pem, None);
    registration::apply_validating_configuration(client, &configuration, FIELD_MANAGER)
        .await
        .context("registering the validating webhook")
}

/// Registers the mutating webhooks at `<base>/inject` (pods of mapped namespaces) and `<base>/label-ns`
/// (namespaces), trusting `ca_pem`.
pub async fn register_mutating(client: &Client, base: &str, ca_pem: &str) -> anyhow::Result<()> {
    let configuration = registration::mutating_configuration(CONFIGURATION, base, ca_pem);
    registration::apply_mutating_configuration(client, &configuration, FIELD_MANAGER)
        .await
        .context("registering the mutating webhooks")
}

/// Removes the Validating- and MutatingWebhookConfiguration; one that is already gone is fine.
pub async fn unregister(client: &Client) -> anyhow::Result<()> {
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION, &DeleteParams::default())
        .await
        .map(drop);
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(CONFIGURATION, &DeleteParams::default())
        .await
        .map(drop);
    for (kind, result) in [
        ("validatingwebhookconfiguration", validating),
        ("mutatingwebhookconfiguration", mutating),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("removing the {kind} {CONFIGURATION}; remove it with `kubectl delete {kind} {CONFIGURATION}`")
                });
            }
        }
    }
    Ok(())
}
