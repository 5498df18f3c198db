//! The OneAgent code-module part of the injection (spec §3.6, §3.8, §3.9): the pod's volumes, the init
//! container's environment and mounts, and each application container's mounts and variables. Every
//! step adds only what is missing, so running it again changes nothing.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use pure_api::dynakube::DynaKube;
use pure_desired::objects::deployment_metadata;
use pure_desired::pod::{
    add_env_if_absent, add_mount_if_absent, add_volume_if_absent, csi_volume, empty_dir_volume, env_value,
    field_env, literal_env, mount, secret_volume, set_env, sub_path_mount,
};

use crate::names::{
    AGENT_LIBRARY, ANNOTATION_FLAVOR, ANNOTATION_INSTALL_PATH, ANNOTATION_INSTALLER_URL,
    ANNOTATION_RELEASE_MAPPING_PREFIX, ANNOTATION_TECHNOLOGIES, CONTAINER_CONF_PATH, CSI_DRIVER,
    CURL_OPTIONS_FILE, CURL_OPTIONS_PATH, CUSTOM_PEM_FILE, CUSTOM_PEM_PATH, DEFAULT_INSTALL_PATH,
    DEFAULT_TECHNOLOGIES, INIT_AGENT_CONF_PATH, INIT_BIN_PATH, INIT_CONFIG_PATH, INIT_SHARE_PATH,
    LD_SO_PRELOAD_FILE, LD_SO_PRELOAD_PATH, VOLUME_AGENT_CONF, VOLUME_DATA_STORAGE, VOLUME_INJECTION_CONFIG,
    VOLUME_LOG, VOLUME_ONEAGENT_BIN, VOLUME_ONEAGENT_SHARE, container_conf_file, env,
};
use crate::{OPERATOR_VERSION, PodRequest};

/// `MODE` with the CSI driver.
pub(crate) const MODE_PROVISIONED: &str = "provisioned";
/// `MODE` without it.
pub(crate) const MODE_INSTALLER: &str = "installer";

/// What the code-module injection of one pod needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Where the code module appears in the application containers.
    pub install_path: String,
    /// `oneagent-bin` is a CSI volume.
    pub csi: bool,
    /// The CSI volume is read-only; the writable agent directories are emptyDirs.
    pub readonly: bool,
    deployment_metadata: String,
    network_zone: Option<String>,
    custom_pem: bool,
    curl_options: bool,
    /// `DT_RELEASE_*` variable → field path; empty without label version detection.
    release: Vec<(&'static str, String)>,
}

impl Plan {
    /// For a pod injected now.
    pub(crate) fn fresh(req: &PodRequest<'_>, dynakube: &DynaKube) -> Self {
        let csi = dynakube.csi_driver_use().uses(req.settings.csi_driver_installed);
        Self {
            install_path: annotation(req.pod, ANNOTATION_INSTALL_PATH)
                .filter(|p| !p.is_empty())
                .unwrap_or(DEFAULT_INSTALL_PATH)
                .to_owned(),
            csi,
            readonly: csi && dynakube.feature_flags().injection_readonly_volume(),
            ..Self::common(req, dynakube)
        }
    }

    /// For a pod injected before: the install path and volume kind its init container was given, so
    /// that new containers match the volumes the pod has.
    pub(crate) fn from_init(init: &Container, req: &PodRequest<'_>, dynakube: &DynaKube) -> Self {
        let fresh = Self::fresh(req, dynakube);
        let init_env = init.env.as_deref();
        let csi = env_value(init_env, env::MODE).map_or(fresh.csi, |m| m == MODE_PROVISIONED);
        Self {
            install_path: env_value(init_env, env::INSTALLPATH)
                .filter(|p| !p.is_empty())
                .map_or(fresh.install_path.clone(), str::to_owned),
            csi,
            readonly: csi
                && env_value(init_env, env::CSI_VOLUME_READONLY).map_or(fresh.readonly, |r| r == "true"),
            ..fresh
        }
    }

    fn common(req: &PodRequest<'_>, dynakube: &DynaKube) -> Self {
        let flags = dynakube.feature_flags();
        Self {
            install_path: String::new(),
            csi: false,
            readonly: false,
            deployment_metadata: deployment_metadata(
                dynakube.mode().map_or("", |m| m.metadata_name()),
                &req.settings.cluster_id,
                OPERATOR_VERSION,
            ),
            network_zone: dynakube.spec.network_zone.clone().filter(|z| !z.is_empty()),
            custom_pem: dynakube.activegate_tls_secret().is_some(),
            curl_options: flags.initial_connect_retry_ms().is_some_and(|ms| ms > 0),
            release: if flags.label_version_detection() {
                release_mappings(req.namespace.annotations)
            } else {
                Vec::new()
            },
        }
    }

    fn library(&self) -> String {
        format!("{}/{AGENT_LIBRARY}", self.install_path.trim_end_matches('/'))
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The release variables and their pod fields: version and product from the well-known labels, each
/// overridden (and stage and build version added) by the namespace's `mapping.release.dynatrace.com/*`
/// annotations. A mapping that is not a field an environment variable can reference is ignored: the API
/// server would reject the whole pod.
fn release_mappings(
    namespace_annotations: &std::collections::BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let mut mappings = vec![
        (
            env::DT_RELEASE_VERSION,
            "metadata.labels['app.kubernetes.io/version']".to_owned(),
        ),
        (
            env::DT_RELEASE_PRODUCT,
            "metadata.labels['app.kubernetes.io/part-of']".to_owned(),
        ),
    ];
    for (suffix, variable) in [
        ("version", env::DT_RELEASE_VERSION),
        ("product", env::DT_RELEASE_PRODUCT),
        ("stage", env::DT_RELEASE_STAGE),
        ("build-version", env::DT_RELEASE_BUILD_VERSION),
    ] {
        let Some(path) = namespace_annotations
            .get(&format!("{ANNOTATION_RELEASE_MAPPING_PREFIX}{suffix}"))
            .map(|p| p.trim())
            .filter(|p| is_env_field_path(p))
        else {
            continue;
        };
        match mappings.iter_mut().find(|(v, _)| *v == variable) {
            Some(existing) => existing.1 = path.to_owned(),
            None => mappings.push((variable, path.to_owned())),
        }
    }
    mappings
}

/// The field paths the API server accepts in an environment variable's `fieldRef`.
fn is_env_field_path(path: &str) -> bool {
    const FIELDS: &[&str] = &[
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    ];
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .is_some_and(|key| !key.is_empty() && !key.contains('\''))
    };
    FIELDS.contains(&path) || subscript("metadata.labels['") || subscript("metadata.annotations['")
}

/// Injects the code module into a pod that has none yet: the volumes, the init container's part and
/// every application container.
pub(crate) fn inject_pod(
    pod: &mut Pod,
    init: &mut Container,
    plan: &Plan,
    req: &PodRequest<'_>,
    dynakube: &DynaKube,
) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let mut bin = if plan.csi {
        csi_volume(
            VOLUME_ONEAGENT_BIN,
            CSI_DRIVER,
            &[
                ("mode", "app"),
                ("dynakube", dynakube.metadata.name.as_deref().unwrap_or_default()),
            ],
        )
    } else {
        empty_dir_volume(VOLUME_ONEAGENT_BIN)
    };
    if let Some(csi) = bin.csi.as_mut() {
        csi.read_only = Some(plan.readonly);
    }
    let mut volumes = vec![
        secret_volume(VOLUME_INJECTION_CONFIG, pure_api::dynakube::names::INIT_SECRET),
        bin,
        empty_dir_volume(VOLUME_ONEAGENT_SHARE),
    ];
    if plan.readonly {
        volumes.extend([VOLUME_AGENT_CONF, VOLUME_DATA_STORAGE, VOLUME_LOG].map(empty_dir_volume));
    }
    for volume in volumes {
        add_volume_if_absent(&mut spec.volumes, volume);
    }

    let from_pod = |key, default: &str| annotation(req.pod, key).unwrap_or(default).to_owned();
    let technologies: String = url::form_urlencoded::byte_serialize(
        from_pod(ANNOTATION_TECHNOLOGIES, DEFAULT_TECHNOLOGIES).as_bytes(),
    )
    .collect();
    let version = dynakube
        .status
        .as_ref()
        .and_then(|s| s.code_modules.as_ref())
        .and_then(|c| c.version.clone())
        .unwrap_or_default();
    let init_env = init.env.get_or_insert_with(Vec::new);
    init_env.extend([
        literal_env(env::FLAVOR, &from_pod(ANNOTATION_FLAVOR, "")),
        literal_env(env::TECHNOLOGIES, &technologies),
        literal_env(env::INSTALLPATH, &plan.install_path),
        literal_env(env::INSTALLER_URL, &from_pod(ANNOTATION_INSTALLER_URL, "")),
        literal_env(env::VERSION, &version),
        literal_env(
            env::MODE,
            if plan.csi {
                MODE_PROVISIONED
            } else {
                MODE_INSTALLER
            },
        ),
        literal_env(
            env::CSI_VOLUME_READONLY,
            if plan.readonly { "true" } else { "false" },
        ),
        literal_env(env::ONEAGENT_INJECTED, "true"),
    ]);
    set_container_vars(init, &spec.containers);
    let mut mounts = vec![
        mount(VOLUME_ONEAGENT_BIN, INIT_BIN_PATH, false),
        mount(VOLUME_ONEAGENT_SHARE, INIT_SHARE_PATH, false),
    ];
    if plan.readonly {
        mounts.push(mount(VOLUME_AGENT_CONF, INIT_AGENT_CONF_PATH, false));
    }
    mounts.push(mount(VOLUME_INJECTION_CONFIG, INIT_CONFIG_PATH, false));
    for m in mounts {
        add_mount_if_absent(&mut init.volume_mounts, m);
    }
    for container in &mut spec.containers {
        inject_container(container, plan);
    }
}

/// `CONTAINERS_COUNT` and `CONTAINER_<i>_NAME/IMAGE` for the whole container list, in place where they
/// are; variables of containers no longer there are removed.
pub(crate) fn set_container_vars(init: &mut Container, containers: &[Container]) {
    set_env(
        &mut init.env,
        literal_env(env::CONTAINERS_COUNT, &containers.len().to_string()),
    );
    for (index, container) in containers.iter().enumerate() {
        let index = index + 1;
        set_env(
            &mut init.env,
            literal_env(&env::container_name(index), &container.name),
        );
        set_env(
            &mut init.env,
            literal_env(
                &env::container_image(index),
                container.image.as_deref().unwrap_or_default(),
            ),
        );
    }
    if let Some(list) = init.env.as_mut() {
        list.retain(|v| !env::is_container_var(&v.name) || container_index(&v.name) <= containers.len());
    }
}

/// The index in a `CONTAINER_<i>_*` name (0 when there is none).
fn container_index(name: &str) -> usize {
    name.trim_start_matches("CONTAINER_")
        .split('_')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0)
}

/// Injects one application container: the preload file, the code module, its `container.conf`, the
/// optional certificate and curl options, the read-only CSI directories, and the variables.
pub(crate) fn inject_container(container: &mut Container, plan: &Plan) {
    let install_path = plan.install_path.trim_end_matches('/');
    let mut mounts = vec![
        sub_path_mount(
            VOLUME_ONEAGENT_SHARE,
            LD_SO_PRELOAD_PATH,
            LD_SO_PRELOAD_FILE,
            false,
        ),
        mount(VOLUME_ONEAGENT_BIN, &plan.install_path, false),
        sub_path_mount(
            VOLUME_ONEAGENT_SHARE,
            CONTAINER_CONF_PATH,
            &container_conf_file(&container.name),
            false,
        ),
    ];
    if plan.custom_pem {
        mounts.push(sub_path_mount(
            VOLUME_ONEAGENT_SHARE,
            CUSTOM_PEM_PATH,
            CUSTOM_PEM_FILE,
            false,
        ));
    }
    if plan.curl_options {
        mounts.push(sub_path_mount(
            VOLUME_ONEAGENT_SHARE,
            CURL_OPTIONS_PATH,
            CURL_OPTIONS_FILE,
            false,
        ));
    }
    if plan.readonly {
        mounts.extend([
            mount(VOLUME_AGENT_CONF, &format!("{install_path}/agent/conf"), false),
            mount(VOLUME_DATA_STORAGE, &format!("{install_path}/datastorage"), false),
            mount(VOLUME_LOG, &format!("{install_path}/log"), false),
        ]);
    }
    for m in mounts {
        add_mount_if_absent(&mut container.volume_mounts, m);
    }
    add_env_if_absent(
        &mut container.env,
        literal_env(env::DT_DEPLOYMENT_METADATA, &plan.deployment_metadata),
    );
    preload(&mut container.env, &plan.library());
    if let Some(zone) = &plan.network_zone {
        add_env_if_absent(&mut container.env, literal_env(env::DT_NETWORK_ZONE, zone));
    }
    for (variable, path) in &plan.release {
        add_env_if_absent(&mut container.env, field_env(variable, path));
    }
}

/// Puts `library` into `LD_PRELOAD`: set when absent or empty, appended (with a space when the list has
/// spaces, else a colon) when the list does not have it yet. A value from a Secret or field is left as it
/// is: it cannot be extended, and `/etc/ld.so.preload` loads the agent anyway.
fn preload(env: &mut Option<Vec<EnvVar>>, library: &str) {
    let list = env.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|v| v.name == env::LD_PRELOAD) {
        None => list.push(literal_env(env::LD_PRELOAD, library)),
        Some(var) if var.value_from.is_some() => {}
        Some(var) => {
            let old = var.value.as_deref().unwrap_or_default();
            if old.trim().is_empty() {
                var.value = Some(library.to_owned());
            } else if !old.contains(library) {
                let separator = if old.contains(' ') { ' ' } else { ':' };
                var.value = Some(format!("{old}{separator}{library}"));
            }
        }
    }
}
