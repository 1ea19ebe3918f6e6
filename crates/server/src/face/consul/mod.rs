//! Consul's HTTP API on berth's HTTP listener: the agent, catalog, health, KV and status
//! endpoints that Prometheus, py-consul, Spring Cloud Consul, Traefik, Fabio and
//! consul-template call, over the registry domain (services, checks) and the store (KV).
//!
//! Conventions, as Consul's clients depend on them (`../shared/research/registry-config.md`):
//! - every answer under `/v1` carries `X-Consul-Index` (a store revision, never 0),
//!   `X-Consul-KnownLeader` and `X-Consul-LastContact`, errors included;
//! - reads block with `?index=N&wait=D` until their result's index passes `N` or `wait`
//!   (default 5 min, at most 10 min, plus up to wait/16 jitter) passes; `?stale` reads this
//!   member's view, anything else is linearizable;
//! - errors are plain text with Consul's status codes; input JSON keys are matched in any
//!   case and in snake_case, nulls read as absent.
//!
//! - `input`: key folding and Go durations; `shapes`: the output JSON;
//! - `agent`, `catalog` (with `health`), `kv`, `session`, `status`, `txn`: the endpoints.

mod agent;
mod catalog;
mod input;
mod kv;
mod session;
mod shapes;
mod status;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_registry::{RegistryError, Topic};
use rand::Rng;
use tokio::time::Instant;

use crate::consensus::WriteError;
use crate::core::Core;
use crate::registry::RegistryFailure;

/// Longest `wait` of a blocking query (Consul's).
const MAX_WAIT: Duration = Duration::from_secs(600);
/// `wait` when a blocking query gives none (Consul's).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Largest KV value (Consul's default `kv_max_value_size`).
const MAX_VALUE: usize = 512 * 1024;

/// Longest a request waits for this member's presence when it wakes the registry.
const PRESENCE_WAIT: Duration = Duration::from_secs(3);

const X_INDEX: HeaderName = HeaderName::from_static("x-consul-index");

/// The Consul API's routes, for the HTTP listener.
pub fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .merge(agent::routes())
        .merge(catalog::routes())
        .merge(kv::routes())
        .merge(session::routes())
        .merge(status::routes())
        .merge(txn::routes())
        .fallback(unknown)
        .layer(axum::middleware::from_fn_with_state(core.clone(), meta))
        .with_state(core)
}

async fn unknown(req: Request) -> ApiError {
    if req.uri().path().starts_with("/v1/") {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "berth does not serve {} (not part of its Consul API)",
                req.uri().path()
            ),
        )
    } else {
        ApiError::new(StatusCode::NOT_FOUND, "404 page not found")
    }
}

/// Adds Consul's headers to every `/v1` answer and records the request's metrics.
async fn meta(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let consul = req.uri().path().starts_with("/v1/");
    let method = req.method().clone();
    let uri = req.uri().clone();
    let start = std::time::Instant::now();
    if consul {
        // The first Consul request here wakes the registry: this member's presence (its
        // node and serfHealth) is written before the request is served.
        core.registry.wake_up();
        core.registry.until_established(PRESENCE_WAIT).await;
    }
    let mut resp = next.run(req).await;
    if !consul {
        return resp;
    }
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), elapsed = ?start.elapsed(), "consul api");
    let status = core.consensus.status();
    let h = resp.headers_mut();
    if !h.contains_key(X_INDEX) {
        h.insert(X_INDEX, HeaderValue::from(core.store.revision().max(1)));
    }
    h.insert(
        HeaderName::from_static("x-consul-knownleader"),
        HeaderValue::from_static(if status.leader.is_some() {
            "true"
        } else {
            "false"
        }),
    );
    // A member applies what its leader sends as it comes: no lag is tracked per read.
    h.insert(
        HeaderName::from_static("x-consul-lastcontact"),
        HeaderValue::from_static("0"),
    );
    h.insert(
        HeaderName::from_static("x-consul-default-acl-policy"),
        HeaderValue::from_static("allow"),
    );
    core.metrics.observe_consul(
        route.as_deref().unwrap_or("unmatched"),
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

/// An error answer: plain text, Consul's status code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
        }
    }

    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }

    fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            self.msg,
        )
            .into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::Refused(berth_store::StoreError::NoSpace) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "database space exceeded: writes are refused until space is freed",
            ),
            WriteError::NotLeader => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl From<RegistryFailure> for ApiError {
    fn from(e: RegistryFailure) -> ApiError {
        match e {
            RegistryFailure::Refused(RegistryError::NotFound(m)) => ApiError::not_found(m),
            RegistryFailure::Refused(RegistryError::Invalid(m)) => ApiError::bad(m),
            RegistryFailure::Refused(e @ RegistryError::Corrupt { .. }) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            RegistryFailure::Write(w) => w.into(),
        }
    }
}

impl From<crate::auth::AuthFailure> for ApiError {
    fn from(e: crate::auth::AuthFailure) -> ApiError {
        match e {
            crate::auth::AuthFailure::Write(w) => w.into(),
            crate::auth::AuthFailure::Auth(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "Permission denied")
            }
        }
    }
}

/// A request's query parameters, in order (Consul repeats some: `tag`, `node-meta`).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Result<Params, ApiError> {
        match raw {
            None => Ok(Params::default()),
            Some(q) => serde_urlencoded::from_str(&q)
                .map(Params)
                .map_err(|e| ApiError::bad(format!("invalid query: {e}"))),
        }
    }

    /// True when the parameter is present, with any value (Consul's flags).
    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(n, _)| n == k)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, k: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// A Go `strconv.ParseBool` parameter; `absent` when not given, true when given empty.
    fn bool(&self, k: &str, absent: bool) -> Result<bool, ApiError> {
        match self.get(k) {
            None => Ok(absent),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(ApiError::bad(format!("invalid value {v:?} for {k}"))),
        }
    }

    fn u64(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad(format!("Invalid {k}: {v:?} is not a number"))),
        }
    }

    /// The parameters that shape a read's result (all but blocking, consistency and
    /// credentials), as a canonical string.
    fn filters(&self) -> String {
        const IGNORED: &[&str] = &[
            "index",
            "wait",
            "stale",
            "consistent",
            "token",
            "dc",
            "cached",
        ];
        let mut out = String::new();
        for (k, v) in &self.0 {
            if !IGNORED.contains(&k.as_str()) {
                out.push_str(k);
                out.push('=');
                out.push_str(v);
                out.push('&');
            }
        }
        out
    }

    /// `node-meta=k:v` filters.
    fn node_meta(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.all("node-meta")
            .map(|kv| match kv.split_once(':') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Ok((kv.to_string(), String::new())),
            })
            .collect()
    }
}

/// The blocking and consistency options of a read.
struct ReadOpts {
    index: i64,
    wait: Duration,
    stale: bool,
}

impl ReadOpts {
    fn parse(q: &Params) -> Result<ReadOpts, ApiError> {
        let index = q.u64("index")?.unwrap_or(0);
        let index = i64::try_from(index).map_err(|_| ApiError::bad("Invalid index: too large"))?;
        let wait = match q.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(w) => input::go_duration(w)
                .map_err(|e| ApiError::bad(format!("Invalid wait time: {e}")))?,
        }
        .min(MAX_WAIT);
        if q.has("stale") && q.has("consistent") {
            return Err(ApiError::bad(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        Ok(ReadOpts {
            index,
            wait,
            stale: q.has("stale"),
        })
    }

    /// When a blocking read gives up: after `wait` plus up to wait/16 of jitter.
    fn deadline(&self) -> Instant {
        let jitter_cap = self.wait.as_millis() as u64 / 16;
        let jitter = if jitter_cap > 0 {
            rand::rng().random_range(0..=jitter_cap)
        } else {
            0
        };
        Instant::now() + self.wait + Duration::from_millis(jitter)
    }
}

/// Refuses an index this cluster has not reached (after catching up with the leader, so a
/// lagging member does not refuse an index another member handed out).
async fn check_index(core: &Core, index: i64) -> Result<(), ApiError> {
    if index <= core.store.revision() {
        return Ok(());
    }
    core.consensus.read_index().await?;
    let now = core.store.revision();
    if index > now {
        return Err(ApiError::bad(format!(
            "index {index} is ahead of this cluster's current index {now}: it was not handed out by this cluster"
        )));
    }
    Ok(())
}

/// Runs the blocking and consistency part of a registry read on `topic`: waits while the
/// topic's index is still the given one, then makes the view fresh unless `?stale`.
async fn block_on(core: &Core, opts: &ReadOpts, topic: &Topic) -> Result<(), ApiError> {
    if opts.index > 0 {
        check_index(core, opts.index).await?;
        core.metrics.consul_blocked.inc();
        let woke = core.registry.wait(topic, opts.index, opts.deadline()).await;
        core.metrics.consul_blocked.dec();
        if let Some(after) = woke {
            core.metrics.consul_wake.observe(after.as_secs_f64());
        }
    }
    if !opts.stale {
        core.registry.sync(core).await?;
    }
    Ok(())
}

/// A JSON answer with its index.
fn json_reply(index: i64, body: &serde_json::Value) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(X_INDEX, HeaderValue::from(index.max(1)));
    resp
}

/// A JSON answer already rendered, with its index.
fn bytes_reply(index: i64, body: bytes::Bytes) -> Response {
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    resp.headers_mut()
        .insert(X_INDEX, HeaderValue::from(index.max(1)));
    resp
}

/// Consul's `true` / `false` write answers.
fn bool_reply(ok: bool) -> Response {
    axum::Json(ok).into_response()
}

/// The credential a Consul request carries (`X-Consul-Token`, `Authorization: Bearer`, or
/// the legacy `?token=`): a berth auth token.
fn credential(headers: &axum::http::HeaderMap, q: &Params) -> crate::auth::Credential {
    crate::auth::Credential::from_http(
        headers,
        &["x-consul-token", "authorization"],
        q.get("token"),
    )
}

/// While berth's auth is on, registry writes need an authenticated user (a Consul token that
/// is a berth auth token); KV is checked per key in `kv.rs`.
fn require_user(core: &Core, headers: &axum::http::HeaderMap, q: &Params) -> Result<(), ApiError> {
    let p = core.auth.principal(&credential(headers, q))?;
    p.authenticated()?;
    Ok(())
}
