//! `/v1/status/*`: the Raft leader and peers, as `host:port` of their peer URLs.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::core::Core;

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/v1/status/leader", get(leader))
        .route("/v1/status/peers", get(peers))
}

fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string()
}

async fn leader(State(core): State<Arc<Core>>) -> Response {
    let leader = core.consensus.status().leader;
    let addr = leader
        .and_then(|id| core.consensus.members().into_iter().find(|m| m.id == id))
        .and_then(|m| m.member.peer_urls.first().map(|u| host_port(u)))
        .unwrap_or_default();
    axum::Json(addr).into_response()
}

async fn peers(State(core): State<Arc<Core>>) -> Response {
    let peers: Vec<String> = core
        .consensus
        .members()
        .into_iter()
        .filter(|m| !m.is_learner)
        .filter_map(|m| m.member.peer_urls.first().map(|u| host_port(u)))
        .collect();
    axum::Json(peers).into_response()
}
