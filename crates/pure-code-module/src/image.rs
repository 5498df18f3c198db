//! Installing the code module from a container image (`codeModulesImage`), the decisions only: which layer
//! media types can be unpacked, which tar entries belong to the code module and where they go, OCI
//! whiteouts, and which credentials of a `kubernetes.io/dockerconfigjson` pull Secret apply to a registry.
//!
//! A code-module image carries the agent at `/opt/dynatrace/oneagent/agent/...`; only the subtree
//! [`CODE_MODULE_PREFIX`] is the code module, installed with the prefix stripped (so the tree looks like
//! the unpacked zip: `agent/...`). Every entry name of every layer, inside the prefix or not, must pass
//! [`crate::archive::entry_path`]'s rules.

use base64::Engine as _;

use crate::archive::{Problem, entry_path};

/// The directory of the image that is the code module (without leading or trailing `/`).
pub const CODE_MODULE_PREFIX: &str = "opt/dynatrace/oneagent";
/// What an image must hold below [`CODE_MODULE_PREFIX`].
pub const REQUIRED_DIR: &str = "agent";
/// Prefix of a whiteout file name: `.wh.<name>` deletes `<name>` of the layers below.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque whiteout: the directory holding it loses what the layers below put in it.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// A gzip-compressed tar.
    Gzip,
}

/// A layer media type the installer cannot unpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "layer {digest} has media type {media_type:?}, which cannot be installed (supported: docker and OCI \
     tar+gzip and plain tar layers); rebuild the image with gzip-compressed layers"
)]
pub struct UnsupportedLayer {
    /// The layer's digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
}

/// The compression of a layer with `media_type`, or why it cannot be unpacked (zstd, foreign or
/// non-distributable layers, anything unknown).
pub fn layer_compression(media_type: &str, digest: &str) -> Result<Compression, UnsupportedLayer> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        other => Err(UnsupportedLayer {
            digest: digest.to_owned(),
            media_type: other.to_owned(),
        }),
    }
}

/// What a tar entry of an image layer means for the code module. Paths are relative to the code module
/// (the prefix stripped), `/`-separated and normalized; `""` is the code module's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageEntry {
    /// Not part of the code module (the image root, other directories): skipped.
    Outside,
    /// The code module's root directory itself: nothing to write.
    Root,
    /// An entry to write at this path.
    Entry(String),
    /// `.wh.<name>`: delete this path as the layers below left it.
    Whiteout(String),
    /// `.wh..wh..opq`: empty this directory of what the layers below put there (`""`: the whole tree).
    Opaque(String),
}

/// Classifies the tar entry `name` of an image layer; refuses names that are absolute, lead outside
/// (`..`) or hold a backslash or NUL, wherever they are in the image.
pub fn image_entry(name: &str) -> Result<ImageEntry, Problem> {
    let path = match entry_path(name) {
        Ok(entry) => entry.path,
        // `./` or `/`-less root entries of a layer.
        Err(Problem::EmptyName) if !name.starts_with('/') => return Ok(ImageEntry::Outside),
        Err(problem) => return Err(problem),
    };
    let (parent, file) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
    if file == OPAQUE_WHITEOUT {
        return Ok(match within_prefix(parent) {
            Some(dir) => ImageEntry::Opaque(dir.to_owned()),
            // An opaque directory above the prefix empties the whole code module.
            None if is_ancestor_of_prefix(parent) => ImageEntry::Opaque(String::new()),
            None => ImageEntry::Outside,
        });
    }
    if let Some(deleted) = file.strip_prefix(WHITEOUT_PREFIX) {
        match deleted {
            "" | "." => return Err(Problem::EmptyName),
            ".." => return Err(Problem::ParentComponent),
            _ => {}
        }
        let target = if parent.is_empty() {
            deleted.to_owned()
        } else {
            format!("{parent}/{deleted}")
        };
        return Ok(match within_prefix(&target) {
            // Deleting the code module's root (or an ancestor of it) deletes the whole tree.
            Some("") => ImageEntry::Opaque(String::new()),
            Some(rel) => ImageEntry::Whiteout(rel.to_owned()),
            None if is_ancestor_of_prefix(&target) => ImageEntry::Opaque(String::new()),
            None => ImageEntry::Outside,
        });
    }
    Ok(match within_prefix(&path) {
        Some("") => ImageEntry::Root,
        Some(rel) => ImageEntry::Entry(rel.to_owned()),
        None => ImageEntry::Outside,
    })
}

/// The path of a hard link's target (as the tar gives it: relative to the image root) inside the code
/// module; a target outside the code module, absolute or with `..` is refused, as a link that escapes.
pub fn hard_link_target(target: &str) -> Result<String, Problem> {
    let escapes = || Problem::HardLinkEscapes(target.to_owned());
    let path = entry_path(target).map_err(|_| escapes())?;
    match within_prefix(&path.path) {
        Some(rel) if !rel.is_empty() => Ok(rel.to_owned()),
        _ => Err(escapes()),
    }
}

/// `path` (normalized) relative to the prefix, when it is the prefix or below it.
fn within_prefix(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(CODE_MODULE_PREFIX)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Whether `path` (normalized; `""` is the image root) is a strict ancestor of the prefix.
fn is_ancestor_of_prefix(path: &str) -> bool {
    path.is_empty()
        || CODE_MODULE_PREFIX
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Basic credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A pull Secret's `.dockerconfigjson` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DockerConfigError(pub String);

/// The credentials of `.dockerconfigjson` (`{"auths": {"<registry>": {...}}}`) for `registry`
/// (`host[:port]`): the entry whose key is the registry, also when the key is written as a URL
/// (`https://host/v1/`); `username`/`password` or else `auth` (base64 of `user:password`). `None`: no entry
/// for the registry, pull anonymously.
pub fn registry_credentials(
    docker_config: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, DockerConfigError> {
    let config: serde_json::Value = serde_json::from_slice(docker_config)
        .map_err(|e| DockerConfigError(format!(".dockerconfigjson is not JSON: {e}")))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let wanted = registry_host(registry);
    let Some(entry) = auths
        .iter()
        .find(|(key, _)| registry_host(key) == wanted)
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    let text = |key: &str| {
        entry
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    if let (Some(username), Some(password)) = (text("username"), text("password")) {
        return Ok(Some(Credentials { username, password }));
    }
    let Some(auth) = text("auth") else {
        return Err(DockerConfigError(format!(
            "the entry for {registry} has neither username and password nor auth"
        )));
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            DockerConfigError(format!("the auth of the entry for {registry} is not base64 text"))
        })?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| {
        DockerConfigError(format!(
            "the auth of the entry for {registry} is not base64 of user:password"
        ))
    })?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

/// `host[:port]` of a registry key, which may be a URL; Docker Hub's names are one.
fn registry_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip", "d"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip", "d"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar", "d"),
            Ok(Compression::None)
        );
        let error =
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd", "sha256:ab").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("tar+zstd") && text.contains("sha256:ab"), "{text}");
        assert!(layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "d").is_err());
    }

    #[test]
    fn entries_inside_the_prefix_are_stripped_the_rest_is_outside() {
        let entry = |name| image_entry(name).unwrap();
        assert_eq!(
            entry("opt/dynatrace/oneagent/agent/lib64/liboneagentproc.so"),
            ImageEntry::Entry("agent/lib64/liboneagentproc.so".into())
        );
        assert_eq!(
            entry("./opt/dynatrace/oneagent/agent/"),
            ImageEntry::Entry("agent".into())
        );
        assert_eq!(entry("opt/dynatrace/oneagent/"), ImageEntry::Root);
        assert_eq!(entry("opt/dynatrace/"), ImageEntry::Outside);
        assert_eq!(entry("./"), ImageEntry::Outside);
        assert_eq!(entry("etc/passwd"), ImageEntry::Outside);
        assert_eq!(entry("opt/dynatrace/oneagent2/x"), ImageEntry::Outside);
    }

    #[test]
    fn hostile_names_are_refused_anywhere() {
        assert_eq!(image_entry("/etc/passwd"), Err(Problem::Absolute));
        assert_eq!(
            image_entry("opt/dynatrace/oneagent/../../../../x"),
            Err(Problem::ParentComponent)
        );
        assert_eq!(image_entry("usr/../../x"), Err(Problem::ParentComponent));
        assert_eq!(image_entry("/"), Err(Problem::Absolute));
        assert_eq!(
            image_entry("opt/dynatrace/oneagent/agent/.wh..."),
            Err(Problem::ParentComponent)
        );
    }

    #[test]
    fn whiteouts() {
        let entry = |name| image_entry(name).unwrap();
        assert_eq!(
            entry("opt/dynatrace/oneagent/agent/lib64/.wh.old.so"),
            ImageEntry::Whiteout("agent/lib64/old.so".into())
        );
        assert_eq!(
            entry("opt/dynatrace/oneagent/agent/.wh..wh..opq"),
            ImageEntry::Opaque("agent".into())
        );
        assert_eq!(
            entry("opt/dynatrace/oneagent/.wh..wh..opq"),
            ImageEntry::Opaque(String::new())
        );
        assert_eq!(entry("opt/.wh..wh..opq"), ImageEntry::Opaque(String::new()));
        assert_eq!(
            entry("opt/dynatrace/.wh.oneagent"),
            ImageEntry::Opaque(String::new())
        );
        assert_eq!(entry(".wh.opt"), ImageEntry::Opaque(String::new()));
        assert_eq!(entry("etc/.wh.hosts"), ImageEntry::Outside);
        assert_eq!(entry("etc/.wh..wh..opq"), ImageEntry::Outside);
        assert_eq!(entry("opt/dynatrace/.wh.other"), ImageEntry::Outside);
        assert_eq!(
            image_entry("opt/dynatrace/oneagent/.wh."),
            Err(Problem::EmptyName)
        );
    }

    #[test]
    fn hard_links_stay_inside_the_code_module() {
        assert_eq!(
            hard_link_target("opt/dynatrace/oneagent/agent/lib64/a.so"),
            Ok("agent/lib64/a.so".into())
        );
        assert_eq!(
            hard_link_target("./opt/dynatrace/oneagent/agent/a"),
            Ok("agent/a".into())
        );
        assert_eq!(
            hard_link_target("etc/shadow"),
            Err(Problem::HardLinkEscapes("etc/shadow".into()))
        );
        assert_eq!(
            hard_link_target("opt/dynatrace/oneagent/../../../etc/shadow"),
            Err(Problem::HardLinkEscapes(
                "opt/dynatrace/oneagent/../../../etc/shadow".into()
            ))
        );
        assert_eq!(
            hard_link_target("/etc/shadow"),
            Err(Problem::HardLinkEscapes("/etc/shadow".into()))
        );
        assert!(hard_link_target("opt/dynatrace/oneagent").is_err());
    }

    #[test]
    fn docker_config_credentials() {
        let config = br#"{"auths": {
            "registry.example.com:5000": {"username": "u", "password": "p"},
            "https://other.example.com/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "broken.example.com": {"auth": "!!"},
            "empty.example.com": {}
        }}"#;
        let found = |registry| registry_credentials(config, registry);
        assert_eq!(
            found("registry.example.com:5000").unwrap(),
            Some(Credentials {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            found("OTHER.example.com").unwrap(),
            Some(Credentials {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(found("registry.example.com").unwrap(), None);
        assert!(found("broken.example.com").unwrap_err().0.contains("base64"));
        assert!(found("empty.example.com").unwrap_err().0.contains("neither"));
        assert_eq!(registry_credentials(b"{}", "x").unwrap(), None);
        assert!(registry_credentials(b"not json", "x").is_err());
        // Docker Hub's aliases.
        let hub = br#"{"auths": {"https://index.docker.io/v1/": {"username": "u", "password": "p"}}}"#;
        assert!(registry_credentials(hub, "docker.io").unwrap().is_some());
        // The password stays out of debug output.
        let debug = format!("{:?}", found("registry.example.com:5000").unwrap());
        assert!(!debug.contains("\"p\""), "{debug}");
    }
}
