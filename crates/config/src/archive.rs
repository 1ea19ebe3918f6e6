//! A namespace as a `.tar.gz`: each item's content as the file `<group>/<data id>`, and
//! `.berth/items.json` with what a file cannot say (type, description, tags, application).
//! Reading checks every entry: a path that is not `group/dataId` with valid names, a file
//! over the content limit, or a damaged archive is an error that names it, and nothing of a
//! bad archive is returned.

use std::collections::HashMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::{rules, ConfigError, ContentType};

/// The manifest's path in the archive.
pub const MANIFEST: &str = ".berth/items.json";
/// Most entries read from one archive.
pub const MAX_ENTRIES: usize = 100_000;
/// Most bytes one archive may unpack to (a small gzip can expand a thousandfold).
pub const MAX_TOTAL: u64 = 256 << 20;

/// One item in an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The group.
    pub group: String,
    /// The data ID.
    #[serde(rename = "dataId")]
    pub data_id: String,
    /// The content (not in the manifest: in the entry's file).
    #[serde(skip)]
    pub content: String,
    /// The type.
    #[serde(rename = "type", default)]
    pub kind: ContentType,
    /// The description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    /// The tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The application.
    #[serde(rename = "appName", default, skip_serializing_if = "String::is_empty")]
    pub app: String,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    namespace: String,
    items: Vec<Entry>,
}

fn bad(why: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(format!("archive: {why}"))
}

/// Packs `entries` (of namespace `namespace`) as a `.tar.gz`.
pub fn pack(namespace: &str, entries: &[Entry]) -> Result<Vec<u8>, ConfigError> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| -> Result<(), ConfigError> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data).map_err(bad)
    };
    let manifest = Manifest {
        format: 1,
        namespace: namespace.to_string(),
        items: entries.to_vec(),
    };
    add(
        MANIFEST,
        &serde_json::to_vec_pretty(&manifest).map_err(bad)?,
    )?;
    for e in entries {
        add(&format!("{}/{}", e.group, e.data_id), e.content.as_bytes())?;
    }
    tar.into_inner().and_then(|gz| gz.finish()).map_err(bad)
}

/// Reads a `.tar.gz` made by [`pack`] (or by hand: files `group/dataId`, the manifest
/// optional), checking each entry against `max_content`.
pub fn unpack(data: &[u8], max_content: usize) -> Result<Vec<Entry>, ConfigError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(data));
    let mut files: Vec<(String, String, String)> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut total: u64 = 0;
    for (n, entry) in tar.entries().map_err(bad)?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("{path}: not a regular file")));
        }
        let limit = if path == MANIFEST {
            64 << 20
        } else {
            max_content
        };
        if entry.size() > limit as u64 {
            return Err(ConfigError::TooLarge {
                size: usize::try_from(entry.size()).unwrap_or(usize::MAX),
                limit,
            });
        }
        total = total.saturating_add(entry.size());
        if total > MAX_TOTAL {
            return Err(bad(format!("unpacks to more than {MAX_TOTAL} bytes")));
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| bad(format!("{path}: {e}")))?;
        if path == MANIFEST {
            manifest = Some(serde_json::from_str(&text).map_err(|e| bad(format!("{path}: {e}")))?);
            continue;
        }
        let Some((group, data_id)) = path.split_once('/') else {
            return Err(bad(format!("{path}: expected group/dataId")));
        };
        let key = crate::ItemKey::new("", group, data_id);
        rules::key(&key).map_err(|e| bad(format!("{path}: {e}")))?;
        rules::content(&text, max_content).map_err(|e| match e {
            ConfigError::Invalid(why) => bad(format!("{path}: {why}")),
            other => other,
        })?;
        files.push((group.to_string(), data_id.to_string(), text));
    }
    let mut meta: HashMap<(String, String), Entry> = manifest
        .map(|m| {
            m.items
                .into_iter()
                .map(|e| ((e.group.clone(), e.data_id.clone()), e))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(files.len());
    for (group, data_id, content) in files {
        let mut e = meta
            .remove(&(group.clone(), data_id.clone()))
            .unwrap_or(Entry {
                group: group.clone(),
                data_id: data_id.clone(),
                content: String::new(),
                kind: ContentType::Text,
                desc: String::new(),
                tags: Vec::new(),
                app: String::new(),
            });
        rules::attributes(&e.desc, &e.app, &e.tags)
            .map_err(|why| bad(format!("{group}/{data_id}: {why}")))?;
        e.content = content;
        out.push(e);
    }
    if let Some(((g, d), _)) = meta.into_iter().next() {
        return Err(bad(format!("{MANIFEST} lists {g}/{d}, which has no file")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(g: &str, d: &str, content: &str) -> Entry {
        Entry {
            group: g.into(),
            data_id: d.into(),
            content: content.into(),
            kind: ContentType::Yaml,
            desc: "d".into(),
            tags: vec!["t".into()],
            app: "app".into(),
        }
    }

    #[test]
    fn pack_then_unpack_gives_the_items_back() {
        let items = vec![entry("G", "a.yaml", "a: 1\n"), entry("H", "b", "x")];
        let data = pack("dev", &items).expect("pack");
        assert_eq!(unpack(&data, 1024).expect("unpack"), items);
    }

    #[test]
    fn bad_archives_are_refused_with_the_entry_named() {
        assert!(unpack(b"not a tarball", 1024).is_err());
        let big = pack("p", &[entry("G", "big", &"x".repeat(2000))]).expect("pack");
        assert!(matches!(
            unpack(&big, 1000),
            Err(ConfigError::TooLarge { limit: 1000, .. })
        ));
        let bad_name = pack("p", &[entry("G", "a b", "x")]).expect("pack");
        let e = unpack(&bad_name, 1000).expect_err("bad name").to_string();
        assert!(e.contains("G/a b"), "{e}");
    }
}
