//! What `NodePublishVolume` and `NodeUnpublishVolume` decide, without I/O: the validation of a request
//! (every refusal names the field) and, for app-mode volumes, whether this attempt mounts the code module,
//! asks the kubelet to retry, or gives up and publishes an empty volume so that the pod starts unmonitored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::{AppVolumeRecord, DEFAULT_MAX_FAILED_MOUNT_ATTEMPTS, DynakubeRecord, component};

/// Volume-context key of the volume's mode (`app` or `host`).
pub const MODE_KEY: &str = "mode";
/// Volume-context key of the DynaKube whose code module or host storage is mounted.
pub const DYNAKUBE_KEY: &str = "dynakube";
/// Set by the kubelet because the CSIDriver has `podInfoOnMount: true`.
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
/// Set by the kubelet with `podInfoOnMount: true`.
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
/// Set by the kubelet with `podInfoOnMount: true`.
pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";

/// The default of `--max-mount-wait`: how long after its first attempt a volume whose code module is not
/// ready yet is published empty.
pub const DEFAULT_MAX_MOUNT_WAIT: Duration = Duration::from_secs(120);

/// How the volume is to be accessed, as far as the request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessType {
    /// A file-system mount: the only one this driver serves.
    Mount,
    /// A raw block device.
    Block,
    /// The capability has no access type.
    Unset,
}

/// The parts of a `NodePublishVolumeRequest` that the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct PublishInput<'a> {
    /// `volume_id`.
    pub volume_id: &'a str,
    /// `target_path`.
    pub target_path: &'a str,
    /// The capability's access type; `None` when there is no `volume_capability`.
    pub access_type: Option<AccessType>,
    /// `volume_context`.
    pub volume_context: &'a HashMap<String, String>,
    /// `readonly`: the pod's volume asks for a read-only mount.
    pub readonly: bool,
}

/// The pod a volume belongs to (for events and logs; may be empty when the CSIDriver lacks
/// `podInfoOnMount`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

/// What a valid publish request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// The volume id (one safe path component).
    pub volume_id: String,
    /// Where the kubelet wants the volume.
    pub target: PathBuf,
    /// The DynaKube named in the context.
    pub dynakube: String,
    /// App or host mode.
    pub mode: Mode,
    /// The pod.
    pub pod: PodRef,
    /// Mount the target read-only.
    pub readonly: bool,
}

/// The volume's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The code module for an application pod: an overlay of the configuration layer over the version.
    App,
    /// The host OneAgent's persistent storage, bound directly.
    Host,
}

/// A request the driver refuses; the gRPC status is `InvalidArgument`, the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidArgument(pub String);

fn invalid(message: impl Into<String>) -> InvalidArgument {
    InvalidArgument(message.into())
}

/// Checks a volume id and target path (shared by publish and unpublish).
pub fn volume_and_target(volume_id: &str, target_path: &str) -> Result<PathBuf, InvalidArgument> {
    if volume_id.is_empty() {
        return Err(invalid("volume_id is missing"));
    }
    component("volume id", volume_id).map_err(|err| invalid(format!("volume_id: {err}")))?;
    if target_path.is_empty() {
        return Err(invalid("target_path is missing"));
    }
    let target = Path::new(target_path);
    if !target.is_absolute() {
        return Err(invalid(format!(
            "target_path {target_path:?} is not an absolute path"
        )));
    }
    Ok(target.to_owned())
}

/// Validates a publish request, in the order csi-sanity and the CSI spec expect: volume id, target path,
/// capability (mount only), then the context this driver needs.
pub fn validate_publish(input: PublishInput<'_>) -> Result<PublishRequest, InvalidArgument> {
    let target = volume_and_target(input.volume_id, input.target_path)?;
    match input.access_type {
        None => return Err(invalid("volume_capability is missing")),
        Some(AccessType::Block) => {
            return Err(invalid(
                "volume_capability: block access is not supported, the volume is a directory (use a mount capability)",
            ));
        }
        Some(AccessType::Unset) => {
            return Err(invalid(
                "volume_capability has no access type (it must be a mount capability)",
            ));
        }
        Some(AccessType::Mount) => {}
    }
    let context = input.volume_context;
    if context.is_empty() {
        return Err(invalid(
            "volume_context is missing: the volume's attributes need `mode` and `dynakube`",
        ));
    }
    let mode = match context.get(MODE_KEY).map(String::as_str) {
        Some("app") => Mode::App,
        Some("host") => Mode::Host,
        Some(other) => {
            return Err(invalid(format!(
                "volume_context.mode {other:?} is not supported (use `app` or `host`)"
            )));
        }
        None => return Err(invalid("volume_context.mode is missing (use `app` or `host`)")),
    };
    let dynakube = match context.get(DYNAKUBE_KEY) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => {
            return Err(invalid(
                "volume_context.dynakube is missing (the DynaKube's name)",
            ));
        }
    };
    component("DynaKube name", &dynakube)
        .map_err(|err| invalid(format!("volume_context.dynakube: {err}")))?;
    let pod = PodRef {
        name: context.get(POD_NAME_KEY).cloned().unwrap_or_default(),
        namespace: context.get(POD_NAMESPACE_KEY).cloned().unwrap_or_default(),
    };
    if mode == Mode::App && pod.name.is_empty() {
        return Err(invalid(format!(
            "volume_context.\"{POD_NAME_KEY}\" is missing: the CSIDriver object must set podInfoOnMount: true"
        )));
    }
    Ok(PublishRequest {
        volume_id: input.volume_id.to_owned(),
        target,
        dynakube,
        mode,
        pod,
        readonly: input.readonly,
    })
}

/// What one app-mode publish attempt does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppDecision {
    /// Mount the overlay of `config` over `version`; write `record` first.
    Mount {
        /// The code-module version.
        version: String,
        /// The configuration layer.
        config: String,
        /// The volume's record, as it is to be written.
        record: AppVolumeRecord,
    },
    /// Not ready yet: write `record` (one more failed attempt) and answer `Unavailable` with `reason`.
    Retry {
        /// Why, for the kubelet's event on the pod.
        reason: String,
        /// The volume's record with the attempt counted.
        record: AppVolumeRecord,
    },
    /// Give up on the code module: bind an empty directory, write `record` (`empty: true`). `first` is
    /// true the first time (the moment for the event and the metric).
    Empty {
        /// Why the volume is empty.
        reason: String,
        /// The volume's record.
        record: AppVolumeRecord,
        /// Whether this volume was not empty before.
        first: bool,
    },
}

/// Decides one app-mode attempt from the DynaKube's record, the volume's earlier record, the time now
/// (seconds since the epoch) and `--max-mount-wait`. A volume becomes empty after
/// `maxFailedMountAttempts` failed attempts (the next attempt publishes it empty) or once `max_wait` has
/// passed since its first attempt; once empty it stays empty, so a retry after a crash converges.
pub fn decide_app(
    request: &PublishRequest,
    dynakube: Option<&DynakubeRecord>,
    previous: Option<&AppVolumeRecord>,
    now_unix: u64,
    max_wait: Duration,
) -> AppDecision {
    let mut record = previous.cloned().unwrap_or_else(|| AppVolumeRecord {
        first_attempt_unix: now_unix,
        ..AppVolumeRecord::default()
    });
    record.dynakube.clone_from(&request.dynakube);
    record.pod_name.clone_from(&request.pod.name);
    record.pod_namespace.clone_from(&request.pod.namespace);
    if record.first_attempt_unix == 0 {
        record.first_attempt_unix = now_unix;
    }
    if record.empty {
        record.version = None;
        record.config = None;
        return AppDecision::Empty {
            reason: "the volume was published empty before".to_owned(),
            record,
            first: false,
        };
    }
    let ready = dynakube.and_then(|dk| Some((dk.version.clone()?, dk.config.clone()?)));
    if let Some((version, config)) = ready {
        record.version = Some(version.clone());
        record.config = Some(config.clone());
        return AppDecision::Mount {
            version,
            config,
            record,
        };
    }
    let max_attempts = dynakube.map_or(DEFAULT_MAX_FAILED_MOUNT_ATTEMPTS, |dk| {
        dk.max_failed_mount_attempts
    });
    let waited = now_unix.saturating_sub(record.first_attempt_unix);
    let why = match dynakube {
        None => format!(
            "the CSI provisioner has not set up DynaKube {:?} on this node yet (no dynakube.json)",
            request.dynakube
        ),
        Some(_) => format!(
            "the CSI provisioner has not finished installing the code module of DynaKube {:?} on this node",
            request.dynakube
        ),
    };
    if record.failed_attempts >= max_attempts || waited >= max_wait.as_secs() {
        record.version = None;
        record.config = None;
        record.empty = true;
        return AppDecision::Empty {
            reason: format!(
                "{why}; gave up after {} failed attempts and {waited} s (limits: {max_attempts} attempts, {} s): \
                 the pod starts without the OneAgent code module",
                record.failed_attempts,
                max_wait.as_secs()
            ),
            record,
            first: true,
        };
    }
    record.failed_attempts += 1;
    AppDecision::Retry {
        reason: format!(
            "{why}; the kubelet retries (attempt {} of {max_attempts} before the volume is published empty)",
            record.failed_attempts
        ),
        record,
    }
}

/// The overlay's mount data: `lowerdir=<config layer>:<version>,upperdir=..,workdir=..`. Earlier lower
/// dirs win, so the configuration layer's files cover the version's.
pub fn overlay_options(config_layer: &Path, version_dir: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        config_layer.display(),
        version_dir.display(),
        upper.display(),
        work.display()
    )
}

/// The code-module version an overlay mounted by this driver shows: the name of its bottom lower dir when
/// that is `<codemodules>/<version>`.
pub fn version_of_overlay(lower_dirs: &[PathBuf], codemodules: &Path) -> Option<String> {
    let bottom = lower_dirs.last()?;
    if bottom.parent()? != codemodules {
        return None;
    }
    Some(bottom.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn app_context() -> HashMap<String, String> {
        context(&[
            ("mode", "app"),
            ("dynakube", "dk"),
            (POD_NAME_KEY, "web-1"),
            (POD_NAMESPACE_KEY, "shop"),
            (POD_UID_KEY, "u1"),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ])
    }

    fn input<'a>(ctx: &'a HashMap<String, String>) -> PublishInput<'a> {
        PublishInput {
            volume_id: "csi-abc",
            target_path: "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/oneagent-bin/mount",
            access_type: Some(AccessType::Mount),
            volume_context: ctx,
            readonly: false,
        }
    }

    #[test]
    fn a_kubelet_request_is_valid() {
        let ctx = app_context();
        let request = validate_publish(input(&ctx)).unwrap();
        assert_eq!(request.mode, Mode::App);
        assert_eq!(request.dynakube, "dk");
        assert_eq!(
            request.pod,
            PodRef {
                name: "web-1".into(),
                namespace: "shop".into()
            }
        );
    }

    #[test]
    fn each_refusal_names_the_field() {
        let ctx = app_context();
        let cases: Vec<(PublishInput<'_>, &str)> = vec![
            (
                PublishInput {
                    volume_id: "",
                    ..input(&ctx)
                },
                "volume_id is missing",
            ),
            (
                PublishInput {
                    volume_id: "a/b",
                    ..input(&ctx)
                },
                "volume_id",
            ),
            (
                PublishInput {
                    target_path: "",
                    ..input(&ctx)
                },
                "target_path is missing",
            ),
            (
                PublishInput {
                    target_path: "rel/x",
                    ..input(&ctx)
                },
                "target_path",
            ),
            (
                PublishInput {
                    access_type: None,
                    ..input(&ctx)
                },
                "volume_capability is missing",
            ),
            (
                PublishInput {
                    access_type: Some(AccessType::Block),
                    ..input(&ctx)
                },
                "block",
            ),
            (
                PublishInput {
                    access_type: Some(AccessType::Unset),
                    ..input(&ctx)
                },
                "access type",
            ),
        ];
        for (input, expected) in cases {
            let err = validate_publish(input).unwrap_err();
            assert!(err.0.contains(expected), "{err} should contain {expected}");
        }
        let empty = HashMap::new();
        assert!(
            validate_publish(input(&empty))
                .unwrap_err()
                .0
                .contains("volume_context is missing")
        );
        for (remove, expected) in [
            ("mode", "volume_context.mode is missing"),
            ("dynakube", "volume_context.dynakube is missing"),
            (POD_NAME_KEY, "podInfoOnMount"),
        ] {
            let mut ctx = app_context();
            ctx.remove(remove);
            let err = validate_publish(input(&ctx)).unwrap_err();
            assert!(err.0.contains(expected), "{err} should contain {expected}");
        }
        let mut ctx = app_context();
        ctx.insert("mode".into(), "both".into());
        assert!(
            validate_publish(input(&ctx))
                .unwrap_err()
                .0
                .contains("\"both\" is not supported")
        );
        ctx.insert("mode".into(), "app".into());
        ctx.insert("dynakube".into(), "../x".into());
        assert!(
            validate_publish(input(&ctx))
                .unwrap_err()
                .0
                .contains("volume_context.dynakube")
        );
    }

    #[test]
    fn host_mode_does_not_need_pod_info() {
        let ctx = context(&[("mode", "host"), ("dynakube", "dk")]);
        assert_eq!(validate_publish(input(&ctx)).unwrap().mode, Mode::Host);
    }

    fn request() -> PublishRequest {
        let ctx = app_context();
        validate_publish(input(&ctx)).unwrap()
    }

    fn ready() -> DynakubeRecord {
        DynakubeRecord {
            tenant_uuid: "t".into(),
            version: Some("1.2.3".into()),
            config: Some("c1".into()),
            max_failed_mount_attempts: 3,
        }
    }

    const WAIT: Duration = Duration::from_secs(120);

    #[test]
    fn a_ready_dynakube_is_mounted() {
        match decide_app(&request(), Some(&ready()), None, 1000, WAIT) {
            AppDecision::Mount {
                version,
                config,
                record,
            } => {
                assert_eq!((version.as_str(), config.as_str()), ("1.2.3", "c1"));
                assert_eq!(record.version.as_deref(), Some("1.2.3"));
                assert_eq!(record.pod_name, "web-1");
                assert_eq!(record.first_attempt_unix, 1000);
                assert!(!record.empty);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn after_max_failed_attempts_the_next_attempt_is_empty() {
        let mut dk = ready();
        dk.version = None;
        let mut previous = None;
        for attempt in 1..=3 {
            match decide_app(&request(), Some(&dk), previous.as_ref(), 1000 + attempt, WAIT) {
                AppDecision::Retry { record, reason } => {
                    assert_eq!(record.failed_attempts, attempt as u32);
                    assert_eq!(record.first_attempt_unix, 1001);
                    assert!(reason.contains("not finished installing"), "{reason}");
                    previous = Some(record);
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        match decide_app(&request(), Some(&dk), previous.as_ref(), 1010, WAIT) {
            AppDecision::Empty {
                record,
                first,
                reason,
            } => {
                assert!(first && record.empty);
                assert!(reason.contains("3 failed attempts"), "{reason}");
                previous = Some(record);
            }
            other => panic!("{other:?}"),
        }
        // Empty stays empty, even once the version is ready.
        match decide_app(&request(), Some(&ready()), previous.as_ref(), 1020, WAIT) {
            AppDecision::Empty { first, record, .. } => assert!(!first && record.empty),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_record_uses_the_default_limit_and_the_time_bound() {
        let first = decide_app(&request(), None, None, 1000, WAIT);
        let AppDecision::Retry { record, reason } = first else {
            panic!("{first:?}")
        };
        assert!(reason.contains("no dynakube.json"), "{reason}");
        assert!(reason.contains("of 10"), "{reason}");
        assert!(matches!(
            decide_app(&request(), None, Some(&record), 1119, WAIT),
            AppDecision::Retry { .. }
        ));
        assert!(matches!(
            decide_app(&request(), None, Some(&record), 1120, WAIT),
            AppDecision::Empty { first: true, .. }
        ));
    }

    #[test]
    fn zero_attempts_means_empty_at_once() {
        let mut dk = ready();
        dk.config = None;
        dk.max_failed_mount_attempts = 0;
        assert!(matches!(
            decide_app(&request(), Some(&dk), None, 1000, WAIT),
            AppDecision::Empty { first: true, .. }
        ));
    }

    #[test]
    fn overlay_options_and_their_version() {
        let options = overlay_options(
            Path::new("/data/dynakubes/dk/config/c1"),
            Path::new("/data/codemodules/1.2.3"),
            Path::new("/data/appmounts/v/var"),
            Path::new("/data/appmounts/v/work"),
        );
        assert_eq!(
            options,
            "lowerdir=/data/dynakubes/dk/config/c1:/data/codemodules/1.2.3,upperdir=/data/appmounts/v/var,\
             workdir=/data/appmounts/v/work"
        );
        let lowers = [
            PathBuf::from("/data/dynakubes/dk/config/c1"),
            PathBuf::from("/data/codemodules/1.2.3"),
        ];
        assert_eq!(
            version_of_overlay(&lowers, Path::new("/data/codemodules")).as_deref(),
            Some("1.2.3")
        );
        assert_eq!(
            version_of_overlay(&lowers[..1], Path::new("/data/codemodules")),
            None
        );
    }
}
