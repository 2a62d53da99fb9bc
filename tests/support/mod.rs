//! Shared test support: a real PostgreSQL 15 with `wal_level = logical` and a
//! fresh database per test.
//!
//! By default each test binary starts one throwaway cluster
//! ([`raa::embedded::EmbeddedPostgres`]). Set `RAA_TEST_PG_URL` to a superuser
//! connection string of an existing server (with `wal_level = logical`) to use
//! it instead; tests then create and leave databases named `raa_test_*` there.
#![allow(dead_code)]

use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Options, Summary};
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

enum Server {
    Embedded(EmbeddedPostgres),
    External(String),
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("RAA_TEST_PG_URL") {
        Ok(url) => Server::External(url),
        Err(_) => {
            Server::Embedded(EmbeddedPostgres::start().expect("start a throwaway PostgreSQL"))
        }
    })
}

fn url_for(database: &str) -> String {
    match server() {
        Server::Embedded(pg) => pg.url(database),
        Server::External(url) => {
            let mut cfg: tokio_postgres::Config = url.parse().expect("RAA_TEST_PG_URL parses");
            cfg.dbname(database);
            // Re-render as key=value (the Config Debug form is not a connection string).
            let host = match cfg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            let user = cfg.get_user().unwrap_or("postgres");
            let pw = cfg
                .get_password()
                .map(|p| format!(" password={}", String::from_utf8_lossy(p)))
                .unwrap_or_default();
            format!("host={host} port={port} user={user}{pw} dbname={database}")
        }
    }
}

/// The embedded cluster, when tests run on one.
pub fn embedded() -> Option<&'static EmbeddedPostgres> {
    match server() {
        Server::Embedded(pg) => Some(pg),
        Server::External(_) => None,
    }
}

/// A fresh database with the Info Mart subset loaded.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!(
            "raa_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let admin = connect(&url_for("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = url_for(&name);
        let db = TestDb { name, url };
        db.client()
            .await
            .batch_execute(raa::INFOMART_SQL)
            .await
            .expect("load sql/infomart.sql");
        db
    }

    pub fn source(&self) -> SourceConfig {
        // One slot per database: slot names are cluster-wide.
        SourceConfig::new(&self.url, &self.name, "raa").expect("valid source config")
    }

    /// The `raa` binary pointed at this database and slot, with its state in `state`.
    pub fn raa(&self, state: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_raa"));
        c.env("RAA_SOURCE_URL", &self.url)
            .env("RAA_SLOT", &self.name)
            .env("RAA_STATE_DIR", state);
        c
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// `raa init`: raa's tables and publication (the first run creates the slot).
    pub async fn init(&self, settings: &Settings) {
        let c = self.client().await;
        setup::check_server(&c).await.expect("server check");
        c.batch_execute(&ddl(settings)).await.expect("raa ddl");
        let src = self.source();
        setup::create_publication(&c, &src.publication)
            .await
            .expect("create publication");
    }

    /// `raa run --until-caught-up` in process, on the state in `state_dir`.
    pub async fn catch_up(&self, state_dir: &Path, settings: &Settings) -> Summary {
        self.try_catch_up(state_dir, settings)
            .await
            .expect("pipeline run")
    }

    pub async fn try_catch_up(
        &self,
        state_dir: &Path,
        settings: &Settings,
    ) -> Result<Summary, pipeline::PipelineError> {
        self.catch_up_with(state_dir, settings, None).await
    }

    pub async fn catch_up_with(
        &self,
        state_dir: &Path,
        settings: &Settings,
        failpoint: Option<pipeline::Failpoint>,
    ) -> Result<Summary, pipeline::PipelineError> {
        self.catch_up_over(&self.url, state_dir, settings, failpoint)
            .await
    }

    /// `raa run --until-caught-up` in process, every connection through
    /// `url` (this database's, or another way to reach it).
    pub async fn catch_up_over(
        &self,
        url: &str,
        state_dir: &Path,
        settings: &Settings,
        failpoint: Option<pipeline::Failpoint>,
    ) -> Result<Summary, pipeline::PipelineError> {
        self.catch_up_opts(url, state_dir, settings, |o| o.failpoint = failpoint)
            .await
    }

    /// [`TestDb::catch_up_over`] with options of the test's own.
    pub async fn catch_up_opts(
        &self,
        url: &str,
        state_dir: &Path,
        settings: &Settings,
        tweak: impl FnOnce(&mut Options),
    ) -> Result<Summary, pipeline::PipelineError> {
        let store = Arc::new(raa_state::Store::open(state_dir).expect("open state"));
        let src = SourceConfig::new(url, &self.name, "raa").expect("valid source config");
        let sink = PgSink::new(connect(url).await, &src.slot, settings)
            .await
            .expect("sink");
        let mut opts = Options {
            until_caught_up: true,
            batch_changes: 5_000,
            batch_delay: Duration::from_millis(50),
            ..Options::default()
        };
        tweak(&mut opts);
        tokio::time::timeout(
            Duration::from_secs(300),
            pipeline::run(
                &src,
                store,
                settings.clone(),
                sink,
                opts,
                Shutdown::default(),
            ),
        )
        .await
        .expect("catch-up finished within 300 s")
    }

    /// `raa verify`: every difference, rendered.
    pub async fn differences(&self, settings: &Settings) -> Vec<String> {
        let diffs = raa::verify::verify(&self.client().await, settings)
            .await
            .expect("verify runs");
        diffs
            .iter()
            .flat_map(|d| {
                d.expected_only
                    .iter()
                    .map(move |r| format!("{} expected {r}", d.table))
                    .chain(
                        d.actual_only
                            .iter()
                            .map(move |r| format!("{} actual {r}", d.table)),
                    )
            })
            .collect()
    }

    pub async fn assert_verified(&self, settings: &Settings) {
        let diffs = self.differences(settings).await;
        assert!(
            diffs.is_empty(),
            "{} differences, first: {:#?}",
            diffs.len(),
            &diffs[..diffs.len().min(10)]
        );
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .expect("count query")
            .get(0)
    }

    /// Rows in all aggregate tables of `settings` (every family, every level).
    pub async fn aggregate_rows(&self, settings: &Settings) -> i64 {
        let mut total = 0;
        for family in raa::aggregate::catalog::FAMILIES {
            for &level in &settings.levels {
                let table = family.table_name(level);
                total += self.count(&format!("SELECT count(*) FROM {table}")).await;
            }
        }
        total
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A child process killed (SIGKILL) when dropped, so a failing test never
/// leaves a `raa run` behind.
pub struct Running(pub Option<std::process::Child>);

impl Running {
    pub fn new(child: std::process::Child) -> Running {
        Running(Some(child))
    }

    pub fn child(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("child is present until dropped")
    }

    /// Sends SIGTERM (what a pod's stop sends) and waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        child.wait().expect("wait for raa")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
