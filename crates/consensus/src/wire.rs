//! What crosses the peer wire besides protobuf: openraft's messages serialized into
//! [`Blob`]s, and the typed refusal a member sends when it does not lead (a metadata mark,
//! so no caller matches on message text).

use berth_proto::berth::raft::Blob;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

pub(crate) fn to_blob<T: Serialize>(v: &T) -> Result<Blob, Status> {
    rmp_serde::to_vec(v)
        .map(|data| Blob { data })
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

pub(crate) fn from_blob<T: DeserializeOwned>(b: &Blob) -> Result<T, Status> {
    rmp_serde::from_slice(&b.data).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

/// Status a follower gets when this member cannot lead its request either (not proposed).
pub(crate) const NOT_LEADER: &str = "berth: not the leader";

/// Metadata key marking a refusal because the member does not lead (nothing was proposed);
/// its sender retries elsewhere. A machine-readable mark, not the message text.
const REFUSAL_KEY: &str = "berth-refusal";

/// The refusal of a request this member cannot run because it does not lead.
pub(crate) fn not_leader() -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        REFUSAL_KEY,
        tonic::metadata::AsciiMetadataValue::from_static("not-leader"),
    );
    Status::with_metadata(tonic::Code::Unavailable, NOT_LEADER, md)
}

/// Whether `status` is a member's refusal because it does not lead (nothing was proposed).
pub(crate) fn is_not_leader(status: &Status) -> bool {
    status
        .metadata()
        .get(REFUSAL_KEY)
        .is_some_and(|v| v.as_bytes() == b"not-leader")
}
