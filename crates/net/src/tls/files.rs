//! Reads certificates, private keys and CA bundles from PEM files. Every error names the file
//! and says what is wrong (missing, unreadable, not PEM, no certificate in it, the key does
//! not match), so that a start-up failure or a failed rotation can be fixed from the log.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;

/// The file's bytes.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn not_pem(path: &Path, e: pem::Error) -> TlsError {
    TlsError::NotPem {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(not_pem(path, e)),
    }
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(cert)?;
    let der = private_key(key)?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            why: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // The key type cannot say (rustls' "unknown"): the handshake will tell.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.to_path_buf(),
            why: e.to_string(),
        }),
    }
}

/// The CA certificates of a trust bundle.
pub fn trust_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("generate");
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn errors_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let provider = crate::tls::provider();
        let (cert, key) = pair("a");
        let (_, other_key) = pair("b");
        std::fs::write(p("cert.pem"), &cert).expect("write");
        std::fs::write(p("key.pem"), &key).expect("write");
        std::fs::write(p("other-key.pem"), &other_key).expect("write");
        std::fs::write(p("text.pem"), "hello\n").expect("write");
        std::fs::write(p("broken.pem"), "-----BEGIN CERTIFICATE-----\n!!!\n").expect("write");
        assert!(certified_key(&p("cert.pem"), &p("key.pem"), &provider).is_ok());
        let msg = |r: Result<Arc<CertifiedKey>, TlsError>| r.err().map(|e| e.to_string());
        let m = msg(certified_key(&p("missing.pem"), &p("key.pem"), &provider)).expect("err");
        assert!(
            m.contains("missing.pem") && m.contains("cannot read"),
            "{m}"
        );
        let m = msg(certified_key(&p("text.pem"), &p("key.pem"), &provider)).expect("err");
        assert!(
            m.contains("text.pem") && m.contains("no CERTIFICATE"),
            "{m}"
        );
        let m = msg(certified_key(&p("broken.pem"), &p("key.pem"), &provider)).expect("err");
        assert!(m.contains("broken.pem") && m.contains("PEM"), "{m}");
        let m = msg(certified_key(&p("cert.pem"), &p("cert.pem"), &provider)).expect("err");
        assert!(
            m.contains("cert.pem") && m.contains("no PRIVATE KEY"),
            "{m}"
        );
        let m = msg(certified_key(
            &p("cert.pem"),
            &p("other-key.pem"),
            &provider,
        ))
        .expect("err");
        assert!(
            m.contains("other-key.pem") && m.contains("does not match"),
            "{m}"
        );
    }
}
