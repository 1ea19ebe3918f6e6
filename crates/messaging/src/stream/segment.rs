//! The records of a stream's segment files and how a file of them is checked.
//!
//! Each record is `length u32 | crc32c u32 | body` (little endian; the CRC covers the body),
//! and the body starts with its kind:
//! - a message: `1 | seq u64 | time i64 (UNIX ns) | subject length u16 | subject | headers
//!   length u32 | headers | payload`;
//! - removed messages: `2 | seq u64 …` (a message deleted, or purged from the middle);
//! - the stream's bounds: `3 | first u64 | last u64` (everything below `first` is gone, and
//!   sequences up to `last` were used: a purge, the oldest messages dropped by a limit, and
//!   the start of every segment, so the bounds outlive the segments that held them);
//! - a metadata value: `4 | key length u8 | key | value` (a replicated stream's applied log
//!   position and configuration, written at the end of each applied batch; the latest value
//!   of each key wins).

/// Bytes before a record's body.
pub const HEADER: usize = 8;
/// Largest body accepted when reading (a damaged length must not allocate gigabytes).
pub const MAX_BODY: usize = 64 << 20;

const MSG: u8 = 1;
const REMOVED: u8 = 2;
const BOUNDS: u8 = 3;
const META: u8 = 4;

/// One record, borrowed from the bytes it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A stored message.
    Msg {
        /// Its sequence.
        seq: u64,
        /// When it was stored (UNIX nanoseconds).
        time: i64,
        /// Its subject.
        subject: &'a str,
        /// Its NATS headers block (empty: none).
        headers: &'a [u8],
        /// Its payload.
        payload: &'a [u8],
    },
    /// Messages removed.
    Removed(Vec<u64>),
    /// The stream's bounds.
    Bounds {
        /// Messages below it are gone.
        first: u64,
        /// The last sequence used.
        last: u64,
    },
    /// A metadata value.
    Meta {
        /// Its key (at most 255 bytes).
        key: &'a str,
        /// Its value.
        value: &'a [u8],
    },
}

/// Appends `rec` as a framed record to `out`.
pub fn encode(rec: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match rec {
        Record::Msg {
            seq,
            time,
            subject,
            headers,
            payload,
        } => {
            out.push(MSG);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&time.to_le_bytes());
            // Subjects are checked (and short) before they get here.
            out.extend_from_slice(&(subject.len().min(u16::MAX as usize) as u16).to_le_bytes());
            out.extend_from_slice(&subject.as_bytes()[..subject.len().min(u16::MAX as usize)]);
            out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
            out.extend_from_slice(headers);
            out.extend_from_slice(payload);
        }
        Record::Removed(seqs) => {
            out.push(REMOVED);
            for s in seqs {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        Record::Bounds { first, last } => {
            out.push(BOUNDS);
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&last.to_le_bytes());
        }
        Record::Meta { key, value } => {
            out.push(META);
            // Keys are the store's own constants, far below the limit.
            let key = &key.as_bytes()[..key.len().min(u8::MAX as usize)];
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            out.extend_from_slice(value);
        }
    }
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a record's body (after its CRC was checked).
pub fn decode(body: &[u8]) -> Result<Record<'_>, String> {
    let bad = |what: &str| format!("malformed {what} record");
    match body.first() {
        Some(&MSG) => {
            let seq = u64_at(body, 1).ok_or_else(|| bad("message"))?;
            let time = u64_at(body, 9).ok_or_else(|| bad("message"))? as i64;
            let slen = u16::from_le_bytes(
                body.get(17..19)
                    .ok_or_else(|| bad("message"))?
                    .try_into()
                    .map_err(|_| bad("message"))?,
            ) as usize;
            let subject = body.get(19..19 + slen).ok_or_else(|| bad("message"))?;
            let subject = std::str::from_utf8(subject).map_err(|_| bad("message"))?;
            let at = 19 + slen;
            let hlen = u32::from_le_bytes(
                body.get(at..at + 4)
                    .ok_or_else(|| bad("message"))?
                    .try_into()
                    .map_err(|_| bad("message"))?,
            ) as usize;
            let headers = body
                .get(at + 4..at + 4 + hlen)
                .ok_or_else(|| bad("message"))?;
            let payload = &body[at + 4 + hlen..];
            Ok(Record::Msg {
                seq,
                time,
                subject,
                headers,
                payload,
            })
        }
        Some(&REMOVED) if (body.len() - 1).is_multiple_of(8) => Ok(Record::Removed(
            body[1..]
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes))
                .collect(),
        )),
        Some(&BOUNDS) if body.len() == 17 => Ok(Record::Bounds {
            first: u64_at(body, 1).ok_or_else(|| bad("bounds"))?,
            last: u64_at(body, 9).ok_or_else(|| bad("bounds"))?,
        }),
        Some(&META) => {
            let klen = *body.get(1).ok_or_else(|| bad("metadata"))? as usize;
            let key = body.get(2..2 + klen).ok_or_else(|| bad("metadata"))?;
            let key = std::str::from_utf8(key).map_err(|_| bad("metadata"))?;
            Ok(Record::Meta {
                key,
                value: &body[2 + klen..],
            })
        }
        Some(k) => Err(format!("unknown record kind {k}")),
        None => Err("empty record".into()),
    }
}

/// The intact record framed at `at`, if one is: (its body's range, the next record's offset).
fn frame_at(data: &[u8], at: usize) -> Option<(std::ops::Range<usize>, usize)> {
    let head = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len == 0 || len > MAX_BODY {
        return None;
    }
    let body = at + HEADER..at + HEADER + len;
    let bytes = data.get(body.clone())?;
    (crc32c::crc32c(bytes) == crc && decode(bytes).is_ok()).then_some((body.clone(), body.end))
}

/// What a segment's bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// Bodies of the intact records, in order.
    pub records: Vec<std::ops::Range<usize>>,
    /// Where the intact records end.
    pub end: usize,
    /// True when bytes follow them that are not an intact record but no intact record
    /// follows either: a write torn by a crash (never acknowledged, since acknowledging waits
    /// for the fsync), to cut. False when nothing follows.
    pub torn: bool,
}

/// Checks a segment: every record intact up to the end, or up to a torn tail. A bad record
/// with an intact one after it is damage (`Err` with its offset): cutting there could drop
/// acknowledged messages.
pub fn scan(data: &[u8]) -> Result<Scan, usize> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match frame_at(data, at) {
            Some((body, next)) => {
                records.push(body);
                at = next;
            }
            None => {
                if (at + 1..data.len()).any(|from| frame_at(data, from).is_some()) {
                    return Err(at);
                }
                return Ok(Scan {
                    records,
                    end: at,
                    torn: true,
                });
            }
        }
    }
    Ok(Scan {
        records,
        end: at,
        torn: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record<'static>> {
        vec![
            Record::Bounds { first: 1, last: 0 },
            Record::Msg {
                seq: 1,
                time: 1_700_000_000_000_000_000,
                subject: "orders.new",
                headers: b"NATS/1.0\r\nA: 1\r\n\r\n",
                payload: b"hello",
            },
            Record::Msg {
                seq: 2,
                time: -1,
                subject: "o",
                headers: b"",
                payload: b"",
            },
            Record::Removed(vec![1, 2]),
            Record::Meta {
                key: "applied",
                value: b"\x01\x02",
            },
            Record::Meta {
                key: "",
                value: b"",
            },
        ]
    }

    #[test]
    fn records_read_back_as_written() {
        let mut data = Vec::new();
        for r in sample() {
            encode(&r, &mut data);
        }
        let scan = scan(&data).expect("intact");
        assert!(!scan.torn && scan.end == data.len());
        let back: Vec<Record<'_>> = scan
            .records
            .iter()
            .map(|r| decode(&data[r.clone()]).expect("decode"))
            .collect();
        assert_eq!(back, sample());
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_before_intact_records_is_refused() {
        let mut data = Vec::new();
        for r in sample() {
            encode(&r, &mut data);
        }
        let whole = data.len();
        let mut last = Vec::new();
        encode(&Record::Removed(vec![7]), &mut last);
        // Half of the last record written: torn.
        let mut torn = data.clone();
        torn.extend_from_slice(&last[..last.len() / 2]);
        let s = scan(&torn).expect("torn tail");
        assert!(s.torn && s.end == whole && s.records.len() == 6);
        // A flipped byte in the last record: torn as well (nothing intact after it).
        let mut flipped = data.clone();
        flipped.extend_from_slice(&last);
        let n = flipped.len();
        flipped[n - 1] ^= 0xff;
        assert!(scan(&flipped).expect("torn").torn);
        // A flipped byte in the second record, with intact ones after it: damage.
        let mut damaged = data.clone();
        damaged[30] ^= 0xff;
        let at = scan(&damaged).expect_err("damage");
        assert!(at > 0 && at < whole, "{at}");
        // Zeros after the records (a file extended but not written): torn, cut.
        let mut zeros = data;
        zeros.extend_from_slice(&[0; 100]);
        assert!(scan(&zeros).expect("zeros").torn);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut data = Vec::new();
        for r in sample() {
            encode(&r, &mut data);
        }
        for cut in 0..data.len() {
            let _ = scan(&data[..cut]);
            let mut d = data.clone();
            d[cut] = d[cut].wrapping_add(1);
            let _ = scan(&d);
        }
        for body in [
            &[1u8][..],
            &[2, 1],
            &[3, 0],
            &[4],
            &[4, 3, b'a'],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255],
        ] {
            assert!(decode(body).is_err(), "{body:?}");
        }
    }
}
