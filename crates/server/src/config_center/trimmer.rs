//! The leader's history housekeeping: every quarter of the retention (at least once a
//! second, at most once a minute), removes kept versions older than
//! `--config-history-max-age` by the age index, in batches, keeping every item's current
//! version, or a deleted item's last one (its index entry goes; the version stays until
//! newer ones push it out by count).
//! Idempotent, so a new leader simply carries on.

use std::sync::Arc;
use std::time::Duration;

use berth_config::layout;
use berth_proto::etcdserverpb::RangeRequest;
use berth_store::Keyspace;
use tokio::sync::watch;

use super::{delete_key, now};
use crate::core::Core;

/// How often the housekeeping runs for a retention of `age`.
fn tick(age: Duration) -> Duration {
    (age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
/// Most versions removed in one txn.
const BATCH: i64 = 256;

/// Runs the housekeeping while this member leads, until `stop`.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(tick(core.config_center.limits().history_age));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !core.consensus.status().is_leader || !core.consensus.leads_caught_up().await {
            continue;
        }
        let age = core.config_center.limits().history_age;
        let cutoff = now().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        loop {
            match trim(&core, cutoff).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(versions = n, "config: removed versions past their age");
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "config: trimming history");
                    break;
                }
            }
        }
    }
}

/// Removes one batch of versions made before `cutoff`; returns how many index entries went.
pub async fn trim(core: &Core, cutoff: i64) -> Result<usize, super::ConfigFailure> {
    let cc = &core.config_center;
    let resp = core.store.range_in(
        Keyspace::Config,
        &RangeRequest {
            key: layout::AGED.to_vec(),
            range_end: layout::aged_before(cutoff),
            limit: BATCH,
            keys_only: true,
            ..Default::default()
        },
    )?;
    let mut ops = Vec::new();
    for kv in &resp.kvs {
        ops.push(delete_key(kv.key.clone()));
        let Some((_, k, v)) = layout::parse_aged(&kv.key) else {
            continue;
        };
        // The newest version stays (the current one, or a deleted item's last): version
        // numbers count on from it, and rollback and diff name them.
        let newest = match cc.stored_item(&k)?.0 {
            Some(i) => i.version,
            None => cc.last_version(&k)?,
        };
        if v != newest {
            ops.push(delete_key(layout::version(&k, v)));
        }
    }
    let n = resp.kvs.len();
    if !ops.is_empty() {
        cc.commit_unconditional(core, ops, None).await?;
    }
    Ok(n)
}
