//! The NATS client protocol's framing: control lines (`PUB`, `HPUB`, `SUB`, `UNSUB`,
//! `CONNECT`, `PING`, `PONG`, verbs in any case, fields separated by runs of spaces or tabs,
//! lines ended by CRLF or a bare LF) and the payloads that follow `PUB`/`HPUB`, which must end
//! in CRLF exactly. Parsing is incremental: an op is returned only once all of it arrived.

use bytes::{Buf, Bytes, BytesMut};

/// The longest control line accepted (nats-server's `MAX_CONTROL_LINE_SIZE`).
pub const MAX_CONTROL_LINE: usize = 4096;

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `CONNECT {json}`.
    Connect(Bytes),
    /// `PUB`/`HPUB`: `headers` is the header block (`NATS/1.0…\r\n\r\n`) when an HPUB carried one.
    Pub {
        /// Where it goes.
        subject: String,
        /// Where answers go.
        reply: Option<String>,
        /// The header block, headers included.
        headers: Option<Bytes>,
        /// The message.
        payload: Bytes,
    },
    /// `SUB subject [queue] sid`.
    Sub {
        /// The subject filter.
        subject: String,
        /// The queue group.
        queue: Option<String>,
        /// The client's ID for the subscription.
        sid: String,
    },
    /// `UNSUB sid [max]`.
    Unsub {
        /// The subscription.
        sid: String,
        /// Messages in all after which it ends (none: now).
        max: Option<u64>,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

/// Why the input cannot be parsed; each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An unknown verb, a malformed line or a payload not ended by CRLF.
    #[error("Unknown Protocol Operation")]
    Unknown,
    /// A control line longer than [`MAX_CONTROL_LINE`].
    #[error("maximum control line exceeded")]
    ControlLine,
    /// A message larger than the server's maximum payload.
    #[error("Maximum Payload Violation")]
    MaxPayload,
    /// A line nats-server drops the connection for without a word (`SUB` without a sid).
    #[error("malformed {0}")]
    Silent(&'static str),
}

impl ParseError {
    /// The `-ERR` text to send before closing, if any.
    pub fn err_text(&self) -> Option<String> {
        match self {
            ParseError::Silent(_) => None,
            other => Some(other.to_string()),
        }
    }
}

/// Parses the next complete op from the front of `buf`, consuming it; `None` when more bytes
/// are needed.
pub fn next_op(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Op>, ParseError> {
    let Some(lf) = buf
        .iter()
        .take(MAX_CONTROL_LINE + 2)
        .position(|b| *b == b'\n')
    else {
        // A full-length line's CR may have come without its LF yet.
        if buf.len() > MAX_CONTROL_LINE + 1 {
            return Err(ParseError::ControlLine);
        }
        return Ok(None);
    };
    let end = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    if end > MAX_CONTROL_LINE {
        return Err(ParseError::ControlLine);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Unknown)?;
    // A CR or LF inside the line separates fields too (as nats-server splits), so it can
    // never end up inside a subject that is forwarded to other clients.
    const SEPARATORS: [char; 4] = [' ', '\t', '\r', '\n'];
    let (verb, args) = match line.find(SEPARATORS) {
        Some(i) => (&line[..i], line[i..].trim_matches(SEPARATORS)),
        None => (line, ""),
    };
    let fields: Vec<&str> = args.split(SEPARATORS).filter(|f| !f.is_empty()).collect();
    let verb = verb.to_ascii_uppercase();
    let op = match verb.as_str() {
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "CONNECT" => Op::Connect(Bytes::copy_from_slice(args.as_bytes())),
        "SUB" => match fields.as_slice() {
            [subject, sid] => Op::Sub {
                subject: subject.to_string(),
                queue: None,
                sid: sid.to_string(),
            },
            [subject, queue, sid] => Op::Sub {
                subject: subject.to_string(),
                queue: Some(queue.to_string()),
                sid: sid.to_string(),
            },
            _ => return Err(ParseError::Silent("SUB")),
        },
        "UNSUB" => match fields.as_slice() {
            [sid] => Op::Unsub {
                sid: sid.to_string(),
                max: None,
            },
            [sid, max] => Op::Unsub {
                sid: sid.to_string(),
                max: Some(max.parse().map_err(|_| ParseError::Unknown)?),
            },
            _ => return Err(ParseError::Unknown),
        },
        "PUB" | "HPUB" => {
            let headed = verb == "HPUB";
            let sizes = if headed { 2 } else { 1 };
            if fields.len() < 1 + sizes || fields.len() > 2 + sizes {
                return Err(ParseError::Unknown);
            }
            let (names, sizes) = fields.split_at(fields.len() - sizes);
            // Digits only (Rust's parse would take a leading `+`, nats-server does not).
            let size = |s: &str| {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::Unknown);
                }
                s.parse::<usize>().map_err(|_| ParseError::Unknown)
            };
            let (header_len, total) = if headed {
                (size(sizes[0])?, size(sizes[1])?)
            } else {
                (0, size(sizes[0])?)
            };
            if header_len > total {
                return Err(ParseError::Unknown);
            }
            if total > max_payload {
                return Err(ParseError::MaxPayload);
            }
            // Wait for the payload and its CRLF.
            let body_at = lf + 1;
            if buf.len() < body_at + total + 2 {
                return Ok(None);
            }
            if &buf[body_at + total..body_at + total + 2] != b"\r\n" {
                return Err(ParseError::Unknown);
            }
            let subject = names[0].to_string();
            let reply = names.get(1).map(|r| r.to_string());
            buf.advance(body_at);
            let mut body = buf.split_to(total).freeze();
            buf.advance(2);
            // nats.js publishes `HPUB s r 0 n`: no header block at all.
            let headers = (header_len > 0).then(|| body.split_to(header_len));
            return Ok(Some(Op::Pub {
                subject,
                reply,
                headers,
                payload: body,
            }));
        }
        _ => return Err(ParseError::Unknown),
    };
    buf.advance(lf + 1);
    Ok(Some(op))
}

/// The fuzz target's body (`fuzz/fuzz_targets/nats_parse.rs`): feeds `input` (its first
/// byte chooses how the rest is cut into reads) to the parser as a connection would, with a
/// 1 KiB payload limit, and returns the ops it parsed and whether it ended in an error.
///
/// # Panics
/// If the parser ever holds more than one control line and one maximal message while waiting
/// (what a client can make a connection buffer), or if what it parses depends on how the
/// input was cut into reads.
pub fn fuzz_feed(input: &[u8]) -> (Vec<Op>, bool) {
    let (&cut, data) = input.split_first().unwrap_or((&0, &[]));
    let fed = feed(data, usize::from(cut).max(1));
    let whole = feed(data, data.len().max(1));
    assert_eq!(fed, whole, "the parse depends on how the input was cut");
    fed
}

fn feed(data: &[u8], chunk: usize) -> (Vec<Op>, bool) {
    const MAX_PAYLOAD: usize = 1024;
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match next_op(&mut buf, MAX_PAYLOAD) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(_) => return (ops, true),
            }
        }
        // What waits is at most a control line, its message and their line ends, plus the
        // read that brought it.
        assert!(
            buf.len() <= MAX_CONTROL_LINE + MAX_PAYLOAD + 4 + chunk,
            "held {} bytes",
            buf.len()
        );
    }
    (ops, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Op>, ParseError> {
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = next_op(&mut buf, 1024)? {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(ops)
    }

    #[test]
    fn ops_as_the_clients_send_them() {
        let ops = all(
            b"CONNECT {\"verbose\":false}\r\nPING\r\nsub foo.* q 1\r\nPUB foo  5\r\nhello\r\nUNSUB 1 \r\n\
              HPUB a r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nHPUB a r 0 2\r\nm0\r\npong\n",
        )
        .expect("parse");
        assert_eq!(
            ops,
            [
                Op::Connect(Bytes::from_static(b"{\"verbose\":false}")),
                Op::Ping,
                Op::Sub {
                    subject: "foo.*".into(),
                    queue: Some("q".into()),
                    sid: "1".into()
                },
                Op::Pub {
                    subject: "foo".into(),
                    reply: None,
                    headers: None,
                    payload: Bytes::from_static(b"hello")
                },
                Op::Unsub {
                    sid: "1".into(),
                    max: None
                },
                Op::Pub {
                    subject: "a".into(),
                    reply: Some("r".into()),
                    headers: Some(Bytes::from_static(b"NATS/1.0\r\n\r\n")),
                    payload: Bytes::from_static(b"hi")
                },
                Op::Pub {
                    subject: "a".into(),
                    reply: Some("r".into()),
                    headers: None,
                    payload: Bytes::from_static(b"m0")
                },
                Op::Pong,
            ]
        );
    }

    #[test]
    fn the_fuzz_corpus_parses_alike_however_it_is_cut() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/nats_parse");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("fuzz/corpus/nats_parse") {
            let input = std::fs::read(entry.expect("entry").path()).expect("seed");
            seeds += 1;
            for cut in [None, Some(1), Some(2), Some(7), Some(255)] {
                let mut input = input.clone();
                if let (Some(c), Some(first)) = (cut, input.first_mut()) {
                    *first = c;
                }
                fuzz_feed(&input);
            }
        }
        assert!(seeds >= 4, "{seeds} seeds");
    }

    #[test]
    fn partial_input_waits_and_bad_input_is_refused() {
        let mut buf = BytesMut::from(&b"PUB foo 5\r\nhel"[..]);
        assert_eq!(next_op(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(b"lo\r\n");
        assert!(matches!(next_op(&mut buf, 1024), Ok(Some(Op::Pub { .. }))));
        assert_eq!(all(b"PUB foo 5\r\nhelloX\r\n"), Err(ParseError::Unknown));
        assert_eq!(all(b"FOO bar\r\n"), Err(ParseError::Unknown));
        assert_eq!(all(b"PUB foo x\r\n"), Err(ParseError::Unknown));
        assert_eq!(all(b"PUB foo 2000\r\n"), Err(ParseError::MaxPayload));
        assert_eq!(all(b"HPUB foo 5 3\r\n"), Err(ParseError::Unknown));
        assert_eq!(all(b"SUB foo\r\n"), Err(ParseError::Silent("SUB")));
        // A CR inside the line is a separator: it never reaches a subject or reply.
        assert_eq!(
            all(b"PUB svc x\ry 5\r\nhello\r\n"),
            Err(ParseError::Unknown)
        );
        assert_eq!(all(b"PUB foo +5\r\nhello\r\n"), Err(ParseError::Unknown));
        // A full-length line whose LF has not arrived yet waits.
        let mut edge = BytesMut::from(&[b'x'; MAX_CONTROL_LINE + 1][..]);
        edge[MAX_CONTROL_LINE] = b'\r';
        assert_eq!(next_op(&mut edge, 1024), Ok(None));
        let long = vec![b'x'; MAX_CONTROL_LINE + 2];
        assert_eq!(all(&long), Err(ParseError::ControlLine));
        assert_eq!(
            ParseError::MaxPayload.err_text().as_deref(),
            Some("Maximum Payload Violation")
        );
        assert_eq!(ParseError::Silent("SUB").err_text(), None);
        // A payload of exactly the maximum is accepted.
        let mut exact = b"PUB m 1024\r\n".to_vec();
        exact.extend(vec![b'a'; 1024]);
        exact.extend(b"\r\n");
        assert_eq!(all(&exact).map(|o| o.len()), Ok(1));
    }
}
