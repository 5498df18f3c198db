//! Test support: a real Kubernetes control plane for integration tests and local runs.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! // A fresh namespace on a cluster shared by this test binary, and an admin client.
//! let ns = test_kit::TestNamespace::create().await?;
//! # let _ = (&ns.client, &ns.name);
//! # Ok(()) }
//! ```
//!
//! The shared cluster (etcd, kube-apiserver, controller manager, scheduler, kwok with
//! [`SHARED_CLUSTER_NODES`] nodes) starts on first use and dies with the test binary, even when it panics or
//! is killed. A namespace is deleted when its [`TestNamespace`] is dropped, which happens during a panic too.
//! Tests that need a cluster of their own (for example to change nodes freely) use [`start_private_cluster`].

pub mod cgroup;
pub mod cluster;
pub mod pki;
pub mod process;
pub mod procfs;
pub mod real_node;
pub mod samples;
pub mod setup;
pub mod tools;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount, Taint};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;

pub use cluster::{Cluster, ClusterOptions, ClusterState, client_from_kubeconfig, kwok_node, node_is_ready};
pub use process::Lifetime;
pub use setup::{PerBinary, RunningTask, StopSignal, install_crds, install_operator_crds};
/// The container images for a real node: `images::build_images(images::Profile::Test)` builds them once per
/// process (blocking: from async code call it in `spawn_blocking`).
pub use test_images as images;
pub use tools::Tools;

/// Number of kwok nodes in the shared test cluster.
pub const SHARED_CLUSTER_NODES: usize = 3;

/// Label put on every test namespace, so webhooks under test can select them.
pub const TEST_NAMESPACE_LABEL: &str = "testkit.dynatrace-operator.dev/test";

/// Label on cluster-scoped objects a test creates, naming its namespace; they are deleted with it.
pub const TEST_OWNER_LABEL: &str = "testkit.dynatrace-operator.dev/owner";

static SHARED: OnceCell<Result<Cluster, String>> = OnceCell::const_new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where test clusters keep their data: `<tmp>/dynatrace-operator-testkit/<pid>-<name>`.
fn test_data_root() -> PathBuf {
    std::env::temp_dir().join("dynatrace-operator-testkit")
}

/// Removes data directories of test binaries that are gone (their processes died with them).
fn sweep_stale_test_dirs() {
    let Ok(entries) = std::fs::read_dir(test_data_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_string_lossy()
            .split('-')
            .next()
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| !process::pid_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn test_cluster_options(nodes: usize, real_node: bool) -> ClusterOptions {
    let name = format!("test-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
    ClusterOptions {
        data_dir: test_data_root().join(format!("{}-{name}", std::process::id())),
        name,
        nodes,
        workloads: true,
        lifetime: Lifetime::Tied,
        real_node,
    }
}

/// The cluster shared by every test of this binary, started on first use.
pub async fn shared_cluster() -> anyhow::Result<&'static Cluster> {
    let result = SHARED
        .get_or_init(|| async {
            sweep_stale_test_dirs();
            let tools = Tools::locate().map_err(|e| format!("{e:#}"))?;
            start_cluster(&tools, SHARED_CLUSTER_NODES, false)
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await;
    result
        .as_ref()
        .map_err(|e| anyhow::anyhow!("the shared test cluster could not start: {e}"))
}

/// Starts a cluster owned by the caller; it is stopped and its data removed when dropped.
pub async fn start_private_cluster(nodes: usize) -> anyhow::Result<Cluster> {
    sweep_stale_test_dirs();
    let tools = Tools::locate()?;
    start_cluster(&tools, nodes, false).await
}

/// Set to `1` where real-node tests must run (CI): a machine that cannot run the real node then fails
/// them instead of skipping them.
pub const REQUIRE_REAL_NODE_ENV: &str = "DTO_REQUIRE_REAL_NODE";

/// Starts a cluster owned by the caller with `nodes` kwok nodes and the machine's real node
/// ([`real_node::NODE_NAME`]). Real-node tests of all test binaries run one after the other: this waits
/// while another holds the node. Returns `None`, after saying why on stderr, where this machine cannot run
/// a real node (not root, no overlayfs) unless [`REQUIRE_REAL_NODE_ENV`] is set.
pub async fn start_real_node_cluster(nodes: usize) -> anyhow::Result<Option<Cluster>> {
    if let Some(reason) = real_node::unsupported_reason() {
        if std::env::var(REQUIRE_REAL_NODE_ENV).is_ok_and(|v| v == "1") {
            anyhow::bail!("{REQUIRE_REAL_NODE_ENV}=1 but this machine cannot run the real node: {reason}");
        }
        eprintln!("\n*** SKIPPED: real-node test: this machine cannot run the real node: {reason} ***\n");
        return Ok(None);
    }
    sweep_stale_test_dirs();
    let tools = Tools::locate()?;
    start_cluster(&tools, nodes, true).await.map(Some)
}

/// Starts a cluster, once more when a process found its port taken: ports are picked free just before
/// the processes bind them, and anything else on the machine (an outgoing connection's ephemeral port)
/// can take one in between.
async fn start_cluster(tools: &Tools, nodes: usize, real_node: bool) -> anyhow::Result<Cluster> {
    const ATTEMPTS: usize = 3;
    let _one_at_a_time = STARTING.lock().await;
    let mut attempt = 1;
    loop {
        match Cluster::start(tools, test_cluster_options(nodes, real_node)).await {
            Err(error) if attempt < ATTEMPTS && format!("{error:#}").contains("address already in use") => {
                tracing::warn!("a port was taken while the test cluster started; starting again: {error:#}");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Clusters of one test binary start one after the other: each picks free ports just before its
/// processes bind them, and two starting at once could pick the same one.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh namespace on the shared cluster, with an admin client. Deleted on drop.
pub struct TestNamespace {
    /// Admin client for the cluster (bound to the runtime that created it).
    pub client: Client,
    /// The namespace's name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Creates a namespace on the shared cluster and waits until pods can be created in it.
    pub async fn create() -> anyhow::Result<Self> {
        let cluster = shared_cluster().await?;
        Self::create_in(cluster).await
    }

    /// Creates a namespace on the given cluster and waits until pods can be created in it.
    pub async fn create_in(cluster: &Cluster) -> anyhow::Result<Self> {
        let client = cluster.client().await?;
        let name = format!(
            "t{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating test namespace {name}"))?;
        // The ServiceAccount admission plugin rejects pods until the controller manager made `default`.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        eventually(
            &format!("service account default in {name}"),
            Duration::from_secs(60),
            || async { Ok(accounts.get_opt("default").await?) },
        )
        .await?;
        Ok(Self {
            client,
            name,
            kubeconfig: cluster.kubeconfig().to_owned(),
        })
    }

    /// Creates a kwok node named `<namespace>-<suffix>` with the usual labels plus `labels`, owned by this
    /// test: it is deleted together with the namespace.
    pub async fn create_node(
        &self,
        suffix: &str,
        labels: &[(&str, &str)],
        taints: Vec<Taint>,
    ) -> anyhow::Result<Node> {
        let name = format!("{}-{suffix}", self.name);
        let owner = [(TEST_OWNER_LABEL, self.name.as_str())];
        let all_labels: Vec<_> = labels.iter().chain(owner.iter()).copied().collect();
        let node = kwok_node(&name, cluster::ZONES[0], &all_labels, taints);
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating test node {name}"))
    }

    /// Path of the admin kubeconfig of the namespace's cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may be shutting down: delete from a thread of our own.
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        let deletion = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = client_from_kubeconfig(&kubeconfig).await?;
                let owned = ListParams::default().labels(&format!("{TEST_OWNER_LABEL}={name}"));
                Api::<Node>::all(client.clone())
                    .delete_collection(&DeleteParams::background(), &owned)
                    .await?;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await?;
                Ok(())
            })
        });
        if let Ok(Err(err)) = deletion.join() {
            tracing::warn!("deleting test namespace {}: {err:#}", self.name);
        }
    }
}

/// One plain HTTP/1.1 GET to 127.0.0.1:`port`; the raw answer (status line, headers, body), or `None` when
/// nothing answers. For tests of probes and metrics endpoints.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.ok()?;
    Some(answer)
}

/// Polls `check` every 200 ms until it returns `Some`, and fails after `timeout` naming `what` and the last
/// error. Meant for tests waiting on controllers; product code reacts to watch events instead.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            let detail = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_first_value_and_times_out_with_the_last_error() {
        let mut calls = 0;
        let value = eventually("three calls", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);

        let err = eventually::<(), _, _>("never", Duration::from_millis(300), || async {
            anyhow::bail!("boom")
        })
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("never") && text.contains("boom"), "{text}");
    }

    #[test]
    fn test_data_dirs_start_with_the_pid() {
        let options = test_cluster_options(1, false);
        let dir = options
            .data_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(dir.starts_with(&format!("{}-", std::process::id())), "{dir}");
    }
}
