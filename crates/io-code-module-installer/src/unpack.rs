//! The blocking half: reads the zip from the chunk channel and writes the entries into the staging
//! directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufReader, Read, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use io_tenant_client::DownloadFailure;
use pure_code_module::archive::{
    Budget, CENTRAL_HEADER_SIGNATURE, DATA_DESCRIPTOR_SIGNATURE, END_SIGNATURE, EntryError,
    LOCAL_HEADER_FIXED, LOCAL_HEADER_SIGNATURE, Limits, LocalHeader, Problem, parse_central_directory,
    resolve_link,
};
use sha2::{Digest as _, Sha256};

use crate::{InstallError, io_error, set_mode};

/// Largest central directory read (about 100 bytes an entry: room for far more entries than allowed).
const MAX_CENTRAL_DIRECTORY: u64 = 64 << 20;
/// Largest symlink target.
const MAX_LINK_TARGET: u64 = 4096;
/// Copy buffer.
pub(crate) const BUFFER: usize = 128 * 1024;
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
}

impl ChannelReader {
    pub(crate) fn new(receiver: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, DownloadFailure>>) -> Self {
        Self {
            receiver,
            current: bytes::Bytes::new(),
            failure: None,
            hasher: Sha256::new(),
            read: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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

impl ChannelReader {
    /// The body's failure, when it broke off.
    pub(crate) fn failure(&self) -> Option<&DownloadFailure> {
        self.failure.as_ref()
    }

    /// Bytes handed out and their sha256 (hex).
    pub(crate) fn finish(self) -> (u64, String) {
        (self.read, hex::encode(self.hasher.finalize()))
    }
}

/// Maps a read error: the network's failure when there was one, else the archive's.
fn archive_error(reader: &ChannelReader, what: String) -> Failure {
    match &reader.failure {
        Some(failure) => Failure::Transfer(failure.clone()),
        None => Failure::Install(InstallError::Archive(what)),
    }
}

pub(crate) fn unpack(reader: ChannelReader, root: &Path, limits: Limits) -> Result<Unpacked, Failure> {
    let mut input = BufReader::with_capacity(BUFFER, reader);
    let mut budget = Budget::new(limits);
    // Normalized path → (name in the archive, is_dir), to join the central directory's modes.
    let mut written: HashMap<String, (String, bool)> = HashMap::new();
    let mut buffer = vec![0u8; BUFFER];
    let mut has_central_directory = true;
    loop {
        let signature = read_u32(&mut input, "a local header")?;
        match signature {
            LOCAL_HEADER_SIGNATURE => {}
            CENTRAL_HEADER_SIGNATURE => break,
            END_SIGNATURE => {
                has_central_directory = false;
                break;
            }
            other => {
                return Err(InstallError::Archive(format!(
                    "bytes {} are not a zip record (signature {other:#010x}); is it a zip file?",
                    input.get_ref().read
                ))
                .into());
            }
        }
        let (path, name, is_dir) = write_entry(&mut input, root, &mut budget, &mut buffer)?;
        written.insert(path, (name, is_dir));
    }
    let central = if has_central_directory {
        read_central_directory(&mut input)?
    } else {
        Vec::new()
    };
    // The rest (end records) counts into the length and checksum.
    std::io::copy(&mut input, &mut std::io::sink())
        .map_err(|e| archive_error(input.get_ref(), format!("after the central directory: {e}")))?;
    apply_central_directory(root, &central, &written)?;
    let reader = input.into_inner();
    Ok(Unpacked {
        archive_bytes: reader.read,
        sha256: hex::encode(reader.hasher.finalize()),
        entries: written.len() as u64,
        unpacked_bytes: budget.total(),
    })
}

type Input = BufReader<ChannelReader>;

fn read_u32(input: &mut Input, what: &str) -> Result<u32, Failure> {
    let mut bytes = [0u8; 4];
    read_exact(input, &mut bytes, what)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_exact(input: &mut Input, buf: &mut [u8], what: &str) -> Result<(), Failure> {
    input.read_exact(buf).map_err(|e| {
        archive_error(
            input.get_ref(),
            format!("cut in {what} at byte {}: {e}", input.get_ref().read),
        )
    })
}

/// An entry's data as it streams: stored bytes, or deflate decoded on the fly (self-terminating, so
/// entries whose sizes follow in a data descriptor work too).
enum Data<'a> {
    Stored(std::io::Take<&'a mut Input>),
    Scanned(std::io::Cursor<Vec<u8>>),
    Deflated(flate2::bufread::DeflateDecoder<std::io::Take<&'a mut Input>>),
}

impl Read for Data<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Stored(data) => data.read(buf),
            Self::Scanned(data) => data.read(buf),
            Self::Deflated(data) => data.read(buf),
        }
    }
}

impl Data<'_> {
    /// Compressed bytes consumed so far.
    fn consumed(&self, written: u64) -> u64 {
        match self {
            Self::Stored(_) | Self::Scanned(_) => written,
            Self::Deflated(data) => data.total_in(),
        }
    }
}

/// Reads one entry after its signature and writes it; returns its normalized path, its name and whether it
/// is a directory.
fn write_entry(
    input: &mut Input,
    root: &Path,
    budget: &mut Budget,
    buffer: &mut [u8],
) -> Result<(String, String, bool), Failure> {
    let mut fixed = [0u8; LOCAL_HEADER_FIXED];
    read_exact(input, &mut fixed, "a local header")?;
    let mut header = LocalHeader::parse(&fixed);
    let mut name = vec![0u8; header.name_len];
    read_exact(input, &mut name, "an entry name")?;
    let mut extra = vec![0u8; header.extra_len];
    read_exact(input, &mut extra, "an extra field")?;
    header.apply_extra(&extra);
    let name = String::from_utf8_lossy(&name).into_owned();
    let entry = budget.begin(&name)?;
    let archive = |what: String| Failure::Install(InstallError::Archive(format!("entry {name:?} {what}")));
    if header.encrypted() {
        return Err(archive("is encrypted".into()));
    }
    let descriptor = header.has_data_descriptor();
    let limited = if descriptor {
        u64::MAX
    } else {
        header.compressed_size
    };
    // For a small stored entry with a data descriptor (a symlink or an empty file written by a streaming
    // writer) the descriptor is found by scanning; it is read then.
    let mut scanned_descriptor = None;
    let mut data = match (header.method, descriptor) {
        (0, true) => {
            let (bytes, crc) = scan_stored(input, &name)?;
            scanned_descriptor = Some((crc, bytes.len() as u64));
            Data::Scanned(std::io::Cursor::new(bytes))
        }
        (0, false) => Data::Stored(input.by_ref().take(limited)),
        (8, _) => Data::Deflated(flate2::bufread::DeflateDecoder::new(input.by_ref().take(limited))),
        (other, _) => {
            return Err(archive(format!(
                "uses compression method {other}; only stored and deflated are supported"
            )));
        }
    };
    let declared = if descriptor { u64::MAX } else { header.size };
    if !descriptor {
        budget.check_declared(&name, header.size, header.compressed_size)?;
    }
    let path = root.join(&entry.path);
    let parent = entry.path.rsplit_once('/').map_or("", |(parent, _)| parent);
    ensure_dirs(root, parent)?;
    let conf = in_conf(&entry.path);
    let mut out = if entry.is_dir {
        ensure_dirs(root, &entry.path)?;
        None
    } else {
        Some(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if conf { 0o666 } else { 0o644 })
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .map_err(io_error(&path))?,
        )
    };
    let mut crc = crc32fast::Hasher::new();
    let mut done = 0u64;
    let mut read_error = None;
    loop {
        let n = match data.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                read_error = Some(error.to_string());
                break;
            }
        };
        done += n as u64;
        budget.check_written(&name, done, n as u64, data.consumed(done), declared)?;
        crc.update(&buffer[..n]);
        match &mut out {
            Some(file) => file.write_all(&buffer[..n]).map_err(io_error(&path))?,
            None => return Err(archive("is a directory with data".into())),
        }
    }
    let consumed = data.consumed(done);
    drop(data);
    if let Some(error) = read_error {
        return Err(archive_error(input.get_ref(), format!("entry {name:?}: {error}")));
    }
    let (expected_crc, expected_size) = if let Some(scanned) = scanned_descriptor {
        scanned
    } else if descriptor {
        read_data_descriptor(input, header.zip64)?
    } else {
        (header.crc32, header.size)
    };
    if !descriptor && consumed != header.compressed_size {
        return Err(archive_error(
            input.get_ref(),
            format!(
                "entry {name:?} ends after {consumed} of {} compressed bytes",
                header.compressed_size
            ),
        ));
    }
    if done != expected_size {
        return Err(archive(format!(
            "holds {done} bytes, its header says {expected_size}"
        )));
    }
    if crc.finalize() != expected_crc {
        return Err(archive("fails its CRC-32 check (corrupted)".into()));
    }
    if conf && !entry.is_dir {
        // Explicitly: the process umask may have taken bits off.
        set_mode(&path, 0o666)?;
    }
    Ok((entry.path, name, entry.is_dir))
}

/// Creates the directories of `relative` below `root` that are missing: mode 0755, or 0777 at and below
/// `agent/conf` (the agent writes its configuration there at run time, as whichever user the application
/// runs), whatever the process umask.
pub(crate) fn ensure_dirs(root: &Path, relative: &str) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut path = root.to_owned();
    let mut prefix = String::new();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        let mode = if prefix == CONF_DIR || in_conf(&prefix) {
            0o777
        } else {
            0o755
        };
        match std::fs::DirBuilder::new().mode(mode).create(&path) {
            Ok(()) => set_mode(&path, mode)?,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io_error(&path)(error).into()),
        }
    }
    Ok(())
}

/// Largest stored entry with a data descriptor that is found by scanning.
const MAX_SCANNED: usize = 64 * 1024;

/// Reads a stored entry whose size follows in a data descriptor, up to [`MAX_SCANNED`] bytes: the data
/// ends where a descriptor signature is followed by that CRC and that size twice. Returns the data and its
/// CRC; the descriptor is consumed.
fn scan_stored(input: &mut Input, name: &str) -> Result<(Vec<u8>, u32), Failure> {
    let mut bytes = Vec::new();
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    loop {
        let mut byte = [0u8; 1];
        read_exact(input, &mut byte, "a stored entry")?;
        bytes.push(byte[0]);
        if bytes.len() >= 16 {
            let n = bytes.len() - 16;
            let size = u32::try_from(n).unwrap_or(u32::MAX);
            if u32_at(&bytes, n) == DATA_DESCRIPTOR_SIGNATURE
                && u32_at(&bytes, n + 8) == size
                && u32_at(&bytes, n + 12) == size
                && u32_at(&bytes, n + 4) == crc32fast::hash(&bytes[..n])
            {
                let crc = u32_at(&bytes, n + 4);
                bytes.truncate(n);
                return Ok((bytes, crc));
            }
        }
        if bytes.len() > MAX_SCANNED + 16 {
            return Err(InstallError::Archive(format!(
                "entry {name:?} is stored with its size after the data (data descriptor) and is larger than \
                 {MAX_SCANNED} bytes, which cannot be read while streaming"
            ))
            .into());
        }
    }
}

/// CRC and size from the data descriptor after an entry's data (its signature is optional).
fn read_data_descriptor(input: &mut Input, zip64: bool) -> Result<(u32, u64), Failure> {
    let first = read_u32(input, "a data descriptor")?;
    let crc = if first == DATA_DESCRIPTOR_SIGNATURE {
        read_u32(input, "a data descriptor")?
    } else {
        first
    };
    if zip64 {
        let mut sizes = [0u8; 16];
        read_exact(input, &mut sizes, "a data descriptor")?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&sizes[8..]);
        Ok((crc, u64::from_le_bytes(size)))
    } else {
        let _compressed = read_u32(input, "a data descriptor")?;
        Ok((crc, u64::from(read_u32(input, "a data descriptor")?)))
    }
}

pub(crate) fn in_conf(path: &str) -> bool {
    path.starts_with(CONF_DIR) && path.as_bytes().get(CONF_DIR.len()) == Some(&b'/')
}

fn read_central_directory(
    reader: &mut Input,
) -> Result<Vec<pure_code_module::archive::CentralEntry>, Failure> {
    // The entry loop stopped at the first central directory record, after its signature.
    let mut bytes = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_CENTRAL_DIRECTORY + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| archive_error(reader.get_ref(), format!("in the central directory: {e}")))?;
    if read as u64 > MAX_CENTRAL_DIRECTORY {
        return Err(InstallError::Archive(format!(
            "the central directory is larger than {MAX_CENTRAL_DIRECTORY} bytes"
        ))
        .into());
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
                problem: Problem::NotInArchive,
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
