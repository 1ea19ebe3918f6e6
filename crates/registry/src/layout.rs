//! Where the registry's records live in the store's `Registry` keyspace. Parts of a key are
//! separated by a NUL byte, which no name may contain, so a prefix never reaches a
//! neighbour's records (`web` and `web2` on one node stay apart).
//!
//! | key | value |
//! |---|---|
//! | `node/<node>` | [`Node`](crate::Node) |
//! | `svc/<node>\0<service id>` | [`Service`](crate::Service) |
//! | `chk/<node>\0<service id>\0<check id>` | [`Check`](crate::Check) (service id empty for a node check) |
//! | `ttl/<node>\0<service id>\0<check id>` | empty, attached to the TTL check's lease: present while the TTL holds |
//! | `kv/<key>` | [`KvMeta`](crate::KvMeta) of user-keyspace key `<key>` |
//! | `sess/<id>` | [`Session`](crate::model::Session), attached to its lease when it has a TTL |
//! | `member/<name>` | empty, attached to the member's presence lease: present while the member is live |
//! | `def/<service name>` | [`ServiceDef`](crate::naming::ServiceDef): a Nacos service's own settings |

/// Prefix of node records.
pub const NODE: &[u8] = b"node/";
/// Prefix of service instance records.
pub const SERVICE: &[u8] = b"svc/";
/// Prefix of check records.
pub const CHECK: &[u8] = b"chk/";
/// Prefix of TTL liveness keys.
pub const TTL: &[u8] = b"ttl/";
/// Prefix of KV metadata.
pub const KV: &[u8] = b"kv/";
/// Prefix of sessions.
pub const SESSION: &[u8] = b"sess/";
/// Prefix of member presence keys.
pub const MEMBER: &[u8] = b"member/";
/// Prefix of service definitions.
pub const DEF: &[u8] = b"def/";

const SEP: u8 = 0;

fn join(prefix: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// Key of node `node`.
pub fn node(node: &str) -> Vec<u8> {
    join(NODE, &[node])
}

/// Key of service instance `id` on `node`.
pub fn service(node: &str, id: &str) -> Vec<u8> {
    join(SERVICE, &[node, id])
}

/// Key of check `check` of service `service` (empty: the node) on `node`.
pub fn check(node: &str, service: &str, check: &str) -> Vec<u8> {
    join(CHECK, &[node, service, check])
}

/// Prefix of every check of `service` on `node` (with the trailing separator).
pub fn checks_of(node: &str, service: &str) -> Vec<u8> {
    let mut k = join(CHECK, &[node, service]);
    k.push(SEP);
    k
}

/// Prefix of every record of one kind (`SERVICE`, `CHECK`, `TTL`) on `node`.
pub fn of_node(kind: &[u8], node: &str) -> Vec<u8> {
    let mut k = join(kind, &[node]);
    k.push(SEP);
    k
}

/// TTL liveness key of a check.
pub fn ttl(node: &str, service: &str, check: &str) -> Vec<u8> {
    join(TTL, &[node, service, check])
}

/// Prefix of every TTL key of `service` on `node`.
pub fn ttls_of(node: &str, service: &str) -> Vec<u8> {
    let mut k = join(TTL, &[node, service]);
    k.push(SEP);
    k
}

/// Key of the metadata of user key `key`.
pub fn kv(key: &[u8]) -> Vec<u8> {
    let mut k = KV.to_vec();
    k.extend_from_slice(key);
    k
}

/// Key of session `id`.
pub fn session(id: &str) -> Vec<u8> {
    join(SESSION, &[id])
}

/// Presence key of member `name`.
pub fn member(name: &str) -> Vec<u8> {
    join(MEMBER, &[name])
}

/// Key of the definition of service `name` (its catalog name).
pub fn service_def(name: &str) -> Vec<u8> {
    join(DEF, &[name])
}

/// The end of the span of every key starting with `prefix` (etcd's prefix range end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A registry key, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `node/<node>`
    Node(String),
    /// `svc/<node>\0<id>`
    Service(String, String),
    /// `chk/<node>\0<service>\0<check>`
    Check(String, String, String),
    /// `ttl/<node>\0<service>\0<check>`
    Ttl(String, String, String),
    /// `kv/<key>`
    Kv(Vec<u8>),
    /// `sess/<id>`
    Session(String),
    /// `member/<name>`
    Member(String),
    /// `def/<service name>`
    ServiceDef(String),
}

fn parts(rest: &[u8], n: usize) -> Option<Vec<String>> {
    let p: Vec<String> = rest
        .split(|b| *b == SEP)
        .map(|s| String::from_utf8(s.to_vec()))
        .collect::<Result<_, _>>()
        .ok()?;
    (p.len() == n).then_some(p)
}

impl Key {
    /// Decodes a registry key (`None`: not one of the registry's).
    pub fn parse(key: &[u8]) -> Option<Key> {
        if let Some(rest) = key.strip_prefix(KV) {
            return Some(Key::Kv(rest.to_vec()));
        }
        if let Some(rest) = key.strip_prefix(SESSION) {
            let mut p = parts(rest, 1)?;
            return p.pop().map(Key::Session);
        }
        if let Some(rest) = key.strip_prefix(MEMBER) {
            let mut p = parts(rest, 1)?;
            return p.pop().map(Key::Member);
        }
        if let Some(rest) = key.strip_prefix(DEF) {
            let mut p = parts(rest, 1)?;
            return p.pop().map(Key::ServiceDef);
        }
        if let Some(rest) = key.strip_prefix(NODE) {
            let mut p = parts(rest, 1)?;
            return p.pop().map(Key::Node);
        }
        if let Some(rest) = key.strip_prefix(SERVICE) {
            let mut p = parts(rest, 2)?.into_iter();
            return Some(Key::Service(p.next()?, p.next()?));
        }
        if let Some(rest) = key.strip_prefix(CHECK) {
            let mut p = parts(rest, 3)?.into_iter();
            return Some(Key::Check(p.next()?, p.next()?, p.next()?));
        }
        if let Some(rest) = key.strip_prefix(TTL) {
            let mut p = parts(rest, 3)?.into_iter();
            return Some(Key::Ttl(p.next()?, p.next()?, p.next()?));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_prefixes_stay_inside_their_service() {
        assert_eq!(Key::parse(&node("n1")), Some(Key::Node("n1".into())));
        assert_eq!(
            Key::parse(&service("n1", "web")),
            Some(Key::Service("n1".into(), "web".into()))
        );
        assert_eq!(
            Key::parse(&check("n1", "", "maint")),
            Some(Key::Check("n1".into(), String::new(), "maint".into()))
        );
        assert_eq!(
            Key::parse(&ttl("n", "s", "service:s")),
            Some(Key::Ttl("n".into(), "s".into(), "service:s".into()))
        );
        assert_eq!(Key::parse(&kv(b"a/b")), Some(Key::Kv(b"a/b".to_vec())));
        assert_eq!(
            Key::parse(&service_def("g@@web")),
            Some(Key::ServiceDef("g@@web".into()))
        );
        assert_eq!(Key::parse(b"other"), None);
        // `web`'s checks prefix does not reach `web2`'s.
        let p = checks_of("n", "web");
        assert!(check("n", "web", "c").starts_with(&p));
        assert!(!check("n", "web2", "c").starts_with(&p));
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
