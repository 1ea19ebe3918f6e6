//! etcd's JSON gateway on the client port, beside gRPC (etcd serves both on 2379): `POST
//! /v3/<service>/<method>` with a JSON request, answered in JSON, for HTTP clients such as
//! Patroni and etcd3gw. Each route decodes JSON into the gRPC request message and calls the
//! very service method the gRPC side calls, so there is no second copy of any logic.
//!
//! The wire format is grpc-gateway v1's, which etcd 3.4 uses: proto3 JSON with proto field
//! names, 64-bit integers as strings, bytes as base64 and enums by name, defaults omitted
//! (`berth-proto`'s pbjson impls); errors `{"error","code","message"}` with the HTTP status of
//! the gRPC code; streams (`/v3/watch`, `/v3/lease/keepalive`, `/v3/maintenance/snapshot`) as
//! one `{"result":…}` object per line, requests streamed as consecutive JSON objects. The
//! `Authorization` header carries a token as the gRPC `token` metadata does.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use berth_proto::etcdserverpb::auth_server::Auth as _;
use berth_proto::etcdserverpb::cluster_server::Cluster as _;
use berth_proto::etcdserverpb::kv_server::Kv as _;
use berth_proto::etcdserverpb::lease_server::Lease as _;
use berth_proto::etcdserverpb::maintenance_server::Maintenance as _;
use berth_proto::etcdserverpb::*;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use super::auth::AuthService;
use super::cluster::ClusterService;
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::MaintenanceService;
use super::watch::WatchService;
use crate::core::Core;

/// The largest request stream buffer held while a JSON object is incomplete.
const MAX_PENDING: usize = 4 << 20;

/// Every service, built once for the gateway.
struct Services {
    core: Arc<Core>,
    kv: KvService,
    lease: LeaseService,
    watch: WatchService,
    cluster: ClusterService,
    maintenance: MaintenanceService,
    auth: AuthService,
}

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A unary error as grpc-gateway v1 writes it.
fn error(status: &Status) -> Response {
    let body = serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
    });
    (http_status(status.code()), axum::Json(body)).into_response()
}

/// An error inside a stream, as grpc-gateway v1 writes it.
fn stream_error(status: &Status) -> Bytes {
    let code = http_status(status.code());
    let mut line = serde_json::json!({
        "error": {
            "grpc_code": status.code() as i32,
            "http_code": code.as_u16(),
            "message": status.message(),
            "http_status": code.canonical_reason().unwrap_or(""),
        }
    })
    .to_string();
    line.push('\n');
    line.into()
}

fn result_line<T: Serialize>(msg: &T) -> Bytes {
    match serde_json::to_string(&serde_json::json!({ "result": msg })) {
        Ok(mut line) => {
            line.push('\n');
            line.into()
        }
        Err(e) => stream_error(&Status::internal(e.to_string())),
    }
}

/// A JSON request body (empty: the message's defaults), as a gRPC request carrying the
/// caller's token.
fn request<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<tonic::Request<T>, Status> {
    let msg = if body.iter().all(u8::is_ascii_whitespace) {
        T::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Status::invalid_argument(format!("invalid JSON request: {e}")))?
    };
    Ok(with_token(headers, msg))
}

/// `msg` as a gRPC request carrying the `Authorization` header's token, if any.
fn with_token<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
    {
        req.metadata_mut().insert("authorization", token);
    }
    req
}

/// Runs one unary call and writes its answer.
async fn unary<Req, Resp, Fut>(
    headers: HeaderMap,
    body: Bytes,
    call: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match request::<Req>(&headers, &body) {
        Ok(r) => r,
        Err(s) => return error(&s),
    };
    match call(req).await {
        Ok(resp) => axum::Json(resp.into_inner()).into_response(),
        Err(s) => error(&s),
    }
}

/// A streamed response: one `{"result":…}` line per message, errors as error lines.
fn streamed<T: Serialize + Send + 'static>(
    items: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let lines = items.map(|item| {
        Ok::<_, std::convert::Infallible>(match item {
            Ok(msg) => result_line(&msg),
            Err(s) => stream_error(&s),
        })
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Splits a request body into consecutive JSON messages as they arrive (a client may keep
/// the body open and send more, as etcd's gateway reads it).
fn json_messages<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
    let chunks = body.into_data_stream();
    futures::stream::unfold(
        (chunks, Vec::<u8>::new(), false),
        |(mut chunks, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                let start = buf.iter().position(|b| !b.is_ascii_whitespace());
                if let Some(start) = start {
                    let mut it =
                        serde_json::Deserializer::from_slice(&buf[start..]).into_iter::<T>();
                    match it.next() {
                        Some(Ok(msg)) => {
                            let used = start + it.byte_offset();
                            buf.drain(..used);
                            return Some((Ok(msg), (chunks, buf, false)));
                        }
                        Some(Err(e)) if !e.is_eof() => {
                            let s = Status::invalid_argument(format!("invalid JSON request: {e}"));
                            return Some((Err(s), (chunks, buf, true)));
                        }
                        _ => {}
                    }
                } else {
                    buf.clear();
                }
                if buf.len() > MAX_PENDING {
                    let s = Status::invalid_argument("request message too large");
                    return Some((Err(s), (chunks, buf, true)));
                }
                match chunks.next().await {
                    Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
                    // The client closed its side (or it failed): no more requests.
                    Some(Err(_)) | None => return None,
                }
            }
        },
    )
}

macro_rules! unary_route {
    ($router:ident, $svcs:ident, $path:literal, $field:ident . $method:ident) => {{
        let s = $svcs.clone();
        $router = $router.route(
            $path,
            post(move |headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    unary(
                        headers,
                        body,
                        |req| async move { s.$field.$method(req).await },
                    )
                    .await
                }
            }),
        );
    }};
}

/// The gateway's routes over `core`'s services.
pub fn routes(core: Arc<Core>) -> axum::Router {
    let progress = std::time::Duration::from_millis(core.config.watch_progress_notify_interval_ms);
    let svcs = Arc::new(Services {
        core: core.clone(),
        kv: KvService::new(core.clone()),
        lease: LeaseService::new(core.clone()),
        watch: WatchService::new(core.clone(), progress),
        cluster: ClusterService::new(core.clone()),
        maintenance: MaintenanceService::new(core.clone()),
        auth: AuthService::new(core),
    });
    let mut r = axum::Router::new();
    unary_route!(r, svcs, "/v3/kv/range", kv.range);
    unary_route!(r, svcs, "/v3/kv/put", kv.put);
    unary_route!(r, svcs, "/v3/kv/deleterange", kv.delete_range);
    unary_route!(r, svcs, "/v3/kv/txn", kv.txn);
    unary_route!(r, svcs, "/v3/kv/compaction", kv.compact);
    unary_route!(r, svcs, "/v3/lease/grant", lease.lease_grant);
    unary_route!(r, svcs, "/v3/lease/revoke", lease.lease_revoke);
    unary_route!(r, svcs, "/v3/kv/lease/revoke", lease.lease_revoke);
    unary_route!(r, svcs, "/v3/lease/timetolive", lease.lease_time_to_live);
    unary_route!(r, svcs, "/v3/kv/lease/timetolive", lease.lease_time_to_live);
    unary_route!(r, svcs, "/v3/lease/leases", lease.lease_leases);
    unary_route!(r, svcs, "/v3/kv/lease/leases", lease.lease_leases);
    unary_route!(r, svcs, "/v3/cluster/member/add", cluster.member_add);
    unary_route!(r, svcs, "/v3/cluster/member/remove", cluster.member_remove);
    unary_route!(r, svcs, "/v3/cluster/member/update", cluster.member_update);
    unary_route!(r, svcs, "/v3/cluster/member/list", cluster.member_list);
    unary_route!(
        r,
        svcs,
        "/v3/cluster/member/promote",
        cluster.member_promote
    );
    unary_route!(r, svcs, "/v3/maintenance/alarm", maintenance.alarm);
    unary_route!(r, svcs, "/v3/maintenance/status", maintenance.status);
    unary_route!(
        r,
        svcs,
        "/v3/maintenance/defragment",
        maintenance.defragment
    );
    unary_route!(r, svcs, "/v3/maintenance/hash", maintenance.hash);
    unary_route!(
        r,
        svcs,
        "/v3/maintenance/transfer-leadership",
        maintenance.move_leader
    );
    unary_route!(r, svcs, "/v3/auth/enable", auth.auth_enable);
    unary_route!(r, svcs, "/v3/auth/disable", auth.auth_disable);
    unary_route!(r, svcs, "/v3/auth/status", auth.auth_status);
    unary_route!(r, svcs, "/v3/auth/authenticate", auth.authenticate);
    unary_route!(r, svcs, "/v3/auth/user/add", auth.user_add);
    unary_route!(r, svcs, "/v3/auth/user/get", auth.user_get);
    unary_route!(r, svcs, "/v3/auth/user/list", auth.user_list);
    unary_route!(r, svcs, "/v3/auth/user/delete", auth.user_delete);
    unary_route!(r, svcs, "/v3/auth/user/changepw", auth.user_change_password);
    unary_route!(r, svcs, "/v3/auth/user/grant", auth.user_grant_role);
    unary_route!(r, svcs, "/v3/auth/user/revoke", auth.user_revoke_role);
    unary_route!(r, svcs, "/v3/auth/role/add", auth.role_add);
    unary_route!(r, svcs, "/v3/auth/role/get", auth.role_get);
    unary_route!(r, svcs, "/v3/auth/role/list", auth.role_list);
    unary_route!(r, svcs, "/v3/auth/role/delete", auth.role_delete);
    unary_route!(r, svcs, "/v3/auth/role/grant", auth.role_grant_permission);
    unary_route!(r, svcs, "/v3/auth/role/revoke", auth.role_revoke_permission);

    let s = svcs.clone();
    r = r.route(
        "/v3/watch",
        post(move |headers: HeaderMap, body: Body| {
            let s = s.clone();
            async move {
                let head = with_token(&headers, ());
                let cred = super::credential(&head);
                let frames = s.watch.open(cred, json_messages::<WatchRequest>(body));
                streamed(frames.map(|f| {
                    f.and_then(|f| {
                        f.to_message()
                            .map_err(|e| Status::internal(format!("watch frame: {e}")))
                    })
                }))
            }
        }),
    );
    let s = svcs.clone();
    r = r.route(
        "/v3/lease/keepalive",
        post(move |headers: HeaderMap, body: Body| {
            let s = s.clone();
            async move {
                let head = with_token(&headers, ());
                if let Err(e) = super::principal(&s.core, &head)
                    .and_then(|p| p.authenticated().map_err(Status::from))
                {
                    return error(&e);
                }
                streamed(
                    s.lease
                        .keep_alive(json_messages::<LeaseKeepAliveRequest>(body)),
                )
            }
        }),
    );
    let s = svcs;
    r = r.route(
        "/v3/maintenance/snapshot",
        post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                let req = match request::<SnapshotRequest>(&headers, &body) {
                    Ok(r) => r,
                    Err(e) => return error(&e),
                };
                match s.maintenance.snapshot(req).await {
                    Ok(stream) => streamed(stream.into_inner()),
                    Err(e) => error(&e),
                }
            }
        }),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_etcds_json_conventions() {
        let put: PutRequest = serde_json::from_str(r#"{"key":"Zm9v","value":"YmFy","lease":"7"}"#)
            .unwrap_or_default();
        assert_eq!(
            (put.key.as_slice(), put.value.as_slice(), put.lease),
            (&b"foo"[..], &b"bar"[..], 7)
        );
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                revision: 5,
                ..Default::default()
            }),
            kvs: vec![berth_proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                ..Default::default()
            }],
            count: 1,
            more: false,
        };
        let text = serde_json::to_string(&resp).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"header":{"revision":"5"},"kvs":[{"key":"Zm9v","create_revision":"2"}],"count":"1"}"#
        );
        let sort: RangeRequest =
            serde_json::from_str(r#"{"key":"YQ==","sort_order":"DESCEND","sortTarget":"MOD"}"#)
                .unwrap_or_default();
        assert_eq!((sort.sort_order, sort.sort_target), (2, 3));
    }

    #[test]
    fn errors_map_codes_as_grpc_gateway() {
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let line = stream_error(&Status::permission_denied("etcdserver: permission denied"));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(v["error"]["http_code"], 403);
        assert_eq!(v["error"]["grpc_code"], 7);
    }

    #[tokio::test]
    async fn request_streams_split_into_messages_across_chunks() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b" {\"create_request\": {\"key\":")),
            Ok(Bytes::from_static(b"\"YQ==\"}}\n{\"progress_request\":{}}")),
            Ok(Bytes::from_static(
                b" {\"cancel_request\":{\"watch_id\":\"3\"}}",
            )),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let got: Vec<_> = json_messages::<WatchRequest>(body).collect().await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(Result::is_ok));
        let bad = Body::from(r#"{"create_request": 7}"#);
        let got: Vec<_> = json_messages::<WatchRequest>(bad).collect().await;
        assert!(matches!(got.as_slice(), [Err(s)] if s.code() == Code::InvalidArgument));
    }
}
