//! The blocking half: reads the zip from the chunk channel and writes the entries into the staging
//! directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{Read, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use io_tenant_client::DownloadFailure;
use pure_code_module::archive::{
    Budget, CENTRAL_HEADER_SIGNATURE, EntryError, Limits, Problem, parse_central_directory, resolve_link,
};
use sha2::{Digest as _, Sha256};

use crate::{InstallError, io_error, set_mode};

/// Largest central directory read (about 100 bytes an entry: room for far more entries than allowed).
const MAX_CENTRAL_DIRECTORY: u64 = 64 << 20;
/// Largest symlink target.
const MAX_LINK_TARGET: u64 = 4096;
/// Copy buffer.
const BUFFER: usize = 128 * 1024;
/// Directory under which every file is world-writable (the agent writes its configuration at run time).
const CONF_DIR: &str = "agent/conf";

/// What was unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// Bytes of the archive read.
    pub archive_bytes: u64,
    /// Their sha256, hex.
    pub sha256: String,
    /// Entries.
    pub entries: u64,
    /// Bytes written.
    pub unpacked_bytes: u64,
}

pub(crate) enum Failure {
    /// The body broke off: the network's fault, not the archive's.
    Transfer(DownloadFailure),
    Install(InstallError),
}

impl From<InstallError> for Failure {
    fn from(error: InstallError) -> Self {
        Self::Install(error)
    }
}

impl From<EntryError> for Failure {
    fn from(error: EntryError) -> Self {
        Self::Install(error.into())
    }
}

/// A blocking [`Read`] over the chunks the network task sends, hashing and counting what it hands out.
pub(crate) struct ChannelReader {
    receiver: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, DownloadFailure>>,
    current: bytes::Bytes,
    failure: Option<DownloadFailure>,
    hasher: Sha256,
    read: u64,
    /// Set when unpacking failed: reads fail at once instead of draining the network.
    abort: std::rc::Rc<std::cell::Cell<bool>>,
}

impl ChannelReader {
    pub(crate) fn new(receiver: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, DownloadFailure>>) -> Self {
        Self {
            receiver,
            current: bytes::Bytes::new(),
            failure: None,
            hasher: Sha256::new(),
            read: 0,
            abort: std::rc::Rc::default(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abort.get() {
            return Err(std::io::Error::other("unpacking stopped"));
        }
        while self.current.is_empty() {
            if let Some(failure) = &self.failure {
                return Err(std::io::Error::other(failure.to_string()));
            }
            match self.receiver.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(failure)) => self.failure = Some(failure),
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        buf[..n].copy_from_slice(&chunk);
        self.hasher.update(&chunk);
        self.read += n as u64;
        Ok(n)
    }
}

/// Maps a read error: the network's failure when there was one, else the archive's.
fn archive_error(reader: &ChannelReader, what: String) -> Failure {
    match &reader.failure {
        Some(failure) => Failure::Transfer(failure.clone()),
        None => Failure::Install(InstallError::Archive(what)),
    }
}

pub(crate) fn unpack(mut reader: ChannelReader, root: &Path, limits: Limits) -> Result<Unpacked, Failure> {
    let mut budget = Budget::new(limits);
    // Normalized path → (name in the archive, is_dir), to join the central directory's modes.
    let mut written: HashMap<String, (String, bool)> = HashMap::new();
    let mut buffer = vec![0u8; BUFFER];
    let abort = reader.abort.clone();
    let mut header_error = None;
    loop {
        let mut file = match zip::read::read_zipfile_from_stream(&mut reader) {
            Ok(Some(file)) => file,
            Ok(None) => break,
            Err(error) => {
                header_error = Some(error.to_string());
                break;
            }
        };
        let outcome = write_entry(&mut file, root, &mut budget, &mut buffer);
        if outcome.is_err() {
            // Dropping the entry would read the rest of it from the network: stop reading instead.
            abort.set(true);
        }
        drop(file);
        match outcome {
            Ok((path, name, is_dir)) => {
                written.insert(path, (name, is_dir));
            }
            Err(EntryFailure::Install(failure)) => return Err(failure),
            Err(EntryFailure::Read(text)) => return Err(archive_error_at(&reader, &text)),
        }
    }
    if let Some(text) = header_error {
        return Err(archive_error_at(&reader, &text));
    }
    let central = read_central_directory(&mut reader)?;
    // The rest (end records) counts into the length and checksum.
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| archive_error(&reader, format!("after the central directory: {e}")))?;
    apply_central_directory(root, &central, &written)?;
    let entries = written.len() as u64;
    Ok(Unpacked {
        archive_bytes: reader.read,
        sha256: hex::encode(reader.hasher.clone().finalize()),
        entries,
        unpacked_bytes: budget.total(),
    })
}

enum EntryFailure {
    Install(Failure),
    /// The zip reader failed; mapped once the entry no longer borrows the reader.
    Read(String),
}

impl<T: Into<Failure>> From<T> for EntryFailure {
    fn from(error: T) -> Self {
        Self::Install(error.into())
    }
}

/// Writes one entry; returns its normalized path, its name and whether it is a directory.
fn write_entry<R: Read>(
    file: &mut zip::read::ZipFile<'_, R>,
    root: &Path,
    budget: &mut Budget,
    buffer: &mut [u8],
) -> Result<(String, String, bool), EntryFailure> {
    let name = String::from_utf8_lossy(file.name_raw()).into_owned();
    let entry = budget.begin(&name)?;
    if file.encrypted() {
        return Err(InstallError::Archive(format!("entry {name:?} is encrypted")).into());
    }
    let path = root.join(&entry.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    if entry.is_dir {
        std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        return Ok((entry.path, name, true));
    }
    let (declared, compressed) = (file.size(), file.compressed_size());
    budget.check_declared(&name, declared, compressed)?;
    let conf = in_conf(&entry.path);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if conf { 0o666 } else { 0o644 })
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(io_error(&path))?;
    let mut done = 0u64;
    loop {
        let n = match file.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => return Err(EntryFailure::Read(format!("entry {name:?}: {error}"))),
        };
        done += n as u64;
        budget.check_written(&name, done, n as u64, compressed, declared)?;
        out.write_all(&buffer[..n]).map_err(io_error(&path))?;
    }
    if conf {
        // Explicitly: the process umask may have taken bits off.
        set_mode(&path, 0o666)?;
    }
    Ok((entry.path, name, false))
}

fn in_conf(path: &str) -> bool {
    path.starts_with(CONF_DIR) && path.as_bytes().get(CONF_DIR.len()) == Some(&b'/')
}

fn archive_error_at(reader: &ChannelReader, text: &str) -> Failure {
    if text.contains("length is not available") {
        return Failure::Install(InstallError::Archive(format!(
            "an entry after byte {} keeps its size after its data (data descriptor), which cannot be \
             unpacked while streaming",
            reader.read
        )));
    }
    archive_error(reader, format!("at byte {}: {text}", reader.read))
}

fn read_central_directory(
    reader: &mut ChannelReader,
) -> Result<Vec<pure_code_module::archive::CentralEntry>, Failure> {
    // `read_zipfile_from_stream` stopped at a central directory record and consumed its signature (or
    // at the end record of an empty archive, in which case what follows is no record).
    let mut bytes = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_CENTRAL_DIRECTORY + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| archive_error(reader, format!("in the central directory: {e}")))?;
    if read as u64 > MAX_CENTRAL_DIRECTORY {
        return Err(InstallError::Archive(format!(
            "the central directory is larger than {MAX_CENTRAL_DIRECTORY} bytes"
        ))
        .into());
    }
    if bytes.len() >= 4
        && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == CENTRAL_HEADER_SIGNATURE
    {
        return Err(InstallError::Archive("the central directory is misaligned".into()).into());
    }
    parse_central_directory(&bytes).map_err(|e| {
        Failure::Install(InstallError::Archive(format!(
            "the central directory is broken: {e}"
        )))
    })
}

fn apply_central_directory(
    root: &Path,
    central: &[pure_code_module::archive::CentralEntry],
    written: &HashMap<String, (String, bool)>,
) -> Result<(), Failure> {
    let by_name: HashMap<&str, &str> = written
        .iter()
        .map(|(path, (name, _))| (name.as_str(), path.as_str()))
        .collect();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut modes: Vec<(&str, u32)> = Vec::new();
    for entry in central {
        let Some(path) = by_name.get(entry.name.as_str()) else {
            return Err(EntryError {
                entry: entry.name.clone(),
                problem: Problem::Duplicate,
            }
            .into());
        };
        if entry.is_symlink() {
            let file = root.join(path);
            let mut target = String::new();
            std::fs::File::open(&file)
                .map_err(io_error(&file))?
                .take(MAX_LINK_TARGET + 1)
                .read_to_string(&mut target)
                .map_err(io_error(&file))?;
            if target.len() as u64 > MAX_LINK_TARGET || target.is_empty() {
                return Err(InstallError::Archive(format!(
                    "symlink entry {:?} has a target of {} bytes",
                    entry.name,
                    target.len()
                ))
                .into());
            }
            links.insert((*path).to_owned(), target);
        } else if let Some(mode) = entry.unix_mode
            && mode & 0o111 != 0
            && !written.get(*path).is_some_and(|(_, dir)| *dir)
        {
            modes.push((path, mode));
        }
    }
    for (link, target) in &links {
        resolve_link(&links, link, target)?;
    }
    for (link, target) in &links {
        let path = root.join(link);
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        std::os::unix::fs::symlink(target, &path).map_err(io_error(&path))?;
    }
    for (path, mode) in modes {
        // Permission bits only: no setuid, setgid or sticky bits from an archive.
        let wanted = if in_conf(path) {
            0o666
        } else {
            (mode & 0o777) | 0o644
        };
        set_mode(&root.join(path), wanted)?;
    }
    Ok(())
}
