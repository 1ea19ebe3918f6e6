//! Acceptance test of keyspaces through the etcd face, on one in-process member: a key written
//! into a non-user keyspace is invisible to every etcd RPC (Range, Txn, Watch, lease
//! TimeToLive) and untouched by `del --prefix ""`, and revisions stay one sequence across
//! keyspaces.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::etcdserverpb::{PutRequest, RangeRequest};
use berth_server::config::{Config, ServerArgs};
use berth_server::core::Core as Node;
use berth_server::node::Listeners;
use berth_store::{Applied, Command, Keyspace};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseTimeToLiveOptions, Txn, TxnOp,
    WatchOptions,
};

/// Opens a single member in `dir` and serves it (the wiring `berth server` runs) with its
/// client listener on a free local port.
async fn start(dir: &std::path::Path) -> (Arc<Node>, String) {
    let cfg = Config::resolve(ServerArgs {
        name: Some("ks".into()),
        data_dir: Some(dir.join("ks")),
        initial_cluster_token: Some("keyspaces".into()),
        ..Default::default()
    })
    .expect("configuration");
    let node = berth_server::node::open(&cfg)
        .await
        .expect("open the member");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let listeners = Listeners {
        client: vec![Box::pin(tokio_stream::wrappers::TcpListenerStream::new(
            listener,
        ))],
        peer: Vec::new(),
        http: Vec::new(),
        nacos: Vec::new(),
        nacos_grpc: Vec::new(),
        dns: Vec::new(),
        nats: Vec::new(),
        gateway: Vec::new(),
    };
    tokio::spawn(berth_server::node::serve_on(
        node.clone(),
        listeners,
        std::future::pending(),
    ));
    // A lone member elects itself; wait until it can take writes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.consensus.read_index().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no leader in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (node, format!("http://{addr}"))
}

/// Puts `key` into a system keyspace through consensus (as a domain would). The config
/// keyspace, which no domain reads yet: the registry's wakes up once its keyspace holds
/// anything and writes this member's presence, which would interleave with the revisions
/// counted here. Returns the revision it got.
async fn system_put(node: &Node, key: &str, value: &str, lease: i64) -> i64 {
    let cmd = Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    });
    match node.consensus.propose_in(Keyspace::Config, cmd).await {
        Ok(Applied::Put(p)) => p.header.expect("header").revision,
        other => panic!("system put: {other:?}"),
    }
}

fn system_value(node: &Node, key: &str) -> Option<Vec<u8>> {
    let r = node
        .store
        .range_in(
            Keyspace::Config,
            &RangeRequest {
                key: key.into(),
                ..Default::default()
            },
        )
        .expect("system range");
    r.kvs.into_iter().next().map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_keyspace_is_invisible_to_etcd_and_shares_its_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, addr) = start(dir.path()).await;
    let mut etcd = etcd_client::Client::connect([addr], None)
        .await
        .expect("connect");

    // One revision sequence: system and user writes interleave in it.
    let r1 = system_put(&node, "svc/a", "10.0.0.1", 0).await;
    let u1 = etcd
        .put("user/a", "1", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    assert_eq!(u1, r1 + 1, "the user write follows the system write");
    let r2 = system_put(&node, "svc/b", "10.0.0.2", 0).await;
    assert_eq!(r2, u1 + 1);

    // Range: every etcd way of asking for everything sees only user keys.
    let all = [
        etcd.get("", Some(GetOptions::new().with_prefix())).await,
        etcd.get("", Some(GetOptions::new().with_all_keys())).await,
        etcd.get("\0", Some(GetOptions::new().with_from_key()))
            .await,
        etcd.get("svc/", Some(GetOptions::new().with_prefix()))
            .await,
        etcd.get("svc/a", None).await,
    ];
    let seen: Vec<Vec<Vec<u8>>> = all
        .into_iter()
        .map(|r| {
            let r = r.expect("get");
            assert_eq!(r.header().expect("header").revision(), r2, "one sequence");
            r.kvs().iter().map(|kv| kv.key().to_vec()).collect()
        })
        .collect();
    assert_eq!(
        seen,
        [
            vec![b"user/a".to_vec()],
            vec![b"user/a".to_vec()],
            vec![b"user/a".to_vec()],
            vec![],
            vec![]
        ]
    );
    let count = etcd
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(count.count(), 1);

    // Txn: a compare on the system key sees no such key; the txn writes user keys only.
    let txn = Txn::new()
        .when([Compare::version("svc/a", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("svc/a", "hijacked", None)])
        .or_else([
            TxnOp::put("user/b", "2", None),
            TxnOp::get("", Some(GetOptions::new().with_all_keys())),
        ]);
    let t = etcd.txn(txn).await.expect("txn");
    assert!(!t.succeeded(), "the system key is not visible to a compare");
    assert_eq!(
        system_value(&node, "svc/a").as_deref(),
        Some(&b"10.0.0.1"[..])
    );

    // Watch: from revision 1 (replay) and live, only user events arrive.
    let mut w = etcd
        .watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_start_revision(1)),
        )
        .await
        .expect("watch");
    let mut events = Vec::new();
    let r3 = system_put(&node, "svc/c", "10.0.0.3", 0).await;
    let u3 = etcd
        .put("user/c", "3", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    assert_eq!(u3, r3 + 1);
    while events.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("watch events in time")
            .expect("watch stream")
            .expect("a message");
        for ev in msg.events() {
            let kv = ev.kv().expect("kv");
            assert_eq!(ev.event_type(), EventType::Put);
            events.push((kv.key().to_vec(), kv.mod_revision()));
        }
    }
    assert_eq!(
        events,
        [
            (b"user/a".to_vec(), u1),
            (b"user/b".to_vec(), r2 + 1),
            (b"user/c".to_vec(), u3)
        ],
        "no system event, replayed or live"
    );

    // A lease may hold keys of both keyspaces; etcd's TimeToLive lists only the user's.
    let lease = etcd.lease_grant(60, None).await.expect("grant").id();
    system_put(&node, "svc/leased", "x", lease).await;
    etcd.put(
        "user/leased",
        "y",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("leased put");
    let ttl = etcd
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(ttl.keys(), [b"user/leased".to_vec()]);

    // etcdctl del --prefix "": every user key goes, no system key does.
    let del = etcd
        .delete("", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete everything");
    assert_eq!(del.deleted(), 4, "user/a, user/b, user/c, user/leased");
    let after = etcd
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert!(after.kvs().is_empty());
    for key in ["svc/a", "svc/b", "svc/c", "svc/leased"] {
        assert!(system_value(&node, key).is_some(), "{key} survived");
    }
    let last = del.header().expect("header").revision();
    assert_eq!(
        system_put(&node, "svc/d", "10.0.0.4", 0).await,
        last + 1,
        "revisions stay one sequence"
    );
    assert_eq!(node.store.revision(), last + 1);
}

/// berth → the Maintenance Snapshot stream (etcd's format) → restore (what `berth snapshot
/// restore` runs) → berth: a system keyspace's keys, the one revision sequence and a lease
/// holding keys of both keyspaces come back as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_round_trip_keeps_system_keyspaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, addr) = start(dir.path()).await;
    let mut etcd = etcd_client::Client::connect([addr], None)
        .await
        .expect("connect");
    let lease = etcd.lease_grant(600, None).await.expect("lease").id();
    system_put(&node, "svc/a", "10.0.0.1", lease).await;
    etcd.put(
        "user/a",
        "1",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put");
    // A system write last: the revision counter is above every user revision.
    let last = system_put(&node, "svc/b", "10.0.0.2", 0).await;

    let mut stream = etcd.snapshot().await.expect("snapshot");
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.expect("chunk") {
        bytes.extend_from_slice(m.blob());
    }
    assert_eq!(bytes.len() % 512, 32, "a bbolt file and its SHA-256");
    let target = tempfile::tempdir().expect("tempdir");
    berth_store::snapshot::restore_data_only(
        bytes.as_slice(),
        &target.path().join("ks").join("store"),
    )
    .expect("restore");

    let (restored, addr) = start(target.path()).await;
    assert_eq!(system_value(&restored, "svc/a"), Some(b"10.0.0.1".to_vec()));
    assert_eq!(system_value(&restored, "svc/b"), Some(b"10.0.0.2".to_vec()));
    assert_eq!(restored.store.revision(), last);
    let info = restored.store.lease_info(lease).expect("lease restored");
    assert_eq!(
        info.keys,
        vec![
            (Keyspace::User, b"user/a".to_vec()),
            (Keyspace::Config, b"svc/a".to_vec()),
        ]
    );
    let mut etcd = etcd_client::Client::connect([addr], None)
        .await
        .expect("connect");
    let got = etcd.get("user/a", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    assert!(etcd.get("svc/a", None).await.expect("get").kvs().is_empty());
    let next = etcd.put("user/b", "2", None).await.expect("put");
    assert_eq!(next.header().expect("header").revision(), last + 1);
}
