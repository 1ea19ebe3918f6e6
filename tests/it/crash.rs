//! Crash safety: SIGKILL the server during concurrent writes, many times; every acknowledged
//! write must survive with its revision, and revisions must stay consecutive with no holes —
//! also while frequent snapshots let the Raft log behind them be purged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::GetOptions;
use rand::Rng;

use crate::harness::Server;

const ROUNDS: usize = 8;
const WRITERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_writes_loses_nothing_acknowledged() {
    kill9_rounds(Server::start()).await;
}

/// A snapshot every 50 entries, and the log purged 50 entries behind it: what a restart finds
/// of the log is mostly gone, so the store's own durability carries acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_snapshots_purge_the_log_loses_nothing_acknowledged() {
    let srv = kill9_rounds(Server::start_with(&["--snapshot-count", "50"])).await;
    // The counter starts at each restart: a few more writes show snapshots being taken.
    let mut c = srv.client().await;
    for i in 0..200 {
        c.put(format!("after/{i}"), "v", None).await.expect("put");
    }
    let built = || {
        let (_, metrics) = srv.http_get("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("berth_raft_snapshots_built "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("berth_raft_snapshots_built missing from /metrics"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while built() == 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot taken after 200 writes with --snapshot-count 50"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills `srv` during concurrent writes [`ROUNDS`] times, checking after each restart that
/// every acknowledged write is there; returns the server, running.
async fn kill9_rounds(mut srv: Server) -> Server {
    let mut acked_total: Vec<(String, i64)> = Vec::new();
    for round in 0..ROUNDS {
        let acked = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
        let client = srv.client().await;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = client.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for seq in 0.. {
                    let key = format!("crash/{round}/{w}/{seq}");
                    match c.put(key.clone(), key.clone(), None).await {
                        Ok(r) => {
                            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                            acked.lock().expect("lock").push((key, rev));
                        }
                        // The server died: stop this writer.
                        Err(_) => return,
                    }
                }
            }));
        }
        let delay = rand::rng().random_range(150..700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        srv.kill9();
        for t in tasks {
            let _ = t.await;
        }
        let got = std::mem::take(&mut *acked.lock().expect("lock"));
        assert!(
            !got.is_empty(),
            "round {round}: some writes were acknowledged before the kill"
        );
        acked_total.extend(got);
        srv.restart();

        let mut c = srv.client().await;
        let all = c
            .get("crash/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read back");
        let current = all.header().expect("header").revision();
        let stored: std::collections::HashMap<Vec<u8>, (i64, Vec<u8>)> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), (kv.mod_revision(), kv.value().to_vec())))
            .collect();
        for (key, rev) in &acked_total {
            let (mod_rev, value) = stored
                .get(key.as_bytes())
                .unwrap_or_else(|| panic!("round {round}: acknowledged write {key} lost"));
            assert_eq!(mod_rev, rev, "{key} kept its revision");
            assert_eq!(value, key.as_bytes());
        }
        let mut revs: Vec<i64> = stored.values().map(|(r, _)| *r).collect();
        revs.sort_unstable();
        let want: Vec<i64> = (2..=current).collect();
        assert_eq!(
            revs, want,
            "round {round}: revisions are consecutive with no hole"
        );
    }
    assert!(
        acked_total.len() > ROUNDS * WRITERS,
        "enough writes were exercised"
    );
    srv
}
