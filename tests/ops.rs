//! raa run as the StatefulSet runs it: configured by file, environment and a
//! password file; serving /metrics (checked by `promtool`), /healthz and
//! /readyz; fed by the live load generator; stopped by SIGTERM with the sink
//! and the state at the same position, or, when the batch in flight cannot
//! commit within the grace period, exiting 1 and resuming exactly. Also:
//! `raa config check`, and the deployment files (compose, Prometheus,
//! Kubernetes) are valid.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::TestDb;

const SECRET: &str = "s3cret-never-logged";

fn raa() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_raa"));
    // Start from a clean environment for raa's own variables.
    for (k, _) in std::env::vars() {
        if k.starts_with("RAA_") {
            c.env_remove(k);
        }
    }
    c
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A minimal HTTP GET: (status code, body).
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `cond` every 100 ms until it holds or `secs` pass.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A metric's value in a scrape (the first sample whose name and labels start with `prefix`).
fn sample(scrape: &str, prefix: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `promtool`, when installed (`.ci/run` installs it).
fn promtool() -> Option<&'static str> {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED promtool checks: promtool is not installed (apt-get install -y prometheus; .ci/run does)");
    }
    ok.then_some("promtool")
}

struct Raa {
    child: Child,
}

impl Drop for Raa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_metrics_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("raa.toml");
    let addr = free_addr();
    std::fs::write(
        &config,
        format!(
            "slot = \"{}\"\nstate_dir = \"{}\"\npassword_file = \"{}\"\nbatch_delay_ms = 50\n\
             poll_interval_seconds = 1\nmetrics_addr = \"{addr}\"\n",
            db.name,
            state.display(),
            password.display()
        ),
    )
    .unwrap();
    let with_env = |c: &mut Command| {
        c.env("RAA_CONFIG", &config)
            .env("RAA_SOURCE_URL", &db.url)
            .env("RAA_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
    };
    let mut init = raa();
    with_env(&mut init);
    let out = init.arg("init").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let log = dir.path().join("raa.log");
    let mut run = raa();
    with_env(&mut run);
    let mut proc = Raa {
        child: run
            .arg("run")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    wait_for(60, "/healthz", || {
        get(addr, "/healthz").is_some_and(|(s, _)| s == 200)
    });
    wait_for(60, "/readyz", || {
        get(addr, "/readyz").is_some_and(|(s, _)| s == 200)
    });

    // Live traffic, then wait until raa has made all of it durable.
    let mut load = raa();
    with_env(&mut load);
    let out = load
        .args(["loadgen", "--rate", "300", "--duration", "3s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changes/s"),
        "{}",
        text(&out)
    );
    let c = db.client().await;
    let wal: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let target: raa::Lsn = wal.parse().unwrap();
    let mut scrape = String::new();
    wait_for(60, "raa to make the traffic durable", || {
        scrape = get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
        // Acknowledged only once the state is flushed: no batch stays held.
        let reached = |name| sample(&scrape, name).unwrap_or(0.0) >= target.0 as f64;
        reached("raa_durable_wal_position_bytes")
            && reached("raa_acknowledged_wal_position_bytes")
            && sample(&scrape, "raa_state_keys").unwrap_or(0.0) > 0.0
            && sample(&scrape, "raa_accum_cache_bytes").unwrap_or(0.0) > 0.0
    });
    let irf = "raa_changes_decoded_total{op=\"update\",table=\"interaction_resource_fact\"}";
    assert!(sample(&scrape, irf).unwrap_or(0.0) > 0.0, "{scrape}");
    for name in [
        "raa_transactions_decoded_total",
        "raa_replication_lag_bytes",
        "raa_replication_lag_seconds",
        "raa_commit_lag_seconds_bucket",
        "raa_sink_batches_total",
        "raa_sink_rows_total",
        "raa_sink_commit_duration_seconds_count",
        "raa_state_size_bytes",
        "raa_checkpoint_age_seconds",
        "raa_slot_wal_retained_bytes",
        "raa_build_info",
        "raa_errors_total{kind=\"sink\"} 0",
        "raa_source_connected 1",
    ] {
        assert!(scrape.contains(name), "{name} missing:\n{scrape}");
    }
    if let Some(promtool) = promtool() {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(out.status.success(), "promtool: {}", text(&out));
    }

    // SIGTERM while traffic flows: raa finishes the batch in flight and exits 0.
    let mut load = raa();
    with_env(&mut load);
    let mut traffic = load
        .args(["loadgen", "--rate", "300", "--duration", "20s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let before = sample(&scrape, "raa_transactions_decoded_total").unwrap_or(0.0);
    wait_for(30, "raa to decode the new traffic", || {
        let s = get(addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
        sample(&s, "raa_transactions_decoded_total").unwrap_or(0.0) > before + 5.0
    });
    sigterm(&proc.child);
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "raa did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    sigterm(&traffic);
    let _ = traffic.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status}:\n{logs}");
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(!logs.contains(SECRET), "the password leaked into the logs");
    for line in logs.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not JSON: {line}"
        );
    }

    // The sink and the state stopped at the same position.
    let sink: String = c
        .query_one(
            "SELECT lsn::text FROM raa_progress WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    let store = raa_state::Store::open(&state).unwrap();
    assert_eq!(store.applied_lsn(), Some(sink.parse().unwrap()));
    drop(store);

    // What it wrote is exact: catch up on the rest and verify.
    let mut catch_up = raa();
    with_env(&mut catch_up);
    let out = catch_up
        .args(["run", "--until-caught-up"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut verify = raa();
    with_env(&mut verify);
    let out = verify.arg("verify").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn config_check_shows_the_effective_configuration_masked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("raa.toml");
    std::fs::write(
        &config,
        "source_url = \"postgresql://raa:hunter2@db/infomart\"\nslot = \"from_file\"\nbatch_changes = 10\nsubhr_minutes = 30\n",
    )
    .unwrap();
    let out = raa()
        .args(["--config", config.to_str().unwrap(), "config", "check"])
        .env("RAA_SLOT", "from_env")
        .env("RAA_BATCH_CHANGES", "20")
        .arg("--batch-changes=30")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("postgresql://raa:***@db/infomart"),
        "{stdout}"
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} missing: {stdout}"))
            .to_owned()
    };
    assert!(line("slot").contains("\"from_env\"") && line("slot").contains("RAA_SLOT"));
    assert!(
        line("batch_changes").contains("30") && line("batch_changes").contains("--batch-changes")
    );
    assert!(line("subhr_minutes").contains("30") && line("subhr_minutes").contains("raa.toml"));
    assert!(line("publication").contains("default"));

    std::fs::write(&config, "batch_chnages = 10\n").unwrap();
    let out = raa()
        .args(["--config", config.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown key \"batch_chnages\" in") && stderr.contains("raa.toml"),
        "{stderr}"
    );

    let out = raa()
        .args(["config", "check"])
        .env("RAA_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_format (from RAA_LOG_FORMAT)"));
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `docker-compose config` (v1) or `docker compose config` (v2), whichever is installed.
fn compose() -> Option<Command> {
    let works = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    if works(Command::new("docker-compose").arg("version")) {
        return Some(Command::new("docker-compose"));
    }
    if works(Command::new("docker").args(["compose", "version"])) {
        let mut c = Command::new("docker");
        c.arg("compose");
        return Some(c);
    }
    None
}

#[test]
fn deployment_files_are_valid() {
    match compose() {
        Some(mut c) => {
            let out = c
                .args(["-f", repo("docker-compose.yml").to_str().unwrap(), "config"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            let config = String::from_utf8_lossy(&out.stdout);
            for service in ["postgres", "raa", "prometheus", "loadgen"] {
                assert!(config.contains(&format!("  {service}:")), "{config}");
            }
            assert!(config.contains("wal_level=logical"), "{config}");
        }
        None => eprintln!(
            "SKIPPED docker-compose config: neither docker-compose nor `docker compose` is installed (apt-get install -y docker-compose; .ci/run does)"
        ),
    }
    if let Some(promtool) = promtool() {
        let out = Command::new(promtool)
            .args([
                "check",
                "config",
                repo("deploy/prometheus.yml").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    // The StatefulSet manifests: YAML that holds what the README promises.
    let k8s = std::fs::read_to_string(repo("deploy/k8s/raa.yaml")).unwrap();
    for needle in [
        "kind: StatefulSet",
        "volumeClaimTemplates:",
        "path: /healthz",
        "path: /readyz",
        "containerPort: 9101",
        "kind: Secret",
        "kind: ConfigMap",
        "password_file",
        "share",
    ] {
        assert!(k8s.contains(needle), "deploy/k8s/raa.yaml lacks {needle}");
    }
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]; print(len(docs))",
            repo("deploy/k8s/raa.yaml").to_str().unwrap(),
        ])
        .output();
    match parsed {
        Ok(out) if out.status.success() => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named") => {
            eprintln!("SKIPPED YAML parse of deploy/k8s: python3-yaml is not installed")
        }
        Ok(out) => panic!("deploy/k8s/raa.yaml: {}", text(&out)),
        Err(e) => eprintln!("SKIPPED YAML parse of deploy/k8s: no python3 ({e})"),
    }
    // raa.toml in the config map is one raa accepts.
    let toml_start = k8s
        .find("raa.toml: |")
        .expect("a raa.toml in the config map");
    let body: String = k8s[toml_start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = raa()
        .args(["--config", file.path().to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_grace_period_and_resumes_exactly() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let env = |c: &mut Command| {
        c.env("RAA_SOURCE_URL", &db.url)
            .env("RAA_SLOT", &db.name)
            .env("RAA_STATE_DIR", dir.path().join("state"))
            .env("RAA_BATCH_DELAY_MS", "50")
            .env("RAA_SHUTDOWN_GRACE_SECONDS", "1")
            .env("RAA_METRICS_ADDR", addr.to_string())
            .env("RUST_LOG", "info");
    };
    let mut init = raa();
    env(&mut init);
    let out = init.arg("init").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = dir.path().join("raa.log");
    let mut run = raa();
    env(&mut run);
    let mut proc = Raa {
        child: run
            .arg("run")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    wait_for(60, "/readyz", || {
        get(addr, "/readyz").is_some_and(|(s, _)| s == 200)
    });

    // Hold a lock the sink needs, so the batch in flight cannot commit.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE ag2_agent_subhr IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut load = raa();
    env(&mut load);
    let out = load
        .args(["loadgen", "--rows", "300", "--txn-rows", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let c = db.client().await;
    let mut blocked = false;
    for _ in 0..300 {
        let waiting: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(blocked, "raa's sink never waited on the lock");

    let asked = Instant::now();
    sigterm(&proc.child);
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "raa did not give up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(asked.elapsed() >= Duration::from_secs(1), "{logs}");
    assert!(logs.contains("shutdown grace period"), "{logs}");
    lock.rollback().await.unwrap();

    // Nothing of the abandoned batch is half-written: a restart catches up exactly.
    let mut catch_up = raa();
    env(&mut catch_up);
    let out = catch_up
        .args(["run", "--until-caught-up"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut verify = raa();
    env(&mut verify);
    let out = verify.arg("verify").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
