//! Member presence: every member keeps a key `member/<name>` in the registry keyspace on a
//! short lease it renews at the leader once a second (no log entry per renewal), from the
//! moment the registry is in use (anything in its keyspace, or a Consul or DNS request
//! here; another member's presence is enough, so all start together). A member
//! that dies or is cut off from the majority stops renewing; the leader's lease expiry then
//! deletes its key, every member's view sees it gone, its node's `serfHealth` turns critical
//! and the checks it ran are assigned to the members still present.
//!
//! A renewal counts as confirmed only with a read index (a quorum answered): a member cut
//! off from the majority, even one that still believes it leads, stops confirming, and its
//! check runner stands down after [`STAND_DOWN`], well before its presence lease expires
//! and another member takes its checks, so no check runs twice.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::{Compare, TxnRequest};
use berth_registry::layout;
use tokio::sync::watch;

use super::{encode, put_op, Registry};
use crate::core::Core;

/// TTL of a presence lease: how long after its last renewal a silent member counts as gone.
pub const PRESENCE_TTL: i64 = 5;
/// How often a member renews its presence.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long a member runs checks without confirming its presence: half the presence TTL.
pub const STAND_DOWN: Duration = Duration::from_millis(PRESENCE_TTL as u64 * 500);

/// Keeps this member present until `stop`, from the moment the registry is in use (a
/// member only ever used as an etcd server writes nothing of its own).
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = core.registry.until_in_use() => {}
        _ = stop.changed() => return,
    }
    let name = core.member.name.clone();
    let mut lease = 0i64;
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if lease != 0 && core.registry.read(|c| c.member_live(&name)) {
            match core.leases.renew(lease).await {
                Ok(ttl) if ttl > 0 => {
                    confirm(&core).await;
                    continue;
                }
                Ok(_) => lease = 0,
                Err(e) => {
                    tracing::debug!(error = %e, "presence: renewal failed");
                    continue;
                }
            }
        }
        match establish(&core).await {
            Ok(id) => {
                tracing::debug!(lease = id, "presence: established");
                lease = id;
                confirm(&core).await;
            }
            Err(e) => tracing::debug!(error = %e, "presence: not established yet"),
        }
    }
}

/// Confirms with a quorum (a read index, bounded by the renewal period) that this member is
/// with the majority.
async fn confirm(core: &Core) {
    if let Ok(Ok(())) = tokio::time::timeout(RENEW_EVERY, core.consensus.read_index()).await {
        core.registry.confirm_presence();
    }
}

/// Grants a presence lease and puts this member's presence key on it, with its node record
/// when the store does not hold that record as it is (an unchanged node is not rewritten: its
/// ModifyIndex, and every blocking query that shows it, stay put).
async fn establish(core: &Core) -> Result<i64, crate::consensus::WriteError> {
    let grant = core.leases.grant(PRESENCE_TTL, 0, None).await?;
    let node = Registry::agent_node(core);
    let node_key = layout::node(&node.name);
    let record = encode(&node);
    let present = put_op(layout::member(&node.name), Vec::new(), grant.id);
    let txn = TxnRequest {
        compare: vec![Compare {
            key: node_key.clone(),
            target: CompareTarget::Value as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Value(record.clone())),
            ..Default::default()
        }],
        success: vec![present.clone()],
        failure: vec![put_op(node_key, record, 0), present],
    };
    core.registry.write(core, txn).await?;
    Ok(grant.id)
}
