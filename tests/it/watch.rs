//! Watch over the wire: live events, replay from a revision then live with no gap and no
//! duplicate, prev_kv, filters, cancel, progress, and compacted starts.

use std::time::Duration;

use etcd_client::{EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

use crate::harness::Server;

async fn next(w: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a watch response in time")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replay_prev_kv_filters_cancel() {
    let srv = Server::start();
    let mut c = srv.client().await;
    for i in 0..10 {
        c.put("w/a", i.to_string(), None).await.expect("put");
    }
    // Replay from revision 2 with prev_kv, then live.
    let mut w = c
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    let created = next(&mut w).await;
    assert!(created.created());
    let id = created.watch_id();
    let writer = {
        let mut c = c.clone();
        tokio::spawn(async move {
            for i in 10..60 {
                c.put("w/a", i.to_string(), None).await.expect("put");
            }
            c.delete("w/a", None).await.expect("delete");
        })
    };
    let mut seen = Vec::new();
    let mut last_rev = 1;
    while seen.len() < 61 {
        let r = next(&mut w).await;
        assert_eq!(r.watch_id(), id);
        for ev in r.events() {
            let kv = ev.kv().expect("kv");
            assert!(kv.mod_revision() > last_rev, "revisions strictly increase");
            last_rev = kv.mod_revision();
            if ev.event_type() == EventType::Put {
                let v: i32 = kv.value_str().expect("utf8").parse().expect("number");
                if v > 0 {
                    let prev: i32 = ev
                        .prev_kv()
                        .expect("prev_kv")
                        .value_str()
                        .expect("utf8")
                        .parse()
                        .expect("n");
                    assert_eq!(prev, v - 1);
                }
                seen.push(v);
            } else {
                assert_eq!(ev.prev_kv().expect("prev of delete").value(), b"59");
                seen.push(-1);
            }
        }
    }
    writer.await.expect("writer");
    let mut want: Vec<i32> = (0..60).collect();
    want.push(-1);
    assert_eq!(seen, want, "no gap, no duplicate");

    // Filters: NOPUT only delivers deletes.
    w.watch(
        "f",
        Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])),
    )
    .await
    .expect("second watch on the stream");
    let created = next(&mut w).await;
    assert!(created.created());
    let fid = created.watch_id();
    assert_ne!(fid, id);
    c.put("f", "1", None).await.expect("put");
    c.delete("f", None).await.expect("delete");
    let r = next(&mut w).await;
    assert_eq!(r.watch_id(), fid);
    assert_eq!(r.events().len(), 1);
    assert_eq!(r.events()[0].event_type(), EventType::Delete);

    // Cancel: acknowledged, then nothing more for that watch.
    w.cancel(fid).await.expect("cancel");
    let r = next(&mut w).await;
    assert!(r.canceled());
    assert_eq!(r.watch_id(), fid);
    c.delete("f", None).await.expect("delete nothing");
    c.put("f", "2", None).await.expect("put");
    c.delete("f", None).await.expect("delete");
    // Progress request answers with watch id -1 and the current revision.
    w.request_progress().await.expect("progress");
    let r = next(&mut w).await;
    assert_eq!(r.watch_id(), -1);
    assert!(r.events().is_empty());
    assert_eq!(
        r.header().expect("h").revision(),
        c.get("x", None)
            .await
            .expect("get")
            .header()
            .expect("h")
            .revision()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_is_reported() {
    let srv = Server::start();
    let mut c = srv.client().await;
    for i in 0..5 {
        c.put("c", i.to_string(), None).await.expect("put");
    }
    c.compact(5, None).await.expect("compact");
    let mut w = c
        .watch("c", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch");
    assert!(next(&mut w).await.created());
    let r = next(&mut w).await;
    assert!(r.canceled());
    assert_eq!(r.compact_revision(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_all_see_every_event() {
    let srv = Server::start();
    let c = srv.client().await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut c = c.clone();
        let mut w = c.watch("fan", None).await.expect("watch");
        assert!(next(&mut w).await.created());
        streams.push(w);
    }
    let mut c2 = c.clone();
    for i in 0..20 {
        c2.put("fan", i.to_string(), None).await.expect("put");
    }
    for w in &mut streams {
        let mut n = 0;
        while n < 20 {
            n += next(w).await.events().len();
        }
        assert_eq!(n, 20);
    }
}
