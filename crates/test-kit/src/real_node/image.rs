//! The real node's sandbox image: the project's one pause program (`tools/images/pause.c`, compiled by
//! [`test_images::pause_program`]) in an OCI archive written by [`test_images::oci`], both cached under
//! `~/.cache/dynatrace-operator/images/pause-<hash of the source>/`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::tools::cache_root;

/// The sandbox image's repository; the node's containerd is configured with it and never pulls it.
const PAUSE_REPOSITORY: &str = "localhost/testkit/pause";
/// The sandbox image's tag.
const PAUSE_TAG: &str = "1";
/// The sandbox image's reference (`<repository>:<tag>`); the node's containerd is configured with it and it
/// is never pulled.
pub const PAUSE_IMAGE: &str = "localhost/testkit/pause:1";

/// Path of the program inside [`PAUSE_IMAGE`]. Besides pausing it has a few test commands (see
/// `tools/images/pause.c`): `write FILE TEXT`, `cat FILE...`, `serve-file FILE`, `connect ENV_HOST PORT`.
pub const PAUSE_BINARY: &str = test_images::PAUSE_PATH;

/// Builds (or finds in the cache) the pause image archive; returns its path.
pub fn pause_image_archive() -> anyhow::Result<PathBuf> {
    let program = test_images::pause_program(&cache_root()?.join("images"))?;
    let dir = program
        .parent()
        .with_context(|| format!("{} has no parent directory", program.display()))?;
    // Root, unlike Kubernetes' pause: tests also run it as a tool (`write`, `cat`) in their containers.
    let config = test_images::pause_image_config(PAUSE_REPOSITORY, PAUSE_TAG, None)?;
    let archive = test_images::write_pause_image(&config, &program, 0, &dir.join("pause.tar"))?;
    Ok(archive.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_repository_and_tag() {
        assert_eq!(PAUSE_IMAGE, format!("{PAUSE_REPOSITORY}:{PAUSE_TAG}"));
        assert_eq!(
            test_images::oci::normalized_reference(PAUSE_REPOSITORY, PAUSE_TAG),
            PAUSE_IMAGE,
            "containerd stores it under the name its config gives as sandbox_image"
        );
    }
}
