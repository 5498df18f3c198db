//! The real node's sandbox image: `tools/images/pause.c` compiled static and packed as a docker-archive.
//!
//! Kept small and in one place on purpose: the general image builder (`cargo xtask image`) will replace it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use crate::tools::{cache_root, workspace_root};

/// The sandbox image's reference; the node's containerd is configured with it and it is never pulled.
pub const PAUSE_IMAGE: &str = "localhost/testkit/pause:1";

/// Path of the program inside [`PAUSE_IMAGE`]. Besides pausing it has a few test commands (see
/// `tools/images/pause.c`): `write FILE TEXT`, `cat FILE...`, `serve-file FILE`, `connect ENV_HOST PORT`.
pub const PAUSE_BINARY: &str = "/pause";

/// Builds (or finds in the cache) the pause image archive; returns its path.
pub fn pause_image_archive() -> anyhow::Result<PathBuf> {
    let source = workspace_root().join("tools/images/pause.c");
    let code = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
    let hash: String = Sha256::digest(&code)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = cache_root()?.join("images").join(format!("pause-{hash}"));
    let archive = dir.join("pause.tar");
    if archive.exists() {
        return Ok(archive);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let binary = dir.join("pause");
    let output = Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .map_err(|err| {
            anyhow::anyhow!("cannot run `cc` ({err}); install a C compiler and static libc (`apt-get install gcc libc6-dev`)")
        })?;
    if !output.status.success() {
        bail!(
            "`cc -static` of {} failed: {}; a static libc is needed (`apt-get install libc6-dev`)",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let program = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let partial = dir.join("pause.tar.partial");
    std::fs::write(&partial, docker_archive(PAUSE_IMAGE, PAUSE_BINARY, &program)?)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &archive).with_context(|| format!("writing {}", archive.display()))?;
    Ok(archive)
}

/// A docker-archive (what `docker save` writes) of a one-layer image holding one executable, which is
/// also the entrypoint. Reproducible: fixed times and owners.
pub fn docker_archive(reference: &str, path_in_image: &str, program: &[u8]) -> anyhow::Result<Vec<u8>> {
    let in_layer = path_in_image.trim_start_matches('/');
    let layer = tar_of(&[(in_layer, 0o755, program)])?;
    let layer_digest = hex_sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Entrypoint": [path_in_image], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "test-kit" }],
    });
    let config = serde_json::to_vec(&config).context("serializing the image config")?;
    let config_name = format!("{}.json", hex_sha256(&config));
    let layer_name = format!("{layer_digest}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": [layer_name],
    }]))
    .context("serializing the image manifest")?;
    tar_of(&[
        (&layer_name, 0o644, &layer),
        (&config_name, 0o644, &config),
        ("manifest.json", 0o644, &manifest),
    ])
}

fn tar_of(files: &[(&str, u32, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, mode, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, *data)
            .with_context(|| format!("adding {name} to an image tar"))?;
    }
    builder.into_inner().context("finishing an image tar")
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_archive_is_reproducible_and_names_its_parts() {
        let one = docker_archive("localhost/x:1", "/bin/x", b"program").unwrap();
        let two = docker_archive("localhost/x:1", "/bin/x", b"program").unwrap();
        assert_eq!(one, two);
        let mut archive = tar::Archive::new(one.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0].ends_with("/layer.tar") && names[1].ends_with(".json"),
            "{names:?}"
        );
        assert_eq!(names[2], "manifest.json");
    }
}
