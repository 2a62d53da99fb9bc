//! Rebuilding a pod from the share, timed: backfill `RAA_BENCH_ROWS` IRF rows
//! (default 1,000,000) with checkpoints on, stream more traffic past the
//! checkpoint, then start a second "pod" on an empty state directory: it
//! restores the checkpoint and replays the WAL after it. Prints the times,
//! the checkpoint's size and a split of restore and replay, and verifies.
//! Run: `cargo bench --bench restore` (see the README).

mod support;

use raa::pipeline::{AckPolicy, Checkpoints, Options, Summary};
use raa::share::Share;
use std::path::Path;
use std::time::{Duration, Instant};
use support::resident::{mib, status_kib};
use support::{connect, InfoMart};

fn main() {
    support::main(1_000_000, bench);
}

/// One pod's run until caught up, checkpointing to `share`; and its seconds.
async fn run(im: &InfoMart, state: &Path, share: &Share) -> (Summary, f64) {
    let opts = Options {
        checkpoints: Some(Checkpoints {
            share: share.clone(),
            interval: Duration::from_secs(3600),
            ack: AckPolicy::Checkpointed,
        }),
        ..Options::default()
    };
    let t = Instant::now();
    let summary = im.run(state, opts).await;
    (summary, t.elapsed().as_secs_f64())
}

async fn bench(rows: usize) {
    let (im, mut g) = InfoMart::start().await;
    let mut c = connect(&im.url).await;
    g.day(&mut c, rows, 1_000).await.expect("load");

    let dir = tempfile::tempdir().expect("dir");
    let share = Share::new(&dir.path().join("share"), "raa", 3).expect("share");
    let (first, backfill_secs) = run(&im, &dir.path().join("a"), &share).await;
    let checkpoint = share
        .list()
        .expect("list")
        .into_iter()
        .next()
        .expect("a checkpoint");
    let size = std::fs::metadata(&checkpoint).expect("size").len();

    // Traffic after the checkpoint, streamed by the first pod.
    g.day(&mut c, rows / 10, 1_000).await.expect("more");
    g.chaos(&mut c, 200).await.expect("chaos");
    let (streamed, _) = run(&im, &dir.path().join("a"), &share).await;

    // Restore alone, for the split.
    let probe = raa_state::Store::open(&dir.path().join("probe")).expect("probe");
    let t = Instant::now();
    let info = probe.restore(&checkpoint).expect("restore");
    let restore_secs = t.elapsed().as_secs_f64();
    drop(probe);

    // The new pod: empty state, same share.
    let (replayed, pod_secs) = run(&im, &dir.path().join("b"), &share).await;
    let diffs = raa::verify::verify(&c, &im.settings).await.expect("verify");

    println!("facts backfilled:            {}", first.backfilled_rows());
    println!("backfill + first checkpoint: {backfill_secs:.1} s");
    println!(
        "checkpoint:                  {:.1} MiB, {} entries, LSN {}",
        size as f64 / (1 << 20) as f64,
        info.entries,
        info.lsn
    );
    println!(
        "streamed after it:           {} changes in {} transactions",
        streamed.changes, streamed.transactions
    );
    println!(
        "new pod, restore + replay:   {pod_secs:.1} s (restore alone {restore_secs:.1} s; replayed {} changes)",
        replayed.changes
    );
    println!("verify differences:          {}", diffs.len());
    println!(
        "peak resident memory:        {:.0} MiB",
        mib(status_kib("VmHWM"))
    );
    assert!(
        diffs.is_empty(),
        "aggregates differ from the SQL recomputation"
    );
}
