//! The kernel's mount table (`/proc/self/mountinfo`, proc(5)), parsed without I/O. Whether a path is
//! mounted and which code-module versions live overlays use is always decided from a fresh read of it,
//! never from a record of ours: records can be stale after a crash, the mount table cannot.

use std::path::{Path, PathBuf};

/// One line of `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount id.
    pub id: u64,
    /// Parent mount id.
    pub parent: u64,
    /// The path inside the mounted filesystem that is mounted here (`/` for a whole filesystem).
    pub root: PathBuf,
    /// Where it is mounted, as this process sees it.
    pub mount_point: PathBuf,
    /// Filesystem type (`overlay`, `ext4`, ...).
    pub fs_type: String,
    /// The source (`overlay`, `/dev/vda`, ...).
    pub source: String,
    /// Per-superblock options (for overlays: `lowerdir=...,upperdir=...,workdir=...`).
    pub super_options: String,
}

impl Mount {
    /// An overlay's lower dirs, top first; empty for other filesystems.
    pub fn overlay_lower_dirs(&self) -> Vec<PathBuf> {
        if self.fs_type != "overlay" {
            return Vec::new();
        }
        self.super_options
            .split(',')
            .filter_map(|option| option.strip_prefix("lowerdir="))
            .flat_map(|dirs| dirs.split(':'))
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// A line that is not in the format of proc(5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the mount table is not in the mountinfo format of proc(5): {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// The parsed mount table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    /// Every mount, in the kernel's order (a later mount on the same point covers an earlier one).
    pub mounts: Vec<Mount>,
}

impl MountTable {
    /// Parses the text of `/proc/self/mountinfo`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mounts = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                parse_line(line).ok_or_else(|| ParseError {
                    line: index + 1,
                    text: line.to_owned(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { mounts })
    }

    /// Whether something is mounted exactly at `path`.
    pub fn is_mount_point(&self, path: &Path) -> bool {
        self.mounts.iter().any(|m| m.mount_point == path)
    }

    /// The mounts at `path`, oldest first.
    pub fn at<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = &'a Mount> + 'a {
        self.mounts.iter().filter(move |m| m.mount_point == path)
    }

    /// The mounts at or below `dir`.
    pub fn under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a Mount> + 'a {
        self.mounts.iter().filter(move |m| m.mount_point.starts_with(dir))
    }

    /// Whether any overlay uses `dir` (or a directory below it) as a lower dir: a code-module version
    /// or a configuration layer that must not be deleted.
    pub fn in_use_as_lower_dir(&self, dir: &Path) -> bool {
        self.mounts
            .iter()
            .flat_map(Mount::overlay_lower_dirs)
            .any(|lower| lower.starts_with(dir))
    }
}

fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let id = fields.next()?.parse().ok()?;
    let parent = fields.next()?.parse().ok()?;
    let _major_minor = fields.next()?;
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let _options = fields.next()?;
    let mut rest = after.split(' ');
    let fs_type = rest.next()?.to_owned();
    let source = unescape(rest.next()?);
    let super_options = rest.next().map(unescape).unwrap_or_default();
    Some(Mount {
        id,
        parent,
        root: PathBuf::from(root),
        mount_point: PathBuf::from(mount_point),
        fs_type,
        source,
        super_options,
    })
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 0:32 / /data/appmounts/csi-1/mapped rw,relatime shared:20 - overlay overlay rw,lowerdir=/data/dynakubes/dk/config/c1:/data/codemodules/1.2.3.4-5,upperdir=/data/appmounts/csi-1/var,workdir=/data/appmounts/csi-1/work
37 22 0:32 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/oneagent-bin/mount rw,relatime shared:20 - overlay overlay rw,lowerdir=/data/dynakubes/dk/config/c1:/data/codemodules/1.2.3.4-5,upperdir=/data/appmounts/csi-1/var,workdir=/data/appmounts/csi-1/work
38 22 253:1 /data/osagent/t1 /mnt/with\\040space rw master:3 - ext4 /dev/vda rw
";

    #[test]
    fn parses_the_fields_of_proc_5() {
        let table = MountTable::parse(SAMPLE).unwrap();
        assert_eq!(table.mounts.len(), 4);
        let host = &table.mounts[3];
        assert_eq!(host.id, 38);
        assert_eq!(host.parent, 22);
        assert_eq!(host.root, Path::new("/data/osagent/t1"));
        assert_eq!(host.mount_point, Path::new("/mnt/with space"));
        assert_eq!(host.fs_type, "ext4");
        assert_eq!(host.source, "/dev/vda");
        assert!(table.is_mount_point(Path::new("/mnt/with space")));
        assert!(!table.is_mount_point(Path::new("/mnt")));
    }

    #[test]
    fn overlay_lower_dirs_are_what_must_not_be_deleted() {
        let table = MountTable::parse(SAMPLE).unwrap();
        assert_eq!(
            table.mounts[1].overlay_lower_dirs(),
            vec![
                PathBuf::from("/data/dynakubes/dk/config/c1"),
                PathBuf::from("/data/codemodules/1.2.3.4-5")
            ]
        );
        assert!(table.mounts[0].overlay_lower_dirs().is_empty());
        assert!(table.in_use_as_lower_dir(Path::new("/data/codemodules/1.2.3.4-5")));
        assert!(table.in_use_as_lower_dir(Path::new("/data/dynakubes/dk/config")));
        assert!(!table.in_use_as_lower_dir(Path::new("/data/codemodules/1.2.3.4-50")));
        assert!(!table.in_use_as_lower_dir(Path::new("/data/codemodules/9.9.9.9-9")));
        assert_eq!(table.under(Path::new("/data/appmounts")).count(), 1);
        assert_eq!(table.at(Path::new("/")).count(), 1);
    }

    #[test]
    fn a_line_out_of_format_is_named() {
        let err = MountTable::parse("22 1 253:1 / / rw\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(MountTable::parse("x 1 2:3 / / rw - ext4 a rw").is_err());
        assert_eq!(MountTable::parse("\n").unwrap(), MountTable::default());
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape(r"a\040b\011c\134d\012"), "a b\tc\\d\n");
        assert_eq!(unescape(r"tail\04"), r"tail\04");
        assert_eq!(unescape(r"not\999"), r"not\999");
    }
}
