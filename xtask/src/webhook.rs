//! `cargo xtask webhook`: runs the webhook server against a local cluster, registered by URL, until Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use testkit::Cluster;
use testkit::pki::CertificateAuthority;
use tokio_util::sync::CancellationToken;
use webhook::registration;

/// Name of the ValidatingWebhookConfiguration, as in the Helm chart.
const CONFIGURATION: &str = "dynatrace-webhook";
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
    let ca = CertificateAuthority::new("dynatrace-webhook-local-ca")?;
    let serving = ca.issue_server_cert(
        "dynatrace-webhook",
        &["localhost"],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )?;
    std::fs::create_dir_all(certs_dir).with_context(|| format!("creating {}", certs_dir.display()))?;
    std::fs::write(certs_dir.join(webhook::tls::CERT_FILE), &serving.cert_pem)?;
    std::fs::write(certs_dir.join(webhook::tls::KEY_FILE), &serving.key_pem)?;

    let shutdown = CancellationToken::new();
    let state = webhook::AppState {
        cluster: Some(webhook::ClusterCache::start(client.clone(), &shutdown)),
        metrics: webhook::Metrics::new(),
    };
    let config = webhook::ServerConfig {
        bind: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        metrics_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        certs_dir: certs_dir.to_owned(),
    };
    let server = webhook::start(&config, state, shutdown.clone()).await?;
    let base = format!("https://{}", server.addr);
    register(&client, &base, &ca.cert_pem()).await?;

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
    Api::<ValidatingWebhookConfiguration>::all(client)
        .delete(CONFIGURATION, &DeleteParams::default())
        .await?;
    server.shutdown().await;
    Ok(())
}

/// Installs the CRDs (conversion by URL), the `dynatrace` namespace, and the validating webhook.
async fn register(client: &Client, base: &str, ca_pem: &str) -> anyhow::Result<()> {
    let endpoint = api::crd::ConversionEndpoint::Url {
        url: format!("{base}/convert"),
        ca_bundle_pem: ca_pem.to_owned(),
    };
    registration::apply_crds(client, &endpoint, FIELD_MANAGER)
        .await
        .context("installing the CRDs")?;
    let namespace: Namespace = serde_json::from_value(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "dynatrace" } }),
    )?;
    Api::<Namespace>::all(client.clone())
        .patch(
            "dynatrace",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&namespace),
        )
        .await?;
    let configuration =
        registration::validating_configuration(CONFIGURATION, &format!("{base}/validate"), ca_pem, None);
    registration::apply_validating_configuration(client, &configuration, FIELD_MANAGER)
        .await
        .context("registering the validating webhook")
}
