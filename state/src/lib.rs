//! raa's incremental aggregate state, kept in an embedded `sled` store.
//!
//! Why this state exists: with PostgreSQL's default REPLICA IDENTITY a delete
//! carries only the primary key and an update only the new row. To retract a
//! fact's old contribution in O(1) raa must remember, per fact, what it added.
//! Next to those per-fact records the store keeps the aggregate accumulators
//! and the last source position whose effects they hold.
//!
//! Invariants:
//! - Everything lives in one sled tree, so one [`Batch`] (many source
//!   transactions' worth of puts and removes, plus the new applied LSN) is
//!   applied atomically: [`Store::commit`] returns once it is flushed,
//!   [`Store::submit`] once a background writer has it (reads see it at
//!   once; the applied LSN moves when it is flushed). A large batch goes
//!   through a redo record, so it is applied one write at a time beside
//!   reads, not under sled's process-wide batch lock, and a crash mid-way is
//!   finished on the next open.
//! - A batch too large for memory is built on disk as a [`Provisional`]
//!   batch (a second tree of the same database) and committed from there,
//!   atomically through a marker, by [`Store::commit_provisional`].
//! - Every value goes through [`codec`], which carries a format version: the
//!   only place that knows the encoding (bincode 2, no longer maintained).

pub mod checkpoint;
pub mod codec;
mod lsn;
mod provisional;
mod reclaim;
mod store;
mod writer;

pub use checkpoint::{CheckpointError, CheckpointInfo};
pub use codec::{CodecError, FORMAT_VERSION};
pub use lsn::{Lsn, ParseLsnError};
pub use provisional::Provisional;
pub use store::{Batch, Space, StateError, StateKey, Store};
