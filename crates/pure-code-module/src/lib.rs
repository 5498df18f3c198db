//! The OneAgent code module's rules as pure logic, shared by the init container (`dynatrace-operator
//! init`) and the CSI provisioner:
//!
//! - [`archive`]: which zip entry names are safe to unpack, where a symlink leads once every other symlink
//!   of the archive is taken into account, and the limits that stop size and ratio bombs;
//! - [`image`]: installing from a container image: layer media types, the code module's subtree, whiteouts,
//!   pull-Secret credentials;
//! - [`proc_conf`]: merging the environment's process-module configuration into `ruxitagentproc.conf`;
//! - [`version_dir`]: the agent version directory under `agent/bin`;
//! - [`init`]: the init container's environment and the text of every file it writes.

pub mod archive;
pub mod image;
pub mod init;
pub mod proc_conf;

/// Whether `name` is an agent version directory name: `^\d+\.\d+\.\d+\.\d+-\d+$`, like
/// `1.277.0.20230914-094321`.
pub fn version_dir(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((dotted, build)) = name.rsplit_once('-') else {
        return false;
    };
    let parts: Vec<&str> = dotted.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| digits(p)) && digits(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_directories() {
        assert!(version_dir("1.277.0.20230914-094321"));
        assert!(version_dir("0.0.0.0-0"));
        for not in [
            "",
            "1.277.0",
            "1.277.0.20230914",
            "1.277.0.20230914-",
            "1.277.0.x-094321",
            "1.2.3.4.5-6",
            "current",
            "1.277.0.20230914-094321-1",
            " 1.2.3.4-5",
        ] {
            assert!(!version_dir(not), "{not:?}");
        }
    }
}
