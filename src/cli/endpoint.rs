//! `berth endpoint status|health|hashkv`: asks every endpoint (or, with `--cluster`, every
//! member's client URL) for its status, health or KV hash, reporting per endpoint like etcdctl
//! (each list of per-endpoint results renders itself, at the end of this file).

use std::io::{self, Write};
use std::time::Instant;

use anyhow::{bail, Result};
use berth_proto::etcdserverpb::{
    alarm_request::AlarmAction, kv_client::KvClient, maintenance_client::MaintenanceClient,
    AlarmRequest, AlarmType, HashKvRequest, HashKvResponse, RangeRequest, StatusRequest,
    StatusResponse,
};
use serde_json::Value;
use tonic::Code;

use super::conn::{Conn, Rpc};
use super::output::json::{opt_header, Obj};
use super::output::table::Table;
use super::output::{go_duration, human_bytes, Render, Rows};
use super::Ctx;

/// `berth endpoint <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum EndpointCommand {
    /// Show each endpoint's status (version, DB size, leader, raft indexes).
    Status {
        /// Use every member's client URLs instead of --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Check that each endpoint can serve a linearizable read.
    Health {
        /// Use every member's client URLs instead of --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Show each endpoint's hash of the key-value history.
    Hashkv {
        /// Use every member's client URLs instead of --endpoints.
        #[arg(long)]
        cluster: bool,
        /// Hash up to this revision (0 for the latest).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

/// One endpoint's `Status` answer.
pub struct EpStatus {
    /// The endpoint as given or discovered.
    pub endpoint: String,
    /// What it answered.
    pub resp: StatusResponse,
}

/// One endpoint's health check result.
pub struct EpHealth {
    /// The endpoint as given or discovered.
    pub endpoint: String,
    /// Whether the check passed.
    pub health: bool,
    /// How long the read took, formatted as Go prints durations.
    pub took: String,
    /// Why the check failed (empty when healthy).
    pub error: String,
}

/// One endpoint's `HashKV` answer.
pub struct EpHashKv {
    /// The endpoint as given or discovered.
    pub endpoint: String,
    /// What it answered.
    pub resp: HashKvResponse,
}

/// Runs one `endpoint` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: EndpointCommand) -> Result<()> {
    match cmd {
        EndpointCommand::Status { cluster } => status(ctx, cluster).await,
        EndpointCommand::Health { cluster } => health(ctx, cluster).await,
        EndpointCommand::Hashkv { cluster, rev } => hashkv(ctx, cluster, rev).await,
    }
}

/// `--endpoints`, or with `cluster` the client URLs of every member (deduplicated, in order).
async fn targets(ctx: &Ctx, cluster: bool) -> Result<Vec<String>> {
    if !cluster {
        return Ok(ctx.conn.endpoints().to_vec());
    }
    let resp = ctx.conn.member_list().await?;
    let mut eps: Vec<String> = Vec::new();
    for url in resp.members.iter().flat_map(|m| &m.client_ur_ls) {
        if !eps.contains(url) {
            eps.push(url.clone());
        }
    }
    Ok(eps)
}

async fn status(ctx: &mut Ctx, cluster: bool) -> Result<()> {
    let mut list = Vec::new();
    let mut failed = 0;
    for ep in targets(ctx, cluster).await? {
        let result = async {
            let mut c = ctx.conn.maintenance_to(&ep).await?;
            ctx.conn.call(c.status(StatusRequest {})).await
        }
        .await;
        match result {
            Ok(resp) => list.push(EpStatus { endpoint: ep, resp }),
            Err(e) => {
                failed += 1;
                eprintln!("Failed to get the status of endpoint {ep} ({e:#})");
            }
        }
    }
    ctx.out.print(list.as_slice())?;
    if failed > 0 {
        bail!("failed to get the status of {failed} endpoint(s)");
    }
    Ok(())
}

async fn hashkv(ctx: &mut Ctx, cluster: bool, revision: i64) -> Result<()> {
    let mut list = Vec::new();
    let mut failed = 0;
    for ep in targets(ctx, cluster).await? {
        let result = async {
            let mut c = ctx.conn.maintenance_to(&ep).await?;
            ctx.conn.call(c.hash_kv(HashKvRequest { revision })).await
        }
        .await;
        match result {
            Ok(resp) => list.push(EpHashKv { endpoint: ep, resp }),
            Err(e) => {
                failed += 1;
                eprintln!("Failed to get the hash of endpoint {ep} ({e:#})");
            }
        }
    }
    ctx.out.print(list.as_slice())?;
    if failed > 0 {
        bail!("failed to get the hash of {failed} endpoint(s)");
    }
    Ok(())
}

async fn health(ctx: &mut Ctx, cluster: bool) -> Result<()> {
    let eps = targets(ctx, cluster).await?;
    let conn = &ctx.conn;
    let list = futures::future::join_all(eps.into_iter().map(|ep| check(conn, ep))).await;
    ctx.out.print(list.as_slice())?;
    if list.iter().any(|h| !h.health) {
        bail!("unhealthy cluster");
    }
    Ok(())
}

/// etcdctl's check: a linearizable read of key `health` must go through (permission denied
/// counts, since it still needed consensus), and no alarm may be raised.
async fn check(conn: &Conn, ep: String) -> EpHealth {
    let mut h = EpHealth {
        endpoint: ep,
        health: false,
        took: String::new(),
        error: String::new(),
    };
    let channel = match conn.channel_to(&h.endpoint).await {
        Ok(c) => c,
        Err(e) => {
            h.error = format!("{e:#}");
            return h;
        }
    };
    let read = RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    let start = Instant::now();
    let result = conn.call(KvClient::new(channel.clone()).range(read)).await;
    h.took = go_duration(start.elapsed());
    match result {
        Ok(_) => h.health = true,
        Err(e) if e.downcast_ref::<Rpc>().map(|r| r.code) == Some(Code::PermissionDenied) => {
            h.health = true
        }
        Err(e) => h.error = e.to_string(),
    }
    if !h.health {
        return h;
    }
    let alarms = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: 0,
    };
    match conn
        .call(MaintenanceClient::new(channel).alarm(alarms))
        .await
    {
        Ok(resp) if !resp.alarms.is_empty() => {
            h.health = false;
            h.error = "Active Alarm(s): ".to_string();
            for a in &resp.alarms {
                let name = match AlarmType::try_from(a.alarm) {
                    Ok(AlarmType::Nospace) => "NOSPACE",
                    Ok(AlarmType::Corrupt) => "CORRUPT",
                    _ => "UNKNOWN",
                };
                h.error.push_str(name);
                h.error.push(' ');
            }
        }
        Ok(_) => {}
        // A server without the alarm API has no alarms to report.
        Err(e) if e.downcast_ref::<Rpc>().map(|r| r.code) == Some(Code::Unimplemented) => {}
        Err(_) => {
            h.health = false;
            h.error = "Unable to fetch the alarm list".to_string();
        }
    }
    h
}

/// `endpoint status`: one row per endpoint.
impl Render for [EpStatus] {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        status_rows(self).simple(out)
    }

    fn json(&self) -> Value {
        Value::Array(
            self.iter()
                .map(|s| {
                    Obj::new()
                        .always("Endpoint", s.endpoint.as_str())
                        .always("Status", status_json(&s.resp))
                        .build()
                })
                .collect(),
        )
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        status_rows(self).table(out)
    }
}

fn status_rows(list: &[EpStatus]) -> Rows<'static> {
    const HEADER: &[&str] = &[
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
    Rows::new(HEADER, rows)
}

fn status_json(r: &StatusResponse) -> Value {
    let errors = r.errors.iter().map(|s| Value::from(s.as_str())).collect();
    Obj::new()
        .opt("header", opt_header(r.header.as_ref()))
        .str("version", &r.version)
        .num("dbSize", r.db_size)
        .num("leader", r.leader)
        .num("raftIndex", r.raft_index)
        .num("raftTerm", r.raft_term)
        .num("raftAppliedIndex", r.raft_applied_index)
        .list("errors", errors)
        .num("dbSizeInUse", r.db_size_in_use)
        .flag("isLearner", r.is_learner)
        .str("storageVersion", &r.storage_version)
        .num("dbSizeQuota", r.db_size_quota)
        .build()
}

/// `endpoint health`: simple output goes to stderr, as etcdctl does.
impl Render for [EpHealth] {
    fn simple(&self, _out: &mut dyn Write) -> io::Result<()> {
        let mut err = io::stderr().lock();
        for h in self {
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

    fn json(&self) -> Value {
        Value::Array(
            self.iter()
                .map(|h| {
                    Obj::new()
                        .always("endpoint", h.endpoint.as_str())
                        .always("health", h.health)
                        .always("took", h.took.as_str())
                        .str("error", &h.error)
                        .build()
                })
                .collect(),
        )
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut t = Table::new(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"]);
        for h in self {
            t.row(vec![
                h.endpoint.clone(),
                h.health.to_string(),
                h.took.clone(),
                h.error.clone(),
            ]);
        }
        t.write_to(out)
    }
}

/// `endpoint hashkv`: one row per endpoint.
impl Render for [EpHashKv] {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        hashkv_rows(self).simple(out)
    }

    fn json(&self) -> Value {
        Value::Array(
            self.iter()
                .map(|h| {
                    Obj::new()
                        .always("Endpoint", h.endpoint.as_str())
                        .always("HashKV", hashkv_json(&h.resp))
                        .build()
                })
                .collect(),
        )
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        hashkv_rows(self).table(out)
    }
}

fn hashkv_rows(list: &[EpHashKv]) -> Rows<'static> {
    let rows = list
        .iter()
        .map(|h| vec![h.endpoint.clone(), h.resp.hash.to_string()])
        .collect();
    Rows::new(&["ENDPOINT", "HASH"], rows)
}

fn hashkv_json(r: &HashKvResponse) -> Value {
    Obj::new()
        .opt("header", opt_header(r.header.as_ref()))
        .num("hash", r.hash)
        .num("compact_revision", r.compact_revision)
        .num("hash_revision", r.hash_revision)
        .build()
}
