//! The aggregate engine: applies source transactions to the state.
//!
//! Every fact change costs O(buckets it touches) state reads and writes,
//! whatever the table size — one per level for a disposition fact, one per
//! bucket overlapped for an interval fact: the fact's previous contribution is
//! read from its stored record and retracted, the new one added. A dimension
//! change (a tenant's zone included) re-derives only the facts that reference
//! that dimension row (found through the dimension index), so the aggregates
//! always reflect the current dimension rows.
//!
//! Changes accumulate in a [`Work`] (an overlay over the store) until the
//! pipeline ends a batch with [`Engine::finish`], which yields one atomic
//! state batch and the output rows that changed. A work that outgrows
//! [`Engine::work_entries`] within one source transaction (which a batch
//! cannot split) moves to a [`Provisional`] batch on disk, read between
//! memory and the store: memory stays bounded whatever the transaction size.
//! After any error the engine and its work must be dropped and rebuilt from
//! the store: its dimension cache may be ahead of what was committed.

use super::accum::{Accum, RetractError};
use super::bucket::{self, BucketError, Level};
use super::calendar::Calendar;
use super::catalog::FAMILIES;
use super::family::{Contribution, Dim, DimRows, Family, Params, Placing};
use super::keys::{AccumKey, DimKey, FactKey, IndexKey};
use crate::decode::{Change, Transaction, Tuple};
use crate::schema::{self, Row, RowKey, Table, Value};
use fastbloom::BloomFilter;
use raa_state::{Batch, Provisional, Space, StateError, Store};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How facts are aggregated. Stored with the state: a state built with other
/// settings is refused, since its stored contributions would not match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub levels: Vec<Level>,
    /// Width of a sub-hour bucket: 900 or 1800 seconds.
    pub subhr_seconds: i64,
    pub params: Params,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            levels: Level::ALL.to_vec(),
            subhr_seconds: 900,
            params: Params {
                service_level_threshold: 20,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{table} row has a NULL or missing primary key")]
    MissingKey { table: &'static str },
    #[error(
        "{table} row {key}: column {column} arrived as an unchanged TOAST value \
         but raa holds no earlier image of the row"
    )]
    UnchangedWithoutImage {
        table: &'static str,
        key: i64,
        column: &'static str,
    },
    #[error("{table} row {key}")]
    Retract {
        table: &'static str,
        key: i64,
        #[source]
        source: RetractError,
    },
    #[error("{table} row {key}")]
    Bucket {
        table: &'static str,
        key: i64,
        #[source]
        source: BucketError,
    },
    #[error("state has a corrupt {what} key")]
    CorruptKey { what: &'static str },
    #[error(
        "the state was built with other aggregation settings ({stored:?}); this run asks for \
         {configured:?}: restore a matching configuration, or rebuild from an empty state directory"
    )]
    SettingsChanged {
        stored: Settings,
        configured: Settings,
    },
    /// A caller bug, not bad input: a snapshot holds rows, not changes.
    #[error("a snapshot's rows are inserts; an update, delete or truncate is no snapshot row")]
    NotSnapshotRow,
}

/// What raa remembers of one fact: its last image and what it contributed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactRecord {
    pub row: Row,
    pub contribs: Vec<Contribution>,
}

/// One changed output row; `values` is `None` when the row must be deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputRow {
    pub family: u16,
    pub level: Level,
    pub bucket: i64,
    pub group: Vec<Option<i64>>,
    pub values: Option<Vec<Option<i64>>>,
}

/// The working set of one batch: everything read or changed, over the store.
#[derive(Default)]
pub struct Work {
    facts: BTreeMap<FactKey, Option<FactRecord>>,
    /// Fx, not SipHash: hashing the keys was a sixth of aggregation's time
    /// (criterion `decode_aggregate`); the keys come from Info Mart, not from
    /// untrusted clients.
    accums: FxHashMap<AccumKey, Accum>,
    index: BTreeMap<IndexKey, bool>,
    dims: BTreeMap<DimKey, Option<Row>>,
    /// Where the work went once it outgrew memory: older than the maps above.
    spilled: Option<Provisional>,
    /// Row changes applied so far (for batch sizing).
    pub changes: usize,
}

impl Work {
    /// State entries held in memory (dimension rows aside: few).
    pub fn entries(&self) -> usize {
        self.facts.len() + self.accums.len() + self.index.len()
    }

    /// Whether the work holds nothing, dimension rows included.
    pub fn is_empty(&self) -> bool {
        self.entries() == 0 && self.dims.is_empty() && self.spilled.is_none()
    }

    /// Whether part of the work is on disk; its batch then ends with its
    /// transaction.
    pub fn is_spilled(&self) -> bool {
        self.spilled.is_some()
    }
}

/// The result of a batch: the state to commit and the output rows to sink.
pub struct Output {
    pub state: Batch,
    pub rows: Vec<OutputRow>,
    /// A spilled batch's writes, and (read with [`spilled_rows`]) its output
    /// rows; `rows` is then empty and `state` holds only metadata. Commit it
    /// with [`Store::commit_provisional`].
    pub spilled: Option<Provisional>,
}

pub struct Engine {
    store: Arc<Store>,
    settings: Settings,
    dims: FxHashMap<DimKey, Row>,
    /// Per tenant zone name, its calendar (UTC's for an unknown name).
    zones: FxHashMap<String, Calendar>,
    /// The calendar of tenants without a zone.
    utc: Calendar,
    /// Per fact table, the dimensions its families read (from the catalog):
    /// its facts are indexed by the rows of the selective ones, and by the
    /// others' missing rows (see [`Dim::selective`]).
    indexed: HashMap<Table, Vec<Dim>>,
    /// Accumulators as the last finished batch left them, so the next batch
    /// need not read and decode them from the store again (the recent buckets
    /// are touched by batch after batch). Emptied when it outgrows
    /// [`ACCUM_CACHE_BYTES`]. It may run ahead of the store only between
    /// `finish` and the pipeline's commit; an error there drops the engine.
    cache: std::sync::Mutex<AccumCache>,
    /// [`ACCUM_CACHE_BYTES`], smaller in tests.
    cache_max: usize,
    /// See [`Engine::work_entries`].
    work_entries: usize,
}

/// [`Engine::work_entries`] by default: about 160 MB of work (~800 bytes an
/// entry, measured with `big_txn`), some 30 000 IRF changes.
pub const WORK_ENTRIES: usize = 200_000;

/// Bytes of accumulators (estimated: [`AccumCache::footprint`]) kept in
/// [`Engine`]'s cache. Bytes, not a count: an accumulator with a maximum
/// holds a multiset, several times the size of one of counts.
const ACCUM_CACHE_BYTES: usize = 64 << 20;

/// The accumulator cache, with the estimated bytes it holds.
#[derive(Default)]
struct AccumCache {
    map: FxHashMap<AccumKey, Accum>,
    bytes: usize,
    /// While a backfill aggregates into an empty state: every accumulator
    /// key its work has held. A key not in it was never written, so a miss
    /// of the map needs no store lookup (which would walk sled's tree to
    /// find nothing: most of a backfill's accumulators are new).
    backfilled: Option<BloomFilter>,
}

/// Accumulator keys a backfill's filter is sized for, a fact: about what
/// a fact makes at 1M facts (7.5 at 100 000, 1.3 at 5M). More only raise
/// its false positives, each a store lookup.
const BACKFILL_KEYS_A_FACT: u64 = 3;

/// The most keys a backfill's filter is sized for: 1% false positives
/// take about 10 bits a key, so 30 MB at most.
const BACKFILL_KEYS_MAX: u64 = 25_000_000;

impl AccumCache {
    /// What one entry holds: the map's slot and the heap behind it.
    fn footprint(key: &AccumKey, acc: &Accum) -> usize {
        std::mem::size_of::<(AccumKey, Accum)>()
            + key.group.capacity() * std::mem::size_of::<Option<i64>>()
            + acc.heap_bytes()
    }

    fn take(&mut self, key: &AccumKey) -> Option<Accum> {
        let (k, acc) = self.map.remove_entry(key)?;
        self.bytes -= Self::footprint(&k, &acc);
        Some(acc)
    }

    fn insert(&mut self, key: AccumKey, acc: Accum) {
        // Out first: the map would keep the old key, whose size was counted.
        self.take(&key);
        self.bytes += Self::footprint(&key, &acc);
        self.map.insert(key, acc);
    }

    /// The footprint of every entry, counted again (tests).
    #[cfg(test)]
    fn recount(&self) -> usize {
        self.map.iter().map(|(k, a)| Self::footprint(k, a)).sum()
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

/// Where an accumulator missing from the work comes from.
enum Origin {
    Cached(Accum),
    /// Never written: a new accumulator.
    New,
    Store,
}

const SETTINGS_META: &str = "aggregate-settings";

impl Engine {
    /// Loads the dimension cache and checks the stored settings.
    pub fn open(store: Arc<Store>, settings: Settings) -> Result<Engine, AggregateError> {
        if let Some(stored) = store.meta::<Settings>(SETTINGS_META)? {
            if stored != settings {
                return Err(AggregateError::SettingsChanged {
                    stored,
                    configured: settings,
                });
            }
        }
        let mut dims = FxHashMap::default();
        for spec in schema::TABLES
            .iter()
            .filter(|s| Dim::of_table(s.table).is_some())
        {
            let prefix = FactKey::table_prefix(spec.table);
            for item in store.scan::<Row>(Space::Dim, &prefix) {
                let (k, row) = item?;
                let key = FactKey::decode_key(&k)
                    .ok_or(AggregateError::CorruptKey { what: "dimension" })?;
                dims.insert(
                    DimKey {
                        table: spec.table,
                        key,
                    },
                    row,
                );
            }
        }
        let indexed = FAMILIES
            .iter()
            .map(|f| (f.source, index_dims(f.source)))
            .collect();
        Ok(Engine {
            store,
            settings,
            dims,
            zones: FxHashMap::default(),
            utc: Calendar::new(jiff::tz::TimeZone::UTC),
            indexed,
            cache: std::sync::Mutex::new(AccumCache::default()),
            cache_max: ACCUM_CACHE_BYTES,
            work_entries: WORK_ENTRIES,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, AccumCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Estimated bytes the accumulator cache holds (at most 64 MiB).
    pub fn cache_bytes(&self) -> usize {
        self.cache().bytes
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// State entries (fact records, accumulators, index entries) a batch's
    /// work holds in memory at most: past it, the work moves to disk. The
    /// pipeline ends a batch at a transaction boundary before it, so only a
    /// single transaction larger than this pays for the spill.
    pub fn work_entries(&self) -> usize {
        self.work_entries
    }

    pub fn set_work_entries(&mut self, entries: usize) {
        self.work_entries = entries.max(1);
    }

    /// Applies one committed source transaction to `work`. Consumes it: each
    /// row's values move into its fact record instead of being copied, and a
    /// large transaction's decoded rows are freed as they are applied.
    pub fn apply(&mut self, work: &mut Work, txn: Transaction) -> Result<(), AggregateError> {
        for change in txn.changes {
            self.apply_change(work, change)?;
            self.applied(work)?;
        }
        Ok(())
    }

    /// Runs `backfill` (which aggregates a snapshot of `facts` rows with
    /// [`Engine::apply_snapshot`] into a state that holds no accumulator)
    /// with the filter of the accumulator keys it writes, dropped after it
    /// whether it succeeds or fails: past the backfill, a key may be written
    /// elsewhere. (A backfill cancelled mid-way drops its pipeline, and the
    /// engine with it.)
    pub async fn backfilling<T, E>(
        &mut self,
        facts: u64,
        backfill: impl AsyncFnOnce(&mut Engine) -> Result<T, E>,
    ) -> Result<T, E> {
        let keys = facts
            .saturating_mul(BACKFILL_KEYS_A_FACT)
            .clamp(1, BACKFILL_KEYS_MAX);
        self.cache().backfilled =
            Some(BloomFilter::with_false_pos(0.01).expected_items(keys as usize));
        let result = backfill(self).await;
        self.cache().backfilled = None;
        result
    }

    /// Applies rows of a backfill's snapshot, read into a state that held no
    /// fact when the backfill began: a snapshot holds each row once, so no
    /// fact can have a record outside `work` yet, and none is looked up in
    /// the store (a lookup bound to miss, yet a walk of sled's tree: one a
    /// fact). Anything but an insert is refused.
    pub fn apply_snapshot(
        &mut self,
        work: &mut Work,
        changes: Vec<Change>,
    ) -> Result<(), AggregateError> {
        for change in changes {
            let Change::Insert { table, new } = change else {
                return Err(AggregateError::NotSnapshotRow);
            };
            self.upsert(work, table, None, new, Stored::Never)?;
            self.applied(work)?;
        }
        Ok(())
    }

    /// Counts a change applied to `work`, and spills the work once it
    /// outgrows its bound.
    fn applied(&self, work: &mut Work) -> Result<(), AggregateError> {
        work.changes += 1;
        if work.entries() > self.work_entries {
            self.spill(work)?;
        }
        Ok(())
    }

    /// Moves the work's entries to its provisional batch on disk, as `finish`
    /// would write them to the state.
    fn spill(&self, w: &mut Work) -> Result<(), AggregateError> {
        if w.spilled.is_none() {
            tracing::info!(
                entries = w.entries(),
                changes = w.changes,
                "a source transaction outgrew the batch's memory: its work goes to disk"
            );
            w.spilled = Some(self.store.provisional()?);
        }
        let mut batch = Batch::default();
        encode_records(w, &mut batch)?;
        for (key, acc) in std::mem::take(&mut w.accums) {
            put_accum(&mut batch, &key, &acc)?;
        }
        if let Some(p) = &mut w.spilled {
            p.write(batch)?;
        }
        Ok(())
    }

    fn apply_change(&mut self, w: &mut Work, change: Change) -> Result<(), AggregateError> {
        match change {
            Change::Insert { table, new } => self.upsert(w, table, None, new, Stored::Maybe),
            Change::Update {
                table,
                old_key,
                new,
            } => self.upsert(w, table, old_key, new, Stored::Maybe),
            Change::Delete { table, key } => self.delete(w, table, key),
            Change::Truncate { tables } => {
                for table in tables {
                    self.truncate(w, table)?;
                }
                Ok(())
            }
        }
    }

    fn upsert(
        &mut self,
        w: &mut Work,
        table: Table,
        old_key: Option<RowKey>,
        new: Tuple,
        stored: Stored,
    ) -> Result<(), AggregateError> {
        let key = match new.0.first() {
            Some(Some(Value::Int(k))) => RowKey(*k),
            _ => {
                return Err(AggregateError::MissingKey {
                    table: table.name(),
                })
            }
        };
        if let Some(old) = old_key.filter(|&o| o != key) {
            self.delete(w, table, old)?;
        }
        if let Some(dim) = Dim::of_table(table) {
            let dk = DimKey { table, key };
            let prior = self.dims.get(&dk).cloned();
            let row = resolve(table, key, new, prior.as_ref())?;
            self.set_dim(w, dim, dk, Some(row))
        } else {
            let fk = FactKey { table, key };
            let prior = match stored {
                Stored::Maybe => self.take_fact(w, fk)?,
                Stored::Never => w.facts.remove(&fk).flatten(),
            };
            let row = resolve(table, key, new, prior.as_ref().map(|p| &p.row))?;
            if let Some(p) = &prior {
                self.retract(w, fk, &p.contribs)?;
            }
            self.set_index(w, fk, prior.as_ref().map(|p| &p.row), Some(&row));
            let contribs = self.contribute(fk, &row)?;
            self.add(w, fk, &contribs)?;
            w.facts.insert(fk, Some(FactRecord { row, contribs }));
            Ok(())
        }
    }

    fn delete(&mut self, w: &mut Work, table: Table, key: RowKey) -> Result<(), AggregateError> {
        if let Some(dim) = Dim::of_table(table) {
            return self.set_dim(w, dim, DimKey { table, key }, None);
        }
        let fk = FactKey { table, key };
        if let Some(prior) = self.take_fact(w, fk)? {
            self.retract(w, fk, &prior.contribs)?;
            self.set_index(w, fk, Some(&prior.row), None);
        }
        w.facts.insert(fk, None);
        Ok(())
    }

    /// TRUNCATE: every row of the table goes, with what it contributed.
    fn truncate(&mut self, w: &mut Work, table: Table) -> Result<(), AggregateError> {
        if Dim::of_table(table).is_some() {
            let keys: Vec<RowKey> = self
                .dims
                .keys()
                .filter(|d| d.table == table)
                .map(|d| d.key)
                .collect();
            for key in keys {
                self.delete(w, table, key)?;
            }
            return Ok(());
        }
        let prefix = FactKey::table_prefix(table);
        let mut keys = Vec::new();
        // The state's facts, and those this batch spilled (a key deleted
        // twice is harmless).
        let spilled = w
            .spilled
            .iter()
            .flat_map(|p| p.scan_keys(Space::Fact, &prefix));
        for item in self.store.scan_keys(Space::Fact, &prefix).chain(spilled) {
            let k = item?;
            let key = FactKey::decode_key(&k).ok_or(AggregateError::CorruptKey { what: "fact" })?;
            keys.push(FactKey { table, key });
        }
        keys.extend(
            w.facts
                .iter()
                .filter(|(k, v)| k.table == table && v.is_some())
                .map(|(k, _)| *k),
        );
        keys.sort();
        keys.dedup();
        for fk in keys {
            self.delete(w, table, fk.key)?;
        }
        Ok(())
    }

    /// Sets (or deletes) a dimension row and re-derives the facts that
    /// reference it, when a column the families read has changed.
    fn set_dim(
        &mut self,
        w: &mut Work,
        dim: Dim,
        dk: DimKey,
        row: Option<Row>,
    ) -> Result<(), AggregateError> {
        let prior = match &row {
            Some(r) => self.dims.insert(dk, r.clone()),
            None => self.dims.remove(&dk),
        };
        w.dims.insert(dk, row.clone());
        if prior == row {
            return Ok(());
        }
        // A row of a dimension that is not selective is indexed only while
        // missing (see `Dim::selective`): its arrival finds its facts in the
        // index and takes them out; its removal puts them in.
        let missing = match (dim.selective(), prior.is_some(), row.is_some()) {
            (false, false, true) => Some(false),
            (false, true, false) => Some(true),
            _ => None,
        };
        for fk in self.referencing_facts(w, dim, dk, prior.is_some())? {
            let rec = self.take_fact(w, fk)?;
            match missing {
                // Every entry found goes, stale ones included.
                Some(false) => {
                    w.index.insert(IndexKey { dim: dk, fact: fk }, false);
                }
                Some(true)
                    if rec
                        .as_ref()
                        .is_some_and(|r| references(dim, fk, &r.row, dk)) =>
                {
                    w.index.insert(IndexKey { dim: dk, fact: fk }, true);
                }
                _ => {}
            }
            let Some(mut rec) = rec else {
                // Deleted (or a stale entry): the tombstone goes back, or
                // an older record on disk would show through.
                w.facts.insert(fk, None);
                continue;
            };
            self.retract(w, fk, &rec.contribs)?;
            rec.contribs = self.contribute(fk, &rec.row)?;
            self.add(w, fk, &rec.contribs)?;
            w.facts.insert(fk, Some(rec));
        }
        Ok(())
    }

    /// Facts whose row may reference `dk` (a superset: re-deriving a fact
    /// that does not is harmless): from the index when it holds them (a
    /// selective dimension, or a row that was missing), else from a scan of
    /// the facts of every table that reads `dim`.
    fn referencing_facts(
        &self,
        w: &Work,
        dim: Dim,
        dk: DimKey,
        was_present: bool,
    ) -> Result<Vec<FactKey>, AggregateError> {
        if dim.selective() || !was_present {
            self.indexed_facts(w, dk)
        } else {
            self.scanned_facts(w, dim, dk)
        }
    }

    /// The facts of every table reading `dim` whose row references `dk`:
    /// the store's, then this batch's on disk and in memory (whichever
    /// version references it: a superset).
    fn scanned_facts(
        &self,
        w: &Work,
        dim: Dim,
        dk: DimKey,
    ) -> Result<Vec<FactKey>, AggregateError> {
        let mut out = Vec::new();
        for (&table, dims) in &self.indexed {
            if !dims.contains(&dim) {
                continue;
            }
            let prefix = FactKey::table_prefix(table);
            let fact = |k: &[u8]| {
                FactKey::decode_key(k)
                    .map(|key| FactKey { table, key })
                    .ok_or(AggregateError::CorruptKey { what: "fact" })
            };
            for item in self.store.scan::<FactRecord>(Space::Fact, &prefix) {
                let (k, rec) = item?;
                let fk = fact(&k)?;
                if references(dim, fk, &rec.row, dk) {
                    out.push(fk);
                }
            }
            for item in w
                .spilled
                .iter()
                .flat_map(|p| p.scan::<FactRecord>(Space::Fact, &prefix))
            {
                if let (k, Some(rec)) = item? {
                    let fk = fact(&k)?;
                    if references(dim, fk, &rec.row, dk) {
                        out.push(fk);
                    }
                }
            }
        }
        out.extend(w.facts.iter().filter_map(|(&fk, rec)| {
            rec.as_ref()
                .filter(|r| references(dim, fk, &r.row, dk))
                .map(|_| fk)
        }));
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The facts the index holds for `dk`: the store's, then this batch's
    /// changes to it.
    fn indexed_facts(&self, w: &Work, dk: DimKey) -> Result<Vec<FactKey>, AggregateError> {
        let prefix = IndexKey::dim_prefix(dk);
        let mut out = Vec::new();
        for item in self.store.scan::<()>(Space::Index, &prefix) {
            let (k, ()) = item?;
            out.push(
                IndexKey::decode_fact(&k).ok_or(AggregateError::CorruptKey { what: "index" })?,
            );
        }
        // Then this batch's changes to the index, oldest (on disk) first.
        for item in w
            .spilled
            .iter()
            .flat_map(|p| p.scan::<()>(Space::Index, &prefix))
        {
            let (k, present) = item?;
            let fact =
                IndexKey::decode_fact(&k).ok_or(AggregateError::CorruptKey { what: "index" })?;
            match present {
                Some(()) => out.push(fact),
                None => out.retain(|f| *f != fact),
            }
        }
        let lo = IndexKey {
            dim: dk,
            fact: FactKey {
                table: Table::Irf,
                key: RowKey(i64::MIN),
            },
        };
        for (ik, present) in w.index.range(lo..).take_while(|(ik, _)| ik.dim == dk) {
            if *present {
                out.push(ik.fact);
            } else {
                out.retain(|f| *f != ik.fact);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Removes the fact's record from the overlay (or reads it from the store);
    /// the caller puts back the new record or `None`.
    fn take_fact(&self, w: &mut Work, fk: FactKey) -> Result<Option<FactRecord>, AggregateError> {
        if let Some(rec) = w.facts.remove(&fk) {
            return Ok(rec);
        }
        if let Some(p) = &w.spilled {
            if let Some(rec) = p.get(&fk)? {
                return Ok(rec);
            }
        }
        Ok(self.store.get(&fk)?)
    }

    /// Updates the dimension index for a fact whose row changed from `old` to `new`.
    fn set_index(&self, w: &mut Work, fk: FactKey, old: Option<&Row>, new: Option<&Row>) {
        let spec = fk.table.spec();
        for &dim in self.indexed.get(&fk.table).into_iter().flatten() {
            let Some(slot) = dim.fk_slot(spec) else {
                continue;
            };
            let before = old.and_then(|r| r.int(slot));
            let after = new.and_then(|r| r.int(slot));
            if before == after {
                continue;
            }
            // A dimension that is not selective indexes only missing rows.
            let indexes = |k: &i64| {
                dim.selective()
                    || !self.dims.contains_key(&DimKey {
                        table: dim.table(),
                        key: RowKey(*k),
                    })
            };
            let (before, after) = (before.filter(indexes), after.filter(indexes));
            let entry = |k: i64| IndexKey {
                dim: DimKey {
                    table: dim.table(),
                    key: RowKey(k),
                },
                fact: fk,
            };
            if let Some(k) = before {
                w.index.insert(entry(k), false);
            }
            if let Some(k) = after {
                w.index.insert(entry(k), true);
            }
        }
    }

    /// The fact's contributions to every family reading its table.
    fn contribute(&mut self, fk: FactKey, row: &Row) -> Result<Vec<Contribution>, AggregateError> {
        let spec = fk.table.spec();
        let zone_name = Dim::Tenant
            .fk_slot(spec)
            .and_then(|slot| row.int(slot))
            .and_then(|k| {
                self.dims.get(&DimKey {
                    table: Table::Tenant,
                    key: RowKey(k),
                })
            })
            .and_then(|t| t.get(schema::tenant::TIME_ZONE).as_text());
        let mut at = Placing {
            levels: &self.settings.levels,
            calendar: calendar(&mut self.zones, &mut self.utc, zone_name),
            subhr_seconds: self.settings.subhr_seconds,
            params: &self.settings.params,
        };
        let dims = DimRows::new(|dim: Dim| {
            let k = row.int(dim.fk_slot(spec)?)?;
            self.dims.get(&DimKey {
                table: dim.table(),
                key: RowKey(k),
            })
        });
        let mut out = Vec::new();
        for (idx, family) in FAMILIES
            .iter()
            .enumerate()
            .filter(|(_, f)| f.source == fk.table)
        {
            let contribution =
                family
                    .contribute(idx as u16, row, &dims, &mut at)
                    .map_err(|source| AggregateError::Bucket {
                        table: spec.name,
                        key: fk.key.0,
                        source,
                    })?;
            out.extend(contribution);
        }
        Ok(out)
    }

    fn add(
        &self,
        w: &mut Work,
        fk: FactKey,
        contribs: &[Contribution],
    ) -> Result<(), AggregateError> {
        self.apply_contribs(w, fk, contribs, 1)
    }

    fn retract(
        &self,
        w: &mut Work,
        fk: FactKey,
        contribs: &[Contribution],
    ) -> Result<(), AggregateError> {
        self.apply_contribs(w, fk, contribs, -1)
    }

    fn apply_contribs(
        &self,
        w: &mut Work,
        fk: FactKey,
        contribs: &[Contribution],
        sign: i64,
    ) -> Result<(), AggregateError> {
        for c in contribs {
            let family = FAMILIES[usize::from(c.family)];
            for (level, bucket, values) in c.cells(&self.settings.levels) {
                let key = AccumKey {
                    family: c.family,
                    level,
                    bucket,
                    group: c.group.clone(),
                };
                self.accum(w, key, family)?
                    .apply(family, values, sign)
                    .map_err(|source| AggregateError::Retract {
                        table: fk.table.name(),
                        key: fk.key.0,
                        source,
                    })?;
            }
        }
        Ok(())
    }

    fn accum<'w>(
        &self,
        w: &'w mut Work,
        key: AccumKey,
        family: &Family,
    ) -> Result<&'w mut Accum, AggregateError> {
        use std::collections::hash_map::Entry;
        match w.accums.entry(key) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let spilled = match &w.spilled {
                    Some(p) => p.get(e.key())?,
                    None => None,
                };
                if let Some(acc) = spilled {
                    // Spilled empty (removed): as new.
                    return Ok(e.insert(acc.unwrap_or_else(|| Accum::new(family))));
                }
                let origin = {
                    let mut cache = self.cache();
                    match cache.take(e.key()) {
                        Some(acc) => Origin::Cached(acc),
                        None => match cache.backfilled.as_mut().map(|f| f.insert(e.key())) {
                            Some(false) => Origin::New,
                            _ => Origin::Store,
                        },
                    }
                };
                let acc = match origin {
                    Origin::Cached(acc) => acc,
                    Origin::New => Accum::new(family),
                    Origin::Store => self
                        .store
                        .get(e.key())?
                        .unwrap_or_else(|| Accum::new(family)),
                };
                Ok(e.insert(acc))
            }
        }
    }

    /// Ends a batch: the state batch to commit atomically, and the output rows
    /// to write (absolute values, or deletions).
    pub fn finish(&self, mut w: Work) -> Result<Output, AggregateError> {
        let mut state = Batch::default();
        if self.store.meta::<Settings>(SETTINGS_META)?.is_none() {
            state.put_meta(SETTINGS_META, &self.settings)?;
        }
        if w.spilled.is_some() {
            // The rest joins what is on disk; nothing is cached (the batch is
            // larger than the cache).
            self.spill(&mut w)?;
            return Ok(Output {
                state,
                rows: Vec::new(),
                spilled: w.spilled.take(),
            });
        }
        // Consumed as it is encoded, so a large batch does not hold its
        // records twice (decoded here and encoded in the state batch).
        encode_records(&mut w, &mut state)?;
        let mut rows = Vec::with_capacity(w.accums.len());
        let batch_bytes: usize = w
            .accums
            .iter()
            .map(|(k, a)| AccumCache::footprint(k, a))
            .sum();
        let mut cache = self.cache();
        if cache.bytes + batch_bytes > self.cache_max {
            cache.clear();
        }
        // A batch whose accumulators alone outgrow the cache (one large
        // source transaction) is not cached: the cache would hold hundreds
        // of MB of them through the sink write, and the next batches are
        // unlikely to touch them all again.
        let caching = batch_bytes <= self.cache_max;
        for (mut key, acc) in w.accums {
            let values = put_accum(&mut state, &key, &acc)?;
            let cached = caching && values.is_some();
            // The key's group moves into the row unless the cache keeps the key.
            let group = if cached {
                key.group.clone()
            } else {
                std::mem::take(&mut key.group)
            };
            rows.push(OutputRow {
                family: key.family,
                level: key.level,
                bucket: key.bucket,
                group,
                values,
            });
            if cached {
                cache.insert(key, acc);
            }
        }
        Ok(Output {
            state,
            rows,
            spilled: None,
        })
    }
}

/// Whether a fact's earlier record may be in the store (or a spilled batch),
/// or only in the work ([`Engine::apply_snapshot`]).
#[derive(Clone, Copy)]
enum Stored {
    Maybe,
    Never,
}

/// Moves the work's fact records, index entries and dimension rows into `state`.
fn encode_records(w: &mut Work, state: &mut Batch) -> Result<(), AggregateError> {
    for (fk, rec) in std::mem::take(&mut w.facts) {
        match rec {
            Some(r) => state.put(&fk, &r)?,
            None => state.remove(&fk),
        }
    }
    for (ik, present) in std::mem::take(&mut w.index) {
        if present {
            state.put(&ik, &())?;
        } else {
            state.remove(&ik);
        }
    }
    for (dk, row) in std::mem::take(&mut w.dims) {
        match row {
            Some(r) => state.put(&dk, &r)?,
            None => state.remove(&dk),
        }
    }
    Ok(())
}

/// Writes an accumulator to `state`, removed once nothing contributes to it;
/// returns its output row's values.
fn put_accum(
    state: &mut Batch,
    key: &AccumKey,
    acc: &Accum,
) -> Result<Option<Vec<Option<i64>>>, AggregateError> {
    let values = acc.output(FAMILIES[usize::from(key.family)]);
    match values {
        Some(_) => state.put(key, acc)?,
        None => state.remove(key),
    }
    Ok(values)
}

/// The output rows of a spilled batch (see [`Output::spilled`]), read from
/// disk in key order: an accumulator left empty is a deletion.
pub fn spilled_rows(
    spilled: &Provisional,
) -> impl Iterator<Item = Result<OutputRow, AggregateError>> + '_ {
    spilled.scan::<Accum>(Space::Accum, &[]).map(|item| {
        let (key, acc) = item?;
        accum_row(&key, acc)
    })
}

/// The output row of a stored accumulator (`None`: removed in a spill); a
/// deletion when it holds nothing.
fn accum_row(key: &[u8], acc: Option<Accum>) -> Result<OutputRow, AggregateError> {
    let corrupt = || AggregateError::CorruptKey {
        what: "accumulator",
    };
    let key = AccumKey::decode(key).ok_or_else(corrupt)?;
    let family = FAMILIES.get(usize::from(key.family)).ok_or_else(corrupt)?;
    Ok(OutputRow {
        values: acc.and_then(|a| a.output(family)),
        family: key.family,
        level: key.level,
        bucket: key.bucket,
        group: key.group,
    })
}

impl Engine {
    /// Every output row the state holds, in key order, for a full rewrite of
    /// the sink (after a backfill): read as the sink takes them, so the
    /// state is never held in memory whole.
    pub fn state_rows(&self) -> impl Iterator<Item = Result<OutputRow, AggregateError>> + '_ {
        self.store
            .scan::<Accum>(Space::Accum, &[])
            .map(|item| {
                let (key, acc) = item?;
                accum_row(&key, Some(acc))
            })
            .filter(|row| !matches!(row, Ok(OutputRow { values: None, .. })))
    }

    /// Keys of the facts of `table` the state holds whose period overlaps
    /// `[from, to)` (`start_ts < to` and `coalesce(end_ts, start_ts) >= from`,
    /// the same test `raa reaggregate` runs in SQL). A scan of the table's
    /// records: for a maintenance command, not for the stream.
    pub fn fact_keys_in_range(
        &self,
        table: Table,
        from: i64,
        to: i64,
    ) -> Result<Vec<RowKey>, AggregateError> {
        let spec = table.spec();
        let (Some(start), end) = (spec.slot("start_ts"), spec.slot("end_ts")) else {
            return Ok(Vec::new());
        };
        let mut keys = Vec::new();
        for item in self
            .store
            .scan::<FactRecord>(Space::Fact, &FactKey::table_prefix(table))
        {
            let (k, rec) = item?;
            let Some(s) = rec.row.int(start) else {
                continue;
            };
            let e = end.and_then(|e| rec.row.int(e)).unwrap_or(s);
            if s < to && e >= from {
                keys.push(
                    FactKey::decode_key(&k).ok_or(AggregateError::CorruptKey { what: "fact" })?,
                );
            }
        }
        Ok(keys)
    }

    /// Keys of the cached rows of dimension table `table`.
    pub fn dim_keys(&self, table: Table) -> Vec<RowKey> {
        let mut keys: Vec<RowKey> = self
            .dims
            .keys()
            .filter(|d| d.table == table)
            .map(|d| d.key)
            .collect();
        keys.sort();
        keys
    }
}

/// The calendar of a tenant's zone; an unknown zone name is read as UTC (and
/// logged once), as `verify`'s SQL does.
fn calendar<'a>(
    zones: &'a mut FxHashMap<String, Calendar>,
    utc: &'a mut Calendar,
    name: Option<&str>,
) -> &'a mut Calendar {
    let Some(name) = name else {
        return utc;
    };
    if !zones.contains_key(name) {
        let tz = bucket::zone(Some(name)).unwrap_or_else(|e| {
            tracing::warn!(zone = name, error = %e, "unknown tenant time zone: aggregating in UTC");
            jiff::tz::TimeZone::UTC
        });
        zones.insert(name.to_owned(), Calendar::new(tz));
    }
    // Present since the insert above; `utc` only keeps this free of a panic path.
    zones.get_mut(name).unwrap_or(utc)
}

/// Whether the fact `fk`'s row references the dimension row `dk`.
fn references(dim: Dim, fk: FactKey, row: &Row, dk: DimKey) -> bool {
    dim.fk_slot(fk.table.spec())
        .and_then(|slot| row.int(slot))
        .is_some_and(|k| k == dk.key.0)
}

/// The dimensions a fact table's families read, which its facts are indexed by.
fn index_dims(table: Table) -> Vec<Dim> {
    let mut out: Vec<Dim> = FAMILIES
        .iter()
        .filter(|f| f.source == table)
        .flat_map(|f| f.dims())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Fills unchanged-TOAST slots from the row's last image, or refuses.
fn resolve(
    table: Table,
    key: RowKey,
    new: Tuple,
    prior: Option<&Row>,
) -> Result<Row, AggregateError> {
    let spec = table.spec();
    new.0
        .into_iter()
        .enumerate()
        .map(|(slot, v)| match (v, prior) {
            (Some(v), _) => Ok(v),
            (None, Some(p)) => Ok(p.get(slot).clone()),
            (None, None) => Err(AggregateError::UnchangedWithoutImage {
                table: spec.name,
                key: key.0,
                column: spec.columns.get(slot).map_or("?", |c| c.name),
            }),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Transaction;
    use raa_state::{Lsn, StateKey};

    /// An agent session (all-integer columns) of `len` seconds at `start`.
    fn session(key: i64, start: i64, len: i64) -> Change {
        let ints = [key, 1, 7, 1, start, start + len, len];
        Change::Insert {
            table: Table::SmResSession,
            new: Tuple(ints.iter().map(|&v| Some(Value::Int(v))).collect()),
        }
    }

    /// A backfill's snapshot rows leave the state streamed inserts of the
    /// same rows leave, a key seen twice in one chunk included, without
    /// looking facts up in the store, and with the filter of the keys it
    /// wrote (nothing cached, so the second chunk's accumulators must come
    /// from the store); anything but an insert is refused.
    #[test]
    fn snapshot_rows_aggregate_as_the_same_rows_streamed_do() {
        let rows = |keys: &[(i64, i64)]| -> Vec<Change> {
            keys.iter()
                .map(|&(k, len)| session(k, 1_772_841_600 + k * 900, len))
                .collect()
        };
        let chunks = [
            rows(&[(1, 60), (2, 600), (1, 120)]),
            rows(&[(3, 60), (4, 3_600)]),
        ];
        let apply_all = |engine: &mut Engine, store: &Store, snapshot: bool| {
            for (i, chunk) in chunks.iter().enumerate() {
                let mut work = Work::default();
                if snapshot {
                    engine.apply_snapshot(&mut work, chunk.clone()).unwrap();
                } else {
                    let lsn = Lsn(100 * (i as u64 + 1));
                    let txn = Transaction::read_at(lsn, chunk.clone());
                    engine.apply(&mut work, txn).unwrap();
                }
                assert_eq!(work.changes, chunk.len());
                let out = engine.finish(work).unwrap();
                store.commit(out.state, Lsn(100 * (i as u64 + 1))).unwrap();
            }
        };
        // (snapshot rows, with the filter)
        let state_after = |snapshot: bool, filtered: bool| {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let mut engine = Engine::open(store.clone(), Settings::default()).unwrap();
            engine.cache_max = 10; // bytes: nothing is cached
            if filtered {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(engine.backfilling(5, async |engine| {
                    apply_all(engine, &store, snapshot);
                    assert!(engine.cache().backfilled.is_some());
                    Ok::<_, ()>(())
                }))
                .unwrap();
                assert!(engine.cache().backfilled.is_none(), "dropped after");
            } else {
                apply_all(&mut engine, &store, snapshot);
            }
            let aggregates: Vec<OutputRow> = engine.state_rows().map(Result::unwrap).collect();
            let facts: Vec<(Vec<u8>, FactRecord)> = store
                .scan::<FactRecord>(Space::Fact, &[])
                .map(Result::unwrap)
                .collect();
            (aggregates, facts)
        };
        let streamed = state_after(false, false);
        assert!(!streamed.0.is_empty());
        assert_eq!(streamed.1.len(), 4, "one record a key");
        assert_eq!(state_after(true, false), streamed);
        assert_eq!(state_after(true, true), streamed);

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut engine = Engine::open(store, Settings::default()).unwrap();
        let delete = Change::Delete {
            table: Table::SmResSession,
            key: RowKey(1),
        };
        let refused = engine.apply_snapshot(&mut Work::default(), vec![delete]);
        assert!(
            matches!(refused, Err(AggregateError::NotSnapshotRow)),
            "{refused:?}"
        );
    }

    /// A chunk of dimension rows alone (a backfill's first) has no state
    /// entries but is still work to write.
    #[test]
    fn a_work_of_dimension_rows_alone_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut engine = Engine::open(store, Settings::default()).unwrap();
        let mut work = Work::default();
        assert!(work.is_empty());
        let state = Change::Insert {
            table: Table::ResourceState,
            new: Tuple(vec![
                Some(Value::Int(3)),
                Some(Value::Text("Ready".into())),
                Some(Value::Text("Ready".into())),
            ]),
        };
        let txn = Transaction {
            xid: 1,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(108),
            commit_ts_micros: 0,
            changes: vec![state],
        };
        engine.apply(&mut work, txn).unwrap();
        assert_eq!(work.entries(), 0);
        assert!(!work.is_empty());
    }

    /// The state indexes IRF facts by their resource always, and by their
    /// tenant and technical descriptor only while that row is missing: its
    /// arrival takes the entries out, its deletion puts them in. (Whether
    /// the aggregates stay exact is `tests/retraction.rs`'s.)
    #[test]
    fn few_row_dimensions_index_facts_only_while_their_row_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut engine = Engine::open(store.clone(), Settings::default()).unwrap();
        let text_row = |table, key: i64, texts: &[&str]| Change::Insert {
            table,
            new: Tuple(
                std::iter::once(Value::Int(key))
                    .chain(texts.iter().map(|&t| Value::Text(t.into())))
                    .map(Some)
                    .collect(),
            ),
        };
        let tenant = |key| text_row(Table::Tenant, key, &["t", "UTC"]);
        let descriptor = |key| {
            text_row(
                Table::TechnicalDescriptor,
                key,
                &["Completed", "", "Received"],
            )
        };
        let irf = |key: i64, tenant: i64, descriptor: i64| {
            let mut v = vec![1; 22];
            v[0] = key;
            v[1] = tenant;
            v[6] = descriptor;
            v[9] = 1_772_841_600;
            Change::Insert {
                table: Table::Irf,
                new: Tuple(v.into_iter().map(|i| Some(Value::Int(i))).collect()),
            }
        };
        let mut lsn = 0;
        let mut apply = |engine: &mut Engine, changes: Vec<Change>| {
            lsn += 100;
            let mut work = Work::default();
            engine
                .apply(&mut work, Transaction::read_at(Lsn(lsn), changes))
                .unwrap();
            let out = engine.finish(work).unwrap();
            store.commit(out.state, Lsn(lsn)).unwrap();
        };
        let entry = |dim: Table, dim_key: i64, fact: i64| {
            let mut out = Vec::new();
            IndexKey {
                dim: DimKey {
                    table: dim,
                    key: RowKey(dim_key),
                },
                fact: FactKey {
                    table: Table::Irf,
                    key: RowKey(fact),
                },
            }
            .encode_key(&mut out);
            out
        };
        let index = || -> std::collections::BTreeSet<Vec<u8>> {
            store
                .scan_keys(Space::Index, &[])
                .map(Result::unwrap)
                .collect()
        };
        let resource = text_row(Table::Resource, 1, &["Agent", "a", "1"]);

        // Fact 10's rows are all present; fact 11's tenant 2 and descriptor
        // 2 are missing.
        apply(
            &mut engine,
            vec![
                tenant(1),
                descriptor(1),
                resource,
                irf(10, 1, 1),
                irf(11, 2, 2),
            ],
        );
        assert_eq!(
            index(),
            [
                entry(Table::Resource, 1, 10),
                entry(Table::Resource, 1, 11),
                entry(Table::Tenant, 2, 11),
                entry(Table::TechnicalDescriptor, 2, 11),
            ]
            .into()
        );
        apply(&mut engine, vec![tenant(2), descriptor(2)]);
        assert_eq!(
            index(),
            [entry(Table::Resource, 1, 10), entry(Table::Resource, 1, 11)].into()
        );
        // Deleted, descriptor 1 is missing for fact 10 (found by a scan of
        // the facts); back, it is not.
        apply(
            &mut engine,
            vec![Change::Delete {
                table: Table::TechnicalDescriptor,
                key: RowKey(1),
            }],
        );
        assert_eq!(
            index(),
            [
                entry(Table::Resource, 1, 10),
                entry(Table::Resource, 1, 11),
                entry(Table::TechnicalDescriptor, 1, 10),
            ]
            .into()
        );
        apply(&mut engine, vec![descriptor(1)]);
        assert_eq!(
            index(),
            [entry(Table::Resource, 1, 10), entry(Table::Resource, 1, 11)].into()
        );
    }

    #[test]
    fn a_batch_touching_more_accumulators_than_the_cache_holds_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut engine = Engine::open(store, Settings::default()).unwrap();
        engine.cache_max = 10; // bytes: less than any accumulator
        let mut work = Work::default();
        // A session in each of 40 hours: more than 10 buckets.
        let txn = Transaction {
            xid: 1,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(108),
            commit_ts_micros: 0,
            changes: (0..40)
                .map(|i| session(i, 1_772_841_600 + i * 3600, 60))
                .collect(),
        };
        engine.apply(&mut work, txn.clone()).unwrap();
        let out = engine.finish(work).unwrap();
        assert!(out.rows.len() > 10, "{} rows", out.rows.len());
        assert_eq!(engine.cache().map.len(), 0);
        assert_eq!(engine.cache().bytes, 0);

        // A batch within the cache's size is cached, its bytes counted.
        engine.cache_max = 1 << 20;
        let mut work = Work::default();
        let txn = Transaction {
            commit_lsn: Lsn(200),
            end_lsn: Lsn(208),
            changes: vec![session(1000, 1_772_841_600, 60)],
            ..txn
        };
        engine.apply(&mut work, txn.clone()).unwrap();
        let out = engine.finish(work).unwrap();
        assert!(!out.rows.is_empty());
        assert_eq!(engine.cache().map.len(), out.rows.len());
        let bytes = engine.cache().bytes;
        assert!(bytes > 0 && bytes == engine.cache().recount(), "{bytes}");

        // The next batch takes them out and puts them back changed (a
        // second session in the same buckets): the count stays exact.
        let mut work = Work::default();
        let txn = Transaction {
            commit_lsn: Lsn(300),
            end_lsn: Lsn(308),
            changes: vec![session(1001, 1_772_841_600, 90)],
            ..txn
        };
        engine.apply(&mut work, txn.clone()).unwrap();
        assert_eq!(engine.cache().bytes, 0, "all taken into the work");
        engine.finish(work).unwrap();
        let again = engine.cache().bytes;
        assert!(again > 0 && again == engine.cache().recount(), "{again}");

        // A cache too small for the next batch is emptied first.
        engine.cache_max = again + 1;
        let mut work = Work::default();
        let txn = Transaction {
            commit_lsn: Lsn(400),
            end_lsn: Lsn(408),
            changes: vec![session(1002, 1_772_841_600 + 86_400, 60)],
            ..txn
        };
        engine.apply(&mut work, txn).unwrap();
        let out = engine.finish(work).unwrap();
        assert_eq!(
            engine.cache().map.len(),
            out.rows.len(),
            "only the new batch"
        );
        let cache = engine.cache();
        assert_eq!(cache.bytes, cache.recount());
    }
}
