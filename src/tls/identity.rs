//! SPIFFE node identities: `spiffe://<cluster>/node/<node-id>`.
//!
//! A node's identity lives in its certificate as a URI subject alternative name in the
//! SPIFFE X.509-SVID form. This module validates the two parts (the cluster name is a SPIFFE
//! trust domain, the node id a single URI path segment), formats and parses the URI, and
//! extracts the identity from a DER certificate.
//!
//! [`SpiffeId::from_certificate`] reads bytes that a remote peer chose: it never panics and
//! reports every malformed input as a [`TlsError`].

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::TlsError;

/// The URI scheme and authority separator that starts every SPIFFE id.
const SCHEME_PREFIX: &str = "spiffe://";

/// The scheme part of [`SCHEME_PREFIX`], for the case-insensitive scheme test.
const SCHEME: &[u8] = b"spiffe:";

/// The path that precedes the node id in a quicraft SPIFFE id.
const NODE_PATH: &str = "node/";

/// The longest cluster name (SPIFFE trust domain) accepted, in bytes.
pub(crate) const MAX_CLUSTER_NAME_LEN: usize = 255;

/// The longest node id accepted, in bytes.
pub(crate) const MAX_NODE_ID_LEN: usize = 128;

/// How many characters of an untrusted string an error message keeps.
const EXCERPT_LEN: usize = 96;

/// A node's identity: the cluster it belongs to and its node (server) id.
///
/// Always valid: both parts passed [`validate_cluster_name`] and [`validate_node_id`].
/// Its URI form is `spiffe://<cluster>/node/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    cluster: String,
    node: String,
}

impl SpiffeId {
    /// Builds an identity from a cluster name and a node id, validating both.
    ///
    /// # Errors
    /// [`TlsError::InvalidClusterName`] or [`TlsError::InvalidNodeId`].
    pub fn new(cluster: impl Into<String>, node: impl Into<String>) -> Result<Self, TlsError> {
        let cluster = cluster.into();
        let node = node.into();
        validate_cluster_name(&cluster)?;
        validate_node_id(&node)?;
        Ok(Self { cluster, node })
    }

    /// The cluster name (the SPIFFE trust domain).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The node (server) id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The URI form, `spiffe://<cluster>/node/<node>`.
    pub fn to_uri(&self) -> String {
        self.to_string()
    }

    /// Parses the URI form `spiffe://<cluster>/node/<node>`.
    ///
    /// The parse is strict: lowercase scheme, no port, user info, query, fragment or
    /// percent-encoding, and exactly the two path segments `node` and the node id.
    ///
    /// # Errors
    /// [`TlsError::InvalidSpiffeId`] naming what is wrong.
    pub fn parse_uri(uri: &str) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::InvalidSpiffeId {
            uri: excerpt(uri),
            reason,
        };
        let rest = uri
            .strip_prefix(SCHEME_PREFIX)
            .ok_or_else(|| invalid(format!("does not start with {SCHEME_PREFIX:?}")))?;
        let (cluster, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("has no path (expected /node/<id>)".to_owned()))?;
        validate_cluster_name(cluster).map_err(|e| invalid(e.to_string()))?;
        let node = path
            .strip_prefix(NODE_PATH)
            .ok_or_else(|| invalid("path is not /node/<id>".to_owned()))?;
        validate_node_id(node).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
        })
    }

    /// Extracts the identity from a DER-encoded X.509 certificate.
    ///
    /// The certificate must carry exactly one `spiffe:` URI subject alternative name, of the
    /// form `spiffe://<cluster>/node/<node>`. Other URI SANs (another scheme) are ignored, as
    /// are DNS and IP SANs. The scheme is compared case-insensitively when counting, so a
    /// `SPIFFE://...` SAN counts as a (malformed) SPIFFE id rather than being skipped.
    ///
    /// This only reads the certificate: it checks neither its signature nor its validity
    /// period (the certificate verifiers of the TLS configurations do that).
    ///
    /// # Errors
    /// [`TlsError::MalformedCertificate`], [`TlsError::NoSpiffeId`],
    /// [`TlsError::MultipleSpiffeIds`] or [`TlsError::InvalidSpiffeId`].
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, TlsError> {
        Self::from_parsed(&parse_certificate(cert)?)
    }

    /// [`SpiffeId::from_certificate`] of a certificate already parsed.
    pub(crate) fn from_parsed(parsed: &X509Certificate<'_>) -> Result<Self, TlsError> {
        let san = parsed
            .subject_alternative_name()
            .map_err(|e| TlsError::MalformedCertificate {
                reason: excerpt(&format!("subject alternative names: {e}")),
            })?
            .ok_or(TlsError::NoSpiffeId)?;

        let mut spiffe_uris = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if has_spiffe_scheme(uri) => Some(*uri),
                _ => None,
            });
        let first = spiffe_uris.next().ok_or(TlsError::NoSpiffeId)?;
        let others = spiffe_uris.count();
        if others > 0 {
            return Err(TlsError::MultipleSpiffeIds { count: others + 1 });
        }
        Self::parse_uri(first)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME_PREFIX}{}/{NODE_PATH}{}",
            self.cluster, self.node
        )
    }
}

impl FromStr for SpiffeId {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_uri(s)
    }
}

/// Checks that `name` can be a cluster name: a SPIFFE trust domain of 1 to 255 characters,
/// each a lowercase letter `a-z`, a digit, `.`, `-` or `_`.
///
/// # Errors
/// [`TlsError::InvalidClusterName`] with the reason.
pub fn validate_cluster_name(name: &str) -> Result<(), TlsError> {
    let invalid = |reason: String| TlsError::InvalidClusterName {
        name: excerpt(name),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("is empty".to_owned()));
    }
    if name.len() > MAX_CLUSTER_NAME_LEN {
        return Err(invalid(format!(
            "is {} bytes long, the limit is {MAX_CLUSTER_NAME_LEN}",
            name.len()
        )));
    }
    if let Some((index, c)) = name
        .char_indices()
        .find(|&(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(invalid(format!(
            "character {c:?} at byte {index} is not allowed \
             (only lowercase a-z, 0-9, '.', '-', '_')"
        )));
    }
    Ok(())
}

/// Checks that `id` can be a node id: one URI path segment of 1 to 128 characters, each a
/// letter, a digit, `-`, `.`, `_` or `~`, and neither `.` nor `..`.
///
/// # Errors
/// [`TlsError::InvalidNodeId`] with the reason.
pub fn validate_node_id(id: &str) -> Result<(), TlsError> {
    let invalid = |reason: String| TlsError::InvalidNodeId {
        id: excerpt(id),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("is empty".to_owned()));
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(invalid(format!(
            "is {} bytes long, the limit is {MAX_NODE_ID_LEN}",
            id.len()
        )));
    }
    if id == "." || id == ".." {
        return Err(invalid("is a relative path segment".to_owned()));
    }
    if let Some((index, c)) = id
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
    {
        return Err(invalid(format!(
            "character {c:?} at byte {index} is not allowed \
             (only A-Z, a-z, 0-9, '-', '.', '_', '~')"
        )));
    }
    Ok(())
}

/// Whether a URI's scheme is `spiffe`, compared without regard to ASCII case.
fn has_spiffe_scheme(uri: &str) -> bool {
    uri.as_bytes()
        .get(..SCHEME.len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SCHEME))
}

/// Parses a DER X.509 certificate, refusing trailing bytes.
///
/// # Errors
/// [`TlsError::MalformedCertificate`] with the parser's (shortened) reason.
pub(crate) fn parse_certificate<'a>(
    cert: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, TlsError> {
    let (remainder, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        TlsError::MalformedCertificate {
            reason: excerpt(&e.to_string()),
        }
    })?;
    if !remainder.is_empty() {
        return Err(TlsError::MalformedCertificate {
            reason: format!("{} bytes of trailing data", remainder.len()),
        });
    }
    Ok(parsed)
}

/// A short, escaped copy of an untrusted string, safe to put into an error message or a log
/// line (bounded length, no control characters).
pub(crate) fn excerpt(s: &str) -> String {
    crate::sanitize::excerpt(s, EXCERPT_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::test_support;
    use crate::tls::generate::{ClusterCa, NodeCertOptions};

    #[test]
    fn cluster_name_table() {
        let long_ok = "a".repeat(MAX_CLUSTER_NAME_LEN);
        let too_long = "a".repeat(MAX_CLUSTER_NAME_LEN + 1);
        let good = [
            "prod",
            "a",
            "example.org",
            "eu-west_1.prod",
            "0",
            long_ok.as_str(),
        ];
        for name in good {
            assert!(
                validate_cluster_name(name).is_ok(),
                "{name:?} should be valid"
            );
        }
        let bad = [
            "",
            "Prod",
            "PROD",
            "prod/x",
            "prod%20",
            "prod:7000",
            "prod name",
            "user@prod",
            "pröd",
            "prod?x",
            "prod#x",
            too_long.as_str(),
        ];
        for name in bad {
            let err = validate_cluster_name(name).expect_err(name);
            assert!(matches!(err, TlsError::InvalidClusterName { .. }), "{err}");
        }
    }

    #[test]
    fn node_id_table() {
        let long_ok = "n".repeat(MAX_NODE_ID_LEN);
        let too_long = "n".repeat(MAX_NODE_ID_LEN + 1);
        let good = [
            "n1",
            "N1",
            "node-1.eu_west~2",
            "...",
            ".hidden",
            "~",
            long_ok.as_str(),
        ];
        for id in good {
            assert!(validate_node_id(id).is_ok(), "{id:?} should be valid");
        }
        let bad = [
            "",
            ".",
            "..",
            "n/1",
            "/",
            "n%2F1",
            "%",
            "n 1",
            "n:1",
            "n?1",
            "n#1",
            "n@1",
            "nœud",
            "n\n1",
            too_long.as_str(),
        ];
        for id in bad {
            let err = validate_node_id(id).expect_err(id);
            assert!(matches!(err, TlsError::InvalidNodeId { .. }), "{err}");
        }
    }

    #[test]
    fn new_validates_both_parts() {
        let id = SpiffeId::new("prod", "n1").expect("valid");
        assert_eq!(id.cluster(), "prod");
        assert_eq!(id.node(), "n1");
        assert!(matches!(
            SpiffeId::new("Prod", "n1"),
            Err(TlsError::InvalidClusterName { .. })
        ));
        assert!(matches!(
            SpiffeId::new("prod", ".."),
            Err(TlsError::InvalidNodeId { .. })
        ));
    }

    #[test]
    fn uri_round_trip() {
        let id = SpiffeId::new("eu.prod", "n-1_~.x").expect("valid");
        let uri = id.to_uri();
        assert_eq!(uri, "spiffe://eu.prod/node/n-1_~.x");
        assert_eq!(id.to_string(), uri);
        assert_eq!(SpiffeId::parse_uri(&uri).expect("parses"), id);
        assert_eq!(uri.parse::<SpiffeId>().expect("parses"), id);
    }

    #[test]
    fn parse_uri_rejects_malformed() {
        let bad = [
            "",
            "spiffe://",
            "spiffe://prod",
            "spiffe://prod/",
            "spiffe://prod/node",
            "spiffe://prod/node/",
            "spiffe://prod/node/n1/",
            "spiffe://prod/node/n1/x",
            "spiffe://prod/node/..",
            "spiffe://prod/node/n%31",
            "spiffe://prod/nodes/n1",
            "spiffe://prod/workload/n1",
            "spiffe://prod//node/n1",
            "spiffe://Prod/node/n1",
            "spiffe://prod:443/node/n1",
            "spiffe://user@prod/node/n1",
            "spiffe://prod/node/n1?x=1",
            "spiffe://prod/node/n1#frag",
            "SPIFFE://prod/node/n1",
            "spiffe:/prod/node/n1",
            "https://prod/node/n1",
            " spiffe://prod/node/n1",
            "spiffe://prod/node/n1 ",
        ];
        for uri in bad {
            let err = SpiffeId::parse_uri(uri).expect_err(uri);
            assert!(matches!(err, TlsError::InvalidSpiffeId { .. }), "{err}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_escaped() {
        let long = "x".repeat(10_000);
        assert!(excerpt(&long).len() < 200);
        assert_eq!(excerpt("a\nb"), "a\\nb");
    }

    #[test]
    fn from_certificate_reads_node_identity() {
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n7");
        let id = SpiffeId::from_certificate(node.identity.leaf()).expect("has id");
        assert_eq!(id, SpiffeId::new("prod", "n7").expect("valid"));
    }

    #[test]
    fn from_certificate_ca_has_no_identity() {
        let ca = test_support::ca("prod");
        let roots = ca.roots();
        let ca_cert = roots.certificates().first().expect("one root");
        assert!(matches!(
            SpiffeId::from_certificate(ca_cert),
            Err(TlsError::NoSpiffeId)
        ));
    }

    #[test]
    fn from_certificate_rejects_two_spiffe_ids() {
        let ca = test_support::ca("prod");
        let opts = NodeCertOptions::default().extra_uri_sans(["spiffe://prod/node/n2"]);
        let (cert, _key) = ca.issue_node_cert("n1", &opts).expect("issued");
        assert!(matches!(
            SpiffeId::from_certificate(cert.der()),
            Err(TlsError::MultipleSpiffeIds { count: 2 })
        ));
        // A differently-cased scheme still counts as a SPIFFE id.
        let opts = NodeCertOptions::default().extra_uri_sans(["SPIFFE://prod/node/n2"]);
        let (cert, _key) = ca.issue_node_cert("n1", &opts).expect("issued");
        assert!(matches!(
            SpiffeId::from_certificate(cert.der()),
            Err(TlsError::MultipleSpiffeIds { count: 2 })
        ));
    }

    #[test]
    fn from_certificate_ignores_other_uri_sans() {
        let ca = test_support::ca("prod");
        let opts = NodeCertOptions::default()
            .extra_uri_sans(["https://n1.example.org/", "urn:example:n1"]);
        let (cert, _key) = ca.issue_node_cert("n1", &opts).expect("issued");
        let id = SpiffeId::from_certificate(cert.der()).expect("one spiffe id");
        assert_eq!(id.node(), "n1");
    }

    #[test]
    fn from_certificate_rejects_malformed_spiffe_san() {
        let ca = test_support::ca("prod");
        let opts = NodeCertOptions::default();
        // Built without a spiffe SAN of our own, with a malformed one instead.
        let (cert, _key) = ca
            .issue_raw_cert("n1", vec!["spiffe://prod/workload/n1".to_owned()], &opts)
            .expect("issued");
        assert!(matches!(
            SpiffeId::from_certificate(cert.der()),
            Err(TlsError::InvalidSpiffeId { .. })
        ));
        let (cert, _key) = ca
            .issue_raw_cert("n1", vec!["https://example.org/".to_owned()], &opts)
            .expect("issued");
        assert!(matches!(
            SpiffeId::from_certificate(cert.der()),
            Err(TlsError::NoSpiffeId)
        ));
    }

    #[test]
    fn from_certificate_survives_garbage() {
        let ca: ClusterCa = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        let der = node.identity.leaf().as_ref().to_vec();
        assert!(SpiffeId::from_certificate(&CertificateDer::from(Vec::new())).is_err());
        assert!(SpiffeId::from_certificate(&CertificateDer::from(vec![0x30, 0x84])).is_err());
        // Every truncation fails cleanly.
        for len in 0..der.len() {
            let cut = CertificateDer::from(&der[..len]);
            assert!(
                SpiffeId::from_certificate(&cut).is_err(),
                "truncated at {len}"
            );
        }
        // Trailing bytes are rejected.
        let mut long = der.clone();
        long.push(0);
        assert!(matches!(
            SpiffeId::from_certificate(&CertificateDer::from(long)),
            Err(TlsError::MalformedCertificate { .. })
        ));
        // Flipping any single byte never panics (it may or may not still parse).
        for i in 0..der.len() {
            let mut bent = der.clone();
            bent[i] ^= 0xff;
            let _ = SpiffeId::from_certificate(&CertificateDer::from(bent));
        }
    }
}
