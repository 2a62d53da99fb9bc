//! `raa replay`: a checkpoint plus a bounded range of WAL into a scratch
//! state, for investigation. The live aggregate tables are never touched
//! (the sink is in memory) and the live slot is never consumed: the replay
//! streams from a copy of it, dropped afterwards.
//!
//! A copy starts where the live slot is acknowledged, so a checkpoint older
//! than that can no longer be replayed (the pipeline refuses, naming both
//! positions). With `--ack-policy checkpointed` the newest checkpoint is
//! always replayable.

use crate::aggregate::{Level, Settings};
use crate::backfill::RESYNC_SINK;
use crate::ops::shutdown::Shutdown;
use crate::pipeline::{self, Options, PipelineError, Summary};
use crate::sink::MemorySink;
use crate::source::SourceConfig;
use raa_state::checkpoint::{self, CheckpointError, CheckpointInfo};
use raa_state::{Batch, Lsn, StateError, Store};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the scratch directory {0} is not empty: replay needs a fresh one")]
    ScratchNotEmpty(PathBuf),
    #[error("scratch directory {path}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is of slot {found}, not {expected}")]
    OtherSlot {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("source database: {what}")]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("replaying")]
    Pipeline(#[from] PipelineError),
    #[error("writing {path}")]
    Dump {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One replayed aggregate row: family name, level, bucket, group values, measures.
pub type ReplayedRow = (String, Level, i64, Vec<Option<i64>>, Vec<Option<i64>>);

/// What a replay reached.
pub struct ReplayReport {
    pub checkpoint: CheckpointInfo,
    pub summary: Summary,
    pub scratch: Option<PathBuf>,
    /// The aggregate rows after the replay.
    pub rows: Vec<ReplayedRow>,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replayed from checkpoint at {} to {}: {} transactions, {} row changes",
            self.checkpoint.lsn,
            self.summary.durable,
            self.summary.transactions,
            self.summary.changes
        )?;
        let mut per_table = std::collections::BTreeMap::<String, usize>::new();
        for (family, level, ..) in &self.rows {
            *per_table
                .entry(format!("ag2_{family}_{}", level.name()))
                .or_default() += 1;
        }
        for (table, n) in per_table {
            writeln!(f, "  {table:>18}: {n} rows")?;
        }
        match &self.scratch {
            Some(dir) => write!(f, "scratch state kept in {}", dir.display()),
            None => write!(f, "scratch state discarded (pass --scratch-dir to keep it)"),
        }
    }
}

impl ReplayReport {
    /// Writes the rows as CSV: table, date_time_key, group columns…, measures….
    pub fn dump_csv(&self, path: &Path) -> Result<(), ReplayError> {
        use std::io::Write;
        let err = |source| ReplayError::Dump {
            path: path.to_owned(),
            source,
        };
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
        let cell = |v: &Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        for (family, level, bucket, group, values) in &self.rows {
            let cells: Vec<String> = group.iter().chain(values).map(cell).collect();
            writeln!(
                out,
                "ag2_{family}_{},{bucket},{}",
                level.name(),
                cells.join(",")
            )
            .map_err(err)?;
        }
        out.flush().map_err(err)
    }
}

/// Restores `file` into a scratch state (sled's cache at `cache_bytes`) and
/// replays the live slot's WAL after it, up to `to_lsn` (or the current end
/// of WAL).
pub async fn replay(
    source: &SourceConfig,
    settings: &Settings,
    file: &Path,
    to_lsn: Option<Lsn>,
    scratch_dir: Option<&Path>,
    cache_bytes: u64,
) -> Result<ReplayReport, ReplayError> {
    let info = checkpoint::verify(file)?;
    if info.slot != source.slot {
        return Err(ReplayError::OtherSlot {
            path: file.to_owned(),
            found: info.slot,
            expected: source.slot.clone(),
        });
    }
    let temp;
    let dir = match scratch_dir {
        Some(d) => {
            let occupied = std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some());
            if occupied {
                return Err(ReplayError::ScratchNotEmpty(d.to_owned()));
            }
            d.to_owned()
        }
        None => {
            temp = tempfile::tempdir().map_err(|source| ReplayError::Scratch {
                path: std::env::temp_dir(),
                source,
            })?;
            temp.path().to_owned()
        }
    };
    let store = Arc::new(Store::open_with_cache(&dir, cache_bytes)?);
    store.restore(file)?;
    // The in-memory sink starts from the checkpoint's rows.
    let mut resync = Batch::default();
    resync.put_meta(RESYNC_SINK, &true)?;
    store.commit(resync, info.lsn)?;

    let sql = source.connect().await.map_err(|source| ReplayError::Sql {
        what: "connect",
        source,
    })?;
    let copy = format!("raa_replay_{}", std::process::id());
    sql.execute(
        "SELECT pg_copy_logical_replication_slot($1, $2)",
        &[&source.slot, &copy],
    )
    .await
    .map_err(|source| ReplayError::Sql {
        what: "copying the replication slot",
        source,
    })?;
    let mut scratch_source = source.clone();
    scratch_source.slot = copy.clone();
    let mut sink = MemorySink::default();
    let opts = Options {
        until_caught_up: true,
        stop_at: to_lsn,
        ..Options::default()
    };
    let ran = pipeline::run(
        &scratch_source,
        store.clone(),
        settings.clone(),
        &mut sink,
        opts,
        Shutdown::default(),
    )
    .await;
    let dropped = crate::source::setup::drop_slot_once_released(&sql, &copy).await;
    if let Err(e) = dropped {
        tracing::warn!(slot = copy, error = %e, "could not drop the replay's slot copy: drop it by hand");
    }
    let summary = ran?;
    let families = crate::aggregate::catalog::FAMILIES;
    let rows = sink
        .rows
        .into_iter()
        .map(|((family, level, bucket, group), values)| {
            let name = families
                .get(usize::from(family))
                .map_or("?", |f| f.name)
                .to_owned();
            (name, level, bucket, group, values)
        })
        .collect();
    Ok(ReplayReport {
        checkpoint: info,
        summary,
        scratch: scratch_dir.map(Path::to_owned),
        rows,
    })
}
