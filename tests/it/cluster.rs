//! Clusters of three real berth processes on loopback: replication, any member serving any
//! request, and faults (SIGKILL of the leader under load, a frozen minority, restarts), with
//! convergence checked by HashKV on every member at the same revision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};

use crate::harness::Cluster;

/// A client whose connects and requests give up instead of hanging on a frozen member.
async fn client(addr: &str) -> Client {
    Client::connect([addr.to_string()], Some(crate::harness::bounded()))
        .await
        .expect("connect")
}

/// Waits until every running member reports the same revision, then checks HashKV agrees.
async fn assert_converged(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut revs = Vec::new();
        for m in &cluster.members {
            let mut c = client(&m.client_addr).await;
            let r = c
                .get("x", Some(GetOptions::new().with_serializable()))
                .await
                .expect("serializable read")
                .header()
                .expect("header")
                .revision();
            revs.push(r);
        }
        if revs.iter().all(|r| *r == revs[0]) {
            let mut hashes = Vec::new();
            for m in &cluster.members {
                hashes.push(
                    client(&m.client_addr)
                        .await
                        .hash_kv(revs[0])
                        .await
                        .expect("hashkv")
                        .hash(),
                );
            }
            assert!(
                hashes.iter().all(|h| *h == hashes[0]),
                "HashKV differs at revision {}: {hashes:?}",
                revs[0]
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members did not converge: revisions {revs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_member_serves_reads_writes_watches_and_leases() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut on_follower = client(&cluster.members[follower].client_addr).await;
    let mut on_other = client(&cluster.members[(leader + 2) % 3].client_addr).await;

    let mut w = on_follower
        .watch("shared", None)
        .await
        .expect("watch on a follower");
    assert!(w.message().await.expect("created").expect("msg").created());
    for (i, m) in cluster.members.iter().enumerate() {
        client(&m.client_addr)
            .await
            .put(format!("k{i}"), "v", None)
            .await
            .expect("write via any member");
    }
    on_other.put("shared", "hello", None).await.expect("put");
    let ev = tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("event in time")
        .expect("stream")
        .expect("message");
    assert_eq!(ev.events()[0].kv().expect("kv").value(), b"hello");
    // A linearizable read on any member sees every acknowledged write.
    for m in &cluster.members {
        let r = client(&m.client_addr)
            .await
            .get("k", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read");
        assert_eq!(r.count(), 3);
    }
    // Leases: granted on one member, kept alive on another, expiring everywhere.
    let lease = on_follower.lease_grant(5, None).await.expect("grant").id();
    on_other
        .put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    let (mut keeper, mut stream) = on_other.lease_keep_alive(lease).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send");
    assert_eq!(
        stream.message().await.expect("recv").expect("resp").ttl(),
        5
    );
    let ttl = on_follower
        .lease_time_to_live(lease, None)
        .await
        .expect("ttl");
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 5);
    // Members publish their client URLs shortly after a leader exists.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = on_follower.member_list().await.expect("members");
        assert_eq!(members.members().len(), 3);
        if members
            .members()
            .iter()
            .all(|m| !m.client_urls().is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members did not publish client URLs: {:?}",
            members
                .members()
                .iter()
                .map(|m| (m.name().to_string(), m.client_urls().to_vec()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_converged(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_load_fails_over_and_loses_nothing() {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let leader = cluster.leader().await;
    let acked: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let endpoints = endpoints.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            let mut target = w % endpoints.len();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("fo/{w}/{n}");
                let Ok(mut c) =
                    Client::connect([endpoints[target].clone()], Some(crate::harness::bounded()))
                        .await
                else {
                    target = (target + 1) % endpoints.len();
                    continue;
                };
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    c.put(key.clone(), key.clone(), None),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        acked
                            .lock()
                            .expect("lock")
                            .insert(key, r.header().map(|h| h.revision()).unwrap_or(0));
                        n += 1;
                    }
                    // That member is dead or cut off: try the next one.
                    _ => target = (target + 1) % endpoints.len(),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acked.lock().expect("lock").len();
    let killed_at = Instant::now();
    cluster.members[leader].kill9();
    // Failover: the first write acknowledged after the kill.
    let survivor = client(&endpoints[(leader + 1) % 3]).await;
    let mut probe = survivor.clone();
    let failover = loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(500), probe.put("probe", "1", None)).await
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no leader served writes within 15s"
        );
    };
    println!("failover: a write was acknowledged {failover:?} after killing the leader");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(acked.len() > before, "writes continued after the failover");
    cluster.members[leader].start_again();
    assert_converged(&cluster).await;
    for m in &cluster.members {
        let all = client(&m.client_addr)
            .await
            .get(
                "fo/",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .expect("read back");
        let stored: HashMap<Vec<u8>, i64> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.mod_revision()))
            .collect();
        for (k, rev) in &acked {
            assert_eq!(
                stored.get(k.as_bytes()),
                Some(rev),
                "acknowledged {k} lost or moved on {}",
                m.client_addr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_is_a_minority_that_cannot_commit_and_then_converges() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let mut old = client(&cluster.members[leader].client_addr).await;
    old.put("before", "1", None).await.expect("put");
    // SIGSTOP cuts the leader off from everyone: a partition of one.
    cluster.members[leader].signal("STOP");
    let majority = client(&cluster.members[(leader + 1) % 3].client_addr).await;
    let mut m = majority.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), m.put("during", "majority", None)).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the majority did not elect a new leader"
        );
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    // The frozen member wakes up: its stale leadership must not commit anything.
    cluster.members[leader].signal("CONT");
    // Whatever it answers (as a follower it forwards to the new leader), the cluster must
    // end up with one history.
    let _ = tokio::time::timeout(Duration::from_secs(10), old.put("stale", "x", None)).await;
    assert_converged(&cluster).await;
    let r = client(&cluster.members[leader].client_addr)
        .await
        .get("during", None)
        .await
        .expect("read on the healed member");
    assert_eq!(r.kvs()[0].value(), b"majority");
    let mut w = client(&cluster.members[leader].client_addr)
        .await
        .watch("during", Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch");
    assert!(w.message().await.expect("created").expect("m").created());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_nothing() {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let mut target = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("roll/{n}");
                let ok = match Client::connect(
                    [endpoints[target].clone()],
                    Some(crate::harness::bounded()),
                )
                .await
                {
                    Ok(mut c) => matches!(
                        tokio::time::timeout(Duration::from_secs(2), c.put(key.clone(), "v", None))
                            .await,
                        Ok(Ok(_))
                    ),
                    Err(_) => false,
                };
                if ok {
                    acked.lock().expect("lock").push(key);
                    n += 1;
                } else {
                    target = (target + 1) % endpoints.len();
                }
            }
        })
    };
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.members[i].restart();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    assert_converged(&cluster).await;
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 10,
        "the cluster kept taking writes ({} acknowledged)",
        acked.len()
    );
    let r = client(&cluster.members[0].client_addr)
        .await
        .get(
            "roll/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("read");
    let stored: std::collections::HashSet<Vec<u8>> =
        r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    for k in acked {
        assert!(stored.contains(k.as_bytes()), "acknowledged {k} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_by_snapshot_then_is_promoted_leads_and_others_leave() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-count", "20"]);
    let leader = cluster.leader().await;
    let mut c = client(&cluster.members[leader].client_addr).await;
    for i in 0..120 {
        c.put(format!("j{i:03}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    // A far-behind member: the leader's log before the last snapshot is gone.
    let mut newcomer = cluster.prepare_member("late", &["--snapshot-count", "20"]);
    let added = c
        .member_add(
            [newcomer.peer_url().to_string()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add --learner");
    let new_id = added.member().expect("member").id();
    assert!(added.member().expect("member").is_learner());
    newcomer.start_again();
    let mut n = client(&newcomer.client_addr).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = n
            .get("j119", Some(GetOptions::new().with_serializable()))
            .await;
        if matches!(&r, Ok(r) if r.kvs().len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the learner did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = newcomer.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_raft_snapshots_installed ") && !l.ends_with(" 0")),
        "the learner caught up by installing a snapshot"
    );
    // A learner is refused votes it cannot cast: promote it, then hand it the leadership.
    c.member_promote(new_id).await.expect("promote");
    // The leader as it is now: on a loaded machine it may have changed since the start.
    let leader = cluster.leader().await;
    let mut on_leader = client(&cluster.members[leader].client_addr).await;
    on_leader.move_leader(new_id).await.expect("move-leader");
    let st = n.status().await.expect("status");
    assert_eq!(st.leader(), new_id, "the newcomer leads");
    let cluster_id = |r: &etcd_client::StatusResponse| r.header().map(|h| h.cluster_id());
    let old_status = on_leader.status().await.expect("status");
    assert_eq!(
        cluster_id(&st),
        cluster_id(&old_status),
        "the newcomer adopted the cluster's ID"
    );
    // The old leader leaves; the rest keep serving and agree.
    let old_id = on_leader
        .status()
        .await
        .expect("status")
        .header()
        .expect("h")
        .member_id();
    n.member_remove(old_id).await.expect("member remove");
    cluster.members[leader].kill9();
    n.put("after", "removal", None)
        .await
        .expect("write after the removal");
    let members = n.member_list().await.expect("list").members().len();
    assert_eq!(members, 3);
    let mut alive: Vec<&crate::harness::Server> = cluster
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, m)| m)
        .collect();
    alive.push(&newcomer);
    let mut hashes = Vec::new();
    let rev = n
        .get("after", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    for m in alive {
        let mut mc = client(&m.client_addr).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while mc
            .get("after", Some(GetOptions::new().with_serializable()))
            .await
            .map(|r| r.kvs().len())
            .unwrap_or(0)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "a member did not apply the last write"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hashes.push(mc.hash_kv(rev).await.expect("hashkv").hash());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_kept_alive_survive_a_leader_change() {
    // The lease domain's debug lines (grants, revokes proposed and why, leadership) go to
    // the test's output: this test has failed now and then (TTL -1 after the leader change)
    // and the next failure should say who revoked the lease.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--log-level",
            "error,berth_server::lease=debug,berth_store::apply=debug,berth_server::consensus=info",
        ],
    );
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut c = client(&cluster.members[follower].client_addr).await;
    let lease = c.lease_grant(4, None).await.expect("grant").id();
    c.put("alive", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    // Keep it alive past its first TTL (renewals land on the leader only).
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.expect("keep-alive");
    for i in 0..6 {
        keeper.keep_alive().await.expect("send");
        let resp = stream.message().await.expect("recv").expect("resp");
        // TTL 0: the lease was gone before the leader change (a keep-alive came too late).
        assert!(resp.ttl() > 0, "keep-alive {i} found no lease");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let killed = std::time::Instant::now();
    cluster.members[leader].kill9();
    // The new leader must not expire it on the stale deadline it applied at grant time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ttl = c.lease_time_to_live(lease, None).await.expect("ttl");
    if ttl.ttl() <= 0 {
        // Seen once on a loaded CI run (TTL -1: revoked); say who leads and when, for the
        // next look.
        let now_leader = cluster.leader().await;
        panic!(
            "lease expired across the leader change: TTL {} {:?} after killing member {leader}; \
             member {now_leader} leads now; the client asked member {follower}",
            ttl.ttl(),
            killed.elapsed()
        );
    }
    assert_eq!(c.get("alive", None).await.expect("get").kvs().len(), 1);
}

/// A leader killed and started again before anyone else campaigns must not answer a
/// linearizable read from the state it recovered on disk. Its state machine and its committed
/// index are not fsynced (the Raft log is), so it comes back knowing less than it had
/// acknowledged; Raft's own guard (the leader's entry of its term committed first) does not
/// hold for a leader that simply resumes its old term. The followers are frozen while it
/// restarts, and their election timeout is long enough that they do not campaign on waking,
/// so a read reaches it before it has heard from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quickly_restarted_leader_reads_nothing_older_than_it_acknowledged() {
    // Followers wait 3–4 s without hearing from a leader before they campaign.
    let mut cluster = Cluster::start_with(3, &["--election-timeout", "4000"]);
    let leader = cluster.leader().await;
    // The writes go to a healthy cluster: a put slowed past 3 s by a loaded CI machine (it
    // happened once) says nothing about the restart this test is about.
    let mut c = Client::connect(
        [cluster.members[leader].client_addr.clone()],
        Some(crate::harness::patient()),
    )
    .await
    .expect("connect");
    // A tail of entries applied since the last durable state-machine commit, so replaying
    // them takes a while, and then the write the read must see.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    c.put(format!("fill/{w}/{i}"), "x", None)
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    c.put("k", "acknowledged", None).await.expect("put k");

    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        cluster.members[*f].signal("STOP");
    }
    cluster.members[leader].kill9();
    tokio::task::block_in_place(|| cluster.members[leader].start_again());
    // Reads keep arriving from before the followers wake until one is answered. (Resuming its
    // old term, the leader answered the first of them with no value in 3 runs of 5.)
    let reader = {
        let addr = cluster.members[leader].client_addr.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(mut c) =
                    Client::connect([addr.clone()], Some(crate::harness::bounded())).await
                {
                    if let Ok(r) = c.get("k", None).await {
                        return r.kvs().first().map(|kv| kv.value().to_vec());
                    }
                }
                assert!(Instant::now() < deadline, "no read answered within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for f in &followers {
        cluster.members[*f].signal("CONT");
    }
    let value = reader.await.expect("reader");
    assert_eq!(
        value.as_deref(),
        Some(&b"acknowledged"[..]),
        "a linearizable read at the restarted leader missed an acknowledged write"
    );
}

/// Keep-alives sent to a follower reach the leader (which alone runs lease timers) over one
/// renewal stream, batched: concurrent renewals share messages, every lease is renewed, and an
/// unknown lease answers TTL 0 as etcd does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_at_a_follower_reach_the_leader_in_shared_batches() {
    let cluster = Cluster::start(3);
    let mut leases = Vec::new();
    let first = client(&cluster.members[0].client_addr).await;
    for _ in 0..64 {
        leases.push(
            first
                .clone()
                .lease_grant(30, None)
                .await
                .expect("grant")
                .id(),
        );
    }
    // Settled by now: the grants needed a leader.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let c = client(&cluster.members[follower].client_addr).await;
    let counter = |name: &str| -> u64 {
        let (code, body) = cluster.members[follower].http_get("/metrics");
        assert_eq!(code, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let renewals_before = counter("berth_lease_renewals_forwarded_total ");
    let batches_before = counter("berth_lease_renew_batches_total ");
    // Each lease renewed 1 + 8 times over its own keep-alive stream, all streams at once.
    let tasks: Vec<_> = leases
        .iter()
        .map(|id| {
            let mut c = c.clone();
            let id = *id;
            tokio::spawn(async move {
                let (mut keeper, mut answers) = c.lease_keep_alive(id).await.expect("keep-alive");
                for _ in 0..8 {
                    keeper.keep_alive().await.expect("send");
                    let resp = answers.message().await.expect("recv").expect("answer");
                    assert_eq!(resp.id(), id);
                    assert!(resp.ttl() > 25, "lease {id:x} renewed to {}", resp.ttl());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("keep-alive task");
    }
    let renewals = counter("berth_lease_renewals_forwarded_total ") - renewals_before;
    let batches = counter("berth_lease_renew_batches_total ") - batches_before;
    // Opening a keep-alive stream renews once too (etcd-client sends a first request).
    assert_eq!(renewals, 64 * 9, "every renewal went to the leader");
    assert!(
        batches < renewals,
        "{renewals} renewals in {batches} batches: none shared a batch"
    );
    // An unknown lease answers TTL 0 through the same stream, which etcd-client reports as
    // "lease not found".
    let unknown = c.clone().lease_keep_alive(0x7e57).await;
    assert!(
        matches!(&unknown, Err(e) if e.to_string().contains("lease not found")),
        "{:?}",
        unknown.err()
    );
}
