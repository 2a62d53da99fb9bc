//! Frees the memory sled's writes hand to the epoch collector.
//!
//! Why: sled 0.34 copies a tree node on every write and, once its cache is
//! full, evicts pages as it goes; it defers freeing both to crossbeam-epoch's
//! global collector, which frees at most 8 bags of 64 each time a thread has
//! pinned 128 times. A writer that applies thousands of entries a batch
//! defers far faster than that, and the garbage piles up (sled issues #986
//! and #1036). Measured with sled alone: 3M entries written in batches of
//! 10 000 held 12 GB resident, 0.8 GB with this collection after each batch;
//! 1M entries in batches of 1 024 with an 8 MiB cache, 2.8 GB against 87 MB.
//! sled pins through `crossbeam_epoch::pin`, the default collector; this crate
//! depends on the same crossbeam-epoch 0.9, so Cargo links one collector.

/// Applies `batch`, of `writes` puts and removes, then frees what it
/// deferred. Every sled write of a batch of entries goes through here.
pub(crate) fn apply(tree: &sled::Tree, batch: sled::Batch, writes: usize) -> sled::Result<()> {
    tree.apply_batch(batch)?;
    after_writes(writes);
    Ok(())
}

/// Applies `writes` one by one, not as one batch, then frees what they
/// deferred. Why: sled 0.34's `apply_batch` takes a process-wide write lock
/// that stops every read for its whole length, while single writes share it
/// with reads; the caller makes the writes atomic another way (a redo
/// record, see the writer).
pub(crate) fn apply_each<'a>(
    tree: &sled::Tree,
    writes: impl ExactSizeIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) -> sled::Result<()> {
    let n = writes.len();
    for (k, v) in writes {
        match v {
            Some(v) => tree.insert(k.as_slice(), v.as_slice())?,
            None => tree.remove(k.as_slice())?,
        };
    }
    after_writes(n);
    Ok(())
}

/// Runs the collector enough times to free what `writes` writes can have
/// deferred (8 each, more than a node copy and an evicted page), plus
/// anything older that had to wait for a reader to unpin. It costs a pin and
/// an empty pop a step when nothing is waiting.
fn after_writes(writes: usize) {
    // A flush frees up to 8 bags of 64: 512 deferred frees.
    for _ in 0..writes / 64 + 4 {
        crossbeam_epoch::pin().flush();
    }
}
