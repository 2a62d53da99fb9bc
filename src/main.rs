//! The `raa` command line. Errors become `anyhow` reports only here, at the edge.
//!
//! Options common to every subcommand come from [`Config`] (file, `RAA_*`
//! environment, the flags generated from its option table); only what is
//! particular to one subcommand (`--until-caught-up`, the load generator's
//! shape) is declared here.

use anyhow::{bail, Context, Result};
use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use raa::aggregate::family::Params;
use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::ops::config::{self, Config, KEYS};
use raa::ops::metrics::{error_kind, metrics};
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Checkpoints, Options};
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
    /// TOML configuration file (keys as in `raa config check`).
    #[arg(long, env = "RAA_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: OptionFlags,
    #[command(subcommand)]
    command: Command,
}

/// One `--flag VALUE` per configuration key, generated from [`KEYS`], so a
/// new option needs no change here.
struct OptionFlags(Vec<(String, String)>);

impl FromArgMatches for OptionFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let set = KEYS
            .iter()
            .filter_map(|(key, _)| {
                m.get_one::<String>(key)
                    .map(|v| ((*key).to_owned(), v.clone()))
            })
            .collect();
        Ok(OptionFlags(set))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for OptionFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        KEYS.iter().fold(cmd, |cmd, (key, help)| {
            cmd.arg(
                Arg::new(*key)
                    .long(config::flag(key).trim_start_matches('-').to_owned())
                    .value_name("VALUE")
                    .help(format!("{help} [env: {}]", config::env_var(key)))
                    .global(true),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Check the server and create raa's tables, publication and slot (idempotent).
    Init,
    /// Stream Info Mart changes into the aggregate tables; serves /metrics, /healthz, /readyz.
    Run {
        /// Exit once everything committed before the start is in the aggregate tables.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Recompute the aggregates from the facts in SQL and diff; exits 1 on any difference.
    Verify(SliceArgs),
    /// Write a checkpoint of the state to the share now (asks a running raa to, if one holds the state).
    Checkpoint,
    /// Replay the WAL after a checkpoint into a scratch state, without touching the aggregate tables.
    Replay {
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
        /// Start of the range: Unix seconds or RFC 3339.
        #[arg(long, value_parser = raa::verify::parse_time)]
        from: i64,
        /// End of the range (exclusive).
        #[arg(long, value_parser = raa::verify::parse_time)]
        to: i64,
    },
    /// Print the DDL of the tables raa owns.
    Ddl,
    /// Write generated Info Mart traffic through SQL: a day of IRF rows, or
    /// with --rate, live traffic for --duration.
    Loadgen(LoadgenArgs),
    /// Start a throwaway PostgreSQL, generate traffic, aggregate and verify it.
    Demo {
        /// IRF rows of generated traffic.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
    },
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective configuration (secrets masked), each
    /// key with where its value came from.
    Check,
}

#[derive(Args)]
struct LoadgenArgs {
    /// Day mode: IRF rows to insert.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Day mode: rows per source transaction.
    #[arg(long, default_value_t = 500)]
    txn_rows: usize,
    /// Day mode: random transactions of mixed changes to add after the day.
    #[arg(long, default_value_t = 0)]
    chaos: usize,
    /// Random seed: the same seed writes the same traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also create the Info Mart subset tables (sql/infomart.sql) first.
    #[arg(long)]
    create_tables: bool,
    /// Live mode: target row changes per second (Poisson arrivals of calls).
    #[arg(long)]
    rate: Option<f64>,
    /// Live mode: how long to generate traffic, e.g. 90s, 5m, 1h.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
}

/// `90`, `90s`, `5m` or `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as 90s, 5m or 1h, not {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn settings(cfg: &Config) -> Settings {
    Settings {
        subhr_seconds: cfg.subhr_minutes * 60,
        params: Params {
            service_level_threshold: cfg.service_level_seconds,
        },
        ..Settings::default()
    }
}

/// How `raa run` streams: the state directory and batching.
struct RunArgs {
    state_dir: PathBuf,
    /// sled's page cache, in bytes (`state_cache_mb`).
    state_cache_bytes: u64,
    until_caught_up: bool,
    batch_changes: usize,
    batch_entries: usize,
    batch_delay_ms: u64,
    checkpoints: Option<Checkpoints>,
}

/// Checkpoints on the share, when `share_dir` is set.
fn checkpoints(cfg: &Config) -> Result<Option<Checkpoints>> {
    use raa::pipeline::AckPolicy;
    let Some(dir) = &cfg.share_dir else {
        if cfg.ack_policy == Some(AckPolicy::Checkpointed) {
            bail!("ack_policy: \"checkpointed\" needs share_dir (--share-dir, RAA_SHARE_DIR)");
        }
        return Ok(None);
    };
    Ok(Some(Checkpoints {
        share: Share::new(dir, &cfg.slot, cfg.checkpoint_retain)?,
        interval: Duration::from_secs(cfg.checkpoint_interval_seconds),
        ack: cfg.ack_policy.unwrap_or(AckPolicy::Checkpointed),
    }))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg = match load_config(&cli) {
        Ok(cfg) => cfg,
        Err(e) => {
            // As clap does for a bad flag: a usage error, exit code 2.
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    raa::ops::telemetry::init(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = cfg.log_format == config::LogFormat::Json;
    let code = match rt.block_on(dispatch(cli.command, cfg)) {
        Ok(code) => code,
        // With JSON logs, the final error is a log line too; otherwise the usual report.
        Err(e) if json => {
            tracing::error!(error = format!("{e:#}"), "raa stopped");
            1
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    std::process::exit(code);
}

/// The configuration, validated whole before anything starts: a command
/// that connects to the source also needs a valid source.
fn load_config(cli: &Cli) -> Result<Config> {
    let cfg = Config::load(
        cli.config.as_deref(),
        |var| std::env::var(var).ok(),
        &cli.options.0,
    )?;
    if matches!(
        cli.command,
        Command::Init
            | Command::Run { .. }
            | Command::Verify(_)
            | Command::Loadgen(_)
            | Command::Replay { .. }
            | Command::Reaggregate { .. }
    ) {
        cfg.source()?;
    }
    Ok(cfg)
}

async fn dispatch(command: Command, cfg: Config) -> Result<i32> {
    match command {
        Command::Init => init(&cfg.source()?, &settings(&cfg)).await.map(|()| 0),
        Command::Run { until_caught_up } => serve_and_run(&cfg, until_caught_up).await,
        Command::Verify(slice) => {
            verify_slice(&cfg.source()?, &settings(&cfg), &slice.slice()).await
        }
        Command::Checkpoint => {
            let dir = cfg.share_dir.as_ref().context(
                "share_dir is not set: pass --share-dir, set RAA_SHARE_DIR or share_dir in the configuration file",
            )?;
            let share = Share::new(dir, &cfg.slot, cfg.checkpoint_retain)?;
            raa::share::checkpoint_now(&cfg.state_dir, &share, cfg.state_cache_bytes()).await?;
            Ok(0)
        }
        Command::Replay {
            from_checkpoint,
            to_lsn,
            scratch_dir,
            dump,
        } => {
            let report = raa::replay::replay(
                &cfg.source()?,
                &settings(&cfg),
                &from_checkpoint,
                to_lsn,
                scratch_dir.as_deref(),
                cfg.state_cache_bytes(),
            )
            .await?;
            println!("{report}");
            if let Some(path) = dump {
                report.dump_csv(&path)?;
                eprintln!("wrote {} rows to {}", report.rows.len(), path.display());
            }
            Ok(0)
        }
        Command::Reaggregate { from, to } => reaggregate(&cfg, from, to).await,
        Command::Ddl => {
            print!("{}", ddl(&settings(&cfg)));
            Ok(0)
        }
        Command::Loadgen(args) => loadgen(&cfg.source()?, args).await,
        Command::Demo { rows } => demo(rows).await,
        Command::Config(ConfigCommand::Check) => {
            print!("{}", cfg.render());
            match cfg.source() {
                Ok(_) => eprintln!("configuration is valid"),
                Err(e) => eprintln!("configuration is valid, but `raa run` would refuse it: {e}"),
            }
            Ok(0)
        }
    }
}

/// `raa run`: the HTTP server, the slot poller and the pipeline, stopping on
/// SIGTERM/SIGINT within the grace period (exit 1 past it).
async fn serve_and_run(cfg: &Config, until_caught_up: bool) -> Result<i32> {
    let source = cfg.source()?;
    let shutdown = Shutdown::default();
    shutdown.on_signals()?;
    // A one-off catch-up serves metrics only when asked to, so batch jobs and
    // tests beside a streaming raa do not compete for its port.
    if !until_caught_up || cfg.origin("metrics_addr") != config::Origin::Default {
        let max_lag = cfg.ready_max_lag_seconds;
        raa::ops::http::serve(cfg.metrics_addr, max_lag, shutdown.clone()).await?;
    }
    let run = RunArgs {
        state_dir: cfg.state_dir.clone(),
        state_cache_bytes: cfg.state_cache_bytes(),
        until_caught_up,
        batch_changes: cfg.batch_changes,
        batch_entries: cfg.batch_entries,
        batch_delay_ms: cfg.batch_delay_ms,
        checkpoints: checkpoints(cfg)?,
    };
    let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
    let poll = Duration::from_secs(cfg.poll_interval_seconds);
    let settings = settings(cfg);
    let running = run_pipeline(&source, &settings, &run, shutdown.clone(), Some(poll));
    match shutdown.within_grace(grace, running).await {
        Ok(Ok(_)) => Ok(0),
        Ok(Err(e)) => {
            if let Some(p) = e.downcast_ref::<pipeline::PipelineError>() {
                metrics().error(error_kind(p));
            }
            Err(e)
        }
        Err(expired) => {
            tracing::error!("{expired}: exiting without committing it");
            Ok(1)
        }
    }
}

async fn loadgen(cfg: &SourceConfig, args: LoadgenArgs) -> Result<i32> {
    let mut client = cfg.connect().await.context("connecting to the source")?;
    if args.create_tables {
        client
            .batch_execute(raa::INFOMART_SQL)
            .await
            .context("creating the Info Mart tables")?;
    }
    let started = Instant::now();
    let mut g = Generator::new(args.seed, default_day());
    g.dimensions(&client).await?;
    if let Some(rate) = args.rate {
        let shutdown = Shutdown::default();
        shutdown.on_signals()?;
        let plan = raa::traffic::Plan {
            rate,
            duration: args.duration,
            seed: args.seed,
            ..raa::traffic::Plan::default()
        };
        let done = raa::traffic::run(&mut client, &plan, shutdown).await?;
        raa::ops::telemetry::report(&done.to_string());
        return Ok(0);
    }
    g.day(&mut client, args.rows, args.txn_rows).await?;
    let w = g.chaos(&mut client, args.chaos).await?;
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
    poll: Option<Duration>,
) -> Result<pipeline::Summary> {
    std::fs::create_dir_all(&run.state_dir)
        .with_context(|| format!("creating the state directory {}", run.state_dir.display()))?;
    let store = Arc::new(raa_state::Store::open_with_cache(
        &run.state_dir,
        run.state_cache_bytes,
    )?);
    raa::share::write_pid_file(&run.state_dir)?;
    if let Some(every) = poll {
        raa::ops::metrics::spawn_poller(
            source.clone(),
            Arc::downgrade(&store),
            every,
            shutdown.clone(),
        );
    }
    let client = source.connect().await.context("connecting to the sink")?;
    let sink = PgSink::new(client, &source.slot, settings)
        .await
        .context("preparing the sink (has `raa init` run?)")?;
    let opts = Options {
        batch_changes: run.batch_changes,
        batch_entries: run.batch_entries,
        batch_delay: Duration::from_millis(run.batch_delay_ms),
        until_caught_up: run.until_caught_up,
        checkpoints: run.checkpoints.clone(),
        ..Options::default()
    };
    let started = Instant::now();
    let summary = run_with_retry(source, settings, run, store, opts, sink, shutdown).await?;
    let secs = started.elapsed().as_secs_f64();
    raa::ops::telemetry::report(&format!(
        "{}applied {} transactions ({} row changes) in {} batches, {:.1}s ({:.0} changes/s); durable at {}",
        if summary.backfilled_rows() > 0 {
            format!("backfilled {} rows from the slot's snapshot; ", summary.backfilled_rows())
        } else {
            String::new()
        },
        summary.transactions,
        summary.changes,
        summary.batches,
        secs,
        summary.changes as f64 / secs.max(1e-9),
        summary.durable
    ));
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

/// `raa reaggregate`: leaves the request in the state directory; the raa that
/// holds it serves it between two batches, or a catch-up run here does.
async fn reaggregate(cfg: &Config, from: i64, to: i64) -> Result<i32> {
    use raa::reaggregate::{request, result, Range};
    let range = Range::new(from, to)?;
    let dir = &cfg.state_dir;
    std::fs::create_dir_all(dir)?;
    request(dir, range)?;
    match raa_state::Store::open(dir) {
        Ok(store) => {
            drop(store);
            let run = RunArgs {
                state_dir: dir.clone(),
                state_cache_bytes: cfg.state_cache_bytes(),
                until_caught_up: true,
                batch_changes: cfg.batch_changes,
                batch_entries: cfg.batch_entries,
                batch_delay_ms: cfg.batch_delay_ms,
                checkpoints: checkpoints(cfg)?,
            };
            run_pipeline(
                &cfg.source()?,
                &settings(cfg),
                &run,
                Shutdown::default(),
                None,
            )
            .await?;
        }
        Err(raa_state::StateError::Locked { .. }) => {
            let pid = raa::share::signal_holder(dir, "-USR2").await?;
            eprintln!("asked raa (pid {pid}) to reaggregate; waiting for its answer …");
            let deadline = Instant::now() + Duration::from_secs(3600);
            while result(dir).is_none() {
                if Instant::now() > deadline {
                    bail!("raa (pid {pid}) did not answer within an hour");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Err(e) => return Err(e.into()),
    }
    let outcome = result(dir).context("the reaggregate request was not answered")?;
    println!("{outcome}");
    Ok(if outcome.starts_with("ok") { 0 } else { 1 })
}

/// Runs the pipeline, restarting it after transient failures (server
/// restart, cut connection, failed sink commit, full disk) with exponential
/// backoff; a definite failure ends the run with its explanation.
async fn run_with_retry(
    source: &SourceConfig,
    settings: &Settings,
    run_args: &RunArgs,
    mut store: Arc<raa_state::Store>,
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
                metrics().error(error_kind(&e));
                let state_io = e.is_state_io();
                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), retry_in_s = backoff.as_secs(), "transient failure: restarting the pipeline");
                if state_io {
                    // sled fails every call after an I/O error: reopen it.
                    drop(store);
                    store = loop {
                        let dir = run_args.state_dir.clone();
                        let cache = run_args.state_cache_bytes;
                        match tokio::task::spawn_blocking(move || {
                            raa_state::Store::open_with_cache(&dir, cache)
                        })
                        .await?
                        {
                            Ok(s) => break Arc::new(s),
                            Err(open) => {
                                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(open)), retry_in_s = backoff.as_secs(), "cannot reopen the state store");
                                tokio::select! {
                                    _ = tokio::time::sleep(backoff) => {}
                                    _ = shutdown.wait() => return Ok(pipeline::Summary::default()),
                                }
                                backoff = (backoff * 2).min(Duration::from_secs(60));
                            }
                        }
                    };
                }
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
        state_cache_bytes: raa::ops::config::Config::default().state_cache_bytes(),
        until_caught_up: true,
        batch_changes: 50_000,
        batch_entries: raa::aggregate::WORK_ENTRIES,
        batch_delay_ms: 200,
        checkpoints: None,
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
        run_pipeline(&source, &settings, &run, Shutdown::default(), None).await?;
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
    for family in raa::aggregate::catalog::FAMILIES.iter().skip(1) {
        let mut counts = Vec::new();
        for level in &settings.levels {
            let table = family.table_name(*level);
            let n: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await?
                .get(0);
            counts.push(format!("{} {n}", level.name()));
        }
        println!(
            "{:>18}: rows by level: {}",
            format!("ag2_{}_*", family.name),
            counts.join(", ")
        );
    }
    let fresh = client
        .query_one("SELECT lsn::text, extract(epoch FROM now() - updated_at)::float8 FROM raa_progress WHERE slot_name = 'raa'", &[])
        .await?;
    let (lsn, age): (String, f64) = (fresh.get(0), fresh.get(1));
    println!("aggregates hold everything up to WAL position {lsn}, committed {age:.1}s ago");
    Ok(0)
}
