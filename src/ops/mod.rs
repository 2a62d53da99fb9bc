//! Operations: what runs beside the data path (shutdown, logging).

pub mod shutdown;
pub mod telemetry;
