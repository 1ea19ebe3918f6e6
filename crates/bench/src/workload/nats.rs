//! The messaging family: core NATS publish/subscribe, spoken over raw TCP by the bench itself
//! (the protocol is a few text lines), so the same binary measures berth and nats-server.
//!
//! Subscribers connect first and subscribe to one subject (as one queue group with `queue`);
//! then every client publishes stamped messages in windows of [`WINDOW`], each window closed
//! by a PING whose PONG says the server took it. Latency is publish to delivery, read from the
//! stamp; throughput is deliveries per second in the measured phase.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::config::{Stop, Workload};
use crate::keys::{read_stamp, stamp, unix_nanos, value};
use crate::report::{Recorder, Report};
use crate::{BenchError, Config};

/// Messages a publisher sends before it waits for the server to have taken them.
const WINDOW: usize = 64;
/// The subject the workload publishes to.
const SUBJECT: &str = "bench.pubsub";

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> BenchError {
    move |e| BenchError::Setup {
        what,
        message: e.to_string(),
    }
}

pub(crate) struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    pub(crate) line: String,
}

impl Conn {
    /// Connects, reads INFO, sends CONNECT (as `user`, when given) and waits for the PONG
    /// of a PING.
    pub(crate) async fn open(
        addr: &str,
        user: Option<&(String, String)>,
    ) -> Result<Conn, BenchError> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(io_err("connecting to the NATS server"))?;
        s.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(256 * 1024, r),
            w,
            line: String::new(),
        };
        c.next_line().await?;
        if !c.line.starts_with("INFO ") {
            return Err(BenchError::Setup {
                what: "NATS handshake",
                message: format!("expected INFO, got {:?}", c.line),
            });
        }
        // Headers on: JetStream's statuses (pull timeouts, no messages) are header-only.
        let mut connect = serde_json::json!({
            "verbose": false, "pedantic": false, "headers": true, "lang": "berth-bench",
        });
        if let Some((name, pass)) = user {
            connect["user"] = name.as_str().into();
            connect["pass"] = pass.as_str().into();
        }
        c.send(format!("CONNECT {connect}\r\n").as_bytes()).await?;
        c.sync().await?;
        Ok(c)
    }

    pub(crate) async fn send(&mut self, b: &[u8]) -> Result<(), BenchError> {
        self.w.write_all(b).await.map_err(io_err("writing to NATS"))
    }

    pub(crate) async fn next_line(&mut self) -> Result<(), BenchError> {
        self.line.clear();
        let n = self
            .r
            .read_line(&mut self.line)
            .await
            .map_err(io_err("reading from NATS"))?;
        if n == 0 {
            return Err(BenchError::Setup {
                what: "reading from NATS",
                message: "the server closed the connection".into(),
            });
        }
        Ok(())
    }

    /// Reads the payload (and its CRLF) of the `MSG`/`HMSG` line just read into `buf`.
    pub(crate) async fn read_payload(&mut self, buf: &mut Vec<u8>) -> Result<(), BenchError> {
        let size: usize = self
            .line
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| BenchError::Setup {
                what: "reading a NATS message",
                message: format!("bad MSG line {:?}", self.line),
            })?;
        buf.resize(size + 2, 0);
        self.r
            .read_exact(buf)
            .await
            .map_err(io_err("reading a NATS message"))?;
        Ok(())
    }

    /// PING, then reads up to the PONG (answering the server's PINGs; -ERR is an error).
    pub(crate) async fn sync(&mut self) -> Result<(), BenchError> {
        self.send(b"PING\r\n").await?;
        loop {
            self.next_line().await?;
            match self.line.as_str() {
                "PONG\r\n" => return Ok(()),
                "PING\r\n" => self.send(b"PONG\r\n").await?,
                l if l.starts_with("-ERR") => {
                    return Err(BenchError::Setup {
                        what: "NATS",
                        message: l.trim().to_string(),
                    })
                }
                _ => {}
            }
        }
    }
}

/// Reads deliveries until `stop`, recording each measured one's delay.
async fn subscribe(mut c: Conn, stop: Arc<AtomicBool>) -> Result<Recorder, BenchError> {
    let mut rec = Recorder::new()?;
    let mut payload = Vec::new();
    loop {
        let read = tokio::time::timeout(Duration::from_millis(200), c.next_line()).await;
        let Ok(read) = read else {
            if stop.load(Ordering::Relaxed) {
                return Ok(rec);
            }
            continue;
        };
        read?;
        if c.line == "PING\r\n" {
            c.send(b"PONG\r\n").await?;
            continue;
        }
        if !c.line.starts_with("MSG ") {
            continue;
        }
        c.read_payload(&mut payload).await?;
        if let Some((sent, true)) = read_stamp(&payload) {
            let delay = unix_nanos().saturating_sub(sent) / 1000;
            rec.record_micros("deliver", delay);
        }
    }
}

/// Publishes stamped windows until `stop`; returns how many were published while measured.
async fn publish(
    mut c: Conn,
    size: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<u64, BenchError> {
    let mut body = value(size);
    let head = format!("PUB {SUBJECT} {size}\r\n");
    let mut window = Vec::with_capacity(WINDOW * (head.len() + size + 2));
    let mut published = 0;
    while !stop.load(Ordering::Relaxed) {
        let measured = measuring.load(Ordering::Relaxed);
        window.clear();
        for _ in 0..WINDOW {
            stamp(&mut body, unix_nanos(), measured);
            window.extend_from_slice(head.as_bytes());
            window.extend_from_slice(&body);
            window.extend_from_slice(b"\r\n");
        }
        c.send(&window).await?;
        c.sync().await?;
        if measured {
            published += WINDOW as u64;
        }
    }
    Ok(published)
}

/// Waits out the warm-up, then raises `measuring` for `duration`; returns the time measured.
pub(crate) async fn measure_window(
    warmup: Duration,
    duration: Duration,
    measuring: &AtomicBool,
) -> Duration {
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    start.elapsed()
}

/// Runs `nats-pubsub`.
pub async fn run(cfg: &Config) -> Result<Report, BenchError> {
    let Workload::NatsPubSub {
        subscribers,
        queue,
        ref sub_addr,
    } = cfg.workload
    else {
        return Err(BenchError::Config("not a NATS workload".into()));
    };
    let Stop::After(duration) = cfg.stop else {
        return Err(BenchError::Config(
            "nats-pubsub runs for --duration (--total is not supported)".into(),
        ));
    };
    let stop_subs = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let mut c = Conn::open(
            sub_addr.as_deref().unwrap_or(&cfg.http_addr),
            cfg.nats_user.as_ref(),
        )
        .await?;
        let sub = if queue {
            format!("SUB {SUBJECT} bench 1\r\n")
        } else {
            format!("SUB {SUBJECT} 1\r\n")
        };
        c.send(sub.as_bytes()).await?;
        c.sync().await?;
        subs.push(tokio::spawn(subscribe(c, stop_subs.clone())));
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop_pubs = Arc::new(AtomicBool::new(false));
    let mut pubs = Vec::new();
    for _ in 0..cfg.clients {
        let c = Conn::open(&cfg.http_addr, cfg.nats_user.as_ref()).await?;
        pubs.push(tokio::spawn(publish(
            c,
            cfg.val_size,
            measuring.clone(),
            stop_pubs.clone(),
        )));
    }
    let elapsed = measure_window(cfg.warmup, duration, &measuring).await;
    stop_pubs.store(true, Ordering::Relaxed);
    let published = AtomicU64::new(0);
    for p in pubs {
        let n = p.await.map_err(|e| BenchError::Setup {
            what: "a NATS publisher",
            message: e.to_string(),
        })??;
        published.fetch_add(n, Ordering::Relaxed);
    }
    // What is in flight arrives, then the subscribers stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_subs.store(true, Ordering::Relaxed);
    let mut rec = Recorder::new()?;
    for s in subs {
        rec.merge(s.await.map_err(|e| BenchError::Setup {
            what: "a NATS subscriber",
            message: e.to_string(),
        })??);
    }
    let published = published.into_inner();
    let delivered = rec.ops();
    let expected = if queue {
        published
    } else {
        published * subscribers
    };
    Ok(Report::new(cfg, &rec, elapsed)
        .with("published", json!(published))
        .with(
            "published_per_s",
            json!((published as f64 / elapsed.as_secs_f64()).round()),
        )
        .with("delivered", json!(delivered))
        .with("missing", json!(expected.saturating_sub(delivered))))
}
