//! The configuration center's records. An [`Item`] is what clients read; each publish
//! (and each delete) also keeps a [`Version`]; a [`Beta`] is a gray release of an item seen
//! only by the clients it lists; a [`Namespace`] is a tenant that items live in.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The namespace every cluster has; Nacos clients name it `""` or `public`.
pub const PUBLIC: &str = "public";
/// The group a Nacos client uses when it names none.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";

/// Where an item lives: namespace (Nacos's tenant), group and data ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemKey {
    /// The namespace's ID (`public` for the default one, never empty).
    pub namespace: String,
    /// The group.
    pub group: String,
    /// The data ID.
    pub data_id: String,
}

impl ItemKey {
    /// A key; an empty namespace is the public one.
    pub fn new(namespace: &str, group: &str, data_id: &str) -> ItemKey {
        ItemKey {
            namespace: if namespace.is_empty() {
                PUBLIC.to_string()
            } else {
                namespace.to_string()
            },
            group: group.to_string(),
            data_id: data_id.to_string(),
        }
    }

    /// The namespace as Nacos clients name it: `""` for the public one.
    pub fn tenant(&self) -> &str {
        if self.namespace == PUBLIC {
            ""
        } else {
            &self.namespace
        }
    }
}

impl std::fmt::Display for ItemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

/// What an item's content is, as Nacos names the types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// Plain text (the default).
    #[default]
    Text,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// Java properties.
    Properties,
    /// XML.
    Xml,
    /// HTML.
    Html,
    /// TOML.
    Toml,
}

impl ContentType {
    /// Every type, as [`ContentType::as_str`] names them.
    pub const ALL: [ContentType; 7] = [
        ContentType::Text,
        ContentType::Json,
        ContentType::Yaml,
        ContentType::Properties,
        ContentType::Xml,
        ContentType::Html,
        ContentType::Toml,
    ];

    /// The type's name (`text`, `json`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Text => "text",
            ContentType::Json => "json",
            ContentType::Yaml => "yaml",
            ContentType::Properties => "properties",
            ContentType::Xml => "xml",
            ContentType::Html => "html",
            ContentType::Toml => "toml",
        }
    }

    /// The type named `s` (any case; `yml` is YAML), or `None`.
    pub fn parse(s: &str) -> Option<ContentType> {
        let s = s.trim().to_ascii_lowercase();
        if s == "yml" {
            return Some(ContentType::Yaml);
        }
        ContentType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Who made a change, and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// The user (authenticated, or as the client named itself when auth is off); may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// The client's address as the member saw it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
}

/// A configuration item as clients read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The content.
    pub content: String,
    /// Lower-case hex MD5 of the content's UTF-8 bytes (what Nacos listeners compare).
    pub md5: String,
    /// The content's type.
    #[serde(default)]
    pub kind: ContentType,
    /// A description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The application the item belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// The version this content is (1 for the first publish; counts on across deletes).
    pub version: u64,
    /// When the item was first published (ms since the UNIX epoch).
    pub created_ms: i64,
    /// When this version was published (ms since the UNIX epoch).
    pub modified_ms: i64,
    /// Who published this version.
    #[serde(default)]
    pub author: Author,
}

impl Item {
    /// True when `other` would change nothing a reader sees (content and attributes).
    pub fn same_content(&self, other: &Item) -> bool {
        self.content == other.content
            && self.kind == other.kind
            && self.desc == other.desc
            && self.tags == other.tags
            && self.app == other.app
    }
}

/// What a kept version records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The first publish (Nacos's `I`).
    #[serde(rename = "I")]
    Create,
    /// A later publish (Nacos's `U`).
    #[serde(rename = "U")]
    Update,
    /// A delete (Nacos's `D`): the version keeps the content that was deleted.
    #[serde(rename = "D")]
    Delete,
}

impl Op {
    /// Nacos's letter for it.
    pub fn letter(self) -> &'static str {
        match self {
            Op::Create => "I",
            Op::Update => "U",
            Op::Delete => "D",
        }
    }
}

/// A kept version of an item: what a publish or a delete left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The version number.
    pub version: u64,
    /// What made it.
    pub op: Op,
    /// The item as this version left it (for a delete: as it was before).
    pub item: Item,
    /// When it was made (ms since the UNIX epoch).
    pub at_ms: i64,
    /// Who made it.
    #[serde(default)]
    pub author: Author,
}

/// A gray release of an item: content seen only by the clients it lists, until it is
/// promoted (published to everyone) or withdrawn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beta {
    /// The beta content.
    pub content: String,
    /// Its MD5.
    pub md5: String,
    /// Its type.
    #[serde(default)]
    pub kind: ContentType,
    /// The client addresses that see it.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Client labels that see it: a client with any of these labels at one of its values
    /// does (labels are what a Nacos 2.x/3.x client declares on its connection).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, BTreeSet<String>>,
    /// When it was published (ms since the UNIX epoch).
    pub at_ms: i64,
    /// Who published it.
    #[serde(default)]
    pub author: Author,
}

/// Who reads an item: what a beta is matched against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reader {
    /// The client's address.
    pub ip: String,
    /// The labels it declared (none for HTTP clients).
    pub labels: BTreeMap<String, String>,
}

impl Reader {
    /// A client at `ip` with no labels.
    pub fn at(ip: impl Into<String>) -> Reader {
        Reader {
            ip: ip.into(),
            labels: BTreeMap::new(),
        }
    }
}

impl Beta {
    /// Its labels as `key=value` pairs, comma-separated (as they are given).
    pub fn labels_text(&self) -> String {
        self.labels
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// True when `reader` sees this beta: its address is listed, or one of its labels is.
    pub fn covers(&self, reader: &Reader) -> bool {
        let canonical = |s: &str| {
            s.trim()
                .parse::<std::net::IpAddr>()
                .map(|a| a.to_canonical())
                .ok()
        };
        let by_ip = match canonical(&reader.ip) {
            Some(addr) => self.ips.iter().any(|i| canonical(i) == Some(addr)),
            None => self.ips.contains(&reader.ip),
        };
        by_ip
            || reader
                .labels
                .iter()
                .any(|(k, v)| self.labels.get(k).is_some_and(|vs| vs.contains(v)))
    }
}

/// A namespace (Nacos's tenant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its ID (what clients name it by).
    pub id: String,
    /// Its display name.
    pub name: String,
    /// A description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    /// When it was created (ms since the UNIX epoch).
    pub created_ms: i64,
}

/// Lower-case hex MD5 of `content` (Nacos's `Content-MD5` and listener probe).
pub fn md5_hex(content: &str) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(content.as_bytes());
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beta_covers_listed_addresses_and_labels() {
        let beta = Beta {
            content: "b".into(),
            md5: md5_hex("b"),
            kind: ContentType::Text,
            ips: vec!["10.0.0.1".into(), "::ffff:10.0.0.2".into()],
            labels: crate::rules::beta_labels("env=canary,env=staging,zone=a").expect("labels"),
            at_ms: 0,
            author: Author::default(),
        };
        assert!(beta.covers(&Reader::at("10.0.0.1")));
        // The same address written as IPv4-mapped IPv6.
        assert!(beta.covers(&Reader::at("10.0.0.2")));
        assert!(!beta.covers(&Reader::at("10.0.0.3")));
        let labelled = |k: &str, v: &str| Reader {
            ip: "10.0.0.9".into(),
            labels: [(k.to_string(), v.to_string())].into(),
        };
        assert!(beta.covers(&labelled("env", "staging")));
        assert!(beta.covers(&labelled("zone", "a")));
        assert!(!beta.covers(&labelled("env", "prod")));
        assert!(!beta.covers(&labelled("team", "canary")));
        assert!(crate::rules::beta_labels("env").is_err());
        assert!(crate::rules::beta_labels("=x").is_err());
        assert!(crate::rules::beta_labels("").expect("none").is_empty());
    }

    #[test]
    fn md5_is_lower_case_hex_of_utf8() {
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("a=1"), "3872c9ae3f427af0be0ead09d07ae2cf");
        // UTF-8, not UTF-16 or Latin-1.
        assert_eq!(md5_hex("\u{e9}"), "66ddcd97cfdeabb2f6fb8a999b4bc76f");
    }

    #[test]
    fn empty_namespace_is_public_and_tenant_hides_it() {
        let k = ItemKey::new("", "G", "d");
        assert_eq!(k.namespace, PUBLIC);
        assert_eq!(k.tenant(), "");
        assert_eq!(ItemKey::new("dev", "G", "d").tenant(), "dev");
    }

    #[test]
    fn types_parse_in_any_case() {
        assert_eq!(ContentType::parse("YAML"), Some(ContentType::Yaml));
        assert_eq!(ContentType::parse("yml"), Some(ContentType::Yaml));
        assert_eq!(
            ContentType::parse("properties"),
            Some(ContentType::Properties)
        );
        assert_eq!(ContentType::parse("docx"), None);
    }
}
