use std::collections::BTreeMap;

use super::*;
use crate::subject;

/// A stream in memory: sequence → (subject, size, time).
#[derive(Default)]
struct Mem {
    msgs: BTreeMap<u64, (String, u64, i64)>,
    last: u64,
}

impl Mem {
    fn put(&mut self, subject: &str, time: i64) -> u64 {
        self.last += 1;
        self.msgs.insert(self.last, (subject.into(), 10, time));
        self.last
    }

    fn reaches(filters: &[String], s: &str) -> bool {
        filters.is_empty() || filters.iter().any(|f| subject::matches(f, s))
    }
}

impl Source for Mem {
    fn next(&self, from: u64, filters: &[String]) -> Option<(u64, u64)> {
        self.msgs
            .range(from..)
            .find(|(_, (s, _, _))| Mem::reaches(filters, s))
            .map(|(q, (_, size, _))| (*q, *size))
    }
    fn size_of(&self, seq: u64) -> Option<u64> {
        self.msgs.get(&seq).map(|m| m.1)
    }
    fn count_after(&self, seq: u64, filters: &[String]) -> u64 {
        self.msgs
            .range(seq + 1..)
            .filter(|(_, (s, _, _))| Mem::reaches(filters, s))
            .count() as u64
    }
    fn last_seq(&self) -> u64 {
        self.last
    }
    fn last_matching(&self, filters: &[String]) -> Option<u64> {
        self.msgs
            .iter()
            .rev()
            .find(|(_, (s, _, _))| Mem::reaches(filters, s))
            .map(|(q, _)| *q)
    }
    fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for (q, (s, _, _)) in &self.msgs {
            if Mem::reaches(filters, s) {
                last.insert(s, *q);
            }
        }
        let mut v: Vec<u64> = last.into_values().collect();
        v.sort_unstable();
        v
    }
    fn first_at(&self, time: i64) -> Option<u64> {
        self.msgs
            .iter()
            .find(|(_, (_, _, t))| *t >= time)
            .map(|(q, _)| *q)
    }
}

const SEC: i64 = 1_000_000_000;

fn config(json: &str) -> ConsumerConfig {
    let mut c: ConsumerConfig = serde_json::from_str(json).expect("config");
    c.check(&[">".to_string()]).expect("valid");
    c
}

fn pull(reply: &str, batch: u64, no_wait: bool, expires: i64) -> PullRequest {
    PullRequest {
        reply: reply.into(),
        batch,
        max_bytes: 0,
        expires,
        no_wait,
        heartbeat: 0,
        next_beat: 0,
        delivered_any: false,
    }
}

fn delivered(actions: &[Action]) -> Vec<(u64, u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { sseq, cseq, dc, .. } => Some((*sseq, *cseq, *dc)),
            _ => None,
        })
        .collect()
}

fn statuses(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Status { status, .. } => Some(status.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn pulls_deliver_batches_and_end_as_jetstream_ends_them() {
    let mut src = Mem::default();
    for _ in 0..3 {
        src.put("a", 0);
    }
    let mut c = Consumer::new(
        config(r#"{"durable_name":"d","ack_policy":"explicit"}"#),
        &src,
        0,
    );
    let got = c.pull(pull("in.1", 2, false, 0), &src, 0);
    assert_eq!(delivered(&got), [(1, 1, 1), (2, 2, 1)]);
    match &got[1] {
        Action::Deliver { pending, .. } => assert_eq!(*pending, 1),
        other => panic!("{other:?}"),
    }
    // no_wait with one left: it, then 404.
    let got = c.pull(pull("in.2", 5, true, 0), &src, 0);
    assert_eq!(delivered(&got), [(3, 3, 1)]);
    assert_eq!(statuses(&got), ["404 No Messages"]);
    // A waiting request is served when a message arrives, and expires with 408.
    let got = c.pull(pull("in.3", 2, false, 5 * SEC), &src, 0);
    assert!(got.is_empty());
    assert_eq!(c.num_waiting(), 1);
    src.put("a", 1);
    assert_eq!(delivered(&c.poll(&src, SEC)), [(4, 4, 1)]);
    let got = c.tick(&src, 6 * SEC);
    assert_eq!(statuses(&got), ["408 Request Timeout"]);
    match &got[0] {
        Action::Status { headers, .. } => {
            assert_eq!(headers[0], ("Nats-Pending-Messages".into(), "1".into()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.num_waiting(), 0);
}

#[test]
fn counters_follow_acks_naks_terms_and_redeliveries() {
    // The research note's observation: ack #1, nak #2, term #3, ack #4 and #5, #2 redelivered
    // and not acked: delivered{6,5} ack_floor{1,1} one pending, one redelivered.
    let mut src = Mem::default();
    for _ in 0..5 {
        src.put("a", 0);
    }
    let mut c = Consumer::new(
        config(r#"{"durable_name":"d","ack_policy":"explicit"}"#),
        &src,
        0,
    );
    assert_eq!(
        delivered(&c.pull(pull("in", 3, false, 0), &src, 0)).len(),
        3
    );
    assert!(c.ack(1, Ack::Ack, 0));
    assert!(c.ack(2, Ack::Nak(SEC), 0));
    assert!(c.ack(3, Ack::Term, 0));
    assert!(
        !c.ack(3, Ack::Ack, 0),
        "an ack of what is not pending changes nothing"
    );
    assert_eq!(
        delivered(&c.pull(pull("in", 2, false, 0), &src, 0)),
        [(4, 4, 1), (5, 5, 1)]
    );
    c.ack(4, Ack::Ack, 0);
    c.ack(5, Ack::Ack, 0);
    // The nak's delay: not before a second.
    assert!(delivered(&c.pull(pull("in", 1, true, 0), &src, SEC / 2)).is_empty());
    assert_eq!(
        delivered(&c.pull(pull("in", 1, false, 0), &src, SEC)),
        [(2, 6, 2)]
    );
    let st = c.state();
    assert_eq!(
        st.delivered,
        SeqPair {
            consumer_seq: 6,
            stream_seq: 5
        }
    );
    assert_eq!(
        st.ack_floor,
        SeqPair {
            consumer_seq: 1,
            stream_seq: 1
        }
    );
    assert_eq!(
        (st.pending.len(), c.num_redelivered(), c.num_pending(&src)),
        (1, 1, 0)
    );
}

#[test]
fn unacked_deliveries_come_back_after_ack_wait_until_max_deliver() {
    let mut src = Mem::default();
    src.put("a", 0);
    let mut c = Consumer::new(
        config(
            r#"{"durable_name":"d","ack_policy":"explicit","ack_wait":1000000000,"max_deliver":2}"#,
        ),
        &src,
        0,
    );
    assert_eq!(
        delivered(&c.pull(pull("in", 10, false, 0), &src, 0)),
        [(1, 1, 1)]
    );
    assert!(delivered(&c.tick(&src, SEC / 2)).is_empty());
    // +WPI at 0.9 s moves the deadline to 1.9 s.
    c.ack(1, Ack::Progress, 9 * SEC / 10);
    assert!(delivered(&c.tick(&src, SEC + SEC / 2)).is_empty());
    assert_eq!(c.next_deadline(), Some(19 * SEC / 10));
    assert_eq!(delivered(&c.tick(&src, 2 * SEC)), [(1, 2, 2)]);
    // The second delivery was the last: given up, not delivered again.
    let got = c.tick(&src, 4 * SEC);
    assert_eq!(
        got.iter()
            .filter(|a| matches!(
                a,
                Action::GaveUp {
                    sseq: 1,
                    dc: 2,
                    why: GiveUp::MaxDeliver,
                    first: true,
                    ..
                }
            ))
            .count(),
        1,
        "{got:?}"
    );
    assert!(c.state().pending.is_empty());
    assert!(delivered(&c.tick(&src, 10 * SEC)).is_empty());
}

#[test]
fn max_ack_pending_holds_new_deliveries_and_ack_all_releases_them() {
    let mut src = Mem::default();
    for _ in 0..5 {
        src.put("a", 0);
    }
    let mut c = Consumer::new(
        config(r#"{"durable_name":"d","ack_policy":"all","max_ack_pending":2}"#),
        &src,
        0,
    );
    assert_eq!(
        delivered(&c.pull(pull("in", 5, false, 0), &src, 0)).len(),
        2
    );
    assert_eq!(c.num_waiting(), 1, "the rest of the batch waits");
    // Ack all up to 2: two more go out at once.
    c.ack(2, Ack::Ack, 0);
    assert_eq!(delivered(&c.poll(&src, 0)), [(3, 3, 1), (4, 4, 1)]);
    assert_eq!(c.state().ack_floor.stream_seq, 2);
}

#[test]
fn deliver_policies_position_the_consumer() {
    let mut src = Mem::default();
    for (s, t) in [("k.a", 0), ("k.b", 10), ("k.a", 20), ("other", 30)] {
        src.put(s, t * SEC);
    }
    let first = |json: &str, src: &Mem| {
        let mut c = Consumer::new(config(json), src, 0);
        delivered(&c.pull(pull("in", 10, true, 0), src, 0))
            .into_iter()
            .map(|d| d.0)
            .collect::<Vec<u64>>()
    };
    assert_eq!(
        first(r#"{"deliver_policy":"new"}"#, &src),
        Vec::<u64>::new()
    );
    assert_eq!(
        first(r#"{"deliver_policy":"last","filter_subject":"k.>"}"#, &src),
        [3]
    );
    assert_eq!(
        first(
            r#"{"deliver_policy":"by_start_sequence","opt_start_seq":2}"#,
            &src
        ),
        [2, 3, 4]
    );
    assert_eq!(
        first(
            r#"{"deliver_policy":"by_start_time","opt_start_time":"1970-01-01T00:00:15Z"}"#,
            &src
        ),
        [3, 4]
    );
    assert_eq!(
        first(
            r#"{"deliver_policy":"last_per_subject","filter_subject":"k.*"}"#,
            &src
        ),
        [2, 3]
    );
}

#[test]
fn a_push_consumer_delivers_while_it_has_interest_and_beats_when_idle() {
    let mut src = Mem::default();
    src.put("a", 0);
    let mut c = Consumer::new(
        config(
            r#"{"deliver_subject":"d.in","ack_policy":"none","idle_heartbeat":1000000000,"flow_control":true}"#,
        ),
        &src,
        0,
    );
    assert!(delivered(&c.poll(&src, 0)).is_empty(), "no interest yet");
    c.push_ready = true;
    assert_eq!(delivered(&c.poll(&src, 0)), [(1, 1, 1)]);
    let beat = c.poll(&src, 2 * SEC);
    assert_eq!(statuses(&beat), ["100 Idle Heartbeat"]);
    let pulled = c.pull(pull("x", 1, false, 0), &src, 0);
    assert_eq!(statuses(&pulled), ["409 Consumer is push based"]);
}

/// Push flow control as nats-server runs it: a request once half the window is out,
/// delivery held past the whole window until the client answers that request (a wrong or
/// repeated answer does nothing), the request named in heartbeats while it waits, and a
/// fresh window for a client that comes back.
#[test]
fn push_flow_control_holds_delivery_until_the_client_answers() {
    let mut src = Mem::default();
    let size = 256 << 10;
    for _ in 0..40 {
        let seq = src.put("a", 0);
        if let Some(m) = src.msgs.get_mut(&seq) {
            m.1 = size;
        }
    }
    let mut c = Consumer::new(
        config(
            r#"{"deliver_subject":"d.in","ack_policy":"none","idle_heartbeat":1000000000,"flow_control":true}"#,
        ),
        &src,
        0,
    );
    c.flow_prefix = "$JS.FC.S.C".into();
    c.push_ready = true;
    let first = c.poll(&src, 0);
    let requests: Vec<&str> = first
        .iter()
        .filter_map(|a| match a {
            Action::FlowControl { to, reply } => {
                assert_eq!(to, "d.in");
                Some(reply.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 1, "one request out at a time: {requests:?}");
    let req1 = requests[0].to_string();
    assert!(req1.starts_with("$JS.FC.S.C."), "{req1}");
    // Past the window (4 MiB = 16 of these), and no further.
    let sent = delivered(&first).len() as u64;
    assert_eq!(sent, FLOW_WINDOW / size + 1, "held at the window");
    assert!(c.flow_stalled());
    assert!(
        delivered(&c.poll(&src, 0)).is_empty(),
        "nothing more before the answer"
    );
    let beat = c.poll(&src, 2 * SEC);
    let stalled = beat.iter().find_map(|a| match a {
        Action::Status { headers, .. } => headers
            .iter()
            .find(|(k, _)| k == "Nats-Consumer-Stalled")
            .map(|(_, v)| v.clone()),
        _ => None,
    });
    assert_eq!(stalled.as_deref(), Some(req1.as_str()), "{beat:?}");
    assert!(!c.flow_answered("$JS.FC.S.C.9"), "not the request out");
    assert!(c.flow_answered(&req1));
    assert!(!c.flow_answered(&req1), "answered once");
    let after = c.poll(&src, 2 * SEC);
    assert!(!delivered(&after).is_empty(), "delivery goes on");
    let second = after.iter().find_map(|a| match a {
        Action::FlowControl { reply, .. } => Some(reply.clone()),
        _ => None,
    });
    assert!(second.as_ref().is_some_and(|r| *r != req1), "{second:?}");
    // The client goes away and another comes: it starts with a fresh window.
    c.push_ready = false;
    let _ = c.poll(&src, 3 * SEC);
    c.push_ready = true;
    assert!(!c.flow_stalled());
    let fresh = c.poll(&src, 3 * SEC);
    assert!(!delivered(&fresh).is_empty());
    // Its requests are its own: the one before's answers do not release it.
    let third = fresh.iter().find_map(|a| match a {
        Action::FlowControl { reply, .. } => Some(reply.clone()),
        _ => None,
    });
    assert!(third.is_some_and(|r| Some(&r) != second.as_ref() && r != req1));
    // Without flow control, no requests and no holding back.
    let mut plain = Consumer::new(
        config(r#"{"deliver_subject":"d.in","ack_policy":"none"}"#),
        &src,
        0,
    );
    plain.push_ready = true;
    let all = plain.poll(&src, 0);
    assert_eq!(delivered(&all).len(), 40);
    assert!(!all.iter().any(|a| matches!(a, Action::FlowControl { .. })));
}

/// xorshift64*: the property test's randomness, seeded, so failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random publishes, pulls (waiting, no_wait, expiring), acks, naks, terms, progress and
/// clock moves: after every step, no waiting request is left while a message could go to it
/// (the stall users report), acknowledged floors never pass deliveries, and every message
/// ends up delivered.
#[test]
fn a_consumer_never_stalls_with_a_message_ready_and_a_request_waiting() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut src = Mem::default();
        let policy = ["explicit", "all", "none"][rng.below(3) as usize];
        let json = format!(
            r#"{{"durable_name":"d","ack_policy":"{policy}","ack_wait":{},"max_ack_pending":{},"max_deliver":{}}}"#,
            (1 + rng.below(3) as i64) * SEC,
            1 + rng.below(4),
            [-1, 3][rng.below(2) as usize]
        );
        let mut c = Consumer::new(config(&json), &src, 0);
        let mut now = 0;
        let mut seen = std::collections::BTreeSet::new();
        let mut actions = Vec::new();
        for step in 0..300 {
            match rng.below(8) {
                0 | 1 => {
                    src.put(["x.a", "x.b"][rng.below(2) as usize], now);
                    actions = c.poll(&src, now);
                }
                2 => {
                    let expires = if rng.below(2) == 0 {
                        0
                    } else {
                        now + (1 + rng.below(3) as i64) * SEC
                    };
                    actions = c.pull(
                        pull("in", 1 + rng.below(3), rng.below(3) == 0, expires),
                        &src,
                        now,
                    );
                }
                3 | 4 => {
                    if let Some((&s, _)) = c.state().pending.iter().nth(rng.below(3) as usize) {
                        let kind = [
                            Ack::Ack,
                            Ack::Ack,
                            Ack::Nak(0),
                            Ack::Nak(SEC),
                            Ack::Term,
                            Ack::Progress,
                        ][rng.below(6) as usize];
                        c.ack(s, kind, now);
                    }
                    actions = c.poll(&src, now);
                }
                5 => {
                    // A limit drops the oldest message.
                    if let Some((&s, _)) = src.msgs.iter().next() {
                        src.msgs.remove(&s);
                    }
                    actions = c.poll(&src, now);
                }
                _ => {
                    now += rng.below(2 * SEC as u64) as i64;
                    actions = c.tick(&src, now);
                }
            }
            for a in &actions {
                if let Action::Deliver { sseq, .. } = a {
                    seen.insert(*sseq);
                }
            }
            let st = c.state();
            assert!(
                st.ack_floor.stream_seq <= st.delivered.stream_seq,
                "seed {seed} step {step}: {st:?}"
            );
            assert!(
                st.pending.keys().all(|s| *s <= st.delivered.stream_seq),
                "seed {seed} step {step}"
            );
            let mut probe = c.clone();
            let ready = probe.next_message(&src, now).is_some();
            assert!(
                !(ready && c.num_waiting() > 0),
                "seed {seed} step {step}: a request waits while a message is ready ({json})"
            );
        }
        // Drain: one long request and time enough gets every stored message delivered.
        for _ in 0..10_000 {
            now += 10 * SEC;
            for s in c.state().pending.keys().copied().collect::<Vec<_>>() {
                c.ack(s, Ack::Ack, now);
            }
            let mut any = false;
            for a in c.pull(pull("in", 1000, true, 0), &src, now) {
                if let Action::Deliver { sseq, .. } = a {
                    seen.insert(sseq);
                    any = true;
                }
            }
            if !any && c.state().pending.is_empty() {
                break;
            }
        }
        for s in src.msgs.keys() {
            assert!(
                seen.contains(s),
                "seed {seed}: message {s} was never delivered ({json})"
            );
        }
        let _ = actions;
    }
}

#[test]
fn given_up_messages_wait_for_their_dead_letter_write_and_are_never_redelivered() {
    let mut src = Mem::default();
    src.put("a", 0);
    src.put("a", 0);
    let mut dl: ConsumerConfig = serde_json::from_str(
        r#"{"durable_name":"d","ack_policy":"explicit","ack_wait":1000000000,"max_deliver":1,"dead_letter_subject":"dlq.a"}"#,
    )
    .expect("config");
    // The stream's own subjects may not take dead letters.
    assert!(dl.clone().check(&[">".to_string()]).is_err());
    dl.check(&["a".to_string()]).expect("valid");
    let mut c = Consumer::new(dl, &src, 0);
    assert_eq!(
        delivered(&c.pull(pull("in", 2, false, 0), &src, 0)),
        [(1, 1, 1), (2, 2, 1)]
    );
    // #2 terminated: given up at once; #1 reaches max_deliver at its ack wait.
    assert!(c.ack(2, Ack::Term, 0));
    let got = c.tick(&src, 0);
    assert!(
        got.contains(&Action::GaveUp {
            sseq: 2,
            dc: 1,
            cseq: 2,
            why: GiveUp::Term,
            first: true
        }),
        "{got:?}"
    );
    let got = c.tick(&src, SEC);
    assert!(
        got.contains(&Action::GaveUp {
            sseq: 1,
            dc: 1,
            cseq: 1,
            why: GiveUp::MaxDeliver,
            first: true
        }),
        "{got:?}"
    );
    // Unconfirmed: still pending, never redelivered, retried later (not first).
    assert_eq!(c.state().pending.len(), 2);
    assert!(delivered(&c.pull(pull("in", 5, true, 0), &src, 2 * SEC)).is_empty());
    let retry = c.tick(&src, SEC + DEAD_LETTER_RETRY);
    assert!(
        retry.iter().any(|a| matches!(
            a,
            Action::GaveUp {
                sseq: 1,
                first: false,
                ..
            }
        )),
        "{retry:?}"
    );
    assert!(c.dead_lettered(1) && c.dead_lettered(2));
    assert!(!c.dead_lettered(2), "confirmed once");
    assert!(c.state().pending.is_empty());
    assert_eq!(c.state().ack_floor.stream_seq, 2);
}
