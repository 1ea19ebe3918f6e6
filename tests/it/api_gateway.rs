//! The gateway (issue 17): APISIX's Admin API v3 on the HTTP listener, and the data plane on
//! `--listen-gateway-urls` proxying to real upstream servers on loopback (an HTTP/1.1 and h2c
//! echo server in this process, berth's own etcd gRPC API), with the registry's healthy
//! instances as upstreams, the plugins berth runs, request-smuggling shapes refused before
//! any upstream call, WebSockets spliced and kept across route changes, and TLS by SNI from
//! the gateway's ssls.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{http_request, Server};

/// An upstream on loopback: answers every request with JSON naming itself and echoing the
/// method, path and headers; `/slow` waits 3 s first; an upgrade to `websocket` gets a 101
/// and then every byte back. Counts the requests it got.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Upstream {
    fn start(name: &'static str) -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = hits.clone();
        rt.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let hits = counted.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let hits = hits.clone();
                        async move { Ok::<_, std::convert::Infallible>(echo(name, req, &hits).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            _rt: rt,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(
    name: &str,
    mut req: hyper::Request<hyper::body::Incoming>,
    hits: &AtomicUsize,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    hits.fetch_add(1, Ordering::SeqCst);
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if headers.get("upgrade").map(String::as_str) == Some("websocket") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(conn) = upgrade.await {
                let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(conn));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return hyper::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("response");
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let out = json!({
        "name": name, "method": method, "path": path, "headers": headers,
        "version": version, "body": String::from_utf8_lossy(&body),
    });
    hyper::Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(http_body_util::Full::new(bytes::Bytes::from(out.to_string())))
        .expect("response")
}

/// An Admin API call: status and JSON body.
fn admin(srv: &Server, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let ((code, out), _) = http_request(method, &srv.http_addr, &format!("/apisix/admin{path}"), &text, &[]);
    let v = serde_json::from_str(&out).unwrap_or(Value::String(out));
    (code, v)
}

fn put(srv: &Server, path: &str, body: Value) {
    let (code, out) = admin(srv, "PUT", path, &body);
    assert!(code == 200 || code == 201, "PUT {path}: {code} {out}");
}

/// A request through the gateway: status, JSON (or text) body, headers.
fn via(srv: &Server, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value, Vec<(String, String)>) {
    let ((code, out), head) = http_request(method, &srv.gateway_addr, path, "", headers);
    let v = serde_json::from_str(&out).unwrap_or(Value::String(out));
    (code, v, head)
}

fn header<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    head.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn admin_api_speaks_apisix_v3() {
    let srv = Server::start();
    let up = Upstream::start("a");
    let upstream = json!({"nodes": {up.addr.to_string(): 1}, "type": "roundrobin"});
    let (code, out) = admin(&srv, "PUT", "/upstreams/1", &upstream);
    assert_eq!(code, 201, "{out}");
    assert_eq!(out["key"], "/apisix/upstreams/1");
    assert_eq!(out["value"]["id"], "1");
    let created = out["value"]["create_time"].as_i64().expect("create_time");
    assert!(out.get("createdIndex").is_none(), "a PUT answers key and value only");
    let (code, _) = admin(&srv, "PUT", "/upstreams/1", &upstream);
    assert_eq!(code, 200, "an update");
    let (code, out) = admin(&srv, "GET", "/upstreams/1", &Value::Null);
    assert_eq!(code, 200);
    assert_eq!(out["value"]["create_time"].as_i64(), Some(created), "kept across updates");
    assert!(out["modifiedIndex"].as_i64() > out["createdIndex"].as_i64());
    let (code, out) = admin(&srv, "GET", "/upstreams/nope", &Value::Null);
    assert_eq!((code, out), (404, json!({"message": "Key not found"})));

    // Routes: validation in APISIX's words.
    let cases = [
        (json!({"uri": "/a", "upstream_id": "9"}), "failed to fetch upstream info by upstream id [9], response code: 404"),
        (json!({"uri": "/a", "upstream_id": "1", "plugins": {"nope": {}}}), "unknown plugin [nope]"),
        (json!({"uri": "/a", "upstream_id": "1", "create_time": 1}), "the property is forbidden:  create_time"),
        (json!({"uri": "/a", "upstream_id": "1", "methods": ["FETCH"]}), "invalid configuration: property \"methods\" validation failed: matches none of the enum values: \"FETCH\""),
        (json!({"id": "2", "uri": "/a", "upstream_id": "1"}), "wrong route id"),
    ];
    for (body, want) in cases {
        let (code, out) = admin(&srv, "PUT", "/routes/1", &body);
        assert_eq!((code, out["error_msg"].as_str()), (400, Some(want)), "{body}");
    }
    let ((code, out), _) = http_request("PUT", &srv.http_addr, "/apisix/admin/routes/1", "{nope", &[]);
    assert_eq!(code, 400);
    assert!(out.contains("invalid request body"), "{out}");
    let (code, out) = admin(&srv, "PUT", "/routes/1", &json!({"uri": "/a", "upstream_id": "1", "name": "r1", "labels": {"env": "prod"}}));
    assert_eq!(code, 201, "{out}");
    let (code, out) = admin(&srv, "POST", "/routes", &json!({"uri": "/b", "upstream_id": "1"}));
    assert_eq!(code, 201, "{out}");
    let generated = out["value"]["id"].as_str().expect("id").to_string();
    assert_eq!(generated.len(), 20, "20 digits, as APISIX's");
    let (code, out) = admin(&srv, "GET", "/routes", &Value::Null);
    assert_eq!((code, out["total"].as_u64()), (200, Some(2)), "{out}");
    let (_, out) = admin(&srv, "GET", "/routes?label=env:prod", &Value::Null);
    assert_eq!(out["total"], 1);
    let (_, out) = admin(&srv, "GET", "/routes?name=^r", &Value::Null);
    assert_eq!(out["list"][0]["value"]["id"], "1");

    // PATCH merges (null removes), a sub-path PATCH replaces that part.
    let (code, out) = admin(&srv, "PATCH", "/routes/1", &json!({"name": null, "methods": ["GET"]}));
    assert_eq!(code, 200, "{out}");
    assert!(out["value"].get("name").is_none());
    assert_eq!(out["value"]["methods"], json!(["GET"]));
    assert_eq!(out["value"]["labels"]["env"], "prod");
    let (code, out) = admin(&srv, "PATCH", "/routes/1/labels", &json!({"team": "x"}));
    assert_eq!((code, out["value"]["labels"].clone()), (200, json!({"team": "x"})));
    let (code, _) = admin(&srv, "PATCH", "/routes/missing", &json!({"name": "x"}));
    assert_eq!(code, 404);

    // Deletes: in use, then free.
    let (code, out) = admin(&srv, "DELETE", "/upstreams/1", &Value::Null);
    assert_eq!(code, 400);
    assert!(out["error_msg"].as_str().is_some_and(|m| m.starts_with("can not delete this upstream, route [")), "{out}");
    for id in ["1", generated.as_str()] {
        let (code, out) = admin(&srv, "DELETE", &format!("/routes/{id}"), &Value::Null);
        assert_eq!((code, out["deleted"].as_str()), (200, Some("1")));
    }
    let (code, _) = admin(&srv, "DELETE", "/upstreams/1", &Value::Null);
    assert_eq!(code, 200);
    let (code, _) = admin(&srv, "DELETE", "/upstreams/1", &Value::Null);
    assert_eq!(code, 404);

    // Consumers: PUT on the collection names them by username; no POST.
    let (code, out) = admin(&srv, "PUT", "/consumers", &json!({"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}));
    assert_eq!(code, 201, "{out}");
    assert_eq!(out["key"], "/apisix/consumers/jack");
    let (code, out) = admin(&srv, "PUT", "/consumers", &json!({"username": "jill", "plugins": {"key-auth": {"key": "k1"}}}));
    assert_eq!(code, 400);
    assert_eq!(out["error_msg"], "duplicate key of plugin key-auth found with consumer: jack");
    let (code, _) = admin(&srv, "POST", "/consumers", &json!({"username": "x"}));
    assert_eq!(code, 405);
    let (code, out) = admin(&srv, "GET", "/plugin_configs", &Value::Null);
    assert_eq!((code, out["error_msg"].as_str()), (404, Some("Unsupported resource type: plugin_configs")));

    // SSLs: the key is checked and never returned.
    let pki = crate::tls::Pki::new("gateway");
    let (cert, key) = pki.issue_pem("gw", &["api.test"]);
    let (code, out) = admin(&srv, "PUT", "/ssls/1", &json!({"cert": cert, "key": "garbage", "snis": ["api.test"]}));
    assert_eq!(code, 400, "{out}");
    let (code, out) = admin(&srv, "PUT", "/ssls/1", &json!({"cert": cert, "key": key, "snis": ["api.test"]}));
    assert_eq!(code, 201, "{out}");
    assert!(out["value"].get("key").is_none());
    let (_, out) = admin(&srv, "GET", "/ssls/1", &Value::Null);
    assert!(out["value"].get("key").is_none() && out["value"]["cert"].is_string());
}
