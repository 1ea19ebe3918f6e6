//! TLS material read from files and re-read when the files change, as etcd re-reads its
//! certificates for every handshake: rotating a certificate or a CA bundle needs no restart.
//! [`Followed`] is the mechanism, for any value made from files; [`ReloadingCert`] is the
//! certificate one side presents (a server's, or a client's to its server), and
//! [`super::trust`] has the CA bundles that verify the other end.
//!
//! Each use (a handshake) compares the files' stamps (size, modification time, inode) with
//! the last ones read, a `stat` per file; only a change reads and parses them again. A new
//! file that is broken (or a certificate written before its key) keeps the old value and
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

fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths.iter().map(|p| stamp(p)).collect()
}

/// Reads a value from its files; its error names the file at fault.
type Reader<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// The loaded value and the stamps of the files it was (last tried to be) read from.
struct Loaded<T> {
    value: T,
    stamps: Vec<Option<Stamp>>,
}

/// A value made from files, made again when they change.
pub struct Followed<T> {
    files: Vec<PathBuf>,
    /// What the value is, for the log ("TLS certificate", "trusted CA").
    what: &'static str,
    read: Reader<T>,
    /// A std mutex: held for a `stat` and a compare per handshake (and a reload when the
    /// files changed), never across an await; handshakes are not the request path.
    loaded: Mutex<Loaded<T>>,
}

impl<T> fmt::Debug for Followed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Followed")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish()
    }
}

impl<T: Clone> Followed<T> {
    /// Reads the value from `files` with `read` now (a start-up error names the file).
    pub fn new(
        files: Vec<PathBuf>,
        what: &'static str,
        read: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Followed<T>, TlsError> {
        // Stamped before reading: a change while reading is seen at the next use.
        let stamps = stamps(&files);
        let value = read()?;
        Ok(Followed {
            files,
            what,
            read: Box::new(read),
            loaded: Mutex::new(Loaded { value, stamps }),
        })
    }

    /// The files followed.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The value to use now, read again first if its files changed.
    pub fn current(&self) -> T {
        let (value, failed) = self.check();
        if let Some(e) = failed {
            tracing::error!(
                error = %e,
                files = ?self.files,
                "{} files changed but cannot be used; keeping the previous one",
                self.what
            );
        }
        value
    }

    /// The value now, and the error of a reload that failed in this call (a broken change
    /// is reported by the first use that sees it, not by every use after).
    fn check(&self) -> (T, Option<TlsError>) {
        let mut loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = stamps(&self.files);
        let mut failed = None;
        if now != loaded.stamps {
            // Recorded before reading: a broken file is reported once, not per handshake.
            loaded.stamps = now;
            match (self.read)() {
                Ok(v) => {
                    tracing::info!(files = ?self.files, "{} reloaded", self.what);
                    loaded.value = v;
                }
                Err(e) => failed = Some(e),
            }
        }
        (loaded.value.clone(), failed)
    }
}

/// Where a side's certificate comes from.
enum Source {
    /// Files (certificate, key), re-read when they change.
    Files(Followed<Arc<CertifiedKey>>),
    /// A certificate made in memory (`--auto-tls`).
    Fixed(Arc<CertifiedKey>),
}

/// A certificate that follows its files. Serves as a rustls server certificate resolver and
/// as a client certificate resolver alike.
pub struct ReloadingCert(Source);

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Files(followed) => f
                .debug_tuple("ReloadingCert")
                .field(&followed.files())
                .finish(),
            Source::Fixed(_) => f.write_str("ReloadingCert(self-signed)"),
        }
    }
}

impl ReloadingCert {
    /// Reads `cert` and `key` now (a start-up error names the file at fault).
    pub fn from_files(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let (c, k) = (cert.to_path_buf(), key.to_path_buf());
        let followed = Followed::new(vec![c.clone(), k.clone()], "TLS certificate", move || {
            files::certified_key(&c, &k, &provider())
        })?;
        Ok(ReloadingCert(Source::Files(followed)))
    }

    /// A certificate that never changes.
    pub fn fixed(key: Arc<CertifiedKey>) -> ReloadingCert {
        ReloadingCert(Source::Fixed(key))
    }

    /// The certificate to present now, read again first if its files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match &self.0 {
            Source::Fixed(k) => k.clone(),
            Source::Files(followed) => followed.current(),
        }
    }
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

    #[test]
    fn a_broken_change_is_reported_once_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("value.txt");
        std::fs::write(&file, "one").expect("write");
        let f = file.clone();
        let read = move || {
            let text = std::fs::read_to_string(&f).map_err(|error| TlsError::Read {
                path: f.clone(),
                error,
            })?;
            if text.starts_with("bad") {
                return Err(TlsError::NoCertificate { path: f.clone() });
            }
            Ok(text)
        };
        let followed = Followed::new(vec![file.clone()], "test value", read).expect("new");
        let (v, failed) = followed.check();
        assert_eq!((v.as_str(), failed.is_none()), ("one", true));
        std::fs::write(&file, "bad and longer").expect("write");
        let (v, failed) = followed.check();
        assert_eq!(v, "one");
        let e = failed.expect("the broken change is reported").to_string();
        assert!(e.contains("value.txt"), "{e}");
        // Reported once: the same broken file is not read again.
        let (v, failed) = followed.check();
        assert_eq!((v.as_str(), failed.is_none()), ("one", true));
        std::fs::write(&file, "two").expect("write");
        assert_eq!(followed.current(), "two");
    }
}
