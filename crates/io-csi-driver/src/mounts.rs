//! The kernel's mount table as this process sees it, read fresh for every decision that depends on it.

use pure_csi::mountinfo::MountTable;

/// Where the mount table is.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A mount table that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MountTableError {
    /// Reading failed.
    #[error("cannot read the mount table {MOUNTINFO}: {0}; the CSI driver needs /proc")]
    Io(#[from] std::io::Error),
    /// The text is not mountinfo.
    #[error(transparent)]
    Parse(#[from] pure_csi::mountinfo::ParseError),
}

/// Reads and parses `/proc/self/mountinfo`.
pub fn read() -> Result<MountTable, MountTableError> {
    Ok(MountTable::parse(&std::fs::read_to_string(MOUNTINFO)?)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_root_is_mounted() {
        let table = super::read().unwrap();
        assert!(table.is_mount_point(std::path::Path::new("/")));
    }
}
