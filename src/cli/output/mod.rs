//! The one printer every client command writes through, in etcdctl's `simple`, `json` or
//! `table` format; simple output matches etcdctl byte for byte so scripts keep working.
//!
//! # Layout
//! - this file: [`Format`], [`Printer`] and the simple/table renderings.
//! - [`json`]: etcdctl-shaped JSON for each response type.
//! - [`table`]: the bordered table renderer.

pub mod json;
pub mod table;

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Result;
use berth_proto::etcdserverpb::{
    response_op, AlarmResponse, AlarmType, DeleteRangeResponse, LeaseGrantResponse,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    Member, MemberListResponse, PutResponse, RangeResponse, TxnResponse, WatchResponse,
};
use berth_proto::mvccpb::{event::EventType, Event, KeyValue};

use self::table::Table;
use crate::cli::endpoint::{EpHashKv, EpHealth, EpStatus};

/// Output format chosen with `-w/--write-out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// etcdctl's plain text.
    Simple,
    /// The response as JSON, shaped like etcdctl's.
    Json,
    /// Bordered tables (commands without a table print simple text).
    Table,
}

/// Writes command results to `out` in one [`Format`].
pub struct Printer<W: Write = io::Stdout> {
    format: Format,
    out: W,
}

impl<W: Write> Printer<W> {
    /// A printer writing `format` to `out`.
    pub fn new(format: Format, out: W) -> Self {
        Self { format, out }
    }

    /// Gives back the writer (tests read what was printed).
    #[cfg(test)]
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Prints one line of text whatever the format (etcdctl prints some results only as text).
    pub fn line(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}")?;
        self.out.flush()?;
        Ok(())
    }

    fn json(&mut self, v: &serde_json::Value) -> Result<()> {
        self.line(&v.to_string())
    }

    fn table(&mut self, t: &Table) -> Result<()> {
        self.out.write_all(t.render().as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    /// etcdctl's `printKV`: the key on one line (unless `value_only`), the value on the next.
    /// Bytes are written raw, as etcdctl does.
    fn kv(&mut self, kv: &KeyValue, value_only: bool) -> Result<()> {
        if !value_only {
            self.out.write_all(&kv.key)?;
            self.out.write_all(b"\n")?;
        }
        self.out.write_all(&kv.value)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// `kv put`: `OK`, then the previous pair when asked for.
    pub fn put(&mut self, r: &PutResponse) -> Result<()> {
        if self.format == Format::Json {
            return self.json(&json::put(r));
        }
        self.put_simple(r)?;
        self.out.flush()?;
        Ok(())
    }

    fn put_simple(&mut self, r: &PutResponse) -> Result<()> {
        writeln!(self.out, "OK")?;
        if let Some(kv) = &r.prev_kv {
            self.kv(kv, false)?;
        }
        Ok(())
    }

    /// `kv get`: key and value lines per pair (`value_only` drops the key lines).
    pub fn get(&mut self, r: &RangeResponse, value_only: bool) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::range(r)),
            Format::Table => {
                let mut t = Table::new(&["KEY", "VALUE"]);
                for kv in &r.kvs {
                    t.row(vec![lossy(&kv.key), lossy(&kv.value)]);
                }
                self.table(&t)
            }
            Format::Simple => {
                self.get_simple(r, value_only)?;
                self.out.flush()?;
                Ok(())
            }
        }
    }

    fn get_simple(&mut self, r: &RangeResponse, value_only: bool) -> Result<()> {
        for kv in &r.kvs {
            self.kv(kv, value_only)?;
        }
        Ok(())
    }

    /// `kv get --count-only` in simple format: just the count (etcdctl 3.5 behaviour).
    pub fn count(&mut self, r: &RangeResponse) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::range(r)),
            _ => self.line(&r.count.to_string()),
        }
    }

    /// `kv del`: the number deleted, then any previous pairs.
    pub fn del(&mut self, r: &DeleteRangeResponse) -> Result<()> {
        if self.format == Format::Json {
            return self.json(&json::delete(r));
        }
        self.del_simple(r)?;
        self.out.flush()?;
        Ok(())
    }

    fn del_simple(&mut self, r: &DeleteRangeResponse) -> Result<()> {
        writeln!(self.out, "{}", r.deleted)?;
        for kv in &r.prev_kvs {
            self.kv(kv, false)?;
        }
        Ok(())
    }

    /// `kv txn`: SUCCESS or FAILURE, then each operation's result after a blank line.
    pub fn txn(&mut self, r: &TxnResponse) -> Result<()> {
        if self.format == Format::Json {
            return self.json(&json::txn(r));
        }
        self.txn_simple(r)?;
        self.out.flush()?;
        Ok(())
    }

    fn txn_simple(&mut self, r: &TxnResponse) -> Result<()> {
        writeln!(
            self.out,
            "{}",
            if r.succeeded { "SUCCESS" } else { "FAILURE" }
        )?;
        for op in &r.responses {
            writeln!(self.out)?;
            match &op.response {
                Some(response_op::Response::ResponsePut(p)) => self.put_simple(p)?,
                Some(response_op::Response::ResponseRange(g)) => self.get_simple(g, false)?,
                Some(response_op::Response::ResponseDeleteRange(d)) => self.del_simple(d)?,
                Some(response_op::Response::ResponseTxn(t)) => self.txn_simple(t)?,
                None => writeln!(self.out, "unexpected empty response")?,
            }
        }
        Ok(())
    }

    /// `kv watch`: for each event its type, the previous pair if any, then the pair.
    /// `events` is the (possibly truncated) slice of `r.events` to show.
    pub fn watch(&mut self, r: &WatchResponse, events: &[Event]) -> Result<()> {
        if self.format == Format::Json {
            return self.json(&json::watch(r, events));
        }
        for e in events {
            let kind = EventType::try_from(e.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| e.r#type.to_string());
            writeln!(self.out, "{kind}")?;
            if let Some(prev) = &e.prev_kv {
                self.kv(prev, false)?;
            }
            if let Some(kv) = &e.kv {
                self.kv(kv, false)?;
            }
        }
        self.out.flush()?;
        Ok(())
    }

    /// `lease grant`.
    pub fn lease_grant(&mut self, r: &LeaseGrantResponse) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::lease_grant(r)),
            _ => self.line(&format!(
                "lease {} granted with TTL({}s)",
                lease_hex(r.id),
                r.ttl
            )),
        }
    }

    /// `lease revoke`.
    pub fn lease_revoke(&mut self, id: i64, r: &LeaseRevokeResponse) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::lease_revoke(r)),
            _ => self.line(&format!("lease {} revoked", lease_hex(id))),
        }
    }

    /// `lease keep-alive`: one line per renewal.
    pub fn lease_keep_alive(&mut self, r: &LeaseKeepAliveResponse) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::lease_keep_alive(r)),
            _ => self.line(&format!(
                "lease {} keepalived with TTL({})",
                lease_hex(r.id),
                r.ttl
            )),
        }
    }

    /// `lease ttl` (etcdctl's `timetolive`).
    pub fn lease_ttl(&mut self, r: &LeaseTimeToLiveResponse, keys: bool) -> Result<()> {
        if self.format == Format::Json {
            return self.json(&json::lease_ttl(r));
        }
        if r.granted_ttl == 0 && r.ttl == -1 {
            return self.line(&format!("lease {} already expired", lease_hex(r.id)));
        }
        let mut text = format!(
            "lease {} granted with TTL({}s), remaining({}s)",
            lease_hex(r.id),
            r.granted_ttl,
            r.ttl
        );
        if keys {
            let names: Vec<String> = r.keys.iter().map(|k| lossy(k)).collect();
            text.push_str(&format!(", attached keys([{}])", names.join(" ")));
        }
        self.line(&text)
    }

    /// `lease list`.
    pub fn lease_list(&mut self, r: &LeaseLeasesResponse) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::lease_list(r)),
            Format::Table => {
                let mut t = Table::new(&["ID"]);
                for l in &r.leases {
                    t.row(vec![lease_hex(l.id)]);
                }
                self.table(&t)
            }
            Format::Simple => {
                writeln!(self.out, "found {} leases", r.leases.len())?;
                for l in &r.leases {
                    writeln!(self.out, "{}", lease_hex(l.id))?;
                }
                self.out.flush()?;
                Ok(())
            }
        }
    }

    /// `member list`.
    pub fn member_list(&mut self, r: &MemberListResponse) -> Result<()> {
        let header = [
            "ID",
            "STATUS",
            "NAME",
            "PEER ADDRS",
            "CLIENT ADDRS",
            "IS LEARNER",
        ];
        let rows: Vec<Vec<String>> = r.members.iter().map(member_row).collect();
        self.rows(&header, rows, || json::member_list(r))
    }

    /// `endpoint status`.
    pub fn endpoint_status(&mut self, list: &[EpStatus]) -> Result<()> {
        let header = [
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
        ];
        let rows = list
            .iter()
            .map(|s| {
                let member_id = s.resp.header.map(|h| h.member_id).unwrap_or_default();
                vec![
                    s.endpoint.clone(),
                    format!("{member_id:x}"),
                    s.resp.version.clone(),
                    human_bytes(u64::try_from(s.resp.db_size).unwrap_or_default()),
                    (s.resp.leader == member_id).to_string(),
                    s.resp.is_learner.to_string(),
                    s.resp.raft_term.to_string(),
                    s.resp.raft_index.to_string(),
                    s.resp.raft_applied_index.to_string(),
                    s.resp.errors.join(", "),
                ]
            })
            .collect();
        self.rows(&header, rows, || json::endpoint_status(list))
    }

    /// `endpoint health`: simple output goes to stderr, as etcdctl does.
    pub fn endpoint_health(&mut self, list: &[EpHealth]) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::endpoint_health(list)),
            Format::Table => {
                let mut t = Table::new(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
                for h in list {
                    t.row(vec![
                        h.endpoint.clone(),
                        h.health.to_string(),
                        h.took.clone(),
                        h.error.clone(),
                    ]);
                }
                self.table(&t)
            }
            Format::Simple => {
                let mut err = io::stderr().lock();
                for h in list {
                    if h.health {
                        writeln!(
                            err,
                            "{} is healthy: successfully committed proposal: took = {}",
                            h.endpoint, h.took
                        )?;
                    } else {
                        writeln!(
                            err,
                            "{} is unhealthy: failed to commit proposal: {}",
                            h.endpoint, h.error
                        )?;
                    }
                }
                Ok(())
            }
        }
    }

    /// `endpoint hashkv`.
    pub fn endpoint_hashkv(&mut self, list: &[EpHashKv]) -> Result<()> {
        let rows = list
            .iter()
            .map(|h| vec![h.endpoint.clone(), h.resp.hash.to_string()])
            .collect();
        self.rows(&["ENDPOINT", "HASH"], rows, || json::endpoint_hashkv(list))
    }

    /// `alarm list` / `alarm disarm`: one `memberID:<id> alarm:<TYPE>` line per alarm.
    pub fn alarms(&mut self, r: &AlarmResponse) -> Result<()> {
        match self.format {
            Format::Json => self.json(&json::alarms(r)),
            Format::Table => {
                let mut t = Table::new(&["MEMBER ID", "ALARM"]);
                for a in &r.alarms {
                    t.row(vec![format!("{:x}", a.member_id), alarm_name(a.alarm)]);
                }
                self.table(&t)
            }
            Format::Simple => {
                for a in &r.alarms {
                    writeln!(
                        self.out,
                        "memberID:{} alarm:{}",
                        a.member_id,
                        alarm_name(a.alarm)
                    )?;
                }
                self.out.flush()?;
                Ok(())
            }
        }
    }

    /// Row-shaped results: simple joins cells with `, ` (as etcdctl), table draws them.
    fn rows(
        &mut self,
        header: &[&str],
        rows: Vec<Vec<String>>,
        as_json: impl FnOnce() -> serde_json::Value,
    ) -> Result<()> {
        match self.format {
            Format::Json => self.json(&as_json()),
            Format::Table => {
                let mut t = Table::new(header);
                for r in rows {
                    t.row(r);
                }
                self.table(&t)
            }
            Format::Simple => {
                for r in rows {
                    writeln!(self.out, "{}", r.join(", "))?;
                }
                self.out.flush()?;
                Ok(())
            }
        }
    }
}

fn member_row(m: &Member) -> Vec<String> {
    let status = if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    };
    vec![
        format!("{:x}", m.id),
        status.to_string(),
        m.name.clone(),
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
        m.is_learner.to_string(),
    ]
}

fn alarm_name(alarm: i32) -> String {
    AlarmType::try_from(alarm)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| alarm.to_string())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A lease ID as etcdctl prints it: 16 hex digits.
pub fn lease_hex(id: i64) -> String {
    format!("{id:016x}")
}

/// A duration as Go's `time.Duration.String()` prints it (`1.32701ms`, `2m0.5s`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", decimal(ns, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", decimal(ns, 6));
    }
    let secs = ns / 1_000_000_000;
    let (h, m) = (secs / 3600, (secs / 60) % 60);
    let s = decimal(ns % 60_000_000_000, 9);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `v / 10^digits` written with the fraction's trailing zeros removed.
fn decimal(v: u128, digits: u32) -> String {
    let unit = 10u128.pow(digits);
    let (int, frac) = (v / unit, v % unit);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// A byte count as go-humanize's `Bytes` prints it (SI units: `20 kB`, `1.2 MB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let mut e = 0usize;
    let mut scale = 1f64;
    while e + 1 < UNITS.len() && (n as f64) >= scale * 1000.0 {
        scale *= 1000.0;
        e += 1;
    }
    let val = ((n as f64) / scale * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::etcdserverpb::{DeleteRangeResponse, RangeResponse, ResponseOp};

    fn printed(format: Format, f: impl FnOnce(&mut Printer<Vec<u8>>) -> Result<()>) -> String {
        let mut p = Printer::new(format, Vec::new());
        assert!(f(&mut p).is_ok());
        String::from_utf8_lossy(&p.into_inner()).into_owned()
    }

    fn pair(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }
    }

    #[test]
    fn simple_txn_matches_etcdctl() {
        let r = TxnResponse {
            header: None,
            succeeded: false,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        kvs: vec![pair("k1", "v1"), pair("k3", "v3")],
                        ..Default::default()
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse::default())),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(
                        DeleteRangeResponse {
                            deleted: 2,
                            ..Default::default()
                        },
                    )),
                },
            ],
        };
        let out = printed(Format::Simple, |p| p.txn(&r));
        assert_eq!(out, "FAILURE\n\nk1\nv1\nk3\nv3\n\nOK\n\n2\n");
    }

    #[test]
    fn simple_get_and_value_only() {
        let r = RangeResponse {
            kvs: vec![pair("k1", "v1"), pair("k2", "")],
            ..Default::default()
        };
        assert_eq!(
            printed(Format::Simple, |p| p.get(&r, false)),
            "k1\nv1\nk2\n\n"
        );
        assert_eq!(printed(Format::Simple, |p| p.get(&r, true)), "v1\n\n");
    }

    #[test]
    fn simple_lease_lines() {
        let g = LeaseGrantResponse {
            id: 0x694da20bd353f823,
            ttl: 100,
            ..Default::default()
        };
        assert_eq!(
            printed(Format::Simple, |p| p.lease_grant(&g)),
            "lease 694da20bd353f823 granted with TTL(100s)\n"
        );
        let t = LeaseTimeToLiveResponse {
            id: 0x694da20bd353f827,
            ttl: 29,
            granted_ttl: 30,
            keys: vec![b"lk".to_vec(), b"lk2".to_vec()],
            ..Default::default()
        };
        assert_eq!(
            printed(Format::Simple, |p| p.lease_ttl(&t, true)),
            "lease 694da20bd353f827 granted with TTL(30s), remaining(29s), attached keys([lk lk2])\n"
        );
    }

    #[test]
    fn watch_simple_prints_type_prev_and_kv() {
        let e = Event {
            r#type: EventType::Delete as i32,
            kv: Some(pair("w1", "")),
            prev_kv: Some(pair("w1", "b")),
        };
        let r = WatchResponse::default();
        assert_eq!(
            printed(Format::Simple, |p| p.watch(&r, std::slice::from_ref(&e))),
            "DELETE\nw1\nb\nw1\n\n"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_nanos(1_327_010)), "1.32701ms");
        assert_eq!(go_duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(120)), "2m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn humanized_sizes() {
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1234567), "1.2 MB");
        assert_eq!(human_bytes(999), "999 B");
    }

    #[test]
    fn lease_ids_are_16_hex_digits() {
        assert_eq!(lease_hex(0x1234), "0000000000001234");
    }
}
