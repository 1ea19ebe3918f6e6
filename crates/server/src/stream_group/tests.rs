//! The stream group alone (batches, restarts, snapshots) and as three real replicas on
//! loopback ports (publishes committed on a quorum, a replica stopped and caught up by a
//! snapshot).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_consensus::{GroupId, GroupState, Member, PeerRouter, Replica, ReplicaConfig};
use berth_messaging::stream::command::{Command, Outcome};
use berth_messaging::stream::{Config, PubAck};

use super::StreamGroup;

fn config() -> Config {
    let mut c: Config =
        serde_json::from_str(r#"{"name":"S","subjects":["s.>"],"max_msgs_per_subject":50}"#)
            .expect("config");
    c.check().expect("checked");
    c
}

fn publish(i: u64) -> Vec<u8> {
    let payload = format!("m{i}");
    Command::Publish {
        now: 1_000 + i as i64,
        subject: &format!("s.{}", i % 5),
        headers: format!("NATS/1.0\r\nNats-Msg-Id: id{i}\r\n\r\n").as_bytes(),
        payload: payload.as_bytes(),
    }
    .encode()
}

fn apply(g: &StreamGroup, from: u64, to: u64, applied: &[u8]) -> Vec<Outcome> {
    let cmds: Vec<Vec<u8>> = (from..to).map(publish).collect();
    apply_all(g, &cmds, applied)
}

/// Applies encoded commands as one batch ending at `applied`; their outcomes.
fn apply_all(g: &StreamGroup, cmds: &[Vec<u8>], applied: &[u8]) -> Vec<Outcome> {
    let refs: Vec<&[u8]> = cmds.iter().map(Vec::as_slice).collect();
    g.apply(&refs, ("raft.state", applied))
        .expect("apply")
        .iter()
        .map(|o| Outcome::decode(o).expect("outcome"))
        .collect()
}

#[test]
fn batches_survive_reopen_and_snapshots_install_elsewhere() {
    let dir = tempfile::tempdir().expect("tmp");
    let g = StreamGroup::open(&dir.path().join("a"), config(), 5, 400).expect("open");
    let out = apply(&g, 0, 10, b"one");
    assert_eq!(
        out[3],
        Outcome::Stored(PubAck {
            seq: 4,
            duplicate: false
        })
    );
    let update = serde_json::to_vec(&Config {
        max_msgs_per_subject: 1,
        ..config()
    })
    .expect("json");
    let cfg = Command::Configure {
        now: 2_000,
        config: &update,
    }
    .encode();
    g.apply(&[&cfg], ("raft.state", b"two")).expect("configure");
    assert_eq!(g.read(|s| s.store().state().messages), Some(5));
    let view = g.durable_view().expect("view");
    apply(&g, 10, 20, b"three");
    drop(g);
    // Reopened with another configuration at hand: the applied one wins.
    let g = StreamGroup::open(&dir.path().join("a"), config(), 0, 400).expect("reopen");
    assert_eq!(g.meta("raft.state").expect("meta"), Some(b"three".to_vec()));
    assert_eq!(g.read(|s| s.config().max_msgs_per_subject), Some(1));
    assert_eq!(g.read(|s| s.created()), Some(5));
    // A duplicate is one on every replica, however late it applies the log again.
    let out = apply(&g, 15, 16, b"four");
    assert_eq!(
        out[0],
        Outcome::Stored(PubAck {
            seq: 16,
            duplicate: true
        })
    );

    // The view, taken before the last batches, installs as exactly that moment.
    let mut bytes = Vec::new();
    view.write_to(&mut |c| {
        bytes.extend_from_slice(c);
        Ok(())
    })
    .expect("write");
    assert_eq!(
        view.meta("raft.state").expect("meta"),
        Some(b"two".to_vec())
    );
    let b = StreamGroup::open(&dir.path().join("b"), config(), 0, 400).expect("open");
    apply(&b, 100, 130, b"stale");
    b.install(&mut &bytes[..]).expect("install");
    assert_eq!(b.meta("raft.state").expect("meta"), Some(b"two".to_vec()));
    assert_eq!(b.read(|s| s.store().state().last_seq), Some(10));
    assert_eq!(b.read(|s| s.config().max_msgs_per_subject), Some(1));
    // A damaged snapshot leaves the replica as it was.
    assert!(b.install(&mut &bytes[..bytes.len() / 2]).is_err());
    assert_eq!(b.read(|s| s.store().state().last_seq), Some(10));
    // Consumers' states ride along: kept across a reopen and in snapshots; empty deletes.
    let save = |entries: Vec<(&str, &[u8])>| Command::Consumers { epoch: 2, entries }.encode();
    b.apply(
        &[
            &save(vec![("c1", b"one"), ("c2", b"two")]),
            &save(vec![("c1", b"uno")]),
        ],
        ("raft.state", b"five"),
    )
    .expect("consumers");
    b.apply(&[&save(vec![("c2", b"")])], ("raft.state", b"six"))
        .expect("consumers");
    assert_eq!(b.consumers(), vec![("c1".to_string(), b"uno".to_vec())]);
    // A deposed leader's states (an older epoch) are refused.
    let stale = Command::Consumers {
        epoch: 1,
        entries: vec![("c1", b"old")],
    }
    .encode();
    let out = b.apply(&[&stale], ("raft.state", b"six")).expect("apply");
    assert!(matches!(Outcome::decode(&out[0]), Ok(Outcome::Refused(_))));
    assert_eq!(b.consumers(), vec![("c1".to_string(), b"uno".to_vec())]);
    let view = b.durable_view().expect("view");
    let mut bytes = Vec::new();
    view.write_to(&mut |c| {
        bytes.extend_from_slice(c);
        Ok(())
    })
    .expect("write");
    let c = StreamGroup::open(&dir.path().join("c"), config(), 0, 400).expect("open");
    c.install(&mut &bytes[..]).expect("install");
    assert_eq!(c.consumers(), b.consumers());
    // Undecodable commands apply nothing of their batch.
    let good = publish(1);
    assert!(b
        .apply(&[&good, b"\x01\x63"], ("raft.state", b"x"))
        .is_err());
    assert_eq!(b.read(|s| s.store().state().last_seq), Some(10));
}

/// One member of the test cluster: its replica, its peer router and where it lives.
struct Node {
    id: u64,
    dir: std::path::PathBuf,
    router: Arc<PeerRouter>,
    replica: Option<Arc<Replica>>,
    group: Option<Arc<StreamGroup>>,
}

fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(500),
        snapshot_count: 40,
        keep_behind_snapshot: 5,
        cluster_id: 7,
        group: GroupId::new("stream-s").expect("group"),
        ..Default::default()
    }
}

/// A member's peer port (serving its router) and its node, not started.
async fn spawn_node(id: u64, dir: &std::path::Path) -> (Node, Member) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = PeerRouter::new(7, id);
    let svc = router.service();
    tokio::spawn(async move {
        // Small messages both ways: without NODELAY each would wait out a delayed ACK.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| {
                s.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            },
        );
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    let member = Member {
        name: format!("m{id}"),
        peer_urls: vec![format!("http://{addr}")],
        client_urls: Vec::new(),
    };
    let node = Node {
        id,
        dir: dir.join(format!("m{id}")),
        router,
        replica: None,
        group: None,
    };
    (node, member)
}

async fn start(node: &mut Node, members: &BTreeMap<u64, Member>) {
    let group =
        Arc::new(StreamGroup::open(&node.dir.join("stream"), config(), 1, 1 << 20).expect("group"));
    let replica = Replica::start(
        node.id,
        members.clone(),
        !members.is_empty(),
        &node.dir.join("raft"),
        group.clone(),
        &replica_config(),
        None,
    )
    .await
    .expect("replica");
    node.router.add(&replica);
    node.replica = Some(Arc::new(replica));
    node.group = Some(group);
}

async fn leader_of(nodes: &[Node]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.replica.as_ref().is_some_and(|r| r.status().is_leader) {
                return i;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_last(node: &Node, last: u64) {
    let group = node.group.as_ref().expect("running");
    let mut applied = group.applied();
    let done =
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|l| *l >= last)).await;
    assert!(
        done.is_ok(),
        "member {} at {:?}, not {last}: {:?} {:?}",
        node.id,
        group.read(|s| s.store().state().last_seq),
        node.replica.as_ref().map(|r| r.status()),
        node.replica.as_ref().map(|r| r.stopped()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_commit_publishes_and_catch_up_a_stopped_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut members = BTreeMap::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let (node, member) = spawn_node(id, dir.path()).await;
        members.insert(id, member);
        nodes.push(node);
    }
    for n in nodes.iter_mut() {
        start(n, &members).await;
    }
    let leader = leader_of(&nodes).await;
    // Concurrent publishes through a follower (forwarded) and the leader: every one gets its
    // own sequence.
    let follower = (leader + 1) % 3;
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let r = nodes[if i % 2 == 0 { leader } else { follower }]
            .replica
            .clone()
            .expect("running");
        tasks.push(tokio::spawn(async move { r.propose(publish(i)).await }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let bytes = t.await.expect("task").expect("proposed");
        match Outcome::decode(&bytes).expect("outcome") {
            Outcome::Stored(ack) => seqs.push(ack.seq),
            other => panic!("{other:?}"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    for n in &nodes {
        wait_last(n, 60).await;
    }

    // A follower stops; the others go on well past a snapshot and purge their logs.
    let down = (leader + 2) % 3;
    nodes[down]
        .replica
        .take()
        .expect("running")
        .shutdown()
        .await;
    nodes[down].group = None;
    let r = nodes[leader].replica.clone().expect("running");
    for i in 60..200u64 {
        r.propose(publish(i)).await.expect("proposed");
    }
    assert!(r.status().snapshots_built > 0, "{:?}", r.status());
    start(&mut nodes[down], &members).await;
    wait_last(&nodes[down], 200).await;
    let states: Vec<_> = nodes
        .iter()
        .map(|n| n.group.as_ref().and_then(|g| g.read(|s| s.store().state())))
        .collect();
    assert!(states.iter().all(|s| *s == states[0]), "{states:?}");
    // With every member up the logs are purged behind snapshots: a new member gets one.
    for i in 200..260u64 {
        r.propose(publish(i)).await.expect("proposed");
    }
    let (mut fourth, member) = spawn_node(4, dir.path()).await;
    start(&mut fourth, &BTreeMap::new()).await;
    r.add_member(4, member, true).await.expect("learner added");
    wait_last(&fourth, 260).await;
    let joined = fourth.replica.as_ref().expect("running");
    assert!(
        joined.status().snapshots_installed > 0,
        "caught up by a snapshot: {:?}",
        joined.status()
    );
    assert_eq!(
        fourth
            .group
            .as_ref()
            .and_then(|g| g.read(|s| s.store().state())),
        nodes[leader]
            .group
            .as_ref()
            .and_then(|g| g.read(|s| s.store().state()))
    );
    nodes.push(fourth);
    for n in &nodes {
        if let Some(r) = &n.replica {
            r.shutdown().await;
        }
    }
}

/// The last message ID outlives its message: a replica that restarts judges
/// `Nats-Expected-Last-Msg-Id` as the others do.
#[test]
fn the_last_message_id_survives_a_reopen_without_its_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let g = StreamGroup::open(dir.path(), config(), 1, 1 << 20).expect("open");
    apply(&g, 7, 8, b"one");
    let purge = Command::Purge {
        filter: None,
        seq: None,
        keep: None,
    }
    .encode();
    g.apply(&[&purge], ("raft.state", b"two")).expect("purge");
    drop(g);
    let g = StreamGroup::open(dir.path(), config(), 1, 1 << 20).expect("reopen");
    assert_eq!(
        g.read(|s| s.last_msg_id().map(str::to_owned)),
        Some(Some("id7".into()))
    );
    let guarded = Command::Publish {
        now: 2_000,
        subject: "s.1",
        headers: b"NATS/1.0\r\nNats-Expected-Last-Msg-Id: id7\r\n\r\n",
        payload: b"x",
    }
    .encode();
    let out = g
        .apply(&[&guarded], ("raft.state", b"three"))
        .expect("apply");
    assert!(
        matches!(Outcome::decode(&out[0]), Ok(Outcome::Stored(_))),
        "{:?}",
        Outcome::decode(&out[0])
    );
}

/// An interest stream keeps only publishes an applied consumer reaches, on every replica
/// alike: consumer states applied in the same batch count, a deleted consumer stops counting,
/// and a reopened group knows its consumers from its metadata.
#[test]
fn an_interest_stream_keeps_what_an_applied_consumer_reaches() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c: Config =
        serde_json::from_str(r#"{"name":"I","subjects":["i.>"],"retention":"interest"}"#)
            .expect("config");
    c.check().expect("checked");
    let at = dir.path().join("i");
    let g = StreamGroup::open(&at, c.clone(), 5, 4096).expect("open");
    let pub_to = |subject: &str| {
        Command::Publish {
            now: 1_000,
            subject,
            headers: b"",
            payload: b"x",
        }
        .encode()
    };
    let consumer = |filter: &str| {
        format!(
            r#"{{"config":{{"durable_name":"a","ack_policy":"explicit","filter_subject":"{filter}"}},"state":{{}},"created":0}}"#
        )
    };
    // Nobody yet: acknowledged, not kept.
    let out = apply_all(&g, &[pub_to("i.x")], b"1");
    assert!(
        matches!(out[0], Outcome::Stored(PubAck { seq: 1, .. })),
        "{out:?}"
    );
    assert_eq!(g.read(|s| s.store().state().messages), Some(0));
    // A consumer of i.a, applied in the same batch as two publishes after it.
    let a = consumer("i.a");
    let cmds = [
        Command::Consumers {
            epoch: 1,
            entries: vec![("a", a.as_bytes())],
        }
        .encode(),
        pub_to("i.a"),
        pub_to("i.b"),
    ];
    apply_all(&g, &cmds, b"2");
    assert_eq!(
        g.read(|s| s.store().subject_of(2).map(str::to_owned)),
        Some(Some("i.a".to_string()))
    );
    assert_eq!(g.read(|s| s.store().state().messages), Some(1));
    drop(g);
    // Reopened: the consumer still counts.
    let g = StreamGroup::open(&at, c, 5, 4096).expect("reopen");
    apply_all(&g, &[pub_to("i.a"), pub_to("i.c")], b"3");
    assert_eq!(g.read(|s| s.store().state().messages), Some(2));
    // Deleted: nothing is kept any more.
    let cmds = [
        Command::Consumers {
            epoch: 1,
            entries: vec![("a", b"")],
        }
        .encode(),
        pub_to("i.a"),
    ];
    apply_all(&g, &cmds, b"4");
    assert_eq!(g.read(|s| s.store().state().messages), Some(2));
}

/// A repeating schedule fires at the same times on a replica that restarted as on one that
/// did not: its due time, moved by each firing, is kept beside the messages (a reopened
/// stream would otherwise count it from when the schedule was stored, and fire again).
#[test]
fn a_repeating_schedule_fires_alike_after_a_reopen() {
    const SEC: i64 = 1_000_000_000;
    let dir = tempfile::tempdir().expect("tmp");
    let mut c: Config =
        serde_json::from_str(r#"{"name":"T","subjects":["t.>"],"allow_msg_schedules":true}"#)
            .expect("config");
    c.check().expect("checked");
    let at = dir.path().join("t");
    let g = StreamGroup::open(&at, c.clone(), 5, 4096).expect("open");
    let t0 = 1_700_000_000 * SEC;
    let run = |g: &StreamGroup, cmd: Command<'_>, applied: &[u8]| -> Outcome {
        apply_all(g, &[cmd.encode()], applied).remove(0)
    };
    let hdrs = b"NATS/1.0\r\nNats-Schedule: @every 1s\r\nNats-Schedule-Target: t.out\r\n\r\n";
    let stored = run(
        &g,
        Command::Publish {
            now: t0,
            subject: "t.sched",
            headers: hdrs,
            payload: b"tick",
        },
        b"1",
    );
    assert!(matches!(stored, Outcome::Stored(_)), "{stored:?}");
    for (n, applied) in [(1, b"2"), (2, b"3")] {
        let fired = run(&g, Command::FireSchedules { now: t0 + n * SEC }, applied);
        assert_eq!(fired, Outcome::Removed(1), "firing {n}");
    }
    assert_eq!(g.read(|s| s.next_schedule()), Some(Some(t0 + 3 * SEC)));
    drop(g);
    let g = StreamGroup::open(&at, c, 5, 4096).expect("reopen");
    assert_eq!(g.read(|s| s.next_schedule()), Some(Some(t0 + 3 * SEC)));
    let early = run(
        &g,
        Command::FireSchedules {
            now: t0 + 5 * SEC / 2,
        },
        b"4",
    );
    assert_eq!(early, Outcome::Removed(0), "not due before its period");
    let fired = run(&g, Command::FireSchedules { now: t0 + 3 * SEC }, b"5");
    assert_eq!(fired, Outcome::Removed(1));
    assert_eq!(g.read(|s| s.store().state().messages), Some(4));
}
