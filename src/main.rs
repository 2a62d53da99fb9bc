//! The `raa` command line. Errors become `anyhow` reports only here, at the edge.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use raa::aggregate::family::Params;
use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Options};
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
    setup::create_objects(&client, &source.slot, &source.publication).await?;
    eprintln!(
        "raa is set up: slot {}, publication {}",
        source.slot, source.publication
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
    let store = Arc::new(raa_state::Store::open(&run.state_dir)?);
    let client = source.connect().await.context("connecting to the sink")?;
    let sink = PgSink::new(client, &source.slot, settings)
        .await
        .context("preparing the sink (has `raa init` run?)")?;
    let opts = Options {
        batch_changes: run.batch_changes,
        batch_delay: Duration::from_millis(run.batch_delay_ms),
        until_caught_up: run.until_caught_up,
        ..Options::default()
    };
    let started = Instant::now();
    let summary = pipeline::run(source, store, settings.clone(), sink, opts, shutdown).await?;
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
