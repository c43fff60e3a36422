//! The trust policy: the one check of a node's certificate chain, made by both handshake
//! verifiers, by the re-check of live connections after a reload, by the check of a node's
//! own certificate, and by [`verify_node_chain`].
//!
//! One WebPKI call verifies the chain to the CA roots, the validity period at the given time,
//! the extended key usage of the holder's side, and (with revocation lists) the leaf's
//! revocation status. Then the leaf must have the usages of a node certificate
//! (`docs/PROTOCOL.md` §2.2) and name exactly one SPIFFE node id, of the cluster or node the
//! caller accepts.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{
    CertRevocationListError, CertificateError, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, SignatureScheme,
};

use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;

use super::identity::{excerpt, parse_certificate};
use super::{CaRoots, RevocationLists, SpiffeId, TlsError};

/// Everything a chain is checked against: the CA roots, the crypto provider and the
/// revocation lists. Shared by every verifier built from one `TlsContext`; a reload builds a
/// new one.
#[derive(Debug)]
pub(crate) struct TrustPolicy {
    /// The CA roots every chain must lead to.
    roots: Arc<RootCertStore>,
    /// The roots' subjects, which a listener names when it asks for a client certificate.
    root_subjects: Vec<DistinguishedName>,
    /// The crypto provider (ring) of every config and signature check.
    provider: Arc<CryptoProvider>,
    /// Leaves listed here are refused (empty: revocation is not checked).
    revocation: RevocationLists,
}

/// Which side of a handshake the certificate's holder is on: WebPKI checks the extended key
/// usage of that side (serverAuth or clientAuth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A listener (the certificate a dialler checks).
    Server,
    /// A dialler (the certificate a listener checks).
    Client,
}

/// Which SPIFFE ids a check accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Accept<'a> {
    /// Any node of any cluster (the caller checks the id).
    AnyNode,
    /// Any node of this cluster.
    NodeOf(&'a str),
    /// Exactly this node.
    Only(&'a SpiffeId),
}

/// Why a chain was refused, by the step that refused it.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// WebPKI refused the chain: issuer, signature, validity, extended key usage, revocation.
    Chain(rustls::Error),
    /// The leaf lacks the usages of a node certificate ([`TlsError::NotANodeCertificate`]),
    /// or an extension does not parse ([`TlsError::MalformedCertificate`]).
    NotANode(TlsError),
    /// The leaf names no node, several, or one that is not accepted.
    Identity(TlsError),
}

impl Refusal {
    /// The rustls error that aborts the handshake, which picks the TLS alert: WebPKI's own;
    /// `unsupported_certificate` for missing usages (`bad_certificate` if an extension does
    /// not parse); `certificate_unknown` for the wrong identity, whose full reason stays in
    /// the local error.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        let error = match self {
            Self::Chain(error) => return error,
            Self::NotANode(TlsError::NotANodeCertificate { .. }) => {
                CertificateError::InvalidPurpose
            }
            Self::NotANode(_) => CertificateError::BadEncoding,
            Self::Identity(error) => CertificateError::Other(OtherError(Arc::new(error))),
        };
        rustls::Error::InvalidCertificate(error)
    }
}

impl From<Refusal> for TlsError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Chain(error) => TlsError::Rustls(error),
            Refusal::NotANode(error) | Refusal::Identity(error) => error,
        }
    }
}

impl TrustPolicy {
    /// The policy of `roots`, with the ring provider and `revocation`.
    ///
    /// # Errors
    /// [`TlsError::Rustls`] if a root is unusable.
    pub(crate) fn new(roots: &CaRoots, revocation: RevocationLists) -> Result<Self, TlsError> {
        let roots = roots.root_store()?;
        Ok(Self {
            root_subjects: roots.subjects(),
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            revocation,
        })
    }

    /// The same policy with `revocation` instead of its lists.
    pub(crate) fn with_revocation(&self, revocation: RevocationLists) -> Self {
        Self {
            roots: Arc::clone(&self.roots),
            root_subjects: self.root_subjects.clone(),
            provider: Arc::clone(&self.provider),
            revocation,
        }
    }

    /// Checks `leaf` (with `intermediates`) at `now` for a holder on `side`: one WebPKI call
    /// (chain to the roots, validity, the side's extended key usage, revocation), then the
    /// node-certificate usages, then the SPIFFE id against `accept`. Returns the id.
    ///
    /// # Errors
    /// The [`Refusal`] of the first step that refuses.
    pub(crate) fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        side: Side,
        accept: Accept<'_>,
    ) -> Result<SpiffeId, Refusal> {
        let cert = webpki::EndEntityCert::try_from(leaf).map_err(pki_refusal)?;
        let usage = match side {
            Side::Server => webpki::KeyUsage::server_auth(),
            Side::Client => webpki::KeyUsage::client_auth(),
        };
        self.revocation
            .with_options(|revocation| {
                cert.verify_for_usage(
                    self.provider.signature_verification_algorithms.all,
                    &self.roots.roots,
                    intermediates,
                    now,
                    usage,
                    revocation,
                    None,
                )
                .map(drop)
            })
            .map_err(pki_refusal)?;
        // One parse of the leaf serves both the usages and the SPIFFE id.
        let parsed = parse_certificate(leaf).map_err(Refusal::NotANode)?;
        check_node_usages(&parsed).map_err(Refusal::NotANode)?;
        let id = SpiffeId::from_parsed(&parsed).map_err(Refusal::Identity)?;
        let expected = match accept {
            Accept::AnyNode => return Ok(id),
            Accept::NodeOf(cluster) if id.cluster() == cluster => return Ok(id),
            Accept::NodeOf(cluster) => format!("a node of cluster {cluster}"),
            Accept::Only(expected) if id == *expected => return Ok(id),
            Accept::Only(expected) => expected.to_uri(),
        };
        Err(Refusal::Identity(TlsError::IdentityMismatch {
            expected,
            found: id.to_uri(),
        }))
    }

    /// Checks a TLS 1.3 handshake signature made with `cert`'s key.
    pub(crate) fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    /// The signature schemes [`verify_signature`](Self::verify_signature) supports.
    pub(crate) fn signature_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    /// The subjects of the CA roots.
    pub(crate) fn root_subjects(&self) -> &[DistinguishedName] {
        &self.root_subjects
    }

    /// The crypto provider.
    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The number of CA roots.
    pub(crate) fn root_count(&self) -> usize {
        self.roots.len()
    }
}

/// Verifies that `chain` (the leaf first, then any intermediates) is a node certificate
/// chain leading to `roots`, valid now for both TLS server and client use, and returns the
/// SPIFFE id the leaf names. This is the check both sides of a handshake make, as an
/// operator's tool makes it before a certificate is deployed; revocation lists are not
/// consulted, and which cluster or node the leaf must name is left to the caller.
///
/// # Errors
/// [`TlsError::NoCertificate`] if `chain` is empty; [`TlsError::Rustls`] if the chain does
/// not verify (unknown issuer, bad signature, expired or not yet valid, wrong extended key
/// usage, a CA certificate as leaf) or a root is unusable; [`TlsError::NotANodeCertificate`]
/// if the leaf lacks `digitalSignature`, `serverAuth` or `clientAuth` (`docs/PROTOCOL.md`
/// §2.2); an error of [`SpiffeId::from_certificate`] if the leaf names no node or several.
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
    // Server use is what WebPKI checks; `check_node_usages` then requires client use too.
    let policy = TrustPolicy::new(roots, RevocationLists::none())?;
    Ok(policy.verify(leaf, intermediates, now, Side::Server, Accept::AnyNode)?)
}

/// Checks that a leaf certificate has the usages of a node certificate (`docs/PROTOCOL.md`
/// §2.2): a key usage extension with `digitalSignature`, and an extended key usage extension
/// with both `serverAuth` and `clientAuth`. WebPKI checks the one extended key usage a side
/// needs, and only when the extension is present; it does not check key usage at all.
///
/// # Errors
/// [`TlsError::NotANodeCertificate`] naming the missing usage;
/// [`TlsError::MalformedCertificate`] if an extension does not parse (or appears twice).
fn check_node_usages(cert: &X509Certificate<'_>) -> Result<(), TlsError> {
    let malformed = |e: X509Error| TlsError::MalformedCertificate {
        reason: excerpt(&e.to_string()),
    };
    let refuse = |reason| Err(TlsError::NotANodeCertificate { reason });
    match cert.key_usage().map_err(malformed)? {
        Some(usage) if usage.value.digital_signature() => {}
        Some(_) => return refuse("key usage lacks digitalSignature"),
        None => return refuse("no key usage extension (digitalSignature is required)"),
    }
    match cert.extended_key_usage().map_err(malformed)? {
        Some(usage) if usage.value.server_auth && usage.value.client_auth => Ok(()),
        Some(_) => refuse("extended key usage lacks serverAuth or clientAuth"),
        None => refuse("no extended key usage extension (serverAuth and clientAuth are required)"),
    }
}

/// A WebPKI refusal, with its error as rustls reports certificate errors (which picks the
/// TLS alert); errors without a rustls counterpart are kept as the source of
/// [`CertificateError::Other`].
fn pki_refusal(error: webpki::Error) -> Refusal {
    use webpki::Error as E;
    let error = match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::InvalidCertValidity => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        E::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }
        }
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::UnsupportedSignatureAlgorithmContext(cx) => {
            CertificateError::UnsupportedSignatureAlgorithmContext {
                signature_algorithm_id: cx.signature_algorithm_id,
                supported_algorithms: cx.supported_algorithms,
            }
        }
        E::UnsupportedSignatureAlgorithmForPublicKeyContext(cx) => {
            CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id: cx.signature_algorithm_id,
                public_key_algorithm_id: cx.public_key_algorithm_id,
            }
        }
        #[allow(deprecated)]
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose
        }
        E::IssuerNotCrlSigner => {
            return Refusal::Chain(CertRevocationListError::IssuerInvalidForCrl.into());
        }
        E::InvalidCrlSignatureForPublicKey => {
            return Refusal::Chain(CertRevocationListError::BadSignature.into());
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    Refusal::Chain(rustls::Error::InvalidCertificate(error))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};

    use super::*;
    use crate::tls::generate::test_support::{ca, node, node_of_cluster};

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
        let staging = node_of_cluster(&ca1, "staging", "n2");
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
