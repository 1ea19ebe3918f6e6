//! Consumers: JetStream's cursors over a stream. A [`Consumer`] is the state machine of one:
//! what it delivered, what waits for an ack (and until when), the pull requests waiting, and
//! what to do next, as [`Action`]s the NATS face carries out (a delivery, a status message,
//! a message given up on). It reads the stream through [`Source`] and never does I/O.
//!
//! The rule the consumer keeps (the users' first complaint about JetStream is consumers that
//! stall): after [`Consumer::poll`], either no request (or push target) can take a message,
//! or no message can be delivered (none left, or `max_ack_pending` reached with no
//! redelivery due). The property test drives random publishes, pulls, acks, naks and clock
//! moves and checks that after every poll.

pub mod config;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

pub use config::{AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy};

/// Messages a push consumer sends in one poll at most.
pub const PUSH_BURST: usize = 256;

/// What a consumer reads of its stream.
pub trait Source {
    /// The first stored sequence at or after `from` that `filters` reach (all when empty),
    /// with its stored size.
    fn next(&self, from: u64, filters: &[String]) -> Option<(u64, u64)>;
    /// The stored size of `seq`, if it is stored.
    fn size_of(&self, seq: u64) -> Option<u64>;
    /// How many stored messages after `seq` the filters reach.
    fn count_after(&self, seq: u64, filters: &[String]) -> u64;
    /// The last sequence used.
    fn last_seq(&self) -> u64;
    /// The last stored sequence the filters reach.
    fn last_matching(&self, filters: &[String]) -> Option<u64>;
    /// The last stored sequence of each subject the filters reach, in stream order.
    fn last_per_subject(&self, filters: &[String]) -> Vec<u64>;
    /// The first stored sequence stored at or after `time` (UNIX ns).
    fn first_at(&self, time: i64) -> Option<u64>;
}

/// A consumer and a stream sequence, as ConsumerInfo reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqPair {
    /// The consumer's sequence (one per delivery).
    pub consumer_seq: u64,
    /// The stream's sequence.
    pub stream_seq: u64,
}

/// A delivered message waiting for its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The consumer sequence of its latest delivery.
    pub cseq: u64,
    /// The consumer sequence of its first delivery.
    pub first_cseq: u64,
    /// Deliveries so far.
    pub dc: u64,
    /// When it is redelivered unless acked (UNIX ns); for a dead letter, when its write to
    /// the dead-letter subject is tried again unless confirmed.
    pub deadline: i64,
    /// Given up on (max_deliver or `+TERM`) and waiting for its dead-letter write to be
    /// confirmed: never redelivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead: Option<GiveUp>,
    /// Writes to the dead-letter subject tried so far.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub dead_tries: u32,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// Why a message was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUp {
    /// Its last allowed delivery went unacknowledged.
    MaxDeliver,
    /// The client said `+TERM`.
    Term,
}

impl GiveUp {
    /// The reason as the dead-letter header and advisories name it.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::MaxDeliver => "max_deliver",
            GiveUp::Term => "term",
        }
    }
}

/// How long a dead letter waits for its write to be confirmed before it is tried again.
pub const DEAD_LETTER_RETRY: i64 = 5_000_000_000;

/// What a consumer remembers across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    /// The last delivery.
    pub delivered: SeqPair,
    /// The highest sequences at or below which everything is acknowledged (or given up).
    pub ack_floor: SeqPair,
    /// Delivered, not acknowledged, by stream sequence.
    pub pending: BTreeMap<u64, Pending>,
    /// `last_per_subject`: the initial messages still to deliver, in order.
    pub initial: VecDeque<u64>,
}

/// A pull request waiting for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Where the messages go (the requester's inbox).
    pub reply: String,
    /// Messages still to send.
    pub batch: u64,
    /// Bytes still allowed (0: no limit).
    pub max_bytes: u64,
    /// When it ends (UNIX ns; 0: never).
    pub expires: i64,
    /// End as soon as nothing is ready.
    pub no_wait: bool,
    /// Heartbeat period while waiting (ns; 0: none), and when the next is due.
    pub heartbeat: i64,
    /// When the next heartbeat is due.
    pub next_beat: i64,
    /// True once something was delivered to it.
    pub delivered_any: bool,
}

/// How an ack message acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// `+ACK` (or empty, `+OK`).
    Ack,
    /// `-NAK`, optionally after a delay (ns).
    Nak(i64),
    /// `+WPI`: still working, restart the timer.
    Progress,
    /// `+TERM`: never redeliver.
    Term,
}

/// Something the face must do for the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send stream message `sseq` to `to`, with the ack subject's numbers.
    Deliver {
        /// The inbox or deliver subject.
        to: String,
        /// Stream sequence.
        sseq: u64,
        /// Consumer sequence.
        cseq: u64,
        /// Delivery count.
        dc: u64,
        /// Messages pending after this one.
        pending: u64,
    },
    /// Push flow control: send `100 FlowControl Request` to `to` with reply subject `reply`;
    /// the client answers it (an empty message to `reply`) once it has taken in what came
    /// before, and [`Consumer::flow_answered`] is told.
    FlowControl {
        /// The deliver subject.
        to: String,
        /// Where the answer goes (`$JS.FC.<stream>.<consumer>.<n>`).
        reply: String,
    },
    /// Send a status message (an empty payload and a header block) to `to`.
    Status {
        /// The inbox or deliver subject.
        to: String,
        /// `404 No Messages`, `408 Request Timeout`, …
        status: String,
        /// Headers after the status line.
        headers: Vec<(String, String)>,
    },
    /// The message is given up on (max_deliver reached, or `+TERM`): it is not delivered
    /// again. With a dead-letter subject, it stays pending until [`Consumer::dead_lettered`]
    /// confirms its write there (the action repeats every [`DEAD_LETTER_RETRY`] until then).
    GaveUp {
        /// Stream sequence.
        sseq: u64,
        /// Deliveries made.
        dc: u64,
        /// The consumer sequence of its last delivery.
        cseq: u64,
        /// Why.
        why: GiveUp,
        /// True the first time (advisories go out once; dead-letter writes are retried).
        first: bool,
    },
}

/// A consumer: its configuration, state and waiting pull requests.
#[derive(Debug, Clone)]
pub struct Consumer {
    config: ConsumerConfig,
    state: ConsumerState,
    waiting: VecDeque<PullRequest>,
    /// Push: whether the deliver subject has a subscriber now.
    pub push_ready: bool,
    /// Push: when the next idle heartbeat is due.
    next_push_beat: i64,
    /// Set when the state changed since [`Consumer::take_dirty`].
    dirty: bool,
    /// Push: set (to when) when a poll stopped at [`PUSH_BURST`] with more to send.
    push_backlog: Option<i64>,
    /// When a request or an interest last showed the consumer is used (UNIX ns).
    pub last_active: i64,
    /// Push flow control: where its requests' reply subjects start
    /// (`$JS.FC.<stream>.<consumer>`, set by the face), and its state.
    pub flow_prefix: String,
    flow: Flow,
}

/// Push flow control (nats-server's): bytes delivered since the client last answered, and
/// the request out with the bytes it answers for. A request goes out once half of
/// [`FLOW_WINDOW`] is delivered; past the whole window delivery stops until the answer.
#[derive(Debug, Clone, Default)]
struct Flow {
    delivered: u64,
    out: Option<(String, u64)>,
    sent: u64,
}

/// Bytes a push consumer with flow control may deliver ahead of its client's answers
/// (nats-server takes a sixteenth of the client's 64 MiB pending limit).
pub const FLOW_WINDOW: u64 = 4 << 20;

impl Consumer {
    /// A new consumer positioned by its deliver policy (config checked).
    pub fn new(config: ConsumerConfig, src: &dyn Source, now: i64) -> Consumer {
        let filters = config.filters();
        let last = src.last_seq();
        let mut state = ConsumerState::default();
        let start = match config.deliver_policy {
            DeliverPolicy::All => 0,
            DeliverPolicy::Last => src
                .last_matching(&filters)
                .map_or(last, |s| s.saturating_sub(1)),
            DeliverPolicy::New => last,
            DeliverPolicy::ByStartSequence => config.opt_start_seq.unwrap_or(1).saturating_sub(1),
            DeliverPolicy::ByStartTime => {
                let t = config
                    .opt_start_time
                    .as_deref()
                    .and_then(humantime_ns)
                    .unwrap_or(0);
                src.first_at(t).map_or(last, |s| s.saturating_sub(1))
            }
            DeliverPolicy::LastPerSubject => {
                state.initial = src.last_per_subject(&filters).into();
                last
            }
        };
        state.delivered.stream_seq = start;
        state.ack_floor.stream_seq = start;
        Consumer::restore(config, state, now)
    }

    /// A consumer with a saved state, which may not run ahead of the stream: what it says it
    /// delivered past the stream's last sequence (a stream that lost an unsynced tail in a
    /// power cut) is forgotten, so those sequences are delivered when they are used again.
    pub fn restore_within(
        config: ConsumerConfig,
        mut state: ConsumerState,
        last_seq: u64,
        now: i64,
    ) -> Consumer {
        if state.delivered.stream_seq > last_seq {
            state.delivered.stream_seq = last_seq;
            state.pending.retain(|s, _| *s <= last_seq);
            state.initial.retain(|s| *s <= last_seq);
            if state.ack_floor.stream_seq > last_seq {
                state.ack_floor.stream_seq = last_seq;
            }
        }
        Consumer::restore(config, state, now)
    }

    /// A consumer with a saved state.
    pub fn restore(config: ConsumerConfig, state: ConsumerState, now: i64) -> Consumer {
        Consumer {
            config,
            state,
            waiting: VecDeque::new(),
            push_ready: false,
            next_push_beat: 0,
            dirty: true,
            push_backlog: None,
            last_active: now,
            flow_prefix: String::new(),
            flow: Flow::default(),
        }
    }

    /// The client answered flow control request `reply`: what it answered for no longer
    /// holds delivery back. False when `reply` is not the request out (a late or repeated
    /// answer).
    pub fn flow_answered(&mut self, reply: &str) -> bool {
        match &self.flow.out {
            Some((r, covers)) if r == reply => {
                self.flow.delivered = self.flow.delivered.saturating_sub(*covers);
                self.flow.out = None;
                true
            }
            _ => false,
        }
    }

    /// Whether push delivery waits for the client's answer to a flow control request.
    pub fn flow_stalled(&self) -> bool {
        self.config.flow_control && self.flow.delivered > FLOW_WINDOW
    }

    /// The configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Replaces the configuration (checked by the caller against the old one).
    pub fn set_config(&mut self, config: ConsumerConfig) {
        self.config = config;
        self.dirty = true;
    }

    /// The state.
    pub fn state(&self) -> &ConsumerState {
        &self.state
    }

    /// True (once) when the state changed since the last call: time to save it.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the state changed (a save that failed is tried again).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether the state changed since the last [`Consumer::take_dirty`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Pull requests waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Messages the filters reach that were not delivered yet.
    pub fn num_pending(&self, src: &dyn Source) -> u64 {
        src.count_after(self.state.delivered.stream_seq, &self.config.filters())
            + self.state.initial.len() as u64
    }

    /// Pending messages delivered more than once.
    pub fn num_redelivered(&self) -> usize {
        self.state.pending.values().filter(|p| p.dc > 1).count()
    }

    fn acks(&self) -> bool {
        self.config.ack_policy != AckPolicy::None
    }

    /// Takes a pull request: answered at once when it cannot be served, queued otherwise;
    /// then delivers what it can.
    pub fn pull(&mut self, req: PullRequest, src: &dyn Source, now: i64) -> Vec<Action> {
        self.last_active = now;
        let c = &self.config;
        let status = |text: String| Action::Status {
            to: req.reply.clone(),
            status: text,
            headers: Vec::new(),
        };
        if c.is_push() {
            return vec![status("409 Consumer is push based".into())];
        }
        if c.max_batch > 0 && req.batch as i64 > c.max_batch {
            return vec![status(format!(
                "409 Exceeded MaxRequestBatch of {}",
                c.max_batch
            ))];
        }
        if c.max_expires > 0
            && (req.expires == 0 || req.expires.saturating_sub(now) > c.max_expires)
        {
            return vec![status(format!(
                "409 Exceeded MaxRequestExpires of {}",
                go_duration(c.max_expires)
            ))];
        }
        if c.max_bytes > 0 && (req.max_bytes == 0 || req.max_bytes as i64 > c.max_bytes) {
            return vec![status(format!(
                "409 Exceeded MaxRequestMaxBytes of {}",
                c.max_bytes
            ))];
        }
        if self.waiting.len() as i64 >= c.max_waiting && req.heartbeat == 0 {
            return vec![status("409 Exceeded MaxWaiting".into())];
        }
        self.waiting.push_back(req);
        self.poll(src, now)
    }

    /// Applies an ack of stream message `sseq`; true when it changed something.
    pub fn ack(&mut self, sseq: u64, kind: Ack, now: i64) -> bool {
        self.ack_seqs(sseq, kind, now).is_some()
    }

    /// [`Consumer::ack`], saying which stream sequences it acknowledged for good (what an
    /// interest or work-queue stream may then drop): `None` when nothing changed.
    pub fn ack_seqs(&mut self, sseq: u64, kind: Ack, now: i64) -> Option<Vec<u64>> {
        if !self.acks() {
            return None;
        }
        let dead_letters = self.config.dead_letter_subject.is_some();
        let mut done: Vec<u64> = Vec::new();
        let changed = match kind {
            // With a dead-letter subject, a terminated message goes there first.
            Ack::Term if dead_letters => match self.state.pending.get_mut(&sseq) {
                Some(p) if p.dead.is_none() => {
                    p.dead = Some(GiveUp::Term);
                    p.deadline = now;
                    true
                }
                _ => false,
            },
            Ack::Ack | Ack::Term => {
                if self.config.ack_policy == AckPolicy::All {
                    done = self.state.pending.range(..=sseq).map(|(s, _)| *s).collect();
                    for s in &done {
                        self.state.pending.remove(s);
                    }
                    !done.is_empty()
                } else if self.state.pending.remove(&sseq).is_some() {
                    done.push(sseq);
                    true
                } else {
                    false
                }
            }
            Ack::Nak(delay) => match self.state.pending.get_mut(&sseq) {
                Some(p) if p.dead.is_none() => {
                    p.deadline = now.saturating_add(delay.max(0));
                    true
                }
                _ => false,
            },
            Ack::Progress => {
                let config = &self.config;
                match self.state.pending.get_mut(&sseq) {
                    Some(p) if p.dead.is_none() => {
                        p.deadline = now.saturating_add(config.redelivery_wait(p.dc));
                        true
                    }
                    _ => false,
                }
            }
        };
        if !changed {
            return None;
        }
        self.update_floor();
        self.dirty = true;
        Some(done)
    }

    /// Whether this consumer is done with stream message `sseq` (acknowledged, or before
    /// where it started), as an interest stream asks before dropping it. Its filters are the
    /// caller's to check.
    pub fn has_acked(&self, sseq: u64) -> bool {
        let st = &self.state;
        // The initial set (last per subject) lies below where delivery resumes: not done
        // until delivered, whatever the floors say.
        if st.initial.contains(&sseq) {
            return false;
        }
        if !self.acks() {
            return sseq <= st.delivered.stream_seq;
        }
        sseq <= st.ack_floor.stream_seq
            || (sseq <= st.delivered.stream_seq && !st.pending.contains_key(&sseq))
    }

    fn update_floor(&mut self) {
        self.state.ack_floor = match self.state.pending.first_key_value() {
            None => self.state.delivered,
            Some((sseq, p)) => SeqPair {
                consumer_seq: p.first_cseq.saturating_sub(1),
                stream_seq: sseq.saturating_sub(1),
            },
        };
    }

    /// Expires requests, gives up on messages past max_deliver, sends heartbeats, then
    /// delivers what it can; call when [`Consumer::next_deadline`] passes.
    pub fn tick(&mut self, src: &dyn Source, now: i64) -> Vec<Action> {
        self.poll(src, now)
    }

    /// The earliest time something is due (a redelivery, a request's expiry, a heartbeat).
    pub fn next_deadline(&self) -> Option<i64> {
        let redelivery = self.state.pending.values().map(|p| p.deadline).min();
        let requests = self
            .waiting
            .iter()
            .flat_map(|r| {
                [
                    (r.expires > 0).then_some(r.expires),
                    (r.heartbeat > 0).then_some(r.next_beat),
                ]
            })
            .flatten()
            .min();
        let push_beat = (self.config.is_push() && self.config.idle_heartbeat > 0)
            .then_some(self.next_push_beat);
        [redelivery, requests, push_beat]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next message to send: a due redelivery first, then the initial set, then the
    /// next new one (unless max_ack_pending is reached); (sseq, size, is redelivery).
    fn next_message(&mut self, src: &dyn Source, now: i64) -> Option<(u64, u64, bool)> {
        loop {
            let max = self.config.max_deliver;
            let due = self
                .state
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now && p.dead.is_none())
                .filter(|(_, p)| max <= 0 || p.dc < max as u64)
                .min_by_key(|(s, p)| (p.deadline, **s))
                .map(|(s, _)| *s);
            let Some(sseq) = due else { break };
            match src.size_of(sseq) {
                Some(size) => return Some((sseq, size, true)),
                // Removed from the stream meanwhile: nothing to redeliver.
                None => {
                    self.state.pending.remove(&sseq);
                    self.update_floor();
                    self.dirty = true;
                }
            }
        }
        let full = self.acks()
            && self.config.max_ack_pending > 0
            && self.state.pending.len() as i64 >= self.config.max_ack_pending;
        if full {
            return None;
        }
        while let Some(&sseq) = self.state.initial.front() {
            if let Some(size) = src.size_of(sseq) {
                return Some((sseq, size, false));
            }
            self.state.initial.pop_front();
        }
        let filters = self.config.filters();
        src.next(self.state.delivered.stream_seq + 1, &filters)
            .map(|(s, size)| (s, size, false))
    }

    /// Messages past max_deliver whose last delivery went unacknowledged, and terminated
    /// ones bound for the dead-letter subject: given up on. Without a dead-letter subject
    /// they leave the pending set now; with one, they stay (not redelivered) until their
    /// write there is confirmed, the action repeating every [`DEAD_LETTER_RETRY`].
    fn give_up(&mut self, now: i64) -> Vec<Action> {
        let max = self.config.max_deliver;
        let dead_letters = self.config.dead_letter_subject.is_some();
        let due: Vec<(u64, Pending, GiveUp)> = self
            .state
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .filter_map(|(s, p)| match p.dead {
                Some(why) => Some((*s, *p, why)),
                None if max > 0 && p.dc >= max as u64 => Some((*s, *p, GiveUp::MaxDeliver)),
                None => None,
            })
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        for (s, _, why) in &due {
            if dead_letters {
                if let Some(p) = self.state.pending.get_mut(s) {
                    p.dead = Some(*why);
                    p.deadline = now.saturating_add(DEAD_LETTER_RETRY);
                    p.dead_tries += 1;
                }
            } else {
                self.state.pending.remove(s);
            }
        }
        self.update_floor();
        self.dirty = true;
        due.into_iter()
            .map(|(sseq, p, why)| Action::GaveUp {
                sseq,
                dc: p.dc,
                cseq: p.cseq,
                why,
                first: p.dead_tries == 0,
            })
            .collect()
    }

    /// The write of given-up message `sseq` to the dead-letter subject is confirmed: it
    /// leaves the pending set.
    pub fn dead_lettered(&mut self, sseq: u64) -> bool {
        let dead = self
            .state
            .pending
            .get(&sseq)
            .is_some_and(|p| p.dead.is_some());
        if dead {
            self.state.pending.remove(&sseq);
            self.update_floor();
            self.dirty = true;
        }
        dead
    }

    /// Records a delivery of `sseq`; returns the action. `left` caches the pending count
    /// over one poll (counted once, then one less per new message).
    fn deliver(
        &mut self,
        to: String,
        sseq: u64,
        redelivery: bool,
        src: &dyn Source,
        now: i64,
        left: &mut Option<u64>,
    ) -> Action {
        self.state.delivered.consumer_seq += 1;
        let cseq = self.state.delivered.consumer_seq;
        if !redelivery {
            if self.state.initial.front() == Some(&sseq) {
                self.state.initial.pop_front();
            } else {
                self.state.delivered.stream_seq = self.state.delivered.stream_seq.max(sseq);
            }
        }
        let dc = if self.acks() {
            let wait = |dc| self.config.redelivery_wait(dc);
            let entry = self.state.pending.entry(sseq).or_insert(Pending {
                cseq,
                first_cseq: cseq,
                dc: 0,
                deadline: 0,
                dead: None,
                dead_tries: 0,
            });
            entry.dc += 1;
            entry.cseq = cseq;
            let dc = entry.dc;
            entry.deadline = now.saturating_add(wait(dc));
            dc
        } else {
            1
        };
        self.update_floor();
        self.dirty = true;
        let pending = match left {
            Some(n) if !redelivery => {
                *n = n.saturating_sub(1);
                *n
            }
            Some(n) => *n,
            None => {
                let n = self.num_pending(src);
                *left = Some(n);
                n
            }
        };
        Action::Deliver {
            to,
            sseq,
            cseq,
            dc,
            pending,
        }
    }

    /// Delivers what can be delivered now and answers requests that are done.
    pub fn poll(&mut self, src: &dyn Source, now: i64) -> Vec<Action> {
        let mut out = self.give_up(now);
        if self.config.is_push() {
            self.poll_push(src, now, &mut out);
            return out;
        }
        // Expired requests end with 408 and what is left.
        let mut kept = VecDeque::new();
        while let Some(r) = self.waiting.pop_front() {
            if r.expires > 0 && r.expires <= now {
                out.push(Self::pending_status(&r, "408 Request Timeout"));
            } else {
                kept.push_back(r);
            }
        }
        self.waiting = kept;
        let mut left = None;
        while let Some(mut r) = self.waiting.pop_front() {
            let Some((sseq, size, redelivery)) = self.next_message(src, now) else {
                // Nothing to send: a no_wait request ends here; others wait.
                if r.no_wait {
                    out.push(Action::Status {
                        to: r.reply.clone(),
                        status: "404 No Messages".into(),
                        headers: Vec::new(),
                    });
                    continue;
                }
                self.waiting.push_front(r);
                break;
            };
            if r.max_bytes > 0 && size > r.max_bytes {
                let status = if r.delivered_any {
                    "409 Batch Completed"
                } else {
                    "409 Message Size Exceeds MaxBytes"
                };
                out.push(Self::pending_status(&r, status));
                continue;
            }
            let action = self.deliver(r.reply.clone(), sseq, redelivery, src, now, &mut left);
            out.push(action);
            r.delivered_any = true;
            r.batch -= 1;
            if r.max_bytes > 0 {
                r.max_bytes -= size;
            }
            if r.batch > 0 {
                if r.heartbeat > 0 {
                    r.next_beat = now.saturating_add(r.heartbeat);
                }
                self.waiting.push_front(r);
            }
        }
        // Heartbeats for requests still waiting.
        let last = self.state.delivered;
        for r in &mut self.waiting {
            if r.heartbeat > 0 && r.next_beat <= now {
                r.next_beat = now.saturating_add(r.heartbeat);
                out.push(heartbeat(r.reply.clone(), last));
            }
        }
        out
    }

    fn pending_status(r: &PullRequest, status: &str) -> Action {
        Action::Status {
            to: r.reply.clone(),
            status: status.into(),
            headers: vec![
                ("Nats-Pending-Messages".into(), r.batch.to_string()),
                ("Nats-Pending-Bytes".into(), r.max_bytes.to_string()),
            ],
        }
    }

    fn poll_push(&mut self, src: &dyn Source, now: i64, out: &mut Vec<Action>) {
        let Some(to) = self.config.deliver_subject.clone() else {
            return;
        };
        self.push_backlog = None;
        if !self.push_ready {
            // A client that comes (back) starts with a fresh window: it never saw the
            // requests of the one before.
            self.flow = Flow::default();
        }
        if self.push_ready {
            self.last_active = now;
            let mut left = None;
            let mut sent = 0;
            while !self.flow_stalled() {
                let Some((sseq, size, redelivery)) = self.next_message(src, now) else {
                    break;
                };
                if sent == PUSH_BURST {
                    // The rest on the next poll, so one consumer's backlog does not fill
                    // its subscriber's buffer in one go.
                    self.push_backlog = Some(now);
                    break;
                }
                let a = self.deliver(to.clone(), sseq, redelivery, src, now, &mut left);
                out.push(a);
                sent += 1;
                self.next_push_beat = now.saturating_add(self.config.idle_heartbeat);
                if self.config.flow_control {
                    self.flow.delivered += size;
                    if self.flow.out.is_none() && self.flow.delivered > FLOW_WINDOW / 2 {
                        self.flow.sent += 1;
                        // Unique across clients too (a late answer to a request made
                        // for the one before must not release this one): the clock's
                        // nanoseconds beside the count.
                        let reply = format!("{}.{now:x}{}", self.flow_prefix, self.flow.sent);
                        self.flow.out = Some((reply.clone(), self.flow.delivered));
                        out.push(Action::FlowControl {
                            to: to.clone(),
                            reply,
                        });
                    }
                }
            }
        }
        if self.config.idle_heartbeat > 0 && self.next_push_beat <= now {
            self.next_push_beat = now.saturating_add(self.config.idle_heartbeat);
            let mut beat = heartbeat(to, self.state.delivered);
            // A stalled consumer names the request it waits on, for a client that missed it.
            if let (Some((reply, _)), Action::Status { headers, .. }) = (&self.flow.out, &mut beat)
            {
                headers.push(("Nats-Consumer-Stalled".into(), reply.clone()));
            }
            out.push(beat);
        }
    }

    /// Ends every waiting request with `status` (the consumer is deleted).
    pub fn close(&mut self, status: &str) -> Vec<Action> {
        self.waiting
            .drain(..)
            .map(|r| Action::Status {
                to: r.reply,
                status: status.into(),
                headers: Vec::new(),
            })
            .collect()
    }

    /// Drops waiting requests whose requester went away (`gone` says which inboxes).
    pub fn forget_requests(&mut self, gone: impl Fn(&str) -> bool) {
        self.waiting.retain(|r| !gone(&r.reply));
    }
}

/// An idle heartbeat to `to`, naming the last delivery (ordered consumers check it).
fn heartbeat(to: String, last: SeqPair) -> Action {
    Action::Status {
        to,
        status: "100 Idle Heartbeat".into(),
        headers: vec![
            ("Nats-Last-Consumer".into(), last.consumer_seq.to_string()),
            ("Nats-Last-Stream".into(), last.stream_seq.to_string()),
        ],
    }
}

/// RFC 3339 → UNIX nanoseconds.
fn humantime_ns(t: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    let d = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

/// Nanoseconds as Go prints a duration (for the 409 texts).
fn go_duration(ns: i64) -> String {
    let d = std::time::Duration::from_nanos(ns.max(0) as u64);
    if d.subsec_nanos() == 0 {
        let s = d.as_secs();
        if s.is_multiple_of(60) && s > 0 {
            return format!("{}m0s", s / 60);
        }
        return format!("{s}s");
    }
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests;
