//! berth's own HTTP endpoints: Prometheus `/metrics`, `/health` (`/readyz`) and `/livez`,
//! in etcd's shapes so that etcd's probes work unchanged. Faces add theirs at the wiring
//! point (`node.rs`); this module imports no face.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use berth_proto::etcdserverpb::AlarmType;
use serde::Deserialize;

use crate::core::Core;

/// Builds the HTTP router.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(livez))
        .with_state(core)
}

async fn metrics(State(node): State<Arc<Core>>) -> impl IntoResponse {
    let body = node.metrics.render(
        &node.store,
        &node.consensus.status(),
        &node.consensus.sharing(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// How long the health check's read may take (etcd's is one second too).
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Query of `/health` and `/readyz`, as etcd takes it.
#[derive(Debug, Default, Deserialize)]
struct HealthQuery {
    /// Check with a local read instead of a linearizable one (no quorum needed).
    #[serde(default)]
    serializable: bool,
    /// An alarm type (e.g. `NOSPACE`) that does not count as unhealthy.
    #[serde(default)]
    exclude: Option<String>,
}

/// Why this member cannot serve, in etcd's words, or `None` when it can: Raft must run, a
/// leader must be known, a read must succeed in time (linearizable unless `serializable`:
/// it then needs a quorum), and no alarm may be active (but an excluded one).
async fn unhealthy(node: &Core, q: &HealthQuery) -> Option<String> {
    if let Some(why) = node.consensus.stopped() {
        return Some(format!("RAFT STOPPED: {why}"));
    }
    if node.consensus.status().leader.is_none() {
        return Some("RAFT NO LEADER".into());
    }
    let read = async {
        if !q.serializable {
            node.consensus
                .read_index()
                .await
                .map_err(|e| e.to_string())?;
        }
        // A read of the store's backend (a read transaction), as etcd's probe range is.
        node.store.blob("health").map_err(|e| e.to_string())
    };
    match tokio::time::timeout(HEALTH_READ_TIMEOUT, read).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Some(format!("RANGE ERROR: {e}")),
        Err(_) => return Some("RANGE ERROR: timed out".into()),
    }
    // After the read: a member that just restarted has then applied every alarm raised.
    let alarms: Vec<&str> = node
        .store
        .alarms()
        .iter()
        .filter_map(|a| AlarmType::try_from(a.alarm).ok())
        .map(|t| t.as_str_name())
        .filter(|name| q.exclude.as_deref() != Some(*name))
        .collect();
    if !alarms.is_empty() {
        return Some(format!("ALARM {}", alarms.join(",")));
    }
    None
}

/// etcd's `/health` (and `/readyz`): 200 `{"health":"true"}` when this member can serve
/// requests, else 503 `{"health":"false","reason":...}`, for load balancers and probes.
async fn health(State(node): State<Arc<Core>>, Query(q): Query<HealthQuery>) -> impl IntoResponse {
    match unhealthy(&node, &q).await {
        None => (
            StatusCode::OK,
            Json(serde_json::json!({"health": "true", "reason": ""})),
        ),
        Some(reason) => {
            tracing::warn!(%reason, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"health": "false", "reason": reason})),
            )
        }
    }
}

/// `/livez`: the process is alive and its Raft runs (a stopped one would not recover
/// without a restart); says nothing of quorum or alarms.
async fn livez(State(node): State<Arc<Core>>) -> impl IntoResponse {
    match node.consensus.stopped() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {why}\n"),
        ),
    }
}
