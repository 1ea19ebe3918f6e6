//! `lease-keepalive`: grants `--leases` leases, then every client renews its share of them
//! round-robin over its own keep-alive stream as fast as answers come (a keep-alive storm);
//! the leases are revoked afterwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_proto::client::Transport;
use berth_proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseRevokeRequest,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::conn_for;
use crate::config::{Config, Workload};
use crate::driver::{run_clients, Worker};
use crate::report::Report;
use crate::BenchError;

/// Runs `lease-keepalive`.
pub async fn run(cfg: &Config, channels: &[Transport]) -> Result<Report, BenchError> {
    let Workload::LeaseKeepalive { leases, ttl } = cfg.workload else {
        return Err(BenchError::Config("not a lease workload".into()));
    };
    let t = Instant::now();
    let ids = grant(cfg, channels, leases, ttl).await?;
    let grant_s = t.elapsed().as_secs_f64();

    let workers = (0..cfg.clients)
        .map(|i| KeepAlive {
            client: LeaseClient::new(conn_for(channels, i)),
            ids: share(&ids, cfg.clients, i),
            next: 0,
            stream: None,
        })
        .collect();
    let (rec, elapsed) = run_clients(cfg, workers).await?;

    let revoke_errors = revoke(cfg, channels, ids).await;
    Ok(Report::new(cfg, &rec, elapsed)
        .with("leases", json!(leases))
        .with("grant_s", json!((grant_s * 1000.0).round() / 1000.0))
        .with("revoke_errors", json!(revoke_errors)))
}

/// The leases client `i` of `clients` renews: every `clients`-th one from `i`, or one shared
/// lease when there are fewer leases than clients.
pub fn share(ids: &[i64], clients: usize, i: usize) -> Vec<i64> {
    let mine: Vec<i64> = ids
        .iter()
        .skip(i)
        .step_by(clients.max(1))
        .copied()
        .collect();
    if mine.is_empty() && !ids.is_empty() {
        vec![ids[i % ids.len()]]
    } else {
        mine
    }
}

/// Grants `n` leases of `ttl` seconds with all clients at once.
async fn grant(
    cfg: &Config,
    channels: &[Transport],
    n: u64,
    ttl: i64,
) -> Result<Vec<i64>, BenchError> {
    let what = "granting leases";
    let left = Arc::new(AtomicU64::new(n));
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let mut client = LeaseClient::new(conn_for(channels, i));
            let (left, timeout) = (left.clone(), cfg.timeout);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                // Take one grant at a time until none are left.
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let req = LeaseGrantRequest { ttl, id: 0 };
                    let resp = match tokio::time::timeout(timeout, client.lease_grant(req)).await {
                        Ok(Ok(r)) => r.into_inner(),
                        Ok(Err(s)) => return Err(BenchError::setup(what, &s)),
                        Err(_) => {
                            return Err(BenchError::Setup {
                                what,
                                message: format!("a grant took longer than {timeout:?}"),
                            })
                        }
                    };
                    if !resp.error.is_empty() {
                        return Err(BenchError::Setup {
                            what,
                            message: resp.error,
                        });
                    }
                    ids.push(resp.id);
                }
                Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for t in tasks {
        ids.extend(t.await.map_err(|e| BenchError::Setup {
            what,
            message: e.to_string(),
        })??);
    }
    Ok(ids)
}

/// Revokes the leases (best effort) and returns how many revokes failed.
async fn revoke(cfg: &Config, channels: &[Transport], ids: Vec<i64>) -> u64 {
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let mut client = LeaseClient::new(conn_for(channels, i));
            let (mine, timeout) = (share(&ids, cfg.clients, i), cfg.timeout);
            // With fewer leases than clients, only the owner of each lease revokes it.
            let mine = if i < ids.len() { mine } else { Vec::new() };
            tokio::spawn(async move {
                let mut failed = 0u64;
                for id in mine {
                    let call = client.lease_revoke(LeaseRevokeRequest { id });
                    if !matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(_))) {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(1);
    }
    failed
}

/// One client's keep-alive stream over its leases.
struct KeepAlive {
    client: LeaseClient<Transport>,
    ids: Vec<i64>,
    next: usize,
    /// The open stream: its request sender and responses (reopened after a failure).
    stream: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )>,
}

impl Worker for KeepAlive {
    async fn op(&mut self, _measured: bool) -> Result<&'static str, Status> {
        let Some(&id) = self.ids.get(self.next % self.ids.len().max(1)) else {
            return Err(Status::failed_precondition("no lease to keep alive"));
        };
        self.next = self.next.wrapping_add(1);
        let req = LeaseKeepAliveRequest { id };
        let closed = || Status::unavailable("keep-alive stream closed");
        let stream = match self.stream.as_mut() {
            Some(s) => {
                if s.0.send(req).await.is_err() {
                    self.stream = None;
                    return Err(closed());
                }
                s
            }
            None => {
                // The first request goes out with the call: servers answer the call once a
                // request arrives.
                let (tx, rx) = mpsc::channel(4);
                tx.send(req).await.map_err(|_| closed())?;
                let responses = self
                    .client
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                self.stream.insert((tx, responses))
            }
        };
        let msg = stream.1.message().await;
        match msg {
            Ok(Some(r)) if r.ttl > 0 => Ok("keepalive"),
            Ok(Some(r)) => Err(Status::not_found(format!(
                "lease {:x} expired or revoked",
                r.id
            ))),
            Ok(None) => {
                self.stream = None;
                Err(closed())
            }
            Err(s) => {
                self.stream = None;
                Err(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_shared_out_without_overlap() {
        let ids: Vec<i64> = (1..=10).collect();
        assert_eq!(share(&ids, 3, 0), vec![1, 4, 7, 10]);
        assert_eq!(share(&ids, 3, 1), vec![2, 5, 8]);
        assert_eq!(share(&ids, 3, 2), vec![3, 6, 9]);
        // Fewer leases than clients: clients share leases.
        assert_eq!(share(&[7, 8], 4, 3), vec![8]);
        assert!(share(&[], 4, 3).is_empty());
    }
}
