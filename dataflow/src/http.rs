//! The HTTP endpoint (`--http ADDR`): `/metrics`, `/health/live`, `/health/ready`, and, only
//! when an admin token is configured, `/admin/config` behind it.
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

use crate::config::Secret;
use crate::health::Health;
use crate::stats::RunStats;

/// Binds `addr` now (so a bad address fails the start) and serves in the background.
/// What `/admin/…` may show, and the token that guards it. With no token there is no admin
/// endpoint at all (404), not an open one.
#[derive(Debug, Clone)]
pub struct Admin {
    pub token: Option<Secret>,
    /// The effective configuration, secrets redacted.
    pub config: String,
}

pub fn serve(
    addr: &str,
    health: Arc<Health>,
    stats: Arc<RunStats>,
    admin: Admin,
) -> anyhow::Result<SocketAddr> {
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
            let app = match admin.token.clone() {
                None => app,
                Some(token) => {
                    let config = admin.config.clone();
                    app.route(
                        "/admin/config",
                        get(move |headers: axum::http::HeaderMap| {
                            let (token, config) = (token.clone(), config.clone());
                            async move {
                                if authorized(&headers, &token) {
                                    (StatusCode::OK, config)
                                } else {
                                    (
                                        StatusCode::UNAUTHORIZED,
                                        "a valid bearer token is required\n".to_owned(),
                                    )
                                }
                            }
                        }),
                    )
                }
            };
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

/// `Authorization: Bearer TOKEN`, compared in time independent of where it differs.
fn authorized(headers: &axum::http::HeaderMap, token: &Secret) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
