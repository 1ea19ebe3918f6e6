//! Which cluster and member a peer message is for. Every peer RPC carries the sender's cluster
//! ID and the ID of the member it is meant for (gRPC metadata, stamped by [`PeerStamp`] on
//! every client), and every member refuses a message from another cluster or for another
//! member ([`admit`]), as etcd refuses "cluster ID mismatch". Without this, a fresh cluster
//! started on a stopped member's peer address is pulled into the old cluster, and a member
//! started on another cluster's data directory mixes the two clusters' logs. Each message also
//! names its Raft group, which routes it to that group's replica on the member.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::group::GroupId;

/// Metadata key of the sender's cluster ID (hex).
pub const CLUSTER_ID_KEY: &str = "berth-cluster-id";
/// Metadata key of the member the message is for (hex).
pub const TO_MEMBER_KEY: &str = "berth-to-member";
/// Metadata key of the sending member (hex), for the receiver's logs.
pub const FROM_MEMBER_KEY: &str = "berth-from-member";
/// Metadata key of the Raft group the message is for (its [`GroupId`] name).
pub const GROUP_KEY: &str = "berth-group";

/// Start of every refusal's message, which the sender recognises.
pub const MISMATCH: &str = "berth: cluster ID mismatch";
/// Start of the refusal of a message meant for another member of the same cluster.
pub const WRONG_MEMBER: &str = "berth: member ID mismatch";

/// Stamps a client's requests with this member's cluster and member IDs and the target's.
#[derive(Clone, Debug)]
pub struct PeerStamp {
    cluster: Option<AsciiMetadataValue>,
    from: Option<AsciiMetadataValue>,
    to: Option<AsciiMetadataValue>,
    group: Option<AsciiMetadataValue>,
}

fn hex(id: u64) -> Option<AsciiMetadataValue> {
    AsciiMetadataValue::try_from(format!("{id:x}")).ok()
}

impl PeerStamp {
    /// Requests from member `from` of cluster `cluster` to member `to`, for Raft group
    /// `group`.
    pub fn new(cluster: u64, from: u64, to: u64, group: &GroupId) -> PeerStamp {
        PeerStamp {
            cluster: hex(cluster),
            from: hex(from),
            to: hex(to),
            group: AsciiMetadataValue::try_from(group.as_str()).ok(),
        }
    }

    /// Requests that name no cluster: only [`ClusterInfo`] (asked by a member that has not
    /// joined yet) is answered without one.
    ///
    /// [`ClusterInfo`]: berth_proto::berth::raft::raft_peer_server::RaftPeer::cluster_info
    pub fn anonymous() -> PeerStamp {
        PeerStamp {
            cluster: None,
            from: None,
            to: None,
            group: None,
        }
    }
}

impl Interceptor for PeerStamp {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let md = req.metadata_mut();
        for (key, value) in [
            (CLUSTER_ID_KEY, &self.cluster),
            (FROM_MEMBER_KEY, &self.from),
            (TO_MEMBER_KEY, &self.to),
            (GROUP_KEY, &self.group),
        ] {
            if let Some(v) = value {
                md.insert(key, v.clone());
            }
        }
        Ok(req)
    }
}

fn read_id(md: &MetadataMap, key: &str) -> Option<u64> {
    let text = md.get(key)?.to_str().ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// The member that sent a peer message (as it stamped itself; [`admit`] checks the rest).
pub fn sender_of(md: &MetadataMap) -> Option<u64> {
    read_id(md, FROM_MEMBER_KEY)
}

/// True at most once per `every` for each `last` (a clock of its own): refusals repeat with
/// every heartbeat, and one log line per period is enough to tell an operator.
pub(crate) fn log_now(last: &AtomicU64, every: Duration) -> bool {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let now = BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let prev = last.load(Ordering::Relaxed);
    (prev == 0 || now.saturating_sub(prev) >= every.as_millis() as u64)
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// The Raft group a peer message names; a message naming none is refused.
pub fn group_of(md: &MetadataMap) -> Result<GroupId, Status> {
    md.get(GROUP_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(GroupId::new)
        .ok_or_else(|| Status::invalid_argument("berth: the peer message names no Raft group"))
}

/// Checks that a peer message is for this member of this cluster.
pub fn admit(md: &MetadataMap, cluster: u64, me: u64) -> Result<(), Status> {
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let theirs = read_id(md, CLUSTER_ID_KEY);
    let to = read_id(md, TO_MEMBER_KEY);
    let refusal = if theirs != Some(cluster) {
        let theirs = theirs.map_or_else(|| "none".to_string(), |c| format!("{c:x}"));
        format!(
            "{MISMATCH}: member {me:x} belongs to cluster {cluster:x}, the message is for cluster {theirs}"
        )
    } else if to != Some(me) {
        let to = to.map_or_else(|| "none".to_string(), |t| format!("{t:x}"));
        format!("{WRONG_MEMBER}: this is member {me:x} of cluster {cluster:x}, the message is for member {to}")
    } else {
        return Ok(());
    };
    if log_now(&LOGGED, Duration::from_secs(10)) {
        let from = read_id(md, FROM_MEMBER_KEY).map(|f| format!("{f:x}"));
        tracing::error!(from = ?from, "refused a peer message: {refusal}");
    }
    Err(Status::failed_precondition(refusal))
}

/// Whether `status` is a peer's refusal of a message from another cluster or for another
/// member: retrying soon will not help.
pub fn is_refusal(status: &Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && (status.message().starts_with(MISMATCH) || status.message().starts_with(WRONG_MEMBER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(stamp: &mut PeerStamp) -> MetadataMap {
        stamp
            .call(Request::new(()))
            .expect("stamp")
            .metadata()
            .clone()
    }

    #[test]
    fn a_member_admits_only_its_cluster_and_itself() {
        let ok = stamped(&mut PeerStamp::new(0xc1, 0xa, 0xb, &GroupId::meta()));
        assert!(admit(&ok, 0xc1, 0xb).is_ok());
        assert_eq!(group_of(&ok).expect("group"), GroupId::meta());
        let other_cluster = admit(&ok, 0xc2, 0xb).expect_err("another cluster");
        assert!(is_refusal(&other_cluster));
        assert!(
            other_cluster.message().contains("cluster c2"),
            "{other_cluster}"
        );
        let other_member = admit(&ok, 0xc1, 0xd).expect_err("another member");
        assert!(is_refusal(&other_member));
        assert!(other_member.message().starts_with(WRONG_MEMBER));
        let anonymous = stamped(&mut PeerStamp::anonymous());
        assert!(
            admit(&anonymous, 0xc1, 0xb).is_err(),
            "no cluster ID, no entry"
        );
        assert!(admit(&MetadataMap::new(), 0xc1, 0xb).is_err());
        assert!(group_of(&anonymous).is_err(), "no group, no entry");
    }

    #[test]
    fn refusals_are_logged_once_per_period() {
        let last = AtomicU64::new(0);
        assert!(log_now(&last, Duration::from_secs(60)));
        assert!(!log_now(&last, Duration::from_secs(60)));
        assert!(log_now(&last, Duration::ZERO));
    }
}
