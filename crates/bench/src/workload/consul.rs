//! The registry family, over Consul's HTTP API (so it measures berth or Consul alike):
//! - `consul-register`: every request registers a new instance (with a TTL check) of one of
//!   `--services` services;
//! - `consul-heartbeat`: `--instances` instances with passing TTL checks are registered, then
//!   every request is a `check/pass` of one of them (berth renews a lease, writes nothing);
//! - `consul-discover`: `--instances` instances over `--services` services, then every
//!   request is `GET /v1/health/service/<s>?passing` of a random one (`--stale` for local
//!   reads);
//! - `consul-watch`: `--watchers` blocking queries on one service and `--others` on other
//!   services; `--changes` times, one instance of the watched service changes and the delay
//!   from the change's write to each watcher's answer is recorded. Queries on the other
//!   services must not wake: their wake-ups are reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Status;

use crate::config::{Config, Workload};
use crate::driver::{run_clients, Worker};
use crate::http::HttpConn;
use crate::report::{Recorder, Report};
use crate::BenchError;

/// Prefix of the services the workloads register.
const SERVICE: &str = "bench-svc-";

/// A small fast PRNG (SplitMix64) for picking services: no dependency, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}

fn registration(service: &str, id: &str, passing: bool) -> String {
    let status = if passing {
        r#","Status":"passing""#
    } else {
        ""
    };
    format!(
        r#"{{"Name":"{service}","ID":"{id}","Address":"10.0.0.1","Port":8080,"Tags":["bench"],"Check":{{"TTL":"600s"{status}}}}}"#
    )
}

/// Registers instances `0..n` (`<prefix><i>` of service `i % services`) with all clients.
async fn register_all(cfg: &Config, n: u64, services: u64, prefix: &str) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..cfg.clients.min(64) {
        let (next, addr, prefix) = (next.clone(), cfg.http_addr.clone(), prefix.to_string());
        tasks.spawn(async move {
            let mut conn = HttpConn::new(&addr);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), Status>(());
                }
                let body = registration(
                    &format!("{SERVICE}{}", i % services),
                    &format!("{prefix}{i}"),
                    true,
                );
                conn.send("PUT", "/v1/agent/service/register", &body)
                    .await?;
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        match t {
            Ok(Ok(())) => {}
            Ok(Err(s)) => return Err(BenchError::setup("registering instances", &s)),
            Err(e) => {
                return Err(BenchError::Setup {
                    what: "registering instances",
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

struct Register {
    conn: HttpConn,
    client: usize,
    seq: u64,
    services: u64,
}

impl Worker for Register {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        self.seq += 1;
        let service = format!("{SERVICE}{}", self.seq % self.services);
        let id = format!("reg-{}-{}", self.client, self.seq);
        self.conn
            .send(
                "PUT",
                "/v1/agent/service/register",
                &registration(&service, &id, false),
            )
            .await?;
        Ok("register")
    }
}

struct Heartbeat {
    conn: HttpConn,
    ids: Vec<u64>,
    next: usize,
}

impl Worker for Heartbeat {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        let id = self.ids[self.next % self.ids.len()];
        self.next += 1;
        let path = format!("/v1/agent/check/pass/service:hb-{id}");
        self.conn.send("PUT", &path, "").await?;
        Ok("pass")
    }
}

struct Discover {
    conn: HttpConn,
    rng: Rng,
    services: u64,
    stale: bool,
}

impl Worker for Discover {
    async fn op(&mut self, _: bool) -> Result<&'static str, Status> {
        let s = self.rng.next(self.services);
        let stale = if self.stale { "&stale" } else { "" };
        let path = format!("/v1/health/service/{SERVICE}{s}?passing{stale}");
        let a = self.conn.send("GET", &path, "").await?;
        if a.body.len() < 3 {
            return Err(Status::not_found(format!(
                "no passing instance of {SERVICE}{s}"
            )));
        }
        Ok("discover")
    }
}

/// Runs one of the registry workloads.
pub async fn run(cfg: &Config) -> Result<Report, BenchError> {
    let clients = cfg.clients;
    match cfg.workload {
        Workload::ConsulRegister { services } => {
            let workers = (0..clients)
                .map(|client| Register {
                    conn: HttpConn::new(&cfg.http_addr),
                    client,
                    seq: 0,
                    services,
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed).with("services", json!(services)))
        }
        Workload::ConsulHeartbeat { instances } => {
            let t = Instant::now();
            register_all(cfg, instances, instances.div_ceil(10).max(1), "hb-").await?;
            let setup_s = t.elapsed().as_secs_f64();
            let workers = (0..clients)
                .map(|c| Heartbeat {
                    conn: HttpConn::new(&cfg.http_addr),
                    ids: (0..instances).skip(c).step_by(clients).collect::<Vec<_>>(),
                    next: 0,
                })
                .map(|mut h| {
                    if h.ids.is_empty() {
                        h.ids.push(0);
                    }
                    h
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed)
                .with("instances", json!(instances))
                .with("setup_s", json!((setup_s * 1000.0).round() / 1000.0)))
        }
        Workload::ConsulDiscover {
            services,
            instances,
            stale,
        } => {
            let t = Instant::now();
            register_all(cfg, instances, services, "disc-").await?;
            let setup_s = t.elapsed().as_secs_f64();
            let workers = (0..clients)
                .map(|c| Discover {
                    conn: HttpConn::new(&cfg.http_addr),
                    rng: Rng(cfg.seed.wrapping_add(c as u64)),
                    services,
                    stale,
                })
                .collect();
            let (rec, elapsed) = run_clients(cfg, workers).await?;
            Ok(Report::new(cfg, &rec, elapsed)
                .with("services", json!(services))
                .with("instances", json!(instances))
                .with("setup_s", json!((setup_s * 1000.0).round() / 1000.0)))
        }
        Workload::ConsulWatch {
            watchers,
            others,
            changes,
            stale,
        } => watch(cfg, watchers, others, changes, stale).await,
        _ => Err(BenchError::Config("not a registry workload".into())),
    }
}

/// What the watchers share: when the current change was written (micros since `start`),
/// and how many answers each change got.
struct WatchState {
    start: Instant,
    changed_at: AtomicU64,
    answers: AtomicU64,
    other_wakeups: AtomicU64,
}

async fn watch(
    cfg: &Config,
    watchers: u64,
    others: u64,
    changes: u64,
    stale: bool,
) -> Result<Report, BenchError> {
    let watched = format!("{SERVICE}watched");
    let mut setup = HttpConn::new(&cfg.http_addr);
    let fail = |s: Status| BenchError::setup("registering the watched services", &s);
    setup
        .send(
            "PUT",
            "/v1/agent/service/register",
            &registration(&watched, "watched-0", true),
        )
        .await
        .map_err(fail)?;
    for o in 0..others {
        let body = registration(&format!("{SERVICE}other-{o}"), &format!("other-{o}"), true);
        setup
            .send("PUT", "/v1/agent/service/register", &body)
            .await
            .map_err(fail)?;
    }
    let state = Arc::new(WatchState {
        start: Instant::now(),
        changed_at: AtomicU64::new(0),
        answers: AtomicU64::new(0),
        other_wakeups: AtomicU64::new(0),
    });
    let ready = Arc::new(AtomicU64::new(0));
    let shared = Arc::new(std::sync::Mutex::new(Recorder::new()?));
    let mut tasks = JoinSet::new();
    for w in 0..watchers + others {
        let (state, ready, addr) = (state.clone(), ready.clone(), cfg.http_addr.clone());
        let shared = shared.clone();
        let service = if w < watchers {
            watched.clone()
        } else {
            format!("{SERVICE}other-{}", (w - watchers) % others.max(1))
        };
        let is_other = w >= watchers;
        tasks.spawn(async move {
            let record = |f: &mut dyn FnMut(&mut Recorder)| {
                let mut r = shared.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut r);
            };
            let mut conn = HttpConn::new(&addr);
            let path = format!("/v1/health/service/{service}");
            let mut index = match conn.send("GET", &path, "").await {
                Ok(a) => a.index,
                Err(s) => {
                    record(&mut |r| r.error(s.message().to_string()));
                    return;
                }
            };
            ready.fetch_add(1, Ordering::Relaxed);
            loop {
                let stale = if stale { "&stale" } else { "" };
                let blocking = format!("{path}?index={index}&wait=30s{stale}");
                match conn.send("GET", &blocking, "").await {
                    Ok(a) if a.index != index => {
                        index = a.index;
                        if is_other {
                            state.other_wakeups.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let now = state.start.elapsed().as_micros() as u64;
                        let at = state.changed_at.load(Ordering::Acquire);
                        record(&mut |r| r.record_micros("answer", now.saturating_sub(at).max(1)));
                        state.answers.fetch_add(1, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(s) => {
                        record(&mut |r| r.error(s.message().to_string()));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    // Every watcher has its first answer; give the blocking requests time to arrive.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < watchers + others && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let mut answered_min = u64::MAX;
    for c in 0..changes {
        let before = state.answers.load(Ordering::Acquire);
        state
            .changed_at
            .store(state.start.elapsed().as_micros() as u64, Ordering::Release);
        let body = format!(
            r#"{{"Name":"{watched}","ID":"watched-0","Address":"10.0.0.1","Port":8080,"Tags":["change-{c}"],"Check":{{"TTL":"600s","Status":"passing"}}}}"#
        );
        setup
            .send("PUT", "/v1/agent/service/register", &body)
            .await
            .map_err(|s| BenchError::setup("changing the watched service", &s))?;
        // Wait for every watcher (at most 10 s), then let the next blocking requests land.
        let wait_until = Instant::now() + Duration::from_secs(10);
        while state.answers.load(Ordering::Acquire) - before < watchers
            && Instant::now() < wait_until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered_min = answered_min.min(state.answers.load(Ordering::Acquire) - before);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = t0.elapsed();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let rec = std::mem::replace(
        &mut *shared.lock().unwrap_or_else(|p| p.into_inner()),
        Recorder::new()?,
    );
    Ok(Report::new(cfg, &rec, elapsed)
        .with("watchers", json!(watchers))
        .with("others", json!(others))
        .with("changes", json!(changes))
        .with(
            "answered_per_change_min",
            json!(if changes == 0 { 0 } else { answered_min }),
        )
        .with(
            "other_wakeups",
            json!(state.other_wakeups.load(Ordering::Relaxed)),
        ))
}
