//! Leases over the wire: grant, keep-alive, time-to-live with keys, listing, revoke, expiry
//! deleting attached keys with DELETE events, and TTL limits.

use std::time::Duration;

use etcd_client::{EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use tonic::Code;

use crate::harness::{status_of, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_keepalive_ttl_list_revoke() {
    let srv = Server::start();
    let mut c = srv.client().await;
    let g = c.lease_grant(30, None).await.expect("grant");
    assert!(g.id() > 0);
    assert_eq!(g.ttl(), 30);
    let g2 = c
        .lease_grant(1, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .expect("grant with id");
    assert_eq!(
        (g2.id(), g2.ttl()),
        (0x1234, 2),
        "raised to the minimum TTL"
    );
    let s = status_of(
        c.lease_grant(5, Some(LeaseGrantOptions::new().with_id(0x1234)))
            .await
            .expect_err("exists"),
    );
    assert_eq!(
        (s.code(), s.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let s = status_of(
        c.lease_grant(9_000_000_001, None)
            .await
            .expect_err("too large"),
    );
    assert_eq!(
        (s.code(), s.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    c.put("leased", "v", Some(PutOptions::new().with_lease(g.id())))
        .await
        .expect("put");
    let t = c
        .lease_time_to_live(g.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(t.granted_ttl(), 30);
    assert!(t.ttl() > 25 && t.ttl() <= 30);
    assert_eq!(t.keys(), [b"leased".to_vec()]);

    let (mut keeper, mut stream) = c.lease_keep_alive(g.id()).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send");
    let r = stream.message().await.expect("recv").expect("response");
    assert_eq!((r.id(), r.ttl()), (g.id(), 30));

    let ids: Vec<i64> = c
        .leases()
        .await
        .expect("list")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(ids.contains(&g.id()) && ids.contains(&0x1234));

    c.lease_revoke(g.id()).await.expect("revoke");
    assert!(c.get("leased", None).await.expect("get").kvs().is_empty());
    let t = c
        .lease_time_to_live(g.id(), None)
        .await
        .expect("ttl of revoked");
    assert_eq!(t.ttl(), -1);
    let s = status_of(c.lease_revoke(g.id()).await.expect_err("gone"));
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_keys_in_one_revision_with_events() {
    let srv = Server::start();
    let mut c = srv.client().await;
    let g = c.lease_grant(2, None).await.expect("grant");
    for k in ["e/1", "e/2", "e/3"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(g.id())))
            .await
            .expect("put");
    }
    let mut w = c
        .watch("e/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(w.message().await.expect("created").expect("msg").created());
    let mut deletes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while deletes.len() < 3 {
        let msg = tokio::time::timeout_at(deadline, w.message())
            .await
            .expect("lease expired in time")
            .expect("stream")
            .expect("message");
        for ev in msg.events() {
            assert_eq!(ev.event_type(), EventType::Delete);
            deletes.push(ev.kv().expect("kv").mod_revision());
        }
    }
    assert!(
        deletes.iter().all(|r| *r == deletes[0]),
        "one revision for all keys: {deletes:?}"
    );
    assert_eq!(
        c.lease_time_to_live(g.id(), None).await.expect("ttl").ttl(),
        -1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_restart_with_refreshed_ttl() {
    let mut srv = Server::start();
    let id = {
        let mut c = srv.client().await;
        let g = c.lease_grant(60, None).await.expect("grant");
        c.put("keep", "v", Some(PutOptions::new().with_lease(g.id())))
            .await
            .expect("put");
        g.id()
    };
    srv.kill9();
    srv.restart();
    let mut c = srv.client().await;
    let t = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(t.granted_ttl(), 60);
    assert!(t.ttl() >= 58, "TTL refreshed on restart, got {}", t.ttl());
    assert_eq!(t.keys().len(), 1);
}
