//! The HTTP endpoint (`--http ADDR`): `/metrics`, `/health/live` and `/health/ready`.
//!
//! It runs on its own thread with a small tokio runtime, apart from the timely workers, so a
//! busy or blocked worker never delays a health check.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::health::Health;
use crate::stats::RunStats;

/// Binds `addr` now (so a bad address fails the start) and serves in the background.
pub fn serve(addr: &str, health: Arc<Health>, stats: Arc<RunStats>) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr =
        addr.parse().with_context(|| format!("--http {addr}: not an address like 127.0.0.1:9898"))?;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("--http {addr}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("http".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "the HTTP endpoint cannot start");
                return;
            }
        };
        runtime.block_on(async move {
            let app = Router::new()
                .route("/health/live", get(|| async { Json(serde_json::json!({"status": "live"})) }))
                .route("/health/ready", get(move || ready(Arc::clone(&health))))
                .route("/metrics", get(move || metrics(Arc::clone(&stats))));
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(error) = axum::serve(listener, app).await {
                        tracing::error!(%error, "the HTTP endpoint stopped");
                    }
                }
                Err(error) => tracing::error!(%error, "the HTTP endpoint cannot start"),
            }
        });
    })?;
    Ok(bound)
}

async fn metrics(stats: Arc<RunStats>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], stats.render())
}

async fn ready(health: Arc<Health>) -> impl IntoResponse {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reasons": reasons})),
        ),
    }
}
