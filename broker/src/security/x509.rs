//! The one thing the broker reads out of a client certificate: the subject's common
//! name, which names the principal of a mutual-TLS connection.
//!
//! The certificate has already been verified by rustls (chain, validity, signature)
//! when this runs, so a full X.509 parser would only re-check what is known; this walks
//! the DER just far enough to reach the subject. It still treats its input as hostile:
//! every length is checked against what is left, each loop consumes at least two
//! bytes, and any surprise is `None` (a property test feeds it random bytes).

/// DER tags met on the way to the common name.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const EXPLICIT_0: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// One DER element at the start of `b`: its tag, its contents and what follows it.
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |l, &x| (l << 8) | usize::from(x));
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// An element that must carry `tag`.
fn expect(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(b)? {
        (t, body, rest) if t == tag => Some((body, rest)),
        _ => None,
    }
}

/// The first common name (CN) of the certificate's subject, if it has one in UTF-8
/// (or the ASCII string types, which are UTF-8 too).
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((EXPLICIT_0, _, after)) = element(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer, validity: skipped.
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (mut rdns, _) = expect(rest, SEQUENCE)?;
    while !rdns.is_empty() {
        let (mut set, after) = expect(rdns, SET)?;
        rdns = after;
        while !set.is_empty() {
            let (atv, after) = expect(set, SEQUENCE)?;
            set = after;
            let (oid, value) = expect(atv, OID)?;
            if oid == COMMON_NAME {
                let (_, text, _) = element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_common_name_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Weir tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "orders-service");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("orders-service")
        );
    }

    #[test]
    fn a_certificate_without_a_common_name_has_none() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_common_name(cert.der()), None);
    }

    proptest! {
        /// Random bytes, and certificates cut short or with a byte changed, never
        /// panic the reader.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = subject_common_name(&bytes);
        }

        #[test]
        fn damaged_certificates_never_panic(cut in 0usize..2000, at in 0usize..2000, byte: u8) {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, "svc");
            let key = rcgen::KeyPair::generate().unwrap();
            let mut der = params.self_signed(&key).unwrap().der().to_vec();
            if at < der.len() {
                der[at] = byte;
            }
            der.truncate(cut.min(der.len()));
            let _ = subject_common_name(&der);
        }
    }
}
