//! Auth changes as pure functions of the current view: each checks etcd's rules and returns
//! the record writes that make the change (empty when there is nothing to do, as etcd answers
//! success for granting a role a user already has). The server turns the writes into one
//! store txn guarded by the view's revision (see [`crate::layout`]).

use rand::RngCore as _;

use crate::error::AuthError;
use crate::layout;
use crate::model::{Permission, Role, User, ROOT};
use crate::view::AuthView;

/// One record write in the `Auth` keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

/// The record writes of one change; [`Changes::is_empty`] when it changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes(pub Vec<Write>);

impl Changes {
    /// True when nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn put_json<T: serde::Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec(value).map_err(|e| AuthError::Internal(e.to_string()))?;
        self.0.push(Write::Put(key, bytes));
        Ok(())
    }

    fn user(&mut self, u: &User) -> Result<(), AuthError> {
        self.put_json(layout::user_key(&u.name), u)
    }

    fn role(&mut self, r: &Role) -> Result<(), AuthError> {
        self.put_json(layout::role_key(&r.name), r)
    }
}

fn epoch() -> u64 {
    rand::rng().next_u64()
}

/// Turns auth on: root must exist and have the root role. A fresh signing secret means no
/// token from an earlier enabled period works again.
pub fn enable(view: &AuthView) -> Result<Changes, AuthError> {
    if view.enabled {
        return Ok(Changes::default());
    }
    view.root_ready()?;
    let mut secret = vec![0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    Ok(Changes(vec![
        Write::Put(layout::ENABLED.to_vec(), b"1".to_vec()),
        Write::Put(layout::SECRET.to_vec(), secret),
    ]))
}

/// Turns auth off.
pub fn disable(view: &AuthView) -> Changes {
    if !view.enabled {
        return Changes::default();
    }
    Changes(vec![Write::Put(layout::ENABLED.to_vec(), b"0".to_vec())])
}

/// Adds a user with a bcrypt `hash`, or none for a `no_password` user.
pub fn user_add(view: &AuthView, name: &str, hash: Option<String>) -> Result<Changes, AuthError> {
    if name.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    if view.user(name).is_some() {
        return Err(AuthError::UserAlreadyExists);
    }
    let mut c = Changes::default();
    c.user(&User {
        name: name.into(),
        password: hash,
        roles: Default::default(),
        epoch: epoch(),
    })?;
    Ok(c)
}

/// Deletes a user (never root while auth is on).
pub fn user_delete(view: &AuthView, name: &str) -> Result<Changes, AuthError> {
    if view.enabled && name == ROOT {
        return Err(AuthError::InvalidManagement);
    }
    if view.user(name).is_none() {
        return Err(AuthError::UserNotFound);
    }
    Ok(Changes(vec![Write::Delete(layout::user_key(name))]))
}

/// Sets a user's password; tokens issued before stop working.
pub fn user_change_password(
    view: &AuthView,
    name: &str,
    hash: String,
) -> Result<Changes, AuthError> {
    let mut u = view.user(name).ok_or(AuthError::UserNotFound)?.clone();
    u.password = Some(hash);
    u.epoch = epoch();
    let mut c = Changes::default();
    c.user(&u)?;
    Ok(c)
}

/// Grants `role` to `user` (root needs no role record, as in etcd).
pub fn user_grant_role(view: &AuthView, user: &str, role: &str) -> Result<Changes, AuthError> {
    let mut u = view.user(user).ok_or(AuthError::UserNotFound)?.clone();
    if role != ROOT && view.role(role).is_none() {
        return Err(AuthError::RoleNotFound);
    }
    if !u.roles.insert(role.to_string()) {
        return Ok(Changes::default());
    }
    let mut c = Changes::default();
    c.user(&u)?;
    Ok(c)
}

/// Revokes `role` from `user` (never root's root role while auth is on).
pub fn user_revoke_role(view: &AuthView, user: &str, role: &str) -> Result<Changes, AuthError> {
    if view.enabled && user == ROOT && role == ROOT {
        return Err(AuthError::InvalidManagement);
    }
    let mut u = view.user(user).ok_or(AuthError::UserNotFound)?.clone();
    if !u.roles.remove(role) {
        return Err(AuthError::RoleNotGranted);
    }
    let mut c = Changes::default();
    c.user(&u)?;
    Ok(c)
}

/// Adds an empty role.
pub fn role_add(view: &AuthView, name: &str) -> Result<Changes, AuthError> {
    if name.is_empty() {
        return Err(AuthError::RoleEmpty);
    }
    if view.role(name).is_some() {
        return Err(AuthError::RoleAlreadyExists);
    }
    let mut c = Changes::default();
    c.role(&Role {
        name: name.into(),
        permissions: Vec::new(),
    })?;
    Ok(c)
}

/// Deletes a role and takes it from every user that has it (never root while auth is on).
pub fn role_delete(view: &AuthView, name: &str) -> Result<Changes, AuthError> {
    if view.enabled && name == ROOT {
        return Err(AuthError::InvalidManagement);
    }
    if view.role(name).is_none() {
        return Err(AuthError::RoleNotFound);
    }
    let mut c = Changes(vec![Write::Delete(layout::role_key(name))]);
    for u in view.users().filter(|u| u.roles.contains(name)) {
        let mut u = u.clone();
        u.roles.remove(name);
        c.user(&u)?;
    }
    Ok(c)
}

/// Grants (or changes the access of) a permission.
pub fn role_grant_permission(
    view: &AuthView,
    role: &str,
    p: Permission,
) -> Result<Changes, AuthError> {
    let mut r = view.role(role).ok_or(AuthError::RoleNotFound)?.clone();
    r.grant(p);
    let mut c = Changes::default();
    c.role(&r)?;
    Ok(c)
}

/// Revokes the permission on exactly `key`/`range_end` of keyspace `ks`.
pub fn role_revoke_permission(
    view: &AuthView,
    role: &str,
    ks: u8,
    key: &[u8],
    range_end: &[u8],
) -> Result<Changes, AuthError> {
    let mut r = view.role(role).ok_or(AuthError::RoleNotFound)?.clone();
    if !r.revoke(ks, key, range_end) {
        return Err(AuthError::PermissionNotGranted);
    }
    let mut c = Changes::default();
    c.role(&r)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Access;

    /// Applies changes to a record map and rebuilds the view, as the store would.
    fn apply(view: &AuthView, records: &mut Vec<(Vec<u8>, Vec<u8>)>, c: Changes) -> AuthView {
        for w in c.0 {
            match w {
                Write::Put(k, v) => {
                    records.retain(|(rk, _)| *rk != k);
                    records.push((k, v));
                }
                Write::Delete(k) => records.retain(|(rk, _)| *rk != k),
            }
        }
        AuthView::from_records(
            view.revision + 1,
            0,
            records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
    }

    #[test]
    fn etcd_rules_for_root_users_and_roles() {
        let mut recs = Vec::new();
        let v = AuthView::default();
        assert_eq!(enable(&v), Err(AuthError::RootUserNotExist));
        assert_eq!(user_add(&v, "", None), Err(AuthError::UserEmpty));
        let v = apply(
            &v,
            &mut recs,
            user_add(&v, ROOT, Some("h".into())).unwrap_or_default(),
        );
        assert_eq!(user_add(&v, ROOT, None), Err(AuthError::UserAlreadyExists));
        assert_eq!(enable(&v), Err(AuthError::RootRoleNotExist));
        assert_eq!(
            user_grant_role(&v, ROOT, "nope"),
            Err(AuthError::RoleNotFound)
        );
        let v = apply(
            &v,
            &mut recs,
            user_grant_role(&v, ROOT, ROOT).unwrap_or_default(),
        );
        assert_eq!(user_grant_role(&v, ROOT, ROOT), Ok(Changes::default()));
        let v = apply(&v, &mut recs, enable(&v).unwrap_or_default());
        assert!(v.enabled && v.secret.len() == 32);
        assert_eq!(enable(&v), Ok(Changes::default()));
        assert_eq!(user_delete(&v, ROOT), Err(AuthError::InvalidManagement));
        assert_eq!(
            user_revoke_role(&v, ROOT, ROOT),
            Err(AuthError::InvalidManagement)
        );
        assert_eq!(role_delete(&v, ROOT), Err(AuthError::InvalidManagement));
        assert_eq!(role_add(&v, ""), Err(AuthError::RoleEmpty));
        let v = apply(&v, &mut recs, role_add(&v, "r").unwrap_or_default());
        assert_eq!(role_add(&v, "r"), Err(AuthError::RoleAlreadyExists));
        let v = apply(
            &v,
            &mut recs,
            user_add(&v, "u", Some("h".into())).unwrap_or_default(),
        );
        let v = apply(
            &v,
            &mut recs,
            user_grant_role(&v, "u", "r").unwrap_or_default(),
        );
        let p = Permission {
            keyspace: 0,
            access: Access::Read,
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
        };
        let v = apply(
            &v,
            &mut recs,
            role_grant_permission(&v, "r", p).unwrap_or_default(),
        );
        assert!(v.allows("u", 0, Access::Read, b"k1", b""));
        assert!(!v.allows("u", 0, Access::Write, b"k1", b""));
        assert!(v.allows(ROOT, 0, Access::Write, b"anything", b"\0"));
        assert_eq!(
            role_revoke_permission(&v, "r", 0, b"k", b""),
            Err(AuthError::PermissionNotGranted)
        );
        let v = apply(&v, &mut recs, role_delete(&v, "r").unwrap_or_default());
        assert!(
            !v.has_role("u", "r"),
            "deleting a role takes it from its users"
        );
        assert!(!v.allows("u", 0, Access::Read, b"k1", b""));
        assert_eq!(
            user_revoke_role(&v, "u", "r"),
            Err(AuthError::RoleNotGranted)
        );
        let before = v.user("u").map(|u| u.epoch);
        let v = apply(
            &v,
            &mut recs,
            user_change_password(&v, "u", "h2".into()).unwrap_or_default(),
        );
        assert_ne!(
            v.user("u").map(|u| u.epoch),
            before,
            "a new password is a new epoch"
        );
        let v = apply(&v, &mut recs, disable(&v));
        assert!(!v.enabled);
        assert_eq!(disable(&v), Changes::default());
        let v = apply(&v, &mut recs, user_delete(&v, ROOT).unwrap_or_default());
        assert!(v.user(ROOT).is_none(), "root may go while auth is off");
    }
}
