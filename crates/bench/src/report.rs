//! Measurements and their report: per-client [`Recorder`]s (HDR histograms in microseconds,
//! error counts by kind) merged into one [`Report`], printed as text or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::BenchError;

/// Highest latency a histogram tells apart: one hour, in microseconds (longer ones saturate).
const MAX_MICROS: u64 = 3_600_000_000;
/// Distinct error texts kept; further kinds are counted under [`OTHER_ERRORS`].
const MAX_ERROR_KINDS: usize = 16;
/// The bucket for error kinds past [`MAX_ERROR_KINDS`].
const OTHER_ERRORS: &str = "other errors";

/// A gRPC status as a short error kind: its code and message.
pub fn status_label(status: &tonic::Status) -> String {
    let mut s = format!("{:?}: {}", status.code(), status.message());
    if s.len() > 160 {
        let mut cut = 160;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Latencies and errors seen by one client (or merged from several).
#[derive(Debug, Clone)]
pub struct Recorder {
    all: Histogram<u64>,
    kinds: BTreeMap<&'static str, Histogram<u64>>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Result<Self, BenchError> {
        let all = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
        Ok(Self {
            all,
            kinds: BTreeMap::new(),
            errors: 0,
            error_kinds: BTreeMap::new(),
        })
    }

    /// Records one successful operation of `kind` that took `latency`.
    pub fn record(&mut self, kind: &'static str, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_micros(kind, micros);
    }

    /// Records one successful operation of `kind` that took `micros` microseconds.
    pub fn record_micros(&mut self, kind: &'static str, micros: u64) {
        self.all.saturating_record(micros);
        let template = &self.all;
        self.kinds
            .entry(kind)
            .or_insert_with(|| Histogram::new_from(template))
            .saturating_record(micros);
    }

    /// Records one failed operation.
    pub fn error(&mut self, kind: String) {
        self.errors += 1;
        let full = self.error_kinds.len() >= MAX_ERROR_KINDS;
        if full && !self.error_kinds.contains_key(&kind) {
            *self.error_kinds.entry(OTHER_ERRORS.into()).or_default() += 1;
        } else {
            *self.error_kinds.entry(kind).or_default() += 1;
        }
    }

    /// Adds another recorder's measurements to this one.
    pub fn merge(&mut self, other: Recorder) {
        // Both histograms share MAX_MICROS and saturate on record, so adding cannot overflow
        // the range; should it fail anyway, the loss is reported rather than hidden.
        if self.all.add(&other.all).is_err() {
            self.error("internal: lost a client's latency histogram".into());
        }
        for (kind, h) in other.kinds {
            match self.kinds.get_mut(kind) {
                Some(mine) => {
                    if mine.add(&h).is_err() {
                        self.error("internal: lost a client's latency histogram".into());
                    }
                }
                None => {
                    self.kinds.insert(kind, h);
                }
            }
        }
        self.errors += other.errors;
        for (kind, n) in other.error_kinds {
            let key = if self.error_kinds.len() >= MAX_ERROR_KINDS
                && !self.error_kinds.contains_key(&kind)
            {
                OTHER_ERRORS.to_string()
            } else {
                kind
            };
            *self.error_kinds.entry(key).or_default() += n;
        }
    }

    /// Successful operations recorded.
    pub fn ops(&self) -> u64 {
        self.all.len()
    }

    /// Failed operations recorded.
    pub fn errors(&self) -> u64 {
        self.errors
    }
}

/// Latency summary in milliseconds (microsecond resolution).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean().round() / 1000.0,
        }
    }

    /// `{"p50", "p90", "p99", "p999", "max", "mean"}` in milliseconds.
    pub fn to_json(&self) -> Value {
        json!({
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "p999": self.p999,
            "max": self.max,
            "mean": self.mean,
        })
    }

    fn to_text(self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.p50, self.p90, self.p99, self.p999, self.max, self.mean
        )
    }
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Workload name (`put`, `range`, …).
    pub workload: &'static str,
    /// Successful operations in the measured phase.
    pub ops: u64,
    /// Failed operations in the measured phase.
    pub errors: u64,
    /// Length of the measured phase in seconds.
    pub duration_s: f64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Latency of all successful operations.
    pub latency: Latency,
    /// Concurrent requesters.
    pub clients: usize,
    /// gRPC connections.
    pub conns: usize,
    /// The run's parameters.
    pub params: Value,
    /// Latency per operation kind (`read`/`write`, `commit`/`conflict`, …).
    pub by_kind: Vec<(String, Latency)>,
    /// Error counts per kind.
    pub error_kinds: Vec<(String, u64)>,
    /// Workload-specific figures (watch setup time, missing events, …).
    pub extra: Map<String, Value>,
}

impl Report {
    /// Builds the report of a measured phase that lasted `elapsed`.
    pub fn new(cfg: &Config, rec: &Recorder, elapsed: Duration) -> Self {
        let duration_s = elapsed.as_secs_f64();
        let ops = rec.ops();
        let throughput = if duration_s > 0.0 {
            ops as f64 / duration_s
        } else {
            0.0
        };
        Self {
            workload: cfg.workload.name(),
            ops,
            errors: rec.errors(),
            duration_s: round3(duration_s),
            throughput: (throughput * 10.0).round() / 10.0,
            latency: Latency::of(&rec.all),
            clients: cfg.clients,
            conns: cfg.conns,
            params: cfg.params(),
            by_kind: rec
                .kinds
                .iter()
                .map(|(k, h)| (k.to_string(), Latency::of(h)))
                .collect(),
            error_kinds: rec
                .error_kinds
                .iter()
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
            extra: Map::new(),
        }
    }

    /// Adds a workload-specific figure.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "workload": self.workload,
            "ops": self.ops,
            "errors": self.errors,
            "duration_s": self.duration_s,
            "throughput": self.throughput,
            "latency_ms": self.latency.to_json(),
            "clients": self.clients,
            "conns": self.conns,
            "params": self.params,
        });
        let by_kind: Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, l)| {
                (
                    k.clone(),
                    json!({"ops": l.count, "latency_ms": l.to_json()}),
                )
            })
            .collect();
        v["by_kind"] = Value::Object(by_kind);
        let errs: Map<String, Value> = self
            .error_kinds
            .iter()
            .map(|(k, n)| (k.clone(), json!(n)))
            .collect();
        v["error_kinds"] = Value::Object(errs);
        for (k, x) in &self.extra {
            v[k.as_str()] = x.clone();
        }
        v
    }

    /// The report as text for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let params = match &self.params {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        let _ = writeln!(
            s,
            "{}: {} clients, {} conns ({params})",
            self.workload, self.clients, self.conns
        );
        let _ = writeln!(s, "  duration    {:.3} s", self.duration_s);
        let _ = writeln!(s, "  ops         {}", self.ops);
        let _ = writeln!(s, "  errors      {}", self.errors);
        let _ = writeln!(s, "  throughput  {:.1} ops/s", self.throughput);
        let _ = writeln!(s, "  latency ms  {}", self.latency.to_text());
        if self.by_kind.len() > 1
            || self
                .by_kind
                .first()
                .is_some_and(|(_, l)| l.count != self.ops)
        {
            for (k, l) in &self.by_kind {
                let _ = writeln!(s, "  {k:<10}  {} ops; ms {}", l.count, l.to_text());
            }
        }
        for (k, n) in &self.error_kinds {
            let _ = writeln!(s, "  error       {n} x {k}");
        }
        for (k, v) in &self.extra {
            let _ = writeln!(s, "  {k:<10}  {v}");
        }
        s
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> Recorder {
        Recorder::new().expect("recorder")
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut r = recorder();
        for us in 1..=1000 {
            r.record_micros("put", us * 10);
        }
        let l = Latency::of(&r.all);
        assert_eq!(l.count, 1000);
        // 3 significant figures: within 0.1%.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(near(l.p50, 5.0), "{l:?}");
        assert!(near(l.p90, 9.0), "{l:?}");
        assert!(near(l.p99, 9.9), "{l:?}");
        assert!(near(l.p999, 9.99), "{l:?}");
        assert!(near(l.max, 10.0), "{l:?}");
        assert!(near(l.mean, 5.005), "{l:?}");
    }

    #[test]
    fn merging_adds_ops_kinds_and_errors() {
        let mut a = recorder();
        let mut b = recorder();
        a.record("read", Duration::from_micros(100));
        b.record("read", Duration::from_micros(300));
        b.record("write", Duration::from_millis(2));
        b.error("Unavailable: down".into());
        a.error("Unavailable: down".into());
        a.merge(b);
        assert_eq!(a.ops(), 3);
        assert_eq!(a.errors(), 2);
        assert_eq!(a.kinds.get("read").map(|h| h.len()), Some(2));
        assert_eq!(a.kinds.get("write").map(|h| h.len()), Some(1));
        assert_eq!(a.error_kinds.get("Unavailable: down"), Some(&2));
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut r = recorder();
        for i in 0..100 {
            r.error(format!("kind {i}"));
        }
        r.error("kind 0".into());
        assert_eq!(r.errors(), 101);
        assert_eq!(r.error_kinds.len(), MAX_ERROR_KINDS + 1);
        assert_eq!(r.error_kinds.get("kind 0"), Some(&2));
        assert_eq!(r.error_kinds.get(OTHER_ERRORS), Some(&84));
    }

    #[test]
    fn huge_latencies_saturate_instead_of_failing() {
        let mut r = recorder();
        r.record("put", Duration::from_secs(100_000));
        assert_eq!(r.ops(), 1);
        assert!(Latency::of(&r.all).max >= 3_599_000.0);
    }

    #[test]
    fn json_report_has_the_documented_shape() {
        let mut r = recorder();
        for _ in 0..10 {
            r.record("commit", Duration::from_millis(2));
        }
        r.record("conflict", Duration::from_millis(4));
        r.error("DeadlineExceeded: timeout".into());
        let cfg = Config {
            clients: 16,
            conns: 4,
            workload: crate::Workload::Txn,
            ..Config::default()
        };
        let v = Report::new(&cfg, &r, Duration::from_secs(2))
            .with("setup_s", json!(0.5))
            .to_json();
        assert_eq!(v["workload"], json!("txn"));
        assert_eq!(v["ops"], json!(11));
        assert_eq!(v["errors"], json!(1));
        assert_eq!(v["duration_s"], json!(2.0));
        assert_eq!(v["throughput"], json!(5.5));
        assert_eq!(v["clients"], json!(16));
        assert_eq!(v["conns"], json!(4));
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][p].is_f64(), "latency_ms.{p} missing in {v}");
        }
        assert!((v["latency_ms"]["p50"].as_f64().unwrap_or(0.0) - 2.0).abs() < 0.01);
        assert!((v["latency_ms"]["max"].as_f64().unwrap_or(0.0) - 4.0).abs() < 0.01);
        assert_eq!(v["by_kind"]["commit"]["ops"], json!(10));
        assert_eq!(v["by_kind"]["conflict"]["ops"], json!(1));
        assert_eq!(v["error_kinds"]["DeadlineExceeded: timeout"], json!(1));
        assert_eq!(v["setup_s"], json!(0.5));
        assert_eq!(v["params"]["key_count"], json!(10_000));
    }

    #[test]
    fn empty_runs_report_zeros() {
        let v = Report::new(&Config::default(), &recorder(), Duration::ZERO).to_json();
        assert_eq!(v["ops"], json!(0));
        assert_eq!(v["throughput"], json!(0.0));
        assert_eq!(v["latency_ms"]["p99"], json!(0.0));
    }

    #[test]
    fn text_report_names_the_figures() {
        let mut r = recorder();
        r.record("put", Duration::from_millis(1));
        let t = Report::new(&Config::default(), &r, Duration::from_secs(1)).to_text();
        assert!(t.starts_with("put: 1 clients, 1 conns"), "{t}");
        assert!(t.contains("throughput  1.0 ops/s"), "{t}");
        assert!(t.contains("p99 1.000"), "{t}");
    }

    #[test]
    fn status_labels_are_short() {
        let s = tonic::Status::unavailable("x".repeat(500));
        assert_eq!(status_label(&s).len(), 160);
        let s = tonic::Status::invalid_argument("etcdserver: bad");
        assert_eq!(status_label(&s), "InvalidArgument: etcdserver: bad");
    }
}
