//! Runs the active checks (HTTP, TCP, gRPC) this member owns. Every check has exactly one
//! owner among the members present (rendezvous hashing over the live `member/` keys), so
//! checks do not multiply with the cluster's size, and when a member leaves only its checks
//! move, within the presence TTL. A run that finds a new status proposes it; a member cut
//! off from the majority cannot, so its checks neither flap nor double while it is away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_registry::catalog::Record;
use berth_registry::{Check, CheckKind};
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::probe;
use crate::core::Core;

/// How often ownership is recomputed from the view.
const ASSIGN_EVERY: Duration = Duration::from_millis(500);

type CheckKey = (String, String, String);

fn score(member: &str, c: &Check) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [member, &c.node, &c.service_id, &c.id] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The member that runs `c`, among the `live` ones.
pub fn owner<'m>(live: &'m [String], c: &Check) -> Option<&'m String> {
    live.iter().max_by_key(|m| score(m, c))
}

/// What a running check task was started for: a changed definition restarts it.
#[derive(PartialEq)]
struct Definition {
    kind: CheckKind,
    interval: Duration,
    timeout: Duration,
}

impl Definition {
    fn of(c: &Check) -> Definition {
        Definition {
            kind: c.kind.clone(),
            interval: c.interval,
            timeout: c.timeout,
        }
    }
}

/// Runs this member's checks until `stop`.
pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let me = core.member.name.clone();
    let mut running: HashMap<CheckKey, (Definition, JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(ASSIGN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if !core.registry.present_within(super::presence::STAND_DOWN) {
            // Cut off from the majority (or not yet present): run nothing, so that no check
            // runs here and on the member that takes it over.
            for (k, (_, task)) in running.drain() {
                task.abort();
                tracing::debug!(node = %k.0, check = %k.2, "standing down: presence unconfirmed");
            }
            continue;
        }
        let (live, checks) = core
            .registry
            .read(|c| (c.live_members(), c.active_checks()));
        let mine: HashMap<CheckKey, Record<Check>> = checks
            .into_iter()
            .filter(|r| owner(&live, &r.value) == Some(&me))
            .map(|r| {
                (
                    (
                        r.value.node.clone(),
                        r.value.service_id.clone(),
                        r.value.id.clone(),
                    ),
                    r,
                )
            })
            .collect();
        running.retain(|k, (def, task)| {
            let keep = mine
                .get(k)
                .is_some_and(|r| Definition::of(&r.value) == *def);
            if !keep {
                task.abort();
                tracing::debug!(node = %k.0, check = %k.2, "check no longer run here");
            }
            keep
        });
        for (k, r) in mine {
            if running.contains_key(&k) {
                continue;
            }
            tracing::debug!(node = %k.0, check = %k.2, "running check");
            let def = Definition::of(&r.value);
            let task = tokio::spawn(check_loop(core.clone(), k.clone()));
            running.insert(k, (def, task));
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

/// Runs one check at its interval, proposing each change of status.
async fn check_loop(core: Arc<Core>, key: CheckKey) {
    let (node, _, id) = &key;
    let Some(first) = core.registry.read(|c| c.check(node, id)) else {
        return;
    };
    // Spread the first runs over the interval (at most two seconds), as Consul staggers.
    let cap = first.value.interval.min(Duration::from_secs(2));
    let stagger = rand::rng().random_range(0..=cap.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(stagger)).await;
    let mut tick = tokio::time::interval(first.value.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first run here also records its output (a check that starts critical and stays
    // so would otherwise never say why); after it, status changes are written at once and
    // output-only changes at most every --check-update-interval (Consul's, default 5m),
    // so a chatty output does not move indexes at every run.
    let mut first_run = true;
    let mut output_written = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(current) = core.registry.read(|c| c.check(node, id)) else {
            return;
        };
        if !core.registry.present_within(super::presence::STAND_DOWN) {
            continue;
        }
        let roots = core
            .registry
            .check_roots(core.config.check_ca_file.as_deref());
        let (status, output) = probe::run(
            &current.value.kind,
            current.value.timeout,
            &core.member.name,
            &roots,
        )
        .await;
        core.metrics.registry_check_runs.inc();
        let first = std::mem::take(&mut first_run);
        let record_output = output != current.value.output
            && (first || output_written.elapsed() >= core.config.check_update_interval);
        if status == current.value.status && !record_output {
            continue;
        }
        if status != current.value.status {
            tracing::info!(
                node = %node, check = %id, from = current.value.status.as_str(),
                to = status.as_str(), "check status changed"
            );
        }
        output_written = tokio::time::Instant::now();
        if let Err(e) = core
            .registry
            .set_check_status(&core, &current.value, current.modify, status, output)
            .await
        {
            // Not in the majority, or no leader: the status stays as the cluster knows it.
            tracing::debug!(error = %e, check = %id, "check status not written");
        }
    }
}
