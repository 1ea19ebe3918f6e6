//! Request/response KV workloads: `put`, `range`, `txn` (compare-and-swap) and `mixed`, each a
//! [`Worker`] per client on the shared driver; reading workloads first write every key once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use berth_proto::client::Transport;
use berth_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use serde_json::json;

use super::conn_for;
use crate::config::{Config, Consistency, Workload};
use crate::driver::{run_clients, Worker};
use crate::keys::{self, KeyPicker, KeySpace};
use crate::report::Report;
use crate::BenchError;

/// Runs `put`, `range`, `txn` or `mixed`.
pub async fn run(cfg: &Config, channels: &[Transport]) -> Result<Report, BenchError> {
    let space = KeySpace::new(&cfg.key_prefix, cfg.key_size, cfg.key_count)?;
    let value = keys::value(cfg.val_size);
    let mut prefill_s = None;
    if cfg.prefill && cfg.workload.wants_prefill() {
        let t = Instant::now();
        prefill(cfg, channels, &space, &value).await?;
        prefill_s = Some(t.elapsed().as_secs_f64());
    }
    let next = Arc::new(AtomicU64::new(0));
    let picker = |i: usize| {
        KeyPicker::new(
            space.clone(),
            cfg.key_order,
            cfg.seed,
            i as u64,
            next.clone(),
        )
    };
    let kv = |i: usize| KvClient::new(conn_for(channels, i));
    let clients = 0..cfg.clients;
    let (rec, elapsed) = match cfg.workload {
        Workload::Put => {
            let w = clients.map(|i| Put {
                kv: kv(i),
                keys: picker(i),
                value: value.clone(),
            });
            run_clients(cfg, w.collect()).await?
        }
        Workload::Range { consistency } => {
            let w = clients.map(|i| Range {
                kv: kv(i),
                keys: picker(i),
                serializable: consistency == Consistency::Serializable,
            });
            run_clients(cfg, w.collect()).await?
        }
        Workload::Txn => {
            let w = clients.map(|i| Cas {
                kv: kv(i),
                keys: picker(i),
                value: value.clone(),
            });
            run_clients(cfg, w.collect()).await?
        }
        Workload::Mixed {
            read_ratio,
            consistency,
        } => {
            let w = clients.map(|i| Mixed {
                kv: kv(i),
                keys: picker(i),
                value: value.clone(),
                read_ratio,
                serializable: consistency == Consistency::Serializable,
            });
            run_clients(cfg, w.collect()).await?
        }
        Workload::Watch { .. }
        | Workload::LeaseKeepalive { .. }
        | Workload::ConsulRegister { .. }
        | Workload::ConsulHeartbeat { .. }
        | Workload::ConsulDiscover { .. }
        | Workload::ConsulWatch { .. }
        | Workload::NacosPublish { .. }
        | Workload::NacosGet { .. }
        | Workload::NacosRegister
        | Workload::NacosBeat { .. }
        | Workload::NacosListen { .. }
        | Workload::NatsPubSub { .. }
        | Workload::JsPublish { .. }
        | Workload::JsConsume { .. } => {
            return Err(BenchError::Config(format!(
                "{} is not a KV workload",
                cfg.workload.name()
            )))
        }
    };
    let mut report = Report::new(cfg, &rec, elapsed);
    if let Some(s) = prefill_s {
        report = report.with("prefill_s", json!((s * 1000.0).round() / 1000.0));
    }
    Ok(report)
}

/// Writes every key of the keyspace once with all clients, unmeasured and unpaced.
async fn prefill(
    cfg: &Config,
    channels: &[Transport],
    space: &KeySpace,
    value: &[u8],
) -> Result<(), BenchError> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let mut kv = KvClient::new(conn_for(channels, i));
            let (next, space, value, timeout) =
                (next.clone(), space.clone(), value.to_vec(), cfg.timeout);
            tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= space.count() {
                        return Ok(());
                    }
                    let req = PutRequest {
                        key: space.key(k),
                        value: value.clone(),
                        ..Default::default()
                    };
                    match tokio::time::timeout(timeout, kv.put(req)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(s)) => return Err(BenchError::setup("prefill", &s)),
                        Err(_) => {
                            return Err(BenchError::Setup {
                                what: "prefill",
                                message: format!("a put took longer than {timeout:?}"),
                            })
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| BenchError::Setup {
            what: "prefill",
            message: e.to_string(),
        })??;
    }
    Ok(())
}

/// `put`: one put of the configured value.
struct Put {
    kv: KvClient<Transport>,
    keys: KeyPicker,
    value: Vec<u8>,
}

impl Worker for Put {
    async fn op(&mut self, _measured: bool) -> Result<&'static str, tonic::Status> {
        let req = PutRequest {
            key: self.keys.next_key(),
            value: self.value.clone(),
            ..Default::default()
        };
        self.kv.put(req).await?;
        Ok("put")
    }
}

/// `range`: a single-key read.
struct Range {
    kv: KvClient<Transport>,
    keys: KeyPicker,
    serializable: bool,
}

impl Worker for Range {
    async fn op(&mut self, _measured: bool) -> Result<&'static str, tonic::Status> {
        read(&mut self.kv, self.keys.next_key(), self.serializable).await?;
        Ok("range")
    }
}

async fn read(
    kv: &mut KvClient<Transport>,
    key: Vec<u8>,
    serializable: bool,
) -> Result<i64, tonic::Status> {
    let resp = kv
        .range(RangeRequest {
            key,
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    // An absent key has mod revision 0, which is also what a txn compares it against.
    Ok(resp.kvs.first().map_or(0, |kv| kv.mod_revision))
}

/// `txn`: compare-and-swap. Reads the key's mod revision (linearizable), then puts only if the
/// mod revision is unchanged; a lost race is a `conflict`, not an error.
struct Cas {
    kv: KvClient<Transport>,
    keys: KeyPicker,
    value: Vec<u8>,
}

impl Worker for Cas {
    async fn op(&mut self, _measured: bool) -> Result<&'static str, tonic::Status> {
        let key = self.keys.next_key();
        let rev = read(&mut self.kv, key.clone(), false).await?;
        let txn = cas_request(key, rev, self.value.clone());
        let resp = self.kv.txn(txn).await?.into_inner();
        Ok(if resp.succeeded { "commit" } else { "conflict" })
    }
}

/// `if mod(key) == rev then put(key, value)`.
pub fn cas_request(key: Vec<u8>, rev: i64, value: Vec<u8>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::ModRevision(rev)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key,
                value,
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// `mixed`: a read with probability `read_ratio`, else a put.
struct Mixed {
    kv: KvClient<Transport>,
    keys: KeyPicker,
    value: Vec<u8>,
    read_ratio: f64,
    serializable: bool,
}

impl Worker for Mixed {
    async fn op(&mut self, _measured: bool) -> Result<&'static str, tonic::Status> {
        let is_read = self.keys.rng().unit() < self.read_ratio;
        let key = self.keys.next_key();
        if is_read {
            read(&mut self.kv, key, self.serializable).await?;
            Ok("read")
        } else {
            let req = PutRequest {
                key,
                value: self.value.clone(),
                ..Default::default()
            };
            self.kv.put(req).await?;
            Ok("write")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_compares_the_mod_revision_and_puts() {
        let t = cas_request(b"k".to_vec(), 42, b"v".to_vec());
        assert_eq!(t.compare.len(), 1);
        let c = &t.compare[0];
        assert_eq!(c.key, b"k".to_vec());
        assert_eq!(c.result, CompareResult::Equal as i32);
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(42)));
        assert!(matches!(
            &t.success[..],
            [RequestOp { request: Some(request_op::Request::RequestPut(p)) }]
                if p.key == b"k" && p.value == b"v"
        ));
        assert!(t.failure.is_empty());
    }
}
