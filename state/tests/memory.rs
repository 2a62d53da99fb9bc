//! The store's memory stays bounded as the state outgrows sled's page cache.
//!
//! Its own test binary: it reads the process's resident set, which tests
//! running beside it in one process would move.

use raa_state::{Batch, Lsn, Space, StateKey, Store};

/// Spread over the key space, as accumulator and fact keys are.
struct Key(u64);

impl StateKey for Key {
    const SPACE: Space = Space::Accum;
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        out.extend_from_slice(&[7; 16]);
    }
}

fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024
}

const ENTRIES: u64 = 400_000;
/// Transactions of this size are written as one sled batch each, as a live
/// stream of small transactions is.
const BATCH: u64 = 1_000;
/// sled's cache, far smaller than the state, so pages are evicted all along.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// The entries take about 45 MiB. Measured growth when writing them: 65–74
/// MiB with the store freeing what sled leaves to the epoch collector, 555–750
/// without.
const GROWTH_LIMIT_MIB: u64 = 250;
/// Measured growth when restoring them after the live store is dropped: 2
/// MiB, 11 without the restore's own freeing (its sorted inserts leave little).
const RESTORE_GROWTH_LIMIT_MIB: u64 = 40;

#[test]
fn writing_and_restoring_a_state_larger_than_the_cache_frees_what_sled_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let before = resident_mib();

    let store = Store::open_with_cache(&dir.path().join("live"), CACHE_BYTES).unwrap();
    let mut next = 0;
    let mut lsn = 0x100;
    while next < ENTRIES {
        let mut batch = Batch::default();
        for k in next..(next + BATCH).min(ENTRIES) {
            batch.put(&Key(k), &vec![k as i64; 10]).unwrap();
        }
        next += BATCH;
        lsn += 1;
        store.submit(batch, Lsn(lsn)).unwrap();
    }
    store.wait().unwrap();
    let written = resident_mib();
    assert!(
        written.saturating_sub(before) < GROWTH_LIMIT_MIB,
        "writing {ENTRIES} entries grew the resident set from {before} to {written} MiB"
    );
    assert_eq!(
        store.count_keys(),
        ENTRIES as usize + 2,
        "entries, format, applied LSN"
    );

    let checkpoint = dir.path().join("state.ckpt");
    store.checkpoint(&checkpoint, "system", "slot", 0).unwrap();
    drop(store);
    // What the live store freed is reused by the restore, not returned to
    // the system: the restore is measured from here.
    let dropped = resident_mib();
    let restored = Store::open_with_cache(&dir.path().join("restored"), CACHE_BYTES).unwrap();
    restored.restore(&checkpoint).unwrap();
    let after = resident_mib();
    assert!(
        after.saturating_sub(dropped) < RESTORE_GROWTH_LIMIT_MIB,
        "restoring {ENTRIES} entries grew the resident set from {dropped} to {after} MiB"
    );
    assert_eq!(restored.applied_lsn(), Some(Lsn(lsn)));
    let v: Option<Vec<i64>> = restored.get(&Key(ENTRIES - 1)).unwrap();
    assert_eq!(v, Some(vec![ENTRIES as i64 - 1; 10]));
}
