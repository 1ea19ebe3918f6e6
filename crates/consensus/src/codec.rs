//! Conversions between the store's commands and results and their wire form in the log
//! (`berth.raft.Request` / `Response`), so every member decodes the same bytes the same way.

use berth_proto::berth::raft::{request, response, Error, ErrorCode, Request, Response};
use berth_store::{Applied, Command, StoreError};
use prost::Message;

/// Encodes a command for the log.
pub fn encode_command(cmd: &Command) -> Vec<u8> {
    let request = Some(match cmd.clone() {
        Command::Put(r) => request::Request::Put(r),
        Command::DeleteRange(r) => request::Request::DeleteRange(r),
        Command::Txn(r) => request::Request::Txn(r),
        Command::Compact(r) => request::Request::Compaction(r),
        Command::LeaseGrant(r) => request::Request::LeaseGrant(r),
        Command::LeaseRevoke(r) => request::Request::LeaseRevoke(r),
        Command::Alarm(r) => request::Request::Alarm(r),
    });
    Request { request }.encode_to_vec()
}

/// Decodes a command from the log.
pub fn decode_command(bytes: &[u8]) -> Result<Command, String> {
    let req = Request::decode(bytes).map_err(|e| format!("undecodable log entry: {e}"))?;
    Ok(match req.request {
        Some(request::Request::Put(r)) => Command::Put(r),
        Some(request::Request::DeleteRange(r)) => Command::DeleteRange(r),
        Some(request::Request::Txn(r)) => Command::Txn(r),
        Some(request::Request::Compaction(r)) => Command::Compact(r),
        Some(request::Request::LeaseGrant(r)) => Command::LeaseGrant(r),
        Some(request::Request::LeaseRevoke(r)) => Command::LeaseRevoke(r),
        Some(request::Request::Alarm(r)) => Command::Alarm(r),
        None => return Err("log entry without a command".into()),
    })
}

/// Decodes arbitrary bytes as a log command and as an apply result (the fuzz target
/// `log_entry` drives this): no panic, and a command that decodes encodes back to bytes that
/// decode to the same command, so every member reads an entry alike.
#[doc(hidden)]
pub fn fuzz_roundtrip(data: &[u8]) {
    if let Ok(cmd) = decode_command(data) {
        let again = decode_command(&encode_command(&cmd));
        assert!(
            again.as_ref() == Ok(&cmd),
            "{cmd:?} re-encoded as {again:?}"
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
        _ => ErrorCode::Unknown,
    }
}

/// Encodes the result of applying a command.
pub fn encode_result(r: &Result<Applied, StoreError>) -> Vec<u8> {
    let response = Some(match r.clone_result() {
        Ok(Applied::Put(x)) => response::Response::Put(x),
        Ok(Applied::DeleteRange(x)) => response::Response::DeleteRange(x),
        Ok(Applied::Txn(x)) => response::Response::Txn(x),
        Ok(Applied::Compact(x)) => response::Response::Compaction(x),
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
        Some(response::Response::Compaction(x)) => Ok(Applied::Compact(x)),
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
    use berth_proto::etcdserverpb::{PutRequest, PutResponse};

    #[test]
    fn commands_and_results_round_trip() {
        let cmd = Command::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        assert_eq!(decode_command(&encode_command(&cmd)).expect("decode"), cmd);
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
