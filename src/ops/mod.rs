//! Operations: what runs beside the data path — configuration, logging,
//! metrics and their HTTP server, shutdown.

pub mod config;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
