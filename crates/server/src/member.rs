//! Member identity: this member's ID and its cluster's ID, derived from peer URLs and the
//! cluster token like etcd's, and kept in the data directory so they survive restarts.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Who this member is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member ID.
    pub id: u64,
    /// Cluster ID.
    pub cluster_id: u64,
    /// Member name.
    pub name: String,
    /// Advertised peer URLs.
    pub peer_urls: Vec<String>,
    /// Advertised client URLs.
    pub client_urls: Vec<String>,
    /// True once the member knows its cluster (bootstrapped it, or learned its ID on joining).
    #[serde(default)]
    pub joined: bool,
}

/// FNV-1a, 64 bit: a stable hash for deriving IDs (std's hasher may change between releases).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The ID a member with these peer URLs has in a cluster with this token (the same on every
/// member, so all agree on the initial membership).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.push(token);
    fnv1a(&urls).max(1)
}

impl MemberInfo {
    /// Loads the identity stored in `data_dir`, or derives and stores it on first start.
    /// Client URLs and the name are refreshed from the configuration on every start.
    pub fn load_or_create(cfg: &Config) -> anyhow::Result<MemberInfo> {
        let path = cfg.data_dir.join("member.toml");
        let mut info = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<MemberInfo>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        } else {
            let id = member_id(&cfg.advertise_peer_urls, &cfg.initial_cluster_token);
            let mut ids: Vec<u64> = cfg
                .initial_cluster
                .iter()
                .map(|(_, urls)| member_id(urls, &cfg.initial_cluster_token))
                .collect();
            ids.sort_unstable();
            let id_strs: Vec<String> = ids.iter().map(u64::to_string).collect();
            let refs: Vec<&str> = id_strs.iter().map(String::as_str).collect();
            MemberInfo {
                id,
                cluster_id: fnv1a(&refs).max(1),
                name: cfg.name.clone(),
                peer_urls: cfg.advertise_peer_urls.clone(),
                client_urls: cfg.advertise_client_urls.clone(),
                joined: cfg.initial_cluster_state == crate::config::ClusterState::New,
            }
        };
        info.name = cfg.name.clone();
        info.client_urls = cfg.advertise_client_urls.clone();
        write_atomic(&path, &toml::to_string(&info)?)?;
        Ok(info)
    }
}

impl MemberInfo {
    /// Records the ID of the cluster this member joined.
    pub fn adopt_cluster(&mut self, cfg: &Config, cluster_id: u64) -> anyhow::Result<()> {
        self.cluster_id = cluster_id;
        self.joined = true;
        write_atomic(&cfg.data_dir.join("member.toml"), &toml::to_string(&*self)?)
    }
}

/// Writes `text` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::durable_file::write(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::resolve(Default::default()).expect("defaults");
        cfg.data_dir = dir.path().to_path_buf();
        let a = MemberInfo::load_or_create(&cfg).expect("create");
        cfg.advertise_peer_urls = vec!["http://127.0.0.1:9999".into()];
        let b = MemberInfo::load_or_create(&cfg).expect("load");
        assert_eq!(a.id, b.id, "ID comes from disk once created");
        assert_ne!(a.id, 0);
        assert_ne!(a.cluster_id, 0);
        assert_eq!(member_id(&["x".into()], "t"), member_id(&["x".into()], "t"));
        assert_ne!(member_id(&["x".into()], "t"), member_id(&["x".into()], "u"));
    }
}
