//! Checkpoint files: the whole store in one self-describing, checksummed file.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! RAA-CHECKPOINT\n          magic line
//! key=value\n …             header: format, state_format, system_id, slot, lsn,
//! \n                        created_unix, entries (text, so `head` shows it)
//! (u32 len, key, u32 len, value) × entries
//! RAA-END\0 u64 entries u32 crc32   trailer; the CRC covers every byte before it
//! ```
//!
//! A file is written to a temporary name, fsynced, renamed into place and its
//! directory fsynced, so a reader sees a whole file or none. A file that was
//! torn or altered anyway fails [`verify`] and is refused with the reason.

use crate::lsn::Lsn;
use crate::FORMAT_VERSION;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// The layout version of checkpoint files (not of the values inside them:
/// that is [`FORMAT_VERSION`], recorded as `state_format`).
pub const CHECKPOINT_FORMAT: u32 = 1;

const MAGIC: &[u8] = b"RAA-CHECKPOINT\n";
const TRAILER: &[u8; 8] = b"RAA-END\0";
/// Longest key or value a checkpoint may hold: larger means corruption.
const MAX_ITEM: u32 = 256 * 1024 * 1024;

/// What a checkpoint says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub format: u32,
    /// The store's value encoding version ([`FORMAT_VERSION`]).
    pub state_format: u8,
    /// The source cluster's system identifier: a checkpoint of another
    /// database cluster must never be replayed against this one.
    pub system_id: String,
    pub slot: String,
    /// The applied LSN of the state it holds.
    pub lsn: Lsn,
    pub created_unix: i64,
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint {path} is not a raa checkpoint or is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot restore a checkpoint into {state}: the state directory is not empty")]
    NotEmpty { state: PathBuf },
    #[error(
        "checkpoint {path} has layout {found} and state format {state_format}; this build reads \
         layout {CHECKPOINT_FORMAT} with state format {FORMAT_VERSION}"
    )]
    Version {
        path: PathBuf,
        found: u32,
        state_format: u8,
    },
}

impl CheckpointInfo {
    fn header(&self) -> String {
        format!(
            "format={}\nstate_format={}\nsystem_id={}\nslot={}\nlsn={}\ncreated_unix={}\nentries={}\n\n",
            self.format,
            self.state_format,
            self.system_id,
            self.slot,
            self.lsn,
            self.created_unix,
            self.entries
        )
    }
}

/// Streams `entries` into a new checkpoint at `path`, atomically.
pub(crate) fn write<I>(
    path: &Path,
    info: CheckpointInfo,
    items: I,
) -> Result<CheckpointInfo, CheckpointError>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), CheckpointError>>,
{
    let tmp = path.with_extension("tmp");
    let written = write_to(path, &tmp, info, items);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_to<I>(
    path: &Path,
    tmp: &Path,
    mut info: CheckpointInfo,
    items: I,
) -> Result<CheckpointInfo, CheckpointError>
where
    I: Iterator<Item = Result<(Vec<u8>, Vec<u8>), CheckpointError>>,
{
    let io_err = |op| {
        let path = path.to_owned();
        move |source| CheckpointError::Io { path, op, source }
    };
    let file = File::create(tmp).map_err(io_err("create"))?;
    let mut out = Crc::new(BufWriter::with_capacity(1 << 20, file));
    // The header announces the count the caller read before streaming; the
    // writer is the only one changing the store, so a mismatch is a bug
    // caught here rather than a file that lies.
    out.write_all(MAGIC).map_err(io_err("write"))?;
    out.write_all(info.header().as_bytes())
        .map_err(io_err("write"))?;
    let mut n = 0_u64;
    for item in items {
        let (k, v) = item?;
        for part in [&k, &v] {
            let len = u32::try_from(part.len()).map_err(|_| CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: "an entry is larger than 4 GiB".into(),
            })?;
            out.write_all(&len.to_be_bytes()).map_err(io_err("write"))?;
            out.write_all(part).map_err(io_err("write"))?;
        }
        n += 1;
    }
    if n != info.entries {
        return Err(CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: format!(
                "the store changed while it was written ({} entries announced, {n} written)",
                info.entries
            ),
        });
    }
    out.write_all(TRAILER).map_err(io_err("write"))?;
    out.write_all(&n.to_be_bytes()).map_err(io_err("write"))?;
    let crc = out.crc.clone().finalize();
    let mut inner = out.inner;
    inner
        .write_all(&crc.to_be_bytes())
        .map_err(io_err("write"))?;
    let file = inner.into_inner().map_err(|e| CheckpointError::Io {
        path: path.to_owned(),
        op: "write",
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err("fsync"))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(io_err("rename"))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory"))?;
    }
    info.entries = n;
    Ok(info)
}

/// Reads only the header: cheap, for listing. Does not prove the file whole.
pub fn read_info(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let file = File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        op: "open",
        source,
    })?;
    let mut r = Crc::new(BufReader::new(file));
    parse_header(path, &mut r)
}

/// Reads the whole file, checking its structure, entry count and checksum.
pub fn verify(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    read(path, |_, _| Ok(()))
}

/// Reads the whole file, handing every entry to `each`, then checks the
/// trailer. The caller must not trust what it was handed until this returns Ok.
pub(crate) fn read(
    path: &Path,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), CheckpointError>,
) -> Result<CheckpointInfo, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        op: "open",
        source,
    })?;
    let mut r = Crc::new(BufReader::with_capacity(1 << 20, file));
    let info = parse_header(path, &mut r)?;
    for i in 0..info.entries {
        let k = read_item(&mut r).map_err(|e| corrupt(format!("entry {i}: {e}")))?;
        let v = read_item(&mut r).map_err(|e| corrupt(format!("entry {i}: {e}")))?;
        each(k, v)?;
    }
    let mut trailer = [0_u8; 16];
    r.read_exact(&mut trailer)
        .map_err(|_| corrupt("the file ends before its trailer (torn write?)".into()))?;
    if &trailer[..8] != TRAILER {
        return Err(corrupt("no trailer after the announced entries".into()));
    }
    let count = u64::from_be_bytes(trailer[8..].try_into().unwrap_or_default());
    if count != info.entries {
        return Err(corrupt(format!(
            "trailer counts {count} entries, header {}",
            info.entries
        )));
    }
    let computed = r.crc.clone().finalize();
    let mut stored = [0_u8; 4];
    r.inner
        .read_exact(&mut stored)
        .map_err(|_| corrupt("the file ends inside its checksum".into()))?;
    if u32::from_be_bytes(stored) != computed {
        return Err(corrupt("checksum mismatch".into()));
    }
    let mut rest = [0_u8; 1];
    if r.inner
        .read(&mut rest)
        .map_err(|source| CheckpointError::Io {
            path: path.to_owned(),
            op: "read",
            source,
        })?
        != 0
    {
        return Err(corrupt("bytes after the checksum".into()));
    }
    Ok(info)
}

fn read_item(r: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut len = [0_u8; 4];
    r.read_exact(&mut len)
        .map_err(|_| "the file ends early (torn write?)".to_owned())?;
    let len = u32::from_be_bytes(len);
    if len > MAX_ITEM {
        return Err(format!("an item claims {len} bytes"));
    }
    let mut buf = vec![0_u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|_| "the file ends early (torn write?)".to_owned())?;
    Ok(buf)
}

fn parse_header(path: &Path, r: &mut impl Read) -> Result<CheckpointInfo, CheckpointError> {
    let corrupt = |reason: &str| CheckpointError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let mut magic = vec![0_u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .map_err(|_| corrupt("too short for a header"))?;
    if magic != MAGIC {
        return Err(corrupt("wrong magic line"));
    }
    let mut fields = std::collections::HashMap::new();
    loop {
        let line = read_line(r).ok_or_else(|| corrupt("unterminated header"))?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| corrupt("a header line without '='"))?;
        fields.insert(k.to_owned(), v.to_owned());
        if fields.len() > 64 {
            return Err(corrupt("too many header lines"));
        }
    }
    let get = |k: &str| {
        fields
            .get(k)
            .cloned()
            .ok_or_else(|| corrupt(&format!("header lacks {k}")))
    };
    let num = |k: &str| -> Result<i64, CheckpointError> {
        get(k)?
            .parse()
            .map_err(|_| corrupt(&format!("header {k} is not a number")))
    };
    let format = num("format")?;
    let state_format = num("state_format")?;
    if format != i64::from(CHECKPOINT_FORMAT) || state_format != i64::from(FORMAT_VERSION) {
        return Err(CheckpointError::Version {
            path: path.to_owned(),
            found: u32::try_from(format).unwrap_or(0),
            state_format: u8::try_from(state_format).unwrap_or(0),
        });
    }
    let lsn = get("lsn")?
        .parse()
        .map_err(|_| corrupt("header lsn is not an LSN"))?;
    Ok(CheckpointInfo {
        format: CHECKPOINT_FORMAT,
        state_format: FORMAT_VERSION,
        system_id: get("system_id")?,
        slot: get("slot")?,
        lsn,
        created_unix: num("created_unix")?,
        entries: u64::try_from(num("entries")?).map_err(|_| corrupt("negative entries"))?,
    })
}

/// One header line without its newline; `None` at EOF or past 4 KiB.
fn read_line(r: &mut impl Read) -> Option<String> {
    let mut out = Vec::new();
    let mut b = [0_u8; 1];
    loop {
        r.read_exact(&mut b).ok()?;
        if b[0] == b'\n' {
            return String::from_utf8(out).ok();
        }
        out.push(b[0]);
        if out.len() > 4096 {
            return None;
        }
    }
}

/// A reader or writer that checksums every byte passing through.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        Crc {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}
