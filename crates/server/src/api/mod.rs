//! The etcd v3 gRPC services: decode and validate requests, call the store or the write path,
//! and map results and errors to etcd's responses. One file per service.

pub mod auth;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use berth_proto::etcdserverpb::{AlarmMember, AlarmType, ResponseHeader};
use berth_store::Store;

use crate::config::Config;
use crate::member::MemberInfo;
use crate::metrics::Metrics;
use crate::proposer::Proposer;

/// What every service shares.
pub struct Node {
    /// The state machine.
    pub store: Arc<Store>,
    /// The write path.
    pub proposer: Proposer,
    /// This member.
    pub member: MemberInfo,
    /// Resolved configuration (limits).
    pub config: Config,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Active alarms.
    pub alarms: Mutex<Vec<AlarmMember>>,
    /// True while a NOSPACE alarm is active: writes are refused.
    pub no_space: AtomicBool,
}

impl Node {
    /// A response header for `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.id,
            revision,
            raft_term: self.proposer.status().term,
        })
    }

    /// Fills the member fields of a header the store produced (keeping its revision).
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let revision = h
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.store.revision());
        *h = self.header(revision);
    }

    /// True when a NOSPACE alarm blocks writes. Raises the alarm when the database has grown
    /// past `--quota-backend-bytes`, as etcd does.
    pub fn out_of_space(&self) -> bool {
        if self.no_space.load(Ordering::Acquire) {
            return true;
        }
        if self.store.db_size() > self.config.quota_backend_bytes {
            self.raise_alarm(AlarmType::Nospace);
            return true;
        }
        false
    }

    /// Activates an alarm for this member.
    pub fn raise_alarm(&self, alarm: AlarmType) {
        let member = AlarmMember {
            member_id: self.member.id,
            alarm: alarm as i32,
        };
        let mut alarms = self.alarms.lock().unwrap_or_else(|p| p.into_inner());
        if !alarms.contains(&member) {
            tracing::warn!(?alarm, "alarm raised");
            alarms.push(member);
        }
        if alarm == AlarmType::Nospace {
            self.no_space.store(true, Ordering::Release);
        }
    }
}
