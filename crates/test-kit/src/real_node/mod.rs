//! One real node next to the kwok nodes: containerd (Debian's, with a config of our own) and the pinned
//! kubelet, so that pods really run: init containers, volumes, probes, `logs` and `exec`, CSI calls.
//!
//! Host-global by nature (the kubelet directory, port 10250, the CNI bridge, iptables), so there is one per
//! machine, guarded by a `flock` on [`LOCK_FILE`] that the starter and the kubelet hold for the node's life.
//! Every start first removes whatever a crashed earlier node left ([`host::remove_traces`]), and every stop
//! removes everything again. The settings and why each is needed: `shared/spec/real-node.md`.

pub mod host;
pub mod image;
pub mod workloads;

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

pub use host::{HostSnapshot, unsupported_reason};
pub use image::{PAUSE_BINARY, PAUSE_IMAGE};

use crate::process::{Lifetime, ManagedProcess, ProcessRecord};

/// The lock that makes the real node one per machine.
pub const LOCK_FILE: &str = "/run/dynatrace-operator-real-node.lock";
/// Everything of the node's own: containerd's root, state and config, CNI config, registry hosts, kubelet
/// config. Removed on teardown.
pub const BASE_DIR: &str = "/var/lib/dynatrace-operator-real-node";
/// The kubelet's directory. The standard path, because CSI drivers and their manifests expect it.
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
/// The node's name in the cluster.
pub const NODE_NAME: &str = "real-node";
/// Label on the real node (value `true`), for node selectors.
pub const NODE_LABEL: &str = "testkit.dynatrace-operator.dev/real-node";
/// The pods' bridge.
pub const BRIDGE: &str = "dto0";
/// The pods' addresses; apart from kwok's fake pod range and the service range.
pub const POD_CIDR: &str = "10.89.0.0/24";
/// The `kubernetes` Service's address (the first of the cluster's service range).
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// Our iptables chain (nat table) with the DNAT of the `kubernetes` Service to the API server.
const CHAIN: &str = "DTO-REAL-NODE";
/// How long the node may take from kubelet start to Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a test waits for another test's node to go away.
const LOCK_WAIT: Duration = Duration::from_secs(20 * 60);

/// containerd's socket.
pub fn containerd_socket() -> PathBuf {
    Path::new(BASE_DIR).join("containerd.sock")
}

/// Directory of per-registry `hosts.toml` files (containerd's `config_path`).
pub fn registry_hosts_dir() -> PathBuf {
    Path::new(BASE_DIR).join("certs.d")
}

/// What the node needs to know about its cluster.
#[derive(Debug, Clone)]
pub struct RealNodeConfig {
    /// Admin kubeconfig the kubelet uses.
    pub kubeconfig: PathBuf,
    /// The API server's port on 127.0.0.1 (the target of the `kubernetes` Service's DNAT).
    pub api_port: u16,
    /// Where containerd's and the kubelet's logs go.
    pub logs: PathBuf,
    /// Whether the processes die with the starter.
    pub lifetime: Lifetime,
    /// Who starts it, written into the lock file for whoever finds it taken.
    pub owner: String,
    /// Wait for another node to go away (tests) instead of failing at once (`cargo xtask cluster up`).
    pub wait_for_lock: bool,
}

/// A running real node. [`RealNode::stop`] (or dropping it) removes it and every trace of it.
#[derive(Debug)]
pub struct RealNode {
    lock: Option<File>,
    processes: Vec<ManagedProcess>,
    node_ip: String,
    ready_after: Duration,
}

impl RealNode {
    /// Starts containerd and the kubelet and waits until the node is Ready.
    pub async fn start(config: &RealNodeConfig, client: &Client) -> anyhow::Result<Self> {
        if let Some(reason) = unsupported_reason() {
            bail!("this machine cannot run the real node: {reason}");
        }
        host::ensure_packages()?;
        let kubelet = crate::tools::locate_kubelet()?;
        let pause = image::pause_image_archive()?;
        let lock = acquire_lock(config)?;
        host::remove_traces().context("cleaning up after an earlier real node")?;
        let mut node = Self {
            lock: Some(lock),
            processes: Vec::new(),
            node_ip: String::new(),
            ready_after: Duration::ZERO,
        };
        let started = Instant::now();
        if let Err(err) = node.boot(config, client, &kubelet, &pause).await {
            let logs = config.logs.display();
            let _ = node.stop_inner();
            return Err(err.context(format!("starting the real node (logs in {logs})")));
        }
        node.ready_after = started.elapsed();
        tracing::info!("real node Ready {:.1?} after containerd start", node.ready_after);
        Ok(node)
    }

    async fn boot(
        &mut self,
        config: &RealNodeConfig,
        client: &Client,
        kubelet: &Path,
        pause: &Path,
    ) -> anyhow::Result<()> {
        host::record_before()?;
        let base = Path::new(BASE_DIR);
        for dir in [
            "containerd/root",
            "containerd/state",
            "runc",
            "cni/net.d",
            "cni/ipam",
            "certs.d",
            "kubelet/pki",
            "pod-logs",
            "volume-plugins",
        ] {
            let dir = base.join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::create_dir_all(KUBELET_DIR).with_context(|| format!("creating {KUBELET_DIR}"))?;
        // `/` is a private mount without systemd; Bidirectional mount propagation needs a shared one.
        rustix::mount::mount_bind(KUBELET_DIR, KUBELET_DIR)
            .with_context(|| format!("bind-mounting {KUBELET_DIR} onto itself"))?;
        rustix::mount::mount_change(
            KUBELET_DIR,
            rustix::mount::MountPropagationFlags::SHARED | rustix::mount::MountPropagationFlags::REC,
        )
        .with_context(|| format!("making {KUBELET_DIR} a shared mount"))?;

        // No kube-proxy: pods reach the API server on 127.0.0.1 through a DNAT of the `kubernetes` Service.
        host::write_sysctl("net/ipv4/conf/all/route_localnet", "1")?;
        let target = format!("127.0.0.1:{}", config.api_port);
        for args in [
            vec!["-N", CHAIN],
            vec![
                "-A",
                CHAIN,
                "-d",
                KUBERNETES_SERVICE_IP,
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "DNAT",
                "--to-destination",
                &target,
            ],
            vec!["-I", "PREROUTING", "-j", CHAIN],
            vec!["-I", "OUTPUT", "-j", CHAIN],
        ] {
            let mut full = vec!["-w", "-t", "nat"];
            full.extend(args);
            run("iptables", &full)?;
        }

        let containerd_config = base.join("containerd/config.toml");
        let missing = missing_capabilities();
        if !missing.is_empty() {
            let wrapper = Path::new(BASE_DIR).join(RUNC_WRAPPER);
            write(&wrapper, &runc_wrapper(&missing))?;
            std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .with_context(|| format!("making {} executable", wrapper.display()))?;
        }
        write(&containerd_config, &containerd_toml(&missing))?;
        self.spawn(
            "containerd",
            Path::new("/usr/bin/containerd"),
            vec![format!("--config={}", containerd_config.display())],
            config,
        )?;
        self.wait_for_containerd().await?;
        import_image(pause)?;
        write(&base.join("cni/net.d/10-real-node.conflist"), &cni_conflist())?;

        self.node_ip = node_ip()?;
        let kubelet_config = base.join("kubelet/config.yaml");
        write(&kubelet_config, &kubelet_yaml(&self.node_ip))?;
        self.spawn(
            "kubelet",
            kubelet,
            vec![
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", config.kubeconfig.display()),
                format!("--root-dir={KUBELET_DIR}"),
                format!("--cert-dir={}", base.join("kubelet/pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={}", self.node_ip),
                format!("--node-labels={NODE_LABEL}=true"),
                "--v=1".into(),
            ],
            config,
        )?;
        self.wait_ready(client).await
    }

    /// Starts a process of the node. Only the kubelet inherits the lock: containerd would pass it on to
    /// the shims, which outlive a crash and would keep the next node out.
    fn spawn(
        &mut self,
        name: &str,
        binary: &Path,
        args: Vec<String>,
        config: &RealNodeConfig,
    ) -> anyhow::Result<()> {
        let lock = (name == "kubelet")
            .then(|| self.lock.as_ref().map(AsRawFd::as_raw_fd))
            .flatten();
        let process = ManagedProcess::start_inheriting(
            name,
            binary,
            &args,
            &config.logs.join(format!("{name}.log")),
            config.lifetime,
            lock,
        )?;
        self.processes.push(process);
        Ok(())
    }

    fn check_processes(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if !process.is_running() {
                bail!(
                    "{} exited; last lines of {}:\n{}",
                    process.record.name,
                    process.record.log.display(),
                    process.log_tail(25)
                );
            }
        }
        Ok(())
    }

    async fn wait_for_containerd(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_processes()?;
            match ctr(&["version"]) {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(err.context("containerd did not answer within 30 s"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn wait_ready(&mut self, client: &Client) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            self.check_processes()?;
            if nodes
                .get_opt(NODE_NAME)
                .await?
                .as_ref()
                .is_some_and(crate::node_is_ready)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("node {NODE_NAME} was not Ready {READY_TIMEOUT:?} after the kubelet started")
    }

    /// The node's IP (its InternalIP; the kubelet listens there).
    pub fn node_ip(&self) -> &str {
        &self.node_ip
    }

    /// How long the node took from the start of containerd to Ready.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// What identifies containerd's and the kubelet's processes.
    pub fn process_records(&self) -> Vec<ProcessRecord> {
        self.processes.iter().map(|p| p.record.clone()).collect()
    }

    /// Names of the node's processes that are not running any more.
    pub fn dead_processes(&mut self) -> Vec<String> {
        self.processes
            .iter_mut()
            .filter_map(|p| (!p.is_running()).then(|| p.record.name.clone()))
            .collect()
    }

    /// Leaves the node running after this handle is gone; the kubelet keeps holding the lock.
    pub fn detach(mut self) {
        for process in std::mem::take(&mut self.processes) {
            process.release();
        }
        self.lock = None;
    }

    /// Stops the node and removes every trace of it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> anyhow::Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        // The handles only reap; remove_traces finds and stops the processes (and the containers, which
        // no handle knows) itself.
        let result = host::remove_traces();
        for mut process in std::mem::take(&mut self.processes) {
            let _ = process.stop();
        }
        drop(lock);
        result
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if let Err(err) = self.stop_inner() {
            tracing::warn!("{err:#}");
        }
    }
}

/// Removes the real node of the cluster in `cluster_dir`, started by another process (`cargo xtask cluster
/// down`). Its kubelet holds the lock: the kubelet is stopped first, then the lock taken and every trace
/// removed. Should a waiting test take the lock in between, that test removes the traces itself before it
/// starts its node. A node that belongs to another cluster is left alone.
pub fn teardown(cluster_dir: &Path) -> anyhow::Result<()> {
    let lock = open_lock()?;
    if !try_lock(&lock)? {
        let holder = std::fs::read_to_string(LOCK_FILE).unwrap_or_default();
        if !holder.contains(&format!("in {},", cluster_dir.display())) {
            eprintln!(
                "The real node belongs to another cluster ({}); leaving it running.",
                holder.trim()
            );
            return Ok(());
        }
        host::stop_kubelet()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !try_lock(&lock)? {
            if Instant::now() > deadline {
                eprintln!("The real node's lock went to another run, which cleans up after this node.");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    host::remove_traces()
}

/// Removes what a crashed node left, waiting while another node runs (as a start would, without starting
/// one): for tests that snapshot the machine before their node starts.
pub fn remove_crashed_node() -> anyhow::Result<()> {
    let config = RealNodeConfig {
        kubeconfig: PathBuf::new(),
        api_port: 0,
        logs: PathBuf::new(),
        lifetime: Lifetime::Tied,
        owner: format!("a clean-up by pid {}", std::process::id()),
        wait_for_lock: true,
    };
    let _lock = acquire_lock(&config)?;
    host::remove_traces()
}

fn open_lock() -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(LOCK_FILE)
        .with_context(|| format!("opening the real node lock {LOCK_FILE}"))
}

fn try_lock(file: &File) -> anyhow::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(err) => Err(err).with_context(|| format!("locking {LOCK_FILE}")),
    }
}

fn acquire_lock(config: &RealNodeConfig) -> anyhow::Result<File> {
    acquire_lock_for(
        config,
        if config.wait_for_lock {
            LOCK_WAIT
        } else {
            Duration::ZERO
        },
    )
}

fn acquire_lock_for(config: &RealNodeConfig, wait: Duration) -> anyhow::Result<File> {
    let mut file = open_lock()?;
    let deadline = Instant::now() + wait;
    let mut told = false;
    while !try_lock(&file)? {
        let holder = std::fs::read_to_string(LOCK_FILE).unwrap_or_default();
        let holder = holder.trim();
        if Instant::now() >= deadline {
            bail!(
                "another real node runs on this machine ({holder}); there can be one per machine. Stop it \
                 first (`cargo xtask cluster down --name <its cluster>`), or wait for the tests using it"
            );
        }
        if !told {
            eprintln!("Waiting for the real node of {holder} to go away (one per machine) ...");
            told = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    file.set_len(0).context("truncating the lock file")?;
    writeln!(file, "{}", config.owner).context("writing the lock file")?;
    Ok(file)
}

/// Imports an image archive (docker-archive or OCI tar) into the node's containerd, where pods find it
/// with `imagePullPolicy: Never` or `IfNotPresent`.
pub fn import_image(archive: &Path) -> anyhow::Result<()> {
    let path = archive.display().to_string();
    ctr(&["images", "import", "--platform", "linux/amd64", &path])
        .with_context(|| format!("importing the image archive {path} into the real node"))?;
    Ok(())
}

/// Lets the node pull from `host_port` (for example `127.0.0.1:8443`) over HTTPS, trusting `ca_pem`:
/// writes `certs.d/<host_port>/hosts.toml` and the CA next to it. containerd reads it at each pull.
pub fn write_registry_host(host_port: &str, ca_pem: &str) -> anyhow::Result<PathBuf> {
    let dir = registry_hosts_dir().join(host_port);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = dir.join("ca.crt");
    write(&ca, ca_pem)?;
    let hosts = dir.join("hosts.toml");
    write(&hosts, &hosts_toml(host_port, &ca))?;
    Ok(hosts)
}

fn hosts_toml(host_port: &str, ca: &Path) -> String {
    format!(
        "server = \"https://{host_port}\"\n\n[host.\"https://{host_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  \
         ca = \"{}\"\n",
        ca.display()
    )
}

fn ctr(args: &[&str]) -> anyhow::Result<String> {
    let socket = containerd_socket().display().to_string();
    let mut full = vec!["--address", socket.as_str(), "--namespace", "k8s.io"];
    full.extend(args);
    run("ctr", &full)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn write(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// The first global IPv4 address of the host: the node's InternalIP (the kubelet rejects loopback).
fn node_ip() -> anyhow::Result<String> {
    let text = run("ip", &["-4", "-o", "addr", "show", "scope", "global"])?;
    text.lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            words.position(|w| w == "inet")?;
            words.next()?.split('/').next().map(str::to_owned)
        })
        .context("the host has no global IPv4 address to give the real node (the kubelet needs one that is not loopback)")
}

/// The runc wrapper the node uses when this machine withholds capabilities (see [`runc_wrapper`]).
const RUNC_WRAPPER: &str = "runc-wrapper";
/// The host's runc.
const RUNC: &str = "/usr/sbin/runc";

/// Capability names by bit number (`linux/capability.h`).
const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities missing from this process's bounding set (this VM withholds `CAP_SYS_RESOURCE` even
/// from root), as `CAP_*` names.
fn missing_capabilities() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    missing_from(bounding)
}

fn missing_from(bounding: u64) -> Vec<String> {
    CAPABILITY_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| format!("CAP_{name}"))
        .collect()
}

/// A runc that removes `missing` capabilities from a container's spec (`create --bundle`) and from an exec's
/// process (`exec --process`) before running the host's runc. runc cannot grant a capability its caller
/// lacks ("unable to apply caps: operation not permitted"), so on a machine that withholds one from root, a
/// pod asking for it (the OneAgent asks for `SYS_RESOURCE`) could never start; a real node with such a
/// restriction has the same effect on its containers. The specs are compact JSON written by containerd.
fn runc_wrapper(missing: &[String]) -> String {
    let edits: String = missing
        .iter()
        .map(|cap| format!(" -e 's/\"{cap}\",//g' -e 's/,\"{cap}\"//g' -e 's/\"{cap}\"//g'"))
        .collect();
    format!(
        r#"#!/bin/sh
# The real node's runc (test-kit): drops capabilities this machine withholds from root, then runs runc.
previous=""
for arg in "$@"; do
  case "$previous" in
    --bundle|-b) [ -f "$arg/config.json" ] && sed -i{edits} "$arg/config.json" ;;
    --process|-p) [ -f "$arg" ] && sed -i{edits} "$arg" ;;
  esac
  case "$arg" in
    --bundle=*) [ -f "${{arg#--bundle=}}/config.json" ] && sed -i{edits} "${{arg#--bundle=}}/config.json" ;;
    --process=*) [ -f "${{arg#--process=}}" ] && sed -i{edits} "${{arg#--process=}}" ;;
  esac
  previous="$arg"
done
exec {RUNC} "$@"
"#
    )
}

fn containerd_toml(missing_capabilities: &[String]) -> String {
    let base = BASE_DIR;
    let binary_name = if missing_capabilities.is_empty() {
        String::new()
    } else {
        format!(
            "  # This VM withholds {}: see `runc_wrapper`.\n  BinaryName = \"{base}/{RUNC_WRAPPER}\"\n",
            missing_capabilities.join(", ")
        )
    };
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        r#"# The real node's containerd (test-kit); see shared/spec/real-node.md for why each setting is here.
version = 2
root = "{base}/containerd/root"
state = "{base}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/containerd/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM withholds CAP_SYS_RESOURCE: oom_score_adj cannot go below 0.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{base}/runc"
{binary_name}
[{cri}.cni]
  bin_dir = "{cni}"
  conf_dir = "{base}/cni/net.d"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{base}/certs.d"
"#,
        cni = host::CNI_BIN_DIR,
    )
}

fn cni_conflist() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "real-node",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_CIDR }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": format!("{BASE_DIR}/cni/ipam"),
            },
        }],
    })
    .to_string()
}

fn kubelet_yaml(node_ip: &str) -> String {
    let base = BASE_DIR;
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host without systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{base}/containerd.sock
address: {node_ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# The local API server has no kubelet client certificate.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
# Small test disks must not evict test pods; no image GC (images are imported, not pulled).
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
failSwapOn: false
resolvConf: /etc/resolv.conf
# Keep what the kubelet writes inside our directory.
volumePluginDir: {base}/volume-plugins
podLogsDir: {base}/pod-logs
serializeImagePulls: false
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capabilities_this_vm_withholds_are_named() {
        assert_eq!(missing_from(0x0000_01ff_feff_ffff), vec!["CAP_SYS_RESOURCE"]);
        assert!(missing_from(u64::MAX).is_empty());
        let containerd = containerd_toml(&["CAP_SYS_RESOURCE".to_owned()]);
        assert!(containerd.contains(&format!("BinaryName = \"{BASE_DIR}/{RUNC_WRAPPER}\"")));
        assert!(!containerd_toml(&[]).contains("BinaryName"));
    }

    #[test]
    fn the_runc_wrapper_removes_withheld_capabilities_wherever_they_stand_in_a_spec() {
        let dir = tempfile::tempdir().unwrap();
        let missing = vec!["CAP_SYS_RESOURCE".to_owned(), "CAP_BPF".to_owned()];
        // The wrapper execs the host's runc at the end; a stand-in records that it ran.
        let script = runc_wrapper(&missing).replace(RUNC, "true");
        let wrapper = dir.path().join("runc");
        std::fs::write(&wrapper, script).unwrap();
        let spec = r#"{"process":{"capabilities":{"bounding":["CAP_SYS_RESOURCE","CAP_CHOWN"],"effective":["CAP_CHOWN","CAP_SYS_RESOURCE","CAP_KILL"],"permitted":["CAP_CHOWN","CAP_SYS_RESOURCE"],"ambient":["CAP_SYS_RESOURCE"],"inheritable":["CAP_BPF","CAP_SYS_RESOURCE"]}}}"#;
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), spec).unwrap();
        let process = dir.path().join("process.json");
        std::fs::write(&process, &spec[11..spec.len() - 1]).unwrap();
        let status = Command::new("sh")
            .arg(&wrapper)
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(format!("--process={}", process.display()))
            .status()
            .unwrap();
        assert!(status.success());
        for file in [bundle.join("config.json"), process] {
            let text = std::fs::read_to_string(&file).unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            let caps = value
                .pointer("/process/capabilities")
                .or(value.pointer("/capabilities"))
                .unwrap();
            assert_eq!(caps["bounding"], serde_json::json!(["CAP_CHOWN"]), "{text}");
            assert_eq!(
                caps["effective"],
                serde_json::json!(["CAP_CHOWN", "CAP_KILL"]),
                "{text}"
            );
            assert_eq!(caps["ambient"], serde_json::json!([]), "{text}");
            assert_eq!(caps["inheritable"], serde_json::json!([]), "{text}");
        }
    }

    #[test]
    fn configs_name_our_directories_and_settings() {
        let containerd = containerd_toml(&[]);
        assert!(containerd.contains("restrict_oom_score_adj = true"));
        assert!(containerd.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")));
        assert!(containerd.contains(&format!("config_path = \"{BASE_DIR}/certs.d\"")));
        let cni: serde_json::Value = serde_json::from_str(&cni_conflist()).unwrap();
        assert_eq!(cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
        let kubelet = kubelet_yaml("192.0.2.2");
        assert!(kubelet.contains("failCgroupV1: false") && kubelet.contains("address: 192.0.2.2"));
    }

    #[test]
    fn registry_hosts_name_the_server_and_its_ca() {
        let toml = hosts_toml("127.0.0.1:8443", Path::new("/x/ca.crt"));
        assert_eq!(
            toml,
            "server = \"https://127.0.0.1:8443\"\n\n[host.\"https://127.0.0.1:8443\"]\n  capabilities = \
             [\"pull\", \"resolve\"]\n  ca = \"/x/ca.crt\"\n"
        );
    }
}
