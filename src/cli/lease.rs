//! `berth lease`: grant, revoke, keep-alive, ttl (etcdctl's timetolive) and list, with lease
//! IDs written and read in hex exactly as etcdctl prints them, and how each answer prints.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use berth_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::conn::status_error;
use super::output::json::{b64, opt_header, Obj};
use super::output::table::Table;
use super::output::{lossy, Render};
use super::Ctx;

/// The error etcd's client reports when a keep-alive finds no lease.
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// `berth lease <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum LeaseCommand {
    /// Create a lease with a TTL in seconds.
    Grant {
        /// Time to live, in seconds.
        ttl: String,
    },
    /// Revoke a lease, deleting its keys.
    Revoke {
        /// Lease ID in hex.
        id: String,
    },
    /// Keep a lease alive until interrupted (or once).
    KeepAlive {
        /// Lease ID in hex.
        id: String,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's granted and remaining TTL.
    #[command(alias = "timetolive")]
    Ttl {
        /// Lease ID in hex.
        id: String,
        /// Also list the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// List all active leases.
    List,
}

/// A lease ID as etcdctl prints it: 16 hex digits.
pub fn lease_hex(id: i64) -> String {
    format!("{id:016x}")
}

/// Parses a lease ID as etcdctl does (hex, as printed by `lease grant`).
pub fn parse_lease_id(s: &str) -> Result<i64> {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    i64::from_str_radix(digits, 16)
        .or_else(|_| u64::from_str_radix(digits, 16).map(|v| v as i64))
        .map_err(|e| anyhow!("bad lease ID arg ({e}), expecting ID in Hex"))
}

/// Runs one `lease` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: LeaseCommand) -> Result<()> {
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let ttl: i64 = ttl.parse().map_err(|e| anyhow!("bad TTL ({e})"))?;
            let mut c = ctx.conn.lease().await?;
            let resp = ctx
                .conn
                .call(c.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
                .await?;
            if !resp.error.is_empty() {
                bail!("{}", resp.error);
            }
            ctx.out.print(&resp)
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease_id(&id)?;
            let mut c = ctx.conn.lease().await?;
            let resp = ctx
                .conn
                .call(c.lease_revoke(LeaseRevokeRequest { id }))
                .await
                .map_err(|e| anyhow!("failed to revoke lease ({e})"))?;
            ctx.out.print(&Revoked { id, resp })
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive(ctx, parse_lease_id(&id)?, once).await,
        LeaseCommand::Ttl { id, keys } => {
            let id = parse_lease_id(&id)?;
            let mut c = ctx.conn.lease().await?;
            let resp = ctx
                .conn
                .call(c.lease_time_to_live(LeaseTimeToLiveRequest { id, keys }))
                .await?;
            ctx.out.print(&Ttl { resp, keys })
        }
        LeaseCommand::List => {
            let mut c = ctx.conn.lease().await?;
            let resp = ctx.conn.call(c.lease_leases(LeaseLeasesRequest {})).await?;
            ctx.out.print(&resp)
        }
    }
}

/// Renews the lease every third of its TTL (as etcd's client does) until it is gone,
/// the user interrupts, or after one renewal with `once`.
async fn keep_alive(ctx: &mut Ctx, id: i64, once: bool) -> Result<()> {
    let mut c = ctx.conn.lease().await?;
    let (tx, rx) = mpsc::channel(1);
    let req = LeaseKeepAliveRequest { id };
    tx.send(req)
        .await
        .map_err(|_| anyhow!("keep-alive stream closed"))?;
    let mut stream = ctx
        .conn
        .call(c.lease_keep_alive(ReceiverStream::new(rx)))
        .await?;
    loop {
        let next = async {
            if once {
                ctx.conn
                    .call(async { Ok(tonic::Response::new(stream.message().await?)) })
                    .await
            } else {
                stream.message().await.map_err(|s| status_error(&s))
            }
        };
        let msg = tokio::select! {
            msg = next => msg?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let resp = match msg {
            Some(r) if r.ttl > 0 => r,
            _ if once => bail!(LEASE_NOT_FOUND),
            _ => {
                return ctx
                    .out
                    .line(&format!("lease {} expired or revoked.", lease_hex(id)));
            }
        };
        ctx.out.print(&resp)?;
        if once {
            return Ok(());
        }
        let pause = Duration::from_millis(u64::try_from(resp.ttl).unwrap_or(0) * 1000 / 3)
            .max(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        tx.send(req)
            .await
            .map_err(|_| anyhow!("keep-alive stream closed"))?;
    }
}

/// `lease grant` (JSON: header fields inline, Go field names).
impl Render for LeaseGrantResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "lease {} granted with TTL({}s)",
            lease_hex(self.id),
            self.ttl
        )
    }

    fn json(&self) -> Value {
        Obj::new()
            .header_fields(self.header.as_ref())
            .always("ID", self.id)
            .always("TTL", self.ttl)
            .always("Error", self.error.as_str())
            .build()
    }
}

/// `lease revoke`: the answer carries no ID, so the printed line takes it from the request.
pub struct Revoked {
    /// The lease revoked.
    pub id: i64,
    /// What the server answered.
    pub resp: LeaseRevokeResponse,
}

impl Render for Revoked {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "lease {} revoked", lease_hex(self.id))
    }

    fn json(&self) -> Value {
        Obj::new()
            .opt("header", opt_header(self.resp.header.as_ref()))
            .build()
    }
}

/// `lease keep-alive`: one line per renewal.
impl Render for LeaseKeepAliveResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "lease {} keepalived with TTL({})",
            lease_hex(self.id),
            self.ttl
        )
    }

    fn json(&self) -> Value {
        Obj::new()
            .header_fields(self.header.as_ref())
            .always("ID", self.id)
            .always("TTL", self.ttl)
            .build()
    }
}

/// `lease ttl` (etcdctl's `timetolive`); `keys` (`--keys`) lists the attached keys in simple
/// text.
pub struct Ttl {
    /// What the server answered.
    pub resp: LeaseTimeToLiveResponse,
    /// Whether the attached keys were asked for.
    pub keys: bool,
}

impl Render for Ttl {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = &self.resp;
        if r.granted_ttl == 0 && r.ttl == -1 {
            return writeln!(out, "lease {} already expired", lease_hex(r.id));
        }
        let mut text = format!(
            "lease {} granted with TTL({}s), remaining({}s)",
            lease_hex(r.id),
            r.granted_ttl,
            r.ttl
        );
        if self.keys {
            let names: Vec<String> = r.keys.iter().map(|k| lossy(k)).collect();
            text.push_str(&format!(", attached keys([{}])", names.join(" ")));
        }
        writeln!(out, "{text}")
    }

    /// `keys` is `null` when there are none, as Go prints a nil slice.
    fn json(&self) -> Value {
        let r = &self.resp;
        let keys = if r.keys.is_empty() {
            Value::Null
        } else {
            Value::Array(r.keys.iter().map(|k| Value::from(b64(k))).collect())
        };
        Obj::new()
            .header_fields(r.header.as_ref())
            .always("id", r.id)
            .always("ttl", r.ttl)
            .always("granted-ttl", r.granted_ttl)
            .always("keys", keys)
            .build()
    }
}

/// `lease list`: a count line then one ID per line; an ID table.
impl Render for LeaseLeasesResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "found {} leases", self.leases.len())?;
        for l in &self.leases {
            writeln!(out, "{}", lease_hex(l.id))?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let leases = self
            .leases
            .iter()
            .map(|l| Obj::new().always("id", l.id).build())
            .collect::<Vec<_>>();
        Obj::new()
            .header_fields(self.header.as_ref())
            .always("leases", leases)
            .build()
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut t = Table::new(&["ID"]);
        for l in &self.leases {
            t.row(vec![lease_hex(l.id)]);
        }
        t.write_to(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::json::test_header;
    use crate::cli::output::{printed, Format};

    #[test]
    fn lease_ids_round_trip_in_hex() {
        let id = 0x694d71ddacfda227;
        assert_eq!(parse_lease_id(&lease_hex(id)).ok(), Some(id));
        assert_eq!(parse_lease_id("0x10").ok(), Some(16));
        assert_eq!(parse_lease_id("0").ok(), Some(0));
        assert_eq!(parse_lease_id("ffffffffffffffff").ok(), Some(-1));
        let err = parse_lease_id("zz").err().map(|e| e.to_string());
        assert_eq!(
            err,
            Some("bad lease ID arg (invalid digit found in string), expecting ID in Hex".into())
        );
    }

    #[test]
    fn lease_ids_are_16_hex_digits() {
        assert_eq!(lease_hex(0x1234), "0000000000001234");
    }

    #[test]
    fn simple_lease_lines() {
        let g = LeaseGrantResponse {
            id: 0x694da20bd353f823,
            ttl: 100,
            ..Default::default()
        };
        assert_eq!(
            printed(Format::Simple, &g),
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
            printed(Format::Simple, &Ttl { resp: t, keys: true }),
            "lease 694da20bd353f827 granted with TTL(30s), remaining(29s), attached keys([lk lk2])\n"
        );
    }

    // Expected strings captured from etcdctl 3.4 against etcd 3.4.
    #[test]
    fn lease_shapes_match_etcdctl() {
        let g = LeaseGrantResponse {
            header: test_header(17),
            id: 7587899118862989349,
            ttl: 50,
            error: String::new(),
        };
        assert_eq!(
            g.json().to_string(),
            r#"{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":17,"raft_term":2,"ID":7587899118862989349,"TTL":50,"Error":""}"#
        );
        let t = LeaseTimeToLiveResponse {
            header: test_header(19),
            id: 7587899118862989351,
            ttl: -1,
            granted_ttl: 0,
            keys: vec![],
        };
        assert_eq!(
            Ttl {
                resp: t,
                keys: false
            }
            .json()
            .to_string(),
            r#"{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":19,"raft_term":2,"id":7587899118862989351,"ttl":-1,"granted-ttl":0,"keys":null}"#
        );
    }
}
