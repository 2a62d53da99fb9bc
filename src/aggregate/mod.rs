//! Aggregate: typed source transactions in, changed aggregate rows out.
//!
//! - [`catalog`] declares the families; [`family`] is the declaration language
//!   and renders the SQL that follows from it.
//! - [`bucket`] places instants in time buckets (calendar, zones, DST);
//!   [`calendar`] gives the same answers from a per-zone cache.
//! - [`engine`] applies changes to the state with exact retraction;
//!   [`accum`] is one output row's arithmetic, [`keys`] the state's key layout.
//! - [`interval`] splits a period across the buckets it overlaps; [`sql`]
//!   renders the declarations to DDL and `verify`'s reference queries.

pub mod accum;
pub mod bucket;
pub mod calendar;
pub mod catalog;
pub mod engine;
pub mod family;
pub mod interval;
pub mod keys;
pub mod sql;

pub use bucket::Level;
pub use calendar::Calendar;
pub use engine::{
    spilled_rows, AggregateError, Engine, FactRecord, Output, OutputRow, Settings, Work,
    WORK_ENTRIES,
};
