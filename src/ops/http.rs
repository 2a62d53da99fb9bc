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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: raa\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn health_ready_and_metrics() {
        let shutdown = Shutdown::default();
        let addr = serve(([127, 0, 0, 1], 0).into(), 60.0, shutdown.clone())
            .await
            .unwrap();
        assert_eq!(get(addr, "/healthz").await.0, 200);
        // No replication stream runs in this process.
        let (status, why) = get(addr, "/readyz").await;
        assert_eq!(
            (status, why.as_str()),
            (503, "not connected to the source\n")
        );
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(text.contains("raa_build_info{version="), "{text}");
        shutdown.trigger();
        let (status, why) = get(addr, "/readyz").await;
        assert_eq!((status, why.as_str()), (503, "shutting down\n"));
        assert_eq!(get(addr, "/nothing").await.0, 404);
    }
}
