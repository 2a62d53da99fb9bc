//! The replication connection, decoded into whole transactions.
//!
//! A task owns the pgwire-replication client. It decodes each pgoutput
//! message, assembles transactions, and sends [`SourceEvent`]s through a
//! bounded channel (backpressure reaches the server through TCP). It also
//! forwards the durable position from [`StreamHandle::ack`] to the client,
//! which reports it in every standby status update: the only path by which
//! raa acknowledges WAL.

use super::SourceConfig;
use crate::decode::{pgoutput, DecodeError, FramingError, Transaction, TxnAssembler};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};
use raa_state::Lsn;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the stream delivers, in WAL order.
#[derive(Debug)]
pub enum SourceEvent {
    /// A committed transaction touching the tables raa reads.
    Txn(Transaction),
    /// The server has sent everything before `wal_end`, and no transaction is
    /// open: with nothing pending, raa may acknowledge up to here.
    Idle { wal_end: Lsn },
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("replication connection failed")]
    Replication(#[source] PgWireError),
    #[error("undecodable pgoutput message at WAL position {at}")]
    Decode {
        at: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error("invalid transaction stream at WAL position {at}")]
    Framing {
        at: Lsn,
        #[source]
        source: FramingError,
    },
    #[error("the replication stream ended")]
    Ended,
}

/// The running stream: events out, durable positions in.
pub struct StreamHandle {
    pub events: mpsc::Receiver<Result<SourceEvent, StreamError>>,
    ack: watch::Sender<Lsn>,
    task: JoinHandle<()>,
}

impl StreamHandle {
    /// Reports `durable` to the server: every transaction ending at or before
    /// it is committed in both the state and the sink.
    pub fn ack(&self, durable: Lsn) {
        self.ack.send_if_modified(|cur| {
            let raise = durable > *cur;
            if raise {
                *cur = durable;
            }
            raise
        });
    }

    /// A handle over events queued by a test, with no connection behind it.
    #[cfg(test)]
    pub(crate) fn queued(events: mpsc::Receiver<Result<SourceEvent, StreamError>>) -> StreamHandle {
        StreamHandle {
            events,
            ack: watch::channel(Lsn::ZERO).0,
            task: tokio::spawn(async {}),
        }
    }

    /// Stops the task and closes the replication connection.
    pub async fn stop(self) {
        drop(self.ack);
        drop(self.events);
        let _ = self.task.await;
    }
}

/// Starts streaming from `start`, acknowledging `ack` until told otherwise.
pub async fn start(cfg: &SourceConfig, start: Lsn, ack: Lsn) -> Result<StreamHandle, StreamError> {
    let repl = cfg
        .replication()
        .with_start_lsn(pgwire_replication::Lsn(start.0))
        .with_ack_lsn(pgwire_replication::Lsn(ack.0))
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(5));
    let mut client = ReplicationClient::connect(repl)
        .await
        .map_err(StreamError::Replication)?;
    client
        .wait_started()
        .await
        .map_err(StreamError::Replication)?;
    crate::ops::metrics::metrics().stream_started(start);
    let (tx, events) = mpsc::channel(256);
    let (ack, ack_rx) = watch::channel(ack);
    let task = tokio::spawn(async move {
        let result = pump(&mut client, &tx, ack_rx).await;
        crate::ops::metrics::metrics().stream_stopped();
        client.stop();
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(StreamHandle { events, ack, task })
}

/// Moves events from the client to the channel until the handle is dropped.
async fn pump(
    client: &mut ReplicationClient,
    tx: &mpsc::Sender<Result<SourceEvent, StreamError>>,
    mut ack: watch::Receiver<Lsn>,
) -> Result<(), StreamError> {
    let mut asm = TxnAssembler::default();
    loop {
        let event = tokio::select! {
            biased;
            changed = ack.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let durable = *ack.borrow_and_update();
                client.update_applied_lsn(pgwire_replication::Lsn(durable.0));
                continue;
            }
            ev = client.recv() => ev.map_err(StreamError::Replication)?,
        };
        let framing = |at| move |source| StreamError::Framing { at, source };
        let out = match event {
            None => return Err(StreamError::Ended),
            Some(ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            }) => {
                let at = Lsn(final_lsn.0);
                asm.begin(at, xid, commit_time_micros)
                    .map_err(framing(at))?;
                None
            }
            Some(ReplicationEvent::XLogData {
                wal_start, data, ..
            }) => {
                let at = Lsn(wal_start.0);
                let msg =
                    pgoutput::decode(&data).map_err(|source| StreamError::Decode { at, source })?;
                asm.push(&msg).map_err(framing(at))?.map(SourceEvent::Txn)
            }
            Some(ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            }) => {
                let at = Lsn(lsn.0);
                let txn = asm
                    .commit(at, Lsn(end_lsn.0), commit_time_micros)
                    .map_err(framing(at))?;
                crate::ops::metrics::metrics().transaction_decoded(&txn);
                Some(SourceEvent::Txn(txn))
            }
            Some(ReplicationEvent::KeepAlive { wal_end, .. }) if !asm.in_transaction() => {
                crate::ops::metrics::metrics().server_position(Lsn(wal_end.0));
                Some(SourceEvent::Idle {
                    wal_end: Lsn(wal_end.0),
                })
            }
            Some(ReplicationEvent::KeepAlive { .. } | ReplicationEvent::Message { .. }) => None,
            Some(ReplicationEvent::StoppedAt { .. }) => return Err(StreamError::Ended),
        };
        if let Some(ev) = out {
            if tx.send(Ok(ev)).await.is_err() {
                return Ok(());
            }
        }
    }
}
