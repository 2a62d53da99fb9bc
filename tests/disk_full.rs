//! The state directory's disk fills up while raa streams. raa logs why and
//! retries with backoff instead of dying. sled 0.34 does not survive ENOSPC
//! (its log is left unreadable: "Read corrupted data"), so the same state
//! cannot be reopened even once space returns; nothing is lost all the same:
//! the operator empties the state directory (README) and raa restores the
//! newest checkpoint from the share and replays the WAL the slot kept for it.
//!
//! The state directory is a small tmpfs mounted for the test (root only;
//! without the privilege to mount, the test says so and checks nothing).

mod support;

use raa::aggregate::Settings;
use raa::loadgen::Generator;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::TestDb;

const DAY: i64 = 1_774_569_600;

struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mounted, String> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mounted(dir.to_owned()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn log_has(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_is_retried_until_there_is_space() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mount = match mount_tmpfs(&state, "12m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount a small tmpfs for the state directory: {e}");
            return;
        }
    };
    let settings = Settings::default();
    let db = TestDb::new().await;
    db.init(&settings).await;
    let (log, share) = (dir.path().join("raa.log"), dir.path().join("share"));
    let start = || {
        support::Running::new(
            db.raa(&state)
                .arg("run")
                .env("RAA_SHARE_DIR", &share)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap(),
                ))
                .spawn()
                .unwrap(),
        )
    };
    let mut c = db.client().await;
    let mut g = Generator::new(61, DAY);
    g.dimensions(&c).await.unwrap();
    g.day(&mut c, 500, 100).await.unwrap();
    let mut raa = start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log_has(&log, "checkpoint written") {
        assert!(
            Instant::now() < deadline,
            "no first checkpoint:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    g.day(&mut c, 20_000, 500).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(180);
    while !log_has(&log, "No space left on device") || !log_has(&log, "transient failure") {
        assert!(
            Instant::now() < deadline,
            "the full disk was never reported:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            raa.child().try_wait().unwrap().is_none(),
            "raa died on a full disk:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Still alive and retrying a little later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(raa.child().try_wait().unwrap().is_none(), "raa gave up");
    let remount = Command::new("mount")
        .args(["-o", "remount,size=1g"])
        .arg(&mount.0)
        .status()
        .unwrap();
    assert!(remount.success());
    // The operator's recovery: stop raa, empty the state directory, start it.
    raa.terminate();
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let mut raa = start();

    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let diffs = db.differences(&settings).await;
        if diffs.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} differences after space returned, first {:?}\n{}",
            diffs.len(),
            diffs.first(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(log_has(&log, "restored the state from a checkpoint"));
    assert!(raa.terminate().success());
}
