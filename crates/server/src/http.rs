//! berth's HTTP listener: Prometheus `/metrics`, `/health` and `/version`. Later issues add the
//! registry/config API and the console here.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use berth_proto::etcdserverpb::RangeRequest;

use crate::api::maintenance::ETCD_VERSION;
use crate::api::Node;

/// Builds the HTTP router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/version", get(version))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = node.metrics.render(
        &node.store,
        &node.proposer.status(),
        &node.proposer.sharing(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Healthy when the store answers a read, as etcd's `/health` checks a range.
async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let probe = RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    match node.store.range(&probe) {
        Ok(_) => (
            StatusCode::OK,
            Json(serde_json::json!({"health": "true", "reason": ""})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"health": "false", "reason": e.to_string()})),
        ),
    }
}

async fn version() -> impl IntoResponse {
    Json(serde_json::json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_VERSION,
        "berth": env!("CARGO_PKG_VERSION"),
    }))
}
