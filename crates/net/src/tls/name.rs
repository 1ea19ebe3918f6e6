//! The subject common name (CN) of a DER certificate, read with a small DER walker: the
//! one field berth needs from a client certificate (etcd maps it to a user) does not
//! justify an X.509 parsing crate.

/// A DER element: its tag, its contents, and the bytes after it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// `[0]`: the certificate version, when present.
const VERSION: u8 = 0xa0;
/// 2.5.4.3, commonName.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// The subject's common name, if the certificate has one (the last, as Go reports it).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == VERSION {
        rest = after;
    }
    // serial, signature algorithm, issuer, validity, then the subject.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut subject, _) = element(rest)? else {
        return None;
    };
    let mut found = None;
    while !subject.is_empty() {
        let (tag, rdn, after) = element(subject)?;
        subject = after;
        if tag != SET {
            return None;
        }
        let mut atvs = rdn;
        while !atvs.is_empty() {
            let (_, atv, after) = element(atvs)?;
            atvs = after;
            let (OID, oid, value) = element(atv)? else {
                return None;
            };
            if oid == CN_OID {
                let (_, text, _) = element(value)?;
                found = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_subject_cn_and_not_the_issuers() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "the issuer");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        leaf.distinguished_name
            .push(rcgen::DnType::OrganizationName, "berth");
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).expect("leaf");
        assert_eq!(common_name(leaf.der()).as_deref(), Some("alice"));
        assert_eq!(common_name(ca_cert.der()).as_deref(), Some("the issuer"));
        let mut none = rcgen::CertificateParams::new(vec!["x".into()]).expect("params");
        none.distinguished_name = rcgen::DistinguishedName::new();
        let none = none.self_signed(&key).expect("self-signed");
        assert_eq!(common_name(none.der()), None);
        assert_eq!(common_name(b"\x30\x82garbage"), None);
        assert_eq!(common_name(&[]), None);
    }
}
