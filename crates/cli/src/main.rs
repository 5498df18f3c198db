//! `dynatrace-operator`: the single binary of the project. Each component (operator, webhook server, CSI
//! driver, ...) is a subcommand, so one image serves every Deployment and DaemonSet of the Helm chart.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use io_serving::logging::LogFormat;

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::ProcessAllocator = allocator::ProcessAllocator;

/// Command-line interface of the `dynatrace-operator` binary.
#[derive(Debug, Parser)]
#[command(name = "dynatrace-operator", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of this binary and what it was built with.
    Version {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Run the operator: reconcile DynaKubes into OneAgent DaemonSets. With several replicas, one leads
    /// (Lease `dynatrace-operator-lock`) and the others stand by.
    Operator(OperatorArgs),
    /// Serve the validating and conversion webhooks over HTTPS, with metrics on a separate port.
    WebhookServer(WebhookServerArgs),
    /// The init container of injected pods: install the code module and write each container's
    /// configuration (reads the environment the pod webhook sets and /mnt/config/config). Exits 0 on
    /// errors unless FAILURE_POLICY=fail.
    Init(InitArgs),
    /// The CSI driver's node plugin (container `server` of the CSI DaemonSet): CSI Identity and Node over a
    /// unix socket, the kubelet's plugin registration in-process, /healthz, /livez, /readyz and /metrics.
    CsiServer(CsiServerArgs),
    /// The CSI driver's provisioner on one node (a container of the CSI DaemonSet): installs the
    /// code-module versions the DynaKubes of POD_NAMESPACE need into the data directory, writes their
    /// configuration layers and records, and collects what is no longer used.
    CsiProvisioner(CsiProvisionerArgs),
    /// Print the CustomResourceDefinitions (DynaKube, OneAgent) as YAML, for `kubectl apply -f -`.
    Crd {
        /// Namespace of the `dynatrace-webhook` Service that converts between DynaKube versions.
        #[arg(
            long,
            env = "POD_NAMESPACE",
            default_value = "dynatrace",
            conflicts_with = "webhook_url"
        )]
        webhook_namespace: String,
        /// Send conversion requests to this URL instead of the Service (local runs and tests).
        #[arg(long, requires = "ca_bundle_file")]
        webhook_url: Option<String>,
        /// PEM file of the CA that signed the webhook's certificate (with --webhook-url).
        #[arg(long)]
        ca_bundle_file: Option<std::path::PathBuf>,
    },
}

/// Options of `operator`.
#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Address of /livez, /readyz and /metrics (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:10080")]
    health_address: std::net::SocketAddr,
    /// The operator's namespace: its Lease, and (with the Helm chart) its webhook and certificates.
    #[arg(long, env = "POD_NAMESPACE", default_value = "dynatrace")]
    namespace: String,
    /// This replica's name, used in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Elect a leader among the replicas (`false`: run the controllers at once; only for a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Seconds a Lease that is not renewed stays with its holder.
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value_t = 30)]
    lease_duration: u64,
    /// Seconds the leader may take to renew the Lease before it gives up leading.
    #[arg(long, env = "LEADER_ELECTION_RENEW_DEADLINE", default_value_t = 20)]
    renew_deadline: u64,
    /// Manage the webhook's CA and serving certificate (Secret `dynatrace-webhook-certs`) and every
    /// caBundle; `false` where something else issues them (OLM, cert-manager).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    webhook_certificates: bool,
    /// Extra IP address in the webhook's serving certificate, for a webhook registered by URL (local runs).
    #[arg(long = "webhook-cert-ip")]
    webhook_cert_ips: Vec<std::net::IpAddr>,
    /// Extra DNS name in the webhook's serving certificate.
    #[arg(long = "webhook-cert-dns")]
    webhook_cert_dns_names: Vec<String>,
    /// Seconds a new OneAgent pod may take to become ready before its node is reported as blocking the
    /// rollout (status, condition OneAgentRollout and an event).
    #[arg(long, default_value_t = 300)]
    oneagent_ready_timeout: u64,
}

/// Options of `webhook-server`.
#[derive(Debug, clap::Args)]
struct WebhookServerArgs {
    /// Directory holding tls.crt and tls.key; they are re-read within seconds when they change. Not used
    /// with --certs-secret.
    #[arg(long, env = "WEBHOOK_CERTS_DIR", default_value = "/tmp/webhook/certs")]
    certs_dir: std::path::PathBuf,
    /// Serve tls.crt and tls.key of this Secret in --namespace (the operator writes
    /// dynatrace-webhook-certs), taking every change at once, instead of files from --certs-dir.
    #[arg(long, env = "WEBHOOK_CERTS_SECRET")]
    certs_secret: Option<String>,
    /// Namespace of the certificate Secret: the webhook's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "dynatrace")]
    namespace: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// Image of the init container injected into pods (`dynatrace-operator init`). Without it, the image
    /// of this pod's `webhook` container is used (read once at start through POD_NAME).
    #[arg(long, env = "DT_INIT_IMAGE")]
    init_image: Option<String>,
    /// HTTPS port of /validate, /convert, /inject, /label-ns, /livez and /readyz.
    #[arg(long, default_value_t = io_webhook::DEFAULT_PORT)]
    port: u16,
    /// Plain-HTTP port of /metrics, /livez and /readyz.
    #[arg(long, default_value_t = io_webhook::DEFAULT_METRICS_PORT)]
    metrics_port: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Options of `csi-server`.
#[derive(Debug, clap::Args)]
struct CsiServerArgs {
    /// The CSI socket (`unix:///path` or `/path`).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// This node's name (NodeGetInfo).
    #[arg(long, env = "KUBE_NODE_NAME")]
    node_id: String,
    /// The driver's data directory, shared with the provisioner.
    #[arg(long, default_value = "/data")]
    data_dir: std::path::PathBuf,
    /// The kubelet's plugin registry directory, where the registration socket is served; empty disables
    /// the in-process registrar.
    #[arg(long, default_value = "/registration")]
    registration_dir: String,
    /// The CSI socket's path on the host, as the kubelet dials it.
    #[arg(
        long,
        default_value = "/var/lib/kubelet/plugins/csi.oneagent.dynatrace.com/csi.sock"
    )]
    kubelet_registration_path: String,
    /// Address of /healthz, /livez, /readyz and /metrics (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:10080")]
    health_probe_bind_address: std::net::SocketAddr,
    /// After this long since a volume's first publish attempt without a ready code module, the volume is
    /// published empty and the pod starts unmonitored (e.g. `2m`, `90s`).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    max_mount_wait: std::time::Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Options of `init`. The paths default to the pod's layout; `--root` moves all of them below another
/// directory (tests), and each can be set on its own.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Directory the default paths are below.
    #[arg(long, default_value = "/")]
    root: std::path::PathBuf,
    /// The code module volume (default <root>/mnt/bin).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
    /// The per-pod files (default <root>/mnt/share).
    #[arg(long)]
    share_dir: Option<std::path::PathBuf>,
    /// The init configuration (default <root>/mnt/config/config).
    #[arg(long)]
    config_file: Option<std::path::PathBuf>,
    /// The copy of agent/conf for read-only CSI volumes (default <root>/mnt/agent-conf).
    #[arg(long)]
    agent_conf_dir: Option<std::path::PathBuf>,
    /// The enrichment files (default <root>/var/lib/dynatrace/enrichment).
    #[arg(long)]
    enrichment_dir: Option<std::path::PathBuf>,
    /// Seconds to wait for an answer or for the next part of the download.
    #[arg(long, default_value_t = 60)]
    download_timeout: u64,
    /// Attempts at the download and each API call (transient failures only).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

/// Options of `csi-provisioner`.
#[derive(Debug, clap::Args)]
struct CsiProvisionerArgs {
    /// This node's name (the DaemonSet passes the pod's spec.nodeName).
    #[arg(long, env = "KUBE_NODE_NAME")]
    node_id: String,
    /// The driver's data directory.
    #[arg(long, default_value = "/data")]
    data_dir: std::path::PathBuf,
    /// Address of /livez, /readyz and /metrics (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:10090")]
    health_probe_bind_address: std::net::SocketAddr,
    /// The DynaKubes' namespace (the operator's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "dynatrace")]
    namespace: String,
    /// Time between garbage-collection runs (e.g. 30s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    gc_interval: std::time::Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

/// Facts about this build, printed by `version`.
#[derive(Debug, serde::Serialize)]
struct BuildInfo {
    version: &'static str,
    rustc: &'static str,
    target_os: &'static str,
    target_arch: &'static str,
}

const BUILD_INFO: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    rustc: env!("CARGO_PKG_RUST_VERSION"),
    target_os: std::env::consts::OS,
    target_arch: std::env::consts::ARCH,
};

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version { output } => print_version(output),
        Command::Operator(args) => run_operator(args),
        Command::WebhookServer(args) => {
            allocator::use_mimalloc();
            run_webhook_server(args)
        }
        Command::Init(args) => return run_init(args),
        Command::CsiServer(args) => run_csi_server(args),
        Command::CsiProvisioner(args) => run_csi_provisioner(args),
        Command::Crd {
            webhook_namespace,
            webhook_url,
            ca_bundle_file,
        } => print_crds(webhook_namespace, webhook_url, ca_bundle_file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One malloc arena for the whole process and fixed trim/mmap thresholds of 128 KiB, unless
/// `MALLOC_ARENA_MAX` says otherwise. glibc's default of up to eight arenas per core keeps the freed
/// memory of every thread that ever allocated in its own arena, and its dynamic thresholds grow with the
/// largest block freed (a page of a list response), so freed memory stays in the process. Measured with
/// `memory_bench` (release build, 500 nodes, 1,000 namespaces): one arena cuts the peak RSS from 68.6 to
/// 52.4 MiB, the fixed thresholds to 48.4 MiB, with no slowdown; mimalloc measured worse (106 MiB). See
/// the README, "Memory at scale".
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        const THRESHOLD: libc::c_int = 128 * 1024;
        // SAFETY: called first in `main`, before any other thread exists; mallopt only sets parameters
        // of the allocator.
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        }
    }
}

fn run_operator(args: OperatorArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    io_serving::logging::init(args.log_format, io_serving::logging::LogTarget::Stdout)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("cannot build a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
        let shutdown = async {
            if let Err(err) = wait_for_termination().await {
                tracing::error!(%err, "cannot listen for termination signals");
            }
        };
        let metrics = io_controller::Metrics::new();
        let stop_health = tokio_util::sync::CancellationToken::new();
        let (_, health) = io_serving::spawn_plain(args.health_address, metrics.router(), stop_health.clone())
            .await
            .context("cannot serve the health endpoints")?;
        let requeue = io_controller::Requeue {
            ready_timeout: std::time::Duration::from_secs(args.oneagent_ready_timeout),
            ..Default::default()
        };
        let version = BUILD_INFO.version.to_owned();
        let certificates = args.webhook_certificates.then(|| {
            let mut config = io_controller::certificates::CertificateConfig::for_namespace(&args.namespace);
            config.policy.extra_ips = args.webhook_cert_ips.clone();
            config.policy.extra_dns_names = args.webhook_cert_dns_names.clone();
            config
        });
        // Owner of the Lease and the node cache, so that they go with the Deployment (`helm uninstall`).
        let owner = io_controller::owner::deployment_owner(
            &client,
            &args.namespace,
            io_controller::owner::OPERATOR_DEPLOYMENT,
            io_controller::owner::OWNER_READ_PATIENCE,
        )
        .await;
        let settings = io_controller::OperatorSettings {
            operator_version: version,
            requeue,
            operator_namespace: args.namespace.clone(),
            owner,
            certificates,
        };
        let result = if args.leader_elect {
            let mut leader = io_controller::leader::LeaderConfig::new(
                &args.namespace,
                io_controller::leader::identity(args.pod_name.as_deref()),
            );
            leader.lease_duration = std::time::Duration::from_secs(args.lease_duration);
            leader.renew_deadline = std::time::Duration::from_secs(args.renew_deadline);
            leader.owner = settings.owner.clone();
            let lead_client = client.clone();
            let lead_metrics = metrics.clone();
            io_controller::leader::run_as_leader(client, leader, metrics, shutdown, move |stop| {
                io_controller::run_all(lead_client, settings, lead_metrics, async move {
                    let _ = stop.await;
                })
            })
            .await
            .map_err(anyhow::Error::from)
        } else {
            io_controller::run_all(client, settings, metrics, shutdown).await;
            Ok(())
        };
        stop_health.cancel();
        let _ = health.await;
        tracing::info!("operator stopped");
        result
    })
}

fn run_webhook_server(args: WebhookServerArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    io_serving::logging::init(args.log_format, io_serving::logging::LogTarget::Stdout)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if args.certs_secret.is_none() {
        // Fail on a missing or broken certificate before anything else, with the files named.
        io_webhook::tls::ReloadingCertificate::load(&args.certs_dir)?;
    }
    runtime.block_on(async {
        let client = kube::Client::try_default().await.context(
            "cannot build a Kubernetes client (in-cluster service account or KUBECONFIG); the webhook needs it \
             for the rules that look at other DynaKubes, nodes and namespaces",
        )?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        // With a Secret the server starts at once; /readyz is 503 until the Secret holds a certificate.
        let certificate_source = match args.certs_secret {
            Some(name) => io_webhook::CertificateSource::Secret {
                client: client.clone(),
                namespace: args.namespace.clone(),
                name,
            },
            None => io_webhook::CertificateSource::Dir(args.certs_dir),
        };
        let metrics = io_webhook::Metrics::new();
        let init_image = match args.init_image {
            Some(image) => Some(image),
            None => own_image(&client, &args.namespace).await,
        };
        let injection = match init_image {
            Some(init_image) => Some(io_webhook::Injection {
                init_image,
                webhook_namespace: args.namespace.clone(),
                events: io_webhook::events::EventQueue::start(client.clone(), metrics.clone(), shutdown.clone()),
            }),
            None => {
                tracing::error!(
                    "no init image: pass --init-image (or DT_INIT_IMAGE), or run in a pod with POD_NAME set and a \
                     container named webhook; until then pods are admitted without the OneAgent code module"
                );
                None
            }
        };
        let state = io_webhook::AppState {
            cluster: Some(io_webhook::ClusterCache::start(client, &shutdown)),
            metrics,
            injection,
        };
        let config = io_webhook::ServerConfig {
            bind: (args.bind_address, args.port).into(),
            metrics_bind: (args.bind_address, args.metrics_port).into(),
            certificate_source,
        };
        let server = io_webhook::start(&config, state, shutdown.clone()).await?;
        wait_for_termination().await?;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

fn run_csi_server(args: CsiServerArgs) -> anyhow::Result<()> {
    io_serving::logging::init(args.log_format, io_serving::logging::LogTarget::Stdout)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = io_csi_driver::metrics::Metrics::new();
        // Events only for volumes published empty; without a client they are logged (publish never
        // depends on the API server).
        let events = match kube::Client::try_default().await {
            Ok(client) => io_csi_driver::events::PodEvents::start(client, &args.node_id, metrics.clone(), shutdown.clone()),
            Err(err) => {
                tracing::warn!(%err, "no Kubernetes client (in-cluster service account or KUBECONFIG): events on pods \
                    with empty volumes are logged instead");
                io_csi_driver::events::PodEvents::disabled(metrics.clone())
            }
        };
        let options = io_csi_driver::server::Options {
            endpoint: args.endpoint,
            node_id: args.node_id,
            data_dir: args.data_dir,
            registration_dir: Some(args.registration_dir)
                .filter(|dir| !dir.is_empty())
                .map(std::path::PathBuf::from),
            kubelet_registration_path: args.kubelet_registration_path,
            health_address: args.health_probe_bind_address,
            max_mount_wait: args.max_mount_wait,
            version: BUILD_INFO.version.to_owned(),
        };
        let running = io_csi_driver::server::start(options, metrics, events, shutdown.clone()).await?;
        tokio::select! {
            result = wait_for_termination() => result?,
            () = shutdown.cancelled() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
        running.wait().await.map_err(anyhow::Error::msg)
    })
}

fn run_csi_provisioner(args: CsiProvisionerArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    io_serving::logging::init(args.log_format, io_serving::logging::LogTarget::Stdout)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (max_age, warning) =
        pure_csi::gc::max_unmounted_volume_age(std::env::var("MAX_UNMOUNTED_VOLUME_AGE").ok().as_deref());
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let mut config =
        io_csi_driver::provisioner::ProvisionerConfig::new(args.node_id, args.namespace, args.data_dir);
    config.gc_interval = args.gc_interval.max(std::time::Duration::from_secs(1));
    config.max_unmounted_volume_age = max_age;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("cannot build a Kubernetes client (in-cluster service account or KUBECONFIG)")?;
        let metrics = io_csi_driver::provisioner::Metrics::new();
        let stop_health = tokio_util::sync::CancellationToken::new();
        let router = io_serving::probes::probes_and_metrics(metrics.registry.clone(), || Ok(()));
        let (_, health) =
            io_serving::spawn_plain(args.health_probe_bind_address, router, stop_health.clone())
                .await
                .context("cannot serve the health endpoints")?;
        let shutdown = async {
            if let Err(err) = wait_for_termination().await {
                tracing::error!(%err, "cannot listen for termination signals");
            }
        };
        io_csi_driver::provisioner::run(client, config, metrics, shutdown).await;
        stop_health.cancel();
        let _ = health.await;
        tracing::info!("csi-provisioner stopped");
        Ok(())
    })
}

/// The image of the container `webhook` of this pod (POD_NAME in `namespace`), as the reference takes its
/// init image; `None` (logged) outside a pod or when the pod cannot be read.
async fn own_image(client: &kube::Client, namespace: &str) -> Option<String> {
    let name = std::env::var("POD_NAME").ok()?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), namespace);
    match pods.get(&name).await {
        Ok(pod) => pod
            .spec?
            .containers
            .into_iter()
            .find(|c| c.name == "webhook")
            .and_then(|c| c.image),
        Err(err) => {
            tracing::warn!(%err, pod = %name, "cannot read the webhook's own pod for the init image");
            None
        }
    }
}

/// `init`: every error, from the environment to the last file, goes through the failure policy: `silent`
/// (the default) logs it and exits 0 so the application starts, `fail` exits 1 so the pod does not.
fn run_init(args: InitArgs) -> ExitCode {
    use pure_code_module::init::FailurePolicy;
    // Before anything else: the policy must hold for every later error.
    let policy = FailurePolicy::parse(std::env::var("FAILURE_POLICY").ok().as_deref());
    let fail = |message: &str| {
        if policy == FailurePolicy::Fail {
            tracing::error!(
                failure_policy = "fail",
                "{message}; exiting with 1 so the pod does not start"
            );
            ExitCode::FAILURE
        } else {
            tracing::error!(
                failure_policy = "silent",
                "{message}; the application starts without the code module (FAILURE_POLICY=fail would stop it)"
            );
            ExitCode::SUCCESS
        }
    };
    if let Err(err) = io_serving::logging::init(args.log_format, io_serving::logging::LogTarget::Stdout) {
        eprintln!("error: {err}");
    }
    // Files for the application's user, whoever it is (the reference does the same).
    rustix::process::umask(rustix::fs::Mode::empty());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut paths = io_init_container::Paths::under(&args.root);
    paths.bin = args.bin_dir.unwrap_or(paths.bin);
    paths.share = args.share_dir.unwrap_or(paths.share);
    paths.config = args.config_file.unwrap_or(paths.config);
    paths.agent_conf = args.agent_conf_dir.unwrap_or(paths.agent_conf);
    paths.enrichment = args.enrichment_dir.unwrap_or(paths.enrichment);
    let options = io_init_container::Options {
        paths,
        download_timeout: std::time::Duration::from_secs(args.download_timeout.max(1)),
        attempts: args.attempts.max(1),
        ..Default::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    let result = runtime.block_on(io_init_container::run(|name| std::env::var(name).ok(), &options));
    match result {
        Ok(report) => {
            tracing::info!(
                files = report.files.len(),
                warnings = report.warnings.len(),
                version = report.installed.as_ref().map(|i| i.version.as_str()),
                elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
                peak_rss_kib = io_init_container::peak_rss_kib(),
                "init finished"
            );
            ExitCode::SUCCESS
        }
        Err(err) => fail(&format!("init failed: {err}")),
    }
}

/// Returns on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn print_crds(
    namespace: String,
    url: Option<String>,
    ca_bundle_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let endpoint = match (url, ca_bundle_file) {
        (Some(url), Some(file)) => pure_api::crd::ConversionEndpoint::Url {
            url,
            ca_bundle_pem: std::fs::read_to_string(&file)
                .with_context(|| format!("reading the CA bundle {}", file.display()))?,
        },
        _ => pure_api::crd::ConversionEndpoint::Service { namespace },
    };
    let yaml =
        pure_api::crd::to_yaml(&pure_api::crd::all(&endpoint)).context("rendering the CRDs as YAML")?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}

fn print_version(format: OutputFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Text => writeln!(
            out,
            "dynatrace-operator {} ({}/{}, minimum rustc {})",
            BUILD_INFO.version, BUILD_INFO.target_os, BUILD_INFO.target_arch, BUILD_INFO.rustc
        )?,
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&BUILD_INFO)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_json_names_the_crate_version() {
        let json = serde_json::to_value(&BUILD_INFO).unwrap();
        assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    }
}
