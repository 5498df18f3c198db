//! `cargo xtask run`: the product on a local cluster. Starts (or reuses) the cluster, runs the fake tenant,
//! the operator and the webhook server as child processes, applies a sample DynaKube, waits until its
//! OneAgent pods run on the kwok nodes, and serves until Ctrl-C or SIGTERM; then cleans up.
//!
//! The children are started through `test_kit::process` with `PR_SET_PDEATHSIG`, so they die with xtask
//! however it ends; so does a cluster this run started (unless `--keep-cluster`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use pure_api::dynakube::{DynaKube, DynaKubeStatus};
use serde_json::json;
use test_kit::cluster::free_port;
use test_kit::process::{Lifetime, ManagedProcess};
use test_kit::real_node::workloads::FakeOneAgent;
use test_kit::{Cluster, Tools};
use tokio::runtime::Runtime;

use crate::webhook::{self, NAMESPACE};

/// Options of `cargo xtask run`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Name of the local cluster: reused when it is running, else started (and stopped at the end).
    #[arg(long, default_value = "local")]
    pub name: String,
    /// Number of kwok nodes of a cluster this run starts.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Leave a cluster this run started running at the end.
    #[arg(long)]
    pub keep_cluster: bool,
    /// Clean up and exit once the OneAgent pods run, instead of waiting for Ctrl-C (for tests and CI).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Directory holding prebuilt `dynatrace-operator` and `fake-tenant` binaries; without it they are built
    /// with `cargo build` first.
    #[arg(long, value_name = "DIR")]
    pub binaries: Option<PathBuf>,
    /// Once the pods run, publish this OneAgent version on the fake tenant and show the operator rolling it
    /// through the nodes (for example `1.278.0.20231001-000000`).
    #[arg(long, value_name = "VERSION")]
    pub update_to: Option<String>,
    /// Add the machine's real node (needs root): `helm install` of `chart/` runs the operator, the webhook
    /// and the CSI driver on it as pods of the locally built image, and the cloudNativeFullStack OneAgent
    /// DaemonSet runs the fake OneAgent there for real, pulled from the fake tenant's registry; at exit the
    /// release is uninstalled again.
    #[arg(long)]
    pub real_node: bool,
    /// With --real-node: build the images with the release profile (slower) instead of the test profile.
    #[arg(long, requires = "real_node")]
    pub release: bool,
}

/// Name of the sample DynaKube and of its token Secret.
const DYNAKUBE: &str = "dynakube";
/// The sample DynaKube that injects code modules into the sample application's namespace.
const APPS_DYNAKUBE: &str = "apps";
/// The sample application's namespace and its label that the DynaKube `apps` selects.
const SAMPLE_NAMESPACE: &str = "sample-apps";
const SAMPLE_SELECTOR: (&str, &str) = ("sample.dynatrace.com/inject", "true");
/// The sample application's Deployment.
const SAMPLE_APP: &str = "sample-app";
/// The injected pod's volume with the OneAgent code module.
const SAMPLE_BIN_VOLUME: &str = "oneagent-bin";
/// The init container image the webhook puts into injected pods on kwok nodes (never pulled there).
const SAMPLE_INIT_IMAGE: &str = "dynatrace-operator:0.1.0-dev";
/// The ServiceAccount the OneAgent pods run as; the Helm chart installs it next to the operator.
const ONEAGENT_SERVICE_ACCOUNT: &str = "dynatrace-dynakube-oneagent";
/// The API token of the fake tenant's default configuration (it has every scope).
const API_TOKEN: &str = "dt0c01.test";
const FIELD_MANAGER: &str = "xtask-run";
/// How long each component may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the operator may take to roll out the OneAgent pods.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);
/// Runs a program with extra environment variables (`env NAME=value program args...`): testkit's process
/// starter sets no environment, and `env` execs the program in place (same pid, same parent-death signal).
const ENV: &str = "/usr/bin/env";
/// Log files without colour codes (tracing-subscriber honours `NO_COLOR`).
const NO_COLOR: &str = "NO_COLOR=1";
/// File in the cluster's directory holding the pid of the `cargo xtask run` that uses the cluster.
const RUN_PID_FILE: &str = "run.pid";

mod helm;
mod real_node;

/// Runs everything until Ctrl-C or SIGTERM (or until ready, with `--exit-when-ready`), then cleans up.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let binaries = match &options.binaries {
        Some(dir) => Binaries::in_dir(dir)?,
        None => Binaries::build()?,
    };
    if !Path::new(ENV).exists() {
        bail!(
            "{ENV} is missing; it sets the environment of the operator, the webhook server and the fake tenant"
        );
    }
    let tools = crate::tools::ensure(false)?;
    if options.real_node {
        if let Some(reason) = test_kit::real_node::unsupported_reason() {
            bail!("--real-node: this machine cannot run the real node: {reason}; leave out --real-node");
        }
        crate::tools::ensure_kubelet(false)?;
        // The real node's system is installed with the chart.
        crate::tools::ensure_helm(false)?;
        real_node::check_version(options.update_to.as_deref())?;
    }
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut session = Session::new(options, started)?;
    let outcome = runtime.block_on(session.run(options, &tools, &binaries));
    let cleanup = session.shutdown(&runtime);
    match (outcome, cleanup) {
        (Ok(()), cleanup) => cleanup,
        (Err(err), Ok(())) => Err(err),
        (Err(err), Err(cleanup)) => {
            eprintln!("error: {cleanup:#}");
            Err(err)
        }
    }
}

/// Where the `dynatrace-operator` and `fake-tenant` executables are.
#[derive(Debug)]
struct Binaries {
    operator: PathBuf,
    fake_tenant: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`, which must both exist.
    fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let find = |name: &str| {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} does not exist; build it with `cargo build -p dynatrace-operator -p test-fake-tenant`, or \
                     leave out --binaries to have it built",
                    path.display()
                );
            }
            std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
        };
        Ok(Self {
            operator: find("dynatrace-operator")?,
            fake_tenant: find("fake-tenant")?,
        })
    }

    /// Builds both with cargo and takes the executables cargo reports.
    fn build() -> anyhow::Result<Self> {
        let args = [
            "build",
            "-p",
            "dynatrace-operator",
            "-p",
            "test-fake-tenant",
            "--message-format=json-render-diagnostics",
        ];
        eprintln!("==> cargo {}", args.join(" "));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(cargo)
            .args(args)
            .current_dir(test_kit::tools::workspace_root())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo build for the operator and the fake tenant")?;
        if !output.status.success() {
            bail!(
                "building the operator and the fake tenant failed (`cargo {}` exited with {}); fix the build, \
                 or pass prebuilt binaries with --binaries",
                args.join(" "),
                output.status
            );
        }
        let messages = String::from_utf8_lossy(&output.stdout);
        let find = |name: &str| {
            built_executable(&messages, name)
                .with_context(|| format!("cargo build reported no executable named {name}"))
        };
        Ok(Self {
            operator: find("dynatrace-operator")?,
            fake_tenant: find("fake-tenant")?,
        })
    }
}

/// The executable called `name` among cargo's JSON messages (`--message-format=json`).
fn built_executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .find(|path| path.file_name().is_some_and(|n| n == name))
}

/// A component this run started, as a child process tied to xtask.
struct Child {
    process: ManagedProcess,
    /// Where it serves, for the summary.
    endpoint: String,
}

/// What this run started, so that it can be cleaned up from any point of the start-up.
struct Session {
    name: String,
    /// The cluster's data directory.
    dir: PathBuf,
    keep_cluster: bool,
    cluster: Option<Cluster>,
    /// Whether this run started the cluster (else it was running before and stays).
    started_cluster: bool,
    children: Vec<Child>,
    client: Option<Client>,
    webhook_registered: bool,
    wrote_pid_file: bool,
    /// When the start began (after the build), for the summary.
    started: Instant,
    exit_when_ready: bool,
    /// The fake tenant's API URL, once it runs.
    tenant_api_url: Option<String>,
    /// The CA of the fake tenant's HTTPS certificate (with the real node).
    tenant_ca_pem: Option<String>,
    /// Whether the cluster has the real node and the operator and webhook run as its pods.
    real_node: bool,
    /// How long the operator may take to roll out the OneAgent pods.
    rollout_timeout: Duration,
    /// The Helm release this run installed (with the real node), uninstalled at the end.
    release: Option<helm::Release>,
    /// What the summary says about the release once its pods are Ready.
    installed: Option<String>,
}

impl Session {
    fn new(options: &Options, started: Instant) -> anyhow::Result<Self> {
        let dir = crate::clusters_dir().join(&options.name);
        check_no_other_run(&dir, &options.name)?;
        Ok(Self {
            name: options.name.clone(),
            dir,
            keep_cluster: options.keep_cluster,
            cluster: None,
            started_cluster: false,
            children: Vec::new(),
            client: None,
            webhook_registered: false,
            wrote_pid_file: false,
            started,
            exit_when_ready: options.exit_when_ready,
            tenant_api_url: None,
            tenant_ca_pem: None,
            real_node: options.real_node,
            rollout_timeout: if options.real_node {
                real_node::ROLLOUT_TIMEOUT
            } else {
                ROLLOUT_TIMEOUT
            },
            release: None,
            installed: None,
        })
    }

    /// Starts everything and waits for Ctrl-C or SIGTERM, a failed component, or (with
    /// `--exit-when-ready`) nothing.
    async fn run(&mut self, options: &Options, tools: &Tools, binaries: &Binaries) -> anyhow::Result<()> {
        let mut signals = Termination::listen()?;
        tokio::select! {
            result = self.start(options, tools, binaries) => result?,
            signal = signals.recv() => {
                eprintln!("{signal} received during start-up; cleaning up.");
                return Ok(());
            }
        }
        if let Some(version) = &options.update_to {
            tokio::select! {
                result = self.update(version) => result?,
                signal = signals.recv() => {
                    eprintln!("{signal} received during the update; cleaning up.");
                    return Ok(());
                }
            }
        }
        if options.exit_when_ready {
            println!("--exit-when-ready: stopping everything again.");
            return Ok(());
        }
        tokio::select! {
            signal = signals.recv() => {
                eprintln!("{signal} received; cleaning up.");
                Ok(())
            }
            err = self.watch() => Err(err),
        }
    }

    async fn start(&mut self, options: &Options, tools: &Tools, binaries: &Binaries) -> anyhow::Result<()> {
        if options.real_node {
            return self.start_on_real_node(options, tools, binaries).await;
        }
        self.cluster_up(tools, options.nodes).await?;
        let cluster = self.cluster.as_ref().context("the cluster handle is missing")?;
        let (kubeconfig, api_server) = (
            cluster.kubeconfig().to_owned(),
            cluster.state().api_server_url.clone(),
        );
        let client = cluster.client().await?;
        self.client = Some(client.clone());
        let logs = self.claim()?;
        eprintln!(
            "Starting the fake tenant, the webhook server and the operator; their logs go to {}",
            logs.display()
        );

        let api_url = self
            .start_fake_tenant(
                &binaries.fake_tenant,
                &["--listen".into(), "127.0.0.1:0".into()],
                &logs,
            )
            .await?;

        // The CRDs (conversion by URL) before the webhook and the operator, whose watches need them.
        let ca_pem = webhook::write_certificates(&self.dir.join("webhook"))?;
        let (port, metrics_port, health_port) = (free_port()?, free_port()?, free_port()?);
        let base = format!("https://127.0.0.1:{port}");
        webhook::install_crds(&client, &base, &ca_pem).await?;
        self.wait("the CRDs to be established", START_TIMEOUT, || {
            crds_established(&client)
        })
        .await?;
        // The operator issues the webhook's certificates (Secret dynatrace-webhook-certs, with 127.0.0.1 in
        // the serving certificate because the webhooks are registered by URL) and writes every caBundle;
        // the webhook server reads its certificate straight from that Secret.
        let webhook_args = [
            "webhook-server",
            "--certs-secret",
            "dynatrace-webhook-certs",
            "--namespace",
            NAMESPACE,
            "--bind-address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--metrics-port",
            &metrics_port.to_string(),
            // Nothing pulls it on kwok nodes; the real-node run uses the image it imported.
            "--init-image",
            SAMPLE_INIT_IMAGE,
        ]
        .map(String::from);
        self.spawn(
            "webhook",
            &binaries.operator,
            &webhook_args,
            Some(&kubeconfig),
            &logs,
        )?;
        self.set_endpoint(
            "webhook",
            &format!("{base} (metrics http://127.0.0.1:{metrics_port}/metrics)"),
        );
        let operator_args = [
            "operator".to_owned(),
            "--health-address".to_owned(),
            format!("127.0.0.1:{health_port}"),
            "--namespace".to_owned(),
            NAMESPACE.to_owned(),
            "--webhook-cert-ip".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        self.spawn(
            "operator",
            &binaries.operator,
            &operator_args,
            Some(&kubeconfig),
            &logs,
        )?;
        self.set_endpoint(
            "operator",
            &format!("metrics http://127.0.0.1:{health_port}/metrics"),
        );
        // Registered first: the operator's certificate controller acts once a webhook configuration exists,
        // and the webhook server is ready once the operator has written the certificate.
        webhook::register_validating(&client, &base, &ca_pem).await?;
        webhook::register_mutating(&client, &base, &ca_pem).await?;
        self.webhook_registered = true;
        self.wait("the operator to be ready", START_TIMEOUT, || {
            is_ready(health_port)
        })
        .await?;
        self.wait(
            "the webhook server to load the operator's certificate",
            START_TIMEOUT,
            || is_ready(metrics_port),
        )
        .await?;

        eprintln!(
            "Applying the sample: ServiceAccount, token Secret and DynaKube {NAMESPACE}/{DYNAKUBE} ..."
        );
        apply_prerequisites(&client).await?;
        let dynakube = sample_dynakube(&api_url);
        self.wait("the DynaKube to be admitted", START_TIMEOUT, || {
            apply_dynakube(&client, &dynakube)
        })
        .await?;
        let pods = self
            .wait(
                "the OneAgent pods to run on every node the DaemonSet selects",
                ROLLOUT_TIMEOUT,
                || oneagent_pods(&client),
            )
            .await?;
        let status = self
            .wait("the DynaKube's phase Running", ROLLOUT_TIMEOUT, || {
                dynakube_running(&client)
            })
            .await?;

        eprintln!(
            "Applying the sample application: DynaKube {NAMESPACE}/{APPS_DYNAKUBE} (applicationMonitoring), \
             namespace {SAMPLE_NAMESPACE} and Deployment {SAMPLE_APP} ..."
        );
        let apps = sample_apps_dynakube(&api_url);
        apply_sample_application(&client, &apps).await?;
        let deployment = sample_deployment(test_images::SAMPLE_APP_IMAGE);
        let injected = self
            .wait(
                "the sample application's pod with the OneAgent code module injected",
                ROLLOUT_TIMEOUT,
                || injected_sample_pod(&client, &deployment, false),
            )
            .await?;

        self.print_summary(
            &pods,
            &status,
            &api_server,
            &logs,
            &tools.kubectl,
            Shown {
                agent: None,
                injected: Some(&injected),
                csi: None,
            },
        );
        Ok(())
    }

    /// Marks the cluster as used by this run (see [`check_no_other_run`]) and creates its log directory,
    /// which it returns.
    fn claim(&mut self) -> anyhow::Result<PathBuf> {
        std::fs::write(self.dir.join(RUN_PID_FILE), std::process::id().to_string())
            .with_context(|| format!("writing {}", self.dir.join(RUN_PID_FILE).display()))?;
        self.wrote_pid_file = true;
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(logs)
    }

    /// Starts the fake tenant with `args` and returns its API URL; it picks a free port and says which.
    async fn start_fake_tenant(
        &mut self,
        binary: &Path,
        args: &[String],
        logs: &Path,
    ) -> anyhow::Result<String> {
        let tenant_log = logs.join("fake-tenant.log");
        self.spawn("fake-tenant", binary, args, None, logs)?;
        let api_url = self
            .wait("the fake tenant to listen", START_TIMEOUT, || async {
                let log = std::fs::read_to_string(&tenant_log).unwrap_or_default();
                Ok(listening_url(&log))
            })
            .await?;
        self.set_endpoint("fake-tenant", &api_url);
        self.tenant_api_url = Some(api_url.clone());
        Ok(api_url)
    }

    /// Publishes `version` on the fake tenant and follows the operator's rollout of it until every node
    /// runs it, printing each step.
    async fn update(&mut self, version: &str) -> anyhow::Result<()> {
        let client = self.client.clone().context("no Kubernetes client")?;
        let api_url = self
            .tenant_api_url
            .clone()
            .context("the fake tenant is not running")?;
        publish_version(&api_url, version, self.tenant_ca_pem.as_deref()).await?;
        // The operator asks the tenant when it reconciles; a touch of the DynaKube makes it reconcile now
        // instead of at its next periodic check.
        let touch = json!({ "metadata": { "annotations": {
            "xtask.dynatrace-operator.dev/update-requested": version,
        } } });
        Api::<DynaKube>::namespaced(client.clone(), NAMESPACE)
            .patch(DYNAKUBE, &PatchParams::default(), &Patch::Merge(&touch))
            .await
            .context("touching the sample DynaKube")?;
        println!("\nPublished OneAgent {version} on the fake tenant; the operator rolls it out:");
        let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let wanted = version.to_owned();
        let rollout_timeout = self.rollout_timeout;
        self.wait("the rollout of the new version", rollout_timeout, || {
            let (client, wanted, last) = (client.clone(), wanted.clone(), last.clone());
            async move {
                let status = Api::<DynaKube>::namespaced(client, NAMESPACE)
                    .get(DYNAKUBE)
                    .await?
                    .status
                    .unwrap_or_default();
                let rollout = status.one_agent.and_then(|o| o.rollout).unwrap_or_default();
                let message = rollout.message.clone().unwrap_or_default();
                {
                    let mut last = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if !message.is_empty() && message != *last {
                        println!("  {message}");
                        last.clone_from(&message);
                    }
                }
                let done = rollout.target_version.as_deref() == Some(wanted.as_str())
                    && rollout.nodes_pending == 0
                    && status
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "OneAgentRollout" && c.status == "True");
                if done { Ok(Some(())) } else { bail!("{message}") }
            }
        })
        .await?;
        let pods = self
            .wait("every OneAgent pod on the new version", rollout_timeout, || {
                let (client, wanted) = (client.clone(), wanted.clone());
                async move {
                    let pods = oneagent_pods(&client).await?;
                    Ok(pods.filter(|rows| rows.iter().all(|r| r[3] == wanted)))
                }
            })
            .await?;
        let header = ["POD", "NODE", "PHASE", "VERSION"].map(String::from);
        println!("\n{}", table(std::iter::once(&header).chain(&pods)));
        if self.real_node {
            let agent = self.wait_for_fake_oneagent(Some(version)).await?;
            print_fake_oneagent(&agent);
        }
        Ok(())
    }

    /// Reuses the running cluster of this name, or starts it.
    async fn cluster_up(&mut self, tools: &Tools, nodes: usize) -> anyhow::Result<()> {
        let name = self.name.clone();
        if let Ok(mut cluster) = Cluster::load(&self.dir) {
            let dead = cluster.dead_processes();
            let total = cluster.state().processes.len();
            if dead.is_empty() && total > 0 && self.real_node && !cluster.state().real_node {
                bail!(
                    "cluster {name:?} runs without the real node; stop it with `cargo xtask cluster down --name \
                     {name}`, or choose another cluster with --name"
                );
            }
            if dead.is_empty() && total > 0 {
                eprintln!("Using the running cluster {name:?}; it keeps running afterwards.");
                self.cluster = Some(cluster);
                return Ok(());
            }
            if dead.len() < total {
                bail!(
                    "cluster {name:?} is degraded (not running: {}); stop it with `cargo xtask cluster down \
                     --name {name}` and run again",
                    dead.join(", ")
                );
            }
            // Every process is gone (a killed run, a reboot): the cluster starts afresh in its directory.
        }
        let lifetime = if self.keep_cluster {
            Lifetime::Detached
        } else {
            Lifetime::Tied
        };
        self.cluster = Some(crate::start_cluster(tools, &name, nodes, self.real_node, lifetime).await?);
        self.started_cluster = true;
        Ok(())
    }

    /// Starts a component tied to this process, logging to `<logs>/<name>.log`, with `KUBECONFIG` set when
    /// `kubeconfig` is given.
    fn spawn(
        &mut self,
        name: &str,
        binary: &Path,
        args: &[String],
        kubeconfig: Option<&Path>,
        logs: &Path,
    ) -> anyhow::Result<()> {
        let log = logs.join(format!("{name}.log"));
        let mut env_args = vec![NO_COLOR.to_owned()];
        env_args.extend(kubeconfig.map(|k| format!("KUBECONFIG={}", k.display())));
        env_args.push(binary.display().to_string());
        env_args.extend_from_slice(args);
        let process = ManagedProcess::start(name, Path::new(ENV), &env_args, &log, Lifetime::Tied)?;
        self.children.push(Child {
            process,
            endpoint: String::new(),
        });
        Ok(())
    }

    fn set_endpoint(&mut self, name: &str, endpoint: &str) {
        if let Some(child) = self.children.iter_mut().find(|c| c.process.record.name == name) {
            endpoint.clone_into(&mut child.endpoint);
        }
    }

    /// Fails naming the component and quoting its log when a child or a cluster process has exited.
    fn check_processes(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            if !child.process.is_running() {
                bail!(
                    "{} exited; last lines of {}:\n{}",
                    child.process.record.name,
                    child.process.record.log.display(),
                    child.process.log_tail(20)
                );
            }
        }
        if let Some(cluster) = &mut self.cluster {
            let dead = cluster.dead_processes();
            if !dead.is_empty() {
                bail!(
                    "cluster {:?} lost {}; see the logs in {}",
                    self.name,
                    dead.join(", "),
                    self.dir.join("logs").display()
                );
            }
        }
        Ok(())
    }

    /// Polls `check` every 250 ms until it gives a value, failing when a process exits or after `timeout`
    /// with the last error.
    async fn wait<T, F, Fut>(&mut self, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        loop {
            self.check_processes()
                .with_context(|| format!("while waiting for {what}"))?;
            match check().await {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(err) => last_error = Some(err),
            }
            if Instant::now() >= deadline {
                let detail = last_error.map(|e| format!(" (last: {e:#})")).unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}{detail}; see the logs in {}",
                    self.dir.join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Returns the reason once a component or a cluster process has stopped.
    async fn watch(&mut self) -> anyhow::Error {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(err) = self.check_processes() {
                return err;
            }
        }
    }

    fn print_summary(
        &self,
        pods: &[[String; 4]],
        status: &DynaKubeStatus,
        api_server: &str,
        logs: &Path,
        kubectl: &Path,
        shown: Shown<'_>,
    ) {
        let Shown { agent, injected, csi } = shown;
        let name = &self.name;
        println!(
            "Ready {:.1} s after start: DynaKube {NAMESPACE}/{DYNAKUBE} on cluster {name:?} ({api_server}).",
            self.started.elapsed().as_secs_f64()
        );
        println!();
        if let Some(installed) = &self.installed {
            println!("{installed}");
            println!();
        }
        let header = ["POD", "NODE", "PHASE", "VERSION"].map(String::from);
        print!("{}", table(std::iter::once(&header).chain(pods)));
        println!();
        if let Some(agent) = agent {
            print_fake_oneagent(agent);
            println!();
        }
        let version = status
            .one_agent
            .as_ref()
            .and_then(|o| o.version.version.as_deref())
            .unwrap_or("unknown");
        println!(
            "DynaKube {NAMESPACE}/{DYNAKUBE}: phase {}, OneAgent version {version}.",
            status.phase.as_deref().unwrap_or("unknown")
        );
        println!();
        if let Some(pod) = injected {
            // On the real node the cloudNativeFullStack DynaKube maps the sample namespace itself.
            print_injected_pod(pod, if self.real_node { DYNAKUBE } else { APPS_DYNAKUBE });
        }
        if let Some(csi) = csi {
            csi.print();
        }
        println!("Processes (logs in {}):", logs.display());
        let rows: Vec<[String; 4]> = self
            .children
            .iter()
            .map(|c| {
                let record = &c.process.record;
                [
                    format!("  {}", record.name),
                    format!("pid {}", record.pid),
                    c.endpoint.clone(),
                    format!("{}.log", record.name),
                ]
            })
            .collect();
        print!("{}", table(&rows));
        if self.real_node {
            println!(
                "  operator, webhook: pods in namespace {NAMESPACE} on node {} (kubectl -n {NAMESPACE} logs \
                 deploy/dynatrace-operator)",
                test_kit::real_node::NODE_NAME
            );
            println!(
                "  cluster components: etcd.log, kube-apiserver.log, ..., containerd.log, kubelet.log in the same directory"
            );
        } else {
            println!(
                "  cluster components: etcd.log, kube-apiserver.log, kube-controller-manager.log, ... in the same directory"
            );
        }
        println!();
        println!("kubectl:");
        let kubeconfig = self.dir.join("kubeconfig");
        crate::print_kubectl_usage(
            &kubeconfig,
            kubectl,
            &format!(
                "-n {NAMESPACE} get dynakube,daemonset,pods -o wide; kubectl -n {SAMPLE_NAMESPACE} get pods -o yaml"
            ),
        );
        println!();
        if self.exit_when_ready {
            return;
        }
        let stops = if self.real_node {
            "the sample is deleted, `helm uninstall` removes the release (checked), the fake tenant stops"
        } else {
            "the operator, the webhook server and the fake tenant stop, the webhook registration is removed"
        };
        let cluster = if !self.started_cluster {
            "the cluster keeps running (it ran before)"
        } else if self.keep_cluster {
            "the cluster keeps running (--keep-cluster)"
        } else {
            "the cluster is stopped (this run started it; --keep-cluster keeps it)"
        };
        println!("Stop with Ctrl-C: {stops}, and {cluster}.");
    }

    /// Stops what this run started; the cluster only if this run started it and `--keep-cluster` is off.
    fn shutdown(&mut self, runtime: &Runtime) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        // Uninstalled as users do it, while the cluster still runs: first what the operator manages, then the
        // release.
        if let (Some(release), Some(client)) = (self.release.take(), self.client.clone()) {
            eprintln!("Deleting the sample, then `helm uninstall {}` ...", helm::RELEASE);
            if let Err(err) = runtime.block_on(real_node::uninstall(&client, &release)) {
                errors.push(format!("{err:#}"));
            }
        }
        if !self.children.is_empty() {
            let what = if self.real_node {
                "the fake tenant"
            } else {
                "the operator, the webhook server and the fake tenant"
            };
            eprintln!("Stopping {what} ...");
        }
        while let Some(mut child) = self.children.pop() {
            if let Err(err) = child.process.stop() {
                errors.push(format!("{err:#}"));
            }
        }
        let name = self.name.clone();
        let cluster_stays = !self.started_cluster || self.keep_cluster;
        // A cluster that is removed takes the registration with it.
        if let Some(client) = self.client.take()
            && self.webhook_registered
            && cluster_stays
        {
            match runtime.block_on(webhook::unregister(&client)) {
                Ok(()) => eprintln!(
                    "Removed the Validating- and MutatingWebhookConfiguration {}.",
                    webhook::CONFIGURATION
                ),
                Err(err) => errors.push(format!("{err:#}")),
            }
        }
        if self.wrote_pid_file && cluster_stays {
            let _ = std::fs::remove_file(self.dir.join(RUN_PID_FILE));
        }
        match self.cluster.take() {
            None => {}
            Some(cluster) if !self.started_cluster => {
                drop(cluster); // a loaded handle: dropping it stops nothing
                eprintln!("Cluster {name:?} keeps running, as before this run.");
            }
            Some(cluster) if self.keep_cluster => {
                cluster.detach();
                eprintln!(
                    "Cluster {name:?} keeps running (--keep-cluster); stop it with `cargo xtask cluster down \
                     --name {name}`."
                );
            }
            Some(cluster) => {
                let kept = keep_logs(&self.dir, &name);
                match cluster.stop() {
                    Ok(()) => eprintln!("Cluster {name:?} stopped and its data removed."),
                    Err(err) => errors.push(format!("stopping cluster {name:?}: {err:#}")),
                }
                match kept {
                    Ok(dir) => eprintln!("The logs of this run are in {}", dir.display()),
                    Err(err) => errors.push(format!("{err:#}")),
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up: {}", errors.join("; "))
        }
    }
}

/// What the summary shows besides the OneAgent pods.
struct Shown<'a> {
    /// What the fake OneAgent on the real node reports.
    agent: Option<&'a FakeOneAgent>,
    /// The sample application's injected pod.
    injected: Option<&'a Pod>,
    /// With the real node: what shows that the pod's code module came from the CSI driver's cache.
    csi: Option<&'a real_node::CsiProof>,
}

/// Refuses to start when another `cargo xtask run` uses the cluster directory `dir`.
fn check_no_other_run(dir: &Path, name: &str) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join(RUN_PID_FILE)) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(());
    };
    let exe = std::env::current_exe().context("finding the path of this executable")?;
    if test_kit::process::pid_runs_binary(pid, &exe) {
        bail!(
            "another `cargo xtask run` (pid {pid}) uses cluster {name:?}; stop it first (Ctrl-C there, or \
             `kill {pid}`), or choose another cluster with --name"
        );
    }
    Ok(())
}

/// Moves the cluster's logs to `target/local-run-logs/<name>/` before its directory is removed. Processes
/// still running keep writing to the moved files.
fn keep_logs(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let target = crate::clusters_dir().with_file_name("local-run-logs").join(name);
    if target.exists() {
        std::fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let logs = dir.join("logs");
    std::fs::rename(&logs, &target)
        .with_context(|| format!("moving {} to {}", logs.display(), target.display()))?;
    Ok(target)
}

/// The URL in the fake tenant's `fake tenant listening on <url>` line.
fn listening_url(log: &str) -> Option<String> {
    log.lines()
        .find_map(|line| line.split_once("fake tenant listening on "))
        .map(|(_, url)| url.trim().to_owned())
        .filter(|url| !url.is_empty())
}

/// Whether `/readyz` on 127.0.0.1:`port` answers 200.
async fn is_ready(port: u16) -> anyhow::Result<Option<()>> {
    let answer = test_kit::http_get(port, "/readyz").await;
    Ok(answer
        .is_some_and(|a| a.starts_with("HTTP/1.1 200"))
        .then_some(()))
}

/// Whether every dynatrace.com CRD is Established.
async fn crds_established(client: &Client) -> anyhow::Result<Option<()>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let endpoint = pure_api::crd::ConversionEndpoint::Service {
        namespace: NAMESPACE.to_owned(),
    };
    for crd in pure_api::crd::all(&endpoint) {
        let name = crd.name_any();
        let established = crds.get_opt(&name).await?.is_some_and(|crd| {
            crd.status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        });
        if !established {
            anyhow::bail!("CRD {name} is not established yet");
        }
    }
    Ok(Some(()))
}

/// The OneAgent ServiceAccount and the token Secret (server-side apply: a rerun on a kept cluster updates).
async fn apply_prerequisites(client: &Client) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let account = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": ONEAGENT_SERVICE_ACCOUNT, "namespace": NAMESPACE },
    });
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .patch(ONEAGENT_SERVICE_ACCOUNT, &params, &Patch::Apply(&account))
        .await
        .with_context(|| format!("applying the ServiceAccount {NAMESPACE}/{ONEAGENT_SERVICE_ACCOUNT}"))?;
    let token = serde_json::to_value(ByteString(API_TOKEN.as_bytes().to_vec()))?;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": DYNAKUBE, "namespace": NAMESPACE },
        "data": { "apiToken": token },
    });
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .patch(DYNAKUBE, &params, &Patch::Apply(&secret))
        .await
        .with_context(|| format!("applying the token Secret {NAMESPACE}/{DYNAKUBE}"))?;
    Ok(())
}

/// The sample: classic full-stack OneAgents on every node, which needs no CSI driver, against the fake
/// tenant.
fn sample_dynakube(api_url: &str) -> serde_json::Value {
    json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        // The fake tenant may be asked on every reconcile, so that a published version shows at once
        // (the default is every 15 minutes).
        "metadata": { "name": DYNAKUBE, "namespace": NAMESPACE, "annotations": {
            "feature.dynatrace.com/dynatrace-api-request-threshold": "0",
        } },
        "spec": { "apiUrl": api_url, "oneAgent": { "classicFullStack": {} } },
    })
}

/// Applies the DynaKube; an error (a denial, for one) is kept as the last error while waiting.
async fn apply_dynakube(client: &Client, dynakube: &serde_json::Value) -> anyhow::Result<Option<()>> {
    Api::<DynaKube>::namespaced(client.clone(), NAMESPACE)
        .patch(
            DYNAKUBE,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(dynakube),
        )
        .await
        .with_context(|| format!("applying the DynaKube {NAMESPACE}/{DYNAKUBE}"))?;
    Ok(Some(()))
}

/// The sample application's DynaKube: `apps` in applicationMonitoring mode, sharing the sample's token
/// Secret, selecting the namespace `sample-apps`.
fn sample_apps_dynakube(api_url: &str) -> serde_json::Value {
    json!({
        "apiVersion": "dynatrace.com/v1beta1", "kind": "DynaKube",
        "metadata": { "name": APPS_DYNAKUBE, "namespace": NAMESPACE },
        "spec": {
            "apiUrl": api_url,
            "tokens": DYNAKUBE,
            "namespaceSelector": { "matchLabels": { SAMPLE_SELECTOR.0: SAMPLE_SELECTOR.1 } },
            "oneAgent": { "applicationMonitoring": {} },
        },
    })
}

/// Applies the sample application's DynaKube (see [`sample_apps_dynakube`]) and the namespace it selects.
async fn apply_sample_application(client: &Client, dynakube: &serde_json::Value) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<DynaKube>::namespaced(client.clone(), NAMESPACE)
        .patch(APPS_DYNAKUBE, &params, &Patch::Apply(dynakube))
        .await
        .with_context(|| format!("applying the DynaKube {NAMESPACE}/{APPS_DYNAKUBE}"))?;
    apply_sample_namespace(client).await
}

/// Applies the sample application's namespace, labelled for the DynaKube that maps it.
async fn apply_sample_namespace(client: &Client) -> anyhow::Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": SAMPLE_NAMESPACE, "labels": { SAMPLE_SELECTOR.0: SAMPLE_SELECTOR.1 } },
    });
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(SAMPLE_NAMESPACE, &params, &Patch::Apply(&namespace))
        .await
        .with_context(|| format!("applying the namespace {SAMPLE_NAMESPACE}"))?;
    Ok(())
}

/// The sample application's Deployment: one pod of `image`.
fn sample_deployment(image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": SAMPLE_APP, "namespace": SAMPLE_NAMESPACE },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": SAMPLE_APP } },
            "template": {
                "metadata": { "labels": { "app": SAMPLE_APP } },
                "spec": { "containers": [{ "name": "app", "image": image }] },
            },
        },
    })
}

/// Creates the sample `deployment` once the namespace is ready for injection (labelled, with the init
/// Secret the operator writes), and returns its pod once it has been injected (with `oneagent-bin` from the
/// CSI driver when `csi`). A pod created earlier is admitted without injection by design, so the Deployment
/// is created only then.
async fn injected_sample_pod(
    client: &Client,
    deployment: &serde_json::Value,
    csi: bool,
) -> anyhow::Result<Option<Pod>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SAMPLE_NAMESPACE);
    if secrets
        .get_opt(pure_api::dynakube::names::INIT_SECRET)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), SAMPLE_NAMESPACE)
        .patch(
            SAMPLE_APP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(deployment),
        )
        .await
        .with_context(|| format!("applying the Deployment {SAMPLE_NAMESPACE}/{SAMPLE_APP}"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), SAMPLE_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(&format!("app={SAMPLE_APP}")))
        .await?;
    for pod in list.items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let injected = pod
            .annotations()
            .get("oneagent.dynatrace.com/injected")
            .is_some_and(|v| v == "true");
        if injected && (!csi || csi_bin_volume(&pod)) {
            return Ok(Some(pod));
        }
        // Created before the webhook could inject it (or before its caches saw the CSI driver): let the
        // ReplicaSet make a new one.
        pods.delete(&pod.name_any(), &Default::default()).await?;
    }
    Ok(None)
}

/// Whether the pod's `oneagent-bin` volume comes from the CSI driver.
fn csi_bin_volume(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.name == SAMPLE_BIN_VOLUME && v.csi.is_some())
}

/// Prints what the webhook added to the sample application's pod on behalf of `dynakube`.
fn print_injected_pod(pod: &Pod, dynakube: &str) {
    let Some(spec) = pod.spec.as_ref() else { return };
    println!(
        "Sample application {SAMPLE_NAMESPACE}/{} (phase {}), injected by DynaKube {dynakube}:",
        pod.name_any(),
        pod.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending")
    );
    for init in spec.init_containers.iter().flatten() {
        println!(
            "  init container   {} ({} {})",
            init.name,
            init.image.as_deref().unwrap_or_default(),
            init.args.as_deref().unwrap_or_default().join(" ")
        );
    }
    let volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| !v.name.starts_with("kube-api-access"))
        .map(|v| {
            let source = if v.csi.is_some() {
                "csi"
            } else if v.secret.is_some() {
                "secret"
            } else {
                "emptyDir"
            };
            format!("{} ({source})", v.name)
        })
        .collect();
    println!("  volumes          {}", volumes.join(", "));
    for container in &spec.containers {
        let preload = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "LD_PRELOAD")
            .and_then(|e| e.value.as_deref())
            .unwrap_or("-");
        println!("  container {:<6} LD_PRELOAD={preload}", container.name);
        for mount in container.volume_mounts.iter().flatten() {
            if mount.name.starts_with("kube-api-access") {
                continue;
            }
            println!(
                "                   {} <- {}{}",
                mount.mount_path,
                mount.name,
                mount
                    .sub_path
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            );
        }
    }
    println!();
}

/// The OneAgent pods (pod, node, phase, OneAgent version) once as many run as the DaemonSet wants, sorted by node.
async fn oneagent_pods(client: &Client) -> anyhow::Result<Option<Vec<[String; 4]>>> {
    let daemonset_name = pure_api::dynakube::names::one_agent_daemonset(DYNAKUBE);
    let Some(daemonset) = Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE)
        .get_opt(&daemonset_name)
        .await?
    else {
        bail!("the operator has not created the DaemonSet {NAMESPACE}/{daemonset_name} yet");
    };
    let desired = daemonset
        .status
        .as_ref()
        .map_or(0, |s| s.desired_number_scheduled);
    let selector = daemonset
        .spec
        .and_then(|s| s.selector.match_labels)
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if desired == 0 || selector.is_empty() {
        bail!("the DaemonSet {NAMESPACE}/{daemonset_name} wants no pods yet");
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let mut rows: Vec<[String; 4]> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let spec = p.spec.as_ref();
            [
                p.name_any(),
                spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
                p.labels()
                    .get("app.kubernetes.io/version")
                    .cloned()
                    .unwrap_or_default(),
            ]
        })
        .collect();
    rows.sort_by(|a, b| (&a[1], &a[0]).cmp(&(&b[1], &b[0])));
    let running = rows
        .iter()
        .filter(|r| r[2] == "Running" && !r[1].is_empty())
        .count();
    if usize::try_from(desired).is_ok_and(|d| running >= d) {
        Ok(Some(rows))
    } else {
        bail!("{running} of {desired} OneAgent pods are Running")
    }
}

/// The DynaKube's status once its phase is Running; otherwise its phase and conditions as the last error.
async fn dynakube_running(client: &Client) -> anyhow::Result<Option<DynaKubeStatus>> {
    let status = Api::<DynaKube>::namespaced(client.clone(), NAMESPACE)
        .get(DYNAKUBE)
        .await?
        .status
        .unwrap_or_default();
    if status.phase.as_deref() == Some("Running") {
        return Ok(Some(status));
    }
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.message))
        .collect();
    bail!(
        "phase {}, conditions: {}",
        status.phase.as_deref().unwrap_or("none"),
        conditions.join("; ")
    )
}

/// Publishes a OneAgent version on the fake tenant (`POST /admin/versions`), over HTTPS trusting `ca_pem`
/// when given.
async fn publish_version(api_url: &str, version: &str, ca_pem: Option<&str>) -> anyhow::Result<()> {
    let base = api_url
        .strip_suffix("/api")
        .with_context(|| format!("the fake tenant's URL {api_url} does not end in /api"))?;
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes())
            .context("the fake tenant's CA certificate is not valid PEM")?;
        builder = builder.add_root_certificate(ca);
    }
    let client = builder
        .build()
        .context("building the HTTP client for the fake tenant")?;
    let url = format!("{base}/admin/versions");
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(json!({ "version": version }).to_string())
        .send()
        .await
        .with_context(|| format!("POST {url} (is the fake tenant running? see its log)"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        bail!("the fake tenant refused version {version} ({status}): {body}");
    }
    Ok(())
}

/// What the fake OneAgent on the real node printed when it started.
fn print_fake_oneagent(agent: &FakeOneAgent) {
    println!(
        "OneAgent pod {} on node {} printed:",
        agent.pod,
        test_kit::real_node::NODE_NAME
    );
    println!(
        "  {}{}",
        test_kit::real_node::workloads::FAKE_ONEAGENT_STARTED,
        agent.report
    );
}

/// Left-aligned columns separated by two spaces.
fn table<'a>(rows: impl IntoIterator<Item = &'a [String; 4]> + Clone) -> String {
    let mut widths = [0; 4];
    for row in rows.clone() {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// SIGINT (Ctrl-C) and SIGTERM.
struct Termination {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Termination {
    /// Starts listening; from then on both signals no longer end the process but are reported here.
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_fake_tenants_default() {
        let config = test_fake_tenant::TenantConfig::default();
        assert!(config.tokens.iter().any(|t| t.value == API_TOKEN));
    }

    #[test]
    fn the_fake_tenant_url_is_read_from_its_log() {
        let log = "2026-01-01T00:00:00Z INFO starting\nfake tenant listening on http://127.0.0.1:4321/api\n";
        assert_eq!(listening_url(log).as_deref(), Some("http://127.0.0.1:4321/api"));
        assert_eq!(listening_url("starting\n"), None);
    }

    #[test]
    fn cargo_messages_name_the_executables() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","executable":"/t/debug/fake-tenant"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            built_executable(messages, "fake-tenant"),
            Some(PathBuf::from("/t/debug/fake-tenant"))
        );
        assert_eq!(built_executable(messages, "dynatrace-operator"), None);
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            ["POD", "NODE", "PHASE", "IMAGE"].map(String::from),
            ["dynakube-oneagent-abcde", "kwok-node-0", "Running", "img"].map(String::from),
        ];
        assert_eq!(
            table(&rows),
            "POD                      NODE         PHASE    IMAGE\n\
             dynakube-oneagent-abcde  kwok-node-0  Running  img\n"
        );
    }

    #[test]
    fn the_sample_names_the_tenant() {
        let dynakube = sample_dynakube("http://127.0.0.1:1/api");
        assert_eq!(dynakube["spec"]["apiUrl"], "http://127.0.0.1:1/api");
        assert!(dynakube["spec"]["oneAgent"]["classicFullStack"].is_object());
    }
}
