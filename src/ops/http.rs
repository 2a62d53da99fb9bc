//! The operations HTTP server: `/metrics` (Prometheus text), `/healthz`
//! (the process answers) and `/readyz` (streaming from the source, lag under
//! the bound, not shutting down; 503 otherwise, with the reason).
//!
//! It runs beside the pipeline on the same runtime and holds no lock the
//! pipeline waits on; it ends with the process.

use super::metrics::metrics;
use super::shutdown::Shutdown;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics, /healthz and /readyz")]
pub struct ServeError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` and serves in a background task; returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    ready_max_lag_seconds: f64,
    shutdown: Shutdown,
) -> Result<SocketAddr, ServeError> {
    let err = |source| ServeError { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || ready(ready_max_lag_seconds, shutdown.clone())),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
}

async fn ready(max_lag: f64, shutdown: Shutdown) -> (StatusCode, String) {
    if shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match metrics().ready(max_lag) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
