//! Logging through `tracing`: human-readable (coloured on a terminal) or JSON
//! lines for log collectors, filtered by `RUST_LOG` (default `info`). Spans
//! carry LSNs; row values and secrets are never logged (the source
//! configuration's `Debug` hides the password).

use super::config::LogFormat;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;

static JSON: AtomicBool = AtomicBool::new(false);

/// Prints an operator-facing report line (a run summary): to stderr as is,
/// or as an `info` event when logs are JSON, so every stderr line parses.
pub fn report(line: &str) {
    if JSON.load(Ordering::Relaxed) {
        tracing::info!("{line}");
    } else {
        eprintln!("{line}");
    }
}

pub fn init(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
