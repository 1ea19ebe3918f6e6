//! The auth state in etcd's backend buckets, translated to and from the records of berth's
//! `Auth` keyspace: what an etcd-format snapshot carries so that users, roles and the
//! enabled flag cross between berth and etcd.
//!
//! # etcd's buckets (as etcd 3.4 and 3.5 keep them)
//! - `auth`: `authEnabled` → one byte, `1` on and `0` off; `authRevision` → the auth revision,
//!   u64 big-endian (etcd writes 1 when it starts on a file without one).
//! - `authUsers`: user name → `authpb.User{name=1, password=2 (bcrypt hash), roles=3 (sorted),
//!   options=4 UserAddOptions{no_password=1}}`.
//! - `authRoles`: role name → `authpb.Role{name=1, keyPermission=2}`, each
//!   `Permission{permType=1 (READ, WRITE, READWRITE), key=2, range_end=3}`, sorted by key.
//!
//! # berth's records
//! The keys and JSON values `berth-auth` keeps (its `layout` and `model` modules own them; the
//! mirror types here read and write the same field names, and `berth-auth`'s tests check that
//! both agree). etcd can express only grants on the user keyspace: grants on berth's other
//! keyspaces are left out of etcd's buckets (a berth-to-berth restore keeps them through the
//! `berth` bucket). A user's credential epoch is berth's own: users read from etcd start at
//! epoch 0. etcd's auth revision is its own counter while berth's is the store revision of the
//! last auth change, so it is not carried from etcd (the restore's records set it), and berth's
//! is written as etcd's. A simple-token signing secret is made for auth that is on.

use std::collections::{BTreeMap, BTreeSet};

use berth_proto::authpb;
use prost::Message;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::keyspace::Keyspace;

/// etcd's bucket of auth flags.
pub const AUTH_BUCKET: &[u8] = b"auth";
/// etcd's bucket of users.
pub const USERS_BUCKET: &[u8] = b"authUsers";
/// etcd's bucket of roles.
pub const ROLES_BUCKET: &[u8] = b"authRoles";
const ETCD_ENABLED: &[u8] = b"authEnabled";
const ETCD_REVISION: &[u8] = b"authRevision";

// berth's record keys (`berth_auth::layout`).
const ENABLED: &[u8] = b"enabled";
const SECRET: &[u8] = b"secret";
pub(crate) const REVISION: &[u8] = b"revision";
const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";
const SECRET_LEN: usize = 32;

/// A bucket's entries, in ascending key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The three auth buckets of an etcd backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAuth {
    /// `auth`: `authEnabled`, `authRevision`.
    pub auth: Entries,
    /// `authUsers`: name → `authpb.User`.
    pub users: Entries,
    /// `authRoles`: name → `authpb.Role`.
    pub roles: Entries,
}

impl EtcdAuth {
    /// Each bucket's name with its entries.
    pub fn buckets(&self) -> [(&'static [u8], &Entries); 3] {
        [
            (AUTH_BUCKET, &self.auth),
            (USERS_BUCKET, &self.users),
            (ROLES_BUCKET, &self.roles),
        ]
    }
}

/// `berth_auth::Access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn from_etcd(n: i32) -> Option<Access> {
        match n {
            0 => Some(Access::Read),
            1 => Some(Access::Write),
            2 => Some(Access::ReadWrite),
            _ => None,
        }
    }

    fn to_etcd(self) -> i32 {
        match self {
            Access::Read => 0,
            Access::Write => 1,
            Access::ReadWrite => 2,
        }
    }
}

fn user_keyspace() -> u8 {
    Keyspace::User.id()
}

fn is_user_keyspace(id: &u8) -> bool {
    *id == Keyspace::User.id()
}

/// `berth_auth::Permission`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PermissionRecord {
    #[serde(default = "user_keyspace", skip_serializing_if = "is_user_keyspace")]
    keyspace: u8,
    access: Access,
    #[serde(with = "bytes_b64")]
    key: Vec<u8>,
    #[serde(with = "bytes_b64", default, skip_serializing_if = "Vec::is_empty")]
    range_end: Vec<u8>,
}

/// `berth_auth::Role`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleRecord {
    name: String,
    permissions: Vec<PermissionRecord>,
}

/// `berth_auth::User`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default)]
    roles: BTreeSet<String>,
    #[serde(default)]
    epoch: u64,
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corrupt(format!("etcd snapshot: {msg}"))
}

fn json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| corrupt(format!("{what}: cannot encode: {e}")))
}

fn text(what: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| corrupt(format!("{what} {bytes:02x?} is not UTF-8")))
}

/// etcd's buckets for berth's live `Auth` keyspace records (`records`: key → value) at auth
/// revision `revision` (0 when auth was never changed). A record that does not decode grants
/// nothing in berth, and is left out (with a warning).
pub fn to_etcd(records: &BTreeMap<Vec<u8>, Vec<u8>>, revision: i64) -> EtcdAuth {
    let enabled = records.get(ENABLED).is_some_and(|v| v == b"1");
    // etcd gives a file without an auth revision revision 1 when it starts: write at least
    // that, so an unchanged file stays as berth wrote it.
    let revision = u64::try_from(revision).unwrap_or(0).max(1);
    let auth = vec![
        (ETCD_ENABLED.to_vec(), vec![u8::from(enabled)]),
        (ETCD_REVISION.to_vec(), revision.to_be_bytes().to_vec()),
    ];
    let undecodable = |key: &[u8], e: serde_json::Error| {
        tracing::warn!(key = %String::from_utf8_lossy(key), error = %e,
            "undecodable auth record left out of the etcd snapshot");
    };
    let mut users = Vec::new();
    for (key, value) in records.range(USER_PREFIX.to_vec()..) {
        if !key.starts_with(USER_PREFIX) {
            break;
        }
        match serde_json::from_slice::<UserRecord>(value) {
            Ok(u) => {
                let pb = authpb::User {
                    name: u.name.clone().into_bytes(),
                    password: u.password.clone().unwrap_or_default().into_bytes(),
                    roles: u.roles.into_iter().collect(),
                    options: Some(authpb::UserAddOptions {
                        no_password: u.password.is_none(),
                    }),
                };
                users.push((u.name.into_bytes(), pb.encode_to_vec()));
            }
            Err(e) => undecodable(key, e),
        }
    }
    let mut roles = Vec::new();
    for (key, value) in records.range(ROLE_PREFIX.to_vec()..) {
        if !key.starts_with(ROLE_PREFIX) {
            break;
        }
        match serde_json::from_slice::<RoleRecord>(value) {
            Ok(r) => {
                let mut key_permission: Vec<authpb::Permission> = r
                    .permissions
                    .into_iter()
                    .filter(|p| is_user_keyspace(&p.keyspace))
                    .map(|p| authpb::Permission {
                        perm_type: p.access.to_etcd(),
                        key: p.key,
                        range_end: p.range_end,
                    })
                    .collect();
                key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                let pb = authpb::Role {
                    name: r.name.clone().into_bytes(),
                    key_permission,
                };
                roles.push((r.name.into_bytes(), pb.encode_to_vec()));
            }
            Err(e) => undecodable(key, e),
        }
    }
    // The record keys' order (prefix, then name) is the names' order, as etcd's buckets; a
    // record whose key and name disagree could break it.
    users.sort();
    users.dedup_by(|a, b| a.0 == b.0);
    roles.sort();
    roles.dedup_by(|a, b| a.0 == b.0);
    EtcdAuth { auth, users, roles }
}

/// berth's `Auth` keyspace records (key, value) for etcd's buckets: `enabled`, a fresh
/// `secret` while auth is on, every user and role, and `revision` (its value is empty: the
/// revision the records are written at is the auth revision). Nothing when etcd has no users,
/// no roles and auth off. A record that does not decode is an error: the file is refused.
pub fn from_etcd(etcd: &EtcdAuth) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let enabled = etcd
        .auth
        .iter()
        .any(|(k, v)| k == ETCD_ENABLED && v.as_slice() == [1]);
    if !enabled && etcd.users.is_empty() && etcd.roles.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![(
        ENABLED.to_vec(),
        if enabled {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
    )];
    if enabled {
        let mut secret = vec![0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut secret);
        out.push((SECRET.to_vec(), secret));
    }
    for (key, value) in &etcd.users {
        let what = format!("`authUsers` entry {:?}", String::from_utf8_lossy(key));
        let pb =
            authpb::User::decode(value.as_slice()).map_err(|e| corrupt(format!("{what}: {e}")))?;
        if pb.name != *key {
            return Err(corrupt(format!("{what}: holds user {:?}", pb.name)));
        }
        let no_password = pb.options.is_some_and(|o| o.no_password) || pb.password.is_empty();
        let user = UserRecord {
            name: text("user name", &pb.name)?,
            password: if no_password {
                None
            } else {
                Some(text("password hash of a user", &pb.password)?)
            },
            roles: pb.roles.into_iter().collect(),
            epoch: 0,
        };
        out.push(([USER_PREFIX, key].concat(), json(&what, &user)?));
    }
    for (key, value) in &etcd.roles {
        let what = format!("`authRoles` entry {:?}", String::from_utf8_lossy(key));
        let pb =
            authpb::Role::decode(value.as_slice()).map_err(|e| corrupt(format!("{what}: {e}")))?;
        if pb.name != *key {
            return Err(corrupt(format!("{what}: holds role {:?}", pb.name)));
        }
        let mut permissions = Vec::with_capacity(pb.key_permission.len());
        for p in pb.key_permission {
            let access = Access::from_etcd(p.perm_type).ok_or_else(|| {
                corrupt(format!("{what}: unknown permission type {}", p.perm_type))
            })?;
            permissions.push(PermissionRecord {
                keyspace: Keyspace::User.id(),
                access,
                key: p.key,
                range_end: p.range_end,
            });
        }
        permissions.sort_by(|a, b| a.key.cmp(&b.key));
        let role = RoleRecord {
            name: text("role name", &pb.name)?,
            permissions,
        };
        out.push(([ROLE_PREFIX, key].concat(), json(&what, &role)?));
    }
    out.push((REVISION.to_vec(), Vec::new()));
    Ok(out)
}

/// Byte strings as standard base64 in JSON (as `berth_auth::model`).
mod bytes_b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: Option<&str>, roles: &[&str], epoch: u64) -> Vec<u8> {
        serde_json::to_vec(&UserRecord {
            name: name.into(),
            password: password.map(str::to_string),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            epoch,
        })
        .unwrap_or_default()
    }

    fn perm(keyspace: u8, access: Access, key: &str, end: &str) -> PermissionRecord {
        PermissionRecord {
            keyspace,
            access,
            key: key.into(),
            range_end: end.into(),
        }
    }

    fn role(name: &str, permissions: Vec<PermissionRecord>) -> Vec<u8> {
        serde_json::to_vec(&RoleRecord {
            name: name.into(),
            permissions,
        })
        .unwrap_or_default()
    }

    fn berth_records() -> BTreeMap<Vec<u8>, Vec<u8>> {
        [
            (ENABLED.to_vec(), b"1".to_vec()),
            (SECRET.to_vec(), vec![7; 32]),
            (REVISION.to_vec(), Vec::new()),
            (
                b"user/root".to_vec(),
                user("root", Some("$2a$04$hash"), &["root"], 9),
            ),
            (
                b"user/alice".to_vec(),
                user("alice", Some("$2b$10$other"), &["reader", "writer"], 3),
            ),
            (b"user/cn-only".to_vec(), user("cn-only", None, &[], 0)),
            (
                b"role/reader".to_vec(),
                role(
                    "reader",
                    vec![
                        perm(0, Access::Read, "a", "b"),
                        perm(2, Access::ReadWrite, "svc/", "svc0"),
                        perm(0, Access::ReadWrite, "k", "\0"),
                    ],
                ),
            ),
            (
                b"role/writer".to_vec(),
                role("writer", vec![perm(0, Access::Write, "w", "")]),
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn etcd_buckets_are_laid_out_as_etcd_keeps_them() {
        let etcd = to_etcd(&berth_records(), 0x0102);
        assert_eq!(
            etcd.auth,
            vec![
                (b"authEnabled".to_vec(), vec![1]),
                (b"authRevision".to_vec(), vec![0, 0, 0, 0, 0, 0, 1, 2]),
            ]
        );
        let names: Vec<&[u8]> = etcd.users.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            names,
            [&b"alice"[..], b"cn-only", b"root"],
            "sorted by name"
        );
        // authpb.User{name=1 "root", password=2 "$2a$04$hash", roles=3 "root",
        // options=4 {no_password=1 false (absent)}}.
        let mut want = vec![0x0a, 4];
        want.extend_from_slice(b"root");
        want.extend_from_slice(&[0x12, 11]);
        want.extend_from_slice(b"$2a$04$hash");
        want.extend_from_slice(&[0x1a, 4]);
        want.extend_from_slice(b"root");
        want.extend_from_slice(&[0x22, 0]);
        assert_eq!(etcd.users[2].1, want);
        let cn = authpb::User::decode(etcd.users[1].1.as_slice()).expect("user");
        assert!(cn.password.is_empty() && cn.options.is_some_and(|o| o.no_password));
        // authpb.Role{name=1 "writer", keyPermission=2 {permType=1 WRITE, key=2 "w"}}.
        let mut want = vec![0x0a, 6];
        want.extend_from_slice(b"writer");
        want.extend_from_slice(&[0x12, 5, 0x08, 1, 0x12, 1, b'w']);
        assert_eq!(etcd.roles[1], (b"writer".to_vec(), want));
        let reader = authpb::Role::decode(etcd.roles[0].1.as_slice()).expect("role");
        let perms: Vec<(i32, &[u8], &[u8])> = reader
            .key_permission
            .iter()
            .map(|p| (p.perm_type, p.key.as_slice(), p.range_end.as_slice()))
            .collect();
        assert_eq!(
            perms,
            [(0, &b"a"[..], &b"b"[..]), (2, b"k", b"\0")],
            "the registry keyspace's grant has no place in etcd"
        );
        // Auth never changed, off: etcd's revision 1, as etcd would write it.
        let fresh = to_etcd(&BTreeMap::new(), 0);
        assert_eq!(fresh.auth[0].1, vec![0]);
        assert_eq!(fresh.auth[1].1, 1u64.to_be_bytes());
        assert!(fresh.users.is_empty() && fresh.roles.is_empty());
    }

    #[test]
    fn records_cross_etcd_and_back() {
        let records = berth_records();
        let back = from_etcd(&to_etcd(&records, 42)).expect("from etcd");
        let back: BTreeMap<Vec<u8>, Vec<u8>> = back.into_iter().collect();
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            records.keys().collect::<Vec<_>>()
        );
        assert_eq!(back[ENABLED], b"1");
        assert_eq!(back[REVISION], b"");
        assert_eq!(back[SECRET].len(), SECRET_LEN);
        assert_ne!(back[SECRET], records[SECRET], "a fresh signing secret");
        for (key, value) in &records {
            if key.starts_with(USER_PREFIX) {
                let (want, got): (UserRecord, UserRecord) = (
                    serde_json::from_slice(value).expect("user"),
                    serde_json::from_slice(&back[key]).expect("user"),
                );
                assert_eq!(
                    (&got.name, &got.password, &got.roles, got.epoch),
                    (&want.name, &want.password, &want.roles, 0)
                );
            }
        }
        let reader: RoleRecord = serde_json::from_slice(&back[&b"role/reader"[..]]).expect("role");
        let got: Vec<_> = reader
            .permissions
            .iter()
            .map(|p| {
                (
                    p.keyspace,
                    p.access,
                    p.key.as_slice(),
                    p.range_end.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (0, Access::Read, &b"a"[..], &b"b"[..]),
                (0, Access::ReadWrite, b"k", b"\0")
            ]
        );
        // Off, and nothing else: no records at all.
        assert_eq!(from_etcd(&to_etcd(&BTreeMap::new(), 5)).expect("empty"), []);
        // Off with users: the state comes over, without a secret.
        let mut off = records.clone();
        off.insert(ENABLED.to_vec(), b"0".to_vec());
        let back = from_etcd(&to_etcd(&off, 5)).expect("off");
        assert!(back.contains(&(ENABLED.to_vec(), b"0".to_vec())));
        assert!(!back.iter().any(|(k, _)| k == SECRET));
    }

    #[test]
    fn undecodable_records_are_left_out_or_refused() {
        let mut records = berth_records();
        records.insert(b"user/bad".to_vec(), b"not json".to_vec());
        records.insert(b"role/bad".to_vec(), b"{}".to_vec());
        let etcd = to_etcd(&records, 1);
        assert_eq!((etcd.users.len(), etcd.roles.len()), (3, 2));

        let refused = |etcd: EtcdAuth| {
            from_etcd(&etcd)
                .expect_err("bad etcd record taken")
                .to_string()
        };
        let mut bad = to_etcd(&berth_records(), 1);
        bad.users[0].1 = vec![0xff, 0xff];
        assert!(refused(bad).contains("`authUsers` entry \"alice\""));
        let mut bad = to_etcd(&berth_records(), 1);
        bad.users[0].0 = b"mallory".to_vec();
        assert!(refused(bad).contains("holds user"));
        let mut bad = to_etcd(&berth_records(), 1);
        bad.roles[1].1 = authpb::Role {
            name: b"writer".to_vec(),
            key_permission: vec![authpb::Permission {
                perm_type: 7,
                key: b"k".to_vec(),
                range_end: Vec::new(),
            }],
        }
        .encode_to_vec();
        assert!(refused(bad).contains("unknown permission type 7"));
    }
}
