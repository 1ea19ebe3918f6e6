//! The store's commands and results in their wire form in the Raft log (`berth.raft`'s
//! entries are opaque bytes; these are `berth.store.Request` / `Response`), so every member
//! decodes the same bytes the same way. Consensus never decodes them: it hands them to the
//! group's state machine, which calls these.

use berth_proto::berth::store::{response, Error, ErrorCode, Request, Response};
use prost::Message;

use crate::{Applied, Command, Entry, Guard, Keyspace, StoreError};

/// Encodes a command on user keys for the log (byte for byte what entries were before
/// keyspaces: the user keyspace is the field's default, so it is not written).
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    encode_command_in(Keyspace::User, cmd.clone())
}

/// Encodes a command on the keys of `ks` for the log (taking it: the write path owns its
/// command, and a put's value is not copied once more).
pub fn encode_command_in(ks: Keyspace, cmd: Command) -> Vec<u8> {
    encode_entry(Entry::new(ks, cmd))
}

/// Encodes a log entry: a command with its keyspace and guard.
pub fn encode_entry(e: Entry) -> Vec<u8> {
    Request {
        request: Some(e.command),
        keyspace: u32::from(e.keyspace.id()),
        guard: e.guard.map(|g| berth_proto::berth::store::Guard {
            keyspace: u32::from(g.keyspace.id()),
            key: g.key,
            mod_revision: g.mod_revision,
        }),
    }
    .encode_to_vec()
}

/// Decodes a command from the log, with the keyspace it applies in and its guard. A keyspace
/// this build does not know makes the entry undecodable (it is never applied in the wrong
/// keyspace, nor checked against the wrong key).
pub fn decode_command(bytes: &[u8]) -> Result<Entry, String> {
    let req = Request::decode(bytes).map_err(|e| format!("undecodable log entry: {e}"))?;
    let ks = Keyspace::from_id(req.keyspace)
        .ok_or_else(|| format!("log entry for unknown keyspace {}", req.keyspace))?;
    let guard = match req.guard {
        None => None,
        Some(g) => Some(Guard {
            keyspace: Keyspace::from_id(g.keyspace)
                .ok_or_else(|| format!("log entry guarded in unknown keyspace {}", g.keyspace))?,
            key: g.key,
            mod_revision: g.mod_revision,
        }),
    };
    let command = req.request.ok_or("log entry without a command")?;
    Ok(Entry {
        keyspace: ks,
        guard,
        command,
    })
}

/// Decodes arbitrary bytes as a log command and as an apply result (the fuzz target
/// `log_entry` drives this): no panic, and a command that decodes encodes back to bytes that
/// decode to the same command, so every member reads an entry alike.
#[doc(hidden)]
pub fn fuzz_roundtrip(data: &[u8]) {
    if let Ok(entry) = decode_command(data) {
        let again = decode_command(&encode_entry(entry.clone()));
        assert!(
            again.as_ref() == Ok(&entry),
            "{entry:?} re-encoded as {again:?}"
        );
    }
    let _ = decode_result(data);
}

fn code_of(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Compacted => ErrorCode::Compacted,
        StoreError::FutureRevision => ErrorCode::FutureRevision,
        StoreError::LeaseNotFound => ErrorCode::LeaseNotFound,
        StoreError::LeaseExists => ErrorCode::LeaseExists,
        StoreError::LeaseTtlTooLarge => ErrorCode::LeaseTtlTooLarge,
        StoreError::KeyNotFound => ErrorCode::KeyNotFound,
        StoreError::NoSpace => ErrorCode::NoSpace,
        StoreError::GuardStale => ErrorCode::GuardStale,
        _ => ErrorCode::Unknown,
    }
}

/// Encodes the result of applying a command.
pub fn encode_result(r: &Result<Applied, StoreError>) -> Vec<u8> {
    let response = Some(match r.clone_result() {
        Ok(Applied::Put(x)) => response::Response::Put(x),
        Ok(Applied::DeleteRange(x)) => response::Response::DeleteRange(x),
        Ok(Applied::Txn(x)) => response::Response::Txn(x),
        Ok(Applied::Compaction(x)) => response::Response::Compaction(x),
        Ok(Applied::LeaseGrant(x)) => response::Response::LeaseGrant(x),
        Ok(Applied::LeaseRevoke(x)) => response::Response::LeaseRevoke(x),
        Ok(Applied::Alarm(x)) => response::Response::Alarm(x),
        Err((code, message)) => response::Response::Error(Error {
            code: code as i32,
            message,
        }),
    });
    Response { response }.encode_to_vec()
}

/// Decodes the result of applying a command.
pub fn decode_result(bytes: &[u8]) -> Result<Result<Applied, StoreError>, String> {
    let resp = Response::decode(bytes).map_err(|e| format!("undecodable apply result: {e}"))?;
    Ok(match resp.response {
        Some(response::Response::Put(x)) => Ok(Applied::Put(x)),
        Some(response::Response::DeleteRange(x)) => Ok(Applied::DeleteRange(x)),
        Some(response::Response::Txn(x)) => Ok(Applied::Txn(x)),
        Some(response::Response::Compaction(x)) => Ok(Applied::Compaction(x)),
        Some(response::Response::LeaseGrant(x)) => Ok(Applied::LeaseGrant(x)),
        Some(response::Response::LeaseRevoke(x)) => Ok(Applied::LeaseRevoke(x)),
        Some(response::Response::Alarm(x)) => Ok(Applied::Alarm(x)),
        Some(response::Response::Error(e)) => Err(
            match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown) {
                ErrorCode::Compacted => StoreError::Compacted,
                ErrorCode::FutureRevision => StoreError::FutureRevision,
                ErrorCode::LeaseNotFound => StoreError::LeaseNotFound,
                ErrorCode::LeaseExists => StoreError::LeaseExists,
                ErrorCode::LeaseTtlTooLarge => StoreError::LeaseTtlTooLarge,
                ErrorCode::KeyNotFound => StoreError::KeyNotFound,
                ErrorCode::NoSpace => StoreError::NoSpace,
                ErrorCode::GuardStale => StoreError::GuardStale,
                ErrorCode::Unknown => StoreError::Corrupt(e.message),
            },
        ),
        None => return Err("empty apply result".into()),
    })
}

/// A result whose error side is reduced to what crosses the wire.
trait CloneResult {
    fn clone_result(&self) -> Result<Applied, (ErrorCode, String)>;
}

impl CloneResult for Result<Applied, StoreError> {
    fn clone_result(&self) -> Result<Applied, (ErrorCode, String)> {
        match self {
            Ok(a) => Ok(a.clone()),
            Err(e) => Err((code_of(e), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::etcdserverpb::alarm_request::AlarmAction;
    use berth_proto::etcdserverpb::request_op::Request as Op;
    use berth_proto::etcdserverpb::{
        AlarmRequest, LeaseGrantRequest, PutRequest, PutResponse, RequestOp, TxnRequest,
    };

    fn corpus_dir() -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/log_entry")
    }

    /// The kept corpus of the `log_entry` fuzz target, replayed on every test run.
    #[test]
    fn the_log_entry_corpus_round_trips() {
        let dir = corpus_dir();
        let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
            .collect();
        assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
        for input in inputs {
            fuzz_roundtrip(&input);
        }
    }

    /// Writes the `log_entry` fuzz target's seeds: one command of each shape, and a refusal
    /// (`cargo test -p berth-store -- --ignored write_log_entry_fuzz_seeds`).
    #[test]
    #[ignore]
    fn write_log_entry_fuzz_seeds() {
        let put = Command::Put(PutRequest {
            key: b"key".to_vec(),
            value: b"value".to_vec(),
            lease: -1,
            ..Default::default()
        });
        let txn = Command::Txn(TxnRequest {
            success: vec![RequestOp {
                request: Some(Op::RequestTxn(TxnRequest {
                    success: vec![RequestOp {
                        request: Some(Op::RequestPut(PutRequest {
                            key: b"deep".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        });
        let lease = Command::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 7 });
        let alarm = Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 9,
            alarm: 1,
        });
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).expect("corpus dir");
        let registry_put = Command::Put(PutRequest {
            key: b"svc/a".to_vec(),
            value: b"10.0.0.1".to_vec(),
            ..Default::default()
        });
        for (name, ks, cmd) in [
            ("put", Keyspace::User, put),
            ("txn", Keyspace::User, txn),
            ("lease", Keyspace::User, lease),
            ("alarm", Keyspace::User, alarm),
            ("registry-put", Keyspace::Registry, registry_put),
        ] {
            let entry = encode_command_in(ks, cmd);
            std::fs::write(dir.join(format!("seed-{name}")), entry).expect("seed");
        }
        let refusal = encode_result(&Err(StoreError::NoSpace));
        std::fs::write(dir.join("seed-error"), refusal).expect("seed");
    }

    #[test]
    fn commands_and_results_round_trip() {
        let cmd = Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        assert_eq!(
            decode_command(&encode_command(&cmd)).expect("decode"),
            Entry::new(Keyspace::User, cmd.clone())
        );
        let entry = encode_command_in(Keyspace::Gateway, cmd.clone());
        assert_eq!(
            decode_command(&entry).expect("decode"),
            Entry::new(Keyspace::Gateway, cmd.clone())
        );
        let guarded = Entry {
            guard: Some(Guard {
                keyspace: Keyspace::Auth,
                key: b"revision".to_vec(),
                mod_revision: 42,
            }),
            ..Entry::new(Keyspace::User, cmd.clone())
        };
        assert_eq!(
            decode_command(&encode_entry(guarded.clone())).expect("decode"),
            guarded
        );
        // A user entry is byte for byte an entry written before keyspaces existed.
        let old = Request {
            request: Some(cmd.clone()),
            keyspace: 0,
            guard: None,
        }
        .encode_to_vec();
        assert_eq!(encode_command(&cmd), old);
        let unknown = Request {
            request: Some(cmd.clone()),
            keyspace: 99,
            guard: None,
        }
        .encode_to_vec();
        assert!(
            decode_command(&unknown).is_err(),
            "an unknown keyspace is refused"
        );
        let unknown_guard = Request {
            request: Some(cmd),
            keyspace: 0,
            guard: Some(berth_proto::berth::store::Guard {
                keyspace: 99,
                ..Default::default()
            }),
        }
        .encode_to_vec();
        assert!(decode_command(&unknown_guard).is_err());
        let ok: Result<Applied, StoreError> = Ok(Applied::Put(PutResponse::default()));
        assert!(matches!(
            decode_result(&encode_result(&ok)),
            Ok(Ok(Applied::Put(_)))
        ));
        let err: Result<Applied, StoreError> = Err(StoreError::LeaseNotFound);
        assert!(matches!(
            decode_result(&encode_result(&err)),
            Ok(Err(StoreError::LeaseNotFound))
        ));
        assert!(decode_command(b"\xff\xff").is_err());
    }
}
