//! Verifying a node's certificate chain against CA roots outside a TLS handshake, as an
//! operator's tool does before a certificate is deployed.
//!
//! The checks are the ones both sides of a handshake make (rustls's WebPKI verification):
//! the chain leads to one of the roots, every certificate in it is valid now, the leaf may be
//! used both as a TLS server (serverAuth) and as a TLS client (clientAuth), and it names
//! exactly one SPIFFE node id. Which cluster or node it must name is left to the caller.

use std::sync::Arc;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

use super::{CaRoots, SpiffeId, TlsError};

/// Checks that a leaf certificate has the usages of a node certificate (`docs/PROTOCOL.md`
/// §2.2): a key usage extension with `digitalSignature`, and an extended key usage extension
/// with both `serverAuth` and `clientAuth`. WebPKI checks the one extended key usage each side
/// of a handshake needs, and only when the extension is present; it does not check key usage
/// at all. Both verifiers run this after the chain verified.
///
/// # Errors
/// [`TlsError::NotANodeCertificate`] naming the missing usage;
/// [`TlsError::MalformedCertificate`] if the certificate or an extension does not parse (or
/// an extension appears twice).
pub(crate) fn check_node_usages(leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
    let malformed = |e: &dyn std::fmt::Display| TlsError::MalformedCertificate {
        reason: super::identity::excerpt(&e.to_string()),
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| malformed(&e))?;
    let refuse = |reason| Err(TlsError::NotANodeCertificate { reason });
    match cert.key_usage().map_err(|e| malformed(&e))? {
        Some(usage) if usage.value.digital_signature() => {}
        Some(_) => return refuse("key usage lacks digitalSignature"),
        None => return refuse("no key usage extension (digitalSignature is required)"),
    }
    match cert.extended_key_usage().map_err(|e| malformed(&e))? {
        Some(usage) if usage.value.server_auth && usage.value.client_auth => Ok(()),
        Some(_) => refuse("extended key usage lacks serverAuth or clientAuth"),
        None => refuse("no extended key usage extension (serverAuth and clientAuth are required)"),
    }
}

/// Verifies that `chain` (the leaf first, then any intermediates) is a node certificate
/// chaining to `roots`, valid now for both TLS server and client use, and returns the SPIFFE
/// id the leaf names.
///
/// # Errors
/// [`TlsError::NoCertificate`] if `chain` is empty; [`TlsError::Rustls`] if the chain does
/// not verify (unknown issuer, bad signature, expired or not yet valid, wrong extended key
/// usage, a CA certificate as leaf); [`TlsError::NotANodeCertificate`] if the leaf lacks
/// `digitalSignature`, `serverAuth` or `clientAuth` (`docs/PROTOCOL.md` §2.2); [`TlsError::ClientVerifier`] if `roots` cannot be used; an error of
/// [`SpiffeId::from_certificate`] if the leaf names no node or several.
pub fn verify_node_chain(
    chain: &[CertificateDer<'_>],
    roots: &CaRoots,
) -> Result<SpiffeId, TlsError> {
    verify_node_chain_at(chain, roots, UnixTime::now())
}

/// [`verify_node_chain`] at the time `now`.
fn verify_node_chain_at(
    chain: &[CertificateDer<'_>],
    roots: &CaRoots,
    now: UnixTime,
) -> Result<SpiffeId, TlsError> {
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| TlsError::NoCertificate {
        what: "the certificate chain".to_owned(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let store = Arc::new(roots.root_store()?);

    // As a server: what a dialler checks.
    let parsed = ParsedCertificate::try_from(leaf)?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )?;

    // As a client: what a listener checks.
    WebPkiClientVerifier::builder_with_provider(store, provider)
        .build()?
        .verify_client_cert(leaf, intermediates, now)?;

    check_node_usages(leaf)?;
    SpiffeId::from_certificate(leaf)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};

    use super::*;
    use crate::tls::NodeCertOptions;
    use crate::tls::generate::test_support::{ca, node, node_with};

    #[test]
    fn a_node_of_the_ca_verifies_and_names_its_id() {
        let ca = ca("prod");
        let n1 = node(&ca, "n1");
        let id = verify_node_chain(n1.identity.chain(), &ca.roots()).expect("chains");
        assert_eq!(id.to_uri(), "spiffe://prod/node/n1");
        // With the CA certificate appended, as some deployments ship it.
        let mut chain = n1.identity.chain().to_vec();
        chain.push(ca.roots().certificates()[0].clone());
        assert_eq!(verify_node_chain(&chain, &ca.roots()).expect("chains"), id);
    }

    #[test]
    fn another_ca_expired_and_empty_are_refused() {
        let ca1 = ca("prod");
        let ca2 = ca("prod");
        let n1 = node(&ca1, "n1");
        let err = verify_node_chain(n1.identity.chain(), &ca2.roots()).expect_err("other CA");
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");

        // Default node certificates are valid for 365 days.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(
            UnixTime::now().as_secs() + 400 * 86_400,
        ));
        let err = verify_node_chain_at(n1.identity.chain(), &ca1.roots(), later)
            .expect_err("expired by then");
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");

        assert!(matches!(
            verify_node_chain(&[], &ca1.roots()),
            Err(TlsError::NoCertificate { .. })
        ));

        // The CA certificate is not a node certificate.
        assert!(verify_node_chain(ca1.roots().certificates(), &ca1.roots()).is_err());

        // A certificate of another cluster still chains: the caller checks the cluster.
        let staging = node_with(&ca1, "n2", &NodeCertOptions::default().cluster("staging"));
        let id = verify_node_chain(staging.identity.chain(), &ca1.roots()).expect("chains");
        assert_eq!(id.cluster(), "staging");
    }

    #[test]
    fn node_usages_and_a_spiffe_id_are_required() {
        let ca = ca("prod");
        let issue_with =
            |ku: Vec<KeyUsagePurpose>, eku: Vec<ExtendedKeyUsagePurpose>, uri: Option<&str>| {
                let mut params = CertificateParams::default();
                params.key_usages = ku;
                params.extended_key_usages = eku;
                if let Some(uri) = uri {
                    params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("IA5"))];
                }
                let key = KeyPair::generate().expect("key");
                let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), {
                    KeyPair::from_pem(&ca.key_pem()).expect("CA key")
                })
                .expect("issuer");
                let cert = params.signed_by(&key, &issuer).expect("signed");
                vec![cert.der().clone()]
            };
        let issue = |eku, uri| issue_with(vec![KeyUsagePurpose::DigitalSignature], eku, uri);
        let uri = Some("spiffe://prod/node/n1");
        let server_only = issue(vec![ExtendedKeyUsagePurpose::ServerAuth], uri);
        assert!(verify_node_chain(&server_only, &ca.roots()).is_err());
        let client_only = issue(vec![ExtendedKeyUsagePurpose::ClientAuth], uri);
        assert!(verify_node_chain(&client_only, &ca.roots()).is_err());
        let both = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        assert!(verify_node_chain(&issue(both.clone(), uri), &ca.roots()).is_ok());
        // WebPKI alone accepts these; the node-certificate check does not.
        let refused = |chain: Vec<CertificateDer<'static>>| {
            matches!(
                verify_node_chain(&chain, &ca.roots()),
                Err(TlsError::NotANodeCertificate { .. })
            )
        };
        assert!(refused(issue(vec![], uri)), "no extended key usage");
        assert!(
            refused(issue_with(vec![], both.clone(), uri)),
            "no key usage"
        );
        assert!(
            refused(issue_with(
                vec![KeyUsagePurpose::KeyCertSign],
                both.clone(),
                uri
            )),
            "keyCertSign only"
        );
        assert!(matches!(
            verify_node_chain(&issue(both, None), &ca.roots()),
            Err(TlsError::NoSpiffeId)
        ));
    }
}
