//! A throwaway PostgreSQL 15 with `wal_level = logical`, for `raa demo`, the
//! tests and the benchmarks.
//!
//! `initdb` refuses to run as root, so when raa runs as root the cluster is
//! created and run as the `postgres` OS user (`runuser`). The server listens on
//! a free loopback port and a socket in its own directory. It is stopped when
//! the [`EmbeddedPostgres`] is dropped, and by a watchdog process when this
//! process dies without dropping it (a panicking test, `kill -9`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked in $RAA_PG_BIN, /usr/lib/postgresql/15/bin \
         and `pg_config --bindir`): install PostgreSQL 15 (apt-get install -y postgresql)"
    )]
    NoBinaries,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("I/O error while {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running throwaway cluster.
pub struct EmbeddedPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
    /// Extra `-c name=value` server options.
    extra: String,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    move |source| EmbeddedError::Io { what, source }
}

/// The directory holding `initdb` and `pg_ctl`.
pub fn find_binaries() -> Result<PathBuf, EmbeddedError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("RAA_PG_BIN") {
        candidates.push(dir.into());
    }
    candidates.push("/usr/lib/postgresql/15/bin".into());
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .ok_or(EmbeddedError::NoBinaries)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

impl EmbeddedPostgres {
    /// Creates and starts a cluster in a new temporary directory.
    pub fn start() -> Result<EmbeddedPostgres, EmbeddedError> {
        Self::start_with(&[])
    }

    /// As [`Self::start`], with extra server settings (`name`, `value`).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<EmbeddedPostgres, EmbeddedError> {
        let bin = find_binaries()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("raa-pg-")
            .tempdir()
            .map_err(io("creating the cluster directory"))?;
        if as_postgres {
            run(
                Command::new("chown").arg("postgres:").arg(dir.path()),
                "chown to postgres",
            )?;
        }
        let port = free_port()?;
        let pg = EmbeddedPostgres {
            bin,
            dir,
            port,
            as_postgres,
            extra: settings
                .iter()
                .map(|(k, v)| format!(" -c {k}={v}"))
                .collect(),
        };
        let data = pg.data_dir();
        pg.pg_command("initdb", "initdb", |c| {
            c.arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]);
        })?;
        pg.start_server()?;
        pg.spawn_watchdog()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for `database` over TCP on loopback.
    pub fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// A connection string for `database` over the Unix socket.
    pub fn socket_url(&self, database: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={database}",
            self.socket_dir().display(),
            self.port
        )
    }

    fn start_server(&self) -> Result<(), EmbeddedError> {
        let opts = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c wal_level=logical -c max_wal_senders=20 -c max_replication_slots=20 \
             -c fsync=off -c full_page_writes=off -c max_connections=100{}",
            self.port,
            self.socket_dir().display(),
            self.extra
        );
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        self.pg_command("pg_ctl", "starting PostgreSQL", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-o")
                .arg(&opts)
                .arg("-l")
                .arg(&log)
                .args(["-w", "start"]);
        })
    }

    /// Stops the server (fast mode) and starts it again on the same port.
    pub fn restart(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir();
        self.pg_command("pg_ctl", "stopping PostgreSQL", |c| {
            c.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
        })?;
        self.start_server()
    }

    /// Runs a PostgreSQL binary, as the `postgres` user when we are root.
    fn pg_command(
        &self,
        tool: &str,
        what: &str,
        args: impl FnOnce(&mut Command),
    ) -> Result<(), EmbeddedError> {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.current_dir(self.dir.path());
        args(&mut cmd);
        run(&mut cmd, what)
    }

    /// A shell that stops the cluster and removes it once this process is gone.
    fn spawn_watchdog(&self) -> Result<(), EmbeddedError> {
        let stop = format!(
            "{} {} -D {} -m immediate stop",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.bin.join("pg_ctl").display(),
            self.data_dir().display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; if [ -d {dir} ]; then {stop} >/dev/null 2>&1; rm -rf {dir}; fi",
            pid = std::process::id(),
            dir = self.dir.path().display(),
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting the cluster watchdog"))?;
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.pg_command("pg_ctl", "stopping PostgreSQL", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]);
        });
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), EmbeddedError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| EmbeddedError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(EmbeddedError::Command {
        what: what.to_owned(),
        detail: format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
    })
}
