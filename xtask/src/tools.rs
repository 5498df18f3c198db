//! `cargo xtask tools`: builds the control plane used by tests and local runs from the Go module proxy.
//!
//! Kubernetes cannot be `go install`ed (its go.mod has replace directives), so `tools/k8s` is a module of
//! its own that requires k8s.io/kubernetes and points every staging module at the matching release. kwok is
//! a separate module so that Go's version selection cannot move the control plane's dependencies.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use test_kit::tools::{self, COMPLETE_MARKER, Tools};

/// Kubernetes commands built from `tools/k8s`.
const KUBERNETES_COMMANDS: &[&str] = &[
    "k8s.io/kubernetes/cmd/kube-apiserver",
    "k8s.io/kubernetes/cmd/kube-controller-manager",
    "k8s.io/kubernetes/cmd/kube-scheduler",
    "k8s.io/kubernetes/cmd/kubectl",
];
/// The kubelet, for the real node; built from `tools/k8s` like the control plane but cached on its own.
const KUBELET_PACKAGE: &str = "k8s.io/kubernetes/cmd/kubelet";
/// The etcd server package (its main is in the module root, so the binary must be named explicitly).
const ETCD_PACKAGE: &str = "go.etcd.io/etcd/server/v3";
const KWOK_PACKAGE: &str = "sigs.k8s.io/kwok/cmd/kwok";
/// The stages kwokctl uses by default; kwok 0.8 refuses to start without stages.
const KWOK_STAGES: &[&str] = &[
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
];

/// Builds the tools unless this checkout's pinned build is already in the cache; returns their paths.
pub fn ensure(force: bool) -> anyhow::Result<Tools> {
    if std::env::var_os(tools::TOOLS_DIR_ENV).is_some() {
        return Tools::locate();
    }
    let dir = tools::pinned_tools_dir()?;
    if !force && dir.join(COMPLETE_MARKER).exists() {
        return Tools::locate();
    }
    build(&dir).with_context(|| format!("building the Kubernetes test tools into {}", dir.display()))?;
    Tools::locate()
}

/// Builds the pinned kubelet unless it is already cached; returns its path.
pub fn ensure_kubelet(force: bool) -> anyhow::Result<PathBuf> {
    ensure_single_tool(force, tools::kubelet_dir, tools::locate_kubelet, |dir| {
        let workspace = tools::workspace_root();
        let k8s_version = tools::pinned_kubernetes_version(&workspace)?;
        build_single_tool(dir, &format!("the kubelet {k8s_version}"), |staging| {
            go_build(
                &workspace.join("tools/k8s"),
                &format!("kubelet {k8s_version}"),
                &kubernetes_build_args(&k8s_version, &staging.join("kubelet"), &[KUBELET_PACKAGE])?,
                &[KUBELET_PACKAGE],
            )?;
            verify_version(&staging.join("kubelet"), "--version", &format!("v{k8s_version}"))
        })
    })
}

/// A tool cached on its own: `locate` when `$DTO_TOOLS_DIR` is set or `dir` holds a complete build (and
/// `force` is off), else `build` into `dir` first.
fn ensure_single_tool(
    force: bool,
    dir: fn() -> anyhow::Result<PathBuf>,
    locate: fn() -> anyhow::Result<PathBuf>,
    build: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    if std::env::var_os(tools::TOOLS_DIR_ENV).is_some() {
        return locate();
    }
    let dir = dir()?;
    if force || !dir.join(COMPLETE_MARKER).exists() {
        build(&dir)?;
    }
    locate()
}

/// Builds the pinned csi-sanity unless it is already cached; returns its path.
pub fn ensure_csi_sanity(force: bool) -> anyhow::Result<PathBuf> {
    ensure_single_tool(force, tools::csi_sanity_dir, tools::locate_csi_sanity, |dir| {
        build_single_tool(dir, "csi-sanity", |staging| {
            go_build(
                &tools::workspace_root().join(tools::CSI_SANITY_MODULE),
                "csi-sanity",
                &single_binary_args(&staging.join("csi-sanity"), tools::CSI_SANITY_PACKAGE),
                &[tools::CSI_SANITY_PACKAGE],
            )?;
            // csi-sanity prints its flags on stderr.
            let binary = staging.join("csi-sanity");
            let help = Command::new(&binary)
                .arg("--help")
                .output()
                .with_context(|| format!("running {} --help", binary.display()))?;
            if !String::from_utf8_lossy(&help.stderr).contains("csi.endpoint") {
                bail!(
                    "{} --help does not list --csi.endpoint; the build is broken",
                    binary.display()
                );
            }
            Ok(())
        })
    })
}

/// Builds the pinned Helm unless it is already cached; returns its path.
pub fn ensure_helm(force: bool) -> anyhow::Result<PathBuf> {
    ensure_single_tool(force, tools::helm_dir, tools::locate_helm, |dir| {
        let workspace = tools::workspace_root();
        let kubernetes = tools::pinned_kubernetes_version(&workspace)?;
        let go_mod_path = workspace.join(tools::HELM_MODULE).join("go.mod");
        let go_mod = std::fs::read_to_string(&go_mod_path)
            .with_context(|| format!("reading {}", go_mod_path.display()))?;
        let helm_version = tools::parse_required_version(&go_mod, tools::HELM_GO_MODULE)
            .with_context(|| {
                format!(
                    "{} does not require {}",
                    go_mod_path.display(),
                    tools::HELM_GO_MODULE
                )
            })?
            .to_owned();
        build_single_tool(dir, &format!("Helm {helm_version}"), |staging| {
            let binary = staging.join("helm");
            let mut args: Vec<String> = ["build", "-v", "-trimpath", "-ldflags"].map(String::from).into();
            args.push(helm_ldflags(&helm_version, &kubernetes)?);
            args.extend([
                "-o".to_owned(),
                binary.display().to_string(),
                tools::HELM_PACKAGE.to_owned(),
            ]);
            go_build(
                &workspace.join(tools::HELM_MODULE),
                &format!("Helm {helm_version}"),
                &args,
                &[tools::HELM_PACKAGE],
            )?;
            // The Kubernetes stamp is checked by the chart's tests: its kubeVersion constraint fails to
            // render with Helm's unstamped default (v1.20).
            verify_version(&binary, "version", &format!("Version:\"{helm_version}\""))
        })
    })
}

/// `36` of `1.36.3`.
fn kubernetes_minor(version: &str) -> anyhow::Result<&str> {
    version
        .split('.')
        .nth(1)
        .with_context(|| format!("malformed Kubernetes version {version:?}"))
}

/// `-X` flags for Helm: its own version (else `helm version` says only "v3.19") and the Kubernetes version
/// it assumes without a cluster (else v1.20, so `helm template` and `helm lint` render for an old cluster).
fn helm_ldflags(helm_version: &str, kubernetes: &str) -> anyhow::Result<String> {
    let minor = kubernetes_minor(kubernetes)?;
    let mut flags = String::from("-s -w");
    for package in ["pkg/chartutil", "pkg/lint/rules"] {
        flags.push_str(&format!(
            " -X helm.sh/helm/v3/{package}.k8sVersionMajor=1 -X helm.sh/helm/v3/{package}.k8sVersionMinor={minor}"
        ));
    }
    flags.push_str(&format!(
        " -X helm.sh/helm/v3/internal/version.version={helm_version}"
    ));
    Ok(flags)
}

/// Builds one tool into a staging directory next to `dir` with `build`, marks it complete and moves it
/// into place, so an interrupted build is never taken for a finished one.
fn build_single_tool(
    dir: &Path,
    what: &str,
    build: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    check_go(&tools::workspace_root())?;
    let staging = dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let started = Instant::now();
    eprintln!("Building {what} into {}", dir.display());
    build(&staging).with_context(|| format!("building {what} into {}", staging.display()))?;
    std::fs::write(
        staging.join(COMPLETE_MARKER),
        format!("{what}\nbuilt in {:.0?}\n", started.elapsed()),
    )
    .context("writing the completion marker")?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    std::fs::rename(&staging, dir).with_context(|| format!("moving the build into {}", dir.display()))?;
    eprintln!("Built {what} in {:.0?}", started.elapsed());
    Ok(())
}

/// `go build` arguments for Kubernetes commands: upstream's tags and the version stamps. `output` is a
/// directory (ending in `/`) for several packages or a file for one.
fn kubernetes_build_args(version: &str, output: &Path, packages: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = [
        "build",
        "-v",
        "-trimpath",
        "-tags",
        "selinux,notest,grpcnotrace",
        "-ldflags",
    ]
    .map(String::from)
    .into();
    args.push(version_ldflags(version)?);
    args.push("-o".into());
    args.push(output.display().to_string());
    args.extend(packages.iter().map(|s| (*s).to_owned()));
    Ok(args)
}

fn build(dir: &Path) -> anyhow::Result<()> {
    let workspace = tools::workspace_root();
    let k8s_version = tools::pinned_kubernetes_version(&workspace)?;
    check_go(&workspace)?;
    let staging = dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let bin = staging.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let started = Instant::now();
    eprintln!(
        "Building Kubernetes {k8s_version}, etcd and kwok into {} (about 12 minutes cold on 2 cores; \
         cached afterwards)",
        dir.display()
    );

    let k8s_module = workspace.join("tools/k8s");
    let args = kubernetes_build_args(&k8s_version, &bin.join(""), KUBERNETES_COMMANDS)?;
    go_build(
        &k8s_module,
        &format!("Kubernetes {k8s_version}"),
        &args,
        KUBERNETES_COMMANDS,
    )?;
    go_build(
        &k8s_module,
        "etcd",
        &single_binary_args(&bin.join("etcd"), ETCD_PACKAGE),
        &[ETCD_PACKAGE],
    )?;
    let kwok_module = workspace.join("tools/kwok");
    go_build(
        &kwok_module,
        "kwok",
        &single_binary_args(&bin.join("kwok"), KWOK_PACKAGE),
        &[KWOK_PACKAGE],
    )?;
    write_kwok_stages(&kwok_module, &staging.join("kwok-stages.yaml"))?;

    verify(&bin, &k8s_version)?;
    std::fs::write(
        staging.join(COMPLETE_MARKER),
        format!("kubernetes {k8s_version}\nbuilt in {:.0?}\n", started.elapsed()),
    )
    .context("writing the completion marker")?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    std::fs::rename(&staging, dir).with_context(|| format!("moving the build into {}", dir.display()))?;
    eprintln!(
        "Built the test tools in {:.0?}: {}",
        started.elapsed(),
        dir.display()
    );
    Ok(())
}

/// `go build` arguments for one stripped binary named `output`.
fn single_binary_args(output: &Path, package: &str) -> Vec<String> {
    let fixed = ["build", "-v", "-trimpath", "-ldflags", "-s -w", "-o"].map(String::from);
    fixed
        .into_iter()
        .chain([output.display().to_string(), package.to_owned()])
        .collect()
}

/// The `-X` flags that stamp the version (without them `--version` says v0.0.0 and Helm's kubeVersion
/// checks fail).
fn version_ldflags(version: &str) -> anyhow::Result<String> {
    let minor = kubernetes_minor(version)?;
    let mut flags = String::from("-s -w");
    for package in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        for (key, value) in [
            ("gitVersion", format!("v{version}")),
            ("gitMajor", "1".to_owned()),
            ("gitMinor", minor.to_owned()),
            ("gitTreeState", "clean".to_owned()),
            ("gitCommit", "0".repeat(40)),
            ("buildDate", "1970-01-01T00:00:00Z".to_owned()),
        ] {
            flags.push_str(&format!(" -X {package}.{key}={value}"));
        }
    }
    Ok(flags)
}

fn go_command(module: &Path) -> Command {
    let mut command = Command::new("go");
    command
        .current_dir(module)
        // Static binaries as upstream builds them; exactly the pinned toolchain and module versions.
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly");
    command
}

/// Fails early, and says what to do, when Go is missing or older than the modules need.
fn check_go(workspace: &Path) -> anyhow::Result<()> {
    let output = Command::new("go").arg("version").output().map_err(|err| {
        anyhow::anyhow!(
            "cannot run `go` ({err}); the Kubernetes test tools are built with Go. Install Go {} or newer \
             (for example from https://go.dev/dl) and put it on PATH",
            required_go(workspace).unwrap_or_else(|_| "1.26".into())
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let found = text
        .split_whitespace()
        .nth(2)
        .unwrap_or("")
        .trim_start_matches("go");
    let required = required_go(workspace)?;
    if version_tuple(found) < version_tuple(&required) {
        bail!(
            "Go {required} or newer is needed to build the Kubernetes test tools, but `go version` says {text}"
        );
    }
    Ok(())
}

fn required_go(workspace: &Path) -> anyhow::Result<String> {
    let path = workspace.join("tools/k8s/go.mod");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("go ").map(|v| v.trim().to_owned()))
        .with_context(|| format!("{} has no go directive", path.display()))
}

fn version_tuple(version: &str) -> Vec<u32> {
    version
        .split(['.', '-', 'r', 'b'])
        .map_while(|p| p.parse().ok())
        .collect()
}

/// Runs `go build -v`, printing a progress line every 100 packages and the tail of the output on failure.
fn go_build(module: &Path, what: &str, args: &[String], packages: &[&str]) -> anyhow::Result<()> {
    let total = count_dependencies(module, packages).unwrap_or(0);
    let started = Instant::now();
    let mut child = go_command(module)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `go build`")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut compiled = 0usize;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading `go build` output")?;
        // `-v` prints each package as it is compiled; anything with spaces is a message, keep it.
        if !line.contains(' ') {
            compiled += 1;
            if compiled.is_multiple_of(100) {
                let of = if total > 0 {
                    format!("/{total}")
                } else {
                    String::new()
                };
                eprintln!(
                    "  {what}: compiled {compiled}{of} packages ({:.0?})",
                    started.elapsed()
                );
            }
        }
        tail.push(line);
        if tail.len() > 40 {
            tail.remove(0);
        }
    }
    let status = child.wait().context("waiting for `go build`")?;
    if !status.success() {
        bail!(
            "`go build` of {what} failed in {} ({status}). Its last output:\n{}\n\
             If a module could not be downloaded, check that the Go module proxy is reachable \
             (`go env GOPROXY`); if the compiler failed, a Go version mismatch is the usual cause.",
            module.display(),
            tail.join("\n")
        );
    }
    eprintln!("  {what}: done in {:.0?}", started.elapsed());
    Ok(())
}

/// Number of packages a build will consider, for the progress line (cached packages are not printed).
fn count_dependencies(module: &Path, packages: &[&str]) -> anyhow::Result<usize> {
    let output = go_command(module)
        .args(["list", "-deps", "-tags", "selinux,notest,grpcnotrace"])
        .args(packages)
        .output()
        .context("running `go list -deps`")?;
    Ok(String::from_utf8_lossy(&output.stdout).lines().count())
}

fn write_kwok_stages(kwok_module: &Path, out: &Path) -> anyhow::Result<()> {
    let output = go_command(kwok_module)
        .args(["list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"])
        .output()
        .context("locating the kwok module")?;
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let mut stages = String::new();
    for file in KWOK_STAGES {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the kwok stage {} from the module cache", path.display()))?;
        stages.push_str("---\n");
        stages.push_str(&text);
        if !text.ends_with('\n') {
            stages.push('\n');
        }
    }
    std::fs::write(out, stages).with_context(|| format!("writing {}", out.display()))
}

/// Runs each binary's `--version` so a broken build is caught here, not in the first test.
fn verify(bin: &Path, k8s_version: &str) -> anyhow::Result<()> {
    for (name, flag, expect) in [
        ("kube-apiserver", "--version", format!("v{k8s_version}")),
        ("kube-controller-manager", "--version", format!("v{k8s_version}")),
        ("kube-scheduler", "--version", format!("v{k8s_version}")),
        ("kubectl", "version", format!("v{k8s_version}")),
        ("etcd", "--version", "etcd Version".to_owned()),
        ("kwok", "--version", String::new()),
    ] {
        verify_version(&bin.join(name), flag, &expect)?;
    }
    Ok(())
}

/// Runs `binary flag` (kubectl with `--client`) and checks that it prints `expect`.
fn verify_version(path: &Path, flag: &str, expect: &str) -> anyhow::Result<()> {
    let mut command = Command::new(path);
    command.arg(flag);
    if path.ends_with("kubectl") {
        command.arg("--client");
    }
    let output = command
        .output()
        .with_context(|| format!("running {} {flag}", path.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !text.contains(expect) {
        bail!(
            "{} {flag} printed {text:?}, expected it to contain {expect:?}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_flags_stamp_both_version_packages() {
        let flags = version_ldflags("1.36.3").unwrap();
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.36.3"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMinor=36"));
    }

    #[test]
    fn helm_flags_stamp_its_version_and_the_pinned_kubernetes_minor() {
        let flags = helm_ldflags("v3.19.0", "1.36.3").unwrap();
        assert!(flags.contains("-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=36"));
        assert!(flags.contains("-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=36"));
        assert!(flags.contains("-X helm.sh/helm/v3/internal/version.version=v3.19.0"));
    }

    #[test]
    fn go_versions_compare_numerically() {
        assert!(version_tuple("1.26.8") >= version_tuple("1.26.0"));
        assert!(version_tuple("1.9") < version_tuple("1.26"));
        assert!(version_tuple("1.26rc1") >= version_tuple("1.26"));
    }
}
