//! `cargo xtask run --real-node`: the same sample on the machine's real node, with the product as it is
//! installed. The images are built and imported into the node, the operator and the webhook run as pods of
//! the operator image (from `pure_install::Installation`), and the OneAgent DaemonSet really runs the fake
//! OneAgent, pulled from the fake tenant's registry. The steps follow `crates/cli/tests/e2e_real_node.rs`.
//!
//! The fake tenant stays a process of this run, but listens on the node's address (pods have network
//! namespaces of their own, so loopback is not it) over HTTPS with a CA of its own: the DynaKube names the
//! CA in `trustedCAs` for the operator, and containerd is told to trust it for the registry.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use pure_install::Installation;
use serde_json::json;
use test_images::{FAKE_ONEAGENT_IMAGE, FAKE_ONEAGENT_VERSIONS, ImageArchive, OPERATOR_IMAGE, Profile};
use test_kit::Tools;
use test_kit::real_node::workloads::{self, FakeOneAgent};
use test_kit::real_node::{self as node, NODE_LABEL, NODE_NAME};

use super::{
    API_TOKEN, Binaries, DYNAKUBE, FIELD_MANAGER, NAMESPACE, Options, Session, apply_dynakube,
    dynakube_running, oneagent_pods, sample_dynakube,
};

/// How long the operator may take to roll out a OneAgent version on the real node: an image pull, a
/// container start and the readiness probe, which the product starts after 90 s.
pub(super) const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the operator and webhook pods may take to be available (image import done, first start).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(180);
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

        // The operator and the webhook as pods of our image on the real node.
        let operator = images
            .iter()
            .find(|i| i.name == OPERATOR_IMAGE)
            .context("the image build produced no operator image")?;
        let mut installation = Installation::new(&operator.reference());
        installation.webhook_replicas = 1;
        installation.node_selector = BTreeMap::from([(NODE_LABEL.to_owned(), "true".to_owned())]);
        // The CSI driver only where pods really run (kwok nodes have no kubelet to register it with).
        if let Some(csi) = installation.csi_driver.as_mut() {
            csi.node_selector = installation.node_selector.clone();
        }
        eprintln!(
            "Installing the operator and the webhook ({}) as pods on node {NODE_NAME} ...",
            operator.reference()
        );
        test_kit::setup::apply_objects(&client, &installation.objects(), pure_install::FIELD_MANAGER)
            .await
            .context("applying the installation")?;
        self.wait(
            "the operator and webhook pods to be available",
            INSTALL_TIMEOUT,
            || workloads::installation_available(&client, NAMESPACE),
        )
        .await?;

        eprintln!(
            "Applying the sample: token Secret, CA ConfigMap and DynaKube {NAMESPACE}/{DYNAKUBE}; the OneAgent \
             pod is Ready after its readiness probe starts (90 s) ..."
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
                injected: None,
            },
        );
        Ok(())
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
                Ok(agent.filter(|a| version.is_none_or(|v| a.version == v)))
            }
        })
        .await
    }
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

/// The sample DynaKube trusting the fake tenant's CA, its OneAgents on the real node only: pods on kwok
/// nodes would only pretend.
fn dynakube(api_url: &str) -> serde_json::Value {
    let mut dynakube = sample_dynakube(api_url);
    dynakube["spec"]["trustedCAs"] = json!(TENANT_CA_CONFIGMAP);
    dynakube["spec"]["oneAgent"]["classicFullStack"]["nodeSelector"] = json!({ NODE_LABEL: "true" });
    dynakube
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
    fn the_sample_trusts_the_tenant_ca_and_selects_the_real_node() {
        let dynakube = dynakube("https://10.0.0.1:1/api");
        assert_eq!(dynakube["spec"]["apiUrl"], "https://10.0.0.1:1/api");
        assert_eq!(dynakube["spec"]["trustedCAs"], TENANT_CA_CONFIGMAP);
        assert_eq!(
            dynakube["spec"]["oneAgent"]["classicFullStack"]["nodeSelector"][NODE_LABEL],
            "true"
        );
    }

    #[test]
    fn only_versions_with_an_image_can_be_rolled_out() {
        assert!(check_version(None).is_ok());
        assert!(check_version(Some(FAKE_ONEAGENT_VERSIONS[1])).is_ok());
        let err = check_version(Some("1.278.0.20231001-000000")).unwrap_err();
        assert!(format!("{err}").contains(FAKE_ONEAGENT_VERSIONS[1]), "{err}");
    }
}
