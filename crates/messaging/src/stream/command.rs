//! What a replicated stream's Raft log carries: every change of the stream as a command,
//! applied by each replica in log order ([`Stream::apply`]), and what applying one answers.
//!
//! Commands carry the leader's clock (`now`) wherever the stream's rules read the time (the
//! duplicate window, max_age, schedules), so every replica applies them alike. The encoding is
//! a version byte, a kind byte and the fields (little endian; strings and byte strings with
//! a u32 length), decoded strictly: a command this build cannot read is refused whole.

use super::{ApiError, PubAck, Publish, Stream};

const VERSION: u8 = 1;

const PUBLISH: u8 = 1;
const DELETE: u8 = 2;
const PURGE: u8 = 3;
const EXPIRE: u8 = 4;
const FIRE: u8 = 5;
const RETIRE: u8 = 6;
const CONFIGURE: u8 = 7;
const CONSUMERS: u8 = 8;
const PUBLISHES: u8 = 9;

/// One change of a replicated stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// Store a publish (subject to the stream's rules), as at `now`.
    Publish {
        /// The leader's clock (UNIX ns).
        now: i64,
        /// Its subject.
        subject: &'a str,
        /// Its headers block (empty: none).
        headers: &'a [u8],
        /// Its payload.
        payload: &'a [u8],
    },
    /// Store publishes in this order (one publisher's order is the stream's), as at `now`:
    /// (subject, headers, payload) each.
    Publishes {
        /// The leader's clock (UNIX ns).
        now: i64,
        /// The publishes.
        msgs: Vec<(&'a str, &'a [u8], &'a [u8])>,
    },
    /// Delete one message.
    Delete {
        /// Its sequence.
        seq: u64,
    },
    /// Purge, as `STREAM.PURGE` asks.
    Purge {
        /// Subjects reached (all when `None`).
        filter: Option<&'a str>,
        /// Only below this sequence.
        seq: Option<u64>,
        /// Keep this many newest.
        keep: Option<u64>,
    },
    /// Drop what max_age has expired at `now`.
    Expire {
        /// The leader's clock.
        now: i64,
    },
    /// Fire the schedules due at `now`.
    FireSchedules {
        /// The leader's clock.
        now: i64,
    },
    /// Drop messages the consumers are done with (interest and work-queue retention).
    Retire {
        /// Their sequences.
        seqs: Vec<u64>,
    },
    /// Take a new configuration (JSON of [`super::Config`], checked by the leader) and apply
    /// its limits at `now`.
    Configure {
        /// The leader's clock.
        now: i64,
        /// The configuration's JSON.
        config: &'a [u8],
    },
    /// Record consumers' saved states (name, bytes; empty bytes: the consumer is deleted).
    /// Metadata of the group, kept beside the stream: the stream itself is unchanged.
    Consumers {
        /// The term of the leader whose consumers these are: a group refuses states from a
        /// leader older than one it has heard from (a deposed leader that did not know yet).
        epoch: u64,
        /// The consumers' names and states.
        entries: Vec<(&'a str, &'a [u8])>,
    },
}

/// What applying a command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A publish stored (or found a duplicate).
    Stored(PubAck),
    /// How many messages a removal took.
    Removed(u64),
    /// Done, with nothing to report.
    Done,
    /// Refused by the stream's rules (the same on every replica).
    Refused(ApiError),
    /// One outcome per publish of [`Command::Publishes`], in order.
    Many(Vec<Outcome>),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Commands come from checked publishes and requests, far below 4 GiB.
        self.0
            .extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("stream command cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "bad u64")?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes(b.try_into().map_err(|_| "bad length")?) as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| "stream command: a string is not UTF-8".into())
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            k => Err(format!("stream command: bad option tag {k}")),
        }
    }
    fn end(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("stream command: trailing bytes".into())
        }
    }
}

impl Command<'_> {
    /// The command's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        w.u8(VERSION);
        match self {
            Command::Publish {
                now,
                subject,
                headers,
                payload,
            } => {
                w.u8(PUBLISH);
                w.i64(*now);
                w.bytes(subject.as_bytes());
                w.bytes(headers);
                w.bytes(payload);
            }
            Command::Publishes { now, msgs } => {
                w.u8(PUBLISHES);
                w.i64(*now);
                w.u64(msgs.len() as u64);
                for (subject, headers, payload) in msgs {
                    w.bytes(subject.as_bytes());
                    w.bytes(headers);
                    w.bytes(payload);
                }
            }
            Command::Delete { seq } => {
                w.u8(DELETE);
                w.u64(*seq);
            }
            Command::Purge { filter, seq, keep } => {
                w.u8(PURGE);
                match filter {
                    Some(f) => {
                        w.u8(1);
                        w.bytes(f.as_bytes());
                    }
                    None => w.u8(0),
                }
                w.opt_u64(*seq);
                w.opt_u64(*keep);
            }
            Command::Expire { now } => {
                w.u8(EXPIRE);
                w.i64(*now);
            }
            Command::FireSchedules { now } => {
                w.u8(FIRE);
                w.i64(*now);
            }
            Command::Retire { seqs } => {
                w.u8(RETIRE);
                w.u64(seqs.len() as u64);
                for s in seqs {
                    w.u64(*s);
                }
            }
            Command::Configure { now, config } => {
                w.u8(CONFIGURE);
                w.i64(*now);
                w.bytes(config);
            }
            Command::Consumers { epoch, entries } => {
                w.u8(CONSUMERS);
                w.u64(*epoch);
                w.u64(entries.len() as u64);
                for (name, state) in entries {
                    w.bytes(name.as_bytes());
                    w.bytes(state);
                }
            }
        }
        w.0
    }

    /// Reads a command (borrowing from `bytes`).
    pub fn decode(bytes: &[u8]) -> Result<Command<'_>, String> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(format!("stream command version {version} is unknown"));
        }
        let cmd = match r.u8()? {
            PUBLISH => Command::Publish {
                now: r.i64()?,
                subject: r.str()?,
                headers: r.bytes()?,
                payload: r.bytes()?,
            },
            PUBLISHES => {
                let now = r.i64()?;
                let n = r.u64()?;
                // Every publish takes at least 12 bytes.
                if n > (r.0.len() / 12) as u64 {
                    return Err("stream command cut short".into());
                }
                let mut msgs = Vec::new();
                for _ in 0..n {
                    msgs.push((r.str()?, r.bytes()?, r.bytes()?));
                }
                Command::Publishes { now, msgs }
            }
            DELETE => Command::Delete { seq: r.u64()? },
            PURGE => {
                let filter = match r.u8()? {
                    0 => None,
                    1 => Some(r.str()?),
                    k => return Err(format!("stream command: bad option tag {k}")),
                };
                Command::Purge {
                    filter,
                    seq: r.opt_u64()?,
                    keep: r.opt_u64()?,
                }
            }
            EXPIRE => Command::Expire { now: r.i64()? },
            FIRE => Command::FireSchedules { now: r.i64()? },
            RETIRE => {
                let n = r.u64()?;
                // Every sequence takes 8 bytes: a count beyond what is left is a lie.
                if n > (r.0.len() / 8) as u64 {
                    return Err("stream command cut short".into());
                }
                let seqs = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
                Command::Retire { seqs }
            }
            CONFIGURE => Command::Configure {
                now: r.i64()?,
                config: r.bytes()?,
            },
            CONSUMERS => {
                let epoch = r.u64()?;
                let n = r.u64()?;
                // Every entry takes at least 8 bytes.
                if n > (r.0.len() / 8) as u64 {
                    return Err("stream command cut short".into());
                }
                let mut entries = Vec::new();
                for _ in 0..n {
                    entries.push((r.str()?, r.bytes()?));
                }
                Command::Consumers { epoch, entries }
            }
            k => return Err(format!("stream command kind {k} is unknown")),
        };
        r.end()?;
        Ok(cmd)
    }
}

const STORED: u8 = 1;
const REMOVED: u8 = 2;
const DONE: u8 = 3;
const REFUSED: u8 = 4;
const MANY: u8 = 5;

impl Outcome {
    /// The outcome's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(16));
        match self {
            Outcome::Stored(ack) => {
                w.u8(STORED);
                w.u64(ack.seq);
                w.u8(u8::from(ack.duplicate));
            }
            Outcome::Removed(n) => {
                w.u8(REMOVED);
                w.u64(*n);
            }
            Outcome::Done => w.u8(DONE),
            Outcome::Refused(e) => {
                w.u8(REFUSED);
                w.u64(u64::from(e.code));
                w.u64(u64::from(e.err_code));
                w.bytes(e.description.as_bytes());
            }
            Outcome::Many(all) => {
                w.u8(MANY);
                w.u64(all.len() as u64);
                for o in all {
                    w.bytes(&o.encode());
                }
            }
        }
        w.0
    }

    /// Reads an outcome.
    pub fn decode(bytes: &[u8]) -> Result<Outcome, String> {
        let mut r = Reader(bytes);
        let out = match r.u8()? {
            STORED => Outcome::Stored(PubAck {
                seq: r.u64()?,
                duplicate: r.u8()? != 0,
            }),
            REMOVED => Outcome::Removed(r.u64()?),
            DONE => Outcome::Done,
            MANY => {
                let n = r.u64()?;
                if n > (r.0.len() / 4) as u64 {
                    return Err("stream outcome cut short".into());
                }
                let mut all = Vec::new();
                for _ in 0..n {
                    let one = Outcome::decode(r.bytes()?)?;
                    if matches!(one, Outcome::Many(_)) {
                        return Err("stream outcome nested".into());
                    }
                    all.push(one);
                }
                Outcome::Many(all)
            }
            REFUSED => Outcome::Refused(ApiError::new(
                u16::try_from(r.u64()?).map_err(|_| "bad code")?,
                u32::try_from(r.u64()?).map_err(|_| "bad code")?,
                r.str()?,
            )),
            k => return Err(format!("stream outcome kind {k} is unknown")),
        };
        r.end()?;
        Ok(out)
    }
}

impl Stream {
    /// Applies one command of the stream's log. `Err` only for a storage failure (the
    /// replica must stop: going on would let replicas differ); a refusal by the stream's
    /// rules is an [`Outcome::Refused`], the same on every replica.
    pub fn apply(&mut self, cmd: &Command<'_>) -> std::io::Result<Outcome> {
        let outcome = match cmd {
            Command::Publish {
                now,
                subject,
                headers,
                payload,
            } => self
                .publish(
                    Publish {
                        subject,
                        headers,
                        payload,
                    },
                    *now,
                )
                .map(Outcome::Stored),
            Command::Publishes { now, msgs } => {
                let mut all = Vec::with_capacity(msgs.len());
                for (subject, headers, payload) in msgs {
                    let one = self.apply(&Command::Publish {
                        now: *now,
                        subject,
                        headers,
                        payload,
                    })?;
                    all.push(one);
                }
                return Ok(Outcome::Many(all));
            }
            Command::Delete { seq } => self.delete(*seq).map(|()| Outcome::Done),
            Command::Purge { filter, seq, keep } => {
                self.purge(*filter, *seq, *keep).map(Outcome::Removed)
            }
            Command::Expire { now } => self.expire(*now).map(Outcome::Removed),
            Command::FireSchedules { now } => self.fire_schedules(*now).map(Outcome::Removed),
            Command::Retire { seqs } => self.retire(seqs).map(Outcome::Removed),
            Command::Consumers { .. } => Ok(Outcome::Done),
            Command::Configure { now, config } => match serde_json::from_slice(config) {
                Ok(config) => self.update(config, *now).map(|()| Outcome::Done),
                Err(e) => Err(ApiError::new(400, 10025, format!("invalid JSON: {e}"))),
            },
        };
        match outcome {
            Ok(o) => Ok(o),
            Err(e) if e.is_storage() => Err(std::io::Error::other(e.description)),
            Err(e) => Ok(Outcome::Refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Command<'static>> {
        vec![
            Command::Publish {
                now: -5,
                subject: "a.b",
                headers: b"NATS/1.0\r\n\r\n",
                payload: b"x",
            },
            Command::Publish {
                now: 0,
                subject: "",
                headers: b"",
                payload: b"",
            },
            Command::Delete { seq: 9 },
            Command::Publishes {
                now: 3,
                msgs: vec![("a", b"", b"1"), ("b.c", b"NATS/1.0\r\n\r\n", b"")],
            },
            Command::Publishes {
                now: 3,
                msgs: vec![],
            },
            Command::Purge {
                filter: Some("a.>"),
                seq: None,
                keep: Some(3),
            },
            Command::Purge {
                filter: None,
                seq: Some(4),
                keep: None,
            },
            Command::Expire { now: 1 },
            Command::FireSchedules { now: i64::MAX },
            Command::Retire { seqs: vec![1, 5] },
            Command::Configure {
                now: 7,
                config: b"{}",
            },
            Command::Consumers {
                epoch: 4,
                entries: vec![("c1", b"{}"), ("gone", b"")],
            },
            Command::Consumers {
                epoch: 0,
                entries: vec![],
            },
        ]
    }

    #[test]
    fn commands_and_outcomes_read_back_as_written() {
        for c in samples() {
            assert_eq!(Command::decode(&c.encode()), Ok(c.clone()));
        }
        for o in [
            Outcome::Stored(PubAck {
                seq: 3,
                duplicate: true,
            }),
            Outcome::Removed(0),
            Outcome::Done,
            Outcome::Refused(ApiError::new(400, 10071, "wrong last sequence: 2")),
            Outcome::Many(vec![Outcome::Done, Outcome::Removed(2)]),
            Outcome::Many(vec![]),
        ] {
            assert_eq!(Outcome::decode(&o.encode()), Ok(o.clone()));
        }
    }

    #[test]
    fn broken_commands_are_refused_without_panic() {
        for c in samples() {
            let bytes = c.encode();
            for cut in 0..bytes.len() {
                assert!(
                    Command::decode(&bytes[..cut]).is_err(),
                    "{c:?} cut at {cut}"
                );
                let mut d = bytes.clone();
                d[cut] = d[cut].wrapping_add(1);
                let _ = Command::decode(&d);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Command::decode(&longer).is_err());
        }
        // A count of sequences larger than the bytes that follow.
        let mut lie = vec![VERSION, RETIRE];
        lie.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Command::decode(&lie).is_err());
    }

    /// Two replicas applying the same log end with the same stream, whatever their clocks.
    #[test]
    fn replicas_applying_one_log_agree() {
        let dir = tempfile::tempdir().expect("tmp");
        let config: super::super::Config = serde_json::from_str(
            r#"{"name":"S","subjects":["s.>"],"max_msgs_per_subject":2,"duplicate_window":1000000000}"#,
        )
        .expect("config");
        let mut log = Vec::new();
        for i in 0..20i64 {
            let headers = format!("NATS/1.0\r\nNats-Msg-Id: {}\r\n\r\n", i % 7);
            log.push((i * 100_000_000, format!("s.{}", i % 3), headers));
        }
        let open = |name: &str| {
            let d = dir.path().join(name);
            Stream::open(&d, config.clone(), 0, 0).expect("open")
        };
        let (mut a, mut b) = (open("a"), open("b"));
        let mut outcomes = (Vec::new(), Vec::new());
        for (now, subject, headers) in &log {
            let cmd = Command::Publish {
                now: *now,
                subject,
                headers: headers.as_bytes(),
                payload: b"p",
            }
            .encode();
            let cmd = Command::decode(&cmd).expect("decode");
            outcomes.0.push(a.apply(&cmd).expect("apply"));
            outcomes.1.push(b.apply(&cmd).expect("apply"));
        }
        let refused = Command::Delete { seq: 10_000 };
        assert!(matches!(a.apply(&refused), Ok(Outcome::Refused(_))));
        assert_eq!(outcomes.0, outcomes.1);
        assert!(outcomes.0.iter().any(|o| matches!(
            o,
            Outcome::Stored(PubAck {
                duplicate: true,
                ..
            })
        )));
        assert_eq!(a.store().state(), b.store().state());
        assert_eq!(a.store().state().messages, 6, "two per subject");
    }
}
