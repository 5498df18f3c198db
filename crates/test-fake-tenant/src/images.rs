//! Container images the fake tenant's registry serves: loaded from OCI image layout directories or from
//! OCI or docker archive tars, checked (every blob present with its size and SHA-256), and kept as
//! manifests in memory and blobs as paths on disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::lock;

/// The repository of the OneAgent images in a Dynatrace environment's registry.
pub const ONEAGENT_REPOSITORY: &str = "linux/oneagent";

/// OCI image index media type.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest media type.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Annotation of an OCI layout's index naming a manifest (the tag).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd's export adds with the full image name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Largest manifest or index read into memory.
const MAX_MANIFEST: u64 = 4 << 20;

/// An image the registry serves, as the admin API and [`crate::FakeTenant::add_image`] report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    /// The repository, for example `linux/oneagent`.
    pub name: String,
    /// The tag, for example `1.277.0`.
    pub tag: String,
    /// The digest of the manifest (or index) the tag names, `sha256:<hex>`.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// Number of blobs (configs and layers).
    pub blobs: usize,
    /// Their total size in bytes.
    pub blob_bytes: u64,
}

/// Why an image cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is not `<name>:<tag>`.
    #[error(
        "image reference {0:?} is not <name>:<tag> with a lowercase name of [a-z0-9._/-] components and a tag \
         of [A-Za-z0-9_.-] (at most 128 characters), like linux/oneagent:1.277.0"
    )]
    Reference(String),
    /// `latest` of the OneAgent repository is not registered: it follows the tenant's latest version.
    #[error(
        "{ONEAGENT_REPOSITORY}:latest cannot be registered: it follows the tenant's latest OneAgent version; \
         register the image under its version's tag (like {ONEAGENT_REPOSITORY}:1.277.0) and publish that version"
    )]
    OneAgentLatest,
    /// Reading the source failed.
    #[error("cannot read {path}: {source}; check that the image layout or archive exists and is readable")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The source is not a valid image.
    #[error("{path} is not a usable image: {message}")]
    Invalid {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A blob on disk.
#[derive(Clone, Debug)]
pub(crate) struct Blob {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
}

/// A manifest or index, served from memory.
#[derive(Clone, Debug)]
pub(crate) struct Manifest {
    /// Its media type (the `Content-Type` it is served with).
    pub media_type: String,
    /// The exact bytes its digest covers.
    pub bytes: Bytes,
}

#[derive(Debug, Default)]
struct Repository {
    tags: BTreeMap<String, ImageInfo>,
    manifests: HashMap<String, Manifest>,
    blobs: HashMap<String, Blob>,
}

/// The images of the registry, by repository.
#[derive(Debug, Default)]
pub(crate) struct ImageStore {
    repositories: Mutex<BTreeMap<String, Repository>>,
    next_extraction: AtomicU64,
}

/// What a lookup found.
pub(crate) enum Lookup<T> {
    Found(T),
    /// The repository is not known.
    NoRepository,
    /// The repository is known, the tag, digest or blob is not.
    Missing,
}

impl ImageStore {
    /// Loads the image at `source` (a layout directory or an archive tar, extracted below `extract_dir`)
    /// as `reference` (`<name>:<tag>`), replacing a previous image of that tag. Blocking: reads and hashes
    /// every blob.
    pub fn load(&self, reference: &str, source: &Path, extract_dir: &Path) -> Result<ImageInfo, ImageError> {
        let (name, tag) = parse_reference(reference)?;
        if name == ONEAGENT_REPOSITORY && tag == "latest" {
            return Err(ImageError::OneAgentLatest);
        }
        let metadata = std::fs::metadata(source).map_err(|e| io_error(source, e))?;
        let dir = if metadata.is_dir() {
            source.to_owned()
        } else {
            let n = self.next_extraction.fetch_add(1, Ordering::Relaxed);
            let dir = extract_dir.join(format!("image-{n}"));
            extract(source, &dir)?;
            dir
        };
        let loaded = load_dir(&dir, &tag).map_err(|e| e.at(source))?;
        let info = ImageInfo {
            name: name.clone(),
            tag: tag.clone(),
            digest: loaded.digest.clone(),
            media_type: loaded.manifests[&loaded.digest].media_type.clone(),
            source: source.to_owned(),
            blobs: loaded.blobs.len(),
            blob_bytes: loaded.blobs.values().map(|b| b.len).sum(),
        };
        let mut repositories = lock(&self.repositories);
        let repository = repositories.entry(name).or_default();
        repository.manifests.extend(loaded.manifests);
        repository.blobs.extend(loaded.blobs);
        repository.tags.insert(tag, info.clone());
        Ok(info)
    }

    /// Every registered image, by repository and tag.
    pub fn images(&self) -> Vec<ImageInfo> {
        lock(&self.repositories)
            .values()
            .flat_map(|r| r.tags.values().cloned())
            .collect()
    }

    /// The tags of `name`.
    pub fn tags(&self, name: &str) -> Lookup<Vec<String>> {
        match lock(&self.repositories).get(name) {
            Some(repository) => Lookup::Found(repository.tags.keys().cloned().collect()),
            None => Lookup::NoRepository,
        }
    }

    /// Whether `name:tag` is registered.
    pub fn has_tag(&self, name: &str, tag: &str) -> bool {
        lock(&self.repositories)
            .get(name)
            .is_some_and(|r| r.tags.contains_key(tag))
    }

    /// The manifest `reference` (a tag or a digest) of `name`, with its digest.
    pub fn manifest(&self, name: &str, reference: &str) -> Lookup<(String, Manifest)> {
        let repositories = lock(&self.repositories);
        let Some(repository) = repositories.get(name) else {
            return Lookup::NoRepository;
        };
        let digest = match repository.tags.get(reference) {
            Some(info) => info.digest.as_str(),
            None => reference,
        };
        match repository.manifests.get(digest) {
            Some(manifest) => Lookup::Found((digest.to_owned(), manifest.clone())),
            None => Lookup::Missing,
        }
    }

    /// The blob `digest` of `name`.
    pub fn blob(&self, name: &str, digest: &str) -> Lookup<Blob> {
        let repositories = lock(&self.repositories);
        let Some(repository) = repositories.get(name) else {
            return Lookup::NoRepository;
        };
        match repository.blobs.get(digest) {
            Some(blob) => Lookup::Found(blob.clone()),
            None => Lookup::Missing,
        }
    }
}

/// Splits `<name>:<tag>` and checks both parts against the distribution spec's grammar.
pub(crate) fn parse_reference(reference: &str) -> Result<(String, String), ImageError> {
    let invalid = || ImageError::Reference(reference.to_owned());
    let (name, tag) = reference.rsplit_once(':').ok_or_else(invalid)?;
    if !valid_name(name) || !valid_tag(tag) {
        return Err(invalid());
    }
    Ok((name.to_owned(), tag.to_owned()))
}

/// A repository name: `/`-separated components of lowercase letters and digits joined by `.`, `_`, `__`
/// or runs of `-`.
pub(crate) fn valid_name(name: &str) -> bool {
    name.len() <= 255
        && name.split('/').all(|component| {
            let bytes = component.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            !bytes.is_empty()
                && bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
                && !component.contains("..")
                && !component.contains("___")
                && !component.contains("._")
                && !component.contains("_.")
        })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    tag.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The hex part of a `sha256:<64 lowercase hex>` digest.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn io_error(path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unpacks an archive tar (the tar crate refuses entries that would land outside `dir`).
fn extract(archive: &Path, dir: &Path) -> Result<(), ImageError> {
    let mut file = File::open(archive).map_err(|e| io_error(archive, e))?;
    let mut magic = [0u8; 2];
    let is_gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    if is_gzip {
        return Err(ImageError::Invalid {
            path: archive.to_owned(),
            message: "it is gzip-compressed; decompress it (gunzip) and load the plain tar".into(),
        });
    }
    let file = File::open(archive).map_err(|e| io_error(archive, e))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    tar::Archive::new(file)
        .unpack(dir)
        .map_err(|e| ImageError::Invalid {
            path: archive.to_owned(),
            message: format!(
                "cannot unpack it as a tar into {}: {e}; give an OCI or docker archive tar (docker save, \
                 skopeo copy oci-archive:..., cargo xtask image) or an OCI layout directory",
                dir.display()
            ),
        })
}

/// A problem found inside a layout, before the source path is known to the message.
struct LayoutError(String);

impl LayoutError {
    fn at(self, source: &Path) -> ImageError {
        ImageError::Invalid {
            path: source.to_owned(),
            message: self.0,
        }
    }
}

impl From<String> for LayoutError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// What one image contributes to its repository.
struct Loaded {
    digest: String,
    manifests: HashMap<String, Manifest>,
    blobs: HashMap<String, Blob>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Loads an unpacked image: an OCI layout (`index.json`) or a legacy docker archive (`manifest.json`).
fn load_dir(dir: &Path, tag: &str) -> Result<Loaded, LayoutError> {
    let index = dir.join("index.json");
    if index.exists() {
        return load_oci_layout(dir, tag);
    }
    if dir.join("manifest.json").exists() {
        return load_docker_archive(dir, tag);
    }
    Err(LayoutError(
        "it has neither index.json (an OCI image layout) nor manifest.json (a docker archive)".into(),
    ))
}

/// Whether a name from an index or a docker archive (`1.2.3`, `repo:1.2.3`, `host:5000/repo:1.2.3`)
/// has the tag `tag`.
fn names_tag(name: &str, tag: &str) -> bool {
    name == tag || name.rsplit_once(':').is_some_and(|(_, t)| t == tag)
}

/// The one entry of `entries` for `tag`: the only one, or the one whose names carry the tag.
fn select<'a, T>(
    entries: &'a [T],
    tag: &str,
    names: impl Fn(&T) -> Vec<String>,
) -> Result<&'a T, LayoutError> {
    if let [only] = entries {
        return Ok(only);
    }
    let matching: Vec<&T> = entries
        .iter()
        .filter(|e| names(e).iter().any(|n| names_tag(n, tag)))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        _ => Err(LayoutError(format!(
            "it holds {} images and {} of them are named with tag {tag:?} (names: {:?}); load the image \
             under one of those tags or give a layout with one image",
            entries.len(),
            matching.len(),
            entries.iter().flat_map(&names).collect::<Vec<_>>()
        ))),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LayoutError> {
    let bytes = read_small(path)?;
    serde_json::from_slice(&bytes).map_err(|e| LayoutError(format!("{} is not valid: {e}", path.display())))
}

fn read_small(path: &Path) -> Result<Vec<u8>, LayoutError> {
    let file = File::open(path).map_err(|e| LayoutError(format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LayoutError(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(LayoutError(format!(
            "{} is larger than {MAX_MANIFEST} bytes; it is not a manifest",
            path.display()
        )));
    }
    Ok(bytes)
}

fn load_oci_layout(dir: &Path, tag: &str) -> Result<Loaded, LayoutError> {
    let index: IndexJson = read_json(&dir.join("index.json"))?;
    if index.manifests.is_empty() {
        return Err(LayoutError("its index.json lists no manifests".into()));
    }
    let top = select(&index.manifests, tag, |d| {
        [REF_NAME, CONTAINERD_NAME]
            .iter()
            .filter_map(|key| d.annotations.get(*key).cloned())
            .collect()
    })?;
    let mut loaded = Loaded {
        digest: top.digest.clone(),
        manifests: HashMap::new(),
        blobs: HashMap::new(),
    };
    add_manifest(dir, top, &mut loaded, true)?;
    Ok(loaded)
}

/// `blobs/sha256/<hex>` of a layout, checked against the descriptor's size.
fn layout_blob(dir: &Path, descriptor: &Descriptor) -> Result<Blob, LayoutError> {
    let hex = sha256_hex(&descriptor.digest).ok_or_else(|| {
        LayoutError(format!(
            "digest {:?} is not sha256:<64 lowercase hex digits> (the only algorithm served)",
            descriptor.digest
        ))
    })?;
    let path = dir.join("blobs").join("sha256").join(hex);
    let len = std::fs::metadata(&path)
        .map_err(|e| {
            LayoutError(format!(
                "blob {} is missing ({}: {e})",
                descriptor.digest,
                path.display()
            ))
        })?
        .len();
    if len != descriptor.size {
        return Err(LayoutError(format!(
            "blob {} has {len} bytes, its descriptor says {}",
            descriptor.digest, descriptor.size
        )));
    }
    Ok(Blob { path, len })
}

/// Adds a manifest or index and everything it references. Children of an index that are missing (a
/// layout with some platforms only) are skipped unless none is present.
fn add_manifest(
    dir: &Path,
    descriptor: &Descriptor,
    loaded: &mut Loaded,
    top: bool,
) -> Result<(), LayoutError> {
    let blob = layout_blob(dir, descriptor)?;
    let bytes = read_small(&blob.path)?;
    check_digest_bytes(&bytes, &descriptor.digest)?;
    let json: ManifestJson = serde_json::from_slice(&bytes)
        .map_err(|e| LayoutError(format!("manifest {} is not valid: {e}", descriptor.digest)))?;
    let media_type = json
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| descriptor.media_type.clone());
    if let Some(children) = &json.manifests {
        let mut added = 0;
        for child in children {
            match add_manifest(dir, child, loaded, false) {
                Ok(()) => added += 1,
                Err(err) => tracing::warn!(index = %descriptor.digest, "skipping an index entry: {}", err.0),
            }
        }
        if added == 0 {
            return Err(LayoutError(format!(
                "index {} references no manifest that the layout holds",
                descriptor.digest
            )));
        }
    } else if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST || json.config.is_some() {
        let config = json
            .config
            .as_ref()
            .ok_or_else(|| LayoutError(format!("manifest {} has no config", descriptor.digest)))?;
        for blob_descriptor in std::iter::once(config).chain(&json.layers) {
            let blob = layout_blob(dir, blob_descriptor)?;
            check_digest_file(&blob.path, &blob_descriptor.digest)?;
            loaded.blobs.insert(blob_descriptor.digest.clone(), blob);
        }
    } else if top || (media_type != OCI_INDEX && media_type != DOCKER_LIST) {
        return Err(LayoutError(format!(
            "{} has media type {media_type:?}, neither an image manifest nor an index",
            descriptor.digest
        )));
    }
    loaded.manifests.insert(
        descriptor.digest.clone(),
        Manifest {
            media_type,
            bytes: Bytes::from(bytes),
        },
    );
    Ok(())
}

fn check_digest_bytes(bytes: &[u8], digest: &str) -> Result<(), LayoutError> {
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if actual == digest {
        Ok(())
    } else {
        Err(LayoutError(format!(
            "blob {digest} has the content of {actual}; the layout is corrupt"
        )))
    }
}

/// Hashes a file without holding it in memory.
fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn check_digest_file(path: &Path, digest: &str) -> Result<(), LayoutError> {
    let actual =
        file_sha256(path).map_err(|e| LayoutError(format!("cannot read {}: {e}", path.display())))?;
    if actual == digest {
        Ok(())
    } else {
        Err(LayoutError(format!(
            "blob {digest} has the content of {actual}; the layout is corrupt"
        )))
    }
}

/// A path from a docker archive's manifest, inside the archive's directory.
fn archive_path(dir: &Path, relative: &str) -> Result<PathBuf, LayoutError> {
    let path = Path::new(relative);
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(dir.join(path))
    } else {
        Err(LayoutError(format!(
            "manifest.json names {relative:?}, which is not a plain path inside the archive"
        )))
    }
}

/// A blob of a docker archive: its digest is computed (the archive names files, not digests).
fn archive_blob(dir: &Path, relative: &str) -> Result<(String, Blob), LayoutError> {
    let path = archive_path(dir, relative)?;
    let len = std::fs::metadata(&path)
        .map_err(|e| LayoutError(format!("{relative} is missing from the archive: {e}")))?
        .len();
    let digest = file_sha256(&path).map_err(|e| LayoutError(format!("cannot read {relative}: {e}")))?;
    Ok((digest, Blob { path, len }))
}

/// A legacy docker archive (`docker save` before 25): an OCI manifest is made for it, with the config and
/// layer files as blobs.
fn load_docker_archive(dir: &Path, tag: &str) -> Result<Loaded, LayoutError> {
    let entries: Vec<DockerArchiveEntry> = read_json(&dir.join("manifest.json"))?;
    if entries.is_empty() {
        return Err(LayoutError("its manifest.json lists no images".into()));
    }
    let entry = select(&entries, tag, |e| e.repo_tags.clone().unwrap_or_default())?;
    let mut blobs = HashMap::new();
    let (config_digest, config) = archive_blob(dir, &entry.config)?;
    let config_json = serde_json::json!({
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": config_digest,
        "size": config.len,
    });
    blobs.insert(config_digest, config);
    let mut layers = Vec::new();
    for relative in &entry.layers {
        let (digest, blob) = archive_blob(dir, relative)?;
        let mut magic = [0u8; 2];
        let gzip = File::open(&blob.path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == [0x1f, 0x8b];
        let media_type = if gzip {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": blob.len}));
        blobs.insert(digest, blob);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_json,
        "layers": layers,
    });
    let bytes = Bytes::from(manifest.to_string());
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    Ok(Loaded {
        digest: digest.clone(),
        manifests: HashMap::from([(
            digest,
            Manifest {
                media_type: OCI_MANIFEST.into(),
                bytes,
            },
        )]),
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_follow_the_distribution_grammar() {
        assert_eq!(
            parse_reference("linux/oneagent:1.277.0").unwrap(),
            ("linux/oneagent".into(), "1.277.0".into())
        );
        assert!(parse_reference("linux/oneagent").is_err());
        assert!(parse_reference("Linux/oneagent:1").is_err());
        assert!(parse_reference("linux//oneagent:1").is_err());
        assert!(parse_reference("linux/../x:1").is_err());
        assert!(parse_reference("a:.x").is_err());
        assert!(valid_name("a-b__c.d/e"));
        assert!(!valid_name("a-"));
    }

    #[test]
    fn digests_are_sha256_hex() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(sha256_hex(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(sha256_hex("sha256:../../etc"), None);
        assert_eq!(sha256_hex(&format!("sha512:{hex}")), None);
    }

    #[test]
    fn index_names_carry_tags() {
        assert!(names_tag("1.2.3", "1.2.3"));
        assert!(names_tag("fake-oneagent:1.2.3", "1.2.3"));
        assert!(names_tag("localhost:5000/fake-oneagent:1.2.3", "1.2.3"));
        assert!(!names_tag("fake-oneagent:1.2.4", "1.2.3"));
    }
}
