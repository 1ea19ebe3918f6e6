//! The kept fuzz corpora of this crate's byte formats (`fuzz/corpus/{wal_segment,
//! peer_messages}`), replayed on every test run without cargo-fuzz, and the seeds they started
//! from (`cargo test -p berth-consensus -- --ignored write_fuzz_seeds` writes them again).
//! Entries carry opaque command bytes here; the store's commands (`log_entry`) are the store
//! crate's to fuzz.

use std::path::PathBuf;

use berth_proto::berth::raft::ForwardRequest;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::EntryPayload;
use prost::Message;

use crate::peer::decode_peer_messages;
use crate::types::{Entry, LogId, RaftRequest, TypeConfig, Vote};
use crate::wal::{fuzz_check, Wal};
use crate::wire::to_blob;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Every input kept for `target`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
    inputs
}

#[test]
fn the_wal_segment_corpus_holds_its_promises() {
    for input in corpus("wal_segment") {
        fuzz_check(&input);
    }
}

#[test]
fn the_peer_message_corpus_decodes_without_panic() {
    let decoded: usize = corpus("peer_messages")
        .iter()
        .map(|input| decode_peer_messages(input))
        .sum();
    assert!(decoded > 0, "the seeds are real messages");
}

fn log_id(index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(3, 1, index)
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    // Entries of the meta group as it encodes them (a Put of "key" and a lease grant), kept
    // as bytes: consensus never decodes them.
    let put = b"\x0a\x0e\x0a\x03key\x12\x05value\x18\x01".to_vec();
    let commands = [
        put.clone(),
        b"\x2a\x04\x08\x0a\x10\x07".to_vec(),
        b"opaque command".to_vec(),
        Vec::new(),
    ];
    let mut out = Vec::new();
    // A segment as the log writes it: records, then the never-written zeros.
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open_sized(dir.path(), 1 << 20).expect("open");
    wal.append(
        (1..6)
            .map(|i| (i, commands[(i % 4) as usize].clone()))
            .collect(),
    )
    .expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let seg = std::fs::read(dir.path().join(format!("{:020}.wal", 1))).expect("segment");
    let written = seg.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let clean = seg[..written + 64].to_vec();
    out.push(("wal_segment", "seed-clean".into(), clean.clone()));
    let mut torn = clean.clone();
    torn.truncate(written - 5);
    torn.extend_from_slice(&[0; 32]);
    out.push(("wal_segment", "seed-torn".into(), torn));
    let mut damaged = clean;
    damaged[40] ^= 0xff;
    out.push(("wal_segment", "seed-damaged".into(), damaged));
    // Peer messages.
    let entries: Vec<Entry> = (1..3)
        .map(|i| Entry {
            log_id: log_id(i),
            payload: EntryPayload::Normal(RaftRequest(put.clone())),
        })
        .collect();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(0)),
        entries,
        leader_commit: Some(log_id(1)),
    };
    let vote = VoteRequest::<TypeConfig>::new(Vote::new(4, 2), Some(log_id(2)));
    for (name, blob) in [
        ("append", to_blob(&append).expect("encode")),
        ("vote", to_blob(&vote).expect("encode")),
    ] {
        out.push(("peer_messages", format!("seed-{name}"), blob.data));
    }
    let forward = ForwardRequest {
        id: 5,
        command: put,
    };
    out.push((
        "peer_messages",
        "seed-forward".into(),
        forward.encode_to_vec(),
    ));
    out
}

/// Writes the seeds of this crate's fuzz targets into `fuzz/corpus/` (by hand, when the
/// formats change).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}
