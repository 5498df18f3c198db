//! `dynatrace-operator init`: the init container the pod webhook adds to injected pods (spec §5).
//!
//! 1. Reads the environment the webhook set ([`pure_code_module::init::InitEnv`]) and, with the OneAgent
//!    injected, the init Secret's configuration ([`pure_desired::mapping::InitConfig`], `/mnt/config/config`).
//! 2. In `installer` mode, downloads the code module (the environment's latest or `VERSION`, or
//!    `INSTALLER_URL`) and unpacks it into `/mnt/bin` while it streams
//!    ([`io_code_module_installer::install`]), with the environment's process-module configuration, the
//!    proxy and the host group merged into `ruxitagentproc.conf`. In `provisioned` mode the CSI driver has
//!    put it there.
//! 3. Writes `/mnt/share/ld.so.preload`, `container_<name>.conf` per application container (without the
//!    `[host]` part, and with a warning, when the node is missing from `monitoringNodes`),
//!    `custom.pem`, `curl_options.conf`, the read-only-CSI copy of `agent/conf` into `/mnt/agent-conf`,
//!    and the enrichment files `dt_metadata.properties` and `dt_metadata.json`. Every file is mode 0444
//!    and replaced atomically (a restarted init container rewrites them).
//!
//! Every error, including a missing variable or an unreadable configuration, is an [`InitError`]; the
//! caller applies the failure policy to all of them (the reference let start-up errors escape it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use io_code_module_installer::{InstallError, InstallOptions, Installed, Source};
use io_tenant_client::{
    AgentSelector, ClientConfig, DownloadRequest, RetryPolicy, TenantClient, TenantError,
};
use pure_code_module::init::{self, EnvError, HostTenant, InitEnv, Mode};
use pure_code_module::proc_conf::{self, Property};
use pure_desired::mapping::InitConfig;

/// Where the init container reads and writes; [`Paths::default`] is the pod's layout, [`Paths::under`]
/// the same layout below another root (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The code module volume (`oneagent-bin`).
    pub bin: PathBuf,
    /// The per-pod files (`oneagent-share`).
    pub share: PathBuf,
    /// The init Secret's `config` key.
    pub config: PathBuf,
    /// The copy of `agent/conf` for read-only CSI volumes.
    pub agent_conf: PathBuf,
    /// The enrichment volume.
    pub enrichment: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self::under(Path::new("/"))
    }
}

impl Paths {
    /// The pod's layout below `root`.
    pub fn under(root: &Path) -> Self {
        Self {
            bin: root.join("mnt/bin"),
            share: root.join("mnt/share"),
            config: root.join("mnt/config/config"),
            agent_conf: root.join("mnt/agent-conf"),
            enrichment: root.join("var/lib/dynatrace/enrichment"),
        }
    }
}

/// How `init` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where it reads and writes.
    pub paths: Paths,
    /// Longest wait for an answer or the next chunk of the download.
    pub download_timeout: Duration,
    /// Time for each API call.
    pub request_timeout: Duration,
    /// Attempts at the download (each starts over) and at each API call.
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            paths: Paths::default(),
            download_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            attempts: 3,
        }
    }
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Environment variables are missing or wrong.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The configuration file cannot be read or parsed.
    #[error(
        "cannot use the init configuration {path}: {reason}; it is the key `config` of the Secret \
         dynatrace-dynakube-config in the pod's namespace, which the operator writes"
    )]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The Dynatrace API failed.
    #[error("{what}: {source}")]
    Tenant {
        /// What was asked.
        what: &'static str,
        /// The error.
        source: TenantError,
    },
    /// The code module could not be installed.
    #[error("cannot install the code module into {path}: {source}")]
    Install {
        /// The target.
        path: PathBuf,
        /// The error.
        source: InstallError,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}; check the volume mounts of the init container")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What `init` did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The install, in installer mode.
    pub installed: Option<Installed>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Warnings (also logged).
    pub warnings: Vec<String>,
    /// Time it took.
    pub elapsed: Duration,
}

/// Runs `init` with the environment `env` (a variable's value or `None`). The caller applies the failure
/// policy ([`InitEnv::failure_policy`], read on its own by [`pure_code_module::init::FailurePolicy::parse`]
/// so that it holds for environment errors too).
pub async fn run(env: impl Fn(&str) -> Option<String>, options: &Options) -> Result<Report, InitError> {
    let started = Instant::now();
    let env = InitEnv::read(env, std::env::consts::ARCH)?;
    let mut report = Report::default();
    let paths = &options.paths;
    if let (Some(pod), Some(oneagent)) = (&env.pod, &env.oneagent) {
        let config = read_config(&paths.config)?;
        let host = init::host_tenant(config.has_host, &config.monitoring_nodes, &oneagent.node_name);
        if host == HostTenant::Unknown {
            let warning = format!(
                "node {} is not in the init configuration's monitoringNodes (its host agent's tenant is not \
                 known yet); the containers get their configuration without the [host] part, so their \
                 processes are not grouped under the host until the pod restarts",
                oneagent.node_name
            );
            tracing::warn!(node = %oneagent.node_name, "{warning}");
            report.warnings.push(warning);
        }
        if oneagent.mode == Mode::Installer {
            let client = client(&config, options)?;
            report.installed = Some(install(&client, &config, oneagent, options).await?);
        }
        let share = &paths.share;
        let mut write = |name: &str, text: &str| -> Result<(), InitError> {
            let path = share.join(name);
            write_read_only(&path, text.as_bytes())?;
            report.files.push(path);
            Ok(())
        };
        write("ld.so.preload", &init::ld_so_preload(&oneagent.install_path))?;
        for container in &oneagent.containers {
            let text = init::container_conf(pod, oneagent, container, &host, &config.tenant_uuid);
            write(&init::container_conf_name(&container.name), &text)?;
        }
        if !config.tls_cert.is_empty() {
            write("custom.pem", &config.tls_cert)?;
        }
        if let Some(text) = init::curl_options(config.initial_connect_retry) {
            write("curl_options.conf", &text)?;
        }
        if oneagent.csi_read_only {
            let from = paths.bin.join("agent/conf");
            let to = paths.agent_conf.clone();
            tokio::task::spawn_blocking(move || copy_tree(&from, &to))
                .await
                .map_err(|e| InitError::Write {
                    path: paths.agent_conf.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            report.files.push(paths.agent_conf.clone());
        }
    }
    if let (Some(pod), Some(enrichment)) = (&env.pod, &env.enrichment) {
        let metadata = init::enrichment_metadata(pod, enrichment);
        for (name, text) in [
            ("dt_metadata.properties", init::enrichment_properties(&metadata)),
            ("dt_metadata.json", init::enrichment_json(&metadata)),
        ] {
            let path = paths.enrichment.join(name);
            write_read_only(&path, text.as_bytes())?;
            report.files.push(path);
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn read_config(path: &Path) -> Result<InitConfig, InitError> {
    let error = |reason: String| InitError::Config {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let config: InitConfig =
        serde_json::from_slice(&bytes).map_err(|e| error(format!("not the expected JSON: {e}")))?;
    if config.api_url.is_empty() {
        return Err(error("apiUrl is empty".into()));
    }
    Ok(config)
}

fn client(config: &InitConfig, options: &Options) -> Result<TenantClient, InitError> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let mut client_config = ClientConfig::new(&config.api_url, &config.api_token);
    client_config.paas_token = non_empty(&config.paas_token);
    client_config.proxy = non_empty(&config.proxy);
    client_config.no_proxy = non_empty(&config.no_proxy);
    client_config.trusted_cas_pem = non_empty(&config.trusted_cas);
    client_config.skip_cert_check = config.skip_cert_check;
    client_config.network_zone = non_empty(&config.network_zone);
    client_config.request_timeout = options.request_timeout;
    client_config.download_idle_timeout = options.download_timeout;
    client_config.connect_timeout = options.download_timeout.min(Duration::from_secs(10));
    client_config.retry = RetryPolicy {
        max_retries: options.attempts.saturating_sub(1) as usize,
        ..RetryPolicy::default()
    };
    TenantClient::new(client_config).map_err(|source| InitError::Tenant {
        what: "cannot build the Dynatrace API client from the init configuration",
        source,
    })
}

async fn install(
    client: &TenantClient,
    config: &InitConfig,
    oneagent: &init::OneAgentEnv,
    options: &Options,
) -> Result<Installed, InitError> {
    let from_tenant = client
        .process_module_config(0)
        .await
        .map_err(|source| InitError::Tenant {
            what: "cannot read the process-module configuration",
            source,
        })?
        .map(|c| {
            c.properties
                .into_iter()
                .map(|p| Property::new(&p.section, &p.key, &p.value))
                .collect()
        })
        .unwrap_or_default();
    let properties = proc_conf::init_properties(from_tenant, &config.proxy, &config.host_group);
    let agent = AgentSelector {
        os: "unix".into(),
        installer_type: "paas".into(),
        arch: init::installer_arch(std::env::consts::ARCH).into(),
        flavor: oneagent.flavor.clone(),
    };
    let source = match &oneagent.installer_url {
        Some(url) => Source::Url(url.clone()),
        None => Source::Tenant(DownloadRequest {
            agent: agent.clone(),
            version: oneagent.version.clone(),
            technologies: oneagent.technologies.clone(),
            skip_metadata: false,
            expected_sha256: None,
        }),
    };
    let install_options = InstallOptions {
        attempts: options.attempts.max(1),
        process_module_config: Some(properties),
        ..InstallOptions::default()
    };
    let target = &options.paths.bin;
    match io_code_module_installer::install(client, &source, target, &install_options).await {
        Ok(installed) => {
            tracing::info!(
                version = %installed.version,
                archive_bytes = installed.archive_bytes,
                entries = installed.entries,
                unpacked_bytes = installed.unpacked_bytes,
                attempts = installed.attempts,
                target = %target.display(),
                "code module installed"
            );
            Ok(installed)
        }
        Err(source) => {
            if let (Some(version), None) = (&oneagent.version, &oneagent.installer_url)
                && let Ok(versions) = client.available_versions(&agent).await
            {
                tracing::error!(%version, available = ?versions, "the requested version could not be installed");
            }
            Err(InitError::Install {
                path: target.clone(),
                source,
            })
        }
    }
}

/// Writes `path` (creating its directories) with mode 0444, replacing it atomically.
fn write_read_only(path: &Path, bytes: &[u8]) -> Result<(), InitError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&partial)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    drop(file);
    std::fs::rename(&partial, path).map_err(error)
}

/// Copies the directory tree `from` into `to` (files keep their permission bits; symlinks are copied as
/// links).
fn copy_tree(from: &Path, to: &Path) -> Result<(), InitError> {
    let error = |path: &Path| {
        let path = path.to_owned();
        move |source| InitError::Write { path, source }
    };
    std::fs::create_dir_all(to).map_err(error(to))?;
    for entry in std::fs::read_dir(from).map_err(error(from))? {
        let entry = entry.map_err(error(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(error(&source))?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(error(&source))?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target).map_err(error(&target))?;
        } else {
            std::fs::copy(&source, &target).map_err(error(&target))?;
        }
    }
    Ok(())
}

/// The process's peak resident memory in KiB (`VmHWM`), for the log.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
