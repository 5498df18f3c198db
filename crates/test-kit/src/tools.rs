//! Where the control plane's binaries are, and which build of them this checkout wants.
//!
//! The versions are pinned by the Go modules under `tools/` (and nowhere else). The binaries are built by
//! `cargo xtask tools` into a cache directory outside the repository whose name is a hash of those module
//! files, so changing a pin selects (and builds) a new directory while old checkouts keep theirs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

/// Bumped whenever the build recipe (flags, tags, the set of outputs) changes, to force a rebuild.
pub const BUILD_RECIPE_VERSION: &str = "1";

/// The Go modules that pin the tools, relative to the workspace root.
pub const TOOL_MODULES: &[&str] = &["tools/k8s", "tools/kwok"];

/// File in a tools directory that marks a complete build.
pub const COMPLETE_MARKER: &str = ".complete";

/// Environment variable that points at a directory of prebuilt tools, bypassing the cache.
pub const TOOLS_DIR_ENV: &str = "DTO_TOOLS_DIR";

/// Environment variable that moves the cache root (default `$XDG_CACHE_HOME/dynatrace-operator` or
/// `~/.cache/dynatrace-operator`).
pub const CACHE_DIR_ENV: &str = "DTO_CACHE_DIR";

/// The workspace root of this checkout.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The cache root for everything this project builds outside the repository.
pub fn cache_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("dynatrace-operator"));
    }
    let home = std::env::var_os("HOME").context(
        "neither DTO_CACHE_DIR, XDG_CACHE_HOME nor HOME is set; set one to choose a cache directory",
    )?;
    Ok(PathBuf::from(home).join(".cache/dynatrace-operator"))
}

/// A hash of the files that pin the tools and of the build recipe.
pub fn pins_hash(workspace: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(BUILD_RECIPE_VERSION.as_bytes());
    for module in TOOL_MODULES {
        for file in ["go.mod", "go.sum"] {
            let path = workspace.join(module).join(file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading the tool pin {}", path.display()))?;
            hasher.update(
                path.strip_prefix(workspace)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .as_bytes(),
            );
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The Kubernetes version pinned in `tools/k8s/go.mod`, e.g. `1.36.3`.
pub fn pinned_kubernetes_version(workspace: &Path) -> anyhow::Result<String> {
    let path = workspace.join("tools/k8s/go.mod");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_required_version(&text, "k8s.io/kubernetes")
        .map(|v| v.trim_start_matches('v').to_owned())
        .with_context(|| format!("{} does not require k8s.io/kubernetes", path.display()))
}

/// Finds `module vX.Y.Z` in the require lines of a go.mod.
pub fn parse_required_version<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    go_mod.lines().find_map(|line| {
        let mut words = line.trim().trim_start_matches("require").split_whitespace();
        (words.next() == Some(module)).then(|| words.next()).flatten()
    })
}

/// The directory this checkout's tools are built into.
pub fn pinned_tools_dir() -> anyhow::Result<PathBuf> {
    let workspace = workspace_root();
    Ok(cache_root()?.join("tools").join(pins_hash(&workspace)?))
}

/// Bumped whenever the kubelet's build recipe changes. The kubelet is cached apart from the control plane
/// (see [`kubelet_dir`]), so a kubelet-only change does not rebuild the control plane.
pub const KUBELET_RECIPE_VERSION: &str = "1";

/// The kubelet's cache directory for this checkout: `<cache>/kubelet/<hash>`, the hash covering
/// `tools/k8s` (which pins the kubelet with the control plane) and [`KUBELET_RECIPE_VERSION`].
pub fn kubelet_dir() -> anyhow::Result<PathBuf> {
    pinned_tool_dir("tools/k8s", KUBELET_RECIPE_VERSION, "kubelet")
}

/// `<cache>/<name>/<hash>`: the cache directory of a tool built from the Go module `module` (relative to
/// the workspace root), the hash covering the module's `go.mod`, `go.sum` and the build `recipe` version.
fn pinned_tool_dir(module: &str, recipe: &str, name: &str) -> anyhow::Result<PathBuf> {
    let workspace = workspace_root();
    let mut hasher = Sha256::new();
    hasher.update(recipe.as_bytes());
    for file in ["go.mod", "go.sum"] {
        let path = workspace.join(module).join(file);
        let bytes =
            std::fs::read(&path).with_context(|| format!("reading the tool pin {}", path.display()))?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let hash: String = hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(cache_root()?.join(name).join(hash))
}

/// A tool built into `dir` (its binary `binary`, and the build's completion marker), or
/// `$DTO_TOOLS_DIR/bin/<binary>` when that is set. Fails with what to run when it is not built.
fn locate_pinned_tool(dir: &Path, binary: &str, what: &str, how_long: &str) -> anyhow::Result<PathBuf> {
    if let Some(tools) = std::env::var_os(TOOLS_DIR_ENV) {
        let path = PathBuf::from(tools).join("bin").join(binary);
        if !path.exists() {
            bail!(
                "{TOOLS_DIR_ENV} is set but {} does not exist; build it there or unset {TOOLS_DIR_ENV}",
                path.display()
            );
        }
        return Ok(path);
    }
    let path = dir.join(binary);
    if !path.exists() || !dir.join(COMPLETE_MARKER).exists() {
        bail!(
            "{what} is not built in {}; run `cargo xtask tools` to build it ({how_long})",
            dir.display()
        );
    }
    Ok(path)
}

/// The pinned kubelet (for the real node): `$DTO_TOOLS_DIR/bin/kubelet` when that is set, else the cached
/// build. Fails with what to run when it is not built.
pub fn locate_kubelet() -> anyhow::Result<PathBuf> {
    locate_pinned_tool(
        &kubelet_dir()?,
        "kubelet",
        "the pinned kubelet",
        "about 1 minute after the control plane, 5 cold",
    )
}

/// The Go module that pins csi-sanity, relative to the workspace root. Cached apart from the control
/// plane (see [`csi_sanity_dir`]), so adding or bumping it does not rebuild the control plane.
pub const CSI_SANITY_MODULE: &str = "tools/csi-sanity";

/// The package of the csi-sanity command.
pub const CSI_SANITY_PACKAGE: &str = "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity";

/// Bumped whenever csi-sanity's build recipe changes.
pub const CSI_SANITY_RECIPE_VERSION: &str = "1";

/// Environment variable that turns a missing optional test tool (csi-sanity, Helm) into a test failure
/// instead of a skip (CI sets it).
pub const REQUIRE_TOOLS_ENV: &str = "DTO_REQUIRE_TOOLS";

/// csi-sanity's cache directory for this checkout: `<cache>/csi-sanity/<hash>`, the hash covering
/// `tools/csi-sanity` and [`CSI_SANITY_RECIPE_VERSION`].
pub fn csi_sanity_dir() -> anyhow::Result<PathBuf> {
    pinned_tool_dir(CSI_SANITY_MODULE, CSI_SANITY_RECIPE_VERSION, "csi-sanity")
}

/// The pinned csi-sanity: `$DTO_TOOLS_DIR/bin/csi-sanity` when that is set, else the cached build. Fails
/// with what to run when it is not built.
pub fn locate_csi_sanity() -> anyhow::Result<PathBuf> {
    locate_pinned_tool(&csi_sanity_dir()?, "csi-sanity", "csi-sanity", "under a minute")
}

/// The Go module that pins Helm, relative to the workspace root. Cached apart from the control plane
/// (see [`helm_dir`]).
pub const HELM_MODULE: &str = "tools/helm";

/// The package of the helm command.
pub const HELM_PACKAGE: &str = "helm.sh/helm/v3/cmd/helm";

/// The module whose version `helm version` reports (stamped at build time).
pub const HELM_GO_MODULE: &str = "helm.sh/helm/v3";

/// Bumped whenever Helm's build recipe changes.
pub const HELM_RECIPE_VERSION: &str = "1";

/// Helm's cache directory for this checkout: `<cache>/helm/<hash>`, the hash covering `tools/helm`,
/// [`HELM_RECIPE_VERSION`] and the pinned Kubernetes version (stamped into Helm as the version it assumes
/// when no cluster is asked, so a Kubernetes bump rebuilds it).
pub fn helm_dir() -> anyhow::Result<PathBuf> {
    let kubernetes = pinned_kubernetes_version(&workspace_root())?;
    pinned_tool_dir(
        HELM_MODULE,
        &format!("{HELM_RECIPE_VERSION}-kubernetes-{kubernetes}"),
        "helm",
    )
}

/// The pinned Helm: `$DTO_TOOLS_DIR/bin/helm` when that is set, else the cached build. Fails with what to
/// run when it is not built.
pub fn locate_helm() -> anyhow::Result<PathBuf> {
    locate_pinned_tool(&helm_dir()?, "helm", "Helm", "about 2 minutes")
}

/// Paths of the built control plane tools.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Directory holding everything below.
    pub dir: PathBuf,
    /// etcd server.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
    /// kwok controller (plays the kubelet for fake nodes).
    pub kwok: PathBuf,
    /// kwok stage definitions (node and pod lifecycles).
    pub kwok_stages: PathBuf,
}

impl Tools {
    /// The tool paths inside `dir` (without checking that they exist).
    pub fn in_dir(dir: &Path) -> Self {
        let bin = dir.join("bin");
        Self {
            dir: dir.to_owned(),
            etcd: bin.join("etcd"),
            kube_apiserver: bin.join("kube-apiserver"),
            kube_controller_manager: bin.join("kube-controller-manager"),
            kube_scheduler: bin.join("kube-scheduler"),
            kubectl: bin.join("kubectl"),
            kwok: bin.join("kwok"),
            kwok_stages: dir.join("kwok-stages.yaml"),
        }
    }

    /// Every file that must exist for the tools to be usable.
    pub fn files(&self) -> [&Path; 7] {
        [
            &self.etcd,
            &self.kube_apiserver,
            &self.kube_controller_manager,
            &self.kube_scheduler,
            &self.kubectl,
            &self.kwok,
            &self.kwok_stages,
        ]
    }

    /// Finds the tools: `$DTO_TOOLS_DIR` if set, else this checkout's pinned build in the cache. Fails with
    /// what to run when they are not built.
    pub fn locate() -> anyhow::Result<Self> {
        let (dir, from_env) = match std::env::var_os(TOOLS_DIR_ENV) {
            Some(dir) => (PathBuf::from(dir), true),
            None => (pinned_tools_dir()?, false),
        };
        let tools = Self::in_dir(&dir);
        let missing: Vec<_> = tools.files().into_iter().filter(|f| !f.exists()).collect();
        if !missing.is_empty() || (!from_env && !dir.join(COMPLETE_MARKER).exists()) {
            let hint = if from_env {
                format!(
                    "{TOOLS_DIR_ENV} points at {}; unset it or build the tools there",
                    dir.display()
                )
            } else {
                "run `cargo xtask tools` to build them (about 12 minutes the first time on 2 cores)"
                    .to_owned()
            };
            bail!(
                "the Kubernetes test tools are not built in {} (missing: {}); {hint}",
                dir.display(),
                if missing.is_empty() {
                    COMPLETE_MARKER.to_owned()
                } else {
                    missing
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        Ok(tools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_require_lines_in_blocks_and_single_lines() {
        let go_mod = "module x\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 v3.6.8\n\tk8s.io/kubernetes v1.36.3\n)\n\
                      require sigs.k8s.io/kwok v0.8.0\n";
        assert_eq!(
            parse_required_version(go_mod, "k8s.io/kubernetes"),
            Some("v1.36.3")
        );
        assert_eq!(parse_required_version(go_mod, "sigs.k8s.io/kwok"), Some("v0.8.0"));
        assert_eq!(parse_required_version(go_mod, "k8s.io/api"), None);
    }

    #[test]
    fn the_checkout_pins_a_kubernetes_version_and_hashes_stably() {
        let root = workspace_root();
        let version = pinned_kubernetes_version(&root).unwrap();
        assert!(version.starts_with("1."), "{version}");
        assert_eq!(pins_hash(&root).unwrap(), pins_hash(&root).unwrap());
        assert_eq!(pins_hash(&root).unwrap().len(), 16);
    }

    #[test]
    fn tool_paths_stay_inside_their_directory() {
        let dir = std::env::temp_dir().join("testkit-no-tools-here");
        let tools = Tools::in_dir(&dir);
        assert!(tools.files().iter().all(|f| f.starts_with(&dir)));
    }
}
