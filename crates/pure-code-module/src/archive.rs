//! What a code-module archive may contain. The unpacker asks [`Budget::begin`] before it writes an entry,
//! [`Budget::check_written`] while it writes, and [`resolve_link`] before it creates a symlink; every
//! rejection is an [`EntryError`] naming the entry.
//!
//! Rules:
//! - names are relative, `/`-separated paths without `..`, backslashes, NUL or drive letters (`.` and
//!   empty components are dropped); an absolute name is rejected, not made relative;
//! - every name appears once, and no entry lies below a file entry;
//! - a symlink's target is relative and, following every other symlink of the archive, stays inside the
//!   target directory (a chain of individually harmless links cannot leave it);
//! - entry count, bytes per entry, total bytes and the expansion ratio of each entry are limited (bombs).

use std::collections::{BTreeMap, HashSet, VecDeque};

/// Why an entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archive entry {entry:?} rejected: {problem}; the archive is not installed")]
pub struct EntryError {
    /// The entry's name as the archive gives it.
    pub entry: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The name is empty or only `.` and `/`.
    #[error("its name is empty")]
    EmptyName,
    /// The name starts at the root (`/x`, `C:\x`).
    #[error("its path is absolute")]
    Absolute,
    /// The name has a `..` component.
    #[error("its path leads outside the target directory (`..`)")]
    ParentComponent,
    /// The name has a backslash or a NUL byte.
    #[error("its name holds a backslash or NUL byte")]
    BadCharacter,
    /// The name appeared before.
    #[error("it appears more than once in the archive")]
    Duplicate,
    /// An earlier entry with a prefix of this name is a file.
    #[error("it lies below the file entry {0:?}")]
    BelowFile(String),
    /// A symlink's target is absolute.
    #[error("it is a symlink to the absolute path {0:?}")]
    AbsoluteLink(String),
    /// A symlink leads outside the target directory.
    #[error("it is a symlink to {0:?}, which leads outside the target directory")]
    LinkEscapes(String),
    /// A hard link leads outside the tree it is unpacked into.
    #[error("it is a hard link to {0:?}, which is outside the code module")]
    HardLinkEscapes(String),
    /// Symlinks lead to each other too many times.
    #[error("it is a symlink in a loop or a chain longer than {MAX_LINK_HOPS} links")]
    LinkLoop,
    /// Too many entries.
    #[error("the archive has more than {0} entries")]
    TooManyEntries(u64),
    /// One entry unpacks to too many bytes.
    #[error("it unpacks to more than {0} bytes")]
    EntryTooLarge(u64),
    /// The archive unpacks to too many bytes.
    #[error("the archive unpacks to more than {0} bytes in total")]
    TotalTooLarge(u64),
    /// An entry expands far more than real data does.
    #[error(
        "it expands {written} bytes from {compressed} compressed bytes, more than {max_ratio}:1 (a zip bomb?)"
    )]
    Ratio {
        /// Bytes written so far.
        written: u64,
        /// The entry's compressed size.
        compressed: u64,
        /// The largest ratio allowed.
        max_ratio: u64,
    },
    /// The central directory names an entry the archive's local headers do not hold.
    #[error("the central directory names it, but the archive holds no such entry (a forged directory?)")]
    NotInArchive,
    /// The entry's data is longer than its header says.
    #[error("it holds more than the {0} bytes its header announces")]
    LongerThanHeader(u64),
}

/// Most symlinks followed while resolving one symlink (as Linux's `MAXSYMLINKS`).
pub const MAX_LINK_HOPS: u32 = 40;

/// Limits against archives that unpack to far more than they download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the archive.
    pub max_entries: u64,
    /// Bytes one entry unpacks to.
    pub max_entry_bytes: u64,
    /// Bytes the whole archive unpacks to.
    pub max_total_bytes: u64,
    /// Largest `written / compressed` of an entry ...
    pub max_ratio: u64,
    /// ... checked once an entry has written this many bytes (small files compress well legitimately).
    pub ratio_floor_bytes: u64,
}

impl Default for Limits {
    /// Generous for a real code module (about 300 MB unpacked, a few thousand files; text compresses at
    /// most about 20:1), tight for a bomb (zeros deflate about 1000:1).
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_entry_bytes: 2 << 30,
            max_total_bytes: 8 << 30,
            max_ratio: 200,
            ratio_floor_bytes: 1 << 20,
        }
    }
}

/// An accepted entry: its normalized relative path and whether it is a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, without `.` or empty components.
    pub path: String,
    /// The name ended with `/`.
    pub is_dir: bool,
}

/// Normalizes an entry name, or says why it cannot be unpacked.
pub fn entry_path(name: &str) -> Result<Entry, Problem> {
    if name.contains('\\') || name.contains('\0') {
        return Err(Problem::BadCharacter);
    }
    if name.starts_with('/') || drive_letter(name) {
        return Err(Problem::Absolute);
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Problem::ParentComponent),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(Problem::EmptyName);
    }
    Ok(Entry {
        path: parts.join("/"),
        is_dir: name.ends_with('/'),
    })
}

fn drive_letter(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

/// The bookkeeping of one unpacking: names seen, bytes written, limits.
#[derive(Debug, Clone)]
pub struct Budget {
    limits: Limits,
    seen: HashSet<String>,
    files: HashSet<String>,
    dirs: HashSet<String>,
    entries: u64,
    total: u64,
}

impl Budget {
    /// A fresh budget.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            seen: HashSet::new(),
            files: HashSet::new(),
            dirs: HashSet::new(),
            entries: 0,
            total: 0,
        }
    }

    /// Accepts the next entry, or says why not.
    pub fn begin(&mut self, name: &str) -> Result<Entry, EntryError> {
        let error = |problem| EntryError {
            entry: name.to_owned(),
            problem,
        };
        let entry = entry_path(name).map_err(error)?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(error(Problem::TooManyEntries(self.limits.max_entries)));
        }
        if !self.seen.insert(entry.path.clone()) {
            return Err(error(Problem::Duplicate));
        }
        let mut prefix = String::new();
        for part in entry.path.split('/') {
            if !prefix.is_empty() {
                if self.files.contains(&prefix) {
                    return Err(error(Problem::BelowFile(prefix)));
                }
                self.dirs.insert(prefix.clone());
                prefix.push('/');
            }
            prefix.push_str(part);
        }
        if entry.is_dir {
            self.dirs.insert(entry.path.clone());
        } else {
            // An earlier entry lies below this name: it is a directory already.
            if self.dirs.contains(&entry.path) {
                return Err(error(Problem::Duplicate));
            }
            self.files.insert(entry.path.clone());
        }
        Ok(entry)
    }

    /// Checks an entry that has written `written` bytes so far (of `compressed` compressed bytes, and
    /// `declared` bytes its header announces), after `chunk` more bytes; counts them into the total.
    pub fn check_written(
        &mut self,
        name: &str,
        written: u64,
        chunk: u64,
        compressed: u64,
        declared: u64,
    ) -> Result<(), EntryError> {
        let error = |problem| EntryError {
            entry: name.to_owned(),
            problem,
        };
        self.total += chunk;
        let limits = &self.limits;
        if written > declared {
            return Err(error(Problem::LongerThanHeader(declared)));
        }
        if written > limits.max_entry_bytes {
            return Err(error(Problem::EntryTooLarge(limits.max_entry_bytes)));
        }
        if self.total > limits.max_total_bytes {
            return Err(error(Problem::TotalTooLarge(limits.max_total_bytes)));
        }
        if written >= limits.ratio_floor_bytes && written > compressed.saturating_mul(limits.max_ratio) {
            return Err(error(Problem::Ratio {
                written,
                compressed,
                max_ratio: limits.max_ratio,
            }));
        }
        Ok(())
    }

    /// Checks an entry before writing it, by what its header announces.
    pub fn check_declared(&mut self, name: &str, declared: u64, compressed: u64) -> Result<(), EntryError> {
        let total = self.total;
        // The announced size must fit; the running total is restored, the bytes are counted as written.
        let result = self.check_written(name, declared, declared, compressed, declared);
        self.total = total;
        result
    }

    /// Bytes written so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Where the symlink at `link` (a normalized entry path) with target `target` leads, as a normalized path
/// relative to the target directory (`""` is the directory itself), following the archive's other
/// symlinks `links` (normalized path → target). Fails when it leaves the directory at any step, is
/// absolute, or loops.
pub fn resolve_link(
    links: &BTreeMap<String, String>,
    link: &str,
    target: &str,
) -> Result<String, EntryError> {
    let error = |problem| EntryError {
        entry: link.to_owned(),
        problem,
    };
    if target.starts_with('/') || drive_letter(target) {
        return Err(error(Problem::AbsoluteLink(target.to_owned())));
    }
    if target.contains('\0') || target.contains('\\') {
        return Err(error(Problem::BadCharacter));
    }
    let mut resolved: Vec<&str> = link.split('/').collect();
    resolved.pop();
    let mut pending: VecDeque<&str> = target.split('/').collect();
    let mut hops = 0u32;
    while let Some(part) = pending.pop_front() {
        match part {
            "" | "." => {}
            ".." => {
                if resolved.pop().is_none() {
                    return Err(error(Problem::LinkEscapes(target.to_owned())));
                }
            }
            part => {
                resolved.push(part);
                if let Some(next) = links.get(&resolved.join("/")) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(error(Problem::LinkLoop));
                    }
                    if next.starts_with('/') || drive_letter(next) {
                        return Err(error(Problem::LinkEscapes(target.to_owned())));
                    }
                    resolved.pop();
                    for step in next.split('/').rev() {
                        pending.push_front(step);
                    }
                }
            }
        }
    }
    Ok(resolved.join("/"))
}

/// Signature of a local file header.
pub const LOCAL_HEADER_SIGNATURE: u32 = 0x0403_4b50;
/// Signature of the end of central directory record.
pub const END_SIGNATURE: u32 = 0x0605_4b50;
/// Optional signature of a data descriptor.
pub const DATA_DESCRIPTOR_SIGNATURE: u32 = 0x0807_4b50;
/// Bytes of a local file header after its signature, before the name.
pub const LOCAL_HEADER_FIXED: usize = 26;

/// A local file header (the part a streaming reader has before an entry's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHeader {
    /// General purpose flags.
    pub flags: u16,
    /// Compression method: 0 stored, 8 deflated.
    pub method: u16,
    /// CRC-32 of the data (0 with a data descriptor).
    pub crc32: u32,
    /// Compressed size (0 with a data descriptor; from the Zip64 field when that is present).
    pub compressed_size: u64,
    /// Uncompressed size (as above).
    pub size: u64,
    /// Length of the name that follows.
    pub name_len: usize,
    /// Length of the extra field after the name.
    pub extra_len: usize,
    /// The extra field has Zip64 sizes (so does the data descriptor).
    pub zip64: bool,
}

impl LocalHeader {
    /// Parses the fixed part (after the signature).
    pub fn parse(fixed: &[u8; LOCAL_HEADER_FIXED]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        Self {
            flags: u16_at(2),
            method: u16_at(4),
            crc32: u32_at(10),
            compressed_size: u64::from(u32_at(14)),
            size: u64::from(u32_at(18)),
            name_len: usize::from(u16_at(22)),
            extra_len: usize::from(u16_at(24)),
            zip64: false,
        }
    }

    /// Takes the sizes from a Zip64 extra field (id 1) in `extra` where the 32-bit fields are saturated.
    pub fn apply_extra(&mut self, extra: &[u8]) {
        let mut rest = extra;
        while rest.len() >= 4 {
            let id = u16::from_le_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            let Some(data) = rest.get(4..4 + len) else {
                return;
            };
            if id == 1 {
                self.zip64 = true;
                let mut values = data
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
                if self.size == u64::from(u32::MAX)
                    && let Some(v) = values.next()
                {
                    self.size = v;
                }
                if self.compressed_size == u64::from(u32::MAX)
                    && let Some(v) = values.next()
                {
                    self.compressed_size = v;
                }
            }
            rest = &rest[4 + len..];
        }
    }

    /// Bit 0: encrypted.
    pub fn encrypted(&self) -> bool {
        self.flags & 1 != 0
    }

    /// Bit 3: CRC and sizes follow the data in a data descriptor.
    pub fn has_data_descriptor(&self) -> bool {
        self.flags & 8 != 0
    }
}

/// What the central directory says about an entry that the local headers do not: its Unix mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralEntry {
    /// The name as in the archive.
    pub name: String,
    /// The Unix mode (file type and permissions) for entries made on Unix.
    pub unix_mode: Option<u32>,
}

/// Unix file type bits of a symlink.
pub const S_IFLNK: u32 = 0o120_000;
const S_IFMT: u32 = 0o170_000;

impl CentralEntry {
    /// Whether the entry is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.unix_mode.is_some_and(|m| m & S_IFMT == S_IFLNK)
    }
}

/// Signature of a central directory file header.
pub const CENTRAL_HEADER_SIGNATURE: u32 = 0x0201_4b50;

/// Parses the central directory records in `bytes`, which starts right after the first record's signature
/// (a streaming reader has consumed it), up to the first bytes that are not another record (the end
/// records). Fails on a truncated record.
pub fn parse_central_directory(bytes: &[u8]) -> Result<Vec<CentralEntry>, String> {
    const FIXED: usize = 42;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut entries = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < FIXED {
            return Err(format!(
                "a central directory record is cut after {} bytes",
                rest.len()
            ));
        }
        let made_by_system = rest[1];
        let name_len = usize::from(u16_at(rest, 24));
        let extra_len = usize::from(u16_at(rest, 26));
        let comment_len = usize::from(u16_at(rest, 28));
        let external = u32_at(rest, 34);
        let end = FIXED + name_len + extra_len + comment_len;
        if rest.len() < end {
            return Err("a central directory record is cut in its name or extra fields".into());
        }
        let name = String::from_utf8_lossy(&rest[FIXED..FIXED + name_len]).into_owned();
        // 3 is Unix: the high 16 bits are st_mode.
        let unix_mode = (made_by_system == 3)
            .then_some(external >> 16)
            .filter(|m| *m != 0);
        entries.push(CentralEntry { name, unix_mode });
        rest = &rest[end..];
        if rest.len() < 4 || u32_at(rest, 0) != CENTRAL_HEADER_SIGNATURE {
            return Ok(entries);
        }
        rest = &rest[4..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn problem(name: &str) -> Problem {
        entry_path(name).unwrap_err()
    }

    #[test]
    fn names_are_normalized() {
        let entry = entry_path("./agent//bin/x").unwrap();
        assert_eq!(entry.path, "agent/bin/x");
        assert!(!entry.is_dir);
        assert!(entry_path("agent/conf/").unwrap().is_dir);
    }

    #[test]
    fn hostile_names_are_rejected() {
        assert_eq!(problem("../evil"), Problem::ParentComponent);
        assert_eq!(problem("agent/../../evil"), Problem::ParentComponent);
        assert_eq!(problem("/etc/passwd"), Problem::Absolute);
        assert_eq!(problem("C:/x"), Problem::Absolute);
        assert_eq!(problem("a\\..\\b"), Problem::BadCharacter);
        assert_eq!(problem("a\0b"), Problem::BadCharacter);
        assert_eq!(problem("./"), Problem::EmptyName);
        assert_eq!(problem(""), Problem::EmptyName);
    }

    #[test]
    fn duplicates_and_entries_below_files_are_rejected() {
        let mut budget = Budget::new(Limits::default());
        budget.begin("agent/").unwrap();
        budget.begin("agent/x").unwrap();
        let err = budget.begin("./agent/x").unwrap_err();
        assert_eq!(err.problem, Problem::Duplicate);
        assert!(err.to_string().contains("\"./agent/x\""), "{err}");
        assert_eq!(
            budget.begin("agent/x/y").unwrap_err().problem,
            Problem::BelowFile("agent/x".into())
        );
        budget.begin("agent/d/y").unwrap();
        assert_eq!(budget.begin("agent/d").unwrap_err().problem, Problem::Duplicate);
    }

    #[test]
    fn too_many_entries() {
        let mut budget = Budget::new(Limits {
            max_entries: 2,
            ..Limits::default()
        });
        budget.begin("a").unwrap();
        budget.begin("b").unwrap();
        assert_eq!(budget.begin("c").unwrap_err().problem, Problem::TooManyEntries(2));
    }

    #[test]
    fn bombs_are_stopped_while_writing() {
        let limits = Limits {
            max_entry_bytes: 100 << 20,
            max_total_bytes: 150 << 20,
            max_ratio: 100,
            ratio_floor_bytes: 1 << 20,
            ..Limits::default()
        };
        let mut budget = Budget::new(limits);
        // Small and highly compressible: fine below the floor.
        budget.check_written("small", 1000, 1000, 1, 1000).unwrap();
        let err = budget
            .check_written("zeros", 2 << 20, 2 << 20, 1000, 1 << 30)
            .unwrap_err();
        assert!(matches!(err.problem, Problem::Ratio { .. }), "{err}");
        let mut budget = Budget::new(limits);
        let err = budget
            .check_written("big", 101 << 20, 101 << 20, 101 << 20, 1 << 30)
            .unwrap_err();
        assert_eq!(err.problem, Problem::EntryTooLarge(100 << 20));
        let mut budget = Budget::new(limits);
        budget
            .check_written("a", 90 << 20, 90 << 20, 90 << 20, 90 << 20)
            .unwrap();
        let err = budget
            .check_written("b", 70 << 20, 70 << 20, 70 << 20, 70 << 20)
            .unwrap_err();
        assert_eq!(err.problem, Problem::TotalTooLarge(150 << 20));
        let mut budget = Budget::new(limits);
        let err = budget.check_written("liar", 11, 11, 11, 10).unwrap_err();
        assert_eq!(err.problem, Problem::LongerThanHeader(10));
        let mut budget = Budget::new(limits);
        assert_eq!(
            budget
                .check_declared("huge", 1 << 40, 1 << 40)
                .unwrap_err()
                .problem,
            Problem::EntryTooLarge(100 << 20)
        );
        assert_eq!(budget.total(), 0);
    }

    fn links(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn symlinks_inside_are_resolved() {
        let none = BTreeMap::new();
        assert_eq!(
            resolve_link(&none, "agent/bin/current", "1.2.3.4-5").unwrap(),
            "agent/bin/1.2.3.4-5"
        );
        assert_eq!(resolve_link(&none, "agent/lib", "../lib64/x").unwrap(), "lib64/x");
        assert_eq!(resolve_link(&none, "a/b", "..").unwrap(), "");
    }

    #[test]
    fn symlink_escapes_are_rejected() {
        let none = BTreeMap::new();
        assert_eq!(
            resolve_link(&none, "a", "/etc").unwrap_err().problem,
            Problem::AbsoluteLink("/etc".into())
        );
        assert_eq!(
            resolve_link(&none, "a/b", "../../etc").unwrap_err().problem,
            Problem::LinkEscapes("../../etc".into())
        );
        // Each link alone stays inside; together they leave: deep/a/b/l leads to the root, and `s`
        // goes one further up through it.
        let chain = links(&[("deep/a/b/l", "../../.."), ("s", "deep/a/b/l/..")]);
        resolve_link(&chain, "deep/a/b/l", "../../..").unwrap();
        assert!(matches!(
            resolve_link(&chain, "s", "deep/a/b/l/..").unwrap_err().problem,
            Problem::LinkEscapes(_)
        ));
        let to_abs = links(&[("abs", "/etc")]);
        assert!(resolve_link(&to_abs, "x", "abs/passwd").is_err());
        let looping = links(&[("a", "b"), ("b", "a")]);
        assert_eq!(
            resolve_link(&looping, "a", "b").unwrap_err().problem,
            Problem::LinkLoop
        );
    }

    /// A central directory record without its signature: made on `system`, with `mode` and `name`.
    fn record(system: u8, mode: u32, name: &str) -> Vec<u8> {
        let mut r = vec![0u8; 42];
        r[0] = 20;
        r[1] = system;
        r[24..26].copy_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
        r[34..38].copy_from_slice(&(mode << 16).to_le_bytes());
        r.extend_from_slice(name.as_bytes());
        r
    }

    #[test]
    fn central_directory_modes_and_symlinks() {
        let mut bytes = record(3, 0o120_777, "agent/lib/link");
        bytes.extend_from_slice(&CENTRAL_HEADER_SIGNATURE.to_le_bytes());
        bytes.extend_from_slice(&record(3, 0o100_755, "agent/bin/x"));
        bytes.extend_from_slice(&CENTRAL_HEADER_SIGNATURE.to_le_bytes());
        bytes.extend_from_slice(&record(0, 0o100_755, "dos"));
        bytes.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 18]);
        let entries = parse_central_directory(&bytes).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(entries[0].is_symlink());
        assert_eq!(entries[1].unix_mode, Some(0o100_755));
        assert!(!entries[1].is_symlink());
        assert_eq!(entries[2].unix_mode, None, "not made on Unix");
        assert!(
            parse_central_directory(&bytes[..50]).is_err(),
            "cut in the second record"
        );
    }

    #[test]
    fn local_headers_with_zip64_sizes() {
        let mut fixed = [0u8; LOCAL_HEADER_FIXED];
        fixed[2] = 8; // data descriptor
        fixed[4] = 8; // deflated
        fixed[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        fixed[18..22].copy_from_slice(&u32::MAX.to_le_bytes());
        fixed[22] = 5;
        let mut header = LocalHeader::parse(&fixed);
        assert!(header.has_data_descriptor() && !header.encrypted());
        assert_eq!((header.method, header.name_len), (8, 5));
        let mut extra = vec![1, 0, 16, 0];
        extra.extend_from_slice(&(5u64 << 32).to_le_bytes());
        extra.extend_from_slice(&(3u64 << 32).to_le_bytes());
        header.apply_extra(&extra);
        assert!(header.zip64);
        assert_eq!((header.size, header.compressed_size), (5 << 32, 3 << 32));
        // A truncated extra field is ignored, not a panic.
        let mut other = LocalHeader::parse(&fixed);
        other.apply_extra(&[1, 0, 200, 0, 1]);
        assert_eq!(other.size, u64::from(u32::MAX));
    }

    proptest! {
        /// Whatever the name, an accepted path has no component that climbs or roots it.
        #[test]
        fn accepted_paths_stay_inside(name in "[a-z./\\\\:]{0,24}") {
            if let Ok(entry) = entry_path(&name) {
                prop_assert!(!entry.path.starts_with('/'));
                prop_assert!(entry.path.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            }
        }

        /// Whatever the links, a resolved target is a plain relative path (inside the directory).
        #[test]
        fn resolved_links_stay_inside(
            pairs in proptest::collection::vec(("[ab]{1,2}(/[ab.]{1,2}){0,2}", "(\\.\\./|[ab]/|\\./){0,4}[ab.]{0,2}"), 0..6),
            link in "[ab]{1,2}(/[ab]{1,2}){0,2}",
            target in "(\\.\\./|[ab]/){0,4}[ab]{0,2}",
        ) {
            let links: BTreeMap<String, String> = pairs.into_iter().collect();
            if let Ok(resolved) = resolve_link(&links, &link, &target) {
                prop_assert!(resolved.split('/').all(|c| c != ".." && c != "."));
                prop_assert!(!resolved.starts_with('/'));
            }
        }
    }
}
