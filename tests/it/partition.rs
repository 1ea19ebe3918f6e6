//! A real network partition: three members in network namespaces this test creates, with the
//! leader's peer link cut. The isolated minority cannot commit, stops vouching for itself as
//! leader (health, Status, Consul's known leader) and refuses lease renewals, the majority
//! keeps serving, and after healing the member converges (HashKV equal at the same revision).

use std::time::{Duration, Instant};

use berth_proto::grpc_health::health_check_response::ServingStatus;
use berth_proto::grpc_health::health_client::HealthClient;
use berth_proto::grpc_health::HealthCheckRequest;
use etcd_client::{Client, GetOptions};
use tonic::transport::Channel;

use crate::harness::{bounded, NetCluster};

async fn client(addr: &str) -> Client {
    Client::connect([addr.to_string()], Some(bounded()))
        .await
        .expect("connect")
}

/// The member's gRPC health status (etcd's whole-server service, "").
async fn serving(health: &mut HealthClient<Channel>) -> i32 {
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health check")
        .into_inner()
        .status
}

async fn leader_of(cluster: &NetCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, m) in cluster.members.iter().enumerate() {
            if let Ok(mut c) = Client::connect([m.client_addr.clone()], Some(bounded())).await {
                if let Ok(st) = c.status().await {
                    if st.leader() != 0 && Some(st.leader()) == st.header().map(|h| h.member_id()) {
                        return i;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_commit_majority_serves_healed_member_converges() {
    let cluster = NetCluster::start(3);
    let leader = leader_of(&cluster).await;
    let mut isolated = client(&cluster.members[leader].client_addr).await;
    isolated
        .put("before", "1", None)
        .await
        .expect("write before the partition");
    let lease = isolated
        .lease_grant(60, None)
        .await
        .expect("lease before the partition")
        .id();
    let mut health = HealthClient::connect(cluster.members[leader].endpoint())
        .await
        .expect("health client");
    assert_eq!(serving(&mut health).await, ServingStatus::Serving as i32);

    cluster.peer_link(leader, false);
    // openraft keeps the cut-off member in its Leader state; within the leader lease (the
    // election timeout, 1 s) berth stops vouching for it: gRPC health, etcd's Status and
    // Consul's known-leader header say it has no leader, and it refuses to renew leases the
    // majority may expire (a client would otherwise keep a lock the others have lost).
    let cut = Instant::now();
    loop {
        let status = serving(&mut health).await;
        let st = isolated.status().await.expect("status");
        let (code, leader_named) = cluster.members[leader].http_get("/v1/status/leader");
        let renewed = tokio::time::timeout(
            Duration::from_secs(2),
            isolated.lease_time_to_live(lease, None),
        )
        .await;
        if status == ServingStatus::NotServing as i32
            && st.leader() == 0
            && code == 200
            && leader_named.trim() == "\"\""
            && !matches!(renewed, Ok(Ok(_)))
        {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "the cut-off leader still vouches for itself: health {status}, Status leader {:x}, lease answer {renewed:?}",
            st.leader()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the cut-off leader stopped vouching after {:?}",
        cut.elapsed()
    );
    let (_, head, _) = cluster.members[leader].http_get_with_head("/v1/status/leader");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-consul-knownleader: false"),
        "Consul's header on the cut-off leader: {head}"
    );
    let keep_alive = tokio::time::timeout(Duration::from_secs(8), async {
        let (mut keeper, mut answers) = isolated.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        answers.message().await
    })
    .await;
    assert!(
        !matches!(keep_alive, Ok(Ok(Some(ref r))) if r.ttl() > 0),
        "the cut-off leader renewed a lease: {keep_alive:?}"
    );
    // The cut-off leader cannot reach a quorum: its write must not be acknowledged.
    let minority =
        tokio::time::timeout(Duration::from_secs(4), isolated.put("minority", "x", None)).await;
    assert!(
        !matches!(minority, Ok(Ok(_))),
        "a minority acknowledged a write"
    );

    // The majority elects a leader and keeps serving.
    let other = (leader + 1) % 3;
    let mut majority = client(&cluster.members[other].client_addr).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), majority.put("majority", "y", None)).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the majority did not serve writes"
        );
    }
    let r = majority
        .get("majority", None)
        .await
        .expect("linearizable read on the majority");
    assert_eq!(r.kvs()[0].value(), b"y");

    cluster.peer_link(leader, true);
    let healed = Instant::now();
    while serving(&mut health).await != ServingStatus::Serving as i32 {
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "the healed member never served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Healed: every member reaches the same revision and the same HashKV, and they agree on
    // the minority's unacknowledged write.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut revs = Vec::new();
        for m in &cluster.members {
            let mut c = client(&m.client_addr).await;
            let rev = c
                .get("majority", Some(GetOptions::new().with_serializable()))
                .await
                .ok()
                .filter(|r| r.kvs().len() == 1)
                .and_then(|r| r.header().map(|h| h.revision()));
            revs.push(rev);
        }
        if revs.iter().all(|r| r.is_some() && *r == revs[0]) {
            let rev = revs[0].unwrap_or(0);
            let mut hashes = Vec::new();
            let mut survived = Vec::new();
            for m in &cluster.members {
                let mut c = client(&m.client_addr).await;
                hashes.push(c.hash_kv(rev).await.expect("hashkv").hash());
                let lost = c
                    .get("minority", Some(GetOptions::new().with_serializable()))
                    .await
                    .expect("get");
                survived.push((m.client_addr.clone(), !lost.kvs().is_empty()));
            }
            // The unacknowledged write may have reached a follower before the cut, and a
            // new leader then commits it (Raft allows that): what must hold is that every
            // member agrees on it.
            assert!(
                survived.iter().all(|(_, s)| *s == survived[0].1),
                "members disagree on the unacknowledged minority write: {survived:?}"
            );
            assert!(
                hashes.iter().all(|h| *h == hashes[0]),
                "HashKV differs: {hashes:?}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members did not converge: {revs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Core NATS interest follows a partition: a member cut off from the others (no TCP reset
/// says so) stops being sent requests within the routes' silence limit, so requesters on the
/// majority get no-responders instead of waiting; after healing, requests reach it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_interest_follows_a_partition() {
    use crate::nats::{echo_responder, request_until};
    let cluster = tokio::task::spawn_blocking(|| NetCluster::start(3))
        .await
        .expect("cluster");
    let url = |i: usize| format!("nats://{}", cluster.members[i].nats_addr);
    let requester = async_nats::connect(&url(0)).await.expect("connect m0");
    let _responder = echo_responder(&url(2)).await;
    request_until(&requester, true).await;

    cluster.peer_link(2, false);
    let t = Instant::now();
    request_until(&requester, false).await;
    eprintln!("m0 forgot m2's interest {:?} after the cut", t.elapsed());

    cluster.peer_link(2, true);
    request_until(&requester, true).await;
}

/// An R3 stream whose leader is cut off by a real partition: publishes through the cut-off
/// leader are not acknowledged (it cannot reach a quorum), the majority elects a new leader
/// and acknowledges publishes through its members, and once healed the old leader catches
/// up with every acknowledged message.
#[test]
fn a_partitioned_stream_leader_stops_acknowledging() {
    use crate::jetstream::api;
    use crate::jetstream_cluster::{member_index, publish_ids, routes_up};
    let cluster = NetCluster::start(3);
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.nats_addr.clone())
        .collect();
    routes_up(&cluster.members);
    let created = api(
        &addrs[0],
        "$JS.API.STREAM.CREATE.P",
        r#"{"subjects":["p.>"],"num_replicas":3}"#,
    );
    assert_eq!(created["did_create"], true, "{created}");
    let leader = member_index(
        &crate::jetstream_cluster::info_with_leader(&addrs[0], "P")["cluster"]["leader"],
    );
    assert_eq!(
        publish_ids(&addrs[leader], "p.x", &(0..50).collect::<Vec<_>>()).len(),
        50
    );

    cluster.peer_link(leader, false);
    let t = Instant::now();
    // The cut-off leader acknowledges nothing (publishes wait for a quorum, then fail).
    let cut_off = publish_ids(&addrs[leader], "p.x", &(50..60).collect::<Vec<_>>());
    assert!(
        cut_off.is_empty(),
        "acknowledged without a quorum: {cut_off:?}"
    );
    // The majority goes on.
    let other = (leader + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = publish_ids(&addrs[other], "p.x", &(60..110).collect::<Vec<_>>());
    while acked.len() < 50 {
        assert!(
            Instant::now() < deadline,
            "the majority never acknowledged: {acked:?}"
        );
        let missing: Vec<u64> = (60..110).filter(|n| !acked.contains_key(n)).collect();
        acked.extend(publish_ids(&addrs[other], "p.x", &missing));
    }
    eprintln!(
        "the majority acknowledged again {:?} after the cut",
        t.elapsed()
    );

    cluster.peer_link(leader, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = 50 + acked.len() as u64;
    loop {
        let info = api(&addrs[leader], "$JS.API.STREAM.INFO.P", "");
        if info["state"]["messages"] == want {
            break;
        }
        assert!(Instant::now() < deadline, "never caught up: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
