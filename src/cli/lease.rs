//! `berth lease`: grant, revoke, keep-alive, ttl (etcdctl's timetolive) and list, with lease
//! IDs written and read in hex exactly as etcdctl prints them.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use berth_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::conn::status_error;
use super::output::lease_hex;
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
            ctx.out.lease_grant(&resp)
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease_id(&id)?;
            let mut c = ctx.conn.lease().await?;
            let resp = ctx
                .conn
                .call(c.lease_revoke(LeaseRevokeRequest { id }))
                .await
                .map_err(|e| anyhow!("failed to revoke lease ({e})"))?;
            ctx.out.lease_revoke(id, &resp)
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive(ctx, parse_lease_id(&id)?, once).await,
        LeaseCommand::Ttl { id, keys } => {
            let id = parse_lease_id(&id)?;
            let mut c = ctx.conn.lease().await?;
            let resp = ctx
                .conn
                .call(c.lease_time_to_live(LeaseTimeToLiveRequest { id, keys }))
                .await?;
            ctx.out.lease_ttl(&resp, keys)
        }
        LeaseCommand::List => {
            let mut c = ctx.conn.lease().await?;
            let resp = ctx.conn.call(c.lease_leases(LeaseLeasesRequest {})).await?;
            ctx.out.lease_list(&resp)
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
        ctx.out.lease_keep_alive(&resp)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
