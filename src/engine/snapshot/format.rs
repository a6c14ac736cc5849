//! The snapshot file format (version 1, integers little-endian; see `mod.rs`). Pure codec:
//! a [`Writer`] streams records through a hashing writer, [`verify`] checks a whole file
//! before anything is applied, a [`Reader`] yields its records with every length bounded
//! before anything is allocated.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use xxhash_rust::xxh3::Xxh3Default;

use super::SnapshotError;
use crate::engine::Entry;

const MAGIC: &[u8; 6] = b"TCSNAP";
pub const VERSION: u16 = 1;
const HEADER_LEN: u64 = 6 + 2 + 8;
const FOOTER_LEN: u64 = 1 + 8 + 8;
const RECORD: u8 = 1;
const END: u8 = 0;
/// Bounds on lengths read from a file, so a corrupt length cannot ask for a huge allocation.
const MAX_NAME_LEN: u32 = 1 << 20;
const MAX_VALUE_LEN: u32 = 1 << 30;
const MAX_NAMES: u32 = 1 << 16;

/// A snapshot file being written: header first, then one record per [`Writer::record`], then
/// [`Writer::finish`] writes the footer and fsyncs.
pub(super) struct Writer {
    out: HashingWriter<BufWriter<File>>,
    count: u64,
}

impl Writer {
    pub fn create(path: &Path, created_at_ms: u64) -> Result<Writer, SnapshotError> {
        let file = File::create(path)?;
        let mut out =
            HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Xxh3Default::new(), written: 0 };
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&created_at_ms.to_le_bytes())?;
        Ok(Writer { out, count: 0 })
    }

    pub fn record(&mut self, entry: &Entry) -> std::io::Result<()> {
        write_record(&mut self.out, entry)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the footer and fsyncs; returns the records and bytes written.
    pub fn finish(self) -> Result<(u64, u64), SnapshotError> {
        let Writer { mut out, count } = self;
        out.write_all(&[END])?;
        out.write_all(&count.to_le_bytes())?;
        let checksum = out.hasher.digest();
        let mut inner = out.inner;
        inner.write_all(&checksum.to_le_bytes())?;
        let file = inner.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        Ok((count, out.written + 8))
    }
}

/// The records of a verified file, in order.
pub(super) struct Reader {
    input: BufReader<File>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, SnapshotError> {
        let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
        input.seek(SeekFrom::Start(HEADER_LEN))?;
        Ok(Reader { input })
    }

    /// The next record, its key left in `key`; `None` at the footer.
    pub fn next(&mut self, key: &mut Vec<u8>) -> Result<Option<Record>, SnapshotError> {
        match read_u8(&mut self.input)? {
            END => Ok(None),
            RECORD => read_record(&mut self.input, key).map(Some),
            _ => Err(SnapshotError::Corrupt("unknown record type")),
        }
    }
}

/// Checks the header, the version and the checksum of the whole file without applying it;
/// returns the record count of its footer.
pub(super) fn verify(path: &Path) -> Result<u64, SnapshotError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(err) => return Err(err.into()),
    };
    let len = file.metadata()?.len();
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(SnapshotError::Truncated);
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header)?;
    if &header[..6] != MAGIC {
        return Err(SnapshotError::Corrupt("not a tiercache snapshot"));
    }
    let version = u16::from_le_bytes([header[6], header[7]]);
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let mut hasher = Xxh3Default::new();
    hasher.update(&header);
    let mut remaining = len - HEADER_LEN - 8;
    let mut buffer = vec![0u8; 1 << 20];
    let mut last = [0u8; 8];
    while remaining > 0 {
        let chunk = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..chunk])?;
        hasher.update(&buffer[..chunk]);
        if chunk >= 8 {
            last.copy_from_slice(&buffer[chunk - 8..chunk]);
        } else {
            last.rotate_left(chunk);
            last[8 - chunk..].copy_from_slice(&buffer[..chunk]);
        }
        remaining -= chunk as u64;
    }
    let mut stored = [0u8; 8];
    file.read_exact(&mut stored)?;
    if u64::from_le_bytes(stored) != hasher.digest() {
        return Err(SnapshotError::Corrupt("checksum mismatch"));
    }
    Ok(u64::from_le_bytes(last)) // The footer's record count sits just before the checksum.
}

pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Xxh3Default,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_record(out: &mut impl Write, entry: &Entry) -> std::io::Result<()> {
    out.write_all(&[RECORD])?;
    write_bytes(out, entry.key_bytes())?;
    out.write_all(&entry.cached_at_ms().to_le_bytes())?;
    out.write_all(&entry.expires_at_ms().to_le_bytes())?;
    out.write_all(&(entry.tags().len() as u32).to_le_bytes())?;
    for tag in entry.tags() {
        write_bytes(out, tag.as_str().as_bytes())?;
    }
    out.write_all(&(entry.depends_on().len() as u32).to_le_bytes())?;
    for dep in entry.depends_on() {
        write_bytes(out, dep.as_str().as_bytes())?;
    }
    write_bytes(out, entry.value())
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// One record as read, before the engine checks it (its key is left in the caller's buffer).
#[derive(Debug, PartialEq)]
pub(crate) struct Record {
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub tags: Vec<String>,
    pub deps: Vec<String>,
    pub value: Bytes,
}

/// Reads one record (after its type byte), its key into `key`; every length is bounded.
pub(crate) fn read_record(input: &mut impl Read, key: &mut Vec<u8>) -> Result<Record, SnapshotError> {
    read_bytes_into(input, MAX_NAME_LEN, key)?;
    let cached_at_ms = read_u64(input)?;
    let expires_at_ms = read_u64(input)?;
    let tags = read_strings(input)?;
    let deps = read_strings(input)?;
    let value = Bytes::from(read_bytes(input, MAX_VALUE_LEN)?);
    if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_err() {
        return Err(SnapshotError::Corrupt("a value is not JSON"));
    }
    Ok(Record { cached_at_ms, expires_at_ms, tags, deps, value })
}

fn read_strings(input: &mut impl Read) -> Result<Vec<String>, SnapshotError> {
    let count = read_u32(input)?;
    if count > MAX_NAMES {
        return Err(SnapshotError::Corrupt("too many tags or dependencies"));
    }
    (0..count).map(|_| read_string(input)).collect()
}

fn read_string(input: &mut impl Read) -> Result<String, SnapshotError> {
    String::from_utf8(read_bytes(input, MAX_NAME_LEN)?).map_err(|_| SnapshotError::Corrupt("a name is not UTF-8"))
}

fn read_bytes(input: &mut impl Read, max: u32) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    read_bytes_into(input, max, &mut bytes)?;
    Ok(bytes)
}

/// Reads a length-prefixed byte string into `bytes` (cleared first).
fn read_bytes_into(input: &mut impl Read, max: u32, bytes: &mut Vec<u8>) -> Result<(), SnapshotError> {
    let len = read_u32(input)?;
    if len > max {
        return Err(SnapshotError::Corrupt("a length is out of range"));
    }
    bytes.clear();
    // Sized up front for ordinary lengths, grown as bytes arrive beyond that, so a corrupt
    // length cannot allocate more than the input holds.
    bytes.reserve_exact((len as usize).min(64 * 1024));
    input.take(u64::from(len)).read_to_end(bytes)?;
    if bytes.len() != len as usize {
        return Err(SnapshotError::Truncated);
    }
    Ok(())
}

fn read_u8(input: &mut impl Read) -> Result<u8, SnapshotError> {
    let mut buf = [0u8; 1];
    read_exact(input, &mut buf)?;
    Ok(buf[0])
}

fn read_u32(input: &mut impl Read) -> Result<u32, SnapshotError> {
    let mut buf = [0u8; 4];
    read_exact(input, &mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

fn read_u64(input: &mut impl Read) -> Result<u64, SnapshotError> {
    let mut buf = [0u8; 8];
    read_exact(input, &mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|err| match err.kind() {
        std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
        _ => SnapshotError::Io(err),
    })
}
