//! Writing OCI image archives: layer tars, the image config, the manifest, the index, and the archive
//! (an OCI image layout in a tar, with a `manifest.json` for `docker load` too).
//!
//! Layers are uncompressed (`application/vnd.oci.image.layer.v1.tar`): the archives never cross a network,
//! containerd stores OCI layers as they come (a docker-archive's plain layers it would gzip on import),
//! and gzip would add about a second per build for a few tens of MB saved on local disk.
//!
//! Everything is reproducible: entries sorted, one fixed mtime, owner 0:0 unless set per entry, no user or
//! group names, JSON with sorted keys.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The files of one layer, kept sorted by path.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory (its parents are added as 0755 root directories).
    pub fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<&mut Self> {
        self.add(path, Kind::Dir, mode)
    }

    /// A regular file owned by root.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> anyhow::Result<&mut Self> {
        self.add(path, Kind::File(data), mode)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<&mut Self> {
        self.add(path, Kind::Symlink(target.to_owned()), 0o777)
    }

    /// Gives an entry added before to `uid:gid`.
    pub fn owner(&mut self, path: &str, uid: u64, gid: u64) -> anyhow::Result<&mut Self> {
        let key = normalize(path)?;
        let entry = self
            .entries
            .get_mut(&key)
            .with_context(|| format!("no entry {path} in the layer to give to {uid}:{gid}"))?;
        (entry.uid, entry.gid) = (uid, gid);
        Ok(self)
    }

    /// The paths in the layer, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn add(&mut self, path: &str, kind: Kind, mode: u32) -> anyhow::Result<&mut Self> {
        let key = normalize(path)?;
        let mut parent = Path::new(&key).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let dir_key = dir.to_string_lossy().into_owned();
            match self.entries.get(&dir_key) {
                Some(Entry { kind: Kind::Dir, .. }) => {}
                Some(_) => bail!("{path}: its parent {dir_key} is not a directory in the layer"),
                None => {
                    self.entries.insert(dir_key, dir_entry(0o755));
                }
            }
            parent = dir.parent();
        }
        self.entries.insert(
            key,
            Entry {
                kind,
                mode,
                uid: 0,
                gid: 0,
            },
        );
        Ok(self)
    }

    /// The layer as an uncompressed tar, every entry with modification time `mtime`.
    pub fn to_tar(&self, mtime: u64) -> anyhow::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_mode(entry.mode);
            header.set_uid(entry.uid);
            header.set_gid(entry.gid);
            header.set_mtime(mtime);
            match &entry.kind {
                Kind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())
                }
                Kind::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())
                }
                Kind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target)
                }
            }
            .with_context(|| format!("adding {path} to a layer"))?;
        }
        builder.into_inner().context("finishing a layer")
    }
}

fn dir_entry(mode: u32) -> Entry {
    Entry {
        kind: Kind::Dir,
        mode,
        uid: 0,
        gid: 0,
    }
}

/// `path` relative to the image's root, without `.`, `..` or empty components.
fn normalize(path: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
        bail!("{path:?} is not a path in an image (absolute, no . or ..)");
    }
    Ok(parts.join("/"))
}

/// What goes into an image's config besides its layers.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// Repository, e.g. `dynatrace-operator` or `127.0.0.1:8443/linux/oneagent`.
    pub name: String,
    /// Tag, e.g. `0.1.0-dev`.
    pub tag: String,
    /// `uid:gid` the entrypoint runs as; root when `None`.
    pub user: Option<String>,
    /// The program and its first arguments.
    pub entrypoint: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Labels (`org.opencontainers.image.*`, `com.dynatrace.build-version`, ...).
    pub labels: BTreeMap<String, String>,
    /// Docker's `HEALTHCHECK` test, e.g. `["CMD-SHELL", "/usr/bin/watchdog-healthcheck64"]`.
    pub healthcheck: Option<Vec<String>>,
    /// RFC 3339 creation time; left out unless `SOURCE_DATE_EPOCH` gives one, so builds stay identical.
    pub created: Option<String>,
}

impl ImageConfig {
    /// `name:tag`, as a pod's `image` names it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// An image archive written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArchive {
    /// Repository, e.g. `dynatrace-operator`.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// The archive (`ctr -n k8s.io images import <path>`, `docker load -i <path>`).
    pub path: PathBuf,
    /// Digest of the image manifest (`sha256:...`), as `ctr images ls` shows it.
    pub digest: String,
    /// Size of the archive in bytes.
    pub size: u64,
}

impl ImageArchive {
    /// `name:tag`, as a pod's `image` names it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }

    /// The fully qualified name containerd stores the image under after import (and that the kubelet
    /// looks up): `docker.io/library/pause:1` for `pause:1`.
    pub fn containerd_name(&self) -> String {
        normalized_reference(&self.name, &self.tag)
    }
}

/// `name:tag` with Docker's default registry and `library/` added where the name has none.
pub fn normalized_reference(name: &str, tag: &str) -> String {
    let domain = name.split_once('/').map(|(first, _)| first);
    match domain {
        Some(d) if d.contains('.') || d.contains(':') || d == "localhost" => format!("{name}:{tag}"),
        Some(_) => format!("docker.io/{name}:{tag}"),
        None => format!("docker.io/library/{name}:{tag}"),
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": sha256_digest(data), "size": data.len() })
}

fn blob_path(data: &[u8]) -> String {
    format!("blobs/sha256/{}", hex::encode(Sha256::digest(data)))
}

/// Writes the image (`layers` as uncompressed tars, lowest first) as an archive at `path`. When the file
/// there already holds this very image (same manifest digest, recorded next to it in `<path>.digest`), it
/// is kept as it is. Written to a temporary file and renamed, so concurrent builders never see half an
/// archive.
pub fn write_archive(
    config: &ImageConfig,
    layers: &[Vec<u8>],
    mtime: u64,
    path: &Path,
) -> anyhow::Result<ImageArchive> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let mut container = serde_json::Map::new();
    if let Some(user) = &config.user {
        container.insert("User".into(), json!(user));
    }
    container.insert("Entrypoint".into(), json!(config.entrypoint));
    if !config.env.is_empty() {
        container.insert("Env".into(), json!(config.env));
    }
    if !config.labels.is_empty() {
        container.insert("Labels".into(), json!(config.labels));
    }
    if let Some(test) = &config.healthcheck {
        container.insert("Healthcheck".into(), json!({ "Test": test }));
    }
    let mut image_config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": container,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    if let Some(created) = &config.created {
        image_config["created"] = json!(created);
    }
    let config_bytes = serde_json::to_vec(&image_config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config_bytes),
        "layers": layers.iter().map(|l| descriptor(MEDIA_LAYER, l)).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let digest = sha256_digest(&manifest_bytes);

    let digest_file = path.with_extension("tar.digest");
    if let (Ok(meta), Ok(recorded)) = (std::fs::metadata(path), std::fs::read_to_string(&digest_file))
        && recorded.trim() == digest
    {
        return Ok(archive(config, path, digest, meta.len()));
    }

    let mut index_entry = descriptor(MEDIA_MANIFEST, &manifest_bytes);
    // containerd names the image after `io.containerd.image.name` as it is; the OCI annotation holds the
    // tag, as in layouts containerd exports.
    index_entry["annotations"] = json!({
        "io.containerd.image.name": normalized_reference(&config.name, &config.tag),
        "org.opencontainers.image.ref.name": config.tag,
    });
    let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [index_entry] });
    let docker_manifest = json!([{
        "Config": blob_path(&config_bytes),
        "RepoTags": [config.reference()],
        "Layers": layers.iter().map(|l| blob_path(l)).collect::<Vec<_>>(),
    }]);

    let mut outer = Layer::new();
    outer.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
    outer.file("index.json", 0o644, serde_json::to_vec(&index)?)?;
    outer.file("manifest.json", 0o644, serde_json::to_vec(&docker_manifest)?)?;
    for blob in layers.iter().chain([&config_bytes, &manifest_bytes]) {
        outer.file(&blob_path(blob), 0o644, blob.clone())?;
    }
    let bytes = outer.to_tar(mtime)?;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let temporary = path.with_extension(format!("tar.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::write(&digest_file, format!("{digest}\n"))
    };
    write().with_context(|| format!("writing the image archive {}", path.display()))?;
    Ok(archive(config, path, digest, bytes.len() as u64))
}

fn archive(config: &ImageConfig, path: &Path, digest: String, size: u64) -> ImageArchive {
    ImageArchive {
        name: config.name.clone(),
        tag: config.tag.clone(),
        path: path.to_owned(),
        digest,
        size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_like_containerd_does() {
        assert_eq!(normalized_reference("pause", "1"), "docker.io/library/pause:1");
        assert_eq!(normalized_reference("team/app", "1"), "docker.io/team/app:1");
        assert_eq!(
            normalized_reference("127.0.0.1:8443/linux/oneagent", "1.2.3"),
            "127.0.0.1:8443/linux/oneagent:1.2.3"
        );
        assert_eq!(normalized_reference("localhost/x", "1"), "localhost/x:1");
    }

    #[test]
    fn layer_paths_are_sorted_with_parents_first_and_checked() {
        let mut layer = Layer::new();
        layer.file("/usr/bin/b", 0o755, vec![]).unwrap();
        layer.symlink("/bin/sh", "/usr/bin/b").unwrap();
        layer.dir("/tmp", 0o1777).unwrap();
        let paths: Vec<&str> = layer.paths().collect();
        assert_eq!(paths, ["bin", "bin/sh", "tmp", "usr", "usr/bin", "usr/bin/b"]);
        assert!(layer.file("../etc/x", 0o644, vec![]).is_err());
        assert!(layer.file("/usr/bin/b/c", 0o644, vec![]).is_err());
        assert!(layer.owner("/nothing", 1, 1).is_err());
    }
}
