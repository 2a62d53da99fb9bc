//! The in-memory twin of the PostgreSQL sink, for tests and benchmarks that
//! separate the pipeline's own cost from PostgreSQL's.

use super::{RowChunks, Sink, SinkError};
use crate::aggregate::{Level, OutputRow};
use raa_state::Lsn;
use std::collections::BTreeMap;

/// A row's identity: family, level, bucket, group values.
pub type RowId = (u16, Level, i64, Vec<Option<i64>>);

#[derive(Default, Debug)]
pub struct MemorySink {
    pub rows: BTreeMap<RowId, Vec<Option<i64>>>,
    pub progress: Option<Lsn>,
    pub batches: usize,
}

impl Sink for MemorySink {
    async fn progress(&mut self) -> Result<Option<Lsn>, SinkError> {
        Ok(self.progress)
    }

    async fn write(&mut self, lsn: Lsn, rows: &[OutputRow]) -> Result<(), SinkError> {
        if let Some(recorded) = self.progress.filter(|&p| p > lsn) {
            return Err(SinkError::ProgressRegressed {
                slot: "memory".into(),
                recorded,
                lsn,
            });
        }
        for r in rows {
            let id = (r.family, r.level, r.bucket, r.group.clone());
            match &r.values {
                Some(v) => self.rows.insert(id, v.clone()),
                None => self.rows.remove(&id),
            };
        }
        self.progress = Some(lsn);
        self.batches += 1;
        Ok(())
    }

    async fn write_chunks(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        let all = read_all(rows)?;
        self.write(lsn, &all).await
    }

    async fn replace_all(
        &mut self,
        lsn: Lsn,
        rows: &mut (dyn RowChunks + Send),
    ) -> Result<(), SinkError> {
        let all = read_all(rows)?;
        if let Some(r) = all.iter().find(|r| r.values.is_none()) {
            return Err(SinkError::DeletionInRewrite {
                table: super::copy::table_name(r.family, r.level),
            });
        }
        self.rows.clear();
        self.progress = None;
        self.write(lsn, &all).await
    }
}

/// Every chunk, read before anything is written: a failed read leaves the
/// sink as it was, as PostgreSQL's rollback does.
fn read_all(rows: &mut (dyn RowChunks + Send)) -> Result<Vec<OutputRow>, SinkError> {
    let mut all = Vec::new();
    while let Some(chunk) = rows.next_chunk()? {
        all.extend(chunk);
    }
    Ok(all)
}
