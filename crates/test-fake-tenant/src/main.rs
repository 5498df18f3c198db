//! `fake-tenant`: runs the fake Dynatrace environment API until SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use test_fake_tenant::{FakeTenant, Listen, TenantConfig};

/// A fake Dynatrace environment (tenant) API for tests, benchmarks and local runs.
///
/// Prints `fake tenant listening on <api url>` once it serves. The admin API (no authentication) is under
/// /admin: POST /admin/versions, PUT|DELETE /admin/faults, GET|DELETE /admin/requests, POST /admin/hosts,
/// GET /admin/events, POST|GET /admin/images. The OneAgent images are served by a registry under /v2/.
#[derive(Debug, Parser)]
#[command(name = "fake-tenant", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM) for HTTPS; needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM FILE")]
    tls_key: Option<PathBuf>,
    /// Tenant configuration as JSON (camelCase fields of TenantConfig; missing fields keep their defaults).
    #[arg(long, value_name = "JSON FILE")]
    config: Option<PathBuf>,
    /// Size in bytes of the payload file in every OneAgent archive (overrides the configuration).
    #[arg(long, value_name = "N")]
    payload_bytes: Option<u64>,
    /// A shared library to serve as agent/lib64/liboneagentproc.so in every code-module archive (overrides
    /// the configuration's agentLibrary), like the one `test_images::agent_library` builds.
    #[arg(long, value_name = "FILE")]
    agent_library: Option<PathBuf>,
    /// An image for the registry: `<name>:<tag>=<path>`, the path an OCI image layout directory or an OCI
    /// or docker archive tar (for example `linux/oneagent:1.277.0=oneagent.tar`). Repeatable.
    #[arg(long = "image", value_name = "NAME:TAG=PATH", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
}

fn parse_image(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((reference, path)) if !reference.is_empty() && !path.is_empty() => {
            Ok((reference.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "{value:?} is not <name>:<tag>=<path>, like linux/oneagent:1.277.0=/images/oneagent.tar"
        )),
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries the URL line that callers wait for.
    io_serving::logging::init(
        io_serving::logging::LogFormat::Text,
        io_serving::logging::LogTarget::Stderr,
    )?;
    let args = Args::parse();

    let mut config = match &args.config {
        Some(path) => {
            serde_json::from_str::<TenantConfig>(&read(path, "configuration")?).with_context(|| {
                format!(
                    "{} is not a valid tenant configuration (JSON with camelCase fields such as \
                     environmentId, tokens, versions)",
                    path.display()
                )
            })?
        }
        None => TenantConfig::default(),
    };
    if let Some(bytes) = args.payload_bytes {
        config.archive_payload_bytes = bytes;
    }
    if let Some(library) = &args.agent_library {
        anyhow::ensure!(
            library.is_file(),
            "--agent-library {} is not a file; build it with test_images::agent_library",
            library.display()
        );
        config.agent_library = Some(library.clone());
    }
    let listen = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Listen::Https {
            cert_pem: read(cert, "certificate")?,
            key_pem: read(key, "private key")?,
        },
        _ => Listen::Http,
    };
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            addr = %args.listen,
            "listening beyond loopback: anyone who can reach this address can use the fake tokens and the \
             unauthenticated admin API"
        );
    }

    let tenant = FakeTenant::start_on(config, listen, args.listen).await?;
    for (reference, path) in &args.images {
        let image = tenant
            .add_image(reference, path)
            .await
            .with_context(|| format!("cannot load --image {reference}={}", path.display()))?;
        tracing::info!(
            image = %reference,
            digest = %image.digest,
            blobs = image.blobs,
            bytes = image.blob_bytes,
            "image loaded into the registry"
        );
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "fake tenant listening on {}", tenant.api_url())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    drop(stdout);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        result = tokio::signal::ctrl_c() => {
            result.context("cannot listen for SIGINT")?;
            tracing::info!("SIGINT received; shutting down");
        }
    }
    tenant.shutdown().await;
    Ok(())
}
