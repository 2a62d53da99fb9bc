//! The GCXI share: checkpoints of the whole state, from which a new pod with
//! an empty state volume rebuilds (restore, then replay the WAL after it).
//!
//! Layout: `<share>/<slot>/checkpoint-<LSN as 16 hex digits>-<unix time>.raa`,
//! so names sort by LSN. Several raa (one per Info Mart) share one mount, each
//! under its own slot's directory. The newest `retain` files are kept.

use raa_state::checkpoint::{self, CheckpointError, CheckpointInfo};
use raa_state::{Lsn, Store};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share directory {path}: {op} failed")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the state to checkpoint could not be settled")]
    State(#[source] raa_state::StateError),
    #[error(
        "checkpoint {path} was taken from database cluster {found}, but the source is cluster \
         {expected}: is --share-dir shared with another Info Mart? Give each raa its own slot name"
    )]
    OtherCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// One raa's directory on the share.
#[derive(Clone, Debug)]
pub struct Share {
    dir: PathBuf,
    slot: String,
    retain: usize,
}

impl Share {
    /// The directory for `slot` under the mounted share `root` (created if missing).
    pub fn new(root: &Path, slot: &str, retain: usize) -> Result<Share, ShareError> {
        let dir = root.join(slot);
        std::fs::create_dir_all(&dir).map_err(|source| ShareError::Io {
            path: dir.clone(),
            op: "create",
            source,
        })?;
        Ok(Share {
            dir,
            slot: slot.to_owned(),
            retain: retain.max(1),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checkpoint files, newest (highest LSN) first.
    pub fn list(&self) -> Result<Vec<PathBuf>, ShareError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| ShareError::Io {
            path: self.dir.clone(),
            op: "list",
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-") && n.ends_with(".raa"))
            })
            .collect();
        files.sort();
        files.reverse();
        Ok(files)
    }

    /// Writes a checkpoint of `store` now, then prunes beyond the retention.
    pub fn write(&self, store: &Store, system_id: &str) -> Result<CheckpointInfo, ShareError> {
        // The batch the writer may still be flushing goes into the checkpoint,
        // so its LSN, not the one durable now, names the file: names drive
        // the acknowledgements and the "already checkpointed" test.
        store.wait().map_err(ShareError::State)?;
        let lsn = store.applied_lsn().unwrap_or_default();
        let now = jiff::Timestamp::now().as_second();
        let path = self
            .dir
            .join(format!("checkpoint-{:016X}-{now:010}.raa", lsn.0));
        let info = store.checkpoint(&path, system_id, &self.slot, now)?;
        for old in self.list()?.into_iter().skip(self.retain) {
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), error = %e, "could not prune an old checkpoint");
            }
        }
        Ok(info)
    }

    /// The newest checkpoint that verifies, as (file, header); a damaged one
    /// is logged with the reason and skipped for the one before it.
    pub fn newest_valid(&self) -> Result<Option<(PathBuf, CheckpointInfo)>, ShareError> {
        for path in self.list()? {
            match checkpoint::verify(&path) {
                Ok(info) => return Ok(Some((path, info))),
                Err(e) => {
                    tracing::warn!(error = %e, "refusing a checkpoint; trying the one before it")
                }
            }
        }
        Ok(None)
    }

    /// (LSN, creation time) of each checkpoint by its name, newest first
    /// (not verified): for the acknowledgement policy and the schedule.
    pub fn positions(&self) -> Result<Vec<(Lsn, i64)>, ShareError> {
        Ok(self
            .list()?
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let rest = name.strip_prefix("checkpoint-")?.strip_suffix(".raa")?;
                let (lsn, created) = rest.split_once('-')?;
                Some((
                    Lsn(u64::from_str_radix(lsn, 16).ok()?),
                    created.parse().ok()?,
                ))
            })
            .collect())
    }

    /// Restores the newest valid checkpoint into the empty `store`, refusing
    /// one taken from another database cluster.
    pub fn restore_newest(
        &self,
        store: &Store,
        system_id: &str,
    ) -> Result<Option<CheckpointInfo>, ShareError> {
        let Some((path, info)) = self.newest_valid()? else {
            return Ok(None);
        };
        if info.system_id != system_id {
            return Err(ShareError::OtherCluster {
                path,
                found: info.system_id,
                expected: system_id.to_owned(),
            });
        }
        let restored = store.restore(&path)?;
        tracing::info!(file = %path.display(), lsn = %restored.lsn, entries = restored.entries, "restored the state from a checkpoint");
        Ok(Some(restored))
    }
}

/// The file in the state directory naming the process that holds it, so
/// `raa checkpoint` can ask that process for a checkpoint.
const PID_FILE: &str = "raa.pid";

/// Records this process as the holder of `state_dir` (call once the store is open).
pub fn write_pid_file(state_dir: &Path) -> Result<(), ShareError> {
    let path = state_dir.join(PID_FILE);
    std::fs::write(&path, format!("{}\n", std::process::id())).map_err(|source| ShareError::Io {
        path,
        op: "write the pid file",
        source,
    })
}

/// `raa checkpoint`: writes a checkpoint of the state in `state_dir` now. If a
/// running raa holds the directory, asks it (SIGUSR1) and waits for the file.
/// Otherwise it reads the state itself, with sled's cache at `cache_bytes`.
pub async fn checkpoint_now(
    state_dir: &Path,
    share: &Share,
    cache_bytes: u64,
) -> Result<CheckpointInfo, CheckpointNowError> {
    match Store::open_with_cache(state_dir, cache_bytes) {
        Ok(store) => {
            let id: String = store
                .meta(crate::backfill::SYSTEM_ID)?
                .ok_or(CheckpointNowError::Incomplete)?;
            if store.applied_lsn().is_none() {
                return Err(CheckpointNowError::Incomplete);
            }
            let info = share.write(&store, &id)?;
            eprintln!(
                "checkpoint at {} ({} entries) in {}",
                info.lsn,
                info.entries,
                share.dir().display()
            );
            Ok(info)
        }
        Err(raa_state::StateError::Locked { .. }) => {
            let before = share.list()?.first().cloned();
            let pid = signal_holder(state_dir, "-USR1").await?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if let Some(newest) = share.list()?.first() {
                    if Some(newest) != before.as_ref() {
                        let info = checkpoint::read_info(newest)?;
                        eprintln!("raa (pid {pid}) wrote {}", newest.display());
                        return Ok(info);
                    }
                }
            }
            Err(CheckpointNowError::Timeout(pid))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` (as `kill` spells it) to the raa process holding `state_dir`.
pub async fn signal_holder(state_dir: &Path, signal: &str) -> Result<u32, CheckpointNowError> {
    let pid_path = state_dir.join(PID_FILE);
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or(CheckpointNowError::NoPid(pid_path))?;
    let status = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .map_err(|e| CheckpointNowError::Signal(pid, e.to_string()))?;
    if !status.success() {
        return Err(CheckpointNowError::Signal(pid, status.to_string()));
    }
    Ok(pid)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointNowError {
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    State(#[from] raa_state::StateError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the state is incomplete (no backfill finished yet): nothing to checkpoint")]
    Incomplete,
    #[error("another process holds the state directory but {0} names none: is raa running?")]
    NoPid(PathBuf),
    #[error("signalling raa (pid {0}) failed: {1}")]
    Signal(u32, String),
    #[error("raa (pid {0}) wrote no checkpoint within 5 minutes: is it running with --share-dir?")]
    Timeout(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use raa_state::{Batch, Space, StateKey};

    struct Key(u32);
    impl StateKey for Key {
        const SPACE: Space = Space::Fact;
        fn encode_key(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.0.to_be_bytes());
        }
    }

    #[test]
    fn a_checkpoint_is_named_by_the_lsn_it_holds_while_a_batch_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        store.commit(Batch::default(), Lsn(100)).unwrap();
        // Large enough that the writer is still flushing it below.
        let mut batch = Batch::default();
        for i in 0..50_000 {
            batch.put(&Key(i), &i).unwrap();
        }
        store.submit(batch, Lsn(200)).unwrap();
        let share = Share::new(&dir.path().join("share"), "raa", 3).unwrap();
        let info = share.write(&store, "cluster").unwrap();
        assert_eq!(info.lsn, Lsn(200));
        assert_eq!(share.positions().unwrap()[0].0, info.lsn);
    }
}
