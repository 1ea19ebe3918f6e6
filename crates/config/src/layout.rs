//! Where the configuration center's records live in the store's `Config` keyspace. Names
//! never hold a NUL ([`crate::rules`]), so NUL separates a key's parts and keys of one item
//! sort together:
//!
//! | key | value |
//! |---|---|
//! | `i/<ns>\0<group>\0<data id>` | the [`Item`](crate::Item) (JSON) |
//! | `b/<ns>\0<group>\0<data id>` | its [`Beta`](crate::Beta), while one runs |
//! | `v/<ns>\0<group>\0<data id>\0<version: u64 BE>` | a kept [`Version`](crate::Version) |
//! | `t/<at ms: u64 BE><ns>\0<group>\0<data id>\0<version: u64 BE>` | empty: versions by age |
//! | `n/<ns>` | a [`Namespace`](crate::Namespace) other than `public` |

use crate::ItemKey;

/// Prefix of the items.
pub const ITEMS: &[u8] = b"i/";
/// Prefix of the betas.
pub const BETAS: &[u8] = b"b/";
/// Prefix of the kept versions.
pub const VERSIONS: &[u8] = b"v/";
/// Prefix of the age index of kept versions.
pub const AGED: &[u8] = b"t/";
/// Prefix of the namespaces.
pub const NAMESPACES: &[u8] = b"n/";

fn item_path(prefix: &[u8], k: &ItemKey) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(prefix.len() + k.namespace.len() + k.group.len() + k.data_id.len() + 2);
    key.extend_from_slice(prefix);
    push_item(&mut key, k);
    key
}

fn push_item(key: &mut Vec<u8>, k: &ItemKey) {
    key.extend_from_slice(k.namespace.as_bytes());
    key.push(0);
    key.extend_from_slice(k.group.as_bytes());
    key.push(0);
    key.extend_from_slice(k.data_id.as_bytes());
}

/// The key of item `k`.
pub fn item(k: &ItemKey) -> Vec<u8> {
    item_path(ITEMS, k)
}

/// The prefix of every item key of `namespace`.
pub fn items_of(namespace: &str) -> Vec<u8> {
    let mut key = ITEMS.to_vec();
    key.extend_from_slice(namespace.as_bytes());
    key.push(0);
    key
}

/// The key of item `k`'s beta.
pub fn beta(k: &ItemKey) -> Vec<u8> {
    item_path(BETAS, k)
}

/// The key of version `v` of item `k`.
pub fn version(k: &ItemKey, v: u64) -> Vec<u8> {
    let mut key = versions(k);
    key.extend_from_slice(&v.to_be_bytes());
    key
}

/// The prefix of item `k`'s versions (each [`version`] key is this plus 8 bytes).
pub fn versions(k: &ItemKey) -> Vec<u8> {
    let mut key = item_path(VERSIONS, k);
    key.push(0);
    key
}

/// The age-index key of version `v` of item `k`, made at `at_ms`.
pub fn aged(at_ms: i64, k: &ItemKey, v: u64) -> Vec<u8> {
    let mut key = AGED.to_vec();
    key.extend_from_slice(&u64::try_from(at_ms).unwrap_or(0).to_be_bytes());
    push_item(&mut key, k);
    key.push(0);
    key.extend_from_slice(&v.to_be_bytes());
    key
}

/// The end (exclusive) of the age-index keys of versions made before `ms`.
pub fn aged_before(ms: i64) -> Vec<u8> {
    let mut key = AGED.to_vec();
    key.extend_from_slice(&u64::try_from(ms).unwrap_or(0).to_be_bytes());
    key
}

/// The key of namespace `id`.
pub fn namespace(id: &str) -> Vec<u8> {
    let mut key = NAMESPACES.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// The end (exclusive) of the keys that start with `prefix` (etcd's prefix convention).
pub use berth_proto::keys::prefix_end;

fn split_item(rest: &[u8]) -> Option<ItemKey> {
    let mut parts = rest.splitn(3, |b| *b == 0);
    let ns = std::str::from_utf8(parts.next()?).ok()?;
    let group = std::str::from_utf8(parts.next()?).ok()?;
    let data_id = std::str::from_utf8(parts.next()?).ok()?;
    Some(ItemKey {
        namespace: ns.to_string(),
        group: group.to_string(),
        data_id: data_id.to_string(),
    })
}

/// The item an item key (or, with [`BETAS`], a beta key) names.
pub fn parse_item(prefix: &[u8], key: &[u8]) -> Option<ItemKey> {
    split_item(key.strip_prefix(prefix)?)
}

/// The item and version a version key names.
pub fn parse_version(key: &[u8]) -> Option<(ItemKey, u64)> {
    let rest = key.strip_prefix(VERSIONS)?;
    let (path, v) = rest.split_at_checked(rest.len().checked_sub(9)?)?;
    let (sep, v) = v.split_first()?;
    if *sep != 0 {
        return None;
    }
    Some((split_item(path)?, u64::from_be_bytes(v.try_into().ok()?)))
}

/// The time, item and version an age-index key names.
pub fn parse_aged(key: &[u8]) -> Option<(i64, ItemKey, u64)> {
    let rest = key.strip_prefix(AGED)?;
    let (at, rest) = rest.split_at_checked(8)?;
    let (path, v) = rest.split_at_checked(rest.len().checked_sub(9)?)?;
    let (sep, v) = v.split_first()?;
    if *sep != 0 {
        return None;
    }
    Some((
        i64::try_from(u64::from_be_bytes(at.try_into().ok()?)).ok()?,
        split_item(path)?,
        u64::from_be_bytes(v.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let k = ItemKey::new("dev", "DEFAULT_GROUP", "app.yaml");
        assert_eq!(parse_item(ITEMS, &item(&k)), Some(k.clone()));
        assert_eq!(parse_item(BETAS, &beta(&k)), Some(k.clone()));
        assert_eq!(parse_item(ITEMS, &beta(&k)), None);
        assert_eq!(parse_version(&version(&k, 7)), Some((k.clone(), 7)));
        assert_eq!(
            parse_aged(&aged(1_700_000_000_000, &k, 3)),
            Some((1_700_000_000_000, k.clone(), 3))
        );
    }

    #[test]
    fn versions_of_one_item_sort_by_number_and_stay_apart_from_others() {
        let k = ItemKey::new("", "G", "a");
        let longer = ItemKey::new("", "G", "ab");
        let (v2, v10) = (version(&k, 2), version(&k, 10));
        assert!(v2 < v10);
        let (start, end) = (versions(&k), prefix_end(&versions(&k)));
        assert!(start <= v2 && v10 < end);
        let other = version(&longer, 1);
        assert!(
            !(start <= other && other < end),
            "a's span holds ab's versions"
        );
    }

    #[test]
    fn aged_keys_sort_by_time() {
        let k = ItemKey::new("", "G", "a");
        assert!(aged(5, &k, 9) < aged(6, &k, 1));
        assert!(aged(5, &k, 9) < aged_before(6));
        assert!(aged(6, &k, 1) >= aged_before(6));
    }
}
