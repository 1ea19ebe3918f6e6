//! Where the gateway's resources live in the store's `Gateway` keyspace: `<kind>/<id>`, the
//! value the resource's JSON as the admin API returns it (with `id`, `create_time` and
//! `update_time`), the key's create and mod revisions its `createdIndex` and `modifiedIndex`.

use crate::Kind;

/// The key of resource `id` of `kind`.
pub fn key(kind: Kind, id: &str) -> Vec<u8> {
    let mut k = prefix(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The prefix of every key of `kind`.
pub fn prefix(kind: Kind) -> Vec<u8> {
    format!("{}/", kind.plural()).into_bytes()
}

pub use berth_proto::keys::prefix_end;

/// The kind and ID a key names, if it is a gateway resource's.
pub fn parse(key: &[u8]) -> Option<(Kind, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let (kind, id) = key.split_once('/')?;
    Some((Kind::from_plural(kind)?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for kind in Kind::ALL {
            let k = key(kind, "a.b-1");
            assert_eq!(parse(&k), Some((kind, "a.b-1".to_string())));
            assert!(k.starts_with(&prefix(kind)));
            assert!(k.as_slice() < prefix_end(&prefix(kind)).as_slice());
        }
        assert_eq!(parse(b"nothing/1"), None);
    }
}
