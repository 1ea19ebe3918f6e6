//! The gateway's TLS: certificates from the gateway's `ssls`, chosen by the client's SNI
//! (exact names first, then the longest `*.suffix`) from the snapshot at each handshake, so a
//! certificate change applies to the next handshake with nothing restarted. A client without
//! SNI, or with a name no certificate covers, fails the handshake (as APISIX's).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use berth_gateway::model::HostPattern;
use berth_gateway::Ssl;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Gateway;

/// Certificates by the names they serve.
#[derive(Debug, Default)]
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By suffix (with its dot), longest first.
    suffix: Vec<(String, Arc<CertifiedKey>)>,
}

/// Parsed certificates by their PEM, so a rebuild does not parse them again.
static PARSED: Mutex<Option<HashMap<u64, Arc<CertifiedKey>>>> = Mutex::new(None);

fn pem_hash(ssl: &Ssl) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&ssl.cert, &ssl.key).hash(&mut h);
    h.finish()
}

/// Parses an ssl's certificate chain and key and checks that they belong together.
pub fn load(ssl: &Ssl) -> Result<Arc<CertifiedKey>, String> {
    certified(&ssl.cert, &ssl.key)
}

/// Parses a PEM certificate chain and key and checks that they belong together.
pub fn certified(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let (chain, der) = parse_pem(cert, key)?;
    let provider = berth_net::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("failed to parse key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err("the key does not belong to the certificate".into()),
    }
}

/// A PEM certificate chain (at least one) and private key.
pub fn parse_pem(
    cert: &str,
    key: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("failed to parse cert: {e}"))?;
    if chain.is_empty() {
        return Err("failed to parse cert: no certificate in \"cert\"".into());
    }
    let der = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("failed to parse key: {e}"))?;
    Ok((chain, der))
}

impl Certs {
    /// Indexes the enabled certificates of `ssls` (ID order: the first one listed for a
    /// name serves it).
    pub fn build<'a>(ssls: impl Iterator<Item = (&'a String, &'a Ssl)>) -> Certs {
        let mut guard = PARSED.lock().unwrap_or_else(|p| p.into_inner());
        let old = guard.take().unwrap_or_default();
        let mut kept = HashMap::new();
        let mut certs = Certs::default();
        for (id, ssl) in ssls.filter(|(_, s)| s.enabled && !s.client) {
            let h = pem_hash(ssl);
            let key = match old.get(&h).or_else(|| kept.get(&h)) {
                Some(k) => Arc::clone(k),
                None => match load(ssl) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::error!(ssl = %id, error = %e, "gateway: skipping a certificate");
                        continue;
                    }
                },
            };
            kept.insert(h, key.clone());
            for sni in &ssl.snis {
                match sni {
                    HostPattern::Exact(name) => {
                        certs
                            .exact
                            .entry(name.clone())
                            .or_insert_with(|| key.clone());
                    }
                    HostPattern::Suffix(s) => {
                        if !certs.suffix.iter().any(|(x, _)| x == s) {
                            certs.suffix.push((s.clone(), key.clone()));
                        }
                    }
                }
            }
        }
        certs.suffix.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        *guard = Some(kept);
        certs
    }

    /// The certificate for `sni`.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        self.suffix
            .iter()
            .find(|(s, _)| s.is_empty() || (name.ends_with(s.as_str()) && name.len() > s.len()))
            .map(|(_, k)| k.clone())
    }
}

/// Resolves certificates from the gateway's current snapshot.
#[derive(Debug)]
struct Resolver(Arc<Gateway>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("revision", &self.applied_revision())
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.0.snapshot().certs.find(hello.server_name());
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "gateway: no certificate for the client's name");
        }
        found
    }
}

/// The TLS server configuration of `https://` gateway listeners: certificates by SNI from
/// the snapshot, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(gateway: Arc<Gateway>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(berth_net::tls::provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions();
    let mut config = match builder {
        Ok(b) => b
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(gateway))),
        Err(e) => {
            // ring supports the default versions: this cannot happen.
            tracing::error!(error = %e, "gateway TLS configuration");
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver(gateway)))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
