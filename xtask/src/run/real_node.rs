//! `cargo xtask run --real-node`: the sample on the machine's real node, with the product installed the way
//! users install it. The images are built and imported into the node, the chart in `chart/` is installed with
//! `helm install` (operator, both webhook replicas and the CSI driver as pods of the operator image), and
//! the cloudNativeFullStack DynaKube's OneAgent DaemonSet really runs the fake OneAgent, pulled from the fake
//! tenant's registry, on the CSI driver's `host` volume; the sample application's pod in the namespace it
//! maps gets its code module from the driver's cache. At exit the sample is deleted and the release
//! uninstalled, with a check that nothing of it is left. The steps follow `crates/cli/tests/e2e_real_node.rs`
//! and `e2e_real_node_csi.rs`.
//!
//! The fake tenant stays a process of this run, but listens on the node's address (pods have network
//! namespaces of their own, so loopback is not it) over HTTPS with a CA of its own: the DynaKube names the
//! CA in `trustedCAs` for the operator, and containerd is told to trust it for the registry.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt as _};
use pure_csi::mountinfo::Mount;
use serde_json::json;
use test_images::{
    FAKE_ONEAGENT_IMAGE, FAKE_ONEAGENT_VERSIONS, ImageArchive, OPERATOR_IMAGE, Profile, SAMPLE_APP_IMAGE,
};
use test_kit::Tools;
use test_kit::real_node::workloads::{self, FakeOneAgent};
use test_kit::real_node::{self as node, NODE_LABEL, NODE_NAME};

use super::{
    API_TOKEN, Binaries, DYNAKUBE, FIELD_MANAGER, NAMESPACE, Options, SAMPLE_APP, SAMPLE_BIN_VOLUME,
    SAMPLE_NAMESPACE, SAMPLE_SELECTOR, Session, apply_dynakube, apply_sample_namespace, dynakube_running,
    helm, injected_sample_pod, oneagent_pods, sample_deployment, sample_dynakube,
};

/// How long the operator may take to roll out a OneAgent version on the real node: an image pull, a
/// container start and the readiness probe, which the product starts after 90 s.
pub(super) const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the operator and webhook pods may take to be available (image import done, first start).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the sample application may take to run with the agent: the provisioner's download and unpack,
/// the kubelet's publish retries meanwhile, the init container and the start.
const APP_TIMEOUT: Duration = Duration::from_secs(180);
/// The agent library as the sample application's process maps it from `oneagent-bin`.
const AGENT_LIBRARY: &str = "/opt/dynatrace/oneagent-paas/agent/lib64/liboneagentproc.so";
/// The webhook's Deployment, as the chart names it.
const WEBHOOK_DEPLOYMENT: &str = "dynatrace-webhook";
/// The ConfigMap with the fake tenant's CA (key `certs`) that the DynaKube names in `trustedCAs`.
const TENANT_CA_CONFIGMAP: &str = "fake-tenant-ca";

/// Fails unless `update_to` (when given) is a version the fake tenant has an image for.
pub(super) fn check_version(update_to: Option<&str>) -> anyhow::Result<()> {
    match update_to {
        Some(version) if !FAKE_ONEAGENT_VERSIONS.contains(&version) => bail!(
            "--update-to {version}: with --real-node the OneAgent really starts, so the version needs a fake \
             OneAgent image; use one of {}",
            FAKE_ONEAGENT_VERSIONS[1..].join(", ")
        ),
        _ => Ok(()),
    }
}

impl Session {
    /// Starts the cluster with the real node, the images, the fake tenant, the installation and the
    /// sample, and prints the summary once the fake OneAgent is Ready.
    pub(super) async fn start_on_real_node(
        &mut self,
        options: &Options,
        tools: &Tools,
        binaries: &Binaries,
    ) -> anyhow::Result<()> {
        self.cluster_up(tools, options.nodes).await?;
        let cluster = self.cluster.as_ref().context("the cluster handle is missing")?;
        let api_server = cluster.state().api_server_url.clone();
        let kubeconfig = cluster.kubeconfig().to_owned();
        let client = cluster.client().await?;
        // A cluster started before this run has the node, but no handle to it: its address is in its status.
        let node_ip = match cluster.real_node() {
            Some(real) => real.node_ip().to_owned(),
            None => node_ip(&client).await?,
        };
        let node_ip: IpAddr = node_ip
            .parse()
            .with_context(|| format!("node {NODE_NAME} has the address {node_ip:?}, which is no IP"))?;
        self.client = Some(client.clone());
        let logs = self.claim()?;

        let profile = if options.release {
            Profile::Release
        } else {
            Profile::Test
        };
        eprintln!("Building the images ({profile:?} profile) and importing them into node {NODE_NAME} ...");
        let images = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ImageArchive>> {
            let images = test_images::build_images(profile)?;
            for archive in &images {
                node::import_image(&archive.path)?;
            }
            Ok(images)
        })
        .await
        .context("the image build panicked")??;

        // The fake tenant on the node's address, serving both fake OneAgent images, the older one latest.
        let ca = test_kit::pki::CertificateAuthority::new("xtask-run-fake-tenant-ca")?;
        let cert = ca.issue_server_cert("fake-tenant", &[], &[node_ip])?;
        let tenant_dir = self.dir.join("fake-tenant");
        std::fs::create_dir_all(&tenant_dir).with_context(|| format!("creating {}", tenant_dir.display()))?;
        let (cert_file, key_file, config_file) = (
            tenant_dir.join("tls.crt"),
            tenant_dir.join("tls.key"),
            tenant_dir.join("config.json"),
        );
        write_file(&cert_file, &cert.cert_pem, 0o644)?;
        write_file(&key_file, &cert.key_pem, 0o600)?;
        let config = json!({ "versions": [FAKE_ONEAGENT_VERSIONS[0]] });
        write_file(&config_file, &config.to_string(), 0o644)?;
        let mut args = vec![
            "--listen".to_owned(),
            format!("{node_ip}:0"),
            "--tls-cert".to_owned(),
            cert_file.display().to_string(),
            "--tls-key".to_owned(),
            key_file.display().to_string(),
            "--config".to_owned(),
            config_file.display().to_string(),
        ];
        // Its code-module archives hold the project's stand-in agent library, so an injected pod really
        // loads it (tools/images/liboneagentproc.c).
        let library = test_images::agent_library(&test_images::target_dir().join("images"))?;
        args.push("--agent-library".to_owned());
        args.push(library.display().to_string());
        for archive in images.iter().filter(|i| i.name == FAKE_ONEAGENT_IMAGE) {
            args.push("--image".to_owned());
            args.push(format!(
                "linux/oneagent:{}={}",
                archive.tag,
                archive.path.display()
            ));
        }
        eprintln!(
            "Starting the fake tenant on {node_ip} over HTTPS; its log goes to {}",
            logs.display()
        );
        let api_url = self
            .start_fake_tenant(&binaries.fake_tenant, &args, &logs)
            .await?;
        let authority = api_url
            .strip_prefix("https://")
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("the fake tenant's URL {api_url} is not https://host:port/..."))?;
        node::write_registry_host(authority, &ca.cert_pem())?;
        self.tenant_ca_pem = Some(ca.cert_pem());

        // The chart, installed with Helm as users install it: our image, already in the node's containerd
        // (the chart's IfNotPresent pull policy takes it from there), every component on the real node (kwok
        // nodes have no kubelet to run them), the webhook with both replicas.
        let operator = images
            .iter()
            .find(|i| i.name == OPERATOR_IMAGE)
            .context("the image build produced no operator image")?;
        let release = helm::Release::new(
            test_kit::tools::locate_helm()?,
            tools.kubectl.clone(),
            kubeconfig,
            self.dir.join("helm"),
        );
        eprintln!(
            "Installing the chart {} with `helm install {}` ({}), every component on node {NODE_NAME} ...",
            helm::Release::chart().display(),
            helm::RELEASE,
            operator.reference()
        );
        let values_file =
            tokio::task::block_in_place(|| release.install(&chart_values(&operator.reference())))?;
        self.release = Some(release);
        self.wait(
            "the operator, both webhook pods and the CSI driver pod to be Ready",
            INSTALL_TIMEOUT,
            || installation_ready(&client),
        )
        .await?;
        self.installed = Some(format!(
            "Helm release {} of chart {} in namespace {NAMESPACE} (values {}): operator 1/1 Ready, webhook 2/2 \
             Ready, CSI driver 1/1 Ready, all on node {NODE_NAME}.",
            helm::RELEASE,
            helm::Release::chart().display(),
            values_file.display()
        ));

        eprintln!(
            "Applying the sample: token Secret, CA ConfigMap and DynaKube {NAMESPACE}/{DYNAKUBE} \
             (cloudNativeFullStack); the OneAgent pod is Ready after its readiness probe starts (90 s) ..."
        );
        test_kit::setup::apply_objects(&client, &prerequisites(&ca.cert_pem()), FIELD_MANAGER)
            .await
            .context("applying the sample's Secret and ConfigMap")?;
        let dynakube = dynakube(&api_url);
        // Retried: the webhook pod may still be loading the certificate the operator just wrote.
        self.wait("the DynaKube to be admitted", INSTALL_TIMEOUT, || {
            apply_dynakube(&client, &dynakube)
        })
        .await?;
        // The sample application starts while the OneAgent waits for its readiness probe.
        let csi = self.start_csi_sample(&client, &images).await?;
        let agent = self.wait_for_fake_oneagent(None).await?;
        let pods = self
            .wait("the OneAgent pod to run", ROLLOUT_TIMEOUT, || {
                oneagent_pods(&client)
            })
            .await?;
        let status = self
            .wait("the DynaKube's phase Running", ROLLOUT_TIMEOUT, || {
                dynakube_running(&client)
            })
            .await?;
        self.print_summary(
            &pods,
            &status,
            &api_server,
            &logs,
            &tools.kubectl,
            super::Shown {
                agent: Some(&agent),
                injected: Some(&csi.app),
                csi: Some(&csi),
            },
        );
        Ok(())
    }

    /// Applies the sample application with its code module from the CSI driver (the namespace the
    /// cloudNativeFullStack DynaKube maps, a Deployment on the real node) and waits until the driver runs
    /// and is registered, the pod runs with the agent library mapped and the node's status reports the
    /// version; returns what shows it.
    async fn start_csi_sample(
        &mut self,
        client: &Client,
        images: &[ImageArchive],
    ) -> anyhow::Result<CsiProof> {
        eprintln!(
            "Applying the sample application: namespace {SAMPLE_NAMESPACE} (mapped by DynaKube \
             {NAMESPACE}/{DYNAKUBE}) and Deployment {SAMPLE_APP} on node {NODE_NAME} ..."
        );
        apply_sample_namespace(client).await?;
        let csi_pod = self
            .wait(
                &format!("the CSI driver pod on node {NODE_NAME} to be ready"),
                INSTALL_TIMEOUT,
                || workloads::ready_csi_driver_pod(client, NAMESPACE),
            )
            .await?;
        let node_id = self
            .wait(
                &format!("the kubelet to register the CSI driver {}", pure_csi::DRIVER_NAME),
                INSTALL_TIMEOUT,
                || workloads::csi_driver_node_id(client),
            )
            .await?;
        let image = images
            .iter()
            .find(|i| i.name == SAMPLE_APP_IMAGE)
            .context("the image build produced no sample application image")?;
        let deployment = deployment(&image.reference());
        let injected = self
            .wait(
                "the sample application's pod injected with the CSI volume",
                INSTALL_TIMEOUT,
                || injected_sample_pod(client, &deployment, true),
            )
            .await?;
        let name = injected.name_any();
        let (app, logs) = self
            .wait(
                "the sample application to run with the agent library from the CSI volume",
                APP_TIMEOUT,
                || app_with_agent(client, &name),
            )
            .await?;
        let status = self
            .wait(
                &format!("the CSI driver's node status to report the version of DynaKube {DYNAKUBE}"),
                APP_TIMEOUT,
                || async {
                    let status = workloads::csi_node_status(client, NAMESPACE).await?;
                    Ok(status.filter(|s| s.ready_version(DYNAKUBE).is_some()))
                },
            )
            .await?;
        eprintln!(
            "The sample application runs with the code module from the CSI driver, {:.1} s after start.",
            self.started.elapsed().as_secs_f64()
        );
        let target = workloads::csi_target_path(&app.uid().unwrap_or_default(), SAMPLE_BIN_VOLUME);
        let mount = workloads::mount_at(&target)?;
        Ok(CsiProof {
            csi_pod: csi_pod.name_any(),
            node_id,
            status,
            app,
            target,
            mount,
            report: workloads::sample_app_report(&logs),
        })
    }

    /// Waits until the OneAgent pod on the real node is Ready (and runs `version`, when given).
    pub(super) async fn wait_for_fake_oneagent(
        &mut self,
        version: Option<&str>,
    ) -> anyhow::Result<FakeOneAgent> {
        let client = self.client.clone().context("no Kubernetes client")?;
        let what = match version {
            Some(version) => format!("the OneAgent pod on node {NODE_NAME} to be Ready with {version}"),
            None => format!("the OneAgent pod on node {NODE_NAME} to be Ready"),
        };
        self.wait(&what, ROLLOUT_TIMEOUT, || {
            let client = client.clone();
            async move {
                let agent = workloads::ready_fake_oneagent(&client, NAMESPACE).await?;
                match agent.filter(|a| version.is_none_or(|v| a.version == v)) {
                    Some(agent) => Ok(Some(agent)),
                    // Kept as the last error, so that a timeout says what the pods were doing.
                    None => bail!("{}", oneagent_pod_states(&client).await?),
                }
            }
        })
        .await
    }
}

/// How long deleting the sample (DynaKube, application) may take: pods terminate, the CSI driver unpublishes.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Deletes the sample (its namespace with the application, the DynaKube) while the operator and the CSI
/// driver still run, so they clean up what they made, waits until it is gone, then uninstalls the release
/// and checks that nothing of it is left.
pub(super) async fn uninstall(client: &Client, release: &helm::Release) -> anyhow::Result<()> {
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let dynakubes = Api::<pure_api::dynakube::DynaKube>::namespaced(client.clone(), NAMESPACE);
    let gone = |result: kube::Result<()>, what: String| match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.with_context(|| format!("deleting {what}")),
    };
    let params = kube::api::DeleteParams::default();
    gone(
        namespaces.delete(SAMPLE_NAMESPACE, &params).await.map(drop),
        format!("namespace {SAMPLE_NAMESPACE}"),
    )?;
    gone(
        dynakubes.delete(DYNAKUBE, &params).await.map(drop),
        format!("DynaKube {NAMESPACE}/{DYNAKUBE}"),
    )?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = std::time::Instant::now() + REMOVE_TIMEOUT;
    loop {
        let namespace_left = namespaces.get_opt(SAMPLE_NAMESPACE).await?.is_some();
        let dynakube_left = dynakubes.get_opt(DYNAKUBE).await?.is_some();
        let agents = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=oneagent"))
            .await?
            .items
            .len();
        if !namespace_left && !dynakube_left && agents == 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "{REMOVE_TIMEOUT:?} after deleting them, namespace {SAMPLE_NAMESPACE} exists: {namespace_left}, \
                 DynaKube {NAMESPACE}/{DYNAKUBE} exists: {dynakube_left}, OneAgent pods: {agents}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    release.uninstall(client).await
}

/// The OneAgent pods' phase, container states and events in one line, and the node's pressure conditions:
/// what a timeout waiting for them reports.
async fn oneagent_pod_states(client: &Client) -> anyhow::Result<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=oneagent"))
        .await?;
    let mut states: Vec<String> = pods
        .items
        .iter()
        .map(|pod| {
            let status = pod.status.clone().unwrap_or_default();
            let containers: Vec<String> = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| {
                    let state = c.state.as_ref().map_or_else(String::new, |s| {
                        if let Some(waiting) = &s.waiting {
                            format!(
                                "waiting {} {}",
                                waiting.reason.as_deref().unwrap_or_default(),
                                waiting.message.as_deref().unwrap_or_default()
                            )
                        } else if let Some(done) = &s.terminated {
                            format!(
                                "terminated {} (exit {})",
                                done.reason.as_deref().unwrap_or_default(),
                                done.exit_code
                            )
                        } else {
                            "running".to_owned()
                        }
                    });
                    format!(
                        "{} {state}, ready {}, restarts {}",
                        c.name, c.ready, c.restart_count
                    )
                })
                .collect();
            format!(
                "pod {} phase {} {} [{}]",
                pod.name_any(),
                status.phase.as_deref().unwrap_or("none"),
                status.message.as_deref().unwrap_or_default(),
                containers.join("; ")
            )
        })
        .collect();
    if states.is_empty() {
        states.push("no OneAgent pod".to_owned());
    }
    let node = Api::<Node>::all(client.clone()).get(NODE_NAME).await?;
    let pressure: Vec<String> = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_.ends_with("Pressure") && c.status == "True")
        .map(|c| c.type_)
        .collect();
    if !pressure.is_empty() {
        states.push(format!("node {NODE_NAME} has {}", pressure.join(", ")));
    }
    Ok(states.join("; "))
}

/// The sample application's pod `name` once its process reports the agent library mapped, with its logs.
async fn app_with_agent(client: &Client, name: &str) -> anyhow::Result<Option<(Pod, String)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SAMPLE_NAMESPACE);
    let logs = pods.logs(name, &LogParams::default()).await.unwrap_or_default();
    if workloads::sample_app_report(&logs).is_null() {
        bail!("pod {SAMPLE_NAMESPACE}/{name} has not started its application yet");
    }
    let libraries = workloads::loaded_agent_libraries(&logs);
    if !libraries.iter().any(|l| l == AGENT_LIBRARY) {
        bail!(
            "the application in pod {SAMPLE_NAMESPACE}/{name} runs without {AGENT_LIBRARY} (its CSI volume \
             is empty?): {logs}"
        );
    }
    // The container logs before the kubelet reports the pod's phase; wait for the API to say Running too.
    let pod = pods.get(name).await?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Running") {
        return Ok(None);
    }
    Ok(Some((pod, logs)))
}

/// What shows that the sample application's code module came from the CSI driver's cache on the real node.
pub(super) struct CsiProof {
    /// The CSI driver's pod.
    csi_pod: String,
    /// The node id the kubelet registered the driver under.
    node_id: String,
    /// The provisioner's node status.
    status: workloads::CsiNodeStatus,
    /// The sample application's pod, running.
    app: Pod,
    /// Where the kubelet had the driver publish the pod's `oneagent-bin`.
    target: PathBuf,
    /// What the host's mount table has there.
    mount: Option<Mount>,
    /// What the application's process reported.
    report: serde_json::Value,
}

impl CsiProof {
    /// Prints the driver, the node's versions, the pod's volume mount and what its process mapped.
    pub(super) fn print(&self) {
        let driver = pure_csi::DRIVER_NAME;
        println!(
            "CSI driver {driver} on node {NODE_NAME}: pod {}, registered with the kubelet (node id {}).",
            self.csi_pod, self.node_id
        );
        let state = &self.status.dynakubes[DYNAKUBE];
        println!(
            "  node status ConfigMap {NAMESPACE}/{}: versions {}; DynaKube {DYNAKUBE}: version {}, ready {}",
            self.status.config_map,
            serde_json::Value::from(self.status.versions.clone()),
            state["version"].as_str().unwrap_or("none"),
            state["ready"]
        );
        let node = self
            .app
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("none");
        println!(
            "  {SAMPLE_BIN_VOLUME} of pod {} on node {node}, published at {}:",
            self.app.name_any(),
            self.target.display()
        );
        match &self.mount {
            Some(mount) => {
                let lower: Vec<String> = mount
                    .overlay_lower_dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                println!(
                    "    {} mount, lower dirs (the driver's paths) {}",
                    mount.fs_type,
                    lower.join(" over ")
                );
            }
            None => println!("    not a mount point in this machine's mount table"),
        }
        println!(
            "  the application's process (pid {}) has mapped {}",
            self.report["pid"],
            workloads::agent_libraries(&self.report).join(", ")
        );
        println!();
    }
}

/// The sample application's Deployment on the real node, with the imported `image`.
fn deployment(image: &str) -> serde_json::Value {
    let mut deployment = sample_deployment(image);
    let spec = &mut deployment["spec"]["template"]["spec"];
    spec["nodeSelector"] = json!({ NODE_LABEL: "true" });
    spec["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    deployment
}

/// The real node's InternalIP, from its Node object.
async fn node_ip(client: &Client) -> anyhow::Result<String> {
    let node = Api::<Node>::all(client.clone())
        .get(NODE_NAME)
        .await
        .with_context(|| format!("reading node {NODE_NAME}"))?;
    node.status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
        .with_context(|| format!("node {NODE_NAME} reports no InternalIP"))
}

/// The token Secret and the ConfigMap with the fake tenant's CA.
fn prerequisites(ca_pem: &str) -> Vec<serde_json::Value> {
    vec![
        json!({ "apiVersion": "v1", "kind": "Secret",
                "metadata": { "name": DYNAKUBE, "namespace": NAMESPACE },
                "stringData": { "apiToken": API_TOKEN, "paasToken": API_TOKEN } }),
        json!({ "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": TENANT_CA_CONFIGMAP, "namespace": NAMESPACE },
                "data": { "certs": ca_pem } }),
    ]
}

/// The sample DynaKube on the real node: cloudNativeFullStack, so its OneAgent runs read-only with its
/// storage on the CSI driver's `host` volume and the sample namespace's pods get their code module from the
/// driver's cache; it trusts the fake tenant's CA, and its OneAgents run on the real node only (pods on
/// kwok nodes would only pretend).
fn dynakube(api_url: &str) -> serde_json::Value {
    let mut dynakube = sample_dynakube(api_url);
    dynakube["spec"]["trustedCAs"] = json!(TENANT_CA_CONFIGMAP);
    dynakube["spec"]["namespaceSelector"] =
        json!({ "matchLabels": { SAMPLE_SELECTOR.0: SAMPLE_SELECTOR.1 } });
    dynakube["spec"]["oneAgent"] =
        json!({ "cloudNativeFullStack": { "nodeSelector": { NODE_LABEL: "true" } } });
    dynakube
}

/// The values of the chart's release: the locally built `image`, every component on the real node, the
/// webhook with both replicas (its hostname spread is satisfied on one node when only that node is
/// eligible: skew 1).
fn chart_values(image: &str) -> serde_json::Value {
    let on_real_node = json!({ NODE_LABEL: "true" });
    json!({
        "image": image,
        "operator": { "nodeSelector": on_real_node },
        "webhook": { "highAvailability": true, "nodeSelector": on_real_node },
        "csidriver": { "enabled": true, "nodeSelector": on_real_node },
    })
}

/// Whether the operator, both webhook replicas and the CSI driver's pod on the real node are Ready, and the
/// operator has written the webhooks' caBundle; the reason as the error otherwise.
async fn installation_ready(client: &Client) -> anyhow::Result<Option<()>> {
    if workloads::installation_available(client, NAMESPACE)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let webhook = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get(WEBHOOK_DEPLOYMENT)
        .await?;
    let ready = webhook.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    if ready < 2 {
        bail!("{ready} of 2 pods of Deployment {NAMESPACE}/{WEBHOOK_DEPLOYMENT} are Ready");
    }
    if workloads::ready_csi_driver_pod(client, NAMESPACE)
        .await?
        .is_none()
    {
        bail!("the CSI driver's pod on node {NODE_NAME} is not Ready yet");
    }
    Ok(Some(()))
}

/// Writes `content` to `path`, created with `mode`.
fn write_file(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(content.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_cloud_native_on_the_real_node_and_maps_the_sample_namespace() {
        let dynakube = dynakube("https://10.0.0.1:1/api");
        assert_eq!(dynakube["metadata"]["name"], DYNAKUBE);
        assert_eq!(dynakube["spec"]["apiUrl"], "https://10.0.0.1:1/api");
        assert_eq!(dynakube["spec"]["trustedCAs"], TENANT_CA_CONFIGMAP);
        let one_agent = dynakube["spec"]["oneAgent"].as_object().unwrap();
        assert_eq!(one_agent.keys().collect::<Vec<_>>(), ["cloudNativeFullStack"]);
        assert_eq!(
            one_agent["cloudNativeFullStack"]["nodeSelector"][NODE_LABEL],
            "true"
        );
        assert_eq!(
            dynakube["spec"]["namespaceSelector"]["matchLabels"][SAMPLE_SELECTOR.0],
            SAMPLE_SELECTOR.1
        );
        let deployment = deployment("sample-app:test");
        let spec = &deployment["spec"]["template"]["spec"];
        assert_eq!(spec["nodeSelector"][NODE_LABEL], "true");
        assert_eq!(spec["containers"][0]["image"], "sample-app:test");
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn the_chart_runs_every_component_on_the_real_node_with_both_webhook_replicas() {
        let values = chart_values("dynatrace-operator:test");
        assert_eq!(values["image"], "dynatrace-operator:test");
        assert_eq!(values["webhook"]["highAvailability"], true);
        for component in ["operator", "webhook", "csidriver"] {
            assert_eq!(
                values[component]["nodeSelector"][NODE_LABEL], "true",
                "{component}"
            );
        }
    }

    #[test]
    fn only_versions_with_an_image_can_be_rolled_out() {
        assert!(check_version(None).is_ok());
        assert!(check_version(Some(FAKE_ONEAGENT_VERSIONS[1])).is_ok());
        let err = check_version(Some("1.278.0.20231001-000000")).unwrap_err();
        assert!(format!("{err}").contains(FAKE_ONEAGENT_VERSIONS[1]), "{err}");
    }
}
