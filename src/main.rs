//! The `raa` command line. Errors become `anyhow` reports only here, at the edge.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use raa::aggregate::family::Params;
use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, AckPolicy, Checkpoints, Options};
use raa::share::Share;
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "raa",
    version,
    about = "Real-time Reporting and Analytics Aggregates for Genesys Info Mart"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct SourceArgs {
    /// Info Mart connection: a postgresql:// URL or "host=… user=… dbname=…".
    #[arg(long, env = "RAA_SOURCE_URL")]
    source_url: String,
    /// Replication slot raa owns.
    #[arg(long, env = "RAA_SLOT", default_value = "raa")]
    slot: String,
    /// Publication raa owns.
    #[arg(long, env = "RAA_PUBLICATION", default_value = "raa")]
    publication: String,
}

impl SourceArgs {
    fn config(&self) -> Result<SourceConfig> {
        Ok(SourceConfig::new(
            &self.source_url,
            &self.slot,
            &self.publication,
        )?)
    }
}

#[derive(Args, Clone)]
struct AggArgs {
    /// Width of sub-hour buckets, in minutes.
    #[arg(long, env = "RAA_SUBHR_MINUTES", default_value_t = 15, value_parser = parse_subhr)]
    subhr_minutes: i64,
    /// Ring time (seconds) at or under which an accepted invite is within the service level.
    #[arg(long, env = "RAA_SERVICE_LEVEL_SECONDS", default_value_t = 20)]
    service_level_seconds: i64,
}

fn parse_subhr(s: &str) -> Result<i64, String> {
    match s.trim() {
        "15" => Ok(15),
        "30" => Ok(30),
        other => Err(format!(
            "sub-hour buckets are 15 or 30 minutes, not {other:?}"
        )),
    }
}

impl AggArgs {
    fn settings(&self) -> Settings {
        Settings {
            subhr_seconds: self.subhr_minutes * 60,
            params: Params {
                service_level_threshold: self.service_level_seconds,
            },
            ..Settings::default()
        }
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Directory of the state store (the StatefulSet's volume).
    #[arg(long, env = "RAA_STATE_DIR", default_value = "raa-state")]
    state_dir: PathBuf,
    /// Exit once everything committed before the start is in the aggregate tables.
    #[arg(long)]
    until_caught_up: bool,
    /// End a sink batch after this many row changes (whole transactions).
    #[arg(long, env = "RAA_BATCH_CHANGES", default_value_t = 50_000)]
    batch_changes: usize,
    /// End a sink batch at most this many milliseconds after it started.
    #[arg(long, env = "RAA_BATCH_DELAY_MS", default_value_t = 200)]
    batch_delay_ms: u64,
    #[command(flatten)]
    share: ShareArgs,
}

#[derive(Args, Clone, Default)]
struct ShareArgs {
    /// The mounted GCXI share: checkpoints of the state go to <share-dir>/<slot>/.
    #[arg(long, env = "RAA_SHARE_DIR")]
    share_dir: Option<PathBuf>,
    /// Seconds between checkpoints.
    #[arg(long, env = "RAA_CHECKPOINT_INTERVAL_SECS", default_value_t = 900)]
    checkpoint_interval_secs: u64,
    /// Checkpoints kept on the share (newest first).
    #[arg(long, env = "RAA_CHECKPOINT_RETAIN", default_value_t = 3)]
    checkpoint_retain: usize,
    /// How far the slot is acknowledged: "durable" (the local state) or
    /// "checkpointed" (the newest checkpoint on the share; the default with --share-dir).
    #[arg(long, env = "RAA_ACK_POLICY")]
    ack_policy: Option<AckPolicy>,
}

impl ShareArgs {
    fn checkpoints(&self, slot: &str) -> Result<Option<Checkpoints>> {
        let Some(dir) = &self.share_dir else {
            if self.ack_policy == Some(AckPolicy::Checkpointed) {
                bail!("ack_policy: \"checkpointed\" needs --share-dir (RAA_SHARE_DIR)");
            }
            return Ok(None);
        };
        if self.checkpoint_interval_secs == 0 {
            bail!("checkpoint_interval_secs: must be at least 1");
        }
        Ok(Some(Checkpoints {
            share: Share::new(dir, slot, self.checkpoint_retain)?,
            interval: Duration::from_secs(self.checkpoint_interval_secs),
            ack: self.ack_policy.unwrap_or(AckPolicy::Checkpointed),
        }))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check the server and create raa's tables, publication and slot (idempotent).
    Init {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        agg: AggArgs,
    },
    /// Stream Info Mart changes into the aggregate tables.
    Run {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        agg: AggArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Write a checkpoint of the state to the share now (asks a running raa to, if one holds the state).
    Checkpoint {
        #[arg(long, env = "RAA_SLOT", default_value = "raa")]
        slot: String,
        #[arg(long, env = "RAA_STATE_DIR", default_value = "raa-state")]
        state_dir: PathBuf,
        #[arg(long, env = "RAA_SHARE_DIR")]
        share_dir: PathBuf,
        #[arg(long, env = "RAA_CHECKPOINT_RETAIN", default_value_t = 3)]
        checkpoint_retain: usize,
    },
    /// Replay the WAL after a checkpoint into a scratch state, without touching the aggregate tables.
    Replay {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        agg: AggArgs,
        /// The checkpoint file to start from.
        #[arg(long)]
        from_checkpoint: PathBuf,
        /// Stop before the first transaction that ends past this LSN (default: now).
        #[arg(long)]
        to_lsn: Option<raa::Lsn>,
        /// Keep the scratch state here (an empty or new directory) instead of a temporary one.
        #[arg(long)]
        scratch_dir: Option<PathBuf>,
        /// Write the replayed aggregate rows to this CSV file.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// Rebuild a time range from the facts (after changes replication could not see).
    Reaggregate {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        agg: AggArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Start of the range: Unix seconds or RFC 3339.
        #[arg(long, value_parser = raa::verify::parse_time)]
        from: i64,
        /// End of the range (exclusive).
        #[arg(long, value_parser = raa::verify::parse_time)]
        to: i64,
    },
    /// Recompute the aggregates from the facts in SQL and diff; exits 1 on any difference.
    Verify {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        agg: AggArgs,
        #[command(flatten)]
        slice: SliceArgs,
    },
    /// Print the DDL of the tables raa owns.
    Ddl {
        #[command(flatten)]
        agg: AggArgs,
    },
    /// Write generated Info Mart traffic (a day of IRF rows) through SQL.
    Loadgen {
        #[arg(long, env = "RAA_SOURCE_URL")]
        source_url: String,
        /// IRF rows to insert.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Rows per source transaction.
        #[arg(long, default_value_t = 500)]
        txn_rows: usize,
        /// Random transactions of mixed changes to add after the day.
        #[arg(long, default_value_t = 0)]
        chaos: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also create the Info Mart subset tables (sql/infomart.sql) first.
        #[arg(long)]
        create_tables: bool,
    },
    /// Start a throwaway PostgreSQL, generate traffic, aggregate and verify it.
    Demo {
        /// IRF rows of generated traffic.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
    },
}

fn main() -> Result<()> {
    raa::ops::telemetry::init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(dispatch(cli.command))?;
    std::process::exit(code);
}

async fn dispatch(command: Command) -> Result<i32> {
    match command {
        Command::Init { source, agg } => init(&source.config()?, &agg.settings()).await.map(|()| 0),
        Command::Run { source, agg, run } => {
            let shutdown = Shutdown::default();
            shutdown.on_signals()?;
            run_pipeline(&source.config()?, &agg.settings(), &run, shutdown)
                .await
                .map(|_| 0)
        }
        Command::Verify { source, agg, slice } => {
            verify_slice(&source.config()?, &agg.settings(), &slice.slice()).await
        }
        Command::Reaggregate {
            source,
            agg,
            run,
            from,
            to,
        } => reaggregate(&source, &agg, run, from, to).await,
        Command::Checkpoint {
            slot,
            state_dir,
            share_dir,
            checkpoint_retain,
        } => {
            let share = Share::new(&share_dir, &slot, checkpoint_retain)?;
            raa::share::checkpoint_now(&state_dir, &share).await?;
            Ok(0)
        }
        Command::Replay {
            source,
            agg,
            from_checkpoint,
            to_lsn,
            scratch_dir,
            dump,
        } => {
            let report = raa::replay::replay(
                &source.config()?,
                &agg.settings(),
                &from_checkpoint,
                to_lsn,
                scratch_dir.as_deref(),
            )
            .await?;
            println!("{report}");
            if let Some(path) = dump {
                report.dump_csv(&path)?;
                eprintln!("wrote {} rows to {}", report.rows.len(), path.display());
            }
            Ok(0)
        }
        Command::Ddl { agg } => {
            print!("{}", ddl(&agg.settings()));
            Ok(0)
        }
        Command::Loadgen {
            source_url,
            rows,
            txn_rows,
            chaos,
            seed,
            create_tables,
        } => {
            let cfg = SourceConfig::new(&source_url, "raa", "raa")?;
            let mut client = cfg.connect().await.context("connecting to the source")?;
            if create_tables {
                client
                    .batch_execute(raa::INFOMART_SQL)
                    .await
                    .context("creating the Info Mart tables")?;
            }
            let started = Instant::now();
            let mut g = Generator::new(seed, default_day());
            g.dimensions(&client).await?;
            g.day(&mut client, rows, txn_rows).await?;
            let w = g.chaos(&mut client, chaos).await?;
            eprintln!(
                "wrote {} inserts, {} updates, {} deletes in {} transactions ({:.1}s)",
                w.inserted,
                w.updated,
                w.deleted,
                w.transactions,
                started.elapsed().as_secs_f64()
            );
            Ok(0)
        }
        Command::Demo { rows } => demo(rows).await,
    }
}

/// Midnight UTC at the start of yesterday: the generated day.
fn default_day() -> i64 {
    let now = jiff::Timestamp::now().as_second();
    now - now.rem_euclid(86_400) - 86_400
}

async fn init(source: &SourceConfig, settings: &Settings) -> Result<()> {
    let client = source.connect().await.context("connecting to the source")?;
    setup::check_server(&client).await?;
    client
        .batch_execute(&ddl(settings))
        .await
        .context("creating raa's tables")?;
    setup::create_publication(&client, &source.publication).await?;
    eprintln!(
        "raa is set up: publication {}; the first `raa run` creates slot {} and backfills",
        source.publication, source.slot
    );
    Ok(())
}

async fn run_pipeline(
    source: &SourceConfig,
    settings: &Settings,
    run: &RunArgs,
    shutdown: Shutdown,
) -> Result<pipeline::Summary> {
    std::fs::create_dir_all(&run.state_dir)
        .with_context(|| format!("creating the state directory {}", run.state_dir.display()))?;
    let checkpoints = run.share.checkpoints(&source.slot)?;
    let store = Arc::new(raa_state::Store::open(&run.state_dir)?);
    raa::share::write_pid_file(&run.state_dir)?;
    let client = source.connect().await.context("connecting to the sink")?;
    let sink = PgSink::new(client, &source.slot, settings)
        .await
        .context("preparing the sink (has `raa init` run?)")?;
    let opts = Options {
        batch_changes: run.batch_changes,
        batch_delay: Duration::from_millis(run.batch_delay_ms),
        until_caught_up: run.until_caught_up,
        checkpoints,
        ..Options::default()
    };
    let started = Instant::now();
    let summary = run_with_retry(source, settings, store, opts, sink, shutdown).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "applied {} transactions ({} row changes) in {} batches, {:.1}s ({:.0} changes/s); durable at {}",
        summary.transactions,
        summary.changes,
        summary.batches,
        secs,
        summary.changes as f64 / secs.max(1e-9),
        summary.durable
    );
    Ok(summary)
}

/// `raa reaggregate`: leaves the request in the state directory; the raa that
/// holds it serves it between two batches, or a catch-up run here does.
async fn reaggregate(
    source: &SourceArgs,
    agg: &AggArgs,
    mut run: RunArgs,
    from: i64,
    to: i64,
) -> Result<i32> {
    use raa::reaggregate::{request, result, Range};
    let range = Range::new(from, to)?;
    std::fs::create_dir_all(&run.state_dir)?;
    request(&run.state_dir, range)?;
    match raa_state::Store::open(&run.state_dir) {
        Ok(store) => {
            drop(store);
            run.until_caught_up = true;
            run_pipeline(
                &source.config()?,
                &agg.settings(),
                &run,
                Shutdown::default(),
            )
            .await?;
        }
        Err(raa_state::StateError::Locked { .. }) => {
            let pid = raa::share::signal_holder(&run.state_dir, "-USR2").await?;
            eprintln!("asked raa (pid {pid}) to reaggregate; waiting for its answer …");
            let deadline = Instant::now() + Duration::from_secs(3600);
            while result(&run.state_dir).is_none() {
                if Instant::now() > deadline {
                    bail!("raa (pid {pid}) did not answer within an hour");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Err(e) => return Err(e.into()),
    }
    let outcome = result(&run.state_dir).context("the reaggregate request was not answered")?;
    println!("{outcome}");
    Ok(if outcome.starts_with("ok") { 0 } else { 1 })
}

/// Runs the pipeline, restarting it after transient failures (server
/// restart, cut connection, failed sink commit, full disk) with exponential
/// backoff; a definite failure ends the run with its explanation.
async fn run_with_retry(
    source: &SourceConfig,
    settings: &Settings,
    store: Arc<raa_state::Store>,
    opts: Options,
    sink: PgSink,
    mut shutdown: Shutdown,
) -> Result<pipeline::Summary> {
    let mut sink = Some(sink);
    let mut backoff = Duration::from_secs(1);
    loop {
        let sink = match sink.take() {
            Some(s) => Ok(s),
            None => match source.connect().await {
                Ok(c) => PgSink::new(c, &source.slot, settings).await,
                Err(e) => Err(raa::sink::SinkError::Connect(e)),
            },
        };
        let run = match sink {
            Ok(sink) => {
                let started = Instant::now();
                let run = pipeline::run(
                    source,
                    store.clone(),
                    settings.clone(),
                    sink,
                    opts.clone(),
                    shutdown.clone(),
                )
                .await;
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                run
            }
            Err(e) => Err(pipeline::PipelineError::SinkProgress(e)),
        };
        match run {
            Ok(summary) => return Ok(summary),
            Err(e) if e.is_transient() && !shutdown.is_triggered() => {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), retry_in_s = backoff.as_secs(), "transient failure: restarting the pipeline");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return Ok(pipeline::Summary::default()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What `raa verify` checks: by default everything.
#[derive(Args, Clone)]
struct SliceArgs {
    /// Only this family (agent, queue, i_state, i_session, id).
    #[arg(long)]
    family: Option<String>,
    /// Only this level (subhr, hour, day, week, month, qrtr, year).
    #[arg(long, value_parser = parse_level)]
    level: Option<raa::aggregate::Level>,
    /// Only buckets starting at or after this instant (epoch seconds or RFC 3339).
    #[arg(long, value_parser = raa::verify::parse_time)]
    from: Option<i64>,
    /// Only buckets starting before this instant (epoch seconds or RFC 3339).
    #[arg(long, value_parser = raa::verify::parse_time)]
    to: Option<i64>,
}

impl SliceArgs {
    fn slice(&self) -> raa::verify::Slice {
        raa::verify::Slice {
            family: self.family.clone(),
            level: self.level,
            from: self.from,
            to: self.to,
        }
    }
}

fn parse_level(s: &str) -> Result<raa::aggregate::Level, String> {
    raa::aggregate::Level::by_name(s.trim()).ok_or_else(|| {
        format!("levels are subhr, hour, day, week, month, qrtr and year, not {s:?}")
    })
}

async fn verify(source: &SourceConfig, settings: &Settings) -> Result<i32> {
    verify_slice(source, settings, &raa::verify::Slice::default()).await
}

async fn verify_slice(
    source: &SourceConfig,
    settings: &Settings,
    slice: &raa::verify::Slice,
) -> Result<i32> {
    let client = source.connect().await.context("connecting to the source")?;
    let diffs = raa::verify::verify_slice(&client, settings, slice).await?;
    if diffs.is_empty() {
        eprintln!("verify: every aggregate table checked equals its SQL recomputation");
        return Ok(0);
    }
    for d in &diffs {
        println!(
            "{}: {} rows expected but missing or different, {} rows present but not expected",
            d.table,
            d.expected_only.len(),
            d.actual_only.len()
        );
        for r in d.expected_only.iter().take(20) {
            println!("  expected: {r}");
        }
        for r in d.actual_only.iter().take(20) {
            println!("  actual:   {r}");
        }
    }
    Ok(1)
}

async fn demo(rows: usize) -> Result<i32> {
    eprintln!("starting a throwaway PostgreSQL 15 …");
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
    let admin = SourceConfig::new(&pg.url("postgres"), "raa", "raa")?
        .connect()
        .await?;
    admin.batch_execute("CREATE DATABASE infomart").await?;
    let source = SourceConfig::new(&pg.url("infomart"), "raa", "raa")?;
    let mut client = source.connect().await?;
    client.batch_execute(raa::INFOMART_SQL).await?;
    let settings = Settings::default();
    init(&source, &settings).await?;
    let state = tempfile::tempdir()?;
    let run = RunArgs {
        state_dir: state.path().join("state"),
        until_caught_up: true,
        batch_changes: 50_000,
        batch_delay_ms: 200,
        share: ShareArgs::default(),
    };
    let mut g = Generator::new(7, default_day());
    g.truncate = false;
    g.dimensions(&client).await?;
    for (round, what) in [
        (1, "a day of traffic"),
        (2, "late, updated and deleted facts, dimension changes"),
    ] {
        let started = Instant::now();
        if round == 1 {
            g.day(&mut client, rows, 500).await?;
        } else {
            g.chaos(&mut client, 300).await?;
        }
        eprintln!(
            "round {round}: wrote {what} in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        run_pipeline(&source, &settings, &run, Shutdown::default()).await?;
        if verify(&source, &settings).await? != 0 {
            bail!("the aggregates differ from the SQL recomputation");
        }
    }
    for level in &settings.levels {
        let table = format!("ag2_agent_{}", level.name());
        let row = client
            .query_one(&format!("SELECT count(*), coalesce(sum(invite), 0)::bigint, coalesce(sum(handle_time), 0)::bigint FROM {table}"), &[])
            .await?;
        let (n, invites, handle): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        println!("{table:>18}: {n:>7} rows, {invites:>8} invites, {handle:>11} s handle time");
    }
    let fresh = client
        .query_one("SELECT lsn::text, extract(epoch FROM now() - updated_at)::float8 FROM raa_progress WHERE slot_name = 'raa'", &[])
        .await?;
    let (lsn, age): (String, f64) = (fresh.get(0), fresh.get(1));
    println!("aggregates hold everything up to WAL position {lsn}, committed {age:.1}s ago");
    Ok(0)
}
