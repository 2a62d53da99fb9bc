//! The pipeline: source → decode → aggregate → state + sink → acknowledge.
//!
//! Why the acknowledgements are safe. A batch of whole source transactions
//! ending at `end` is committed in this order:
//! 1. the sink transaction (changed rows as absolute values + progress `end`);
//! 2. the state batch (records, accumulators, applied LSN `end`), fsynced;
//! 3. `end` is acknowledged to the server.
//!
//! Step 2 runs on the state's writer thread. While transactions are queued
//! (catching up), step 1 runs beside the next batch's aggregation: the sink
//! transaction in a task of its own, the state batch staged *unconfirmed*
//! (readable at once, written only once that sink transaction has
//! committed, dropped if the run ends first). The next batch's end confirms
//! it, and the writer writes it while the batch after is aggregated and
//! sunk. With nothing queued, step 1 is awaited and the state batch
//! released at once. So the sink may run up to three batches ahead of the
//! durable state, never behind it; each step 2 waits for the one before. A
//! crash between 1 and 2 leaves the sink ahead of the state. On restart the
//! stream resumes from the state's LSN, the state re-applies those
//! transactions (reaching the same accumulators), and their
//! sink writes are skipped while `end` ≤ the sink's progress: the tables
//! already hold them.
//! A crash between 2 and 3 only means the server resends what raa skips: a
//! transaction whose end LSN is at or below the state's is never applied
//! twice. So the acknowledged position ≤ the durable one, by construction.
//!
//! Resuming refuses, rather than guesses, when the positions disagree in a
//! way no crash can cause (state lost, aggregate tables reset, slot ahead).
//!
//! Start-up of an empty state: restore the newest checkpoint from the share
//! if there is one, else backfill from a new slot's exported snapshot (see
//! [`crate::backfill`]); a backfill reaches the sink as one full rewrite at
//! the slot's consistent point, flagged in the state until it is done. With
//! [`AckPolicy::Checkpointed`] the acknowledged position is further held at
//! the oldest checkpoint on the share, so any of them can be replayed.

use crate::aggregate::{spilled_rows, AggregateError, Engine, Output, OutputRow, Settings, Work};
use crate::backfill::{self, BackfillError, RESYNC_SINK, SYSTEM_ID};
use crate::decode::{Transaction, TxnPart};
use crate::ops::shutdown::Shutdown;
use crate::reaggregate;
use crate::share::{Share, ShareError};
use crate::sink::{RowChunks, Sink, SinkError};
use crate::source::snapshot::{self, SnapshotError};
use crate::source::{
    self, setup, SetupError, SourceConfig, SourceEvent, StreamError, StreamHandle,
};
use raa_state::{Batch, Lsn, StateError, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    /// End a batch once it holds this many row changes (whole transactions).
    pub batch_changes: usize,
    /// End a batch at most this long after its first transaction arrived.
    pub batch_delay: Duration,
    /// State entries a batch's work holds in memory at most (see
    /// [`Engine::work_entries`]); a batch ends at a transaction boundary
    /// once it holds half as many.
    pub batch_entries: usize,
    /// While idle, record and acknowledge the server's position this often.
    pub idle_commit_interval: Duration,
    /// Stop once everything committed before the start is in the sink.
    pub until_caught_up: bool,
    /// Stop before applying a transaction that ends past this LSN (replay).
    pub stop_at: Option<Lsn>,
    /// Checkpoints of the state on the GCXI share.
    pub checkpoints: Option<Checkpoints>,
    /// Test hook: stop with [`PipelineError::Failpoint`] at this point, as a crash would.
    #[doc(hidden)]
    pub failpoint: Option<Failpoint>,
    /// Test hook: changes of a transaction's part ([`crate::decode::PART_CHANGES`]).
    #[doc(hidden)]
    pub part_changes: usize,
}

/// Periodic checkpoints to the share, and how far they bound the slot.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    pub share: Share,
    pub interval: Duration,
    pub ack: AckPolicy,
}

/// How far raa lets the server discard WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckPolicy {
    /// Up to what the local state volume holds durably: least WAL kept on the
    /// server, but losing the volume means a rebuild (backfill).
    Durable,
    /// Only up to the oldest checkpoint retained on the share: a new pod can
    /// restore any of them (the newest that verifies) and replay, at the price
    /// of keeping about `retain` × `interval` of WAL on the server.
    Checkpointed,
}

impl std::str::FromStr for AckPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "durable" => Ok(AckPolicy::Durable),
            "checkpointed" => Ok(AckPolicy::Checkpointed),
            other => Err(format!(
                "ack policy is \"durable\" or \"checkpointed\", not {other:?}"
            )),
        }
    }
}

/// Points in a batch commit where tests stop the pipeline on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// After the run's `n`-th sink commit (from 1), before the state's commit.
    AfterSinkCommit(u64),
    /// A reaggregation's read fails after `n` slices were applied, as a
    /// lost connection would; the run goes on.
    ReaggregateRead(usize),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_changes: 50_000,
            batch_delay: Duration::from_millis(200),
            batch_entries: crate::aggregate::WORK_ENTRIES,
            idle_commit_interval: Duration::from_secs(10),
            until_caught_up: false,
            stop_at: None,
            checkpoints: None,
            failpoint: None,
            part_changes: crate::decode::PART_CHANGES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("initial backfill failed")]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error("identifying the source cluster")]
    Identify(#[from] SnapshotError),
    #[error(
        "the state was built from database cluster {state}, but the source is cluster {server}: \
         point raa at the right database, or rebuild from an empty state directory"
    )]
    OtherCluster { state: String, server: String },
    #[error("answering a reaggregate request: {0}")]
    Reaggregate(String),
    #[error("writing the whole state to the sink at {lsn}")]
    Resync {
        lsn: Lsn,
        #[source]
        source: SinkError,
    },
    #[error("aggregating the transaction that commits at {commit_lsn}")]
    Aggregate {
        commit_lsn: Lsn,
        #[source]
        source: AggregateError,
    },
    #[error("ending the batch at {lsn}")]
    Finish {
        lsn: Lsn,
        #[source]
        source: AggregateError,
    },
    #[error("writing the batch ending at {lsn} to the aggregate tables")]
    Sink {
        lsn: Lsn,
        #[source]
        source: SinkError,
    },
    #[error("reading the sink's progress")]
    SinkProgress(#[source] SinkError),
    #[error("committing the batch ending at {lsn} to the state")]
    State {
        lsn: Lsn,
        #[source]
        source: StateError,
    },
    #[error("stopped at failpoint {0:?}")]
    Failpoint(Failpoint),
    #[error("cannot connect to the source database")]
    Connect(#[source] tokio_postgres::Error),
    #[error(
        "the state directory is empty but the aggregate tables record progress up to {sink}: \
         the state was lost. Point --state-dir at the right volume, or rebuild: drop the \
         aggregate tables' rows and raa_progress for this slot and start from an empty state"
    )]
    StateLost { sink: Lsn },
    #[error(
        "the aggregate tables record progress {sink:?} but the state holds {state}: they were \
         reset or restored outside raa. Rebuild from an empty state directory"
    )]
    SinkBehind { state: Lsn, sink: Option<Lsn> },
    #[error(
        "replication slot {slot} is acknowledged up to {confirmed}, past the state's {state}: the \
         WAL between is gone and resuming would lose facts. Restore the matching state directory, \
         or rebuild from an empty one with a new slot"
    )]
    SlotAhead {
        slot: String,
        confirmed: Lsn,
        state: Lsn,
    },
}

impl PipelineError {
    /// Whether running again later can succeed by itself (the server
    /// restarting, a cut connection, a failed sink commit, a full disk), as
    /// opposed to a situation an operator must resolve. A run that failed
    /// transiently is restarted from scratch: state, sink and slot positions
    /// are re-read, so nothing in memory is trusted after an error.
    pub fn is_transient(&self) -> bool {
        use PipelineError as E;
        if self.is_state_io() {
            return true;
        }
        match self {
            E::Stream(StreamError::Replication(e))
            | E::Identify(SnapshotError::Replication { source: e, .. }) => replication_transient(e),
            E::Stream(StreamError::Ended) => true,
            E::Setup(SetupError::Sql { .. } | SetupError::SlotActive(_)) => true,
            E::Connect(_) => true,
            E::Sink { source, .. } | E::SinkProgress(source) | E::Resync { source, .. } => {
                !matches!(
                    source,
                    SinkError::ProgressRegressed { .. } | SinkError::BadProgress { .. }
                )
            }
            E::Backfill(b) => match b {
                BackfillError::Connect(_) | BackfillError::Finish(_) => true,
                BackfillError::Snapshot(SnapshotError::Replication { source, .. }) => {
                    replication_transient(source)
                }
                BackfillError::Snapshot(SnapshotError::Read { .. }) => true,
                // The slot still held by the session of a process that just died.
                BackfillError::Snapshot(SnapshotError::Setup(
                    SetupError::Sql { .. } | SetupError::SlotActive(_),
                )) => true,
                _ => false,
            },
            E::Share(ShareError::Io { .. }) => true,
            _ => false,
        }
    }
}

impl PipelineError {
    /// A failed read or write of the state store: the store must be closed
    /// and opened again before retrying (sled refuses every operation after
    /// an I/O error, a full disk included).
    pub fn is_state_io(&self) -> bool {
        use PipelineError as E;
        match self {
            E::State { source, .. } => matches!(source, StateError::Io { .. }),
            E::Aggregate { source, .. } | E::Finish { source, .. } => {
                matches!(source, AggregateError::State(StateError::Io { .. }))
            }
            E::Backfill(BackfillError::State(StateError::Io { .. }))
            | E::Share(ShareError::State(StateError::Io { .. })) => true,
            _ => false,
        }
    }
}

/// I/O failures, and the server errors of a restart or of a slot still held
/// by the session of a process that just died.
fn replication_transient(e: &pgwire_replication::PgWireError) -> bool {
    if e.is_transient() {
        return true;
    }
    let text = e.to_string();
    [
        "55006",
        "57P01",
        "57P02",
        "57P03",
        "is active for PID",
        "shutting down",
        "starting up",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// What a run did, and where its time went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub transactions: u64,
    pub changes: u64,
    pub skipped_transactions: u64,
    /// The initial backfill of this run, if any: its rows and its time by
    /// stage.
    pub backfill: Option<backfill::Backfilled>,
    /// Seconds rewriting the aggregate tables from the whole state after
    /// it, and the rows written.
    pub resync_secs: f64,
    pub resync_rows: u64,
    pub batches: u64,
    pub durable: Lsn,
    /// Seconds applying transactions to the working set (aggregation, state reads).
    pub apply_secs: f64,
    /// Seconds ending batches (encoding the state batch, collecting output rows).
    pub finish_secs: f64,
    /// Seconds waiting for sink transactions (those run beside aggregation
    /// count only while the pipeline waits for them).
    pub sink_secs: f64,
    /// Aggregate rows upserted or deleted by those transactions.
    pub sink_rows: u64,
    /// Seconds committing and flushing the state.
    pub state_secs: f64,
    /// Batches whose work outgrew memory and went through the disk.
    pub spilled_batches: u64,
    /// Transactions that arrived in parts (larger than a part).
    pub transactions_in_parts: u64,
}

impl Summary {
    /// Rows read from the snapshot by an initial backfill in this run.
    pub fn backfilled_rows(&self) -> u64 {
        self.backfill.as_ref().map_or(0, |b| b.rows)
    }
}

/// How much longer than `batch_delay` a batch may grow while transactions
/// are queued behind it.
const BACKLOG_STRETCH: u32 = 5;

/// State metadata: set once the sink has committed a batch for this state.
const SINK_WRITTEN: &str = "sink-written";

/// Decides where streaming resumes, refusing inconsistent positions.
///
/// `state` is the state's applied LSN and `sink_written` whether the sink ever
/// committed a batch for it; `sink` is the sink's progress LSN.
pub fn resume_point(
    slot: &str,
    state: Option<Lsn>,
    sink_written: bool,
    sink: Option<Lsn>,
    slot_confirmed: Lsn,
) -> Result<Lsn, PipelineError> {
    let Some(state) = state else {
        return match sink {
            Some(sink) => Err(PipelineError::StateLost { sink }),
            None => Ok(slot_confirmed),
        };
    };
    if slot_confirmed > state {
        return Err(PipelineError::SlotAhead {
            slot: slot.to_owned(),
            confirmed: slot_confirmed,
            state,
        });
    }
    match sink {
        // Nothing was sunk yet (or the crash came before the first sink commit).
        None if !sink_written => Ok(state),
        Some(p) if p >= state => Ok(state),
        _ => Err(PipelineError::SinkBehind { state, sink }),
    }
}

/// Runs the pipeline until shutdown, an error, or (with `until_caught_up`)
/// until everything committed before the start is in the sink.
pub async fn run<S: Sink>(
    source: &SourceConfig,
    store: Arc<Store>,
    settings: Settings,
    sink: S,
    opts: Options,
    mut shutdown: Shutdown,
) -> Result<Summary, PipelineError> {
    // A store kept from a failed run (see `main`) may still be writing its
    // last batches: resume from what is durable, with nothing in flight.
    store.discard_unconfirmed();
    blocking(|| store.wait()).map_err(|source| PipelineError::State {
        lsn: Lsn::ZERO,
        source,
    })?;
    let sql = source.connect().await.map_err(PipelineError::Connect)?;
    setup::check_server(&sql).await?;
    let server_id = snapshot::system_id(source).await?;
    let mut sink = sink;
    let sink_progress = sink.progress().await.map_err(PipelineError::SinkProgress)?;
    let state_err = |lsn| move |source| PipelineError::State { lsn, source };
    let mut needs_backfill = false;
    if store.applied_lsn().is_none() {
        if !store.is_empty().map_err(state_err(Lsn::ZERO))? {
            tracing::warn!(
                "the state directory holds an interrupted backfill or restore: starting it over"
            );
            store.clear().map_err(state_err(Lsn::ZERO))?;
        }
        let restored = match &opts.checkpoints {
            Some(c) => blocking(|| c.share.restore_newest(&store, &server_id))?,
            None => None,
        };
        if restored.is_none() {
            if let Some(sink) = sink_progress {
                return Err(PipelineError::StateLost { sink });
            }
            needs_backfill = true;
        }
    }
    let mut p = Pipeline::new(store, settings, sink)?;
    p.sink_progress = sink_progress;
    p.engine.set_work_entries(opts.batch_entries);
    if needs_backfill {
        let (store, engine) = (p.store.clone(), &mut p.engine);
        let done = backfill::run(source, &store, engine).await?;
        p.summary.backfill = Some(done.clone());
        p.summary.spilled_batches += done.spilled_chunks;
    }
    match p
        .store
        .meta::<String>(SYSTEM_ID)
        .map_err(state_err(Lsn::ZERO))?
    {
        Some(state) if state != server_id => {
            return Err(PipelineError::OtherCluster {
                state,
                server: server_id,
            })
        }
        _ => {}
    }
    let slot = setup::slot_info(&sql, &source.slot).await?;
    let resync = p
        .store
        .meta::<bool>(RESYNC_SINK)
        .map_err(state_err(Lsn::ZERO))?
        .unwrap_or(false);
    let sink_written = p
        .store
        .meta::<bool>(SINK_WRITTEN)
        .map_err(state_err(Lsn::ZERO))?
        .unwrap_or(false);
    let start = resume_point(
        &source.slot,
        p.store.applied_lsn(),
        sink_written || resync,
        if resync {
            p.store.applied_lsn()
        } else {
            p.sink_progress
        },
        slot.confirmed_flush,
    )?;
    if resync {
        p.resync(start).await?;
    }
    p.system_id = server_id;
    if let Some(c) = &opts.checkpoints {
        p.note_checkpoints(&c.share)?;
    }
    p.applied = start;
    p.failpoint = opts.failpoint;
    p.ack_policy = opts.checkpoints.as_ref().map(|c| c.ack);
    let target = if opts.until_caught_up || opts.stop_at.is_some() {
        let now = setup::current_wal_lsn(&sql).await?;
        Some(opts.stop_at.map_or(now, |s| s.min(now)))
    } else {
        None
    };
    drop(sql);
    tracing::info!(%start, target = ?target.map(|t| t.to_string()), slot = %source.slot, "streaming");
    let mut stream =
        source::stream::start(source, start, p.ack_position(), opts.part_changes).await?;
    let result = p
        .drive(source, &mut stream, &opts, target, &mut shutdown)
        .await;
    stream.stop().await;
    if result.is_err() {
        p.abandon().await;
    }
    result?;
    Ok(std::mem::take(&mut p.summary))
}

struct Pipeline<S> {
    store: Arc<Store>,
    engine: Engine,
    sink: S,
    sink_progress: Option<Lsn>,
    /// The end of the last batch handed to the state: its effects are read
    /// by the next batch, though the writer may still be flushing it (the
    /// store's applied LSN tells what is durable).
    applied: Lsn,
    work: Work,
    /// End LSN of the last transaction in `work`, if any.
    batch_end: Option<Lsn>,
    /// The transaction whose parts are in `work`, until its commit arrives.
    partial: Option<Partial>,
    batch_started: Option<Instant>,
    last_commit: Instant,
    summary: Summary,
    failpoint: Option<Failpoint>,
    /// Sink commits in this run (the failpoint counts these).
    sink_commits: u64,
    /// The batch whose sink write runs beside aggregation; its state is
    /// staged unconfirmed until [`Pipeline::confirm_sink`].
    sink_pending: Option<PendingSink>,
    /// The source cluster's identifier, recorded in checkpoints.
    system_id: String,
    /// The oldest checkpoint retained on the share: with
    /// [`AckPolicy::Checkpointed`], every retained one stays replayable.
    checkpointed: Option<Lsn>,
    /// When the newest checkpoint was written (Unix seconds).
    last_checkpoint: Option<i64>,
    /// How long the last checkpoint of this run took.
    checkpoint_took: Duration,
    newest_checkpoint: Option<Lsn>,
    /// `None`: no share; acknowledge what is durable locally.
    ack_policy: Option<AckPolicy>,
}

impl<S: Sink> Pipeline<S> {
    fn new(store: Arc<Store>, settings: Settings, sink: S) -> Result<Self, PipelineError> {
        let engine =
            Engine::open(store.clone(), settings).map_err(|source| PipelineError::Finish {
                lsn: store.applied_lsn().unwrap_or_default(),
                source,
            })?;
        Ok(Pipeline {
            store,
            engine,
            sink,
            sink_progress: None,
            applied: Lsn::ZERO,
            work: Work::default(),
            batch_end: None,
            partial: None,
            batch_started: None,
            last_commit: Instant::now(),
            summary: Summary::default(),
            failpoint: None,
            sink_commits: 0,
            sink_pending: None,
            system_id: String::new(),
            checkpointed: None,
            last_checkpoint: None,
            checkpoint_took: Duration::ZERO,
            newest_checkpoint: None,
            ack_policy: None,
        })
    }

    /// The main loop. `select!` priority: shutdown first, then an expired
    /// batch deadline, then the next source event.
    async fn drive(
        &mut self,
        source: &SourceConfig,
        stream: &mut StreamHandle,
        opts: &Options,
        target: Option<Lsn>,
        shutdown: &mut Shutdown,
    ) -> Result<(), PipelineError> {
        enum Step {
            Shutdown,
            Deadline,
            CheckpointRequest,
            ReaggregateRequest,
            Event(Option<Result<SourceEvent, StreamError>>),
        }
        let mut usr1 = match &opts.checkpoints {
            Some(_) => listen(tokio::signal::unix::SignalKind::user_defined1()),
            None => None,
        };
        let mut usr2 = listen(tokio::signal::unix::SignalKind::user_defined2());
        // A request may be waiting from before the start (an unreadable one
        // is answered with the reason).
        let mut reaggregate = reaggregate::pending(self.store.path()).map_or(true, |r| r.is_some());
        loop {
            if self.batch_started.is_none() && stream.is_empty() {
                // Nothing to aggregate: the batch before need not wait.
                self.confirm_sink().await?;
                self.store.release();
            }
            if reaggregate && self.batch_end.is_none() && self.partial.is_none() {
                self.confirm_sink().await?;
                if self.sink_progress == Some(self.applied) {
                    reaggregate = false;
                    self.reaggregate(source).await?;
                }
            }
            if target.is_some_and(|t| self.applied >= t) && !reaggregate {
                self.settle(stream).await?;
                self.checkpoint(opts, stream, false).await?;
                return Ok(());
            }
            // While more transactions are already waiting (catching up), a
            // batch may grow to BACKLOG_STRETCH × the delay: fewer, larger
            // batches share their accumulator reads, writes and commits.
            let stretch = if stream.is_empty() {
                1
            } else {
                BACKLOG_STRETCH
            };
            // A transaction in parts ends its batch only with its commit.
            let deadline = self
                .batch_started
                .filter(|_| self.partial.is_none())
                .map(|t| tokio::time::Instant::from_std(t + opts.batch_delay * stretch));
            let step = tokio::select! {
                biased;
                _ = shutdown.wait() => Step::Shutdown,
                _ = sleep_until(deadline), if deadline.is_some() => Step::Deadline,
                _ = recv_signal(&mut usr1), if usr1.is_some() => Step::CheckpointRequest,
                _ = recv_signal(&mut usr2), if usr2.is_some() => Step::ReaggregateRequest,
                ev = stream.recv() => Step::Event(ev),
            };
            match step {
                Step::Shutdown => {
                    if self.partial.is_some() {
                        tracing::info!(
                            "stopping inside a transaction that arrives in parts: \
                             it is applied again from its start on restart"
                        );
                    }
                    self.flush(stream).await?;
                    self.settle(stream).await?;
                    self.checkpoint(opts, stream, false).await?;
                    tracing::info!(durable = %self.applied, "stopped");
                    return Ok(());
                }
                Step::Deadline => self.flush(stream).await?,
                Step::CheckpointRequest => {
                    self.flush(stream).await?;
                    self.checkpoint(opts, stream, true).await?;
                }
                Step::ReaggregateRequest => {
                    self.flush(stream).await?;
                    reaggregate = true;
                }
                Step::Event(None) => return Err(StreamError::Ended.into()),
                Step::Event(Some(Err(e))) => return Err(e.into()),
                Step::Event(Some(Ok(SourceEvent::Part(part)))) => {
                    if opts.stop_at.is_some_and(|s| part.commit_lsn >= s) {
                        self.flush(stream).await?;
                        return self.settle(stream).await;
                    }
                    self.apply_part(part, stream).await?;
                }
                Step::Event(Some(Ok(SourceEvent::Txn(txn)))) => {
                    if opts.stop_at.is_some_and(|s| txn.end_lsn > s) {
                        // A transaction in parts, if any, is left unapplied.
                        self.flush(stream).await?;
                        return self.settle(stream).await;
                    }
                    let (end, xid) = (txn.end_lsn, txn.xid);
                    let partial = self.partial.take();
                    let changes = txn.changes.len() + partial.as_ref().map_or(0, |p| p.changes);
                    if partial.is_some_and(|p| p.skip) {
                        self.summary.skipped_transactions += 1;
                        continue;
                    }
                    // Consumed: its rows move into the work as they are applied.
                    self.apply(txn)?;
                    let applied = self.batch_end == Some(end);
                    if applied && changes >= opts.batch_changes {
                        // Minutes may pass without a batch: say why.
                        tracing::info!(changes, xid, end = %end, "a transaction larger than a batch is aggregated: committing it");
                    }
                    // Half the work's bound: a transaction must add as much
                    // again before its work spills to disk mid-way.
                    if self.work.changes >= opts.batch_changes
                        || self.work.entries() >= opts.batch_entries / 2
                        || self.work.is_spilled()
                    {
                        self.flush(stream).await?;
                    }
                }
                Step::Event(Some(Ok(SourceEvent::Idle { .. }))) if !stream.is_empty() => {
                    // The walsender sends a keepalive whenever it waits for
                    // WAL, so under steady small commits one follows nearly
                    // every transaction. With more already queued behind it,
                    // raa is the one behind: flushing here would make every
                    // transaction a batch of its own (4 419 batches for 6 217
                    // transactions at 5 000 changes/s, and a lag that grew).
                    self.ack(stream);
                }
                Step::Event(Some(Ok(SourceEvent::Idle { wal_end }))) => {
                    self.flush(stream).await?;
                    // The batch before may have become durable since.
                    self.ack(stream);
                    let catching_up = target.is_some_and(|t| self.applied < t);
                    if wal_end > self.applied
                        && (catching_up || self.last_commit.elapsed() >= opts.idle_commit_interval)
                    {
                        self.batch_end = Some(wal_end);
                        self.flush(stream).await?;
                    }
                }
            }
            self.checkpoint(opts, stream, false).await?;
        }
    }

    /// Sends the acknowledgeable position to the stream (and the metric).
    fn ack(&self, stream: &StreamHandle) {
        let at = self.ack_position();
        stream.ack(at);
        crate::ops::metrics::metrics().acknowledged(at);
    }

    /// Reads the checkpoint positions from the share.
    fn note_checkpoints(&mut self, share: &Share) -> Result<(), PipelineError> {
        let positions = share.positions()?;
        self.newest_checkpoint = positions.first().map(|p| p.0);
        self.last_checkpoint = positions.first().map(|p| p.1);
        self.checkpointed = positions.last().map(|p| p.0);
        Ok(())
    }

    /// The position the server may discard WAL up to: what is durable here,
    /// or with [`AckPolicy::Checkpointed`] what the newest checkpoint covers.
    fn ack_position(&self) -> Lsn {
        let durable = self
            .store
            .applied_lsn()
            .unwrap_or_default()
            .min(self.applied);
        match self.ack_policy {
            Some(AckPolicy::Checkpointed) => durable.min(self.checkpointed.unwrap_or_default()),
            _ => durable,
        }
    }

    /// Waits until the last batch is durable, then acknowledges it: before
    /// the pipeline stops or reports where it stands.
    async fn settle(&mut self, stream: &StreamHandle) -> Result<(), PipelineError> {
        self.confirm_sink().await?;
        let store = &self.store;
        blocking(|| store.wait()).map_err(|source| PipelineError::State {
            lsn: self.applied,
            source,
        })?;
        self.summary.durable = self.applied;
        self.ack(stream);
        Ok(())
    }

    /// Writes a checkpoint to the share when one is due (or `now`): between
    /// batches, so the state is not changing under it.
    async fn checkpoint(
        &mut self,
        opts: &Options,
        stream: &StreamHandle,
        now: bool,
    ) -> Result<(), PipelineError> {
        let Some(c) = &opts.checkpoints else {
            return Ok(());
        };
        // Due `interval` after the previous one started, and never sooner
        // than twice its duration: streaming keeps at least half the time
        // when checkpoints grow longer than the interval.
        let age = jiff::Timestamp::now().as_second() - self.last_checkpoint.unwrap_or(i64::MIN / 2);
        let spacing = c.interval.max(self.checkpoint_took * 2);
        let due = age >= spacing.as_secs() as i64;
        if !(now || due) || self.newest_checkpoint >= Some(self.applied) {
            return Ok(());
        }
        // A checkpoint holds what the state holds: all of it written.
        self.confirm_sink().await?;
        let started = Instant::now();
        let (store, id) = (&self.store, &self.system_id);
        let info = blocking(|| c.share.write(store, id))?;
        self.checkpoint_took = started.elapsed();
        crate::ops::metrics::metrics().checkpoint_completed(self.checkpoint_took);
        self.note_checkpoints(&c.share)?;
        tracing::info!(lsn = %info.lsn, entries = info.entries, ms = self.checkpoint_took.as_millis() as u64, "checkpoint written to the share");
        self.ack(stream);
        Ok(())
    }

    /// Serves a `raa reaggregate` request left in the state directory: one
    /// batch at the current durable position (see [`crate::reaggregate`]).
    /// A request that cannot be served is answered with the reason.
    async fn reaggregate(&mut self, source: &SourceConfig) -> Result<(), PipelineError> {
        let dir = self.store.path().to_owned();
        let range = match reaggregate::pending(&dir) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "refusing a reaggregate request");
                let _ = reaggregate::answer(&dir, &format!("error: {e}"));
                return Ok(());
            }
        };
        let lsn = self.applied;
        tracing::info!(from = range.from, to = range.to, %lsn, "reaggregating a time range from the facts");
        let fail_after = match self.failpoint {
            Some(Failpoint::ReaggregateRead(n)) => Some(n),
            _ => None,
        };
        let applied = match source.connect().await {
            Ok(client) => {
                let (engine, work) = (&mut self.engine, &mut self.work);
                reaggregate::apply(&client, engine, work, range, lsn, fail_after).await
            }
            Err(e) => {
                let e = format!("cannot connect to the source: {e}");
                tracing::warn!(error = %e, "reaggregate failed");
                let _ = reaggregate::answer(&dir, &format!("error: {e}"));
                return Ok(());
            }
        };
        let facts = match applied {
            Ok(n) => n,
            Err(reaggregate::ReaggregateError::Apply(source)) => {
                return Err(PipelineError::Aggregate {
                    commit_lsn: lsn,
                    source,
                })
            }
            Err(e) => {
                let e = format!("{:#}", anyhow::Error::from(e));
                tracing::warn!(error = %e, "reaggregate failed");
                // The slices applied so far changed the engine's dimension
                // rows: it starts over from the store, as after a restart.
                self.work = Work::default();
                self.reopen_engine(lsn)?;
                let _ = reaggregate::answer(&dir, &format!("error: {e}"));
                return Ok(());
            }
        };
        let work = std::mem::take(&mut self.work);
        let engine = &self.engine;
        let out = blocking(|| engine.finish(work))
            .map_err(|source| PipelineError::Finish { lsn, source })?;
        let rows = self.write_sink(lsn, &out).await?;
        let store = &self.store;
        blocking(|| match out.spilled {
            Some(spilled) => store.commit_provisional(spilled, out.state, lsn),
            None => store.commit(out.state, lsn),
        })
        .map_err(|source| PipelineError::State { lsn, source })?;
        let outcome = format!("ok: {facts} rows re-read, {rows} aggregate rows rewritten at {lsn}");
        tracing::info!(facts, rows, %lsn, "reaggregated");
        reaggregate::answer(&dir, &outcome).map_err(|e| PipelineError::Reaggregate(e.to_string()))
    }

    /// Replaces the engine (its dimension rows and caches) with one opened
    /// from the store, as a restart would.
    fn reopen_engine(&mut self, lsn: Lsn) -> Result<(), PipelineError> {
        let entries = self.engine.work_entries();
        let settings = self.engine.settings().clone();
        self.engine = Engine::open(self.store.clone(), settings)
            .map_err(|source| PipelineError::Finish { lsn, source })?;
        self.engine.set_work_entries(entries);
        Ok(())
    }

    /// Rewrites the sink from the whole state (after a backfill).
    async fn resync(&mut self, lsn: Lsn) -> Result<(), PipelineError> {
        tracing::info!(%lsn, "writing the whole state to the aggregate tables");
        let started = Instant::now();
        let mut rows = ChunkedRows {
            rows: Box::new(self.engine.state_rows()),
            read: 0,
        };
        self.sink
            .replace_all(lsn, &mut rows)
            .await
            .map_err(|source| PipelineError::Resync { lsn, source })?;
        tracing::info!(rows = rows.read, %lsn, "the aggregate tables hold the whole state");
        self.summary.resync_secs = started.elapsed().as_secs_f64();
        self.summary.resync_rows = rows.read as u64;
        crate::ops::metrics::metrics().sink_committed(rows.read, started.elapsed());
        self.sink_progress = Some(lsn);
        let state_err = |source| PipelineError::State { lsn, source };
        let mut done = Batch::default();
        done.put_meta(RESYNC_SINK, &false).map_err(state_err)?;
        done.put_meta(SINK_WRITTEN, &true).map_err(state_err)?;
        let store = &self.store;
        blocking(|| store.commit(done, lsn)).map_err(state_err)
    }

    fn apply(&mut self, txn: Transaction) -> Result<(), PipelineError> {
        if txn.end_lsn <= self.applied {
            self.summary.skipped_transactions += 1;
            return Ok(());
        }
        let (commit_lsn, end_lsn, changes) = (txn.commit_lsn, txn.end_lsn, txn.changes.len());
        let (engine, work) = (&mut self.engine, &mut self.work);
        let started = Instant::now();
        blocking(|| engine.apply(work, txn))
            .map_err(|source| PipelineError::Aggregate { commit_lsn, source })?;
        self.summary.apply_secs += started.elapsed().as_secs_f64();
        self.summary.transactions += 1;
        self.summary.changes += changes as u64;
        self.batch_end = Some(end_lsn);
        self.batch_started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes a finished batch's rows to the sink; returns how many.
    async fn write_sink(&mut self, lsn: Lsn, out: &Output) -> Result<usize, PipelineError> {
        let sink_err = |source| PipelineError::Sink { lsn, source };
        let Some(spilled) = &out.spilled else {
            self.sink.write(lsn, &out.rows).await.map_err(sink_err)?;
            return Ok(out.rows.len());
        };
        let mut chunks = ChunkedRows {
            rows: Box::new(spilled_rows(spilled)),
            read: 0,
        };
        self.sink
            .write_chunks(lsn, &mut chunks)
            .await
            .map_err(sink_err)?;
        Ok(chunks.read)
    }

    /// Waits for the sink write submitted beside aggregation, if any; once
    /// it has committed, its state batch may be written.
    async fn confirm_sink(&mut self) -> Result<(), PipelineError> {
        let Some(pending) = self.sink_pending.take() else {
            return Ok(());
        };
        let lsn = pending.lsn;
        let waited = Instant::now();
        let confirmed = self.sink.confirm().await;
        self.summary.sink_secs += waited.elapsed().as_secs_f64();
        confirmed.map_err(|source| PipelineError::Sink { lsn, source })?;
        self.sink_committed(lsn, pending.rows, pending.started.elapsed())?;
        self.store.confirm();
        crate::ops::metrics::metrics().state_committed(lsn, pending.state_took);
        Ok(())
    }

    /// Books a sink commit of the batch ending at `end`.
    fn sink_committed(
        &mut self,
        end: Lsn,
        rows: usize,
        took: Duration,
    ) -> Result<(), PipelineError> {
        self.sink_progress = Some(end);
        self.summary.sink_rows += rows as u64;
        crate::ops::metrics::metrics().sink_committed(rows, took);
        self.sink_commits += 1;
        let here = Failpoint::AfterSinkCommit(self.sink_commits);
        if self.failpoint == Some(here) {
            return Err(PipelineError::Failpoint(here));
        }
        tracing::debug!(%end, rows, ms = took.as_millis() as u64, "sink committed");
        Ok(())
    }

    /// After a failed run: waits for a sink write still running, so a
    /// restart reads the sink's progress after it, drops its state batch
    /// unwritten (the restart replays it, skipping the sink if it committed)
    /// and waits for the batches before it, so the state's durable position
    /// is where a restart resumes.
    async fn abandon(&mut self) {
        if let Some(pending) = self.sink_pending.take() {
            match self.sink.confirm().await {
                Ok(_) => {
                    tracing::info!(lsn = %pending.lsn, "the last sink write committed; its state batch is replayed on restart")
                }
                Err(e) => {
                    tracing::info!(lsn = %pending.lsn, error = %e, "the last sink write failed")
                }
            }
        }
        self.store.discard_unconfirmed();
        let store = &self.store;
        if let Err(e) = blocking(|| store.wait()) {
            tracing::info!(error = %e, "the state writer failed too");
        }
    }

    /// Applies the leading changes of a large transaction. Its batch holds
    /// it alone: the batch before ends first, and [`Pipeline::flush`] waits
    /// for its commit (a stop before it drops the changes applied so far).
    async fn apply_part(
        &mut self,
        part: TxnPart,
        stream: &StreamHandle,
    ) -> Result<(), PipelineError> {
        let commit_lsn = part.commit_lsn;
        if self.partial.is_none() {
            self.flush(stream).await?;
            tracing::info!(
                xid = part.xid,
                %commit_lsn,
                "a large source transaction arrives in parts: its batch ends with its commit"
            );
            self.summary.transactions_in_parts += 1;
            self.partial = Some(Partial {
                // As `apply` skips a replayed transaction by its end.
                skip: commit_lsn < self.applied,
                changes: 0,
            });
        }
        let Some(partial) = &mut self.partial else {
            return Ok(());
        };
        let changes = part.changes.len();
        partial.changes += changes;
        if partial.skip {
            return Ok(());
        }
        let txn = Transaction {
            xid: part.xid,
            commit_lsn,
            end_lsn: commit_lsn,
            commit_ts_micros: 0,
            changes: part.changes,
        };
        let (engine, work) = (&mut self.engine, &mut self.work);
        let started = Instant::now();
        blocking(|| engine.apply(work, txn))
            .map_err(|source| PipelineError::Aggregate { commit_lsn, source })?;
        self.summary.apply_secs += started.elapsed().as_secs_f64();
        self.summary.changes += changes as u64;
        self.batch_started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Commits the batch: sink, then state, then acknowledgement. Not while
    /// a transaction in parts is open: its batch ends with its commit.
    async fn flush(&mut self, stream: &StreamHandle) -> Result<(), PipelineError> {
        if self.partial.is_some() {
            return Ok(());
        }
        let Some(end) = self.batch_end.take() else {
            return Ok(());
        };
        self.batch_started = None;
        let work = std::mem::take(&mut self.work);
        let engine = &self.engine;
        let started = Instant::now();
        let mut out = blocking(|| engine.finish(work))
            .map_err(|source| PipelineError::Finish { lsn: end, source })?;
        self.summary.finish_secs += started.elapsed().as_secs_f64();
        self.summary.spilled_batches += u64::from(out.spilled.is_some());
        crate::ops::metrics::metrics().accum_cache(self.engine.cache_bytes());
        // The batch before: its sink commit, then its state may be written,
        // while this batch's sink transaction runs.
        self.confirm_sink().await?;
        self.store.release();
        // Beside the next batch's aggregation while more is queued; a
        // spilled batch's rows are read from the disk as they are sent.
        let beside = !stream.is_empty() && out.spilled.is_none();
        if self.sink_progress.is_none_or(|p| end > p) {
            out.state
                .put_meta(SINK_WRITTEN, &true)
                .map_err(|source| PipelineError::State { lsn: end, source })?;
            let started = Instant::now();
            if beside {
                let rows = out.rows.len();
                let sent = self.sink.submit(end, std::mem::take(&mut out.rows)).await;
                sent.map_err(|source| PipelineError::Sink { lsn: end, source })?;
                self.sink_pending = Some(PendingSink {
                    lsn: end,
                    rows,
                    started,
                    state_took: Duration::ZERO,
                });
            } else {
                let rows = self.write_sink(end, &out).await?;
                self.sink_committed(end, rows, started.elapsed())?;
            }
            self.summary.sink_secs += started.elapsed().as_secs_f64();
        }
        // Held until the next batch is aggregated, or until its sink commit
        // (see the module docs); only waiting for the previous one counts here.
        let store = &self.store;
        let started = Instant::now();
        let unconfirmed = self.sink_pending.is_some();
        let submitted = blocking(|| match out.spilled {
            // Written now: it is not in memory for the next batch to read.
            Some(spilled) => store.commit_provisional(spilled, out.state, end),
            None if unconfirmed => store.stage_unconfirmed(out.state, end),
            None => store.stage(out.state, end),
        });
        self.summary.state_secs += started.elapsed().as_secs_f64();
        submitted.map_err(|source| PipelineError::State { lsn: end, source })?;
        match &mut self.sink_pending {
            Some(pending) => pending.state_took = started.elapsed(),
            None => crate::ops::metrics::metrics().state_committed(end, started.elapsed()),
        }
        self.applied = end;
        self.summary.batches += 1;
        self.last_commit = Instant::now();
        self.ack(stream);
        Ok(())
    }
}

impl<S> Drop for Pipeline<S> {
    /// However the run ended (an error, a cancelled future, a panic): a
    /// state batch whose sink commit was never confirmed is not written.
    fn drop(&mut self) {
        self.store.discard_unconfirmed();
    }
}

/// A sink write submitted beside aggregation, not yet confirmed.
struct PendingSink {
    lsn: Lsn,
    rows: usize,
    started: Instant,
    /// How long its state batch waited for the one before.
    state_took: Duration,
}

/// A transaction arriving in parts (see [`SourceEvent::Part`]).
struct Partial {
    /// Already applied before this run: its parts and commit are skipped.
    skip: bool,
    /// Changes in its parts so far.
    changes: usize,
}

/// Output rows for the sink read from disk a chunk at a time: a spilled
/// batch's, or the whole state's after a backfill.
struct ChunkedRows<'a> {
    rows: Box<dyn Iterator<Item = Result<OutputRow, AggregateError>> + Send + 'a>,
    read: usize,
}

/// Rows a chunk: the sink's wave.
const ROWS_CHUNK: usize = 20_000;

impl RowChunks for ChunkedRows<'_> {
    fn next_chunk(&mut self) -> Result<Option<Vec<OutputRow>>, SinkError> {
        let rows = &mut self.rows;
        let chunk = blocking(|| rows.take(ROWS_CHUNK).collect::<Result<Vec<_>, _>>())
            .map_err(|e| SinkError::Rows(Box::new(e)))?;
        self.read += chunk.len();
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}

/// Requests from `raa checkpoint` (SIGUSR1) and `raa reaggregate` (SIGUSR2).
fn listen(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for operator requests"))
        .ok()
}

async fn recv_signal(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs blocking work (sled, CPU-heavy aggregation) without stalling other
/// tasks on a multi-threaded runtime; inline on a current-thread one.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: &str = "raa";

    #[test]
    fn fresh_start_follows_the_slot() {
        assert_eq!(
            resume_point(SLOT, None, false, None, Lsn(50)).unwrap(),
            Lsn(50)
        );
    }

    #[test]
    fn resumes_from_the_state_when_the_sink_is_level_or_ahead() {
        assert_eq!(
            resume_point(SLOT, Some(Lsn(100)), true, Some(Lsn(100)), Lsn(90)).unwrap(),
            Lsn(100)
        );
        // Crash after the sink commit, before the state commit.
        assert_eq!(
            resume_point(SLOT, Some(Lsn(100)), true, Some(Lsn(150)), Lsn(100)).unwrap(),
            Lsn(100)
        );
        // The same crash during the first batch of a new state.
        assert_eq!(
            resume_point(SLOT, Some(Lsn(100)), false, Some(Lsn(150)), Lsn(100)).unwrap(),
            Lsn(100)
        );
        // A new state that has not reached the sink yet.
        assert_eq!(
            resume_point(SLOT, Some(Lsn(100)), false, None, Lsn(100)).unwrap(),
            Lsn(100)
        );
    }

    /// Under steady small commits the walsender sends a keepalive after
    /// nearly every transaction. When transactions are already queued behind
    /// one, raa is behind and the batch must keep growing; the keepalive that
    /// finds nothing queued ends it.
    #[tokio::test(flavor = "current_thread")]
    async fn keepalives_between_queued_transactions_do_not_end_the_batch() {
        let mut events = Vec::new();
        for i in 1..=10_u64 {
            events.push(SourceEvent::Txn(Transaction {
                xid: i as u32,
                commit_lsn: Lsn(i * 100 - 8),
                end_lsn: Lsn(i * 100),
                commit_ts_micros: 0,
                changes: Vec::new(),
            }));
            events.push(SourceEvent::Idle {
                wal_end: Lsn(i * 100),
            });
        }
        let (summary, sink) = drive_events(events, Some(Lsn(1000)), Options::default()).await;
        assert_eq!(summary.transactions, 10);
        assert_eq!(summary.batches, 1);
        assert_eq!(sink.batches, 1);
        assert_eq!(sink.progress, Some(Lsn(1000)));
    }

    /// Drives `events` through a pipeline over a fresh state into a memory
    /// sink until `target`, or until shut down once the events are used up.
    async fn drive_events(
        events: Vec<SourceEvent>,
        target: Option<Lsn>,
        opts: Options,
    ) -> (Summary, crate::sink::MemorySink) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sink = crate::sink::MemorySink::default();
        let mut p = Pipeline::new(store, Settings::default(), &mut sink).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for ev in events {
            tx.send(Ok(ev)).await.unwrap();
        }
        let mut stream = StreamHandle::queued(rx);
        let source = SourceConfig {
            pg: tokio_postgres::Config::new(),
            slot: SLOT.into(),
            publication: "raa".into(),
        };
        let shutdown = Shutdown::default();
        let stop = shutdown.clone();
        // Once every event is used, as a SIGTERM would.
        tokio::spawn(async move {
            while tx.capacity() < tx.max_capacity() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.trigger();
        });
        p.drive(&source, &mut stream, &opts, target, &mut shutdown.clone())
            .await
            .unwrap();
        let summary = p.summary.clone();
        drop(p);
        (summary, sink)
    }

    /// An agent session of a minute, `key` hours into a day.
    fn session(key: i64) -> crate::decode::Change {
        use crate::schema::{Table, Value};
        let start = 1_772_841_600 + key * 3_600;
        let ints = [key, 1, 7, 1, start, start + 60, 60];
        crate::decode::Change::Insert {
            table: Table::SmResSession,
            new: crate::decode::Tuple(ints.iter().map(|&v| Some(Value::Int(v))).collect()),
        }
    }

    /// A memory sink whose writes are submitted, and whose write at `fail`
    /// is found failed only when it is confirmed, as a PostgreSQL commit
    /// running beside aggregation would be.
    struct FailsAtConfirm {
        inner: crate::sink::MemorySink,
        fail: Lsn,
        submitted: Vec<Lsn>,
        running: Option<Lsn>,
    }

    impl Sink for FailsAtConfirm {
        async fn progress(&mut self) -> Result<Option<Lsn>, SinkError> {
            self.inner.progress().await
        }
        async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) -> Result<(), SinkError> {
            self.inner.write(lsn, rows).await
        }
        async fn write_chunks(
            &mut self,
            lsn: Lsn,
            rows: &mut (dyn RowChunks + Send),
        ) -> Result<(), SinkError> {
            self.inner.write_chunks(lsn, rows).await
        }
        async fn replace_all(
            &mut self,
            lsn: Lsn,
            rows: &mut (dyn RowChunks + Send),
        ) -> Result<(), SinkError> {
            self.inner.replace_all(lsn, rows).await
        }
        async fn submit(&mut self, lsn: Lsn, rows: Vec<OutputRow>) -> Result<(), SinkError> {
            self.submitted.push(lsn);
            self.running = Some(lsn);
            if lsn == self.fail {
                return Ok(());
            }
            self.inner.write(lsn, &rows).await
        }
        async fn confirm(&mut self) -> Result<Option<Lsn>, SinkError> {
            match self.running.take() {
                Some(lsn) if lsn == self.fail => Err(SinkError::WriteTaskLost),
                running => Ok(running),
            }
        }
    }

    /// While transactions are queued, a batch's sink write runs beside the
    /// next batch's aggregation; when it fails, the state stays at the batch
    /// before, level with the sink, though the next batch read it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_write_beside_aggregation_that_fails_leaves_the_state_level_with_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sink = FailsAtConfirm {
            inner: crate::sink::MemorySink::default(),
            fail: Lsn(300),
            submitted: Vec::new(),
            running: None,
        };
        let mut p = Pipeline::new(store.clone(), Settings::default(), &mut sink).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for i in 1..=5_u64 {
            let txn = Transaction {
                xid: i as u32,
                commit_lsn: Lsn(i * 100 - 8),
                end_lsn: Lsn(i * 100),
                commit_ts_micros: 0,
                // The same row each time: every batch reads the one before.
                changes: vec![session(1), session(i as i64)],
            };
            tx.send(Ok(SourceEvent::Txn(txn))).await.unwrap();
        }
        let mut stream = StreamHandle::queued(rx);
        let source = SourceConfig {
            pg: tokio_postgres::Config::new(),
            slot: SLOT.into(),
            publication: "raa".into(),
        };
        let opts = Options {
            batch_changes: 1,
            ..no_delay()
        };
        let shutdown = Shutdown::default();
        let e = p
            .drive(
                &source,
                &mut stream,
                &opts,
                Some(Lsn(500)),
                &mut shutdown.clone(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, PipelineError::Sink { lsn: Lsn(300), .. }),
            "{e}"
        );
        p.abandon().await;
        assert_eq!(
            store.applied_lsn(),
            Some(Lsn(200)),
            "the state follows its sink, and is durable there"
        );
        drop(p);
        assert_eq!(sink.submitted, [Lsn(100), Lsn(200), Lsn(300)]);
        assert_eq!(sink.inner.progress, Some(Lsn(200)));
        store.wait().unwrap();
        assert_eq!(store.applied_lsn(), Some(Lsn(200)));
    }

    /// Options whose batches end as soon as their deadline is checked.
    fn no_delay() -> Options {
        Options {
            batch_delay: Duration::ZERO,
            ..Options::default()
        }
    }

    /// A transaction in parts is a batch of its own: the batch before it
    /// ends at its first part, no deadline ends it before its commit, it
    /// aggregates as the whole transaction would, and a stop before its
    /// commit leaves nothing of it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_transaction_in_parts_is_one_batch_of_its_own() {
        let txn = |xid: u32, end: u64, keys: &[i64]| Transaction {
            xid,
            commit_lsn: Lsn(end - 8),
            end_lsn: Lsn(end),
            commit_ts_micros: 0,
            changes: keys.iter().map(|&k| session(k)).collect(),
        };
        let part = |keys: &[i64]| {
            SourceEvent::Part(TxnPart {
                xid: 2,
                commit_lsn: Lsn(192),
                changes: keys.iter().map(|&k| session(k)).collect(),
            })
        };
        let in_parts = vec![
            SourceEvent::Txn(txn(1, 100, &[1])),
            part(&[2, 3]),
            part(&[4]),
            SourceEvent::Txn(txn(2, 200, &[5])),
        ];
        let (summary, sink) = drive_events(in_parts, Some(Lsn(200)), no_delay()).await;
        assert_eq!((summary.transactions, summary.changes), (2, 5));
        assert_eq!(summary.transactions_in_parts, 1);
        assert_eq!((summary.batches, sink.batches), (2, 2));
        assert_eq!(sink.progress, Some(Lsn(200)));
        let whole = vec![
            SourceEvent::Txn(txn(1, 100, &[1])),
            SourceEvent::Txn(txn(2, 200, &[2, 3, 4, 5])),
        ];
        let (_, reference) = drive_events(whole, Some(Lsn(200)), no_delay()).await;
        assert!(!reference.rows.is_empty());
        assert_eq!(sink.rows, reference.rows);

        // Stopped before the commit: the first transaction only.
        let cut = vec![
            SourceEvent::Txn(txn(1, 100, &[1])),
            part(&[2, 3]),
            part(&[4]),
        ];
        let (summary, sink) = drive_events(cut, None, no_delay()).await;
        assert_eq!((summary.batches, sink.batches), (1, 1));
        assert_eq!(sink.progress, Some(Lsn(100)));
        let (_, first) =
            drive_events(vec![SourceEvent::Txn(txn(1, 100, &[1]))], None, no_delay()).await;
        assert_eq!(sink.rows, first.rows);
    }

    #[test]
    fn refuses_positions_no_crash_can_produce() {
        assert!(matches!(
            resume_point(SLOT, None, false, Some(Lsn(10)), Lsn(0)),
            Err(PipelineError::StateLost { .. })
        ));
        assert!(matches!(
            resume_point(SLOT, Some(Lsn(100)), true, Some(Lsn(99)), Lsn(0)),
            Err(PipelineError::SinkBehind { .. })
        ));
        assert!(matches!(
            resume_point(SLOT, Some(Lsn(100)), true, None, Lsn(0)),
            Err(PipelineError::SinkBehind { .. })
        ));
        assert!(matches!(
            resume_point(SLOT, Some(Lsn(100)), true, Some(Lsn(100)), Lsn(101)),
            Err(PipelineError::SlotAhead { .. })
        ));
    }
}
