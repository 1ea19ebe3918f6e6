//! Sessions: create, renew (a lease renewal at the leader, no log entry), destroy, and the
//! clean-up of the locks a session held when it ended.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use berth_registry::{layout, Behavior, KvMeta, RegistryError, Session};
use berth_store::Keyspace;
use rand::Rng;

use super::{delete_op, encode, lease_ttl, put_op, Registry, RegistryFailure};
use crate::consensus::WriteError;
use crate::core::Core;

/// Shortest and longest session TTL (Consul's).
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// Longest session TTL (Consul's).
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(86400);
/// Longest lock delay (Consul's).
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

/// A random UUID (v4), as Consul's session IDs are.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `key` of keyspace `ks` as a multi-keyspace txn names it.
pub fn tagged(ks: Keyspace, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(ks.id());
    k.extend_from_slice(key);
    k
}

/// A compare of `key`'s mod revision (0: absent) in a multi-keyspace txn.
pub fn compare_mod(ks: Keyspace, key: &[u8], rev: i64) -> Compare {
    Compare {
        key: tagged(ks, key),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

impl Registry {
    /// Creates a session (validated against Consul's limits; its node and checks must
    /// exist); returns its ID.
    pub async fn create_session(
        &self,
        core: &Core,
        mut s: Session,
    ) -> Result<String, RegistryFailure> {
        if !s.ttl.is_zero() && (s.ttl < MIN_SESSION_TTL || s.ttl > MAX_SESSION_TTL) {
            return Err(RegistryError::invalid(format!(
                "Invalid Session TTL '{}', must be between [10s=24h0m0s]",
                humantime::format_duration(s.ttl)
            ))
            .into());
        }
        if s.lock_delay > MAX_LOCK_DELAY {
            return Err(RegistryError::invalid("LockDelay must be at most 60s").into());
        }
        // This member's own node may not be written yet in its first second (presence
        // writes it): a session on it writes it along.
        let own = Registry::agent_node(core);
        let mut ops: Vec<RequestOp> = Vec::new();
        if s.node == own.name {
            ops.extend(self.node_op(&own));
        }
        if ops.is_empty() && self.read(|c| c.node(&s.node)).is_none() {
            return Err(RegistryError::invalid(format!(
                "Missing node registration: node {:?} is not registered",
                s.node
            ))
            .into());
        }
        for id in s.node_checks.iter().chain(&s.service_checks) {
            // serfHealth of this member's own node passes while it is running.
            if s.node == own.name && id == berth_registry::catalog::SERF_HEALTH {
                continue;
            }
            match self.read(|c| c.check(&s.node, id)) {
                None => {
                    return Err(RegistryError::invalid(format!(
                        "Missing check '{id}' registration"
                    ))
                    .into())
                }
                Some(c) if c.value.status == berth_registry::CheckStatus::Critical => {
                    return Err(RegistryError::invalid(format!(
                        "Check '{id}' is in critical state"
                    ))
                    .into())
                }
                Some(_) => {}
            }
        }
        s.id = new_uuid();
        if !s.ttl.is_zero() {
            // Consul ends a session no sooner than its TTL and up to twice it.
            let grant = core.leases.grant(lease_ttl(s.ttl * 2), 0, None).await?;
            s.lease = grant.id;
        }
        ops.push(put_op(layout::session(&s.id), encode(&s), s.lease));
        self.write_ops(core, ops).await?;
        tracing::debug!(session = %s.id, node = %s.node, "session created");
        Ok(s.id)
    }

    /// Renews a session's TTL; `None` when there is no such session.
    pub async fn renew_session(
        &self,
        core: &Core,
        id: &str,
    ) -> Result<Option<Session>, RegistryFailure> {
        let Some(s) = self.read(|c| c.session(id)) else {
            return Ok(None);
        };
        if s.value.lease != 0 && core.leases.renew(s.value.lease).await? == 0 {
            return Ok(None);
        }
        Ok(Some(s.value))
    }

    /// Ends a session now and cleans up its locks; false when there was none.
    pub async fn destroy_session(&self, core: &Core, id: &str) -> Result<bool, RegistryFailure> {
        let Some(s) = self.read(|c| c.session(id)) else {
            return Ok(false);
        };
        self.write_ops(core, vec![delete_op(layout::session(id), Vec::new())])
            .await?;
        if s.value.lease != 0 {
            // The record is gone; the lease would only expire with nothing left on it.
            let _ = core.leases.revoke(s.value.lease, None).await;
        }
        self.clean_orphaned_locks(core).await?;
        tracing::debug!(session = id, "session destroyed");
        Ok(true)
    }

    /// Releases (or deletes, per the holder's behavior) every lock whose session is gone.
    pub async fn clean_orphaned_locks(&self, core: &Core) -> Result<(), WriteError> {
        for (key, session, meta_rev) in self.read(|c| c.orphaned_locks()) {
            let meta_key = layout::kv(&key);
            let meta = core
                .store
                .range_in(
                    Keyspace::Registry,
                    &RangeRequest {
                        key: meta_key.clone(),
                        ..Default::default()
                    },
                )
                .ok()
                .and_then(|r| r.kvs.into_iter().next())
                .and_then(|kv| serde_json::from_slice::<KvMeta>(&kv.value).ok())
                .unwrap_or_default();
            if meta.session.as_deref() != Some(session.as_str()) {
                continue;
            }
            let compare = vec![compare_mod(Keyspace::Registry, &meta_key, meta_rev)];
            let success = match meta.behavior {
                Behavior::Delete => vec![
                    delete_op(tagged(Keyspace::User, &key), Vec::new()),
                    delete_op(tagged(Keyspace::Registry, &meta_key), Vec::new()),
                ],
                Behavior::Release => {
                    let cleared = KvMeta {
                        session: None,
                        delay_until_ms: now_ms() + meta.lock_delay_ms,
                        lock_delay_ms: 0,
                        behavior: Behavior::Release,
                        ..meta
                    };
                    // The key's ModifyIndex moves (as Consul's release does) so that
                    // blocked lock waiters wake; only while it still exists.
                    let touch = RequestOp {
                        request: Some(Op::RequestTxn(TxnRequest {
                            compare: vec![Compare {
                                key: tagged(Keyspace::User, &key),
                                target: CompareTarget::Version as i32,
                                result: CompareResult::Greater as i32,
                                target_union: Some(TargetUnion::Version(0)),
                                ..Default::default()
                            }],
                            success: vec![RequestOp {
                                request: Some(Op::RequestPut(PutRequest {
                                    key: tagged(Keyspace::User, &key),
                                    ignore_value: true,
                                    ignore_lease: true,
                                    ..Default::default()
                                })),
                            }],
                            failure: vec![],
                        })),
                    };
                    vec![
                        put_op(tagged(Keyspace::Registry, &meta_key), encode(&cleared), 0),
                        touch,
                    ]
                }
            };
            let txn = TxnRequest {
                compare,
                success,
                failure: vec![],
            };
            let entry =
                berth_store::Entry::new(Keyspace::User, berth_store::Command::MultiTxn(txn));
            if let berth_store::Applied::Txn(t) = core.consensus.propose_entry(entry).await? {
                if let Some(h) = t.header {
                    self.wait_applied(h.revision).await;
                }
            }
            tracing::debug!(key = %String::from_utf8_lossy(&key), session, "lock released");
        }
        Ok(())
    }
}
