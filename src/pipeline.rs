//! The pipeline: source → decode → aggregate → state + sink → acknowledge.
//!
//! Why the acknowledgements are safe. A batch of whole source transactions
//! ending at `end` is committed in this order:
//! 1. the sink transaction (changed rows as absolute values + progress `end`);
//! 2. the state batch (records, accumulators, applied LSN `end`), fsynced;
//! 3. `end` is acknowledged to the server.
//!
//! A crash between 1 and 2 leaves the sink ahead of the state. On restart the
//! stream resumes from the state's LSN, the state re-applies those
//! transactions (reaching the same accumulators), and their sink writes are
//! skipped while `end` ≤ the sink's progress: the tables already hold them.
//! A crash between 2 and 3 only means the server resends what raa skips: a
//! transaction whose end LSN is at or below the state's is never applied
//! twice. So the acknowledged position ≤ the durable one, by construction.
//!
//! Resuming refuses, rather than guesses, when the positions disagree in a
//! way no crash can cause (state lost, aggregate tables reset, slot ahead).

use crate::aggregate::{AggregateError, Engine, Settings, Work};
use crate::decode::Transaction;
use crate::ops::shutdown::Shutdown;
use crate::sink::{Sink, SinkError};
use crate::source::{
    self, setup, SetupError, SourceConfig, SourceEvent, StreamError, StreamHandle,
};
use raa_state::{Lsn, StateError, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Options {
    /// End a batch once it holds this many row changes (whole transactions).
    pub batch_changes: usize,
    /// End a batch at most this long after its first transaction arrived.
    pub batch_delay: Duration,
    /// While idle, record and acknowledge the server's position this often.
    pub idle_commit_interval: Duration,
    /// Stop once everything committed before the start is in the sink.
    pub until_caught_up: bool,
    /// Test hook: stop with [`PipelineError::Failpoint`] at this point, as a crash would.
    #[doc(hidden)]
    pub failpoint: Option<Failpoint>,
}

/// Points in a batch commit where tests stop the pipeline on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// After the run's `n`-th sink commit (from 1), before the state's commit.
    AfterSinkCommit(u64),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_changes: 50_000,
            batch_delay: Duration::from_millis(200),
            idle_commit_interval: Duration::from_secs(10),
            until_caught_up: false,
            failpoint: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Stream(#[from] StreamError),
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

/// What a run did, and where its time went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub transactions: u64,
    pub changes: u64,
    pub skipped_transactions: u64,
    pub batches: u64,
    pub durable: Lsn,
    /// Seconds applying transactions to the working set (aggregation, state reads).
    pub apply_secs: f64,
    /// Seconds ending batches (encoding the state batch, collecting output rows).
    pub finish_secs: f64,
    /// Seconds in sink transactions.
    pub sink_secs: f64,
    /// Seconds committing and flushing the state.
    pub state_secs: f64,
}

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
    let sql = source.connect().await.map_err(PipelineError::Connect)?;
    setup::check_server(&sql).await?;
    let slot = setup::slot_info(&sql, &source.slot).await?;
    let mut p = Pipeline::new(store, settings, sink)?;
    p.sink_progress = p
        .sink
        .progress()
        .await
        .map_err(PipelineError::SinkProgress)?;
    let sink_written = p
        .store
        .meta::<bool>(SINK_WRITTEN)
        .map_err(|source| PipelineError::State {
            lsn: Lsn::ZERO,
            source,
        })?
        .unwrap_or(false);
    let start = resume_point(
        &source.slot,
        p.store.applied_lsn(),
        sink_written,
        p.sink_progress,
        slot.confirmed_flush,
    )?;
    if p.store.applied_lsn().is_none() {
        // Anchor a new state at the slot's position before anything reaches the
        // sink, so a crash during the first batch resumes instead of looking
        // like a lost state.
        let store = &p.store;
        blocking(|| store.commit(raa_state::Batch::default(), start))
            .map_err(|source| PipelineError::State { lsn: start, source })?;
    }
    p.durable = start;
    p.failpoint = opts.failpoint;
    let target = if opts.until_caught_up {
        Some(setup::current_wal_lsn(&sql).await?)
    } else {
        None
    };
    drop(sql);
    tracing::info!(%start, target = ?target.map(|t| t.to_string()), slot = %source.slot, "streaming");
    let mut stream = source::stream::start(source, start).await?;
    let result = p.drive(&mut stream, &opts, target, &mut shutdown).await;
    stream.stop().await;
    result?;
    Ok(p.summary)
}

struct Pipeline<S> {
    store: Arc<Store>,
    engine: Engine,
    sink: S,
    sink_progress: Option<Lsn>,
    durable: Lsn,
    work: Work,
    /// End LSN of the last transaction in `work`, if any.
    batch_end: Option<Lsn>,
    batch_started: Option<Instant>,
    last_commit: Instant,
    summary: Summary,
    failpoint: Option<Failpoint>,
    /// Sink commits in this run (the failpoint counts these).
    sink_commits: u64,
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
            durable: Lsn::ZERO,
            work: Work::default(),
            batch_end: None,
            batch_started: None,
            last_commit: Instant::now(),
            summary: Summary::default(),
            failpoint: None,
            sink_commits: 0,
        })
    }

    /// The main loop. `select!` priority: shutdown first, then an expired
    /// batch deadline, then the next source event.
    async fn drive(
        &mut self,
        stream: &mut StreamHandle,
        opts: &Options,
        target: Option<Lsn>,
        shutdown: &mut Shutdown,
    ) -> Result<(), PipelineError> {
        enum Step {
            Shutdown,
            Deadline,
            Event(Option<Result<SourceEvent, StreamError>>),
        }
        loop {
            if target.is_some_and(|t| self.durable >= t) {
                return Ok(());
            }
            let deadline = self
                .batch_started
                .map(|t| tokio::time::Instant::from_std(t + opts.batch_delay));
            let step = tokio::select! {
                biased;
                _ = shutdown.wait() => Step::Shutdown,
                _ = sleep_until(deadline), if deadline.is_some() => Step::Deadline,
                ev = stream.events.recv() => Step::Event(ev),
            };
            match step {
                Step::Shutdown => {
                    self.flush(stream).await?;
                    tracing::info!(durable = %self.durable, "stopped");
                    return Ok(());
                }
                Step::Deadline => self.flush(stream).await?,
                Step::Event(None) => return Err(StreamError::Ended.into()),
                Step::Event(Some(Err(e))) => return Err(e.into()),
                Step::Event(Some(Ok(SourceEvent::Txn(txn)))) => {
                    self.apply(&txn)?;
                    if self.work.changes >= opts.batch_changes {
                        self.flush(stream).await?;
                    }
                }
                Step::Event(Some(Ok(SourceEvent::Idle { wal_end }))) => {
                    self.flush(stream).await?;
                    let catching_up = target.is_some_and(|t| self.durable < t);
                    if wal_end > self.durable
                        && (catching_up || self.last_commit.elapsed() >= opts.idle_commit_interval)
                    {
                        self.batch_end = Some(wal_end);
                        self.flush(stream).await?;
                    }
                }
            }
        }
    }

    fn apply(&mut self, txn: &Transaction) -> Result<(), PipelineError> {
        if txn.end_lsn <= self.durable {
            self.summary.skipped_transactions += 1;
            return Ok(());
        }
        let (engine, work) = (&mut self.engine, &mut self.work);
        let started = Instant::now();
        blocking(|| engine.apply(work, txn)).map_err(|source| PipelineError::Aggregate {
            commit_lsn: txn.commit_lsn,
            source,
        })?;
        self.summary.apply_secs += started.elapsed().as_secs_f64();
        self.summary.transactions += 1;
        self.summary.changes += txn.changes.len() as u64;
        self.batch_end = Some(txn.end_lsn);
        self.batch_started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Commits the batch: sink, then state, then acknowledgement.
    async fn flush(&mut self, stream: &StreamHandle) -> Result<(), PipelineError> {
        let Some(end) = self.batch_end.take() else {
            return Ok(());
        };
        self.batch_started = None;
        let work = std::mem::take(&mut self.work);
        let engine = &self.engine;
        let mut out = blocking(|| engine.finish(work))
            .map_err(|source| PipelineError::Finish { lsn: end, source })?;
        if self.sink_progress.is_none_or(|p| end > p) {
            let started = Instant::now();
            self.sink
                .write(end, &out.rows)
                .await
                .map_err(|source| PipelineError::Sink { lsn: end, source })?;
            self.sink_progress = Some(end);
            out.state
                .put_meta(SINK_WRITTEN, &true)
                .map_err(|source| PipelineError::State { lsn: end, source })?;
            self.summary.sink_secs += started.elapsed().as_secs_f64();
            crate::ops::metrics::metrics().sink_committed(out.rows.len(), started.elapsed());
            self.sink_commits += 1;
            let here = Failpoint::AfterSinkCommit(self.sink_commits);
            if self.failpoint == Some(here) {
                return Err(PipelineError::Failpoint(here));
            }
            tracing::debug!(%end, rows = out.rows.len(), ms = started.elapsed().as_millis() as u64, "sink committed");
        }
        let store = &self.store;
        let started = Instant::now();
        let committed = blocking(|| store.commit(out.state, end));
        self.summary.state_secs += started.elapsed().as_secs_f64();
        committed.map_err(|source| PipelineError::State { lsn: end, source })?;
        crate::ops::metrics::metrics().state_committed(end, started.elapsed());
        self.durable = end;
        self.summary.durable = end;
        self.summary.batches += 1;
        self.last_commit = Instant::now();
        stream.ack(end);
        Ok(())
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
fn blocking<T>(f: impl FnOnce() -> T) -> T {
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
