//! The gateway's access log: one JSON object per request, with the fields chosen by
//! `--gateway-access-log-fields`, written by a thread of its own to a file (appended) or to
//! standard error. Requests hand their line to a bounded queue and never wait: when the queue
//! is full the line is dropped and counted (`berth_gateway_access_log_dropped`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use serde_json::{Map, Value};

/// Lines waiting for the writer at most.
const QUEUE: usize = 65_536;

/// A field of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    Time,
    /// The client's address.
    RemoteAddr,
    /// The method.
    Method,
    /// The host the request named.
    Host,
    /// The path.
    Path,
    /// The query string.
    Query,
    /// The protocol (`HTTP/1.1`, `HTTP/2.0`).
    Protocol,
    /// The answer's status.
    Status,
    /// The route that took it.
    Route,
    /// The upstream it went to.
    Upstream,
    /// The node that answered (or failed).
    Node,
    /// Time to the answer's head, in milliseconds.
    DurationMs,
    /// The node's part of it, in milliseconds.
    UpstreamMs,
    /// The authenticated consumer.
    Consumer,
    /// The client's `User-Agent`.
    UserAgent,
    /// The W3C trace context sent on.
    Traceparent,
}

impl Field {
    const ALL: [(&'static str, Field); 16] = [
        ("time", Field::Time),
        ("remote_addr", Field::RemoteAddr),
        ("method", Field::Method),
        ("host", Field::Host),
        ("path", Field::Path),
        ("query", Field::Query),
        ("protocol", Field::Protocol),
        ("status", Field::Status),
        ("route", Field::Route),
        ("upstream", Field::Upstream),
        ("node", Field::Node),
        ("duration_ms", Field::DurationMs),
        ("upstream_ms", Field::UpstreamMs),
        ("consumer", Field::Consumer),
        ("user_agent", Field::UserAgent),
        ("traceparent", Field::Traceparent),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("", |(n, _)| n)
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Appended to this file.
    File(PathBuf),
    /// Standard error.
    Stderr,
}

/// The access log's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where lines go.
    pub to: Target,
    /// What each line holds, in order.
    pub fields: Vec<Field>,
}

impl Settings {
    /// Settings for `to` (`-`: standard error) with `fields` (comma-separated; `None`: all but
    /// `query` and `protocol`).
    pub fn new(to: &str, fields: Option<&str>) -> anyhow::Result<Settings> {
        let fields = match fields.map(str::trim).filter(|f| !f.is_empty()) {
            None => Field::ALL
                .iter()
                .map(|(_, f)| *f)
                .filter(|f| !matches!(f, Field::Query | Field::Protocol))
                .collect(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .map(|name| {
                    Field::ALL
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, f)| *f)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "unknown field {name:?} (known: {})",
                                Field::ALL.map(|(n, _)| n).join(", ")
                            )
                        })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Settings {
            to: if to == "-" {
                Target::Stderr
            } else {
                Target::File(PathBuf::from(to))
            },
            fields,
        })
    }
}

/// What a request's line is made of.
#[derive(Debug, Default)]
pub struct Record {
    /// When it arrived.
    pub time: Option<std::time::SystemTime>,
    /// The client's address.
    pub remote_addr: Option<String>,
    /// The method.
    pub method: String,
    /// The host.
    pub host: String,
    /// The path.
    pub path: String,
    /// The query.
    pub query: String,
    /// The protocol.
    pub protocol: String,
    /// The status.
    pub status: u16,
    /// The route.
    pub route: Option<String>,
    /// The upstream.
    pub upstream: Option<String>,
    /// The node.
    pub node: Option<String>,
    /// Time to the answer's head.
    pub duration: std::time::Duration,
    /// The node's part.
    pub upstream_time: Option<std::time::Duration>,
    /// The consumer.
    pub consumer: Option<String>,
    /// The User-Agent.
    pub user_agent: Option<String>,
    /// The trace context.
    pub traceparent: Option<String>,
}

/// The access log. See the module docs.
pub struct AccessLog {
    fields: Vec<Field>,
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

fn ms(d: std::time::Duration) -> Value {
    Value::from((d.as_secs_f64() * 1e6).round() / 1e3)
}

impl AccessLog {
    /// Opens the log (a file is created if missing, appended to) and starts its writer.
    pub fn start(settings: &Settings) -> anyhow::Result<Arc<AccessLog>> {
        let mut out: Box<dyn Write + Send> = match &settings.to {
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        anyhow::anyhow!("opening the gateway access log {}: {e}", path.display())
                    })?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("berth-access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(1 << 16, &mut out);
                while let Ok(line) = rx.recv() {
                    let mut ok = buf.write_all(line.as_bytes()).is_ok();
                    // Write what is queued, then flush once.
                    while let Ok(more) = rx.try_recv() {
                        ok &= buf.write_all(more.as_bytes()).is_ok();
                    }
                    if !(ok && buf.flush().is_ok()) {
                        tracing::warn!("writing the gateway access log failed");
                    }
                }
            })?;
        Ok(Arc::new(AccessLog {
            fields: settings.fields.clone(),
            tx,
            dropped: AtomicU64::new(0),
        }))
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues `r`'s line; drops it (and counts it) when the writer is behind.
    pub fn log(&self, r: Record) {
        let mut m = Map::with_capacity(self.fields.len());
        for f in &self.fields {
            let v = match f {
                Field::Time => r.time.map_or(Value::Null, |t| {
                    Value::from(humantime::format_rfc3339_millis(t).to_string())
                }),
                Field::RemoteAddr => r.remote_addr.clone().map_or(Value::Null, Value::from),
                Field::Method => Value::from(r.method.as_str()),
                Field::Host => Value::from(r.host.as_str()),
                Field::Path => Value::from(r.path.as_str()),
                Field::Query => Value::from(r.query.as_str()),
                Field::Protocol => Value::from(r.protocol.as_str()),
                Field::Status => Value::from(r.status),
                Field::Route => r.route.clone().map_or(Value::Null, Value::from),
                Field::Upstream => r.upstream.clone().map_or(Value::Null, Value::from),
                Field::Node => r.node.clone().map_or(Value::Null, Value::from),
                Field::DurationMs => ms(r.duration),
                Field::UpstreamMs => r.upstream_time.map_or(Value::Null, ms),
                Field::Consumer => r.consumer.clone().map_or(Value::Null, Value::from),
                Field::UserAgent => r.user_agent.clone().map_or(Value::Null, Value::from),
                Field::Traceparent => r.traceparent.clone().map_or(Value::Null, Value::from),
            };
            m.insert(f.name().to_string(), v);
        }
        let mut line = Value::Object(m).to_string();
        line.push('\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_chosen_and_lines_written() {
        assert!(Settings::new("-", Some("status,nope")).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let s = Settings::new(
            path.to_str().expect("path"),
            Some("status, route,duration_ms"),
        )
        .expect("settings");
        let log = AccessLog::start(&s).expect("start");
        log.log(Record {
            status: 200,
            route: Some("r1".into()),
            duration: std::time::Duration::from_micros(1500),
            ..Record::default()
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.ends_with('\n') {
                let v: Value = serde_json::from_str(text.trim()).expect("a JSON line");
                assert_eq!(
                    v,
                    serde_json::json!({"status": 200, "route": "r1", "duration_ms": 1.5})
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "nothing written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(log.dropped(), 0);
    }
}
