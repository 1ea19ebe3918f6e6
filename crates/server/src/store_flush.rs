//! The store's applied state reaches disk at least once a second. The consensus layer
//! applies without syncing (the Raft log is what makes a write durable), so after a crash a
//! member's store is as of its last durable commit, and it replays the log from there up to
//! the newest commit index it knows. That index may lag (it is learnt from the leader), so a
//! member that comes back cut off from its peers would otherwise serve its state as of its
//! last snapshot: its gateway without the routes it had, its registry without instances.
//! A durable commit every second, when anything was applied, bounds that to a second, as
//! etcd's backend commits its batches every 100 ms.

use std::sync::Arc;
use std::time::Duration;

use berth_consensus::StorageIo;
use berth_store::Store;
use tokio::sync::watch;

/// How often the applied state is made durable (when anything was applied since).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Makes the store durable every [`FLUSH_EVERY`] while commands are applied, until `stop`;
/// the flush runs where `io` says (inline in the simulation, so its runs stay replayable).
pub async fn run(store: Arc<Store>, io: StorageIo, mut stop: watch::Receiver<bool>) {
    let mut flushed = store.applied();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let applied = store.applied();
        if applied == flushed {
            continue;
        }
        let s = store.clone();
        match io
            .run(move || s.flush().map_err(std::io::Error::other))
            .await
        {
            Ok(()) => flushed = applied,
            Err(e) => tracing::warn!(error = %e, "making the applied state durable"),
        }
    }
}
