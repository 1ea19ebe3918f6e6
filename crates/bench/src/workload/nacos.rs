//! The configuration and naming family, over Nacos's APIs (so it measures berth, Nacos or
//! r-nacos alike):
//! - `nacos-publish`: every request publishes a new content of one of `--items` configs
//!   (`POST /nacos/v1/cs/configs`);
//! - `nacos-get`: `--items` configs are published, then every request reads one at random
//!   (`GET /nacos/v1/cs/configs`);
//! - `nacos-register`: each client opens a Nacos 2.x gRPC connection (server check, then the
//!   stream's connection setup) on the HTTP port + 1000, then every request registers an
//!   ephemeral instance of a new service (`InstanceRequest`);
//! - `nacos-beat`: `--instances` ephemeral instances are registered over HTTP, then every
//!   request is a v1 beat of one of them (`PUT /nacos/v1/ns/instance/beat`);
//! - `nacos-listen`: `--listeners` long polls (`/nacos/v1/cs/configs/listener`) on one
//!   config, which changes `--changes` times; latency is publish → each listener's answer.
//!   With `--grpc`, each listener is a Nacos 2.x gRPC connection that listens with
//!   `ConfigBatchListenRequest`; latency is publish → each pushed `ConfigChangeNotifyRequest`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::nacos::bi_request_stream_client::BiRequestStreamClient;
use berth_proto::nacos::request_client::RequestClient;
use berth_proto::nacos::{Any, Metadata, Payload};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::{Config, Workload};
use crate::driver::{run_clients, Worker};
use crate::http::HttpConn;
use crate::report::{Recorder, Report};
use crate::BenchError;

const GROUP: &str = "BENCH_GROUP";

/// `application/x-www-form-urlencoded` encoding of one value.
fn form(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A content of about `size` bytes that names `tag`.
fn content(tag: &str, size: usize) -> String {
    let mut c = format!("tag={tag}\n");
    while c.len() < size {
        c.push_str("key.of.some.setting=some value\n");
    }
    c.truncate(size.max(tag.len() + 5));
    c
}

fn publish_body(data_id: &str, content: &str) -> String {
    format!(
        "dataId={}&group={GROUP}&type=properties&content={}",
        form(data_id),
        form(content)
    )
}

/// Publishes configs `bench-0..items` with all clients (at most 64).
async fn publish_all(cfg: &Config, items: u64) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..cfg.clients.clamp(1, 64) {
        let (next, addr, size) = (next.clone(), cfg.http_addr.clone(), cfg.val_size);
        tasks.spawn(async move {
            let mut conn = HttpConn::new(&addr);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    return Ok::<(), Status>(());
                }
                let id = format!("bench-{i}");
                conn.send_form(
                    "POST",
                    "/nacos/v1/cs/configs",
                    &publish_body(&id, &content("0", size)),
                )
                .await?;
            }
        });
    }
    join_setup(tasks, "publishing configs").await
}

async fn join_setup(
    mut tasks: JoinSet<Result<(), Status>>,
    what: &'static str,
) -> Result<(), BenchError> {
    while let Some(t) = tasks.join_next().await {
        match t {
            Ok(Ok(())) => {}
            Ok(Err(s)) => return Err(BenchError::setup(what, &s)),
            Err(e) => {
                return Err(BenchError::Setup {
                    what,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

struct Publish {
    conn: HttpConn,
    client: usize,
    seq: u64,
    items: u64,
    size: usize,
}

impl Worker for Publish {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        self.seq += 1;
        let id = format!(
            "bench-{}",
            (self.seq * 7919 + self.client as u64) % self.items
        );
        let body = publish_body(
            &id,
            &content(&format!("{}-{}", self.client, self.seq), self.size),
        );
        let a = self
            .conn
            .send_form("POST", "/nacos/v1/cs/configs", &body)
            .await?;
        if a.body.as_ref() != b"true" {
            return Err(Status::unknown(format!(
                "publish answered {}",
                String::from_utf8_lossy(&a.body)
            )));
        }
        Ok("publish")
    }
}

struct Get {
    conn: HttpConn,
    next: u64,
    items: u64,
}

impl Worker for Get {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        self.next = self
            .next
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let id = (self.next >> 33) % self.items;
        let path = format!("/nacos/v1/cs/configs?dataId=bench-{id}&group={GROUP}");
        let a = self.conn.send("GET", &path, "").await?;
        if a.body.is_empty() {
            return Err(Status::not_found(format!("bench-{id} is empty")));
        }
        Ok("get")
    }
}

/// A Nacos gRPC payload of `kind` with `body`.
fn payload(kind: &str, body: &Value) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: "127.0.0.1".into(),
            headers: Default::default(),
        }),
        body: Some(Any {
            type_url: String::new(),
            value: serde_json::to_vec(body).unwrap_or_default(),
        }),
    }
}

fn answer(p: &Payload) -> Result<Value, Status> {
    let body = p
        .body
        .as_ref()
        .map(|b| b.value.as_slice())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Status::internal(format!("answer is not JSON: {e}")))?;
    if v.get("resultCode").and_then(Value::as_u64) != Some(200) {
        return Err(Status::unknown(format!("answer: {v}")));
    }
    Ok(v)
}

/// One client's Nacos gRPC connection, set up as clients do it.
struct GrpcConn {
    unary: RequestClient<Channel>,
    /// Keeps the connection's stream (and so its registration) open.
    _stream: tokio::task::JoinHandle<()>,
}

/// A Nacos gRPC connection set up as clients do it: the unary client, the sender of the
/// stream's requests (answers to pushes) and the pushes.
async fn grpc_open(
    addr: &str,
    module: &str,
) -> Result<
    (
        RequestClient<Channel>,
        tokio::sync::mpsc::Sender<Payload>,
        tonic::Streaming<Payload>,
    ),
    Status,
> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect {addr}: {e}")))?;
    let mut unary = RequestClient::new(channel.clone());
    let check = unary
        .request(payload(
            "ServerCheckRequest",
            &json!({"headers": {}, "requestId": "", "module": "internal"}),
        ))
        .await?
        .into_inner();
    answer(&check)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Payload>(16);
    let setup = json!({
        "headers": {}, "requestId": "", "module": "internal",
        "clientVersion": "berth-bench", "tenant": "", "labels": {"source": "sdk", "module": module},
        "abilityTable": {},
    });
    tx.send(payload("ConnectionSetupRequest", &setup))
        .await
        .map_err(|_| Status::internal("stream closed"))?;
    let mut bi = BiRequestStreamClient::new(channel);
    let pushes = bi
        .request_bi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // Clients wait this long before their first request (the server registers the stream).
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok((unary, tx, pushes))
}

async fn grpc_connect(addr: &str) -> Result<GrpcConn, Status> {
    let (unary, tx, mut pushes) = grpc_open(addr, "naming").await?;
    let stream = tokio::spawn(async move {
        let _keep = tx;
        while let Ok(Some(_)) = pushes.message().await {}
    });
    Ok(GrpcConn {
        unary,
        _stream: stream,
    })
}

struct Register {
    addr: String,
    conn: Option<GrpcConn>,
    client: usize,
    seq: u64,
}

impl Worker for Register {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        if self.conn.is_none() {
            self.conn = Some(grpc_connect(&self.addr).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Status::internal("no connection"));
        };
        self.seq += 1;
        let body = json!({
            "headers": {}, "requestId": "", "module": "naming",
            "namespace": "public",
            "serviceName": format!("bench-g-{}-{}", self.client, self.seq),
            "groupName": GROUP,
            "type": "registerInstance",
            "instance": {
                "instanceId": "", "ip": "10.0.0.1", "port": 8080, "weight": 1.0, "healthy": true,
                "enabled": true, "ephemeral": true, "clusterName": "DEFAULT", "serviceName": "",
                "metadata": {},
            },
        });
        let a = match conn.unary.request(payload("InstanceRequest", &body)).await {
            Ok(a) => a.into_inner(),
            Err(s) => {
                self.conn = None;
                return Err(s);
            }
        };
        answer(&a)?;
        Ok("register")
    }
}

fn instance_params(i: u64) -> String {
    format!(
        "serviceName=bench-beat-{}&groupName={GROUP}&ip=10.1.{}.{}&port={}&ephemeral=true",
        i % 100,
        (i / 250) % 250,
        i % 250,
        8000 + i / 62500
    )
}

struct Beat {
    conn: HttpConn,
    ids: Vec<u64>,
    next: usize,
}

impl Worker for Beat {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        let i = self.ids[self.next % self.ids.len()];
        self.next += 1;
        let path = format!("/nacos/v1/ns/instance/beat?{}", instance_params(i));
        let a = self.conn.send("PUT", &path, "").await?;
        let v: Value = serde_json::from_slice(&a.body).unwrap_or_default();
        if v.get("code").and_then(Value::as_u64) != Some(10200) {
            return Err(Status::unknown(format!(
                "beat answered {}",
                String::from_utf8_lossy(&a.body)
            )));
        }
        Ok("beat")
    }
}

/// Runs one of the Nacos workloads.
pub async fn run(cfg: &Config) -> Result<Report, BenchError> {
    let clients = cfg.clients;
    match cfg.workload {
        Workload::NacosPublish { items } => {
            let workers = (0..clients)
                .map(|client| Publish {
                    conn: HttpConn::new(&cfg.http_addr),
                    client,
                    seq: 0,
                    items,
                    size: cfg.val_size,
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed).with("items", json!(items)))
        }
        Workload::NacosGet { items } => {
            publish_all(cfg, items).await?;
            let workers = (0..clients)
                .map(|c| Get {
                    conn: HttpConn::new(&cfg.http_addr),
                    next: cfg.seed.wrapping_add(c as u64),
                    items,
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed).with("items", json!(items)))
        }
        Workload::NacosRegister => {
            let addr = grpc_addr(&cfg.http_addr)?;
            let workers = (0..clients)
                .map(|client| Register {
                    addr: addr.clone(),
                    conn: None,
                    client,
                    seq: 0,
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed))
        }
        Workload::NacosBeat { instances } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = JoinSet::new();
            for _ in 0..clients.clamp(1, 64) {
                let (next, addr) = (next.clone(), cfg.http_addr.clone());
                tasks.spawn(async move {
                    let mut conn = HttpConn::new(&addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= instances {
                            return Ok::<(), Status>(());
                        }
                        conn.send(
                            "POST",
                            &format!("/nacos/v1/ns/instance?{}", instance_params(i)),
                            "",
                        )
                        .await?;
                    }
                });
            }
            join_setup(tasks, "registering instances").await?;
            let workers = (0..clients)
                .map(|c| Beat {
                    conn: HttpConn::new(&cfg.http_addr),
                    ids: {
                        let ids: Vec<u64> = (0..instances).skip(c).step_by(clients).collect();
                        if ids.is_empty() {
                            vec![0]
                        } else {
                            ids
                        }
                    },
                    next: 0,
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed).with("instances", json!(instances)))
        }
        Workload::NacosListen {
            listeners,
            changes,
            grpc,
        } => listen(cfg, listeners, changes, grpc).await,
        _ => Err(BenchError::Config("not a Nacos workload".into())),
    }
}

/// The gRPC address of the Nacos server at `http_addr` (its port + 1000).
fn grpc_addr(http_addr: &str) -> Result<String, BenchError> {
    let a = http_addr.trim_start_matches("http://");
    let (host, port) = a
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| BenchError::Config(format!("--nacos-addr {a:?} is not host:port")))?;
    let grpc = port
        .checked_add(1000)
        .ok_or_else(|| BenchError::Config(format!("--nacos-addr {a}: no port + 1000")))?;
    Ok(format!("{host}:{grpc}"))
}

/// Lower-case hex MD5 (the listener probe's).
fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn record(shared: &std::sync::Mutex<Recorder>, f: impl FnOnce(&mut Recorder)) {
    f(&mut shared.lock().unwrap_or_else(|p| p.into_inner()));
}

fn current(md5: &std::sync::RwLock<String>) -> String {
    md5.read().map(|m| m.clone()).unwrap_or_default()
}

/// One gRPC listener: sets its connection up, listens to `id` holding `md5`, then counts
/// each pushed change (answering it, as clients do) until the stream ends.
async fn grpc_listener(
    addr: String,
    id: &'static str,
    md5: String,
    gate: Arc<tokio::sync::Semaphore>,
    ready: Arc<AtomicU64>,
    on_push: impl Fn(),
) -> Result<(), Status> {
    // The unary client is kept with the connection it shares.
    let (_unary, tx, mut pushes) = {
        // Not every connection at once: the server's accept queue is finite.
        let _permit = gate.acquire().await;
        let opened = grpc_open(&addr, "config").await?;
        let (mut unary, tx, pushes) = opened;
        let listen = json!({
            "headers": {}, "requestId": "", "module": "config", "listen": true,
            "configListenContexts": [{"dataId": id, "group": GROUP, "tenant": "", "md5": md5}],
        });
        let a = unary
            .request(payload("ConfigBatchListenRequest", &listen))
            .await?
            .into_inner();
        answer(&a)?;
        (unary, tx, pushes)
    };
    ready.fetch_add(1, Ordering::Relaxed);
    while let Some(p) = pushes.message().await? {
        let kind = p
            .metadata
            .as_ref()
            .map(|m| m.r#type.as_str())
            .unwrap_or_default();
        if kind == "ConfigChangeNotifyRequest" {
            // Counted as soon as it arrives. The answer a client sends (which the server
            // does not wait for) is left out, to keep the bench's own work per push small:
            // on this machine the bench, not the server, is what a drain of 10,000 pushes
            // waits on.
            on_push();
            continue;
        }
        // Anything else (a liveness probe) is answered, as clients do.
        let request_id = p
            .body
            .as_ref()
            .and_then(|b| serde_json::from_slice::<Value>(&b.value).ok())
            .and_then(|v| v.get("requestId").cloned())
            .unwrap_or(Value::Null);
        let reply = kind.replace("Request", "Response");
        let _ = tx
            .send(payload(
                &reply,
                &json!({"resultCode": 200, "errorCode": 0, "requestId": request_id}),
            ))
            .await;
    }
    Ok(())
}

async fn listen(
    cfg: &Config,
    listeners: u64,
    changes: u64,
    grpc: bool,
) -> Result<Report, BenchError> {
    let id = "bench-listened";
    let mut setup = HttpConn::new(&cfg.http_addr);
    let first = content("0", cfg.val_size);
    setup
        .send_form("POST", "/nacos/v1/cs/configs", &publish_body(id, &first))
        .await
        .map_err(|s| BenchError::setup("publishing the listened config", &s))?;
    let start = Instant::now();
    let changed_at = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let md5 = Arc::new(std::sync::RwLock::new(md5_hex(&first)));
    let shared = Arc::new(std::sync::Mutex::new(Recorder::new()?));
    let mut tasks = JoinSet::new();
    if grpc {
        let addr = grpc_addr(&cfg.http_addr)?;
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        let held = current(&md5);
        for _ in 0..listeners {
            let (changed_at, answers, ready, shared, gate, addr, held) = (
                changed_at.clone(),
                answers.clone(),
                ready.clone(),
                shared.clone(),
                gate.clone(),
                addr.clone(),
                held.clone(),
            );
            tasks.spawn(async move {
                let on_push = || {
                    let now = start.elapsed().as_micros() as u64;
                    let at = changed_at.load(Ordering::Acquire);
                    record(&shared, |r| {
                        r.record_micros("answer", now.saturating_sub(at).max(1))
                    });
                    answers.fetch_add(1, Ordering::Release);
                };
                if let Err(s) = grpc_listener(addr, id, held, gate, ready, on_push).await {
                    record(&shared, |r| r.error(s.message().to_string()));
                }
            });
        }
    }
    for _ in 0..if grpc { 0 } else { listeners } {
        let (changed_at, answers, ready, md5, shared) = (
            changed_at.clone(),
            answers.clone(),
            ready.clone(),
            md5.clone(),
            shared.clone(),
        );
        let addr = cfg.http_addr.clone();
        tasks.spawn(async move {
            let mut conn = HttpConn::new(&addr);
            let mut first = true;
            loop {
                let held = current(&md5);
                let probe = format!("{id}\u{2}{GROUP}\u{2}{held}\u{2}\u{1}");
                let body = format!("Listening-Configs={}", form(&probe));
                if first {
                    ready.fetch_add(1, Ordering::Relaxed);
                    first = false;
                }
                match conn
                    .send_form_with(
                        "POST",
                        "/nacos/v1/cs/configs/listener",
                        &body,
                        &[("Long-Pulling-Timeout", "30000")],
                    )
                    .await
                {
                    Ok(a) if !a.body.is_empty() => {
                        let now = start.elapsed().as_micros() as u64;
                        let at = changed_at.load(Ordering::Acquire);
                        record(&shared, |r| {
                            r.record_micros("answer", now.saturating_sub(at).max(1))
                        });
                        answers.fetch_add(1, Ordering::Release);
                        // Re-listen only once the next content's MD5 is known.
                        while current(&md5) == held {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Ok(_) => {}
                    Err(s) => {
                        record(&shared, |r| r.error(s.message().to_string()));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < listeners && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let mut answered_min = u64::MAX;
    for c in 1..=changes {
        let before = answers.load(Ordering::Acquire);
        let next = content(&c.to_string(), cfg.val_size);
        changed_at.store(start.elapsed().as_micros() as u64, Ordering::Release);
        setup
            .send_form("POST", "/nacos/v1/cs/configs", &publish_body(id, &next))
            .await
            .map_err(|s| BenchError::setup("changing the listened config", &s))?;
        let wait_until = Instant::now() + Duration::from_secs(10);
        while answers.load(Ordering::Acquire) - before < listeners && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered_min = answered_min.min(answers.load(Ordering::Acquire) - before);
        if let Ok(mut m) = md5.write() {
            *m = md5_hex(&next);
        }
        // Let every listener send its next long poll.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let elapsed = t0.elapsed();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let rec = std::mem::replace(
        &mut *shared.lock().unwrap_or_else(|p| p.into_inner()),
        Recorder::new()?,
    );
    Ok(Report::new(cfg, &rec, elapsed)
        .with("listeners", json!(listeners))
        .with("changes", json!(changes))
        .with(
            "answered_per_change_min",
            json!(if changes == 0 { 0 } else { answered_min }),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(form("a b\u{1}"), "a%20b%01");
        assert_eq!(content("x", 40).len(), 40);
        assert_eq!(
            grpc_addr("127.0.0.1:8848").ok().as_deref(),
            Some("127.0.0.1:9848")
        );
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
