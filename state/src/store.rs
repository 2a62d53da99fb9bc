//! The sled store: typed keys in namespaces of one tree, committed in atomic batches.

use crate::checkpoint::{self, CheckpointError, CheckpointInfo};
use crate::codec::{self, CodecError, FORMAT_VERSION};
use crate::lsn::Lsn;
use crate::provisional::Provisional;
use crate::writer::{Hold, WaitError, Writer, Writes};
use itertools::{EitherOrBoth, Itertools};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The namespaces of the store; the first byte of every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Space {
    /// Store metadata: format version, applied LSN, source identity.
    Meta = 0,
    /// Per-fact records: the last image raa saw and what it contributed.
    Fact = 1,
    /// Aggregate accumulators, one per output row.
    Accum = 2,
    /// Secondary indexes (dimension key → facts that reference it).
    Index = 3,
    /// Cached dimension rows.
    Dim = 4,
}

/// A typed key: the namespace it lives in and an order-preserving encoding.
pub trait StateKey {
    const SPACE: Space;
    /// Appends the key's bytes (without the namespace byte).
    fn encode_key(&self, out: &mut Vec<u8>);
}

/// `key` (or a prefix) within `space`: its namespace byte first.
pub(crate) fn space_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(space as u8);
    full.extend_from_slice(key);
    full
}

pub(crate) fn full_key<K: StateKey>(key: &K) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(K::SPACE as u8);
    key.encode_key(&mut out);
    out
}

const META_FORMAT: &[u8] = &[Space::Meta as u8, b'f'];
use crate::writer::META_APPLIED;
/// Marks a provisional batch being applied; holds its seal (see [`Store::commit_provisional`]).
const META_PROVISIONAL: &[u8] = &[Space::Meta as u8, b'p'];
const META_NAMED: u8 = b'n';

/// The page cache [`Store::open`] gives sled: raa's `state_cache_mb`
/// default. sled holds a multiple of it resident (256 MiB held 624 MiB);
/// smaller caches measured no slower (README, Benchmarks).
const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// How long [`Store::open`] waits for a directory lock held by a closing database.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state directory {path} is locked by another process: is another raa running \
         with the same --state-dir?"
    )]
    Locked { path: PathBuf },
    #[error("cannot open the state store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("state store I/O failed during {op}")]
    Io {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("state value in {space:?} could not be encoded or decoded")]
    Codec {
        space: Space,
        #[source]
        source: CodecError,
    },
    #[error(
        "state store at {path} has format version {found}; this build uses {FORMAT_VERSION}: \
         restore a checkpoint made by a matching build or start from an empty state directory"
    )]
    FormatMismatch { path: PathBuf, found: u8 },
    #[error(
        "the provisional batch holds a value that is neither a put nor a remove: \
         the state directory is damaged"
    )]
    CorruptProvisional,
    #[error("refusing to move the applied LSN backwards from {current} to {requested}")]
    LsnBackwards { current: Lsn, requested: Lsn },
    #[error(
        "refusing an unanchored write to a store at applied LSN {applied}: it is written \
         without a redo record, so a crash in it would leave that state half-changed"
    )]
    Anchored { applied: Lsn },
    #[error(
        "the state batch {} waits for its sink commit to be confirmed: \
         it must be confirmed or discarded first",
        lsn.map_or_else(|| "without an LSN".to_owned(), |l| format!("at {l}"))
    )]
    Unconfirmed { lsn: Option<Lsn> },
}

fn wait_err(e: WaitError) -> StateError {
    match e {
        WaitError::Failed(op, source) => StateError::Io { op, source },
        WaitError::Unconfirmed(lsn) => StateError::Unconfirmed { lsn },
    }
}

/// The state store. Cheap to share by reference; all writes go through
/// [`Store::commit`], [`Store::submit`], [`Store::stage`] (readable at
/// once, written once released) or [`Store::stage_unconfirmed`] (written
/// once its sink commit is confirmed), applied in order by one background
/// writer.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// The applied LSN that is durable (flushed with its batch).
    applied: Arc<AtomicU64>,
    /// The applied LSN of the newest batch handed to the writer.
    submitted: AtomicU64,
    writer: Writer,
}

impl Store {
    /// Opens (or creates) the store in `dir`, checking its format version.
    ///
    /// sled releases a directory's lock only once its background flusher has
    /// let go of a dropped database, so a lock conflict is retried for up to
    /// `LOCK_WAIT` before it is reported: another process holds the directory.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with sled's page cache capped at `cache_bytes`. sled
    /// counts the cache by the size of its pages on disk, so what it holds
    /// resident is a multiple of this; a smaller cache saves memory and costs
    /// reads from disk once the state outgrows it.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, StateError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                .open();
            match opened {
                Ok(db) => break db,
                Err(e) if is_lock_conflict(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if is_lock_conflict(&e) => {
                    return Err(StateError::Locked {
                        path: dir.to_owned(),
                    })
                }
                Err(source) => {
                    return Err(StateError::Open {
                        path: dir.to_owned(),
                        source,
                    })
                }
            }
        };
        let tree = db.open_tree("state").map_err(|source| StateError::Open {
            path: dir.to_owned(),
            source,
        })?;
        match tree.get(META_FORMAT).map_err(io("open"))? {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(StateError::FormatMismatch {
                    path: dir.to_owned(),
                    found: v.first().copied().unwrap_or(0),
                })
            }
            None => {
                tree.insert(META_FORMAT, &[FORMAT_VERSION])
                    .map_err(io("open"))?;
                db.flush().map_err(io("open"))?;
            }
        }
        match crate::writer::recover(&db, &tree) {
            Ok(_) => {}
            Err(crate::writer::RecoverError::Io(source)) => {
                return Err(StateError::Open {
                    path: dir.to_owned(),
                    source,
                })
            }
            Err(crate::writer::RecoverError::Codec(source)) => {
                return Err(StateError::Codec {
                    space: Space::Meta,
                    source,
                })
            }
        }
        let provisional =
            db.open_tree(crate::provisional::TREE)
                .map_err(|source| StateError::Open {
                    path: dir.to_owned(),
                    source,
                })?;
        finish_provisional(&db, &tree, &provisional)?;
        let applied = match tree.get(META_APPLIED).map_err(io("open"))? {
            Some(v) => decode::<Lsn>(Space::Meta, &v)?.0,
            None => 0,
        };
        let durable = Arc::new(AtomicU64::new(applied));
        let writer = Writer::start(db.clone(), tree.clone(), durable.clone()).map_err(|e| {
            StateError::Open {
                path: dir.to_owned(),
                source: sled::Error::Io(e),
            }
        })?;
        Ok(Store {
            path: dir.to_owned(),
            writer,
            db,
            tree,
            applied: durable,
            submitted: AtomicU64::new(applied),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The end LSN of the last source transaction whose effects are durable
    /// here (a submitted batch counts once it is flushed); `None` for a new store.
    pub fn applied_lsn(&self) -> Option<Lsn> {
        match self.applied.load(Ordering::Acquire) {
            0 => None,
            v => Some(Lsn(v)),
        }
    }

    /// Reads one value, as of the newest submitted batch.
    pub fn get<K: StateKey, V: DeserializeOwned>(&self, key: &K) -> Result<Option<V>, StateError> {
        self.get_raw(K::SPACE, &full_key(key))
    }

    /// Reads a named metadata value (source identity, slot name, …).
    pub fn meta<V: DeserializeOwned>(&self, name: &str) -> Result<Option<V>, StateError> {
        self.get_raw(Space::Meta, &meta_key(name))
    }

    fn get_raw<V: DeserializeOwned>(
        &self,
        space: Space,
        key: &[u8],
    ) -> Result<Option<V>, StateError> {
        if let Some(pending) = self.writer.pending(key) {
            return pending.map(|b| decode(space, &b)).transpose();
        }
        match self.tree.get(key).map_err(io("get"))? {
            Some(bytes) => Ok(Some(decode(space, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Waits for the batch in flight; its error if the write failed (the
    /// store must then be dropped and reopened), or if the batch is staged
    /// unconfirmed (which only confirming or discarding ends).
    pub fn wait(&self) -> Result<(), StateError> {
        self.writer.wait().map_err(wait_err)
    }

    /// Iterates the values of `space` whose encoded key starts with `prefix`,
    /// yielding each key without its namespace byte.
    pub fn scan<V: DeserializeOwned + 'static>(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, V), StateError>> + '_ {
        self.scan_raw(space, prefix).map(move |item| {
            let (k, v) = item?;
            Ok((k[1..].to_vec(), decode(space, &v)?))
        })
    }

    /// Iterates the keys of `space` starting with `prefix`, without their
    /// namespace byte and without decoding values.
    pub fn scan_keys(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Vec<u8>, StateError>> + '_ {
        self.scan_raw(space, prefix)
            .map(|item| item.map(|(k, _)| k[1..].to_vec()))
    }

    /// The entries under `space` and `prefix` in key order, as of the newest
    /// batch handed over: the tree read under the batches in flight, if any.
    /// Why not wait for them instead: one staged unconfirmed must stay
    /// unwritten until its sink commit, and one held for release would be
    /// written while the caller aggregates.
    fn scan_raw(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StateError>> + '_ {
        let failed = self
            .writer
            .failed()
            .map(|(op, source)| Err(StateError::Io { op, source }));
        let full = space_key(space, prefix);
        // The batches' writes under the prefix; a newer batch's win.
        let mut overlay = Writes::new();
        for writes in self.writer.overlays() {
            let under = writes
                .range(full.clone()..)
                .take_while(|(k, _)| k.starts_with(&full));
            overlay.extend(under.map(|(k, v)| (k.clone(), v.clone())));
        }
        let tree = self.tree.scan_prefix(full).map(|i| i.map_err(io("scan")));
        let merged = tree
            .merge_join_by(overlay, |t, (k, _)| match t {
                Ok((tk, _)) => tk.as_ref().cmp(k.as_slice()),
                // Passed on at once.
                Err(_) => std::cmp::Ordering::Less,
            })
            .filter_map(|m| match m {
                EitherOrBoth::Left(t) => Some(t),
                // The batch's put or remove wins.
                EitherOrBoth::Right((k, v)) | EitherOrBoth::Both(_, (k, v)) => {
                    v.map(|v| Ok((k.into(), v.into())))
                }
            });
        failed.into_iter().chain(merged)
    }

    /// Applies `batch` and the new applied LSN atomically, then flushes to
    /// disk; returns once it is durable.
    ///
    /// The LSN never moves backwards; committing the same LSN again is allowed
    /// (a batch that only refreshed metadata).
    pub fn commit(&self, batch: Batch, applied: Lsn) -> Result<(), StateError> {
        self.submit(batch, applied)?;
        self.wait()
    }

    /// Like [`Store::commit`], but returns once the batch is handed to the
    /// background writer (once fewer than two batches are in flight): reads
    /// see it at once, [`Store::applied_lsn`] moves when it is flushed. A
    /// failed write is reported by the next submit or [`Store::wait`].
    pub fn submit(&self, batch: Batch, applied: Lsn) -> Result<(), StateError> {
        self.hand_over(batch, applied, Hold::No)
    }

    /// Like [`Store::submit`], but the writer starts on the batch only once
    /// [`Store::release`]d, or when the store is next waited on, submitted
    /// to or closed. Reads see it at once. For a caller that wants the
    /// writer idle while it aggregates the next batch.
    pub fn stage(&self, batch: Batch, applied: Lsn) -> Result<(), StateError> {
        self.hand_over(batch, applied, Hold::Release)
    }

    /// Lets the writer start on a [`Store::stage`]d batch.
    pub fn release(&self) {
        self.writer.release();
    }

    /// Like [`Store::stage`], but written only once [`Store::confirm`]ed:
    /// for a batch whose sink transaction is still running, which the state
    /// must never get ahead of. Nothing else lets it be written: waiting on
    /// the store, submitting or committing is refused with
    /// [`StateError::Unconfirmed`] until it is confirmed or discarded, and
    /// closing the store drops it unwritten.
    pub fn stage_unconfirmed(&self, batch: Batch, applied: Lsn) -> Result<(), StateError> {
        self.hand_over(batch, applied, Hold::Confirm)
    }

    /// Lets the writer start on a batch [`Store::stage_unconfirmed`]d: its
    /// sink transaction has committed.
    pub fn confirm(&self) {
        self.writer.confirm();
    }

    /// Drops a batch staged unconfirmed, unwritten (its sink transaction
    /// failed, or its outcome is unknown): reads no longer see it, and the
    /// LSN it was to reach may be submitted again. Whether there was one.
    pub fn discard_unconfirmed(&self) -> bool {
        let Some(newest) = self.writer.discard() else {
            return false;
        };
        let durable = Lsn(self.applied.load(Ordering::Acquire));
        let submitted = newest.unwrap_or(durable).max(durable);
        self.submitted.store(submitted.0, Ordering::Release);
        true
    }

    fn hand_over(&self, mut batch: Batch, applied: Lsn, hold: Hold) -> Result<(), StateError> {
        let current = Lsn(self.submitted.load(Ordering::Acquire));
        if applied < current {
            return Err(StateError::LsnBackwards {
                current,
                requested: applied,
            });
        }
        batch.put_applied(applied)?;
        self.writer
            .submit(batch.into_writes(), Some(applied), hold)
            .map_err(wait_err)?;
        self.submitted.store(applied.0, Ordering::Release);
        Ok(())
    }

    /// Hands `batch` to the writer without moving the applied LSN: for a
    /// backfill, whose rows belong to no LSN until the snapshot is whole.
    /// Returns once the writer has it (as [`Store::submit`]), so a backfill
    /// aggregates its next chunk while this one is written. A store whose
    /// applied LSN is unset is incomplete, and [`Store::clear`]ed on start;
    /// so the batch is not atomic (no redo record), and a store that has an
    /// applied LSN refuses it.
    pub fn submit_unanchored(&self, batch: Batch) -> Result<(), StateError> {
        let applied = Lsn(self.submitted.load(Ordering::Acquire));
        if applied != Lsn::ZERO {
            return Err(StateError::Anchored { applied });
        }
        self.writer
            .submit(batch.into_writes(), None, Hold::No)
            .map_err(wait_err)
    }

    /// An empty provisional batch, for a batch too large to hold in memory.
    /// One at a time: a new one empties the last.
    pub fn provisional(&self) -> Result<Provisional, StateError> {
        let tree = self
            .db
            .open_tree(crate::provisional::TREE)
            .map_err(io("open the provisional batch"))?;
        tree.clear().map_err(io("clear"))?;
        Ok(Provisional { tree })
    }

    /// Commits a provisional batch with `batch` (its metadata) and the new
    /// applied LSN, and returns once it is durable, as [`Store::commit`].
    ///
    /// Atomic through a marker, like a large batch's redo record: the marker
    /// (holding `batch` and the LSN) is flushed first, the provisional writes
    /// are then applied a chunk at a time, and `batch` with the LSN seals
    /// them, removing the marker. A crash after the marker is finished on the
    /// next open; one before it leaves the state as it was.
    pub fn commit_provisional(
        &self,
        provisional: Provisional,
        mut batch: Batch,
        applied: Lsn,
    ) -> Result<(), StateError> {
        let current = Lsn(self.submitted.load(Ordering::Acquire));
        if applied < current {
            return Err(StateError::LsnBackwards {
                current,
                requested: applied,
            });
        }
        self.wait()?;
        batch.put_applied(applied)?;
        let writes = batch.into_writes();
        let seal = crate::provisional::encode_seal(&writes)?;
        self.tree
            .insert(META_PROVISIONAL, seal)
            .map_err(io("commit"))?;
        self.db.flush().map_err(io("flush"))?;
        self.apply_provisional(&provisional, &writes)?;
        self.submitted.store(applied.0, Ordering::Release);
        self.applied.store(applied.0, Ordering::Release);
        Ok(())
    }

    /// [`Store::submit_unanchored`] of a provisional batch (a backfill chunk
    /// that outgrew memory), durable on return: applied a chunk at a time,
    /// without a marker.
    pub fn write_unanchored_provisional(
        &self,
        provisional: Provisional,
        batch: Batch,
    ) -> Result<(), StateError> {
        let applied = Lsn(self.submitted.load(Ordering::Acquire));
        if applied != Lsn::ZERO {
            return Err(StateError::Anchored { applied });
        }
        self.wait()?;
        self.apply_provisional(&provisional, &batch.into_writes())
    }

    fn apply_provisional(
        &self,
        provisional: &Provisional,
        seal: &Writes,
    ) -> Result<(), StateError> {
        crate::provisional::apply(
            &self.db,
            &self.tree,
            &provisional.tree,
            seal,
            META_PROVISIONAL,
        )
    }

    /// Removes everything (an incomplete backfill or restore), keeping the format.
    pub fn clear(&self) -> Result<(), StateError> {
        self.wait()?;
        self.tree.clear().map_err(io("clear"))?;
        self.tree
            .insert(META_FORMAT, &[FORMAT_VERSION])
            .map_err(io("clear"))?;
        self.db.flush().map_err(io("flush"))?;
        self.applied.store(0, Ordering::Release);
        self.submitted.store(0, Ordering::Release);
        Ok(())
    }

    /// Whether the store holds anything beyond its format marker.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        self.wait()?;
        for item in self.tree.iter().keys() {
            if item.map_err(io("scan"))?.as_ref() != META_FORMAT {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Writes the whole store to a checkpoint file at `path` (atomically).
    /// The caller must not commit concurrently: the pipeline checkpoints
    /// between batches.
    pub fn checkpoint(
        &self,
        path: &Path,
        system_id: &str,
        slot: &str,
        created_unix: i64,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let store_err = |source: sled::Error| CheckpointError::Io {
            path: path.to_owned(),
            op: "read the state",
            source: std::io::Error::other(source),
        };
        self.wait().map_err(|e| CheckpointError::Io {
            path: path.to_owned(),
            op: "finish the last state commit",
            source: std::io::Error::other(e),
        })?;
        let lsn = self.applied_lsn().ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_owned(),
            reason: "the state is incomplete (no applied LSN): nothing to checkpoint".into(),
        })?;
        let info = CheckpointInfo {
            format: checkpoint::CHECKPOINT_FORMAT,
            state_format: FORMAT_VERSION,
            system_id: system_id.to_owned(),
            slot: slot.to_owned(),
            lsn,
            created_unix,
            entries: self.tree.len() as u64,
        };
        let items = self.tree.iter().map(move |item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(store_err)
        });
        checkpoint::write(path, info, items)
    }

    /// Loads a checkpoint into this store, which must be empty. The file is
    /// verified whole before anything is written; the applied LSN is set last,
    /// so an interrupted restore leaves an incomplete (cleared on start) store.
    pub fn restore(&self, path: &Path) -> Result<CheckpointInfo, CheckpointError> {
        let info = checkpoint::verify(path)?;
        let not_empty = || CheckpointError::NotEmpty {
            state: self.path.clone(),
        };
        if !self.is_empty().map_err(|_| not_empty())? {
            return Err(not_empty());
        }
        let store_err = |op: &'static str| {
            let path = path.to_owned();
            move |source: sled::Error| CheckpointError::Io {
                path: path.clone(),
                op,
                source: std::io::Error::other(source),
            }
        };
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        let mut applied = None;
        checkpoint::read(path, |k, v| {
            if k == META_APPLIED {
                applied = Some(v);
                return Ok(());
            }
            batch.insert(k, v);
            pending += 1;
            if pending == crate::writer::CHUNK {
                crate::reclaim::apply(&self.tree, std::mem::take(&mut batch), pending)
                    .map_err(store_err("write the state"))?;
                pending = 0;
            }
            Ok(())
        })?;
        crate::reclaim::apply(&self.tree, batch, pending).map_err(store_err("write the state"))?;
        let recorded = applied
            .as_deref()
            .and_then(|v| decode::<Lsn>(Space::Meta, v).ok());
        if recorded != Some(info.lsn) {
            return Err(CheckpointError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "header LSN {} but the state inside records {recorded:?}",
                    info.lsn
                ),
            });
        }
        let bytes = applied.unwrap_or_default();
        self.tree
            .insert(META_APPLIED, bytes)
            .map_err(store_err("write the state"))?;
        self.db.flush().map_err(store_err("flush the state"))?;
        self.applied.store(info.lsn.0, Ordering::Release);
        self.submitted.store(info.lsn.0, Ordering::Release);
        Ok(info)
    }

    /// Bytes the store takes on disk. Cheap, and it does not wait for the
    /// writer (which would release a held batch early).
    pub fn disk_bytes(&self) -> Result<u64, StateError> {
        self.db.size_on_disk().map_err(io("stats"))
    }

    /// Keys in the store, counted by a scan of all of them: O(state), so a
    /// caller that repeats it must pace it.
    pub fn count_keys(&self) -> usize {
        self.tree.len()
    }
}

/// Puts and removes to apply together with an applied LSN; the last write
/// of a key wins.
///
/// Kept in the order written and sorted once, when handed to the store:
/// inserting each write into a B-tree as it came (in the engine's hash
/// order) was a sixth of a backfill's aggregating thread (perf, 300 000
/// facts).
#[derive(Default)]
pub struct Batch {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put<K: StateKey, V: Serialize>(&mut self, key: &K, value: &V) -> Result<(), StateError> {
        self.writes
            .push((full_key(key), Some(encode(K::SPACE, value)?)));
        Ok(())
    }

    pub fn remove<K: StateKey>(&mut self, key: &K) {
        self.writes.push((full_key(key), None));
    }

    /// Removes a key as returned by [`Store::scan`] of `space`.
    pub fn remove_raw(&mut self, space: Space, key: &[u8]) {
        self.writes.push((space_key(space, key), None));
    }

    pub fn put_meta<V: Serialize>(&mut self, name: &str, value: &V) -> Result<(), StateError> {
        self.writes
            .push((meta_key(name), Some(encode(Space::Meta, value)?)));
        Ok(())
    }

    /// Sets the applied LSN the batch seals.
    fn put_applied(&mut self, applied: Lsn) -> Result<(), StateError> {
        self.writes
            .push((META_APPLIED.to_vec(), Some(encode(Space::Meta, &applied)?)));
        Ok(())
    }

    /// The writes in key order, one a key: its last.
    pub(crate) fn into_writes(mut self) -> Writes {
        // Stable: a key's writes stay in the order written.
        self.writes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut last: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(self.writes.len());
        for (k, v) in self.writes {
            match last.last_mut() {
                Some(prev) if prev.0 == k => prev.1 = v,
                _ => last.push((k, v)),
            }
        }
        last.into_iter().collect()
    }

    /// How many puts and removes the batch holds.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// On open: finishes a provisional batch whose commit a crash interrupted
/// after its marker, and empties one that was never committed.
fn finish_provisional(
    db: &sled::Db,
    tree: &sled::Tree,
    provisional: &sled::Tree,
) -> Result<(), StateError> {
    match tree.get(META_PROVISIONAL).map_err(io("open"))? {
        Some(seal) => {
            let seal = crate::provisional::decode_seal(&seal)?;
            tracing::info!(
                writes = provisional.len(),
                "finishing the commit of a large batch a stop interrupted"
            );
            crate::provisional::apply(db, tree, provisional, &seal, META_PROVISIONAL)
        }
        None if !provisional.is_empty() => {
            provisional.clear().map_err(io("clear"))?;
            db.flush().map(drop).map_err(io("flush"))
        }
        None => Ok(()),
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![Space::Meta as u8, META_NAMED];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn io(op: &'static str) -> impl Fn(sled::Error) -> StateError {
    move |source| StateError::Io { op, source }
}

pub(crate) fn encode<V: Serialize>(space: Space, value: &V) -> Result<Vec<u8>, StateError> {
    codec::encode(value).map_err(|source| StateError::Codec { space, source })
}

pub(crate) fn decode<V: DeserializeOwned>(space: Space, bytes: &[u8]) -> Result<V, StateError> {
    codec::decode(bytes).map_err(|source| StateError::Codec { space, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FactId(u64);
    impl StateKey for FactId {
        const SPACE: Space = Space::Fact;
        fn encode_key(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0.to_be_bytes());
        }
    }

    /// The last write of a key in a batch wins, whatever was written
    /// between (the batch sorts its writes only when handed over).
    #[test]
    fn a_batchs_last_write_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(&FactId(1), &1_u64).unwrap();
        b.put(&FactId(3), &3_u64).unwrap();
        b.put(&FactId(2), &2_u64).unwrap();
        b.remove(&FactId(1));
        b.put(&FactId(3), &30_u64).unwrap();
        b.put(&FactId(1), &10_u64).unwrap();
        b.remove(&FactId(2));
        assert_eq!(b.len(), 7, "writes, not keys");
        store.commit(b, Lsn(5)).unwrap();
        let get = |id| store.get::<_, u64>(&FactId(id)).unwrap();
        assert_eq!((get(1), get(2), get(3)), (Some(10), None, Some(30)));
        assert_eq!(store.applied_lsn(), Some(Lsn(5)));
    }

    #[test]
    fn a_store_whose_close_does_not_end_is_left_behind_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(&FactId(7), &"seven".to_string()).unwrap();
        store.commit(b, Lsn(70)).unwrap();
        let held = store.writer.hold_close();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(store);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("dropping the store returned");
        // Released later, the directory opens with the batch in it.
        held.store(false, Ordering::Release);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(70)));
        assert_eq!(
            store.get::<_, String>(&FactId(7)).unwrap().as_deref(),
            Some("seven")
        );
    }

    #[test]
    fn batch_is_applied_with_its_lsn_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.applied_lsn(), None);
            let mut b = Batch::default();
            b.put(&FactId(1), &"one".to_string()).unwrap();
            b.put(&FactId(2), &"two".to_string()).unwrap();
            b.put_meta("slot", &"raa".to_string()).unwrap();
            store.commit(b, Lsn(100)).unwrap();
            let mut b = Batch::default();
            b.remove(&FactId(1));
            store.commit(b, Lsn(200)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(200)));
        assert_eq!(store.get::<_, String>(&FactId(1)).unwrap(), None);
        assert_eq!(
            store.get::<_, String>(&FactId(2)).unwrap().as_deref(),
            Some("two")
        );
        assert_eq!(
            store.meta::<String>("slot").unwrap().as_deref(),
            Some("raa")
        );
        let all: Vec<(Vec<u8>, String)> = store
            .scan(Space::Fact, &[])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all, vec![(2_u64.to_be_bytes().to_vec(), "two".to_string())]);
        let keys: Vec<Vec<u8>> = store
            .scan_keys(Space::Fact, &[])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, vec![2_u64.to_be_bytes().to_vec()]);
    }

    #[test]
    fn a_directory_held_by_an_open_store_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another raa"), "{err}");
    }

    #[test]
    fn applied_lsn_never_moves_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.commit(Batch::default(), Lsn(500)).unwrap();
        let err = store.commit(Batch::default(), Lsn(400)).unwrap_err();
        assert!(matches!(err, StateError::LsnBackwards { .. }), "{err}");
        assert_eq!(store.applied_lsn(), Some(Lsn(500)));
    }

    #[test]
    fn refuses_a_store_of_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("state").unwrap();
            tree.insert(META_FORMAT, &[FORMAT_VERSION + 1]).unwrap();
            db.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::FormatMismatch { .. }), "{err}");
    }

    fn filled(dir: &Path, n: u64) -> Store {
        let store = Store::open(dir).unwrap();
        let mut b = Batch::default();
        for i in 0..n {
            b.put(&FactId(i), &format!("fact {i}")).unwrap();
        }
        b.put_meta("sink-written", &true).unwrap();
        store.commit(b, Lsn(0x1_0000_0042)).unwrap();
        store
    }

    #[test]
    fn checkpoint_round_trips_the_whole_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(&dir.path().join("a"), 1000);
        let file = dir.path().join("c.raa");
        let info = store
            .checkpoint(&file, "7123", "raa", 1_700_000_000)
            .unwrap();
        assert_eq!(info.lsn, Lsn(0x1_0000_0042));
        assert_eq!(checkpoint::read_info(&file).unwrap(), info);
        assert!(!dir.path().join("c.tmp").exists());

        let copy = Store::open(&dir.path().join("b")).unwrap();
        assert_eq!(copy.restore(&file).unwrap(), info);
        assert_eq!(copy.applied_lsn(), Some(Lsn(0x1_0000_0042)));
        assert_eq!(copy.meta::<bool>("sink-written").unwrap(), Some(true));
        let a: Vec<_> = store.tree.iter().collect::<Result<_, _>>().unwrap();
        let b: Vec<_> = copy.tree.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(a, b);
        // A second restore into a non-empty store is refused.
        assert!(copy.restore(&file).is_err());
    }

    #[test]
    fn torn_or_altered_checkpoints_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(&dir.path().join("a"), 100);
        let file = dir.path().join("c.raa");
        store.checkpoint(&file, "7123", "raa", 1).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("torn", bytes[..bytes.len() / 2].to_vec()),
            ("no checksum", bytes[..bytes.len() - 2].to_vec()),
            ("flipped", {
                let mut b = bytes.clone();
                let i = b.len() - 40;
                b[i] ^= 0x55;
                b
            }),
            ("appended", [bytes.clone(), vec![0]].concat()),
            ("not ours", b"hello".to_vec()),
            ("empty", Vec::new()),
        ];
        for (what, content) in cases {
            let bad = dir.path().join(format!("{}.raa", what.replace(' ', "-")));
            std::fs::write(&bad, content).unwrap();
            let err = checkpoint::verify(&bad).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Corrupt { .. }),
                "{what}: {err}"
            );
            let target =
                Store::open(&dir.path().join(format!("t-{}", what.replace(' ', "-")))).unwrap();
            assert!(target.restore(&bad).is_err(), "{what}");
            assert_eq!(target.applied_lsn(), None, "{what}");
            assert!(target.is_empty().unwrap(), "{what}: nothing written");
        }
    }

    #[test]
    fn clear_empties_an_incomplete_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(&FactId(1), &1_u32).unwrap();
        store.submit_unanchored(b).unwrap();
        store.wait().unwrap();
        assert_eq!(store.applied_lsn(), None);
        assert!(!store.is_empty().unwrap());
        store.clear().unwrap();
        assert!(store.is_empty().unwrap());
        drop(store);
        assert!(Store::open(dir.path()).unwrap().is_empty().unwrap());
    }

    #[test]
    fn a_large_unanchored_batch_has_no_redo_record_and_an_anchored_store_refuses_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let big = |from: u64| {
            let mut b = Batch::default();
            for i in from..from + 5_000 {
                b.put(&FactId(i), &i).unwrap();
            }
            b
        };
        store.submit_unanchored(big(0)).unwrap();
        store.wait().unwrap();
        assert_eq!(store.writer.redo_records(), 0);
        assert_eq!(store.get::<_, u64>(&FactId(4_999)).unwrap(), Some(4_999));
        assert_eq!(store.applied_lsn(), None);
        store.commit(big(5_000), Lsn(7)).unwrap();
        assert_eq!(store.writer.redo_records(), 1);
        let e = store.submit_unanchored(big(10_000)).unwrap_err();
        assert!(matches!(e, StateError::Anchored { applied: Lsn(7) }), "{e}");
        assert_eq!(store.get::<_, u64>(&FactId(10_000)).unwrap(), None);
        assert_eq!(store.scan_keys(Space::Fact, &[]).count(), 10_000);
    }

    #[test]
    fn a_staged_batch_is_readable_at_once_and_written_only_once_released() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.commit(one(1), Lsn(10)).unwrap();
            let keys = store.count_keys();
            store.stage(one(2), Lsn(20)).unwrap();
            assert_eq!(store.get::<_, u64>(&FactId(2)).unwrap(), Some(2));
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert_eq!(store.applied_lsn(), Some(Lsn(10)), "held, not written");
            assert_eq!(store.tree.get(full_key(&FactId(2))).unwrap(), None);
            // Measuring the store (the metrics poller) does not release it.
            assert!(store.disk_bytes().unwrap() > 0);
            assert_eq!(store.count_keys(), keys, "fact 2 is not in the tree yet");
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert_eq!(store.applied_lsn(), Some(Lsn(10)), "measured, not written");
            store.release();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while store.applied_lsn() != Some(Lsn(20)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "released, never written"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // Waiting, or submitting again, releases a held batch.
            store.stage(one(3), Lsn(30)).unwrap();
            store.wait().unwrap();
            assert_eq!(store.applied_lsn(), Some(Lsn(30)));
            store.stage(one(4), Lsn(40)).unwrap();
            store.submit(one(5), Lsn(50)).unwrap();
            assert_eq!(store.get::<_, u64>(&FactId(4)).unwrap(), Some(4));
            // Closing writes a held batch: its sink transaction is committed.
            store.stage(one(6), Lsn(60)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(60)));
        assert_eq!(store.scan_keys(Space::Fact, &[]).count(), 6);
    }

    /// A batch putting fact `i`, worth `i`.
    fn one(i: u64) -> Batch {
        let mut b = Batch::default();
        b.put(&FactId(i), &i).unwrap();
        b
    }

    /// Polls until the store's durable LSN is `lsn`.
    fn until_durable(store: &Store, lsn: Lsn) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while store.applied_lsn() != Some(lsn) {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_scan_reads_the_batch_in_flight_without_writing_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Batch::default();
        for i in 0..10u64 {
            b.put(&FactId(i), &i).unwrap();
        }
        store.commit(b, Lsn(10)).unwrap();
        // Puts over the tree, a new key between, removes, a key past the end.
        let mut b = Batch::default();
        b.put(&FactId(2), &200u64).unwrap();
        b.remove(&FactId(3));
        b.remove(&FactId(9));
        b.put(&FactId(11), &11u64).unwrap();
        store.stage(b, Lsn(20)).unwrap();
        let scanned: Vec<(Vec<u8>, u64)> = store
            .scan(Space::Fact, &[])
            .collect::<Result<_, _>>()
            .unwrap();
        let values: Vec<u64> = scanned.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [0, 1, 200, 4, 5, 6, 7, 8, 11]);
        let keys: Vec<Vec<u8>> = store
            .scan_keys(Space::Fact, &[])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            keys,
            scanned.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        // A prefix scan sees only the batch's writes under the prefix.
        let mut prefix = Vec::new();
        FactId(11).encode_key(&mut prefix);
        assert_eq!(store.scan_keys(Space::Fact, &prefix).count(), 1);
        assert_eq!(store.scan_keys(Space::Dim, &[]).count(), 0);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(store.applied_lsn(), Some(Lsn(10)), "scanned, not written");
        store.release();
        until_durable(&store, Lsn(20));
        let values: Vec<u64> = store
            .scan(Space::Fact, &[])
            .map(|r| r.map(|(_, v)| v))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values, [0, 1, 200, 4, 5, 6, 7, 8, 11]);
    }

    #[test]
    fn an_unconfirmed_batch_is_written_only_once_confirmed_and_never_on_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.commit(one(1), Lsn(10)).unwrap();
            store.stage_unconfirmed(one(2), Lsn(20)).unwrap();
            assert_eq!(store.get::<_, u64>(&FactId(2)).unwrap(), Some(2));
            assert_eq!(store.scan_keys(Space::Fact, &[]).count(), 2);
            // Nothing that releases a held batch writes this one.
            store.release();
            for e in [
                store.wait().unwrap_err(),
                store.submit(one(3), Lsn(30)).unwrap_err(),
                store.stage(one(3), Lsn(30)).unwrap_err(),
            ] {
                assert!(
                    matches!(e, StateError::Unconfirmed { lsn: Some(Lsn(20)) }),
                    "{e}"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert_eq!(
                store.applied_lsn(),
                Some(Lsn(10)),
                "unconfirmed, not written"
            );
            store.confirm();
            until_durable(&store, Lsn(20));
            store.wait().unwrap();
            // Discarded: unreadable, and its LSN may come again.
            store.stage_unconfirmed(one(3), Lsn(30)).unwrap();
            assert!(store.discard_unconfirmed());
            assert!(!store.discard_unconfirmed(), "nothing left to discard");
            assert_eq!(store.get::<_, u64>(&FactId(3)).unwrap(), None);
            assert_eq!(store.scan_keys(Space::Fact, &[]).count(), 2);
            store.wait().unwrap();
            // A batch held for release is not discarded.
            store.stage(one(4), Lsn(25)).unwrap();
            assert!(!store.discard_unconfirmed());
            store.wait().unwrap();
            assert_eq!(store.applied_lsn(), Some(Lsn(25)));
            // Two in flight: one held for release, one unconfirmed behind
            // it, read over each other (the newer wins) and over the tree.
            let mut b = one(5);
            b.put(&FactId(1), &100u64).unwrap();
            store.stage(b, Lsn(40)).unwrap();
            let mut b = one(6);
            b.put(&FactId(1), &1_000u64).unwrap();
            b.remove(&FactId(5));
            store.stage_unconfirmed(b, Lsn(50)).unwrap();
            let e = store.stage(one(7), Lsn(60)).unwrap_err();
            assert!(
                matches!(e, StateError::Unconfirmed { lsn: Some(Lsn(50)) }),
                "{e}"
            );
            assert_eq!(store.get::<_, u64>(&FactId(1)).unwrap(), Some(1_000));
            let values: Vec<u64> = store
                .scan(Space::Fact, &[])
                .map(|r| r.map(|(_, v)| v))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(values, [1_000, 2, 4, 6]);
            // Discarding leaves the batch before it, which is then written.
            assert!(store.discard_unconfirmed());
            assert_eq!(store.get::<_, u64>(&FactId(1)).unwrap(), Some(100));
            assert_eq!(store.get::<_, u64>(&FactId(5)).unwrap(), Some(5));
            store.wait().unwrap();
            assert_eq!(store.applied_lsn(), Some(Lsn(40)));
            // The discarded LSN may come again; closing drops an unconfirmed
            // batch: its sink may not hold it.
            store.stage(one(8), Lsn(50)).unwrap();
            store.stage_unconfirmed(one(9), Lsn(60)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(50)));
        assert_eq!(store.get::<_, u64>(&FactId(9)).unwrap(), None);
        assert_eq!(store.get::<_, u64>(&FactId(8)).unwrap(), Some(8));
        assert_eq!(store.scan_keys(Space::Fact, &[]).count(), 5);
    }

    /// A store at LSN 10 with facts 0..n worth their number, and a
    /// provisional batch over it: facts 0..n doubled, every third removed,
    /// fact n added, in several chunks.
    fn with_provisional(dir: &Path, n: u64) -> (Store, Provisional) {
        let store = Store::open(dir).unwrap();
        let mut b = Batch::default();
        for i in 0..n {
            b.put(&FactId(i), &i).unwrap();
        }
        store.commit(b, Lsn(10)).unwrap();
        let mut prov = store.provisional().unwrap();
        for part in [0..n / 2, n / 2..n + 1] {
            let mut b = Batch::default();
            for i in part {
                if i % 3 == 0 {
                    b.remove(&FactId(i));
                } else {
                    b.put(&FactId(i), &(2 * i)).unwrap();
                }
            }
            prov.write(b).unwrap();
        }
        (store, prov)
    }

    fn doubled(store: &Store, n: u64) {
        for i in 0..=n {
            let want = (i % 3 != 0).then_some(2 * i);
            assert_eq!(store.get::<_, u64>(&FactId(i)).unwrap(), want, "fact {i}");
        }
    }

    #[test]
    fn a_provisional_batch_is_readable_apart_and_committed_whole_with_its_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * crate::writer::CHUNK as u64;
        {
            let (store, prov) = with_provisional(dir.path(), n);
            assert_eq!(prov.len(), n as usize + 1);
            assert_eq!(prov.get::<_, u64>(&FactId(3)).unwrap(), Some(None));
            assert_eq!(prov.get::<_, u64>(&FactId(4)).unwrap(), Some(Some(8)));
            assert_eq!(prov.get::<_, u64>(&FactId(n + 7)).unwrap(), None);
            let scanned: Vec<_> = prov
                .scan::<u64>(Space::Fact, &[])
                .take(4)
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                scanned,
                [(0, None), (1, Some(2)), (2, Some(4)), (3, None)]
                    .map(|(k, v): (u64, _)| (k.to_be_bytes().to_vec(), v))
            );
            // The state is untouched until the commit.
            assert_eq!(store.get::<_, u64>(&FactId(3)).unwrap(), Some(3));
            assert_eq!(store.get::<_, u64>(&FactId(n)).unwrap(), None);
            let mut meta = Batch::default();
            meta.put_meta("sink-written", &true).unwrap();
            store.commit_provisional(prov, meta, Lsn(20)).unwrap();
            assert_eq!(store.applied_lsn(), Some(Lsn(20)));
            doubled(&store, n);
            let prov = store.provisional().unwrap();
            assert!(prov.is_empty(), "emptied by its commit");
            let err = store
                .commit_provisional(prov, Batch::default(), Lsn(15))
                .unwrap_err();
            assert!(matches!(err, StateError::LsnBackwards { .. }), "{err}");
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(20)));
        assert_eq!(store.meta::<bool>("sink-written").unwrap(), Some(true));
        doubled(&store, n);
    }

    #[test]
    fn a_provisional_batch_is_finished_on_open_once_marked_and_dropped_if_not() {
        let n = 2 * crate::writer::CHUNK as u64;
        // Never marked: a stop during the batch's aggregation or sink write.
        let dir = tempfile::tempdir().unwrap();
        drop(with_provisional(dir.path(), n));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(10)));
        for i in 0..=n {
            let want = (i < n).then_some(i);
            assert_eq!(store.get::<_, u64>(&FactId(i)).unwrap(), want, "fact {i}");
        }
        let leftover = store.db.open_tree(crate::provisional::TREE).unwrap();
        assert!(leftover.is_empty(), "emptied on open");
        drop((leftover, store));

        // Marked, then stopped before any chunk was applied.
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, prov) = with_provisional(dir.path(), n);
            let mut seal = Writes::new();
            seal.insert(
                META_APPLIED.to_vec(),
                Some(encode(Space::Meta, &Lsn(30)).unwrap()),
            );
            let seal = crate::provisional::encode_seal(&seal).unwrap();
            store.tree.insert(META_PROVISIONAL, seal).unwrap();
            store.db.flush().unwrap();
            drop(prov);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(30)));
        doubled(&store, n);
        assert_eq!(store.tree.get(META_PROVISIONAL).unwrap(), None);
    }

    #[test]
    fn wrongly_typed_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(&FactId(7), &(1_u8, 2_u8)).unwrap();
        store.commit(b, Lsn(1)).unwrap();
        assert!(store.get::<_, Vec<String>>(&FactId(7)).is_err());
    }

    #[test]
    fn a_large_batch_is_readable_while_in_flight_and_whole_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let n = 5_000_u64;
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::default();
            for i in 0..n {
                b.put(&FactId(i), &i).unwrap();
            }
            store.submit(b, Lsn(10)).unwrap();
            // Readable at once, whether or not the writer has finished.
            assert_eq!(store.get::<_, u64>(&FactId(4_321)).unwrap(), Some(4_321));
            let mut b = Batch::default();
            b.remove(&FactId(0));
            store.submit(b, Lsn(20)).unwrap();
            assert_eq!(store.get::<_, u64>(&FactId(0)).unwrap(), None);
            store.wait().unwrap();
            assert_eq!(store.applied_lsn(), Some(Lsn(20)));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(20)));
        let keys = store.scan_keys(Space::Fact, &[]).count();
        assert_eq!(keys as u64, n - 1);
        assert_eq!(store.tree.get(crate::writer::META_REDO).unwrap(), None);
    }

    #[test]
    fn a_redo_record_left_by_a_crash_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = Batch::default();
            b.put(&FactId(1), &1_u64).unwrap();
            store.commit(b, Lsn(5)).unwrap();
            // What a crash after the redo record, before its chunks, leaves.
            let mut b = Batch::default();
            b.remove(&FactId(1));
            for i in 2..3_000 {
                b.put(&FactId(i), &i).unwrap();
            }
            b.put_applied(Lsn(9)).unwrap();
            let redo = codec::encode(&b.into_writes()).unwrap();
            store.tree.insert(crate::writer::META_REDO, redo).unwrap();
            store.db.flush().unwrap();
            assert_eq!(store.applied_lsn(), Some(Lsn(5)));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(9)));
        assert_eq!(store.get::<_, u64>(&FactId(1)).unwrap(), None);
        assert_eq!(store.get::<_, u64>(&FactId(2_999)).unwrap(), Some(2_999));
        assert_eq!(store.tree.get(crate::writer::META_REDO).unwrap(), None);
    }
}
