//! raa: the Reporting and Analytics Aggregates layer under GCXI, in real time.
//!
//! The data path, one module per stage:
//!
//! ```text
//!  Info Mart (PostgreSQL)                                        Info Mart
//!  ─ WAL ─▶ source ─bytes─▶ decode ─Transaction─▶ aggregate ─rows─▶ sink ─▶ ag2_* tables
//!            (slot,          (pgoutput,            (families,        (upserts +
//!             acks)           framing)              engine)           progress row)
//!                                                     │
//!                                                   state (raa-state crate: sled)
//! ```
//!
//! [`pipeline`] wires the stages and argues why its acknowledgements are safe;
//! [`ops`] holds what runs beside them. Recovery: [`backfill`] aggregates the
//! facts that predate the slot from its exported snapshot; [`share`] writes
//! and restores checkpoints on the GCXI share; [`replay`] replays WAL after a
//! checkpoint into a scratch state; [`reaggregate`] rebuilds a time range
//! from the facts. [`schema`] is the Info Mart subset raa
//! reads; [`verify`] recomputes the aggregates in SQL to check them;
//! [`embedded`] and [`loadgen`] give a throwaway database and traffic for the
//! demo, the tests and the benchmarks; [`traffic`] live traffic for load tests.

pub mod aggregate;
pub mod backfill;
pub mod decode;
pub mod embedded;
pub mod loadgen;
pub mod ops;
pub mod pipeline;
pub mod reaggregate;
pub mod replay;
pub mod schema;
pub mod share;
pub mod sink;
pub mod source;
pub mod traffic;
pub mod verify;

pub use raa_state::Lsn;

/// jemalloc instead of glibc's malloc, for every binary that links raa (the
/// `raa` command, its tests and benchmarks): catch-up took a quarter less
/// time with it, and glibc kept what a large batch freed in per-thread
/// arenas (README, Benchmarks, session 10).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: background threads give freed
/// memory back to the system on their own, ten seconds after it is freed
/// (jemalloc's decay), instead of only when the process next allocates, so
/// the resident set follows what raa holds (jemalloc's TUNING.md suggests
/// them for services). `_RJEM_MALLOC_CONF` in the environment overrides it.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a static, NUL-terminated string.
    Some(unsafe { &*c"background_thread:true".as_ptr() });

/// The Info Mart subset DDL (tables raa reads), for tests, demos and load tests.
pub const INFOMART_SQL: &str = include_str!("../sql/infomart.sql");
