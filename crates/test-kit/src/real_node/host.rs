//! The host side of the real node: the packages it needs, and removing every trace of a node (ours, or
//! one a crashed run left behind): processes, containers, mounts, network namespaces, the CNI bridge and
//! its veths, iptables chains, cgroups, changed sysctls, state directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

use super::{BASE_DIR, BRIDGE, KUBELET_DIR};

/// Where the CNI plugins of Debian's `containernetworking-plugins` are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Debian packages the real node needs, with a file each that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("containerd", "/usr/bin/containerd"),
    ("containerd", "/usr/bin/ctr"),
    ("containerd", "/usr/bin/containerd-shim-runc-v2"),
    ("runc", "/usr/sbin/runc"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("containernetworking-plugins", "/usr/lib/cni/host-local"),
    ("containernetworking-plugins", "/usr/lib/cni/loopback"),
    ("iptables", "/usr/sbin/iptables"),
    ("conntrack", "/usr/sbin/conntrack"),
    ("iproute2", "/usr/sbin/ip"),
];

/// Sysctls the kubelet or the CNI bridge plugin change, or we do; restored on teardown.
const SYSCTLS: &[&str] = &[
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Prefixes of the iptables chains that the kubelet (`KUBE-`), CNI plugins (`CNI-`) and we (`DTO-`) add.
const CHAIN_PREFIXES: &[&str] = &["KUBE-", "CNI-", "DTO-"];

/// Directories outside [`BASE_DIR`] that the kubelet or containerd create; removed on teardown when they
/// did not exist before the node started.
const CREATED_DIRS: &[&str] = &[
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/run/netns",
    // libcni caches each pod's network results here.
    "/var/lib/cni",
];

/// Why this machine cannot run a real node, or `None` when it can.
pub fn unsupported_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "the real node needs root (it runs containerd and a kubelet, mounts, sets iptables rules)".into(),
        );
    }
    match std::fs::read_to_string("/proc/filesystems") {
        Ok(fs) if fs.lines().any(|l| l.trim_end().ends_with("overlay")) => {}
        // The module may just not be loaded yet.
        _ if Command::new("modprobe")
            .arg("overlay")
            .status()
            .is_ok_and(|s| s.success()) => {}
        _ => {
            return Some(
                "the kernel has no overlay filesystem (containerd's overlayfs snapshotter needs it)".into(),
            );
        }
    }
    if !Path::new("/sys/fs/cgroup").exists() {
        return Some("no cgroup filesystem is mounted at /sys/fs/cgroup".into());
    }
    None
}

/// Installs the Debian packages the real node needs when any is missing (`apt-get`, non-interactive).
pub fn ensure_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let manual = format!("install them by hand: `apt-get install -y {}`", missing.join(" "));
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the real node needs the packages {} and only root can install them; {manual}",
            missing.join(", ")
        );
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "the real node needs the packages {} but this machine has no apt-get; {manual} \
               or the same programs from the distribution's packages",
            missing.join(", ")
        );
    }
    eprintln!("Installing {} for the real node (apt-get) ...", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .with_context(|| format!("running apt-get {}", args.join(" ")))
    };
    let mut install_args = vec!["install", "-y", "-q", "--no-install-recommends"];
    install_args.extend(missing.iter().copied());
    let mut output = apt(&install_args)?;
    if !output.status.success() {
        // The package lists may be missing or stale on a fresh machine.
        let update = apt(&["update", "-q"])?;
        if !update.status.success() {
            bail!(
                "`apt-get update` failed (is a Debian mirror reachable?): {}; {manual}",
                String::from_utf8_lossy(&update.stderr).trim()
            );
        }
        output = apt(&install_args)?;
    }
    if !output.status.success() {
        bail!(
            "`apt-get install {}` failed: {}; {manual}",
            missing.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// What the host looked like before the node changed it; saved in [`BASE_DIR`] so that a crashed run's
/// changes are undone by the next start.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Before {
    sysctls: BTreeMap<String, String>,
    existing_dirs: Vec<String>,
}

fn before_file() -> PathBuf {
    Path::new(BASE_DIR).join("host-before.json")
}

/// Records the host's state before the node starts (unless a crashed run already recorded it).
pub(super) fn record_before() -> anyhow::Result<()> {
    let path = before_file();
    if path.exists() {
        return Ok(());
    }
    let before = Before {
        sysctls: SYSCTLS
            .iter()
            .filter_map(|k| read_sysctl(k).map(|v| ((*k).to_owned(), v)))
            .collect(),
        existing_dirs: CREATED_DIRS
            .iter()
            .filter(|d| Path::new(d).exists())
            .map(|d| (*d).to_owned())
            .collect(),
    };
    std::fs::create_dir_all(BASE_DIR).with_context(|| format!("creating {BASE_DIR}"))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&before)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// Sets a sysctl (`key` as a path under /proc/sys).
pub(super) fn write_sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    std::fs::write(&path, value).with_context(|| format!("setting {} to {value}", path.display()))
}

/// Removes every trace of a real node: stops the kubelet, the containers, the shims and containerd, then
/// unmounts, deletes network namespaces, the bridge and veths, iptables chains, cgroups and directories,
/// and restores sysctls. Safe to run when nothing is there. The caller holds the node lock.
pub fn remove_traces() -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |result: anyhow::Result<()>| {
        if let Err(err) = result {
            errors.push(format!("{err:#}"));
        }
    };
    // The kubelet first, so it does not restart what is being removed.
    note(stop_kubelet());
    note(kill_pod_processes());
    note(stop_processes(cmdline_is_ours));
    note(unmount_all());
    note(remove_network_namespaces());
    note(remove_links());
    note(remove_iptables_chains());
    note(remove_pod_cgroups());
    let before: Before = std::fs::read(before_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (key, value) in &before.sysctls {
        if read_sysctl(key).as_deref() != Some(value) {
            note(write_sysctl(key, value));
        }
    }
    for dir in CREATED_DIRS {
        if before_file().exists() && !before.existing_dirs.iter().any(|d| d == dir) {
            note(remove_dir_all(Path::new(dir)));
        }
    }
    note(remove_dir_all(Path::new(KUBELET_DIR)));
    note(remove_dir_all(Path::new(BASE_DIR)));
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("removing the real node's traces: {}", errors.join("; "))
    }
}

fn remove_dir_all(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Stops the node's kubelet (SIGTERM, then SIGKILL).
pub(super) fn stop_kubelet() -> anyhow::Result<()> {
    stop_processes(|cmdline| {
        cmdline_is_ours(cmdline) && cmdline.first().is_some_and(|a| a.ends_with("kubelet"))
    })
}

/// A process belongs to the node when its command line names our state directory (containerd's config,
/// the shims' `-address`, the kubelet's `--config`, `ctr --address`).
fn cmdline_is_ours(cmdline: &[String]) -> bool {
    cmdline.iter().any(|a| a.contains(BASE_DIR))
}

fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>();
            (!args.is_empty()).then_some((pid, args))
        })
        .collect()
}

/// SIGTERM to the matching processes, SIGKILL to those left after 5 s.
fn stop_processes(matches: impl Fn(&[String]) -> bool) -> anyhow::Result<()> {
    let pids = || -> Vec<i32> {
        processes()
            .into_iter()
            .filter(|(_, c)| matches(c))
            .map(|(p, _)| p)
            .collect()
    };
    signal_all(&pids(), Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_gone("real node processes", || {
        let left = pids();
        signal_all(&left, Signal::KILL);
        left
    })
}

fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids {
        if let Some(pid) = Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// Calls `left` until it returns nothing, for up to 10 s.
fn wait_gone(what: &str, mut left: impl FnMut() -> Vec<i32>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = left();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} still running after SIGKILL: pids {pids:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kubelet's pod cgroups (`kubepods`) in every cgroup hierarchy, deepest first.
fn pod_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), found);
                }
            }
        }
        found.push(dir.to_owned());
    }
    for hierarchy in hierarchies.flatten() {
        let pods = hierarchy.path().join("kubepods");
        if pods.is_dir() {
            walk(&pods, &mut found);
        }
    }
    found
}

/// Kills every process in the pod cgroups (containers outlive a killed shim otherwise).
fn kill_pod_processes() -> anyhow::Result<()> {
    wait_gone("container processes", || {
        let mut pids: Vec<i32> = pod_cgroups()
            .iter()
            .filter_map(|cg| std::fs::read_to_string(cg.join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        signal_all(&pids, Signal::KILL);
        pids
    })
}

fn remove_pod_cgroups() -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for cgroup in pod_cgroups() {
        if let Err(err) = std::fs::remove_dir(&cgroup)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            failed.push(format!("{} ({err})", cgroup.display()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("cannot remove the cgroups {}", failed.join(", "))
    }
}

/// Mount points that belong to the node: the kubelet directory and everything below it, containerd's
/// directories, and the pods' network namespaces.
pub(super) fn node_mounts() -> Vec<String> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let ours = |point: &str| {
        [
            KUBELET_DIR,
            BASE_DIR,
            "/run/containerd",
            "/run/netns",
            "/var/run/netns",
        ]
        .iter()
        .any(|dir| point == *dir || point.starts_with(&format!("{dir}/")))
    };
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| ours(p))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn unmount_all() -> anyhow::Result<()> {
    // Shared mounts can reappear through propagation; a few rounds settle it.
    for _ in 0..5 {
        let mut mounts = node_mounts();
        if mounts.is_empty() {
            return Ok(());
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = rustix::mount::unmount(mount.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
    let left = node_mounts();
    if left.is_empty() {
        Ok(())
    } else {
        bail!("cannot unmount {}", left.join(", "))
    }
}

fn remove_network_namespaces() -> anyhow::Result<()> {
    for dir in ["/run/netns", "/var/run/netns"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // containerd names the pods' namespaces cni-<uuid>.
            if entry.file_name().to_string_lossy().starts_with("cni-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Network interfaces, by name.
pub(super) fn links() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn remove_links() -> anyhow::Result<()> {
    let bridge = Path::new("/sys/class/net").join(BRIDGE);
    if !bridge.exists() {
        return Ok(());
    }
    // The pods' veths die with their namespaces; delete any still attached to the bridge.
    let attached: Vec<String> = std::fs::read_dir(bridge.join("brif"))
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for link in attached.iter().map(String::as_str).chain([BRIDGE]) {
        // A veth also goes away by itself, a moment after its namespace.
        if let Err(err) = run("ip", &["link", "delete", link])
            && Path::new("/sys/class/net").join(link).exists()
        {
            return Err(err);
        }
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

const IPTABLES: &[&str] = &["iptables", "ip6tables"];
const TABLES: &[&str] = &["filter", "nat", "mangle"];

/// Every iptables rule and chain (`iptables -S` of each table, IPv4 and IPv6), for comparisons.
pub(super) fn iptables_rules() -> Vec<String> {
    let mut rules = Vec::new();
    for program in IPTABLES {
        for table in TABLES {
            if let Ok(text) = run(program, &["-w", "-t", table, "-S"]) {
                rules.extend(text.lines().map(|l| format!("{program} -t {table} {l}")));
            }
        }
    }
    rules
}

fn remove_iptables_chains() -> anyhow::Result<()> {
    let is_ours = |chain: &str| CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p));
    for program in IPTABLES {
        if Command::new(program).arg("--version").output().is_err() {
            continue;
        }
        for table in TABLES {
            let Ok(text) = run(program, &["-w", "-t", table, "-S"]) else {
                continue;
            };
            let mut chains = Vec::new();
            for line in text.lines() {
                let words = split_rule(line);
                match words.first().map(String::as_str) {
                    Some("-N") if words.get(1).is_some_and(|c| is_ours(c)) => chains.push(words[1].clone()),
                    Some("-A") => {
                        let chain = words.get(1).map(String::as_str).unwrap_or_default();
                        let target = words
                            .iter()
                            .position(|w| w == "-j" || w == "-g")
                            .and_then(|i| words.get(i + 1))
                            .map(String::as_str)
                            .unwrap_or_default();
                        if !is_ours(chain) && is_ours(target) {
                            let mut args = vec!["-w".to_owned(), "-t".into(), (*table).into(), "-D".into()];
                            args.extend(words[1..].iter().cloned());
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            run(program, &args)?;
                        }
                    }
                    _ => {}
                }
            }
            for chain in &chains {
                run(program, &["-w", "-t", table, "-F", chain])?;
            }
            for chain in &chains {
                run(program, &["-w", "-t", table, "-X", chain])?;
            }
        }
    }
    Ok(())
}

/// Splits an `iptables -S` line into words; double quotes group words (comments).
fn split_rule(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// What the real node can change on the host, to compare before and after a node's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    /// Processes whose command line names the node's state directory, or that run in pod cgroups.
    pub processes: Vec<String>,
    /// Mount points under the kubelet directory, containerd's directories and network namespaces.
    pub mounts: Vec<String>,
    /// Every iptables rule and chain, IPv4 and IPv6.
    pub iptables: Vec<String>,
    /// Network interfaces.
    pub links: Vec<String>,
    /// The sysctls the kubelet, CNI or we change.
    pub sysctls: Vec<String>,
    /// Which of the kubelet's and containerd's directories exist.
    pub dirs: Vec<String>,
}

impl HostSnapshot {
    /// Takes a snapshot now.
    pub fn take() -> Self {
        let in_pods: Vec<String> = pod_cgroups()
            .iter()
            .filter_map(|cg| std::fs::read_to_string(cg.join("cgroup.procs")).ok())
            .flat_map(|p| {
                p.lines()
                    .map(|l| format!("pid {l} in a pod cgroup"))
                    .collect::<Vec<_>>()
            })
            .collect();
        Self {
            processes: processes()
                .into_iter()
                .filter(|(_, c)| cmdline_is_ours(c))
                .map(|(pid, c)| format!("{pid} {}", c.join(" ")))
                .chain(in_pods)
                .collect(),
            mounts: node_mounts(),
            iptables: iptables_rules(),
            links: links(),
            sysctls: SYSCTLS
                .iter()
                .map(|k| format!("{k}={}", read_sysctl(k).unwrap_or_default()))
                .collect(),
            dirs: CREATED_DIRS
                .iter()
                .chain(&[KUBELET_DIR, BASE_DIR])
                .filter(|d| Path::new(d).exists())
                .map(|d| (*d).to_owned())
                .collect(),
        }
    }

    /// What differs from `earlier`, one line per difference (`+` now there, `-` gone); empty when equal.
    pub fn differences_from(&self, earlier: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut compare = |what: &str, before: &[String], after: &[String]| {
            out.extend(
                after
                    .iter()
                    .filter(|a| !before.contains(a))
                    .map(|a| format!("+ {what}: {a}")),
            );
            out.extend(
                before
                    .iter()
                    .filter(|b| !after.contains(b))
                    .map(|b| format!("- {what}: {b}")),
            );
        };
        compare("process", &earlier.processes, &self.processes);
        compare("mount", &earlier.mounts, &self.mounts);
        compare("iptables", &earlier.iptables, &self.iptables);
        compare("link", &earlier.links, &self.links);
        compare("sysctl", &earlier.sysctls, &self.sysctls);
        compare("dir", &earlier.dirs, &self.dirs);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_lines_split_with_quoted_comments() {
        let line = r#"-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP"#;
        let words = split_rule(line);
        assert_eq!(words[1], "KUBE-FIREWALL");
        assert!(
            words.contains(&"block incoming localnet connections".to_owned()),
            "{words:?}"
        );
        assert_eq!(words.last().map(String::as_str), Some("DROP"));
        assert_eq!(split_rule(r#"-A X -m comment --comment "" -j Y"#)[5], "");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/var/lib/kubelet/a\\040b"),
            "/var/lib/kubelet/a b"
        );
    }

    #[test]
    fn snapshot_differences_name_what_changed() {
        let before = HostSnapshot {
            processes: vec![],
            mounts: vec![],
            iptables: vec!["a".into()],
            links: vec!["lo".into()],
            sysctls: vec![],
            dirs: vec![],
        };
        let mut after = before.clone();
        after.links.push("dto0".into());
        after.iptables.clear();
        assert_eq!(
            after.differences_from(&before),
            vec!["- iptables: a", "+ link: dto0"]
        );
        assert!(before.differences_from(&before).is_empty());
    }
}
