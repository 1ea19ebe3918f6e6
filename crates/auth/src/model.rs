//! Users, roles and permissions: etcd's auth model, generalised so every face maps onto it.
//! A permission names a keyspace (the etcd face grants only the user keyspace; Consul ACLs,
//! Nacos, NATS and the gateway will name theirs) and a key, a range or a prefix of it.
//!
//! Records are stored as JSON values in the store's `Auth` keyspace (see [`crate::layout`]);
//! the field names are berth's own and stable (`berth_store::etcd_auth` reads and writes them
//! too, for etcd-format snapshots).

use std::collections::BTreeSet;

use berth_store::Keyspace;
use serde::{Deserialize, Serialize};

/// The user every auth setup must have before auth can be enabled, and the role that grants
/// everything.
pub const ROOT: &str = "root";

/// What a permission allows, as etcd's `Permission.Type` (READ = 0, WRITE = 1, READWRITE = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Range, watch, compare.
    Read,
    /// Put, delete.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// True when this grant allows `wanted` (which is `Read` or `Write`).
    pub fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }

    /// From etcd's enum number.
    pub fn from_etcd(n: i32) -> Option<Access> {
        match n {
            0 => Some(Access::Read),
            1 => Some(Access::Write),
            2 => Some(Access::ReadWrite),
            _ => None,
        }
    }

    /// etcd's enum number.
    pub fn to_etcd(self) -> i32 {
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

/// One grant of a role: `access` to `key` (when `range_end` is empty), to `[key, range_end)`,
/// or to every key from `key` on (`range_end == "\0"`), in one keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// The keyspace's ID (absent: the user keyspace).
    #[serde(default = "user_keyspace", skip_serializing_if = "is_user_keyspace")]
    pub keyspace: u8,
    /// READ, WRITE or READWRITE.
    pub access: Access,
    /// First key.
    #[serde(with = "bytes_b64")]
    pub key: Vec<u8>,
    /// End of the range (exclusive), empty for one key, `"\0"` for "to the end".
    #[serde(with = "bytes_b64", default, skip_serializing_if = "Vec::is_empty")]
    pub range_end: Vec<u8>,
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Role {
    /// The role's name.
    pub name: String,
    /// Its grants, sorted by key (as etcd keeps them); one per (keyspace, key, range end).
    pub permissions: Vec<Permission>,
}

impl Role {
    /// Adds or updates (same keyspace, key and range end) a grant, keeping key order.
    pub fn grant(&mut self, p: Permission) {
        if let Some(existing) = self
            .permissions
            .iter_mut()
            .find(|q| q.keyspace == p.keyspace && q.key == p.key && q.range_end == p.range_end)
        {
            existing.access = p.access;
            return;
        }
        self.permissions.push(p);
        self.permissions
            .sort_by(|a, b| (a.keyspace, &a.key).cmp(&(b.keyspace, &b.key)));
    }

    /// Removes the grant on exactly this key and range end; false if there was none.
    pub fn revoke(&mut self, keyspace: u8, key: &[u8], range_end: &[u8]) -> bool {
        let before = self.permissions.len();
        self.permissions
            .retain(|q| !(q.keyspace == keyspace && q.key == key && q.range_end == range_end));
        self.permissions.len() != before
    }
}

/// A user: a password hash (or none, for certificate-only users), roles, and a credential
/// epoch that changes with the password so tokens issued before stop working.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct User {
    /// The user's name.
    pub name: String,
    /// bcrypt hash; `None` for a `no_password` user (certificate CN or another face's
    /// credential only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Granted roles, sorted.
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// Changes whenever the password does (and on re-creation): tokens carry it.
    #[serde(default)]
    pub epoch: u64,
}

impl User {
    /// True for a user created with `no_password` (etcd's `UserAddOptions.no_password`).
    pub fn no_password(&self) -> bool {
        self.password.is_none()
    }

    /// True when the user has the `root` role.
    pub fn is_root(&self) -> bool {
        self.roles.contains(ROOT)
    }
}

/// Byte strings as standard base64 in JSON.
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

    fn perm(key: &str, end: &str, access: Access) -> Permission {
        Permission {
            keyspace: 0,
            access,
            key: key.into(),
            range_end: end.into(),
        }
    }

    #[test]
    fn grants_update_in_place_and_stay_sorted() {
        let mut r = Role::default();
        r.grant(perm("b", "", Access::Read));
        r.grant(perm("a", "b", Access::Write));
        r.grant(perm("b", "", Access::ReadWrite));
        assert_eq!(
            r.permissions,
            vec![
                perm("a", "b", Access::Write),
                perm("b", "", Access::ReadWrite)
            ]
        );
        assert!(!r.revoke(0, b"b", b"c"));
        assert!(r.revoke(0, b"b", b""));
        assert_eq!(r.permissions.len(), 1);
    }

    #[test]
    fn records_round_trip_as_json() {
        let mut role = Role {
            name: "r".into(),
            ..Default::default()
        };
        role.grant(perm("\u{0}x", "\u{0}", Access::Read));
        let text = serde_json::to_string(&role).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Role>(&text).ok(), Some(role));
        let user = User {
            name: "u".into(),
            password: None,
            roles: ["root".to_string()].into(),
            epoch: 7,
        };
        let text = serde_json::to_string(&user).unwrap_or_default();
        let back: User = serde_json::from_str(&text).unwrap_or_default();
        assert!(back.no_password() && back.is_root() && back.epoch == 7);
    }
}
