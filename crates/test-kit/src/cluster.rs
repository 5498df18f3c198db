//! A real, isolated Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and, for workloads,
//! kube-controller-manager, kube-scheduler and kwok (which plays the kubelet of fake nodes).
//!
//! The flags follow controller-runtime's envtest (own CA, serving certificate, service-account keys, a static
//! admin token) so that kube-rs, kubectl and the control plane's own components all talk TLS to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, NodeSystemInfo, ServiceAccount, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde::{Deserialize, Serialize};

use crate::pki::{CertificateAuthority, service_account_key_pair};
use crate::process::{Lifetime, ManagedProcess, ProcessRecord};
use crate::real_node::{RealNode, RealNodeConfig};
use crate::tools::Tools;

/// Name of the state file in a cluster's data directory.
pub const STATE_FILE: &str = "cluster.json";
/// Annotation that makes kwok manage a node.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Pod IPs kwok hands out; kept apart from the service range.
const POD_CIDR: &str = "10.244.0.0/16";
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// How long the API server may take to become ready (2-core machines, cold caches).
const API_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long nodes, the controller manager and the scheduler may take after the API server is ready.
const WORKLOADS_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What kind of cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Name, used in the kubeconfig and for the data directory.
    pub name: String,
    /// Directory for certificates, etcd data, logs, kubeconfig and state. Must not hold a running cluster.
    pub data_dir: PathBuf,
    /// Number of kwok nodes to create.
    pub nodes: usize,
    /// Start the controller manager, the scheduler and kwok (needed for pods, DaemonSets, Deployments).
    pub workloads: bool,
    /// Whether the processes die with the starter (tests) or outlive it (`cargo xtask cluster up`).
    pub lifetime: Lifetime,
    /// Add the machine's one real node ([`crate::real_node`]; needs `workloads` and root). Tied clusters
    /// wait for another cluster's real node to go away; detached ones fail at once.
    pub real_node: bool,
}

/// What a running cluster is: written to `cluster.json` so that another process can use or stop it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    /// Cluster name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api_server_url: String,
    /// The CA that signed the API server's certificate (PEM).
    pub ca_pem: String,
    /// The started processes, in start order.
    pub processes: Vec<ProcessRecord>,
    /// Whether the cluster has the real node (stopping the cluster removes it).
    #[serde(default)]
    pub real_node: bool,
}

/// A running cluster. Dropping a cluster that this process started stops it and, for tied clusters, removes
/// its data directory; dropping one loaded from a state file leaves it running.
#[derive(Debug)]
pub struct Cluster {
    state: ClusterState,
    processes: Vec<ManagedProcess>,
    real_node: Option<RealNode>,
    started_here: bool,
    remove_data_on_drop: bool,
}

impl Cluster {
    /// Starts a cluster and waits until it is ready: the API answers `/readyz` and, with workloads, every
    /// node is Ready, the controller manager has created the default service account and the scheduler is
    /// healthy.
    pub async fn start(tools: &Tools, options: ClusterOptions) -> anyhow::Result<Self> {
        prepare_data_dir(&options.data_dir)?;
        let mut cluster = Self {
            state: ClusterState {
                name: options.name.clone(),
                data_dir: options.data_dir.clone(),
                kubeconfig: options.data_dir.join("kubeconfig"),
                api_server_url: String::new(),
                ca_pem: String::new(),
                processes: Vec::new(),
                real_node: false,
            },
            processes: Vec::new(),
            real_node: None,
            started_here: true,
            remove_data_on_drop: options.lifetime == Lifetime::Tied,
        };
        cluster.boot(tools, &options).await.with_context(|| {
            format!(
                "starting cluster {:?} (data and logs in {})",
                options.name,
                options.data_dir.display()
            )
        })?;
        Ok(cluster)
    }

    async fn boot(&mut self, tools: &Tools, options: &ClusterOptions) -> anyhow::Result<()> {
        let dir = &options.data_dir;
        let pki = dir.join("pki");
        let logs = dir.join("logs");
        for d in [&pki, &logs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let etcd_port = free_port()?;
        let api_port = free_port()?;
        let api_url = format!("https://127.0.0.1:{api_port}");

        // Certificates and credentials.
        let ca = CertificateAuthority::new(&format!("{}-ca", options.name))?;
        let serving = ca.issue_server_cert(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            ],
        )?;
        let (sa_key, sa_pub) = service_account_key_pair()?;
        let token = random_token()?;
        let write = |name: &str, content: &str| -> anyhow::Result<PathBuf> {
            let path = pki.join(name);
            std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca_file = write("ca.crt", &ca.cert_pem())?;
        let cert_file = write("apiserver.crt", &serving.cert_pem)?;
        let key_file = write("apiserver.key", &serving.key_pem)?;
        let sa_key_file = write("sa.key", &sa_key)?;
        let sa_pub_file = write("sa.pub", &sa_pub)?;
        let tokens_file = write(
            "tokens.csv",
            &format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )?;
        let kubeconfig = &self.state.kubeconfig;
        std::fs::write(
            kubeconfig,
            kubeconfig_yaml(&options.name, &api_url, &ca.cert_pem(), &token),
        )
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
        self.state.api_server_url = api_url.clone();
        self.state.ca_pem = ca.cert_pem();
        let path = |p: &Path| p.display().to_string();

        // etcd: tmp data, no fsync; the peer listener on port 0 keeps clusters from colliding.
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        self.spawn(
            "etcd",
            &tools.etcd,
            vec![
                format!("--data-dir={}", path(&dir.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                // A single member never dials its peers; only the listener must not collide.
                "--listen-peer-urls=http://127.0.0.1:0".into(),
                "--unsafe-no-fsync=true".into(),
                "--auto-compaction-retention=1".into(),
                "--quota-backend-bytes=2147483648".into(),
                "--log-level=warn".into(),
            ],
            &logs,
            options.lifetime,
        )?;

        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            // Avoids the default-route probe, which fails on machines without one.
            "--advertise-address=127.0.0.1".into(),
            // Loopback endpoints cannot be published for the `kubernetes` Service.
            "--endpoint-reconciler-type=none".into(),
            format!("--tls-cert-file={}", path(&cert_file)),
            format!("--tls-private-key-file={}", path(&key_file)),
            format!("--cert-dir={}", path(&dir.join("apiserver-certs"))),
            format!("--client-ca-file={}", path(&ca_file)),
            format!("--token-auth-file={}", path(&tokens_file)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", path(&sa_pub_file)),
            format!("--service-account-signing-key-file={}", path(&sa_key_file)),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // The real node's name does not resolve; `logs` and `exec` dial its InternalIP.
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            // There is no kube-proxy, so a Service's cluster IP leads nowhere (on some machines into an egress
            // proxy): webhooks and conversion behind a Service are called at the endpoints' pod IPs instead.
            "--enable-aggregator-routing=true".into(),
            "--v=1".into(),
        ];
        if !options.workloads {
            // Without the controller manager nobody creates service accounts, so pods could not be admitted.
            api_args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        self.spawn(
            "kube-apiserver",
            &tools.kube_apiserver,
            api_args,
            &logs,
            options.lifetime,
        )?;
        let client = self.wait_for_api().await?;

        if options.workloads {
            self.start_workload_components(tools, options, &logs).await?;
            create_kwok_nodes(&client, options.nodes).await?;
            self.wait_for_workloads(&client, options.nodes).await?;
        }
        if options.real_node {
            if !options.workloads {
                bail!("the real node needs the workload components (set `workloads: true`)");
            }
            // Recorded first, so that `cluster down` removes a node whose start was interrupted.
            self.state.real_node = true;
            self.write_state()?;
            let config = RealNodeConfig {
                kubeconfig: self.state.kubeconfig.clone(),
                api_port,
                logs: logs.clone(),
                lifetime: options.lifetime,
                owner: format!(
                    "cluster {:?} in {}, started by pid {}",
                    options.name,
                    dir.display(),
                    std::process::id()
                ),
                wait_for_lock: options.lifetime == Lifetime::Tied,
            };
            let node = RealNode::start(&config, &client).await?;
            self.state.processes.extend(node.process_records());
            self.real_node = Some(node);
        }
        self.write_state()?;
        Ok(())
    }

    async fn start_workload_components(
        &mut self,
        tools: &Tools,
        options: &ClusterOptions,
        logs: &Path,
    ) -> anyhow::Result<()> {
        let dir = &options.data_dir;
        let kubeconfig = self.state.kubeconfig.display().to_string();
        let common = |port: u16, certs: &str| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", dir.join(certs).display()),
                "--v=1".into(),
            ]
        };
        let kcm_port = free_port()?;
        let mut kcm = common(kcm_port, "controller-manager-certs");
        kcm.extend([
            format!("--service-account-private-key-file={}", dir.join("pki/sa.key").display()),
            format!("--root-ca-file={}", dir.join("pki/ca.crt").display()),
            // The controllers workloads need; fewer controllers leave more CPU to the tests on 2 cores.
            "--controllers=daemonset,deployment,replicaset,statefulset,job,cronjob,garbagecollector,namespace,\
             serviceaccount,serviceaccount-token,endpointslice,endpointslicemirroring,nodelifecycle,\
             root-ca-cert-publisher,podgc,disruption,ttl-after-finished"
                .into(),
        ]);
        self.spawn(
            "kube-controller-manager",
            &tools.kube_controller_manager,
            kcm,
            logs,
            options.lifetime,
        )?;
        let scheduler_port = free_port()?;
        self.spawn(
            "kube-scheduler",
            &tools.kube_scheduler,
            common(scheduler_port, "scheduler-certs"),
            logs,
            options.lifetime,
        )?;

        let stages = std::fs::read_to_string(&tools.kwok_stages)
            .with_context(|| format!("reading kwok stages {}", tools.kwok_stages.display()))?;
        let stages = with_never_ready_pods(&stages)?;
        let kwok_config = dir.join("kwok.yaml");
        std::fs::write(
            &kwok_config,
            // kwok 0.8 does not default these when they come from a file.
            format!(
                "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n  \
                 podPlayStageParallelism: 4\n  nodePlayStageParallelism: 4\n  nodeLeaseParallelism: 4\n  \
                 podsOnNodeSyncParallelism: 1\n{stages}"
            ),
        )
        .with_context(|| format!("writing {}", kwok_config.display()))?;
        self.spawn(
            "kwok",
            &tools.kwok,
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", kwok_config.display()),
                "--manage-all-nodes=false".into(),
                format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                format!("--cidr={POD_CIDR}"),
                "--node-ip=10.255.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
            ],
            logs,
            options.lifetime,
        )?;
        self.wait_healthy("kube-controller-manager", kcm_port).await?;
        self.wait_healthy("kube-scheduler", scheduler_port).await
    }

    fn spawn(
        &mut self,
        name: &str,
        binary: &Path,
        args: Vec<String>,
        logs: &Path,
        lifetime: Lifetime,
    ) -> anyhow::Result<()> {
        let process =
            ManagedProcess::start(name, binary, &args, &logs.join(format!("{name}.log")), lifetime)?;
        self.state.processes.push(process.record.clone());
        self.processes.push(process);
        // Recorded at once, so that `cluster down` can stop a cluster whose start was interrupted.
        self.write_state()
    }

    /// Fails with the process's log when one of the started processes has exited.
    fn check_processes(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if !process.is_running() {
                bail!(
                    "{} exited during start-up; last lines of {}:\n{}",
                    process.record.name,
                    process.record.log.display(),
                    process.log_tail(25)
                );
            }
        }
        Ok(())
    }

    async fn wait_for_api(&mut self) -> anyhow::Result<Client> {
        let client = self.client().await?;
        let deadline = Instant::now() + API_READY_TIMEOUT;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            self.check_processes()?;
            match client.request_text(get("/readyz")?).await {
                Ok(_) => return Ok(client),
                Err(err) => last_error = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "kube-apiserver was not ready after {API_READY_TIMEOUT:?} (last answer: {last_error}); \
             see {}",
            self.state.data_dir.join("logs/kube-apiserver.log").display()
        )
    }

    async fn wait_healthy(&mut self, name: &str, port: u16) -> anyhow::Result<()> {
        // These components serve a self-signed certificate; only their liveness is checked here.
        let mut config = Config::new(
            format!("https://127.0.0.1:{port}")
                .parse()
                .context("component URL")?,
        );
        config.accept_invalid_certs = true;
        let client = Client::try_from(config).context("building a health-check client")?;
        let deadline = Instant::now() + WORKLOADS_READY_TIMEOUT;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            self.check_processes()?;
            match client.request_text(get("/healthz")?).await {
                Ok(_) => return Ok(()),
                Err(err) => last_error = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("{name} was not healthy on port {port} after {WORKLOADS_READY_TIMEOUT:?}: {last_error}")
    }

    async fn wait_for_workloads(&mut self, client: &Client, nodes: usize) -> anyhow::Result<()> {
        let node_api: Api<Node> = Api::all(client.clone());
        let service_accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + WORKLOADS_READY_TIMEOUT;
        let (mut ready, mut has_default_sa) = (0, false);
        while Instant::now() < deadline {
            self.check_processes()?;
            ready = node_api
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|n| node_is_ready(n))
                .count();
            has_default_sa = service_accounts.get_opt("default").await?.is_some();
            if ready >= nodes && has_default_sa {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "after {WORKLOADS_READY_TIMEOUT:?}, {ready} of {nodes} nodes are Ready (kwok's job) and the default \
             service account {} (the controller manager's job); see the logs in {}",
            if has_default_sa { "exists" } else { "is missing" },
            self.state.data_dir.join("logs").display()
        )
    }

    fn write_state(&self) -> anyhow::Result<()> {
        let path = self.state.data_dir.join(STATE_FILE);
        let json = serde_json::to_string_pretty(&self.state).context("serializing the cluster state")?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads the state of a cluster started by another process from its data directory.
    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(STATE_FILE);
        let json = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no cluster state at {} (is a cluster running there?)",
                path.display()
            )
        })?;
        let state: ClusterState =
            serde_json::from_str(&json).with_context(|| format!("parsing {}", path.display()))?;
        let processes = state
            .processes
            .iter()
            .cloned()
            .map(ManagedProcess::from_record)
            .collect();
        Ok(Self {
            state,
            processes,
            real_node: None,
            started_here: false,
            remove_data_on_drop: false,
        })
    }

    /// The cluster's state (name, URLs, kubeconfig path, processes).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.state.kubeconfig
    }

    /// A new admin client. Create one per tokio runtime: a client's connections belong to the runtime that
    /// made them.
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.state.kubeconfig).await
    }

    /// Writes a kubeconfig at `path` that authenticates as the ServiceAccount `namespace/name` with a bearer
    /// token from the TokenRequest API (valid for an hour), so that a process started with it has exactly
    /// the rights the cluster's RBAC grants that account, as it would in a pod. The account must exist.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        path: &Path,
    ) -> anyhow::Result<()> {
        let client = self.client().await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = Api::<ServiceAccount>::namespaced(client, namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for the ServiceAccount {namespace}/{name}"))?
            .status
            .with_context(|| format!("the token request for {namespace}/{name} returned no token"))?
            .token;
        let yaml = kubeconfig_yaml(
            &format!("{}-{name}", self.state.name),
            &self.state.api_server_url,
            &self.state.ca_pem,
            &token,
        );
        std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// Names of the processes that are not running any more.
    pub fn dead_processes(&mut self) -> Vec<String> {
        let mut dead: Vec<String> = self
            .processes
            .iter_mut()
            .filter_map(|p| (!p.is_running()).then(|| p.record.name.clone()))
            .collect();
        if let Some(node) = &mut self.real_node {
            dead.extend(node.dead_processes());
        }
        dead
    }

    /// The real node, when this process started the cluster with one.
    pub fn real_node(&self) -> Option<&RealNode> {
        self.real_node.as_ref()
    }

    /// Leaves the processes running after this handle is gone (for `cargo xtask cluster up`).
    pub fn detach(mut self) {
        self.remove_data_on_drop = false;
        if let Some(node) = self.real_node.take() {
            node.detach();
        }
        for process in std::mem::take(&mut self.processes) {
            process.release();
        }
    }

    /// Stops every process (newest first) and removes the data directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_processes()?;
        remove_dir(&self.state.data_dir)
    }

    fn stop_processes(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        // The real node first: its kubelet talks to the API server until it stops.
        let node_result = match self.real_node.take() {
            Some(node) => node.stop(),
            None if self.state.real_node && !self.started_here => {
                crate::real_node::teardown(&self.state.data_dir)
            }
            None => Ok(()),
        };
        if let Err(err) = node_result {
            errors.push(format!("{err:#}"));
        }
        while let Some(mut process) = self.processes.pop() {
            if let Err(err) = process.stop() {
                errors.push(format!("{err:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.started_here {
            return;
        }
        if let Err(err) = self.stop_processes() {
            tracing::warn!("stopping cluster {}: {err:#}", self.state.name);
        }
        if self.remove_data_on_drop {
            let _ = remove_dir(&self.state.data_dir);
        }
    }
}

/// Builds an admin client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building a Kubernetes client")
}

/// A kwok-managed node with the labels a real cloud node has.
pub fn kwok_node(name: &str, zone: &str, extra_labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("topology.kubernetes.io/region", "local"),
        ("topology.kubernetes.io/zone", zone),
        ("node.kubernetes.io/instance-type", "kwok"),
        ("type", "kwok"),
    ]
    .into_iter()
    .chain(extra_labels.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    labels.insert("kubernetes.io/hostname".into(), name.into());
    let resources: BTreeMap<String, Quantity> = [("cpu", "32"), ("memory", "256Gi"), ("pods", "110")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (KWOK_NODE_ANNOTATION.to_owned(), "fake".to_owned()),
                ("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                os_image: "kwok fake node".into(),
                kernel_version: "6.1.0".into(),
                container_runtime_version: "kwok://0.8.0".into(),
                kubelet_version: "v1.36.3".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Zones the default nodes are spread over.
pub const ZONES: [&str; 3] = ["local-a", "local-b", "local-c"];

async fn create_kwok_nodes(client: &Client, count: usize) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..count {
        let name = format!("kwok-node-{i}");
        let node = kwok_node(&name, ZONES[i % ZONES.len()], &[], Vec::new());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {name}"))?;
    }
    Ok(())
}

/// Whether a node reports the Ready condition as True.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    http::Request::get(path)
        .body(Vec::new())
        .context("building a request")
}

fn kubeconfig_yaml(name: &str, server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {name}-admin\n  user:\n    token: {token}\n\
         contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\n    \
         namespace: default\ncurrent-context: {name}\n"
    )
}

/// Pods with this annotation never become ready on kwok nodes (they stay Pending), as a pod whose
/// container never passes its readiness probe: for tests of rollouts that must stop at such a pod.
pub const NEVER_READY_ANNOTATION: &str = "testkit.dynatrace-operator.dev/never-ready";

/// kwok's stages with the pod-ready stage skipping pods that carry [`NEVER_READY_ANNOTATION`].
fn with_never_ready_pods(stages: &str) -> anyhow::Result<String> {
    let anchor = "  name: pod-ready\n";
    let start = stages
        .find(anchor)
        .context("kwok's stages have no pod-ready stage; update with_never_ready_pods for this kwok")?;
    let expressions = "    matchExpressions:\n";
    let at = stages[start..]
        .find(expressions)
        .map(|i| start + i + expressions.len())
        .context("kwok's pod-ready stage has no matchExpressions; update with_never_ready_pods")?;
    let exclusion = format!(
        "    - key: '.metadata.annotations[\"{NEVER_READY_ANNOTATION}\"]'\n      operator: 'DoesNotExist'\n"
    );
    Ok(format!("{}{exclusion}{}", &stages[..at], &stages[at..]))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for the admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses a directory that holds a running cluster; clears one left behind by a stopped or crashed cluster.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if let Ok(mut old) = Cluster::load(dir) {
        let running = old
            .processes
            .iter_mut()
            .map(ManagedProcess::is_running)
            .filter(|r| *r)
            .count();
        if running > 0 {
            bail!(
                "a cluster is already running in {} ({running} processes); stop it first \
                 (`cargo xtask cluster down --name {}`)",
                dir.display(),
                old.state.name
            );
        }
    }
    if dir.exists() {
        remove_dir(dir)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_parsed_by_kube() {
        let yaml = kubeconfig_yaml("t", "https://127.0.0.1:1234", "PEM", "secret");
        let parsed = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("t"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:1234"));
    }

    #[test]
    fn kwok_node_has_realistic_labels_and_the_kwok_annotation() {
        let node = kwok_node("n1", "local-b", &[("pool", "gpu")], Vec::new());
        let labels = node.metadata.labels.unwrap();
        for key in [
            "kubernetes.io/os",
            "kubernetes.io/arch",
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
        ] {
            assert!(labels.contains_key(key), "missing {key}");
        }
        assert_eq!(labels["topology.kubernetes.io/zone"], "local-b");
        assert_eq!(labels["pool"], "gpu");
        assert_eq!(node.metadata.annotations.unwrap()[KWOK_NODE_ANNOTATION], "fake");
    }

    #[test]
    fn dropping_a_loaded_cluster_leaves_it_running_and_stop_ends_it() {
        let dir = std::env::temp_dir().join(format!("testkit-loaded-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sleep = ManagedProcess::start(
            "sleep",
            Path::new("/bin/sleep"),
            &["60".into()],
            &dir.join("sleep.log"),
            Lifetime::Detached,
        )
        .unwrap();
        let record = sleep.record.clone();
        sleep.release();
        let state = ClusterState {
            name: "loaded".into(),
            data_dir: dir.clone(),
            kubeconfig: dir.join("kubeconfig"),
            api_server_url: String::new(),
            ca_pem: String::new(),
            processes: vec![record.clone()],
            real_node: false,
        };
        std::fs::write(dir.join(STATE_FILE), serde_json::to_string(&state).unwrap()).unwrap();

        drop(Cluster::load(&dir).unwrap());
        assert!(
            crate::process::pid_runs_binary(record.pid, &record.binary),
            "a status look must not stop it"
        );

        Cluster::load(&dir).unwrap().stop().unwrap();
        assert!(!crate::process::pid_runs_binary(record.pid, &record.binary));
        assert!(!dir.exists());
    }

    #[test]
    fn a_directory_with_a_dead_cluster_is_reused() {
        let dir = std::env::temp_dir().join(format!("testkit-dead-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = ClusterState {
            name: "dead".into(),
            data_dir: dir.clone(),
            kubeconfig: dir.join("kubeconfig"),
            api_server_url: String::new(),
            ca_pem: String::new(),
            processes: vec![ProcessRecord {
                name: "etcd".into(),
                pid: i32::MAX,
                binary: "/nonexistent/etcd".into(),
                log: dir.join("etcd.log"),
            }],
            real_node: false,
        };
        std::fs::write(dir.join(STATE_FILE), serde_json::to_string(&state).unwrap()).unwrap();
        prepare_data_dir(&dir).unwrap();
        assert!(dir.exists() && !dir.join(STATE_FILE).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
