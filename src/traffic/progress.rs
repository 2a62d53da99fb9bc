//! Progress of a load: a bar on a terminal, a log line every few seconds otherwise.

use super::Done;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A progress bar on a terminal, a log line every few seconds otherwise.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    last_log: std::cell::Cell<Instant>,
}

impl Progress {
    pub(super) fn new(duration: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(duration.as_secs().max(1));
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            last_log: std::cell::Cell::new(Instant::now()),
        }
    }

    pub(super) fn tick(&self, done: &Done, elapsed: Duration) {
        let rate = done.changes as f64 / elapsed.as_secs_f64().max(1e-9);
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_secs());
                bar.set_message(format!(
                    "{} calls, {} changes, {rate:.0}/s",
                    done.calls, done.changes
                ));
            }
            None if self.last_log.get().elapsed() >= Duration::from_secs(5) => {
                self.last_log.set(Instant::now());
                tracing::info!(
                    calls = done.calls,
                    changes = done.changes,
                    rate = format!("{rate:.0}/s"),
                    "traffic"
                );
            }
            None => {}
        }
    }

    pub(super) fn finish(&self, done: &Done) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("{} calls, {} changes", done.calls, done.changes));
        }
    }
}
