//! The leader's registry housekeeping, once a second and whenever the view changes: ends
//! sessions whose node or checks failed, cleans up the locks of ended sessions, and removes
//! services whose check has been critical past its `DeregisterCriticalServiceAfter`. Every
//! step reads the view and is idempotent, so a new leader simply carries on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::Core;

const TICK: Duration = Duration::from_secs(1);

/// Runs the housekeeping while this member leads, until `stop`.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each check with a deregister timeout was first seen critical (by this leader).
    let mut critical_since: HashMap<(String, String, String), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !core.consensus.status().is_leader || !core.consensus.leads_caught_up().await {
            critical_since.clear();
            continue;
        }
        for s in core.registry.read(|c| c.doomed_sessions()) {
            match core.registry.destroy_session(&core, &s.value.id).await {
                Ok(_) => tracing::info!(session = %s.value.id, "session invalidated"),
                Err(e) => tracing::debug!(error = %e, "reaper: ending a session"),
            }
        }
        if let Err(e) = core.registry.clean_orphaned_locks(&core).await {
            tracing::debug!(error = %e, "reaper: cleaning locks");
        }
        let checks = core.registry.read(|c| c.critical_reapable());
        let now = Instant::now();
        let mut seen = HashMap::new();
        for r in checks {
            let c = r.value;
            if c.deregister_critical_after.is_zero() || c.service_id.is_empty() {
                continue;
            }
            let k = (c.node.clone(), c.service_id.clone(), c.id.clone());
            let since = critical_since.get(&k).copied().unwrap_or(now);
            seen.insert(k, since);
            if now.duration_since(since) >= c.deregister_critical_after {
                match core
                    .registry
                    .deregister_service(&core, &c.node, &c.service_id)
                    .await
                {
                    Ok(_) => tracing::info!(
                        node = %c.node, service = %c.service_id, check = %c.id,
                        "service deregistered: critical past DeregisterCriticalServiceAfter"
                    ),
                    Err(e) => tracing::debug!(error = %e, "reaper: deregistering"),
                }
            }
        }
        critical_since = seen;
    }
}
