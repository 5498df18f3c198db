//! Installs the code module from a container image (`codeModulesImage`): resolves the reference to a
//! digest, pulls the manifest (an index picks linux and this machine's architecture), and streams each
//! layer from the registry into a directory, in constant memory: the blob's chunks go through a channel
//! to a blocking task that checks its sha256 while it gunzips and untars it.
//!
//! Only the image's `opt/dynatrace/oneagent/` is the code module; it is written with that prefix
//! stripped, the rest of the image is skipped. OCI whiteouts of later layers delete what earlier layers
//! wrote. Safety is the zip path's: every entry passes [`pure_code_module::archive`]'s rules and limits
//! (counted over all layers), files are created with `O_EXCL | O_NOFOLLOW`, hard links must point into
//! the code module, and symlinks are created only after every layer is written and checked with
//! [`resolve_link`], so no write passes through a link. The caller gives an empty directory (a staging
//! directory) and discards it on error.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufReader, Read, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt as _;
use io_tenant_client::DownloadFailure;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use pure_code_module::archive::{Budget, EntryError, Limits, Problem, resolve_link};
use pure_code_module::image::{
    CODE_MODULE_PREFIX, Compression, Credentials, ImageEntry, REQUIRED_DIR, UnsupportedLayer,
    hard_link_target, image_entry, layer_compression,
};
use pure_code_module::proc_conf;

use crate::unpack::{self, BUFFER, ChannelReader, ensure_dirs, in_conf};
use crate::{InstallError, io_error, set_mode};

/// How to reach the registry.
#[derive(Clone, Default)]
pub struct RegistrySettings {
    /// Basic credentials (from the pull Secret); `None`: anonymous.
    pub credentials: Option<Credentials>,
    /// PEM certificates that replace the system roots (`trustedCAs`), as for the environment's API.
    pub trusted_cas_pem: Option<String>,
    /// Proxy URL for HTTPS.
    pub proxy: Option<String>,
    /// Hosts that bypass the proxy.
    pub no_proxy: Option<String>,
}

/// Why an image could not be installed. Nothing of it is left once the caller removes its directory.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error(
        "{image:?} is not an image reference ({reason}); write it as <registry>/<repository>:<tag> or @sha256:<digest>"
    )]
    Reference {
        /// The image as written.
        image: String,
        /// The parser's reason.
        reason: String,
    },
    /// The registry refused the credentials (401) or asked for others.
    #[error("registry {registry} refused access to image {image} (unauthorized: {reason})")]
    Unauthorized {
        /// The image.
        image: String,
        /// The registry host.
        registry: String,
        /// What the client said.
        reason: String,
    },
    /// Another registry failure (unreachable, not found, TLS, a manifest it cannot read).
    #[error("cannot pull image {image}: {reason}")]
    Registry {
        /// The image.
        image: String,
        /// What failed.
        reason: String,
    },
    /// A layer cannot be unpacked by its media type.
    #[error("image {image}: {source}")]
    Unsupported {
        /// The image.
        image: String,
        /// The layer.
        source: UnsupportedLayer,
    },
    /// A layer was refused or could not be written.
    #[error("image {image}, layer {digest}: {source}")]
    Layer {
        /// The image.
        image: String,
        /// The layer's digest.
        digest: String,
        /// Why.
        source: Box<InstallError>,
    },
    /// The image does not hold a code module.
    #[error("image {image} is not a code-modules image: it has no /{CODE_MODULE_PREFIX}/{what}")]
    Incomplete {
        /// The image.
        image: String,
        /// What it lacks below the prefix.
        what: String,
    },
}

impl ImageError {
    /// Whether the registry refused the credentials: the pull Secret is to blame.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Self::Unauthorized { .. })
    }
}

/// What was installed from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledImage {
    /// The digest of the image manifest that was unpacked (the platform's, below an index).
    pub manifest_digest: String,
    /// The agent version directory under `agent/bin`.
    pub version: String,
    /// Layers unpacked.
    pub layers: usize,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Entries written.
    pub entries: u64,
    /// Bytes written.
    pub unpacked_bytes: u64,
}

/// One image in one registry, with its client.
pub struct ImageSource {
    image: String,
    reference: Reference,
    client: Client,
    auth: RegistryAuth,
}

impl ImageSource {
    /// The registry host (`host[:port]`) of `image`, to pick its credentials before the source is built.
    pub fn registry_of(image: &str) -> Result<String, ImageError> {
        Ok(parse(image)?.resolve_registry().to_owned())
    }

    /// A source for `image` (as the DynaKube writes it); always HTTPS.
    pub fn new(image: &str, settings: RegistrySettings) -> Result<Self, ImageError> {
        let reference = parse(image)?;
        // One crypto provider for the whole process (the tenant client and kube-rs use ring too).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = ClientConfig {
            protocol: ClientProtocol::Https,
            connect_timeout: Some(Duration::from_secs(10)),
            // A stalled blob fails instead of hanging the install.
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("dynatrace-operator/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        if let Some(pem) = settings.trusted_cas_pem.filter(|p| !p.trim().is_empty()) {
            config.tls_certs_only = vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.into_bytes(),
            }];
        }
        if let Some(proxy) = settings.proxy.filter(|p| !p.trim().is_empty()) {
            config.https_proxy = Some(proxy.clone());
            config.http_proxy = Some(proxy);
            config.no_proxy = settings.no_proxy;
        }
        let client = Client::try_from(config).map_err(|e| ImageError::Registry {
            image: image.to_owned(),
            reason: format!("cannot build the registry client (check trustedCAs and the proxy): {e}"),
        })?;
        let auth = match settings.credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            image: image.trim().to_owned(),
            reference,
            client,
            auth,
        })
    }

    /// The image as written.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The registry host (`host[:port]`).
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The digest written in the reference (`@sha256:...`), which needs no registry call.
    pub fn pinned_digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// The digest of the manifest or index the reference names: as written, else one HEAD (or GET) of
    /// the tag's manifest.
    pub async fn resolve(&self) -> Result<String, ImageError> {
        if let Some(digest) = self.pinned_digest() {
            return Ok(digest.to_owned());
        }
        self.client
            .fetch_manifest_digest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.registry_error(e))
    }

    fn registry_error(&self, error: OciDistributionError) -> ImageError {
        match error {
            OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
                image: self.image.clone(),
                registry: self.registry().to_owned(),
                reason: format!("401 from {url}"),
            },
            OciDistributionError::AuthenticationFailure(reason) => ImageError::Unauthorized {
                image: self.image.clone(),
                registry: self.registry().to_owned(),
                reason,
            },
            OciDistributionError::ServerError { code: 401, url, .. } => ImageError::Unauthorized {
                image: self.image.clone(),
                registry: self.registry().to_owned(),
                reason: format!("401 from {url}"),
            },
            other => ImageError::Registry {
                image: self.image.clone(),
                reason: error_chain(&other),
            },
        }
    }

    /// Pulls the image `digest` (from [`ImageSource::resolve`]) and installs its code module into
    /// `target` (created; it must not exist). On error `target` holds a partial tree: the caller
    /// removes it.
    pub async fn install(
        &self,
        digest: &str,
        target: &Path,
        limits: Limits,
    ) -> Result<InstalledImage, ImageError> {
        let pinned = self.reference.clone_with_digest(digest.to_owned());
        let (manifest, manifest_digest, _) = self
            .client
            .pull_image_manifest_and_list_digest(&pinned, &self.auth)
            .await
            .map_err(|e| self.registry_error(e))?;
        // Every layer's media type first: nothing is downloaded for an image that cannot be installed.
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for layer in &manifest.layers {
            let compression = layer_compression(&layer.media_type, &layer.digest).map_err(|source| {
                ImageError::Unsupported {
                    image: self.image.clone(),
                    source,
                }
            })?;
            layers.push((layer.clone(), compression));
        }
        tokio::fs::create_dir_all(target)
            .await
            .map_err(|e| self.layer_error("", io_error(target)(e)))?;
        let mut tree = Tree::new(target.to_owned(), limits);
        let mut downloaded = 0u64;
        for (layer, compression) in &layers {
            let (back, bytes) = self.apply_layer(&pinned, tree, layer, *compression).await?;
            tree = back;
            downloaded += bytes;
        }
        let image = self.image.clone();
        let finished = tokio::task::spawn_blocking(move || tree.finish(&image))
            .await
            .map_err(|e| ImageError::Registry {
                image: self.image.clone(),
                reason: format!("the unpacking task failed: {e}"),
            })??;
        Ok(InstalledImage {
            manifest_digest,
            version: finished.version,
            layers: layers.len(),
            downloaded_bytes: downloaded,
            entries: finished.entries,
            unpacked_bytes: finished.bytes,
        })
    }

    fn layer_error(&self, digest: &str, source: InstallError) -> ImageError {
        ImageError::Layer {
            image: self.image.clone(),
            digest: digest.to_owned(),
            source: Box::new(source),
        }
    }

    /// Streams one layer into the tree; returns the tree and the bytes downloaded.
    async fn apply_layer(
        &self,
        pinned: &Reference,
        mut tree: Tree,
        layer: &OciDescriptor,
        compression: Compression,
    ) -> Result<(Tree, u64), ImageError> {
        let sized = self
            .client
            .pull_blob_stream(pinned, layer)
            .await
            .map_err(|e| self.registry_error(e))?;
        let (sender, receiver) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let descriptor = layer.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            let result = tree.apply_layer(ChannelReader::new(receiver), compression, &descriptor);
            (tree, result)
        });
        let mut body = sized.stream;
        let mut received = 0u64;
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        while let Some(chunk) = body.next().await {
            if chunk.is_err() && received >= size {
                // The client's own digest check, after the last byte: the unpacker's check names the
                // mismatch (a broken connection it is not).
                break;
            }
            let chunk = chunk.map_err(|e| DownloadFailure::Interrupted {
                received,
                reason: e.to_string(),
            });
            let failed = chunk.is_err();
            if let Ok(bytes) = &chunk {
                received += bytes.len() as u64;
            }
            if sender.send(chunk).await.is_err() || failed {
                break;
            }
        }
        drop(sender);
        let (tree, result) = unpacker.await.map_err(|e| ImageError::Registry {
            image: self.image.clone(),
            reason: format!("the unpacking task failed: {e}"),
        })?;
        result.map_err(|e| self.layer_error(&layer.digest, e))?;
        Ok((tree, received))
    }
}

fn parse(image: &str) -> Result<Reference, ImageError> {
    image
        .trim()
        .parse()
        .map_err(|e: oci_client::ParseError| ImageError::Reference {
            image: image.to_owned(),
            reason: e.to_string(),
        })
}

/// Channel depth between the network and the unpacking thread (as for the zip).
const CHANNEL_CHUNKS: usize = 16;

/// The source chain of an error, `: `-separated (reqwest's top level says little: the cause is below).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A reader that counts the bytes it hands out (the compressed bytes of a layer, for the ratio limit).
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// What the finished tree holds.
struct Finished {
    version: String,
    entries: u64,
    bytes: u64,
}

/// The code module being written, across layers.
struct Tree {
    root: PathBuf,
    limits: Limits,
    /// Symlinks (path → target), created after the last layer.
    links: BTreeMap<String, String>,
    entries: u64,
    bytes: u64,
}

fn from_failure(failure: unpack::Failure) -> InstallError {
    match failure {
        unpack::Failure::Install(error) => error,
        unpack::Failure::Transfer(failure) => InstallError::Archive(failure.to_string()),
    }
}

fn entry_error(name: &str, problem: Problem) -> InstallError {
    EntryError {
        entry: name.to_owned(),
        problem,
    }
    .into()
}

impl Tree {
    fn new(root: PathBuf, limits: Limits) -> Self {
        Self {
            root,
            limits,
            links: BTreeMap::new(),
            entries: 0,
            bytes: 0,
        }
    }

    /// Reads one layer blob from `reader`, writes its entries and checks its size and sha256 against
    /// `layer`. A failed transfer or a digest mismatch is reported as such, before what it did to the
    /// tar stream.
    fn apply_layer(
        &mut self,
        reader: ChannelReader,
        compression: Compression,
        layer: &OciDescriptor,
    ) -> Result<(), InstallError> {
        let Some(expected) = layer.digest.strip_prefix("sha256:") else {
            return Err(InstallError::Archive(format!(
                "layer {} has no sha256 digest; only sha256 is supported",
                layer.digest
            )));
        };
        let compressed = Rc::new(Cell::new(0u64));
        let mut input = BufReader::with_capacity(
            BUFFER,
            Counting {
                inner: reader,
                count: compressed.clone(),
            },
        );
        let result = {
            let mut decoder: Box<dyn Read + '_> = match compression {
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut input)),
                Compression::None => Box::new(&mut input),
            };
            self.write_entries(&mut decoder, compression, &compressed)
        };
        // A refused entry stops the download; otherwise the rest of the blob (the tar's padding, the
        // gzip trailer, or what a broken stream left) is read so the digest covers every byte.
        if !matches!(result, Err(InstallError::Entry(_))) {
            let _ = std::io::copy(&mut input, &mut std::io::sink());
        }
        let reader = input.into_inner().inner;
        if let Some(failure) = reader.failure() {
            return Err(InstallError::Transfer {
                source_name: format!("the registry (layer {})", layer.digest),
                failure: failure.clone(),
            });
        }
        if matches!(result, Err(InstallError::Entry(_))) {
            return result;
        }
        let (read, actual) = reader.finish();
        let size = u64::try_from(layer.size).unwrap_or(0);
        if read != size {
            return Err(InstallError::Transfer {
                source_name: format!("the registry (layer {})", layer.digest),
                failure: DownloadFailure::Incomplete {
                    expected: size,
                    received: read,
                },
            });
        }
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(InstallError::Transfer {
                source_name: format!("the registry (layer {})", layer.digest),
                failure: DownloadFailure::ChecksumMismatch {
                    expected: expected.to_owned(),
                    actual,
                },
            });
        }
        result
    }

    fn write_entries(
        &mut self,
        decoder: &mut dyn Read,
        compression: Compression,
        compressed: &Rc<Cell<u64>>,
    ) -> Result<(), InstallError> {
        // This layer's budget: what earlier layers used is taken off the limits.
        let mut budget = Budget::new(Limits {
            max_entries: self.limits.max_entries.saturating_sub(self.entries),
            max_total_bytes: self.limits.max_total_bytes.saturating_sub(self.bytes),
            ..self.limits
        });
        // Paths this layer wrote (and their parents): its own whiteouts do not delete them.
        let mut this_layer: HashSet<String> = HashSet::new();
        let mut buffer = vec![0u8; BUFFER];
        let mut archive = tar::Archive::new(decoder);
        let entries = archive
            .entries()
            .map_err(|e| InstallError::Archive(format!("not a tar stream: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| InstallError::Archive(format!("the tar stream is broken: {e}")))?;
            let name_bytes = entry.path_bytes().into_owned();
            let Ok(name) = String::from_utf8(name_bytes) else {
                return Err(entry_error(
                    &String::from_utf8_lossy(&entry.path_bytes()),
                    Problem::BadCharacter,
                ));
            };
            let rel = match image_entry(&name).map_err(|p| entry_error(&name, p))? {
                ImageEntry::Outside | ImageEntry::Root => continue,
                ImageEntry::Whiteout(rel) => {
                    if !this_layer.contains(&rel) {
                        self.remove(&rel)?;
                    }
                    continue;
                }
                ImageEntry::Opaque(dir) => {
                    self.empty_dir(&dir, &this_layer)?;
                    continue;
                }
                ImageEntry::Entry(rel) => rel,
            };
            let kind = entry.header().entry_type();
            let accepted = budget.begin(
                if kind.is_dir() {
                    format!("{rel}/")
                } else {
                    rel.clone()
                }
                .as_str(),
            );
            let accepted = accepted.map_err(|e| entry_error(&name, e.problem))?;
            self.entries += 1;
            // Writing below a symlink would go through it once links exist.
            let mut prefix = String::new();
            for part in rel.split('/') {
                if !prefix.is_empty() {
                    if self.links.contains_key(&prefix) {
                        return Err(entry_error(&name, Problem::BelowFile(prefix)));
                    }
                    prefix.push('/');
                }
                prefix.push_str(part);
            }
            let mut parent = String::new();
            for part in rel.split('/') {
                this_layer.insert(if parent.is_empty() {
                    part.to_owned()
                } else {
                    format!("{parent}/{part}")
                });
                if !parent.is_empty() {
                    parent.push('/');
                }
                parent.push_str(part);
            }
            let (dir, _) = rel.rsplit_once('/').unwrap_or(("", ""));
            ensure_dirs(&self.root, dir).map_err(from_failure)?;
            let path = self.root.join(&accepted.path);
            if kind.is_dir() {
                self.replace_non_dir(&rel)?;
                ensure_dirs(&self.root, &rel).map_err(from_failure)?;
                continue;
            }
            self.remove(&rel)?;
            // A link's target as UTF-8 text (what the code module's names are).
            let link_target = |entry: &tar::Entry<'_, _>| {
                entry
                    .link_name()
                    .ok()
                    .flatten()
                    .and_then(|t| t.to_str().map(str::to_owned))
                    .ok_or_else(|| entry_error(&name, Problem::BadCharacter))
            };
            if kind.is_symlink() {
                let target = link_target(&entry)?;
                self.links.insert(rel, target);
            } else if kind.is_hard_link() {
                let target = link_target(&entry)?;
                let target = hard_link_target(&target).map_err(|p| entry_error(&name, p))?;
                if self.links.contains_key(&target) {
                    return Err(InstallError::Archive(format!(
                        "entry {name:?} is a hard link to the symlink {target:?}"
                    )));
                }
                let source = self.root.join(&target);
                std::fs::hard_link(&source, &path).map_err(|e| {
                    InstallError::Archive(format!(
                        "entry {name:?} is a hard link to {target:?}, which the image does not hold before it: {e}"
                    ))
                })?;
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                let size = entry.size();
                budget
                    .check_declared(&name, size, size)
                    .map_err(InstallError::from)?;
                let conf = in_conf(&rel);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
                    .map_err(io_error(&path))?;
                let mut written = 0u64;
                loop {
                    let n = entry
                        .read(&mut buffer)
                        .map_err(|e| InstallError::Archive(format!("entry {name:?}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    let consumed = match compression {
                        Compression::Gzip => compressed.get(),
                        Compression::None => written,
                    };
                    budget
                        .check_written(&name, written, n as u64, consumed, size)
                        .map_err(InstallError::from)?;
                    file.write_all(&buffer[..n]).map_err(io_error(&path))?;
                }
                if written != size {
                    return Err(InstallError::Archive(format!(
                        "entry {name:?} holds {written} bytes, its header says {size}"
                    )));
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                // Permission bits only (no setuid, setgid or sticky), readable by every user.
                let wanted = if conf {
                    0o666
                } else if mode & 0o111 != 0 {
                    (mode & 0o777) | 0o644
                } else {
                    0o644
                };
                set_mode(&path, wanted)?;
            } else {
                return Err(InstallError::Archive(format!(
                    "entry {name:?} is a {kind:?} entry (a device, FIFO or sparse file), which a code module \
                     does not hold"
                )));
            }
        }
        self.bytes += budget.total();
        Ok(())
    }

    /// Deletes `rel` as the layers below left it (a whiteout, or an entry replaced by this layer).
    fn remove(&mut self, rel: &str) -> Result<(), InstallError> {
        let below = format!("{rel}/");
        self.links
            .retain(|path, _| path != rel && !path.starts_with(&below));
        let path = self.root.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path).map_err(io_error(&path)),
            Ok(_) => std::fs::remove_file(&path).map_err(io_error(&path)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    /// A directory entry where a lower layer left a file or symlink: the file goes.
    fn replace_non_dir(&mut self, rel: &str) -> Result<(), InstallError> {
        self.links.remove(rel);
        let path = self.root.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_dir() => std::fs::remove_file(&path).map_err(io_error(&path)),
            _ => Ok(()),
        }
    }

    /// An opaque whiteout: `dir` loses what earlier layers put in it; what this layer wrote stays.
    fn empty_dir(&mut self, dir: &str, this_layer: &HashSet<String>) -> Result<(), InstallError> {
        let join = |name: &str| {
            if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            }
        };
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|path| {
                (dir.is_empty() || path.starts_with(&format!("{dir}/"))) && !this_layer.contains(*path)
            })
            .cloned()
            .collect();
        for path in stale {
            self.links.remove(&path);
        }
        let path = self.root.join(dir);
        let Ok(read) = std::fs::read_dir(&path) else {
            return Ok(());
        };
        let children: Vec<(String, bool)> = read
            .filter_map(Result::ok)
            .map(|e| {
                (
                    join(&e.file_name().to_string_lossy()),
                    e.file_type().is_ok_and(|t| t.is_dir()),
                )
            })
            .collect();
        for (child, is_dir) in children {
            if !this_layer.contains(&child) {
                self.remove(&child)?;
            } else if is_dir {
                self.empty_dir(&child, this_layer)?;
            }
        }
        Ok(())
    }

    /// After the last layer: the symlinks (each checked against all others), the agent's layout, and
    /// `agent/bin/current`.
    fn finish(self, image: &str) -> Result<Finished, ImageError> {
        let layer_error = |source: InstallError| ImageError::Layer {
            image: image.to_owned(),
            digest: "(all layers)".to_owned(),
            source: Box::new(source),
        };
        for (link, target) in &self.links {
            resolve_link(&self.links, link, target).map_err(|e| layer_error(e.into()))?;
        }
        for (link, target) in &self.links {
            let path = self.root.join(link);
            std::os::unix::fs::symlink(target, &path).map_err(|e| layer_error(io_error(&path)(e)))?;
        }
        let incomplete = |what: &str| ImageError::Incomplete {
            image: image.to_owned(),
            what: what.to_owned(),
        };
        if !std::fs::symlink_metadata(self.root.join(REQUIRED_DIR)).is_ok_and(|m| m.is_dir()) {
            return Err(incomplete(REQUIRED_DIR));
        }
        if !std::fs::symlink_metadata(self.root.join(proc_conf::CONF_FILE)).is_ok_and(|m| m.is_file()) {
            return Err(incomplete(proc_conf::CONF_FILE));
        }
        let version = crate::finish_tree(&self.root, None).map_err(|e| match e {
            InstallError::Incomplete(_) => incomplete("agent/bin/<version>"),
            other => layer_error(other),
        })?;
        Ok(Finished {
            version,
            entries: self.entries,
            bytes: self.bytes,
        })
    }
}
