//! `watch`: N watchers on one key (or the key prefix), spread over watch streams that are spread
//! round-robin over the connections, and one writer putting at `--rate`.
//!
//! The writer puts its send time (nanoseconds since the UNIX epoch) at the start of each value;
//! each watcher records receive time − send time, so the delay covers commit, fan-out and
//! delivery. Every acknowledged measured put should reach every watcher: events still missing
//! after a drain period are reported as `missing_events` and counted as errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::client::Transport;
use berth_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;

use super::conn_for;
use crate::config::{Config, Workload};
use crate::driver::{run_clients, Worker};
use crate::keys::{self, prefix_end, read_stamp, stamp, unix_nanos, KeyPicker, KeySpace};
use crate::report::{status_label, Latency, Recorder, Report};
use crate::BenchError;

/// Longest wait for the last events after the writer stops.
const DRAIN: Duration = Duration::from_secs(5);
/// Shortest time allowed for creating one stream's watchers.
const MIN_SETUP: Duration = Duration::from_secs(60);

/// Runs `watch`.
pub async fn run(cfg: &Config, channels: &[Transport]) -> Result<Report, BenchError> {
    let Workload::Watch {
        watchers,
        streams,
        prefix,
    } = cfg.workload
    else {
        return Err(BenchError::Config("not a watch workload".into()));
    };
    let space = KeySpace::new(&cfg.key_prefix, cfg.key_size, cfg.key_count)?;
    let (key, range_end) = if prefix {
        (space.prefix().to_vec(), prefix_end(space.prefix()))
    } else {
        (space.key(0), Vec::new())
    };

    let setup = Instant::now();
    let setup_timeout = cfg.timeout.max(MIN_SETUP);
    let opening: Vec<_> = (0..streams)
        .filter_map(|s| {
            let n = per_stream(watchers, streams, s);
            (n > 0).then(|| {
                let ch = conn_for(channels, s);
                let (key, range_end) = (key.clone(), range_end.clone());
                tokio::spawn(open_stream(ch, key, range_end, n, setup_timeout))
            })
        })
        .collect();
    let mut opened = Vec::with_capacity(opening.len());
    for o in opening {
        opened.push(o.await.map_err(|e| BenchError::Setup {
            what: "creating watchers",
            message: e.to_string(),
        })??);
    }
    let setup_s = setup.elapsed().as_secs_f64();

    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let receivers: Vec<_> = opened
        .into_iter()
        .map(|st| tokio::spawn(receive(st, received.clone(), stop_rx.clone())))
        .collect();

    let writer_cfg = Config {
        clients: 1,
        ..cfg.clone()
    };
    let writer = Writer {
        kv: KvClient::new(conn_for(channels, 0)),
        keys: KeyPicker::new(space.clone(), cfg.key_order, cfg.seed, 0, Arc::default()),
        fixed_key: (!prefix).then(|| key.clone()),
        value: keys::value(cfg.val_size),
    };
    let (puts, elapsed) = run_clients(&writer_cfg, vec![writer]).await?;

    let expected = puts.ops().saturating_mul(watchers);
    let drain_until = Instant::now() + DRAIN;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut events = Recorder::new()?;
    for r in receivers {
        match r.await {
            Ok(Ok(rec)) => events.merge(rec),
            Ok(Err(e)) => return Err(e),
            Err(e) => events.error(format!("watch receiver failed: {e}")),
        }
    }
    let got = received.load(Ordering::Relaxed);
    let missing = expected.saturating_sub(got);

    let mut report = Report::new(&writer_cfg, &events, elapsed);
    let put_report = Report::new(&writer_cfg, &puts, elapsed);
    report.errors += put_report.errors + missing;
    report.error_kinds.extend(
        put_report
            .error_kinds
            .iter()
            .map(|(k, n)| (format!("put: {k}"), *n)),
    );
    if missing > 0 {
        report.error_kinds.push(("missing events".into(), missing));
    }
    let put_latency = put_report
        .by_kind
        .first()
        .map(|(_, l)| *l)
        .unwrap_or_default();
    Ok(report
        .with("watchers", json!(watchers))
        .with("streams", json!(streams))
        .with("puts", json!(puts.ops()))
        .with("put_errors", json!(puts.errors()))
        .with("put_latency_ms", Latency::to_json(&put_latency))
        .with("expected_events", json!(expected))
        .with("missing_events", json!(missing))
        .with("setup_s", json!((setup_s * 1000.0).round() / 1000.0)))
}

/// How many of `watchers` go on stream `s` of `streams` (the first ones take the remainder).
pub fn per_stream(watchers: u64, streams: usize, s: usize) -> u64 {
    let streams = streams.max(1) as u64;
    watchers / streams + u64::from((s as u64) < watchers % streams)
}

/// A watch stream with its watchers created.
struct Stream {
    /// Kept open: closing the send side would end the stream.
    _requests: mpsc::UnboundedSender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

/// Opens a stream on `ch` and creates `n` watchers on `key..range_end`, waiting for each.
async fn open_stream(
    ch: Transport,
    key: Vec<u8>,
    range_end: Vec<u8>,
    n: u64,
    timeout: Duration,
) -> Result<Stream, BenchError> {
    let what = "creating watchers";
    let fail = |message: String| BenchError::Setup { what, message };
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let create = WatchCreateRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            ..Default::default()
        };
        let req = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        tx.send(req)
            .map_err(|_| fail("watch request queue closed".into()))?;
    }
    let mut client = WatchClient::new(ch);
    let mut responses =
        match tokio::time::timeout_at(deadline, client.watch(UnboundedReceiverStream::new(rx)))
            .await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(BenchError::setup(what, &s)),
            Err(_) => return Err(fail(format!("no watch stream within {timeout:?}"))),
        };
    let mut created = 0;
    while created < n {
        match tokio::time::timeout_at(deadline, responses.message()).await {
            Ok(Ok(Some(r))) if r.canceled => {
                return Err(fail(format!("watch canceled: {}", r.cancel_reason)))
            }
            Ok(Ok(Some(r))) => created += u64::from(r.created),
            Ok(Ok(None)) => return Err(fail("watch stream closed".into())),
            Ok(Err(s)) => return Err(BenchError::setup(what, &s)),
            Err(_) => {
                return Err(fail(format!(
                    "{created} of {n} watchers created within {timeout:?}"
                )))
            }
        }
    }
    Ok(Stream {
        _requests: tx,
        responses,
    })
}

/// Records the delay of every measured event on one stream until told to stop.
async fn receive(
    mut st: Stream,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<Recorder, BenchError> {
    let mut rec = Recorder::new()?;
    loop {
        let msg = tokio::select! {
            m = st.responses.message() => m,
            _ = stop.changed() => break,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                rec.error("watch stream closed by the server".into());
                break;
            }
            Err(s) => {
                rec.error(status_label(&s));
                break;
            }
        };
        let now = unix_nanos();
        if resp.canceled {
            rec.error(format!("watch canceled: {}", resp.cancel_reason));
        }
        for kv in resp.events.iter().filter_map(|e| e.kv.as_ref()) {
            match read_stamp(&kv.value) {
                Some((sent, true)) => {
                    rec.record_micros("event", now.saturating_sub(sent) / 1000);
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Some((_, false)) => {}
                None => rec.error("event without a send timestamp".into()),
            }
        }
    }
    Ok(rec)
}

/// The writer: puts values stamped with their send time.
struct Writer {
    kv: KvClient<Transport>,
    keys: KeyPicker,
    /// The one watched key, or `None` to write random keys under the watched prefix.
    fixed_key: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Worker for Writer {
    async fn op(&mut self, measured: bool) -> Result<&'static str, tonic::Status> {
        let key = match &self.fixed_key {
            Some(k) => k.clone(),
            None => self.keys.next_key(),
        };
        let mut value = self.value.clone();
        stamp(&mut value, unix_nanos(), measured);
        self.kv
            .put(PutRequest {
                key,
                value,
                ..Default::default()
            })
            .await?;
        Ok("put")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_spread_evenly_over_streams() {
        let spread: Vec<u64> = (0..4).map(|s| per_stream(10, 4, s)).collect();
        assert_eq!(spread, vec![3, 3, 2, 2]);
        assert_eq!(
            (0..8).map(|s| per_stream(10_000, 8, s)).sum::<u64>(),
            10_000
        );
        assert_eq!(per_stream(2, 4, 3), 0);
    }
}
