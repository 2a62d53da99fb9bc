//! What the IRF benches that run the whole pipeline share: the `cargo bench`
//! guard, connections, a throwaway Info Mart with raa's tables, publication
//! and dimensions, and one `raa run` of the library pipeline.

pub mod resident;

use raa::aggregate::Settings;
use raa::embedded::EmbeddedPostgres;
use raa::loadgen::Generator;
use raa::ops::shutdown::Shutdown;
use raa::pipeline::{self, Options, Summary};
use raa::sink::{postgres::ddl, PgSink};
use raa::source::{setup, SourceConfig};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Runs `bench` with `RAA_BENCH_ROWS` (or `default_rows`) under `cargo bench`
/// only: `cargo bench` passes `--bench`, `cargo test --benches` (which also
/// enumerates with `--list`) does not, and a run of minutes is no test.
pub fn main<F: Future<Output = ()>>(default_rows: usize, bench: impl FnOnce(usize) -> F) {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("not run: this benchmark runs under `cargo bench`");
        return;
    }
    let rows: usize = std::env::var("RAA_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rows);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench(rows));
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

/// A throwaway Info Mart with its tables, raa's tables and publication.
pub struct InfoMart {
    /// Held for its drop, which stops the server.
    _pg: EmbeddedPostgres,
    pub url: String,
    pub source: SourceConfig,
    pub settings: Settings,
}

impl InfoMart {
    /// Starts one, with the dimension rows of the generator it returns.
    pub async fn start() -> (InfoMart, Generator) {
        let pg = EmbeddedPostgres::start().expect("throwaway PostgreSQL");
        connect(&pg.url("postgres"))
            .await
            .batch_execute("CREATE DATABASE bench")
            .await
            .expect("create db");
        let url = pg.url("bench");
        let source = SourceConfig::new(&url, "raa", "raa").expect("config");
        let c = connect(&url).await;
        c.batch_execute(raa::INFOMART_SQL).await.expect("schema");
        let settings = Settings::default();
        c.batch_execute(&ddl(&settings)).await.expect("raa ddl");
        setup::create_publication(&c, "raa")
            .await
            .expect("publication");
        let mut generator = Generator::new(42, 1_774_569_600);
        generator.dimensions(&c).await.expect("dimensions");
        let im = InfoMart {
            _pg: pg,
            url,
            source,
            settings,
        };
        (im, generator)
    }

    /// `raa run` over the state in `state` until it has caught up, with
    /// `opts` otherwise; sled's cache is `RAA_BENCH_CACHE_MB` (default raa's
    /// `state_cache_mb`).
    pub async fn run(&self, state: &Path, opts: Options) -> Summary {
        let cache_bytes = std::env::var("RAA_BENCH_CACHE_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or_else(
                || raa::ops::config::Config::default().state_cache_bytes(),
                |mb| mb << 20,
            );
        let store = Arc::new(raa_state::Store::open_with_cache(state, cache_bytes).expect("store"));
        let sink = PgSink::new(connect(&self.url).await, &self.source.slot, &self.settings)
            .await
            .expect("sink");
        let opts = Options {
            until_caught_up: true,
            ..opts
        };
        pipeline::run(
            &self.source,
            store,
            self.settings.clone(),
            sink,
            opts,
            Shutdown::default(),
        )
        .await
        .expect("raa run")
    }
}
