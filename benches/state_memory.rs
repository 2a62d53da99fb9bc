//! Resident memory against the size of the state: `RAA_BENCH_ENTRIES`
//! distinct state entries (default 4,000,000) written through the store in
//! batches, as a live stream writes them, with sled's cache at
//! `RAA_BENCH_CACHE_MB` (default 32, small so that the cache is full early
//! and what grows past it shows). Prints the resident set at each million
//! and its growth per million entries over the second half of the run.
//!
//! Why: sled 0.34 keeps metadata for every page of the tree in memory, so
//! resident memory grows with the state however small its cache is. The
//! issue-6 bound is 512 MiB with 10M facts in the state, about 80M entries;
//! the line extrapolating to that size says how far this store is from it.
//! Run: `cargo bench --bench state_memory` (or `scripts/bench.sh --only state_memory`).

// The raa library sets the global allocator (jemalloc): link it, so this
// measures the allocator raa runs with.
extern crate raa;

#[path = "support/resident.rs"]
mod resident;

use raa_state::{Batch, Lsn, Space, StateKey, Store};
use resident::{mib, status_kib};
use std::time::Instant;

/// The bound on resident memory.
const BOUND_MIB: f64 = 512.0;
/// State entries of 10M facts (README, "Memory of the state").
const TEN_M_FACTS_ENTRIES: f64 = 80e6;
/// Entries a store batch: a few live transactions' worth.
const BATCH: u64 = 10_000;

/// Spread over the key space, as accumulator and fact keys are; 24 bytes,
/// as an accumulator key of a few dimensions is.
struct Key(u64);

impl StateKey for Key {
    const SPACE: Space = Space::Accum;
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        out.extend_from_slice(&self.0.to_be_bytes());
        out.extend_from_slice(&[7; 8]);
    }
}

fn main() {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let entries = env("RAA_BENCH_ENTRIES", 4_000_000);
    if entries == 0 {
        eprintln!("RAA_BENCH_ENTRIES must be at least 1");
        std::process::exit(2);
    }
    let cache_mb = env("RAA_BENCH_CACHE_MB", 32);
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open_with_cache(&dir.path().join("state"), cache_mb << 20).expect("store");

    let t = Instant::now();
    let before = mib(status_kib("VmRSS"));
    println!("entries: {entries}, sled cache {cache_mb} MiB, resident before {before:.0} MiB");
    // (entries written, resident MiB) at each million and at the end.
    let mut marks = Vec::new();
    let mut next = 0;
    while next < entries {
        let end = (next + BATCH).min(entries);
        let mut batch = Batch::default();
        for k in next..end {
            // About the size of an encoded accumulator.
            batch.put(&Key(k), &[k as i64; 12]).expect("encode");
        }
        next = end;
        store.submit(batch, Lsn(0x100 + next)).expect("submit");
        if next % 1_000_000 == 0 || next == entries {
            store.wait().expect("write");
            let mib = mib(status_kib("VmRSS"));
            println!(
                "  {next:>11} entries: {mib:>6.0} MiB resident ({:.0} s)",
                t.elapsed().as_secs_f64()
            );
            marks.push((next, mib));
        }
    }
    // Growth over the second half, when the cache has long been full.
    let first = marks.get(marks.len().saturating_sub(1) / 2);
    if let (Some(&(n1, m1)), Some(&(n2, m2))) = (first, marks.last().filter(|l| Some(*l) != first))
    {
        let per_million = (m2 - m1) / ((n2 - n1) as f64 / 1e6);
        let projected = m2 + per_million * (TEN_M_FACTS_ENTRIES - n2 as f64) / 1e6;
        let verdict = if projected < BOUND_MIB {
            "met"
        } else {
            "MISSED"
        };
        println!("growth past the cache:  {per_million:.1} MiB a million entries");
        println!(
            "at 80M entries (10M facts), extrapolated: {projected:.0} MiB; bound {BOUND_MIB:.0} MiB: {verdict}"
        );
    }
    assert_eq!(
        store.count_keys(),
        entries as usize + 2,
        "entries, format and applied LSN"
    );
}
