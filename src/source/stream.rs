//! The replication connection, decoded into transactions.
//!
//! A task owns the pgwire-replication client. It decodes each pgoutput
//! message, assembles transactions (a large one in parts), and sends
//! [`SourceEvent`]s through a channel bounded in events and in the changes
//! they hold (backpressure reaches the server through TCP). It also
//! forwards the durable position from [`StreamHandle::ack`] to the client,
//! which reports it in every standby status update: the only path by which
//! raa acknowledges WAL.

use super::SourceConfig;
use crate::decode::{pgoutput, DecodeError, FramingError, Transaction, TxnAssembler, TxnPart};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationEvent};
use raa_state::Lsn;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// What the stream delivers, in WAL order.
#[derive(Debug)]
pub enum SourceEvent {
    /// A committed transaction touching the tables raa reads (the rest of
    /// it, after its parts).
    Txn(Transaction),
    /// The leading changes of a large committed transaction; more parts or
    /// its [`SourceEvent::Txn`] follow.
    Part(TxnPart),
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

/// Changes the channel holds at most (beyond one event larger than this).
/// Why: it holds 256 events, and one event was a whole transaction: a large
/// one's decoded rows (about 1 KB a change) queued ahead of the pipeline.
const QUEUED_CHANGES: usize = 50_000;

/// The running stream: events out, durable positions in.
pub struct StreamHandle {
    events: mpsc::Receiver<Result<SourceEvent, StreamError>>,
    /// Changes the channel may still take; given back as events are received.
    room: Arc<Semaphore>,
    ack: watch::Sender<Lsn>,
    task: JoinHandle<()>,
}

/// The changes an event holds, as counted against [`QUEUED_CHANGES`].
fn weight(ev: &Result<SourceEvent, StreamError>) -> usize {
    let changes = match ev {
        Ok(SourceEvent::Txn(t)) => t.changes.len(),
        Ok(SourceEvent::Part(p)) => p.changes.len(),
        _ => 0,
    };
    changes.min(QUEUED_CHANGES)
}

impl StreamHandle {
    /// The next event; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<SourceEvent, StreamError>> {
        let ev = self.events.recv().await?;
        self.room.add_permits(weight(&ev));
        Some(ev)
    }

    /// Whether no event is waiting (raa is not behind the stream).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

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
            room: Arc::new(Semaphore::new(0)),
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

/// Starts streaming from `start`, acknowledging `ack` until told otherwise;
/// a large transaction comes in parts of `part_changes` changes.
pub async fn start(
    cfg: &SourceConfig,
    start: Lsn,
    ack: Lsn,
    part_changes: usize,
) -> Result<StreamHandle, StreamError> {
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
    let room = Arc::new(Semaphore::new(QUEUED_CHANGES));
    let (ack, ack_rx) = watch::channel(ack);
    let pump_room = room.clone();
    let task = tokio::spawn(async move {
        let asm = TxnAssembler::with_part_changes(part_changes);
        let result = pump(&mut client, asm, &tx, &pump_room, ack_rx).await;
        crate::ops::metrics::metrics().stream_stopped();
        client.stop();
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(StreamHandle {
        events,
        room,
        ack,
        task,
    })
}

/// Moves events from the client to the channel until the handle is dropped.
async fn pump(
    client: &mut ReplicationClient,
    mut asm: TxnAssembler,
    tx: &mpsc::Sender<Result<SourceEvent, StreamError>>,
    room: &Semaphore,
    mut ack: watch::Receiver<Lsn>,
) -> Result<(), StreamError> {
    // Changes of the open transaction already sent as parts (for its metrics).
    let mut sent_in_parts = 0;
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
                match asm.push(&msg).map_err(framing(at))? {
                    // A Commit sent as a pgoutput message rather than the
                    // client's own event.
                    Some(txn) => {
                        crate::ops::metrics::metrics().transaction_decoded(&txn, sent_in_parts);
                        sent_in_parts = 0;
                        Some(SourceEvent::Txn(txn))
                    }
                    None => asm.take_part().map(|part| {
                        sent_in_parts += part.changes.len();
                        crate::ops::metrics::metrics().changes_decoded(&part.changes);
                        SourceEvent::Part(part)
                    }),
                }
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
                crate::ops::metrics::metrics().transaction_decoded(&txn, sent_in_parts);
                sent_in_parts = 0;
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
            let ev = Ok(ev);
            // Given back by `StreamHandle::recv`; a dropped handle ends the wait.
            let permit = tokio::select! {
                permit = room.acquire_many(weight(&ev) as u32) => permit,
                () = tx.closed() => return Ok(()),
            };
            match permit {
                Ok(permit) => permit.forget(),
                Err(_) => return Ok(()),
            }
            if tx.send(ev).await.is_err() {
                return Ok(());
            }
        }
    }
}
