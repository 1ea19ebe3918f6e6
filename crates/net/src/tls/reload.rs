//! The certificate one side presents (a server's, or a client's to its server), re-read when
//! its files change, as etcd re-reads them for every handshake: rotating a certificate needs
//! no restart. Each handshake compares the files' stamps (size, modification time, inode) with
//! the last ones read, a `stat` per file; only a change reads and parses them again. A new
//! file that is broken (or a certificate written before its key) keeps the old certificate and
//! logs an error naming the file, once per change.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use super::{files, provider, TlsError};

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// The loaded certificate and the stamps of the files it was (last tried to be) read from.
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<Stamp>, Option<Stamp>),
}

/// Where a side's certificate comes from.
enum Source {
    /// Files, re-read when they change.
    Files {
        cert: PathBuf,
        key: PathBuf,
        /// A std mutex: held for a `stat` and a compare per handshake (and a reload when
        /// the files changed), never across an await; handshakes are not the request path.
        loaded: Mutex<Loaded>,
    },
    /// A certificate made in memory (`--auto-tls`).
    Fixed(Arc<CertifiedKey>),
}

/// A certificate that follows its files. Serves as a rustls server certificate resolver and
/// as a client certificate resolver alike.
pub struct ReloadingCert(Source);

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Files { cert, key, .. } => f
                .debug_struct("ReloadingCert")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            Source::Fixed(_) => f.write_str("ReloadingCert(self-signed)"),
        }
    }
}

impl ReloadingCert {
    /// Reads `cert` and `key` now (a start-up error names the file at fault).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let stamps = (stamp(cert), stamp(key));
        let loaded = files::certified_key(cert, key, &provider())?;
        Ok(ReloadingCert(Source::Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: Mutex::new(Loaded {
                key: loaded,
                stamps,
            }),
        }))
    }

    /// A certificate that never changes.
    pub fn fixed(key: Arc<CertifiedKey>) -> ReloadingCert {
        ReloadingCert(Source::Fixed(key))
    }

    /// The certificate to present now, read again first if its files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match &self.0 {
            Source::Fixed(k) => k.clone(),
            Source::Files { cert, key, loaded } => reload_if_changed(cert, key, loaded),
        }
    }
}

fn reload_if_changed(cert: &Path, key: &Path, loaded: &Mutex<Loaded>) -> Arc<CertifiedKey> {
    let mut loaded = match loaded.lock() {
        Ok(l) => l,
        Err(poisoned) => poisoned.into_inner(),
    };
    let now = (stamp(cert), stamp(key));
    if now != loaded.stamps {
        // Recorded before reading: a broken file is reported once, not per handshake.
        loaded.stamps = now;
        match files::certified_key(cert, key, &provider()) {
            Ok(k) => {
                tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate reloaded");
                loaded.key = k;
            }
            Err(e) => tracing::error!(
                error = %e,
                "TLS certificate files changed but cannot be used; keeping the previous certificate"
            ),
        }
    }
    loaded.key.clone()
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, cn: &str) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
    }

    fn cn(c: &ReloadingCert) -> Option<String> {
        crate::tls::name::common_name(c.current().end_entity_cert().ok()?)
    }

    #[test]
    fn follows_its_files_and_keeps_the_old_one_when_the_new_is_broken() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "first");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let c = ReloadingCert::from_files(&cert, &key).expect("load");
        assert_eq!(cn(&c).as_deref(), Some("first"));
        write_pair(dir.path(), "second");
        assert_eq!(cn(&c).as_deref(), Some("second"));
        std::fs::write(&cert, "not a certificate").expect("write");
        assert_eq!(cn(&c).as_deref(), Some("second"));
        std::fs::remove_file(&key).expect("rm");
        assert_eq!(cn(&c).as_deref(), Some("second"));
        write_pair(dir.path(), "third");
        assert_eq!(cn(&c).as_deref(), Some("third"));
    }
}
