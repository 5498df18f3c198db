//! Developer tasks, run as `cargo xtask <task>`.

mod run;
mod tools;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use test_kit::{Cluster, ClusterOptions, Lifetime};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks of the dynatrace-operator project"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the Kubernetes test tools (kube-apiserver, controller manager, scheduler, kubectl, etcd, kwok,
    /// the kubelet for the real node, csi-sanity, Helm) from the Go module proxy, unless the pinned build is already cached.
    Tools {
        /// Rebuild even if the cache has them.
        #[arg(long)]
        force: bool,
        /// Print the directory of the tools and nothing else.
        #[arg(long)]
        print_dir: bool,
    },
    /// Start or stop a local Kubernetes cluster with kwok nodes.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Run every check CI runs: formatting, clippy, and all tests against a real control plane.
    Test,
    /// Regenerate the files derived from the code (the CRDs and the RBAC in the Helm chart).
    Generate,
    /// Run the product locally until Ctrl-C: a local cluster, the fake tenant, the operator and the webhook
    /// server, and a sample DynaKube whose OneAgent pods run on the kwok nodes.
    Run(run::Options),
    /// Build the container images (the operator and the test images) as OCI archives in target/images/,
    /// for `ctr -n k8s.io images import` or `docker load`; no daemon, no registry.
    Image {
        /// Build the shipped release binaries (fat LTO) instead of the quick test profile.
        #[arg(long)]
        release: bool,
    },
    /// Run the webhook server against a local cluster (CRDs and webhook registered by URL) until Ctrl-C.
    Webhook {
        /// Name of the local cluster.
        #[arg(long, default_value = "local")]
        name: String,
        /// HTTPS port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Start a cluster and print its kubeconfig.
    Up {
        /// Name of the cluster; clusters with different names run side by side.
        #[arg(long, default_value = "local")]
        name: String,
        /// Number of kwok nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Add the machine's one real node (containerd and a kubelet; needs root, installs containerd,
        /// runc and the CNI plugins from Debian's packages when missing).
        #[arg(long)]
        real_node: bool,
    },
    /// Stop a cluster's processes and remove its data.
    Down {
        /// Name of the cluster.
        #[arg(long, default_value = "local", conflicts_with = "all")]
        name: String,
        /// Stop every local cluster of this checkout.
        #[arg(long)]
        all: bool,
    },
    /// List the local clusters of this checkout.
    Status,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Tools { force, print_dir } => {
            let tools = tools::ensure(force)?;
            tools::ensure_kubelet(force)?;
            tools::ensure_csi_sanity(force)?;
            tools::ensure_helm(force)?;
            if print_dir {
                println!("{}", tools.dir.display());
            } else {
                eprintln!("Test tools ready in {}", tools.dir.display());
            }
            Ok(())
        }
        Task::Cluster {
            action:
                ClusterAction::Up {
                    name,
                    nodes,
                    real_node,
                },
        } => cluster_up(&name, nodes, real_node),
        Task::Cluster {
            action: ClusterAction::Down { name, all },
        } => {
            let names = if all { cluster_names()? } else { vec![name] };
            names.iter().try_for_each(|name| cluster_down(name))
        }
        Task::Cluster {
            action: ClusterAction::Status,
        } => cluster_status(),
        Task::Test => test(),
        Task::Generate => generate(),
        Task::Run(options) => {
            validate_name(&options.name)?;
            run::run(&options)
        }
        Task::Image { release } => image(release),
        Task::Webhook { name, port } => {
            validate_name(&name)?;
            webhook::run(&clusters_dir().join(&name), port)
        }
    }
}

/// Local clusters live in the checkout's target directory, one directory per name.
fn clusters_dir() -> PathBuf {
    test_kit::tools::workspace_root().join("target/local-clusters")
}

fn cluster_names() -> anyhow::Result<Vec<String>> {
    let Ok(entries) = std::fs::read_dir(clusters_dir()) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("cluster name {name:?} must be 1 to 40 characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

fn cluster_up(name: &str, nodes: usize, real_node: bool) -> anyhow::Result<()> {
    validate_name(name)?;
    let tools = tools::ensure(false)?;
    if real_node {
        if let Some(reason) = test_kit::real_node::unsupported_reason() {
            bail!("this machine cannot run the real node: {reason}");
        }
        tools::ensure_kubelet(false)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = runtime.block_on(start_cluster(&tools, name, nodes, real_node, Lifetime::Detached))?;
    let state = cluster.state().clone();
    cluster.detach();
    let real = if real_node {
        format!(" and the real node {:?}", test_kit::real_node::NODE_NAME)
    } else {
        String::new()
    };
    println!(
        "Cluster {name:?} is up: API server {}, {nodes} kwok nodes{real}.",
        state.api_server_url
    );
    println!("kubeconfig: {}", state.kubeconfig.display());
    println!();
    print_kubectl_usage(&state.kubeconfig, &tools.kubectl, "get nodes");
    println!();
    println!("Stop it with: cargo xtask cluster down --name {name}");
    Ok(())
}

/// Starts the local cluster `name` with `nodes` kwok nodes in its directory under [`clusters_dir`].
async fn start_cluster(
    tools: &test_kit::Tools,
    name: &str,
    nodes: usize,
    real_node: bool,
    lifetime: Lifetime,
) -> anyhow::Result<Cluster> {
    let options = ClusterOptions {
        name: name.to_owned(),
        data_dir: clusters_dir().join(name),
        nodes,
        workloads: true,
        lifetime,
        real_node,
    };
    let real = if real_node { " and the real node" } else { "" };
    eprintln!("Starting cluster {name:?} with {nodes} kwok nodes{real} ...");
    Cluster::start(tools, options).await
}

/// Prints how to point the pinned kubectl at a cluster, with an example command.
fn print_kubectl_usage(kubeconfig: &Path, kubectl: &Path, example: &str) {
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  {} {example}", kubectl.display());
}

fn cluster_down(name: &str) -> anyhow::Result<()> {
    validate_name(name)?;
    let dir = clusters_dir().join(name);
    if !dir.exists() {
        eprintln!("No cluster named {name:?} (nothing in {}).", dir.display());
        return Ok(());
    }
    match Cluster::load(&dir) {
        Ok(cluster) => cluster
            .stop()
            .with_context(|| format!("stopping cluster {name:?}"))?,
        // A start that failed before any process ran leaves a directory without state.
        Err(_) => std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?,
    }
    eprintln!("Cluster {name:?} stopped and its data removed.");
    Ok(())
}

fn cluster_status() -> anyhow::Result<()> {
    let names = cluster_names()?;
    if names.is_empty() {
        println!("No local clusters.");
    }
    for name in names {
        match Cluster::load(&clusters_dir().join(&name)) {
            Ok(mut cluster) => {
                let dead = cluster.dead_processes();
                let state = cluster.state();
                let health = if dead.is_empty() {
                    "running".to_owned()
                } else if dead.len() == state.processes.len() {
                    "stopped".to_owned()
                } else {
                    format!("degraded (not running: {})", dead.join(", "))
                };
                println!(
                    "{name}\t{health}\t{}\t{}",
                    state.api_server_url,
                    state.kubeconfig.display()
                );
                // The handle was rebuilt from the state file; dropping it stops nothing.
            }
            Err(err) => println!("{name}\tunknown\t{err:#}"),
        }
    }
    Ok(())
}

fn image(release: bool) -> anyhow::Result<()> {
    let profile = if release {
        test_images::Profile::Release
    } else {
        test_images::Profile::Test
    };
    let started = std::time::Instant::now();
    let images = test_images::build_images(profile)?;
    println!(
        "Built {} images ({} profile) in {:.1} s:",
        images.len(),
        profile.cargo_profile(),
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("{:<32} {:>9}  {:<19}  ARCHIVE", "IMAGE", "SIZE", "DIGEST");
    for image in &images {
        println!(
            "{:<32} {:>5.1} MiB  {:<19}  {}",
            image.reference(),
            image.size as f64 / (1024.0 * 1024.0),
            image.digest.get(..19).unwrap_or(&image.digest),
            image.path.display()
        );
    }
    println!();
    println!("Import into a node's containerd: ctr -n k8s.io images import <archive>");
    Ok(())
}

fn generate() -> anyhow::Result<()> {
    let root = test_kit::tools::workspace_root();
    let files = [
        (
            pure_api::crd::CHART_CRDS_PATH,
            pure_api::crd::chart_yaml().context("rendering the CRDs")?,
        ),
        (
            pure_install::chart::CHART_RBAC_PATH,
            pure_install::chart::rbac_yaml().context("rendering the RBAC")?,
        ),
        (
            pure_install::chart::CHART_CSI_RBAC_PATH,
            pure_install::chart::csi_rbac_yaml().context("rendering the CSI driver's RBAC")?,
        ),
    ];
    for (path, text) in files {
        let path = root.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("Wrote {}", path.display());
    }
    Ok(())
}

/// Every check CI runs, in order of cost.
fn test() -> anyhow::Result<()> {
    cargo(
        &["fmt", "--all", "--", "--check"],
        "formatting differs; run `cargo fmt --all`",
    )?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        "clippy found problems",
    )?;
    tools::ensure(false)?;
    tools::ensure_kubelet(false)?;
    // Built before the tests, so the csi-sanity test runs instead of skipping.
    tools::ensure_csi_sanity(false)?;
    // Likewise the chart tests.
    tools::ensure_helm(false)?;
    cargo(
        &["test", "--workspace", "--locked", "--no-fail-fast"],
        "tests failed",
    )
}

fn cargo(args: &[&str], failure: &str) -> anyhow::Result<()> {
    eprintln!("==> cargo {}", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(test_kit::tools::workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("{failure} (`cargo {}` exited with {status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(validate_name("local").is_ok());
        assert!(validate_name("ci-2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("Upper").is_err());
    }
}
