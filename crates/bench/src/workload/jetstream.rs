//! The JetStream family: publishes stored in a stream and acknowledged (`js-publish`), and
//! messages pulled from a durable consumer and acked (`js-consume`), spoken over the raw
//! protocol by the bench itself, so it measures berth and nats-server the same way.
//!
//! `js-consume` fills the stream first (windows of 256 publishes), creates consumer `C`
//! (explicit acks, max_ack_pending large enough for every client's batch), then each client
//! pulls `batch` messages at a time and acks each; latency is from the pull request to each
//! message.
//!
//! Setup deletes and creates stream `BENCH` (subject `bench.js`, file storage). Each client
//! subscribes to an inbox of its own, then publishes windows of `window` messages with that
//! inbox as the reply subject and reads as many acknowledgements before the next window
//! (`window` 1: every acknowledgement awaited). Latency is from a window's send to each
//! acknowledgement; throughput is acknowledged publishes per second in the measured phase.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::nats::Conn;
use crate::config::{Stop, Workload};
use crate::keys::value;
use crate::report::{Recorder, Report};
use crate::{BenchError, Config};

const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench.js";

/// Reads the next message's payload (skipping PINGs, answering them); the MSG line stays in
/// `c.line`.
async fn next_msg(c: &mut Conn, buf: &mut Vec<u8>) -> Result<(), BenchError> {
    loop {
        c.next_line().await?;
        if c.line == "PING\r\n" {
            c.send(b"PONG\r\n").await?;
            continue;
        }
        if c.line.starts_with("-ERR") {
            return Err(BenchError::Setup {
                what: "NATS",
                message: c.line.trim().to_string(),
            });
        }
        if c.line.starts_with("MSG ") || c.line.starts_with("HMSG ") {
            break;
        }
    }
    c.read_payload(buf).await?;
    let size = buf.len() - 2;
    buf.truncate(size);
    Ok(())
}

/// Sends an API request and returns the JSON answer.
async fn api(c: &mut Conn, subject: &str, body: &str) -> Result<serde_json::Value, BenchError> {
    c.send(
        format!(
            "PUB {subject} _INBOX.bench.setup {}\r\n{body}\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    next_msg(c, &mut buf).await?;
    serde_json::from_slice(&buf).map_err(|e| BenchError::Setup {
        what: "a JetStream answer",
        message: e.to_string(),
    })
}

/// [`api`], an error answer being a setup failure named `what`.
async fn api_ok(
    c: &mut Conn,
    subject: &str,
    body: &str,
    what: &'static str,
) -> Result<serde_json::Value, BenchError> {
    let answer = api(c, subject, body).await?;
    match answer.get("error") {
        Some(e) => Err(BenchError::Setup {
            what,
            message: e.to_string(),
        }),
        None => Ok(answer),
    }
}

/// Creates the bench's stream afresh, on `replicas` members.
async fn setup(
    addr: &str,
    user: Option<&(String, String)>,
    replicas: u32,
) -> Result<(), BenchError> {
    setup_conn(addr, user, replicas).await.map(|_| ())
}

/// Creates the bench's stream afresh, on `replicas` members; returns the connection (its
/// setup inbox subscribed).
async fn setup_conn(
    addr: &str,
    user: Option<&(String, String)>,
    replicas: u32,
) -> Result<Conn, BenchError> {
    let mut c = Conn::open(addr, user).await?;
    c.send(b"SUB _INBOX.bench.setup 1\r\n").await?;
    c.sync().await?;
    let _ = api(&mut c, &format!("$JS.API.STREAM.DELETE.{STREAM}"), "").await?;
    let config =
        json!({"name": STREAM, "subjects": [SUBJECT], "storage": "file", "num_replicas": replicas});
    api_ok(
        &mut c,
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &config.to_string(),
        "creating the bench stream",
    )
    .await?;
    Ok(c)
}

/// Subscribes client `client`'s inbox (where its acks or messages come) and returns it.
async fn own_inbox(c: &mut Conn, client: usize) -> Result<String, BenchError> {
    let inbox = format!("_INBOX.bench.{client}");
    c.send(format!("SUB {inbox} 1\r\n").as_bytes()).await?;
    c.sync().await?;
    Ok(inbox)
}

/// Publishes windows until `stop`, recording each measured acknowledgement's delay.
async fn publish(
    mut c: Conn,
    client: usize,
    size: usize,
    window: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Recorder, BenchError> {
    let inbox = own_inbox(&mut c, client).await?;
    let body = value(size);
    let head = format!("PUB {SUBJECT} {inbox} {size}\r\n");
    let mut batch = Vec::with_capacity(window * (head.len() + size + 2));
    for _ in 0..window {
        batch.extend_from_slice(head.as_bytes());
        batch.extend_from_slice(&body);
        batch.extend_from_slice(b"\r\n");
    }
    let mut rec = Recorder::new()?;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let measured = measuring.load(Ordering::Relaxed);
        let sent = Instant::now();
        c.send(&batch).await?;
        for _ in 0..window {
            next_msg(&mut c, &mut buf).await?;
            if buf.windows(8).any(|w| w == b"\"error\"") {
                return Err(BenchError::Setup {
                    what: "a JetStream publish",
                    message: String::from_utf8_lossy(&buf).into_owned(),
                });
            }
            if measured {
                rec.record_micros("ack", sent.elapsed().as_micros() as u64);
            }
        }
    }
    Ok(rec)
}

/// Runs `js-publish`.
pub async fn run(cfg: &Config) -> Result<Report, BenchError> {
    let Workload::JsPublish { window, replicas } = cfg.workload else {
        return Err(BenchError::Config("not a JetStream workload".into()));
    };
    let Stop::After(duration) = cfg.stop else {
        return Err(BenchError::Config(
            "js-publish runs for --duration (--total is not supported)".into(),
        ));
    };
    setup(&cfg.http_addr, cfg.nats_user.as_ref(), replicas).await?;
    let rec = measured(
        cfg,
        duration,
        "a JetStream publisher",
        |client, measuring, stop| {
            let (addr, user) = (cfg.http_addr.clone(), cfg.nats_user.clone());
            let size = cfg.val_size;
            async move {
                let c = Conn::open(&addr, user.as_ref()).await?;
                publish(c, client, size, window, measuring, stop).await
            }
        },
    )
    .await?;
    Ok(Report::new(cfg, &rec.0, rec.1))
}

/// Runs one task per client (`work(client, measuring, stop)`), measures for `duration`
/// after the warm-up, stops them, and merges what they recorded; returns it with the
/// measured time.
async fn measured<F, Fut>(
    cfg: &Config,
    duration: Duration,
    what: &'static str,
    work: F,
) -> Result<(Recorder, Duration), BenchError>
where
    F: Fn(usize, Arc<AtomicBool>, Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = Result<Recorder, BenchError>> + Send + 'static,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|client| tokio::spawn(work(client, measuring.clone(), stop.clone())))
        .collect();
    let elapsed = super::nats::measure_window(cfg.warmup, duration, &measuring).await;
    stop.store(true, Ordering::Relaxed);
    let mut rec = Recorder::new()?;
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .map_err(|_| BenchError::Setup {
                what,
                message: "did not stop within 30 s".into(),
            })?
            .map_err(|e| BenchError::Setup {
                what,
                message: e.to_string(),
            })??;
        rec.merge(r);
    }
    Ok((rec, elapsed))
}

/// Fills the stream with `n` messages of `size` bytes, 256 in flight.
async fn fill(c: &mut Conn, n: u64, size: usize) -> Result<(), BenchError> {
    let body = value(size);
    let head = format!("PUB {SUBJECT} _INBOX.bench.setup {size}\r\n");
    let mut buf = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(256);
        let mut batch = Vec::with_capacity(k as usize * (head.len() + size + 2));
        for _ in 0..k {
            batch.extend_from_slice(head.as_bytes());
            batch.extend_from_slice(&body);
            batch.extend_from_slice(b"\r\n");
        }
        c.send(&batch).await?;
        for _ in 0..k {
            next_msg(c, &mut buf).await?;
        }
        left -= k;
    }
    Ok(())
}

/// Pulls and acks until `stop`, recording each measured message's delay from its pull.
async fn pull(
    mut c: Conn,
    client: usize,
    batch: u64,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Recorder, BenchError> {
    let inbox = own_inbox(&mut c, client).await?;
    let body = format!("{{\"batch\":{batch},\"expires\":2000000000}}");
    let request = format!(
        "PUB $JS.API.CONSUMER.MSG.NEXT.{STREAM}.C {inbox} {}\r\n{body}\r\n",
        body.len()
    );
    let mut rec = Recorder::new()?;
    let mut buf = Vec::new();
    let mut acks = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let measured = measuring.load(Ordering::Relaxed);
        let sent = Instant::now();
        c.send(request.as_bytes()).await?;
        acks.clear();
        for _ in 0..batch {
            next_msg(&mut c, &mut buf).await?;
            // A status (no messages left, expired): this pull is over.
            if c.line.starts_with("HMSG") && buf.starts_with(b"NATS/1.0 ") {
                break;
            }
            let Some(reply) = c.line.split_whitespace().nth(3) else {
                continue;
            };
            acks.extend_from_slice(format!("PUB {reply} 0\r\n\r\n").as_bytes());
            if measured {
                rec.record_micros("consume", sent.elapsed().as_micros() as u64);
            }
        }
        c.send(&acks).await?;
    }
    Ok(rec)
}

/// Runs `js-consume`.
pub async fn consume(cfg: &Config) -> Result<Report, BenchError> {
    let Workload::JsConsume {
        messages,
        batch,
        replicas,
    } = cfg.workload
    else {
        return Err(BenchError::Config(
            "not a JetStream consume workload".into(),
        ));
    };
    let Stop::After(duration) = cfg.stop else {
        return Err(BenchError::Config(
            "js-consume runs for --duration (--total is not supported)".into(),
        ));
    };
    let mut c = setup_conn(&cfg.http_addr, cfg.nats_user.as_ref(), replicas).await?;
    fill(&mut c, messages, cfg.val_size).await?;
    let config = json!({
        "stream_name": STREAM,
        "config": {
            "durable_name": "C",
            "ack_policy": "explicit",
            "max_ack_pending": (cfg.clients as u64 * batch).max(1000),
        },
    });
    api_ok(
        &mut c,
        &format!("$JS.API.CONSUMER.CREATE.{STREAM}.C"),
        &config.to_string(),
        "creating the bench consumer",
    )
    .await?;
    let rec = measured(
        cfg,
        duration,
        "a JetStream puller",
        |client, measuring, stop| {
            let (addr, user) = (cfg.http_addr.clone(), cfg.nats_user.clone());
            async move {
                let c = Conn::open(&addr, user.as_ref()).await?;
                pull(c, client, batch, measuring, stop).await
            }
        },
    )
    .await?;
    Ok(Report::new(cfg, &rec.0, rec.1))
}
