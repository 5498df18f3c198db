//! Test support: writes OCI image layouts for [`crate::FakeTenant::add_image`]: blobs, image configs,
//! manifests with any layer media types, the index naming them by tag, and layer tars whose entries are
//! written exactly as given (also the hostile ones a well-behaved tar writer refuses: `..`, absolute
//! paths, links that lead outside).

use std::io::{self, Write as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Media type of a plain tar layer (OCI).
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed tar layer (OCI).
pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a gzip-compressed tar layer (docker).
pub const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Media type of a zstd-compressed tar layer (OCI).
pub const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// `<hex>` of the sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Writes `blobs/sha256/<hex>` below `dir` and returns the digest.
pub fn write_blob(dir: &Path, bytes: &[u8]) -> io::Result<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(sha256_hex(bytes)), bytes)?;
    Ok(digest(bytes))
}

/// The image config of an image with the given layer diff ids.
pub fn image_config(version: &str, diff_ids: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/opt/oneagent"], "Labels": {"com.dynatrace.build-version": version}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

/// Writes an image manifest for a config and layers `(media type, digest, size)` already in `dir`;
/// returns its bytes and digest.
pub fn write_manifest(
    dir: &Path,
    config_digest: &str,
    config_len: usize,
    layers: &[(&str, String, u64)],
) -> io::Result<(Vec<u8>, String)> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(media_type, digest, size)| {
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_len},
        "layers": layers,
    })
    .to_string()
    .into_bytes();
    let digest = write_blob(dir, &manifest)?;
    Ok((manifest, digest))
}

/// Writes `index.json` and `oci-layout`, naming each manifest `(tag, bytes, digest)` with its tag.
pub fn write_index(dir: &Path, manifests: &[(&str, &[u8], &str)]) -> io::Result<()> {
    let manifests: Vec<_> = manifests
        .iter()
        .map(|(tag, bytes, digest)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            })
        })
        .collect();
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": manifests}).to_string(),
    )?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
}

/// One layer: its media type and its blob.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The media type written in the manifest.
    pub media_type: &'static str,
    /// The blob.
    pub blob: Vec<u8>,
}

impl Layer {
    /// A gzip-compressed tar layer of `entries`.
    pub fn gzip(entries: &[TarEntry]) -> io::Result<Self> {
        Ok(Self {
            media_type: TAR_GZIP,
            blob: gzip(&tar(entries)?)?,
        })
    }

    /// A plain tar layer of `entries`.
    pub fn tar(entries: &[TarEntry]) -> io::Result<Self> {
        Ok(Self {
            media_type: TAR,
            blob: tar(entries)?,
        })
    }
}

/// What [`write_image`] wrote.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest's digest (what the tag resolves to).
    pub manifest_digest: String,
    /// The layers' digests, in order.
    pub layer_digests: Vec<String>,
}

/// An OCI image layout in `dir` with one image tagged `tag` of `layers`.
pub fn write_image(dir: &Path, tag: &str, layers: &[Layer]) -> io::Result<BuiltImage> {
    let (manifest, built) = write_image_blobs(dir, tag, layers)?;
    write_index(dir, &[(tag, &manifest, &built.manifest_digest)])?;
    Ok(built)
}

/// Writes the blobs of one image (its layers, config and manifest) into `dir`; returns the manifest's
/// bytes and what was built. The index naming it is the caller's.
fn write_image_blobs(dir: &Path, tag: &str, layers: &[Layer]) -> io::Result<(Vec<u8>, BuiltImage)> {
    let mut described = Vec::new();
    let mut layer_digests = Vec::new();
    for layer in layers {
        let digest = write_blob(dir, &layer.blob)?;
        described.push((layer.media_type, digest.clone(), layer.blob.len() as u64));
        layer_digests.push(digest);
    }
    let diff_ids: Vec<&str> = layer_digests.iter().map(String::as_str).collect();
    let config = image_config(tag, &diff_ids);
    let config_digest = write_blob(dir, &config)?;
    let (manifest, manifest_digest) = write_manifest(dir, &config_digest, config.len(), &described)?;
    Ok((
        manifest,
        BuiltImage {
            manifest_digest,
            layer_digests,
        },
    ))
}

/// An OCI image layout in `dir` whose tag `tag` names an image index with one linux image per
/// `(architecture, layers)` (Go's names: `amd64`, `arm64`); returns the index's digest and the images.
pub fn write_multi_platform_image(
    dir: &Path,
    tag: &str,
    platforms: &[(&str, Vec<Layer>)],
) -> io::Result<(String, Vec<BuiltImage>)> {
    let mut entries = Vec::new();
    let mut built = Vec::new();
    for (architecture, layers) in platforms {
        let (manifest, image) = write_image_blobs(dir, tag, layers)?;
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.manifest_digest,
            "size": manifest.len(),
            "platform": {"os": "linux", "architecture": architecture},
        }));
        built.push(image);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string()
    .into_bytes();
    let index_digest = write_blob(dir, &index)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }]})
        .to_string(),
    )?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok((index_digest, built))
}

/// A code-modules image for benchmarks, written without holding it in memory: one gzip tar layer with
/// the agent of `version` under `opt/dynatrace/oneagent/` and `data_mib` MiB of data files (4 MiB each,
/// compressing about 2:1 like binaries), tagged `tag`.
pub fn write_large_code_module_image(
    dir: &Path,
    tag: &str,
    version: &str,
    data_mib: u64,
) -> io::Result<BuiltImage> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let partial = dir.join("layer.partial");
    let file = HashingWriter {
        inner: std::io::BufWriter::new(std::fs::File::create(&partial)?),
        hasher: Sha256::new(),
        len: 0,
    };
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    let mut append = |name: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, format!("opt/dynatrace/oneagent/{name}"), data)
    };
    append(
        &format!("agent/bin/{version}/oneagentutil"),
        0o755,
        b"#!/bin/sh\n",
    )?;
    append(
        "agent/lib64/liboneagentproc.so",
        0o755,
        b"\x7fELF the agent library",
    )?;
    append("agent/conf/ruxitagentproc.conf", 0o644, b"[general]\nkey value\n")?;
    // 1 MiB of 16 symbols (4 bits of entropy a byte), four times per file: gzip's 32 KiB window sees
    // no repetition.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let block: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"0123456789abcdef"[(state & 15) as usize]
        })
        .collect();
    let data: Vec<u8> = block.repeat(4);
    for i in 0..data_mib.div_ceil(4) {
        append(&format!("agent/data/{i:05}.bin"), 0o644, &data)?;
    }
    let mut file = builder.into_inner()?.finish()?;
    file.flush()?;
    let (len, hex) = (file.len, hex::encode(file.hasher.finalize()));
    let layer_digest = format!("sha256:{hex}");
    std::fs::rename(&partial, dir.join("blobs/sha256").join(&hex))?;
    let config = image_config(tag, &[&layer_digest]);
    let config_digest = write_blob(dir, &config)?;
    let (manifest, manifest_digest) = write_manifest(
        dir,
        &config_digest,
        config.len(),
        &[(TAR_GZIP, layer_digest.clone(), len)],
    )?;
    write_index(dir, &[(tag, &manifest, &manifest_digest)])?;
    Ok(BuiltImage {
        manifest_digest,
        layer_digests: vec![layer_digest],
    })
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One tar entry, its name written as given.
#[derive(Debug, Clone)]
pub enum TarEntry {
    /// A regular file.
    File {
        /// The name.
        name: String,
        /// Its mode.
        mode: u32,
        /// Its content.
        content: Vec<u8>,
    },
    /// A directory.
    Dir(String),
    /// A symlink `(name, target)`.
    Symlink(String, String),
    /// A hard link `(name, target)`.
    HardLink(String, String),
}

impl TarEntry {
    /// A regular file with mode 0644.
    pub fn file(name: &str, content: &[u8]) -> Self {
        Self::File {
            name: name.to_owned(),
            mode: 0o644,
            content: content.to_vec(),
        }
    }
}

/// A tar of `entries`, names and link targets written as given (at most 100 bytes each).
pub fn tar(entries: &[TarEntry]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        let (name, data): (&str, &[u8]) = match entry {
            TarEntry::File { name, mode, content } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(content.len() as u64);
                (name, content)
            }
            TarEntry::Dir(name) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                (name, &[])
            }
            TarEntry::Symlink(name, target) | TarEntry::HardLink(name, target) => {
                header.set_entry_type(if matches!(entry, TarEntry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_mode(0o777);
                header.set_size(0);
                copy_name(&mut header.as_old_mut().linkname, target)?;
                (name, &[])
            }
        };
        copy_name(&mut header.as_old_mut().name, name)?;
        header.set_cksum();
        builder.append(&header, data)?;
    }
    builder.into_inner()
}

fn copy_name(field: &mut [u8; 100], name: &str) -> io::Result<()> {
    if name.len() > field.len() {
        return Err(io::Error::other(format!(
            "tar name {name:?} is longer than 100 bytes"
        )));
    }
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}
