//! Every metric raa exposes, registered once, with the hooks the data path calls.
//!
//! The data path only calls short hook methods on [`metrics()`] (a transaction
//! decoded, a sink commit, a state commit); everything derived — lag, the
//! commit-lag histogram, readiness — is computed here, so the pipeline stays
//! free of bookkeeping. Names carry the `raa_` prefix and a unit suffix;
//! labels are low-cardinality (table, operation, error kind).
//!
//! Lag in seconds is measured from the source commit time of the oldest
//! decoded transaction that is not yet durable in the aggregate tables (0
//! when nothing is pending); lag in bytes from the server's WAL position to
//! raa's durable one. `raa_commit_lag_seconds` observes, per transaction, the
//! time from its source commit to the aggregate commit that made it durable.

use crate::decode::{Change, Transaction};
use crate::pipeline::PipelineError;
use crate::source::{SourceConfig, StreamError};
use prometheus::process_collector::ProcessCollector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use raa_state::{Lsn, Store};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::shutdown::Shutdown;

/// At most this many decoded-but-not-durable transactions are remembered for
/// lag; beyond it, new ones merge into the newest entry (keeping its older
/// commit time, so lag is never under-reported).
const MAX_PENDING: usize = 100_000;

/// Typed handles to every metric, registered once in `registry`.
pub struct Metrics {
    registry: Registry,
    changes: IntCounterVec,
    transactions: IntCounter,
    lag_bytes: IntGauge,
    lag_seconds: Gauge,
    commit_lag: Histogram,
    transaction_changes: Histogram,
    server_position: IntGauge,
    durable_position: IntGauge,
    source_connected: IntGauge,
    sink_batches: IntCounter,
    sink_rows: IntCounter,
    sink_commit: Histogram,
    state_commit: Histogram,
    state_size: IntGauge,
    state_keys: IntGauge,
    accum_cache: IntGauge,
    checkpoint_age: Gauge,
    checkpoint_duration: Histogram,
    slot_retained: IntGauge,
    acknowledged_position: IntGauge,
    errors: IntCounterVec,
    /// Decoded transactions not yet durable: (end LSN, commit time µs).
    pending: Mutex<VecDeque<(u64, i64)>>,
    server_wal: AtomicU64,
    durable: AtomicU64,
    connected: AtomicBool,
    last_checkpoint: Mutex<Option<Instant>>,
}

/// The process-wide metrics (one raa pipeline per process).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Row changes a source transaction carries: 1 to 10M, by powers of ten.
fn size_buckets() -> Vec<f64> {
    (0..=7).map(|e| 10f64.powi(e)).collect()
}

/// Buckets for durations from a millisecond to ten minutes.
fn duration_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0, 300.0, 600.0,
    ]
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // Registration fails only on a duplicate or malformed name: a bug in
        // this function, caught by its unit test, never by input.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique and valid");
            m
        }
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let fgauge =
            |name: &str, help: &str| reg(&registry, Gauge::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(duration_buckets());
            reg(&registry, Histogram::with_opts(opts).expect("valid metric"))
        };
        let m = Metrics {
            changes: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "raa_changes_decoded_total",
                        "Row changes decoded from the source, by table and operation.",
                    ),
                    &["table", "op"],
                )
                .expect("valid metric"),
            ),
            transactions: counter("raa_transactions_decoded_total", "Source transactions decoded."),
            transaction_changes: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "raa_transaction_changes",
                        "Row changes per decoded source transaction. One transaction is applied \
                         in one batch, so the largest sets raa's peak memory.",
                    )
                    .buckets(size_buckets()),
                )
                .expect("valid metric"),
            ),
            lag_bytes: gauge(
                "raa_replication_lag_bytes",
                "WAL bytes between the server's position and the last position durable in the \
                 aggregates.",
            ),
            lag_seconds: fgauge(
                "raa_replication_lag_seconds",
                "Age of the oldest source commit not yet durable in the aggregates (0 when none is \
                 pending).",
            ),
            commit_lag: histogram(
                "raa_commit_lag_seconds",
                "Per transaction: from its source commit to the aggregate commit that made it \
                 durable.",
            ),
            server_position: gauge(
                "raa_server_wal_position_bytes",
                "Latest WAL position seen on the server (LSN as a byte offset).",
            ),
            durable_position: gauge(
                "raa_durable_wal_position_bytes",
                "WAL position committed to the aggregate tables and handed to the state writer \
                 (durable in both once acknowledged: raa_acknowledged_wal_position_bytes).",
            ),
            source_connected: gauge(
                "raa_source_connected",
                "1 while the replication connection is streaming.",
            ),
            sink_batches: counter(
                "raa_sink_batches_total",
                "Batches committed to the aggregate tables.",
            ),
            sink_rows: counter(
                "raa_sink_rows_total",
                "Aggregate rows written (upserted or deleted).",
            ),
            sink_commit: histogram(
                "raa_sink_commit_duration_seconds",
                "Duration of a sink transaction.",
            ),
            state_commit: histogram(
                "raa_state_commit_duration_seconds",
                "Duration of a state batch commit and flush.",
            ),
            state_size: gauge("raa_state_size_bytes", "Size of the state store on disk."),
            state_keys: gauge(
                "raa_state_keys",
                "Keys in the state store, as last counted (a full scan, repeated no sooner than 50 times its duration later).",
            ),
            accum_cache: gauge(
                "raa_accum_cache_bytes",
                "Estimated bytes of accumulators kept in memory between batches (at most \
                 64 MiB).",
            ),
            checkpoint_age: fgauge(
                "raa_checkpoint_age_seconds",
                "Seconds since the last state checkpoint completed (0 before the first).",
            ),
            checkpoint_duration: histogram(
                "raa_checkpoint_duration_seconds",
                "Duration of a state checkpoint.",
            ),
            acknowledged_position: gauge(
                "raa_acknowledged_wal_position_bytes",
                "WAL position acknowledged to the slot: the durable one, or with \
                 ack_policy = checkpointed the oldest retained checkpoint's (the WAL between \
                 the two is kept on the server so every checkpoint stays replayable).",
            ),
            slot_retained: gauge(
                "raa_slot_wal_retained_bytes",
                "WAL the server retains for raa's slot: pg_current_wal_lsn() - restart_lsn.",
            ),
            errors: reg(
                &registry,
                IntCounterVec::new(Opts::new("raa_errors_total", "Errors, by kind."), &["kind"])
                    .expect("valid metric"),
            ),
            registry: {
                // process_resident_memory_bytes and the rest of the standard
                // process metrics: the state's memory is what a pod's limit
                // has to fit (see the README's memory figures).
                registry
                    .register(Box::new(ProcessCollector::for_self()))
                    .expect("metric names are unique and valid");
                registry
            },
            pending: Mutex::new(VecDeque::new()),
            server_wal: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_checkpoint: Mutex::new(None),
        };
        let build = reg(
            &m.registry,
            IntGaugeVec::new(
                Opts::new("raa_build_info", "Always 1; the labels name the build."),
                &["version"],
            )
            .expect("valid metric"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Every kind starts at 0, so a rate() over it exists before the first error.
        for kind in ERROR_KINDS {
            m.errors.with_label_values(&[kind]);
        }
        m
    }

    // ---- hooks called by the data path ----------------------------------

    /// The replication stream started at `start`, the durable position.
    pub fn stream_started(&self, start: Lsn) {
        self.connected.store(true, Ordering::Relaxed);
        self.source_connected.set(1);
        self.durable.fetch_max(start.0, Ordering::Relaxed);
        self.server_wal.fetch_max(start.0, Ordering::Relaxed);
        // What a previous stream decoded but did not make durable is sent again.
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The replication stream ended (error or stop).
    pub fn stream_stopped(&self) {
        self.connected.store(false, Ordering::Relaxed);
        self.source_connected.set(0);
    }

    /// The server reported its WAL position (keepalive).
    pub fn server_position(&self, at: Lsn) {
        self.server_wal.fetch_max(at.0, Ordering::Relaxed);
    }

    /// A transaction was decoded; `earlier` of its changes came before it in
    /// parts (and were counted by [`Metrics::changes_decoded`]).
    pub fn transaction_decoded(&self, txn: &Transaction, earlier: usize) {
        self.transactions.inc();
        self.transaction_changes
            .observe((earlier + txn.changes.len()) as f64);
        self.changes_decoded(&txn.changes);
        self.server_wal.fetch_max(txn.end_lsn.0, Ordering::Relaxed);
        if txn.end_lsn.0 <= self.durable.load(Ordering::Relaxed) {
            // Already durable (a replay the pipeline skips): no lag to measure.
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            if let Some(last) = pending.back_mut() {
                last.0 = txn.end_lsn.0;
                return;
            }
        }
        pending.push_back((txn.end_lsn.0, txn.commit_ts_micros));
    }

    /// Changes decoded, by table and operation.
    pub fn changes_decoded(&self, changes: &[Change]) {
        let mut counts: Vec<((&'static str, &'static str), u64)> = Vec::new();
        for change in changes {
            let (tables, op): (&[crate::schema::Table], &str) = match change {
                Change::Insert { table, .. } => (std::slice::from_ref(table), "insert"),
                Change::Update { table, .. } => (std::slice::from_ref(table), "update"),
                Change::Delete { table, .. } => (std::slice::from_ref(table), "delete"),
                Change::Truncate { tables } => (tables, "truncate"),
            };
            for t in tables {
                let label = (t.name(), op);
                match counts.iter_mut().find(|(l, _)| *l == label) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((label, 1)),
                }
            }
        }
        for ((table, op), n) in counts {
            self.changes.with_label_values(&[table, op]).inc_by(n);
        }
    }

    /// A batch of `rows` aggregate rows was committed to the sink in `took`.
    pub fn sink_committed(&self, rows: usize, took: Duration) {
        self.sink_batches.inc();
        self.sink_rows.inc_by(rows as u64);
        self.sink_commit.observe(took.as_secs_f64());
    }

    /// Everything up to `durable` is committed to the sink and handed to the
    /// state writer (after waiting `took` for the batch before): what GCXI
    /// reads holds those transactions. The slot is acknowledged separately,
    /// once the state has flushed them.
    pub fn state_committed(&self, durable: Lsn, took: Duration) {
        self.state_commit.observe(took.as_secs_f64());
        self.durable.fetch_max(durable.0, Ordering::Relaxed);
        self.durable_position.set(durable.0 as i64);
        let now = now_micros();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(end, commit_ts)) = pending.front() {
            if end > durable.0 {
                break;
            }
            pending.pop_front();
            self.commit_lag
                .observe((now - commit_ts).max(0) as f64 / 1e6);
        }
    }

    /// The position acknowledged to the slot (see [`crate::pipeline::AckPolicy`]).
    pub fn acknowledged(&self, at: Lsn) {
        self.acknowledged_position.set(at.0 as i64);
    }

    /// A checkpoint of the state completed, taking `took`.
    pub fn checkpoint_completed(&self, took: Duration) {
        self.checkpoint_duration.observe(took.as_secs_f64());
        *self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// The state's size on disk and, when they were counted, its keys.
    pub fn state_size(&self, bytes: u64, keys: Option<usize>) {
        self.state_size.set(bytes as i64);
        if let Some(keys) = keys {
            self.state_keys.set(keys as i64);
        }
    }

    /// After each batch: what the engine's accumulator cache holds.
    pub fn accum_cache(&self, bytes: usize) {
        self.accum_cache.set(bytes as i64);
    }

    pub fn slot_retained(&self, bytes: i64) {
        self.slot_retained.set(bytes);
    }

    /// Counts an error of `kind` (see [`error_kind`]).
    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    // ---- derived values ---------------------------------------------------

    /// Seconds since the oldest pending source commit (0 when none is pending).
    pub fn lag_seconds(&self) -> f64 {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .front()
            .map_or(0.0, |&(_, ts)| (now_micros() - ts).max(0) as f64 / 1e6)
    }

    pub fn lag_bytes(&self) -> u64 {
        let server = self.server_wal.load(Ordering::Relaxed);
        server.saturating_sub(self.durable.load(Ordering::Relaxed))
    }

    /// Whether raa is ready: streaming, and lag under `max_lag_seconds`.
    pub fn ready(&self, max_lag_seconds: f64) -> Result<(), String> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err("not connected to the source".into());
        }
        let lag = self.lag_seconds();
        if lag > max_lag_seconds {
            return Err(format!(
                "replication lag {lag:.1}s exceeds {max_lag_seconds}s"
            ));
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric, derived gauges refreshed.
    pub fn render(&self) -> String {
        self.lag_seconds.set(self.lag_seconds());
        self.lag_bytes.set(self.lag_bytes() as i64);
        self.server_position
            .set(self.server_wal.load(Ordering::Relaxed) as i64);
        if let Some(at) = *self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            self.checkpoint_age.set(at.elapsed().as_secs_f64());
        }
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which the
        // typed constructors above rule out; report it rather than panic.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Every value of the `kind` label of `raa_errors_total`.
pub const ERROR_KINDS: [&str; 13] = [
    "setup",
    "backfill",
    "checkpoint",
    "connect",
    "replication",
    "decode",
    "framing",
    "aggregate",
    "sink",
    "state",
    "consistency",
    "poll",
    "other",
];

/// The `kind` label of a pipeline error (one of [`ERROR_KINDS`]).
pub fn error_kind(e: &PipelineError) -> &'static str {
    match e {
        PipelineError::Setup(_) => "setup",
        PipelineError::Connect(_) => "connect",
        PipelineError::Stream(StreamError::Decode { .. }) => "decode",
        PipelineError::Stream(StreamError::Framing { .. }) => "framing",
        PipelineError::Stream(_) => "replication",
        PipelineError::Aggregate { .. } | PipelineError::Finish { .. } => "aggregate",
        PipelineError::Sink { .. }
        | PipelineError::SinkProgress(_)
        | PipelineError::Resync { .. }
        | PipelineError::Reaggregate(_) => "sink",
        PipelineError::Backfill(_) => "backfill",
        PipelineError::Share(_) => "checkpoint",
        PipelineError::Identify(_) => "replication",
        PipelineError::OtherCluster { .. } => "consistency",
        PipelineError::State { .. } => "state",
        PipelineError::StateLost { .. }
        | PipelineError::SinkBehind { .. }
        | PipelineError::SlotAhead { .. } => "consistency",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Counting the state's keys scans all of them: it was 12 % of raa's CPU at
/// a 2 s poll in a 10 000 changes/s load test, and grows with the state. The
/// count is repeated only after this many times its last duration.
const KEY_COUNT_PACE: u32 = 50;

/// Measures, every `every`, the WAL the slot retains and the state's size
/// (its keys paced by `KEY_COUNT_PACE`), until shutdown. A failed
/// measurement is counted and logged, then retried. The store is held
/// weakly: the pipeline may close and reopen it (after a disk error), and
/// the poller must not keep the old one open.
pub fn spawn_poller(
    source: SourceConfig,
    store: std::sync::Weak<Store>,
    every: Duration,
    mut shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = None;
        let mut keys_due = Instant::now();
        loop {
            if let Err(e) = poll_slot(&source, &mut client).await {
                client = None;
                metrics().error("poll");
                tracing::warn!(error = %e, "measuring the slot's retained WAL");
            }
            if let Some(s) = store.upgrade() {
                let count = Instant::now() >= keys_due;
                let measured = tokio::task::spawn_blocking(move || {
                    let keys = count.then(|| {
                        let started = Instant::now();
                        (s.count_keys(), started.elapsed())
                    });
                    s.disk_bytes().map(|bytes| (bytes, keys))
                });
                match measured.await {
                    Ok(Ok((bytes, keys))) => {
                        metrics().state_size(bytes, keys.map(|k| k.0));
                        if let Some((_, took)) = keys {
                            keys_due = Instant::now() + took * KEY_COUNT_PACE;
                        }
                    }
                    Ok(Err(e)) => {
                        metrics().error("poll");
                        tracing::warn!(error = %e, "measuring the state");
                    }
                    Err(_) => return,
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

async fn poll_slot(
    source: &SourceConfig,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<(), tokio_postgres::Error> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(source.connect().await?);
    }
    let Some(c) = client.as_ref() else {
        return Ok(());
    };
    let row = c
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::int8, \
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&source.slot],
        )
        .await?;
    if let Some(row) = row {
        let retained: Option<i64> = row.get(0);
        let current: Option<i64> = row.get(1);
        metrics().slot_retained(retained.unwrap_or(0));
        if let Some(cur) = current {
            metrics().server_position(Lsn(cur.max(0) as u64));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Tuple;
    use crate::schema::Table;

    fn txn(end: u64, commit_ts_micros: i64, changes: usize) -> Transaction {
        Transaction {
            xid: 1,
            commit_lsn: Lsn(end - 1),
            end_lsn: Lsn(end),
            commit_ts_micros,
            changes: (0..changes)
                .map(|_| Change::Insert {
                    table: Table::Irf,
                    new: Tuple(vec![]),
                })
                .collect(),
        }
    }

    #[test]
    fn lag_follows_pending_transactions_and_commits_clear_them() {
        let m = Metrics::new();
        m.stream_started(Lsn(100));
        assert_eq!(m.lag_seconds(), 0.0);
        assert!(m.ready(60.0).is_ok());
        let ten_s_ago = now_micros() - 10_000_000;
        m.transaction_decoded(&txn(200, ten_s_ago, 3), 0);
        m.transaction_decoded(&txn(300, now_micros(), 1), 0);
        // A replayed transaction, already durable, is not pending.
        m.transaction_decoded(&txn(100, ten_s_ago - 1_000_000, 1), 0);
        assert!(m.lag_seconds() >= 10.0);
        assert_eq!(m.lag_bytes(), 200);
        assert!(m.ready(5.0).unwrap_err().contains("lag"));
        m.state_committed(Lsn(200), Duration::from_millis(1));
        assert!(m.lag_seconds() < 5.0);
        m.state_committed(Lsn(300), Duration::from_millis(1));
        assert_eq!(m.lag_seconds(), 0.0);
        assert_eq!(m.lag_bytes(), 0);
        let text = m.render();
        assert!(
            text.contains(
                "raa_changes_decoded_total{op=\"insert\",table=\"interaction_resource_fact\"} 5"
            ),
            "{text}"
        );
        assert!(text.contains("raa_commit_lag_seconds_count 2"), "{text}");
        // Transactions of 3, 1 and 1 changes.
        assert!(
            text.contains("raa_transaction_changes_bucket{le=\"1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("raa_transaction_changes_bucket{le=\"10\"} 3"),
            "{text}"
        );
        assert!(text.contains("raa_transaction_changes_sum 5"), "{text}");
        assert!(text.contains("raa_build_info{version="), "{text}");
        // A transaction of 21 changes, 20 of them sent before it as a part:
        // one transaction of 21, and every change counted once.
        m.changes_decoded(&txn(400, now_micros(), 20).changes);
        m.transaction_decoded(&txn(400, now_micros(), 1), 20);
        let text = m.render();
        assert!(text.contains("raa_transaction_changes_count 4"), "{text}");
        assert!(text.contains("raa_transaction_changes_sum 26"), "{text}");
        assert!(
            text.contains(
                "raa_changes_decoded_total{op=\"insert\",table=\"interaction_resource_fact\"} 26"
            ),
            "{text}"
        );
        m.stream_stopped();
        assert!(m.ready(60.0).is_err());
    }

    #[test]
    fn every_name_has_the_prefix_but_the_standard_process_metrics() {
        let m = Metrics::new();
        assert!(m.render().contains("raa_errors_total{kind=\"sink\"} 0"));
        m.error("poll");
        let text = m.render();
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        for family in m.registry.gather() {
            // The standard process metrics keep their standard names.
            let name = family.name();
            assert!(
                name.starts_with("raa_") || name.starts_with("process_"),
                "{name}"
            );
        }
    }
}
