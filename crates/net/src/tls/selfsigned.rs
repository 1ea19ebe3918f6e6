//! `--auto-tls` and `--peer-auto-tls`: a self-signed certificate for the listeners' hosts,
//! generated at start-up and kept in memory, as etcd generates one (rcgen's default validity:
//! a new one is made at every start). Nothing can
//! verify it, so a side with auto TLS does not verify the certificates it is shown either
//! (etcd's choice for auto TLS peers).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{provider, TlsError};

/// A self-signed certificate for `hosts` (IP addresses or DNS names).
pub fn generate(hosts: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
    let fail = |e: rcgen::Error| TlsError::SelfSigned(e.to_string());
    let mut hosts: Vec<String> = hosts.to_vec();
    if hosts.is_empty() {
        hosts.push("localhost".into());
    }
    let mut params = rcgen::CertificateParams::new(hosts).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "berth");
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    Ok(Arc::new(CertifiedKey::from_der(chain, der, &provider())?))
}
