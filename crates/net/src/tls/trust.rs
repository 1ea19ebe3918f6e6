//! The CA bundles that verify the other end (`--trusted-ca-file`, `--peer-trusted-ca-file`,
//! a CLI's `--cacert`), re-read when the file changes as certificates are (see
//! [`super::reload`]): replacing a CA file takes effect at the next handshake, no restart;
//! a broken new file keeps the previous CAs and logs an error naming the file.
//!
//! - [`ReloadingClientVerifier`]: a server's check of client certificates. It sends no hints
//!   of acceptable CAs with its certificate request (rustls lends the hint list out by
//!   reference, which a reloaded bundle cannot back); TLS then has a client send the
//!   certificate it has, which is what etcd's clients hold: one.
//! - [`ReloadingServerVerifier`]: a client's check of the server (outgoing peer and client
//!   connections).
//!
//! Both delegate to rustls' webpki verifiers, rebuilt from the file when it changes.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::reload::Followed;
use super::{files, TlsError};

/// The CA bundle in `ca` as a shared root store.
fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    Ok(Arc::new(files::trust_roots(ca)?))
}

fn unusable(ca: &Path, why: impl ToString) -> TlsError {
    TlsError::BadCertificate {
        path: ca.to_path_buf(),
        why: why.to_string(),
    }
}

fn verify12(
    crypto: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &crypto.signature_verification_algorithms,
    )
}

fn verify13(
    crypto: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &crypto.signature_verification_algorithms,
    )
}

/// A server's verifier of client certificates against a CA file it follows. Client
/// certificates are required.
#[derive(Debug)]
pub struct ReloadingClientVerifier {
    ca: Followed<Arc<dyn ClientCertVerifier>>,
    crypto: Arc<CryptoProvider>,
}

impl ReloadingClientVerifier {
    /// Reads `ca` now (a start-up error names the file).
    pub fn from_file(
        ca: &Path,
        crypto: Arc<CryptoProvider>,
    ) -> Result<ReloadingClientVerifier, TlsError> {
        let (path, provider) = (ca.to_path_buf(), crypto.clone());
        let ca = Followed::new(vec![path.clone()], "trusted CA", move || {
            WebPkiClientVerifier::builder_with_provider(roots(&path)?, provider.clone())
                .build()
                .map_err(|e| unusable(&path, e))
        })?;
        Ok(ReloadingClientVerifier { ca, crypto })
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.ca
            .current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(&self.crypto, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(&self.crypto, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.crypto
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client's verifier of the server's certificate against a CA file it follows.
#[derive(Debug)]
pub struct ReloadingServerVerifier {
    ca: Followed<Arc<WebPkiServerVerifier>>,
    crypto: Arc<CryptoProvider>,
}

impl ReloadingServerVerifier {
    /// Reads `ca` now (a start-up error names the file).
    pub fn from_file(
        ca: &Path,
        crypto: Arc<CryptoProvider>,
    ) -> Result<ReloadingServerVerifier, TlsError> {
        let (path, provider) = (ca.to_path_buf(), crypto.clone());
        let ca = Followed::new(vec![path.clone()], "trusted CA", move || {
            WebPkiServerVerifier::builder_with_provider(roots(&path)?, provider.clone())
                .build()
                .map_err(|e| unusable(&path, e))
        })?;
        Ok(ReloadingServerVerifier { ca, crypto })
    }
}

impl ServerCertVerifier for ReloadingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.ca.current().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(&self.crypto, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(&self.crypto, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.crypto
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A test CA.
    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::new()).expect("params");
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("{name} CA"));
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let cert = p.self_signed(&key).expect("CA");
            Ca { cert, key }
        }

        /// A certificate for localhost with subject `cn`, for server and client use.
        fn issue(&self, cn: &str) -> CertificateDer<'static> {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("p");
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign");
            cert.der().clone()
        }

        /// Puts this CA into `file` as a rotation does: a new file renamed over the old.
        fn install(&self, file: &Path) {
            let tmp = file.with_extension("new");
            std::fs::write(&tmp, self.cert.pem()).expect("write");
            std::fs::rename(&tmp, file).expect("rename");
        }
    }

    fn crypto() -> Arc<CryptoProvider> {
        Arc::new(crate::tls::provider())
    }

    fn ca_file(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("ca.pem")
    }

    #[test]
    fn a_servers_client_ca_follows_its_file_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = ca_file(&dir);
        let (one, two) = (Ca::new("one"), Ca::new("two"));
        let (alice, bob) = (one.issue("alice"), two.issue("bob"));
        one.install(&file);
        let v = ReloadingClientVerifier::from_file(&file, crypto()).expect("load");
        let accepts =
            |c: &CertificateDer<'_>| v.verify_client_cert(c, &[], UnixTime::now()).is_ok();
        assert!(accepts(&alice) && !accepts(&bob));
        two.install(&file);
        assert!(accepts(&bob) && !accepts(&alice));
        // Broken, then gone: the last good CA stays.
        std::fs::write(&file, "not a certificate").expect("write");
        assert!(accepts(&bob) && !accepts(&alice));
        std::fs::remove_file(&file).expect("rm");
        assert!(accepts(&bob) && !accepts(&alice));
        one.install(&file);
        assert!(accepts(&alice) && !accepts(&bob));
        assert!(v.client_auth_mandatory());
    }

    #[test]
    fn a_clients_server_ca_follows_its_file_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = ca_file(&dir);
        let (one, two) = (Ca::new("one"), Ca::new("two"));
        let (first, second) = (one.issue("first"), two.issue("second"));
        one.install(&file);
        let v = ReloadingServerVerifier::from_file(&file, crypto()).expect("load");
        let name = ServerName::try_from("localhost").expect("name");
        let accepts = |c: &CertificateDer<'_>| {
            v.verify_server_cert(c, &[], &name, &[], UnixTime::now())
                .is_ok()
        };
        assert!(accepts(&first) && !accepts(&second));
        two.install(&file);
        assert!(accepts(&second) && !accepts(&first));
        std::fs::write(&file, "-----BEGIN CERTIFICATE-----\n!!!\n").expect("write");
        assert!(accepts(&second) && !accepts(&first));
    }

    #[test]
    fn a_bad_ca_file_at_start_up_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = ca_file(&dir);
        std::fs::write(&file, "hello\n").expect("write");
        let e = ReloadingClientVerifier::from_file(&file, crypto()).expect_err("no CA");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        let e = ReloadingServerVerifier::from_file(&dir.path().join("missing.pem"), crypto())
            .expect_err("no file");
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
