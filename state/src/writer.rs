//! The background committer: applies and flushes one batch while the caller
//! goes on preparing the next.
//!
//! Why: a sled commit of a batch costs about as much as aggregating it, and
//! the two need not wait for each other. Batches in flight stay readable
//! (overlays checked before the tree) until sled holds them, so the next
//! batch's reads see them either way. [`QUEUE`] batches at most are in
//! flight, written in order: memory stays bounded and a failure is reported
//! by the very next submit or wait.
//!
//! A batch may be handed over *held* ([`Hold::Release`]): readable at once,
//! written only once released (or when the owner waits, submits again or
//! closes): for an owner that wants the writer idle while it aggregates.
//!
//! Or held *unconfirmed* ([`Hold::Confirm`]): readable at once, but written
//! only once confirmed, because the sink transaction it must follow is still
//! running; never released implicitly, and discarded, not written, on close.
//! Waiting on one, or queueing behind it, is refused
//! ([`WaitError::Unconfirmed`]): it would wait forever, or write a state
//! ahead of its sink.
//!
//! sled's `apply_batch` holds a process-wide lock that stops every read for
//! its whole length, and pins memory it cannot free until it ends. So a large
//! batch is written as a redo record first (one value, flushed), then applied
//! one write at a time, [`CHUNK`] writes between collections, then sealed by
//! moving the applied LSN and removing the record in one small atomic
//! batch. Single writes share sled's lock with reads: in a catch-up of
//! 100 000 facts, aggregating beside the writer took 8.0 s where it takes
//! 3.6 s alone, and 12.8 s beside writes in batches of 1 024; the overlap
//! still shortens the whole (`catchup` bench). [`recover`] finishes a redo record a
//! crash left behind when the store is opened: the puts and removes are
//! absolute, so applying them again is harmless. An unanchored batch (a
//! backfill's) needs no redo record: a store without an applied LSN is
//! cleared on start, so a crash in the middle of one loses nothing durable;
//! skipping it halves what a backfill writes.

use crate::codec;
use crate::lsn::Lsn;
use crate::reclaim;
use rustc_hash::{FxBuildHasher, FxHashSet};
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the applied LSN lives (see the store).
pub(crate) const META_APPLIED: &[u8] = &[0, b'l'];
/// The redo record of a large batch being applied.
pub(crate) const META_REDO: &[u8] = &[0, b'r'];

/// Encoded puts (`Some`) and removes (`None`), in key order.
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a batch in flight waits for before it is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Nothing: written at once.
    #[default]
    No,
    /// [`Writer::release`], or the owner waiting, submitting or closing.
    Release,
    /// [`Writer::confirm`] only; discarded on close.
    Confirm,
}

/// Why the writer cannot take or wait for a batch.
pub(crate) enum WaitError {
    /// An earlier write failed: the store must be dropped and reopened.
    Failed(&'static str, sled::Error),
    /// A batch in flight waits for a confirmation (of the batch ending at this LSN).
    Unconfirmed(Option<Lsn>),
}

/// Batches in flight at most: one being written while the one after it
/// waits for its sink commit (and the batch after that is aggregated over
/// both). Why not one: the sink, the writer and aggregation would take turns.
pub(crate) const QUEUE: usize = 2;

struct Job {
    writes: Arc<Writes>,
    /// The hash of every key in `writes`: most reads ask for keys a batch
    /// does not hold, and this answers them without a walk of `writes`
    /// (a tenth of aggregation's time went to those walks). Eight bytes a
    /// key, against the hundreds the batch holds for it.
    hashes: FxHashSet<u64>,
    /// The applied LSN the batch moves the store to (`None`: unanchored).
    applied: Option<Lsn>,
    /// What it waits for before it is written.
    hold: Hold,
}

#[derive(Default)]
struct Slot {
    /// The batches in flight, oldest first, written in order; each readable
    /// until it is in the tree. An unconfirmed one can only be the last.
    queue: VecDeque<Job>,
    /// Set once a write failed; every later submit and wait reports it, so
    /// the owner drops this store and reopens it.
    failed: Option<(&'static str, sled::Error)>,
    stop: bool,
    /// The thread is past its last batch and lets go of the database.
    closing: bool,
    /// ... and has let go of it.
    closed: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
    /// Test hook: the thread does not let go of the database while set, as
    /// if sled's final flush did not end.
    #[cfg(test)]
    hold_close: Arc<std::sync::atomic::AtomicBool>,
    /// Test hook: how many redo records the thread has written.
    #[cfg(test)]
    redo_records: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread; `durable` is advanced after each flushed batch.
    pub(crate) fn start(
        db: sled::Db,
        tree: sled::Tree,
        durable: Arc<AtomicU64>,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            changed: Condvar::new(),
            #[cfg(test)]
            hold_close: Default::default(),
            #[cfg(test)]
            redo_records: Default::default(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("raa-state-writer".into())
            .spawn(move || {
                // Also on a panic: `Writer::drop` then joins and returns.
                let _closed = Closed(worker.clone());
                run(&worker, &db, &tree, &durable);
                worker.lock().closing = true;
                worker.changed.notify_all();
                #[cfg(test)]
                while worker.hold_close.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // The last handles: sled flushes here (see `Writer::drop`).
                drop((tree, db));
            })?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `writes` behind the batches in flight, once fewer than
    /// [`QUEUE`] are (releasing those held for release); a held batch waits
    /// for what `hold` says before it is written.
    pub(crate) fn submit(
        &self,
        writes: Writes,
        applied: Option<Lsn>,
        hold: Hold,
    ) -> Result<(), WaitError> {
        let hashes = writes.keys().map(|k| key_hash(k)).collect();
        let mut slot = self.until(|q| q.len() < QUEUE)?;
        slot.queue.push_back(Job {
            writes: Arc::new(writes),
            hashes,
            applied,
            hold,
        });
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Lets the thread write the batches held for release.
    pub(crate) fn release(&self) {
        self.unhold(&mut self.shared.lock(), Hold::Release);
    }

    /// Lets the thread write the batch held unconfirmed.
    pub(crate) fn confirm(&self) {
        self.unhold(&mut self.shared.lock(), Hold::Confirm);
    }

    /// Drops the batch held unconfirmed, unwritten. `None` if there was
    /// none; else the LSN of the newest batch still in flight, if any.
    pub(crate) fn discard(&self) -> Option<Option<Lsn>> {
        let mut slot = self.shared.lock();
        if slot.queue.back().is_none_or(|j| j.hold != Hold::Confirm) {
            return None;
        }
        slot.queue.pop_back();
        self.shared.changed.notify_all();
        Some(slot.queue.iter().rev().find_map(|j| j.applied))
    }

    fn unhold(&self, slot: &mut Slot, hold: Hold) {
        let mut changed = false;
        for job in slot.queue.iter_mut().filter(|j| j.hold == hold) {
            job.hold = Hold::No;
            changed = true;
        }
        if changed {
            self.shared.changed.notify_all();
        }
    }

    /// Waits until nothing is in flight (releasing batches held for
    /// release); the error of a failed write, or of a batch held unconfirmed.
    pub(crate) fn wait(&self) -> Result<(), WaitError> {
        self.until(VecDeque::is_empty).map(drop)
    }

    /// The failure of an earlier write, if any.
    pub(crate) fn failed(&self) -> Option<(&'static str, sled::Error)> {
        self.shared.lock().failed.clone()
    }

    /// Waits until the queue is `ready`, releasing the batches held for
    /// release; refused while a batch waits for its confirmation.
    fn until(
        &self,
        ready: impl Fn(&VecDeque<Job>) -> bool,
    ) -> Result<MutexGuard<'_, Slot>, WaitError> {
        let mut slot = self.shared.lock();
        self.unhold(&mut slot, Hold::Release);
        loop {
            if let Some((op, e)) = &slot.failed {
                return Err(WaitError::Failed(op, e.clone()));
            }
            if let Some(job) = slot.queue.iter().find(|j| j.hold == Hold::Confirm) {
                return Err(WaitError::Unconfirmed(job.applied));
            }
            if ready(&slot.queue) {
                return Ok(slot);
            }
            slot = self
                .shared
                .changed
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Test hook: keeps the thread from closing until the flag returned is cleared.
    #[cfg(test)]
    pub(crate) fn hold_close(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.shared.hold_close.store(true, Ordering::Release);
        self.shared.hold_close.clone()
    }

    /// Test hook: how many redo records have been written.
    #[cfg(test)]
    pub(crate) fn redo_records(&self) -> usize {
        self.shared.redo_records.load(Ordering::Acquire)
    }

    /// The newest write of `key` by a batch in flight, if there is one:
    /// `Some(None)` when it removes the key.
    pub(crate) fn pending(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let hash = key_hash(key);
        let slot = self.shared.lock();
        slot.queue
            .iter()
            .rev()
            .filter(|j| j.hashes.contains(&hash))
            .find_map(|j| j.writes.get(key).cloned())
    }

    /// The writes of the batches in flight, oldest first: what a scan of
    /// the tree must be read over until they are in it.
    pub(crate) fn overlays(&self) -> Vec<Arc<Writes>> {
        let slot = self.shared.lock();
        slot.queue.iter().map(|j| j.writes.clone()).collect()
    }
}

/// A key's hash in [`Job::hashes`].
fn key_hash(key: &[u8]) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// Marks the thread closed when it ends, however it ends.
struct Closed(Arc<Shared>);

impl Drop for Closed {
    fn drop(&mut self) {
        let mut slot = self.0.lock();
        slot.closing = true;
        slot.closed = true;
        self.0.changed.notify_all();
    }
}

/// How long the thread may take to let go of the database once its last
/// batch is written.
const CLOSE_WAIT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(30)
};

impl Drop for Writer {
    /// Lets the batch in flight finish, then ends the thread, so the tree is
    /// released when the store is dropped.
    ///
    /// sled 0.34 flushes when the last handle of a database is dropped, and
    /// that flush was seen to wait forever (at the end of a run over a
    /// 1M-fact state: no I/O pending, every thread parked). Every batch was
    /// flushed when it was written, so past [`CLOSE_WAIT`] the thread is
    /// left behind, holding the directory until the process exits, rather
    /// than hanging the process.
    fn drop(&mut self) {
        {
            // A batch held for release is written too: its sink transaction
            // is committed. One held unconfirmed is not: its sink
            // transaction may not be.
            let mut slot = self.shared.lock();
            slot.stop = true;
            if slot.queue.back().is_some_and(|j| j.hold == Hold::Confirm) {
                slot.queue.pop_back();
                tracing::info!("dropping a state batch whose sink commit was not confirmed");
            }
            self.unhold(&mut slot, Hold::Release);
        }
        self.shared.changed.notify_all();
        let mut slot = self.shared.lock();
        while !slot.closing {
            slot = self
                .shared
                .changed
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
        }
        let (slot, waited) = self
            .shared
            .changed
            .wait_timeout_while(slot, CLOSE_WAIT, |s| !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        drop(slot);
        if waited.timed_out() {
            tracing::warn!(
                secs = CLOSE_WAIT.as_secs(),
                "the state store did not close (a sled flush that does not end); \
                 every batch was already durable: leaving it to the process exit"
            );
        } else if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Batches up to this many writes are applied in one `apply_batch`. Why not
/// more: sled 0.34 copies a node on every write and cannot free the copies
/// before the batch ends (it stays pinned), so a batch of writes to
/// neighbouring keys holds memory quadratic in its length (restoring 1M
/// sorted entries in batches of 10 000 peaked at 3.5 GB resident; in batches
/// of 1 000, 0.65 GB). [`reclaim`] frees them after each chunk.
pub(crate) const CHUNK: usize = 1024;

/// Applies `writes` and flushes them, atomically if the batch is `anchored`
/// (see the module docs). Returns whether it wrote a redo record.
fn write(
    db: &sled::Db,
    tree: &sled::Tree,
    writes: &Writes,
    anchored: bool,
) -> Result<bool, (&'static str, sled::Error)> {
    if writes.len() <= CHUNK {
        reclaim::apply(tree, batch(writes.iter()), writes.len()).map_err(|e| ("commit", e))?;
        db.flush().map_err(|e| ("flush", e))?;
        return Ok(false);
    }
    if !anchored {
        finish(db, tree, writes)?;
        return Ok(false);
    }
    let redo = codec::encode(writes).map_err(|e| {
        (
            "commit",
            sled::Error::ReportableBug(format!("encoding a redo record: {e}")),
        )
    })?;
    tree.insert(META_REDO, redo).map_err(|e| ("commit", e))?;
    db.flush().map_err(|e| ("flush", e))?;
    finish(db, tree, writes)?;
    Ok(true)
}

/// Applies a batch in chunks, then seals it (its applied LSN, and the redo
/// record's removal): its redo record is durable, or it is unanchored.
fn finish(
    db: &sled::Db,
    tree: &sled::Tree,
    writes: &Writes,
) -> Result<(), (&'static str, sled::Error)> {
    let body: Vec<_> = writes
        .iter()
        .filter(|(k, _)| k.as_slice() != META_APPLIED)
        .collect();
    // One by one: reads go on beside them (see `reclaim::apply_each`).
    for chunk in body.chunks(CHUNK) {
        reclaim::apply_each(tree, chunk.iter().copied()).map_err(|e| ("commit", e))?;
    }
    let mut seal = batch(writes.iter().filter(|(k, _)| k.as_slice() == META_APPLIED));
    seal.remove(META_REDO);
    reclaim::apply(tree, seal, 2).map_err(|e| ("commit", e))?;
    db.flush().map(drop).map_err(|e| ("flush", e))
}

fn batch<'a>(writes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k.as_slice(), v.as_slice()),
            None => batch.remove(k.as_slice()),
        }
    }
    batch
}

/// Completes a batch whose redo record a crash left in the store. Returns
/// whether there was one.
pub(crate) fn recover(db: &sled::Db, tree: &sled::Tree) -> Result<bool, RecoverError> {
    let Some(redo) = tree.get(META_REDO).map_err(RecoverError::Io)? else {
        return Ok(false);
    };
    let writes: Writes = codec::decode(&redo).map_err(RecoverError::Codec)?;
    finish(db, tree, &writes).map_err(|(_, e)| RecoverError::Io(e))?;
    Ok(true)
}

pub(crate) enum RecoverError {
    Io(sled::Error),
    Codec(codec::CodecError),
}

fn run(shared: &Shared, db: &sled::Db, tree: &sled::Tree, durable: &AtomicU64) {
    loop {
        let (writes, applied) = {
            let mut slot = shared.lock();
            loop {
                if let Some(job) = slot.queue.front() {
                    if slot.failed.is_none() && job.hold == Hold::No {
                        break (job.writes.clone(), job.applied);
                    }
                }
                if slot.stop {
                    return;
                }
                slot = shared.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = write(db, tree, &writes, applied.is_some());
        let mut slot = shared.lock();
        match result {
            Ok(_redo) => {
                #[cfg(test)]
                if _redo {
                    shared.redo_records.fetch_add(1, Ordering::AcqRel);
                }
                if let Some(lsn) = applied {
                    durable.store(lsn.0, Ordering::Release);
                }
                slot.queue.pop_front();
            }
            // The batch stays visible to reads: the owner is told by its next
            // submit or wait and rebuilds from the store.
            Err(e) => slot.failed = Some(e),
        }
        shared.changed.notify_all();
    }
}
