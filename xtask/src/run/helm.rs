//! The chart in `chart/` installed with the pinned Helm (`cargo xtask run --real-node`), as users install
//! it, and uninstalled again at the end with a check that nothing of the release is left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::NAMESPACE;

/// The release name, the one the README's `helm install` uses.
pub(super) const RELEASE: &str = "dynatrace-operator";
/// How long the pods of the release may take to terminate, and the garbage collector to remove what they
/// owned, after `helm uninstall`.
const LEFT_TIMEOUT: Duration = Duration::from_secs(120);
/// The kinds, in the release namespace, that are listed after the uninstall to show what is left.
const LEFT_KINDS: &str = "deployments,daemonsets,services,serviceaccounts,secrets,configmaps,roles,rolebindings,\
                          leases.coordination.k8s.io,poddisruptionbudgets";
/// What stays in the release namespace after `helm uninstall` by design, by name prefix: the token Secret
/// and CA ConfigMap the user created for the DynaKube, and what every namespace has. What the components
/// created is not among them: the garbage collector removes it with its owner (the webhook certificate
/// Secret with the webhook Deployment, the leader Lease and node cache with the operator Deployment, the CSI
/// node status ConfigMaps with the CSI DaemonSet).
pub(super) const LEFT_BY_DESIGN: &[&str] = &[
    "secret/dynakube",
    "configmap/fake-tenant-ca",
    "configmap/kube-root-ca.crt",
    "serviceaccount/default",
];

/// A Helm release of the chart in this workspace's `chart/`, in the run's namespace.
pub(super) struct Release {
    helm: PathBuf,
    kubeconfig: PathBuf,
    /// Helm's cache, config and data directories, and the values file: under the cluster's directory,
    /// never the user's Helm setup.
    home: PathBuf,
    kubectl: PathBuf,
}

impl Release {
    pub(super) fn new(helm: PathBuf, kubectl: PathBuf, kubeconfig: PathBuf, home: PathBuf) -> Self {
        Self {
            helm,
            kubeconfig,
            home,
            kubectl,
        }
    }

    /// The chart's directory.
    pub(super) fn chart() -> PathBuf {
        test_kit::tools::workspace_root().join("chart")
    }

    /// `helm install` of the chart with `values` (written to a values file, which is returned); a release
    /// of the same name left by an earlier, killed run on a kept cluster is uninstalled first.
    pub(super) fn install(&self, values: &serde_json::Value) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.home).with_context(|| format!("creating {}", self.home.display()))?;
        let values_file = self.home.join("values.yaml");
        // JSON is YAML.
        std::fs::write(&values_file, serde_json::to_string_pretty(values)?)
            .with_context(|| format!("writing {}", values_file.display()))?;
        if self
            .helm(&["status", RELEASE, "--namespace", NAMESPACE])?
            .status
            .success()
        {
            eprintln!("Helm release {RELEASE} is left from an earlier run; uninstalling it first ...");
            self.helm_ok(&["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])?;
        }
        let chart = Self::chart();
        let (chart, values_arg) = (chart.display().to_string(), values_file.display().to_string());
        self.helm_ok(&[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--values",
            &values_arg,
        ])?;
        Ok(values_file)
    }

    /// `helm uninstall`, then the check that nothing of the release is left but the CRDs (kept by their
    /// `helm.sh/resource-policy: keep`): every object of its manifest gone, no pod left in the namespace,
    /// and nothing in the namespace but [`LEFT_BY_DESIGN`]. Prints what it found.
    pub(super) async fn uninstall(&self, client: &Client) -> anyhow::Result<()> {
        let manifest = self.helm_ok(&["get", "manifest", RELEASE, "--namespace", NAMESPACE])?;
        let manifest_file = self.home.join("manifest.yaml");
        std::fs::write(&manifest_file, &manifest.stdout)
            .with_context(|| format!("writing {}", manifest_file.display()))?;
        let started = Instant::now();
        self.helm_ok(&["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"])?;
        let left = self.kubectl_names(&[
            "get",
            "--filename",
            &manifest_file.display().to_string(),
            "--ignore-not-found",
            "--output",
            "name",
        ])?;
        let (crds, objects): (Vec<String>, Vec<String>) = left
            .into_iter()
            .partition(|o| o.starts_with("customresourcedefinition.apiextensions.k8s.io/"));
        if !objects.is_empty() {
            bail!(
                "helm uninstall {RELEASE} left objects of the release in the cluster: {}; the chart's \
                 templates must not keep them (only the CRDs have helm.sh/resource-policy: keep)",
                objects.join(", ")
            );
        }
        // The pods terminate, and what the garbage collector removes goes, a moment after the uninstall.
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        let deadline = Instant::now() + LEFT_TIMEOUT;
        let by_design = loop {
            let pods_left: Vec<String> = pods
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing the pods in namespace {NAMESPACE}"))?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            let in_namespace =
                self.kubectl_names(&["get", LEFT_KINDS, "--namespace", NAMESPACE, "--output", "name"])?;
            let (by_design, unexpected): (Vec<String>, Vec<String>) = in_namespace
                .into_iter()
                .partition(|o| LEFT_BY_DESIGN.iter().any(|p| o.starts_with(p)));
            if pods_left.is_empty() && unexpected.is_empty() {
                break by_design;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{LEFT_TIMEOUT:?} after helm uninstall {RELEASE}, namespace {NAMESPACE} still holds pods [{}] \
                     and objects [{}]; only [{}] may stay",
                    pods_left.join(", "),
                    unexpected.join(", "),
                    LEFT_BY_DESIGN.join("*, ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let crd_names: Vec<&str> = crds
            .iter()
            .filter_map(|c| c.split_once('/').map(|(_, name)| name))
            .collect();
        println!(
            "helm uninstall {RELEASE}: nothing of the release is left ({:.1} s; every object of its manifest \
             and every pod gone) but the CRDs {} (kept, with the DynaKubes users still have).",
            started.elapsed().as_secs_f64(),
            crd_names.join(", ")
        );
        println!(
            "  left in namespace {NAMESPACE}, for users to delete with it: {}",
            by_design.join(", ")
        );
        Ok(())
    }

    /// Runs helm with `args` against the cluster.
    fn helm(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(&self.helm)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .output()
            .with_context(|| format!("running {} {}", self.helm.display(), args.join(" ")))
    }

    /// Runs helm with `args`, failing with its output unless it succeeds.
    fn helm_ok(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = self.helm(args)?;
        check(&self.helm, args, &output)?;
        Ok(output)
    }

    /// The object names (`kind.group/name`) `kubectl` prints for `args`.
    fn kubectl_names(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let output = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .with_context(|| format!("running {} {}", self.kubectl.display(), args.join(" ")))?;
        check(&self.kubectl, args, &output)?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// Fails naming the command and quoting its error output unless it succeeded.
fn check(program: &Path, args: &[&str], output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "`{} {}` failed ({}): {}",
        program.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}
