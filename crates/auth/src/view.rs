//! The auth state at one auth revision, decoded from the `Auth` keyspace's records, with each
//! user's merged permissions precomputed. Immutable: a change produces a new view (the server
//! rebuilds it when the auth revision moves), so checks never lock.

use std::collections::{BTreeMap, HashMap};

use crate::layout;
use crate::model::{Access, Role, User, ROOT};
use crate::perms::Permissions;

/// Auth state as of `revision`.
#[derive(Debug, Default)]
pub struct AuthView {
    /// The auth revision: the store revision of the last change (0 before any).
    pub revision: i64,
    /// Auth is on.
    pub enabled: bool,
    /// Simple-token signing key (empty while auth has never been enabled).
    pub secret: Vec<u8>,
    /// The store revision the `enabled` record was last written at (0: never).
    enabled_revision: i64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    perms: HashMap<String, Permissions>,
}

impl AuthView {
    /// Decodes the keyspace's records. A record that does not decode is skipped with an error
    /// log (it grants nothing); it never stops the member.
    pub fn from_records<'a>(
        revision: i64,
        enabled_revision: i64,
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> AuthView {
        let mut view = AuthView {
            revision,
            enabled_revision,
            ..Default::default()
        };
        for (key, value) in records {
            if key == layout::ENABLED {
                view.enabled = value == b"1";
            } else if key == layout::SECRET {
                view.secret = value.to_vec();
            } else if key.starts_with(layout::USER_PREFIX) {
                match serde_json::from_slice::<User>(value) {
                    Ok(u) => {
                        view.users.insert(u.name.clone(), u);
                    }
                    Err(e) => {
                        tracing::error!(key = %String::from_utf8_lossy(key), error = %e, "undecodable user record")
                    }
                }
            } else if key.starts_with(layout::ROLE_PREFIX) {
                match serde_json::from_slice::<Role>(value) {
                    Ok(r) => {
                        view.roles.insert(r.name.clone(), r);
                    }
                    Err(e) => {
                        tracing::error!(key = %String::from_utf8_lossy(key), error = %e, "undecodable role record")
                    }
                }
            }
        }
        view.perms = view
            .users
            .values()
            .map(|u| {
                let roles = u.roles.iter().filter_map(|r| view.roles.get(r));
                (u.name.clone(), Permissions::merge(roles))
            })
            .collect();
        view
    }

    /// The store revision the `enabled` record was last written at (0: never).
    pub fn enabled_revision(&self) -> i64 {
        self.enabled_revision
    }

    /// User `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Role `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Every role, by name.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// True when `user` exists and has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(User::is_root)
    }

    /// True when `user` may have `access` to `key`/`range_end` in keyspace `ks`: root may do
    /// anything; others need a grant covering the whole range.
    pub fn allows(&self, user: &str, ks: u8, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        if self.is_root(user) {
            return true;
        }
        self.perms
            .get(user)
            .is_some_and(|p| p.allows(ks, access, key, range_end))
    }

    /// True when `user` has role `role` (etcd lets a user read the roles it has).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(role))
    }

    /// True when root exists with the root role (what enabling auth requires).
    pub fn root_ready(&self) -> Result<(), crate::AuthError> {
        match self.users.get(ROOT) {
            None => Err(crate::AuthError::RootUserNotExist),
            Some(u) if !u.is_root() => Err(crate::AuthError::RootRoleNotExist),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_store::etcd_auth;

    use super::*;
    use crate::model::Permission;

    /// The store's etcd-snapshot translation reads and writes the records this crate keeps.
    #[test]
    fn records_cross_the_etcd_snapshot_translation() {
        let grant = |keyspace: u8, access, key: &str, end: &str| Permission {
            keyspace,
            access,
            key: key.into(),
            range_end: end.into(),
        };
        let mut reader = Role {
            name: "reader".into(),
            ..Default::default()
        };
        reader.grant(grant(0, Access::Read, "a", "b"));
        reader.grant(grant(0, Access::ReadWrite, "p/", "p0"));
        reader.grant(grant(2, Access::Write, "svc/", ""));
        let users = [
            User {
                name: ROOT.into(),
                password: Some("$2a$04$root".into()),
                roles: [ROOT.to_string()].into(),
                epoch: 11,
            },
            User {
                name: "alice".into(),
                password: Some("$2b$04$alice".into()),
                roles: ["reader".to_string()].into(),
                epoch: 12,
            },
            User {
                name: "cn".into(),
                password: None,
                roles: Default::default(),
                epoch: 13,
            },
        ];
        let mut records: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        records.insert(layout::ENABLED.to_vec(), b"1".to_vec());
        records.insert(layout::SECRET.to_vec(), vec![1; 32]);
        records.insert(layout::REVISION.to_vec(), Vec::new());
        for u in &users {
            let json = serde_json::to_vec(u).expect("json");
            records.insert(layout::user_key(&u.name), json);
        }
        let json = serde_json::to_vec(&reader).expect("json");
        records.insert(layout::role_key("reader"), json);

        let back = etcd_auth::from_etcd(&etcd_auth::to_etcd(&records, 7)).expect("from etcd");
        let view =
            AuthView::from_records(7, 7, back.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        assert!(view.enabled && view.secret.len() == 32 && view.secret != vec![1; 32]);
        for u in &users {
            let got = view.user(&u.name).expect("user");
            assert_eq!((&got.password, &got.roles), (&u.password, &u.roles));
        }
        let got = view.role("reader").expect("role");
        assert_eq!(
            got.permissions,
            vec![
                grant(0, Access::Read, "a", "b"),
                grant(0, Access::ReadWrite, "p/", "p0")
            ],
            "etcd holds the user keyspace's grants"
        );
        assert!(view.allows("alice", 0, Access::Read, b"a", b""));
        assert!(!view.allows("alice", 0, Access::Write, b"a", b""));
        assert!(view.is_root(ROOT));
    }
}
