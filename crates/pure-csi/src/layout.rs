//! Where everything lives under the driver's data directory (`/data` in the DaemonSet's containers, the
//! host's `<kubelet dir>/plugins/csi.oneagent.dynatrace.com/data`). There is no database: the directories
//! and small JSON records below are the state, and the kernel's mount table says what is mounted.
//!
//! ```text
//! <root>/codemodules/<version>/                   a complete code module; only ever appears by rename
//! <root>/staging/                                 downloads, unpacks and GC deletions in progress (same
//!                                                 filesystem: entries arrive and leave by rename)
//! <root>/dynakubes/<dynakube>/dynakube.json       DynakubeRecord, written by the provisioner
//! <root>/dynakubes/<dynakube>/config/<id>/        an immutable per-DynaKube configuration layer
//!                                                 (agent/conf/ruxitagentproc.conf), the overlay's top lower dir
//! <root>/osagent/<tenantUUID>/                    the host OneAgent's persistent storage (host mode)
//! <root>/appmounts/<volumeID>/volume.json         AppVolumeRecord
//! <root>/appmounts/<volumeID>/{mapped,var,work}   the overlay mount point, upper and work dirs
//! <root>/hostmounts/<volumeID>.json               HostVolumeRecord
//! ```
//!
//! Configuration layers are never changed in place: overlayfs does not allow changing a lower dir under
//! a live mount, so a new configuration gets a new `<id>` and the old one is collected once unmounted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Directory names under the root.
pub const CODEMODULES: &str = "codemodules";
/// In-progress downloads and unpacks.
pub const STAGING: &str = "staging";
/// Per-DynaKube records and configuration layers.
pub const DYNAKUBES: &str = "dynakubes";
/// Host OneAgent storage per tenant.
pub const OSAGENT: &str = "osagent";
/// Per-volume directories of app-mode volumes.
pub const APPMOUNTS: &str = "appmounts";
/// Per-volume records of host-mode volumes.
pub const HOSTMOUNTS: &str = "hostmounts";

/// A name that is about to become one path component (a DynaKube, a version, a volume id, a tenant, a
/// configuration id) is refused unless it is one plain component. `:`, `,` and `\` are refused too:
/// these paths end up in overlayfs mount options, where they separate layers and options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {value:?} cannot be used as a directory name (it must be non-empty, at most 253 characters, \
     not `.` or `..`, and contain none of `/`, `:`, `,`, `\\` or NUL)"
)]
pub struct BadName {
    /// What the name is (e.g. "volume id").
    pub what: &'static str,
    /// The name as given.
    pub value: String,
}

/// Checks that `value` can be one path component; see [`BadName`].
pub fn component<'a>(what: &'static str, value: &'a str) -> Result<&'a str, BadName> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value != "."
        && value != ".."
        && !value.contains(['/', ':', ',', '\\', '\0']);
    if ok {
        Ok(value)
    } else {
        Err(BadName {
            what,
            value: value.to_owned(),
        })
    }
}

/// The name under `codemodules/` of a code module installed from an image (`codeModulesImage`), from the
/// digest of the manifest or index the image reference resolves to: `sha256:<hex>` becomes
/// `sha256-<hex>` (a `:` cannot be in an overlay lower dir). It cannot be mistaken for an agent version
/// (`1.277.0.20230914-094321`), and the same digest gives the same name whether the image is written
/// with a tag or with `@sha256:`. `None` for anything but `<algorithm>:<lowercase hex>`.
pub fn image_version_id(digest: &str) -> Option<String> {
    let (algorithm, hex) = digest.split_once(':')?;
    let ok = !algorithm.is_empty()
        && algorithm
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && hex.len() >= 32
        && hex.len() <= 128
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| format!("{algorithm}-{hex}"))
}

/// The paths under one data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/codemodules`.
    pub fn codemodules(&self) -> PathBuf {
        self.root.join(CODEMODULES)
    }

    /// `<root>/codemodules/<version>`: present only when complete.
    pub fn codemodule(&self, version: &str) -> Result<PathBuf, BadName> {
        Ok(self.codemodules().join(component("version", version)?))
    }

    /// `<root>/staging`: on the same filesystem as `codemodules`, so that a finished unpack is renamed
    /// into place.
    pub fn staging(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    /// `<root>/dynakubes`.
    pub fn dynakubes(&self) -> PathBuf {
        self.root.join(DYNAKUBES)
    }

    /// `<root>/dynakubes/<dynakube>`.
    pub fn dynakube(&self, dynakube: &str) -> Result<PathBuf, BadName> {
        Ok(self.dynakubes().join(component("DynaKube name", dynakube)?))
    }

    /// `<root>/dynakubes/<dynakube>/dynakube.json`.
    pub fn dynakube_record(&self, dynakube: &str) -> Result<PathBuf, BadName> {
        Ok(self.dynakube(dynakube)?.join("dynakube.json"))
    }

    /// `<root>/dynakubes/<dynakube>/config`.
    pub fn dynakube_configs(&self, dynakube: &str) -> Result<PathBuf, BadName> {
        Ok(self.dynakube(dynakube)?.join("config"))
    }

    /// `<root>/dynakubes/<dynakube>/config/<id>`: one immutable configuration layer.
    pub fn dynakube_config(&self, dynakube: &str, id: &str) -> Result<PathBuf, BadName> {
        Ok(self
            .dynakube_configs(dynakube)?
            .join(component("configuration id", id)?))
    }

    /// `<root>/osagent/<tenantUUID>`: the host OneAgent's storage.
    pub fn host_storage(&self, tenant_uuid: &str) -> Result<PathBuf, BadName> {
        Ok(self
            .root
            .join(OSAGENT)
            .join(component("tenant UUID", tenant_uuid)?))
    }

    /// `<root>/appmounts`.
    pub fn app_mounts(&self) -> PathBuf {
        self.root.join(APPMOUNTS)
    }

    /// `<root>/appmounts/<volumeID>`.
    pub fn app_mount(&self, volume_id: &str) -> Result<AppMount, BadName> {
        Ok(AppMount {
            dir: self.app_mounts().join(component("volume id", volume_id)?),
        })
    }

    /// `<root>/hostmounts`.
    pub fn host_mounts(&self) -> PathBuf {
        self.root.join(HOSTMOUNTS)
    }

    /// `<root>/hostmounts/<volumeID>.json`.
    pub fn host_mount_record(&self, volume_id: &str) -> Result<PathBuf, BadName> {
        Ok(self
            .host_mounts()
            .join(format!("{}.json", component("volume id", volume_id)?)))
    }
}

/// The directories of one app-mode volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMount {
    dir: PathBuf,
}

impl AppMount {
    /// `<root>/appmounts/<volumeID>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The overlay's mount point, bind-mounted onto the kubelet's target path.
    pub fn mapped(&self) -> PathBuf {
        self.dir.join("mapped")
    }
    /// The overlay's upper dir: what the pod's agent writes (logs, state), kept after unpublish for GC.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("var")
    }
    /// The overlay's work dir.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The volume's record.
    pub fn record(&self) -> PathBuf {
        self.dir.join("volume.json")
    }
}

/// What the provisioner knows about one DynaKube on this node (`dynakube.json`). Written atomically
/// (temporary file, then rename); unknown fields are ignored so that a newer writer does not break an
/// older reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DynakubeRecord {
    /// The tenant (environment) UUID, from the API URL.
    pub tenant_uuid: String,
    /// The code-module version that is complete under `codemodules/`; `None` until the first install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The configuration layer (`config/<id>`) to mount above the version; `None` until written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Failed publish attempts of one volume after which it is published empty.
    #[serde(default = "default_max_failed_mount_attempts")]
    pub max_failed_mount_attempts: u32,
}

/// The reference's default for `feature.dynatrace.com/max-csi-mount-attempts`.
pub const DEFAULT_MAX_FAILED_MOUNT_ATTEMPTS: u32 = 10;

fn default_max_failed_mount_attempts() -> u32 {
    DEFAULT_MAX_FAILED_MOUNT_ATTEMPTS
}

/// One app-mode volume (`appmounts/<volumeID>/volume.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppVolumeRecord {
    /// The DynaKube named in the volume's attributes.
    pub dynakube: String,
    /// The pod, for events and logs.
    #[serde(default)]
    pub pod_name: String,
    /// The pod's namespace.
    #[serde(default)]
    pub pod_namespace: String,
    /// The version mounted; `None` while not mounted yet, or for a volume published empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The configuration layer mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Failed publish attempts so far.
    #[serde(default)]
    pub failed_attempts: u32,
    /// When the first attempt was made (seconds since the epoch).
    #[serde(default)]
    pub first_attempt_unix: u64,
    /// Published as an empty directory after too many failures: the pod runs unmonitored.
    #[serde(default)]
    pub empty: bool,
}

/// One host-mode volume (`hostmounts/<volumeID>.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVolumeRecord {
    /// The DynaKube named in the volume's attributes.
    pub dynakube: String,
    /// The tenant whose storage is mounted.
    pub tenant_uuid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let layout = Layout::new("/data");
        assert_eq!(
            layout.codemodule("1.277.0.20230914-094321").unwrap(),
            Path::new("/data/codemodules/1.277.0.20230914-094321")
        );
        assert_eq!(
            layout.dynakube_config("dk", "3f2a").unwrap(),
            Path::new("/data/dynakubes/dk/config/3f2a")
        );
        let mount = layout.app_mount("csi-abc").unwrap();
        assert_eq!(mount.mapped(), Path::new("/data/appmounts/csi-abc/mapped"));
        assert_eq!(mount.upper(), Path::new("/data/appmounts/csi-abc/var"));
        assert_eq!(
            layout.host_mount_record("csi-abc").unwrap(),
            Path::new("/data/hostmounts/csi-abc.json")
        );
        assert_eq!(
            layout.host_storage("abc12345").unwrap(),
            Path::new("/data/osagent/abc12345")
        );
    }

    #[test]
    fn names_that_are_not_one_safe_component_are_refused() {
        let layout = Layout::new("/data");
        for bad in ["", ".", "..", "a/b", "../x", "sha256:ab", "a,b", "a\\b", "a\0b"] {
            let err = layout.app_mount(bad).unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains("volume id"), "{err}");
        }
        assert!(component("x", &"a".repeat(254)).is_err());
        assert!(component("x", "csi-0123456789abcdef").is_ok());
    }

    #[test]
    fn image_ids_from_digests() {
        let hex = "a".repeat(64);
        let id = image_version_id(&format!("sha256:{hex}")).unwrap();
        assert_eq!(id, format!("sha256-{hex}"));
        assert!(component("version", &id).is_ok());
        for bad in [
            "",
            "sha256",
            "sha256:ABCDEF0123456789abcdef0123456789",
            "sha256:../../x",
            ":ab",
            "SHA256:aaaa",
        ] {
            assert_eq!(image_version_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_read_what_older_and_newer_writers_wrote() {
        let record: DynakubeRecord = serde_json::from_str(r#"{"tenantUuid":"t","future":1}"#).unwrap();
        assert_eq!(record.max_failed_mount_attempts, 10);
        assert_eq!(record.version, None);
        let volume: AppVolumeRecord = serde_json::from_str(r#"{"dynakube":"dk"}"#).unwrap();
        assert_eq!(volume.failed_attempts, 0);
        assert!(!volume.empty);
    }
}
