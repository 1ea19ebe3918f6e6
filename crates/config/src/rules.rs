//! What the configuration center accepts: names as Nacos allows them (so an item written
//! here can be written to Nacos too), a content within the size limit, a known type.

use crate::model::PUBLIC;
use crate::{ConfigError, ContentType, ItemKey};

/// Longest data ID (Nacos's column).
pub const MAX_DATA_ID: usize = 255;
/// Longest group.
pub const MAX_GROUP: usize = 128;
/// Longest namespace ID.
pub const MAX_NAMESPACE: usize = 128;
/// Longest description.
pub const MAX_DESC: usize = 256;
/// Longest application name.
pub const MAX_APP: usize = 128;
/// Most tags on an item.
pub const MAX_TAGS: usize = 16;
/// Longest tag.
pub const MAX_TAG: usize = 64;
/// The default content limit (`--config-max-content-bytes`).
pub const DEFAULT_MAX_CONTENT: usize = 100 * 1024;

fn name(what: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(format!("{what} is missing")));
    }
    if value.len() > max {
        return Err(ConfigError::invalid(format!(
            "{what} is {} bytes long, more than {max}",
            value.len()
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(ConfigError::invalid(format!(
            "{what} {value:?} holds {c:?}: only letters, digits and _ - . : are allowed"
        )));
    }
    Ok(())
}

/// Checks a namespace ID (`public`, or letters, digits, `_` and `-`).
pub fn namespace(id: &str) -> Result<(), ConfigError> {
    if id == PUBLIC {
        return Ok(());
    }
    if id.len() > MAX_NAMESPACE {
        return Err(ConfigError::invalid(format!(
            "namespace ID is {} bytes long, more than {MAX_NAMESPACE}",
            id.len()
        )));
    }
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(ConfigError::invalid(format!(
            "namespace ID {id:?} is invalid: only letters, digits, _ and - are allowed"
        )));
    }
    Ok(())
}

/// Checks an item's address.
pub fn key(k: &ItemKey) -> Result<(), ConfigError> {
    name("dataId", &k.data_id, MAX_DATA_ID)?;
    name("group", &k.group, MAX_GROUP)?;
    namespace(&k.namespace)
}

/// Checks a content against the limit.
pub fn content(content: &str, limit: usize) -> Result<(), ConfigError> {
    if content.trim().is_empty() {
        return Err(ConfigError::invalid("content is missing"));
    }
    if content.len() > limit {
        return Err(ConfigError::TooLarge {
            size: content.len(),
            limit,
        });
    }
    Ok(())
}

/// The content type a request names: none (or blank) is text; an unknown name is refused.
pub fn content_type(name: Option<&str>) -> Result<ContentType, ConfigError> {
    match name.map(str::trim) {
        None | Some("") => Ok(ContentType::Text),
        Some(t) => ContentType::parse(t).ok_or_else(|| {
            ConfigError::invalid(format!(
                "type {t:?} is not one of text, json, yaml, properties, xml, html, toml"
            ))
        }),
    }
}

/// Checks the descriptive attributes of an item.
pub fn attributes(desc: &str, app: &str, tags: &[String]) -> Result<(), ConfigError> {
    if desc.len() > MAX_DESC {
        return Err(ConfigError::invalid(format!(
            "desc is {} bytes long, more than {MAX_DESC}",
            desc.len()
        )));
    }
    if !app.is_empty() {
        name("appName", app, MAX_APP)?;
    }
    if tags.len() > MAX_TAGS {
        return Err(ConfigError::invalid(format!(
            "{} tags, more than {MAX_TAGS}",
            tags.len()
        )));
    }
    for t in tags {
        if t.is_empty() || t.len() > MAX_TAG || t.contains([',', '\0']) {
            return Err(ConfigError::invalid(format!(
                "tag {t:?} is invalid: 1 to {MAX_TAG} bytes, no commas"
            )));
        }
    }
    Ok(())
}

/// A beta's labels from `key=value` pairs, comma-separated (a key may come back with
/// another value).
pub fn beta_labels(
    list: &str,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>, ConfigError> {
    let mut labels =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| ConfigError::invalid(format!("beta label {pair:?} is not key=value")))?;
        labels
            .entry(k.to_string())
            .or_default()
            .insert(v.to_string());
    }
    Ok(labels)
}

/// Splits a comma-separated tag list (Nacos's `config_tags`), dropping empty entries.
pub fn split_tags(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// True when `value` matches `pattern`, where `*` matches any run of characters.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_nacos_allows_them() {
        assert!(key(&ItemKey::new("", "DEFAULT_GROUP", "app-1.yaml:v2")).is_ok());
        assert!(key(&ItemKey::new("dev_1", "G", "a")).is_ok());
        for (ns, g, d, says) in [
            ("", "G", "", "dataId is missing"),
            ("", "", "a", "group is missing"),
            ("", "G", "a b", "' '"),
            ("", "G", "a/b", "'/'"),
            ("", "G\0", "a", "'\\0'"),
            ("a.b", "G", "a", "namespace ID"),
        ] {
            let e = key(&ItemKey::new(ns, g, d)).expect_err(d).to_string();
            assert!(e.contains(says), "{e}");
        }
        let long = "a".repeat(MAX_DATA_ID + 1);
        assert!(key(&ItemKey::new("", "G", &long)).is_err());
    }

    #[test]
    fn content_needs_text_within_the_limit() {
        assert!(content("a=1", 10).is_ok());
        assert!(content("  ", 10).is_err());
        assert_eq!(
            content("0123456789a", 10),
            Err(ConfigError::TooLarge {
                size: 11,
                limit: 10
            })
        );
    }

    #[test]
    fn content_types_default_to_text() {
        assert_eq!(content_type(None), Ok(ContentType::Text));
        assert_eq!(content_type(Some(" ")), Ok(ContentType::Text));
        assert_eq!(content_type(Some("YAML")), Ok(ContentType::Yaml));
        assert!(content_type(Some("docx")).is_err_and(|e| e.to_string().contains("docx")));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("app*", "app.yaml"));
        assert!(wildcard("*.yaml", "app.yaml"));
        assert!(wildcard("a*m*l", "app.yaml"));
        assert!(!wildcard("a*x*l", "app.yaml"));
        assert!(wildcard("*", ""));
        assert!(wildcard("exact", "exact") && !wildcard("exact", "exactly"));
    }

    #[test]
    fn tags_split_and_checked() {
        assert_eq!(split_tags("a, b,,c"), vec!["a", "b", "c"]);
        assert!(attributes("", "", &split_tags("a,b")).is_ok());
        assert!(attributes("", "my app", &[]).is_err());
        assert!(attributes(&"d".repeat(MAX_DESC + 1), "", &[]).is_err());
    }
}
