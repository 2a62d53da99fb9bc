//! Logging through `tracing`: human-readable (coloured on a terminal) or JSON
//! lines for log collectors, filtered by `RUST_LOG` (default `info`). Spans
//! carry LSNs; row values and secrets are never logged (the source
//! configuration's `Debug` hides the password).

use super::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(format: LogFormat) {
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
