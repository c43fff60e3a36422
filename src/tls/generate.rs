//! Generating a cluster CA and node certificates with rcgen.
//!
//! Keys are ECDSA P-256. The CA is self-signed and may only sign certificates and CRLs. Node
//! certificates carry the node's SPIFFE id as a URI SAN, its DNS names and IP addresses as
//! further SANs, and both the serverAuth and clientAuth extended key usages, because every
//! node both listens and dials.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use super::identity::excerpt;
use super::{CaRoots, Identity, SpiffeId, TlsError, validate_cluster_name, validate_node_id};

/// How long a generated CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3650);

/// How far in the past generated certificates start, to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::hours(1);

/// How long a node certificate is valid by default.
const NODE_VALIDITY: Duration = Duration::days(365);

/// Length in bytes of the random serial numbers given to certificates.
const SERIAL_LEN: usize = 16;

/// A cluster's certificate authority: a self-signed CA certificate and its key, which signs
/// the certificates of the cluster's nodes.
///
/// `Debug` output never includes the private key.
pub struct ClusterCa {
    cluster: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// Generates a new CA for `cluster`: an ECDSA P-256 key and a self-signed certificate
    /// (CN `quicraft <cluster> CA`, basic constraints CA without path length limit, key usages
    /// keyCertSign and cRLSign) valid from an hour ago for ten years.
    ///
    /// # Errors
    /// [`TlsError::InvalidClusterName`] or [`TlsError::Generation`].
    pub fn generate(cluster: &str) -> Result<Self, TlsError> {
        Self::generate_with(cluster, None, CA_VALIDITY)
    }

    /// Like [`ClusterCa::generate`], with the subject's common name (`None`: `quicraft
    /// <cluster> CA <creation time>`, distinct per CA) and how long the certificate is valid
    /// from now (it starts an hour ago, to tolerate clock skew) chosen by the caller.
    ///
    /// # Errors
    /// [`TlsError::InvalidClusterName`]; [`TlsError::InvalidCa`] if `valid_for` is not
    /// positive or ends past the year 9999, or the common name is empty;
    /// [`TlsError::Generation`].
    pub fn generate_with(
        cluster: &str,
        common_name: Option<&str>,
        valid_for: Duration,
    ) -> Result<Self, TlsError> {
        validate_cluster_name(cluster)?;
        let invalid = |reason: String| TlsError::InvalidCa { reason };
        let common_name = match common_name {
            Some("") => return Err(invalid("the common name is empty".to_owned())),
            Some(name) => name.to_owned(),
            // A distinct name per CA: chains and revocation lists are matched to their CA by
            // name, so two CAs of one cluster (during a rotation) must not share one.
            None => format!("quicraft {cluster} CA {}", now_tag()),
        };
        let now = OffsetDateTime::now_utc();
        let not_after = now
            .checked_add(valid_for)
            .filter(|end| valid_for.is_positive() && end.year() <= 9999)
            .ok_or_else(|| {
                invalid(format!(
                    "a validity of {valid_for} is not positive or ends past the year 9999"
                ))
            })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cluster: cluster.to_owned(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA of `cluster` from its PEM certificate and PEM private key, to
    /// issue more node certificates.
    ///
    /// # Errors
    /// [`TlsError::InvalidClusterName`]; PEM errors; [`TlsError::InvalidCa`] if the
    /// certificate is not a CA certificate or the key is not its key; [`TlsError::Generation`]
    /// if rcgen cannot use the key or certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str, cluster: &str) -> Result<Self, TlsError> {
        validate_cluster_name(cluster)?;
        let roots = CaRoots::from_pem(cert_pem.as_bytes())?;
        let [cert_der] = roots.certificates() else {
            return Err(TlsError::InvalidCa {
                reason: format!(
                    "expected exactly one CA certificate, found {}",
                    roots.certificates().len()
                ),
            });
        };
        let key = KeyPair::from_pem(key_pem)?;
        check_ca_certificate(cert_der, &key)?;
        let issuer = Issuer::from_ca_cert_der(cert_der, key)?;
        Ok(Self {
            cluster: cluster.to_owned(),
            cert_der: cert_der.clone(),
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The cluster this CA issues certificates for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM (PKCS#8). Secret: keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The CA certificate as the trust anchor nodes verify their peers against.
    pub fn roots(&self) -> CaRoots {
        CaRoots {
            certs: vec![self.cert_der.clone()],
        }
    }

    /// Issues a certificate and a fresh ECDSA P-256 key for node `node` of this CA's cluster.
    ///
    /// The certificate carries the URI SAN `spiffe://<cluster>/node/<node>`, the DNS and IP
    /// SANs of `opts`, CN `node`, key usage digitalSignature, extended key usages serverAuth
    /// and clientAuth, and the validity period of `opts` (which may lie in the past).
    ///
    /// # Errors
    /// [`TlsError::InvalidNodeId`], [`TlsError::InvalidValidity`], [`TlsError::Generation`] (e.g. a DNS name rcgen cannot
    /// encode), or any error of [`Identity::new`].
    pub fn issue_node(
        &self,
        node: &str,
        opts: &NodeCertOptions,
    ) -> Result<GeneratedNode, TlsError> {
        let (cert, key) = self.issue_node_cert(node, opts)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let identity = Identity::new(vec![cert.der().clone()], key_der)?;
        Ok(GeneratedNode {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            identity,
        })
    }

    /// Issues a node certificate without wrapping it into an [`Identity`], so that
    /// certificates an `Identity` would refuse (several SPIFFE ids) can be made for tests.
    pub(crate) fn issue_node_cert(
        &self,
        node: &str,
        opts: &NodeCertOptions,
    ) -> Result<(Certificate, KeyPair), TlsError> {
        validate_node_id(node)?;
        let id = SpiffeId::new(self.cluster.as_str(), node)?;
        let mut uris = vec![id.to_uri()];
        uris.extend(opts.extra_uri_sans.iter().cloned());
        self.issue_raw_cert(node, uris, opts)
    }

    /// Issues an end-entity certificate with common name `common_name`, exactly the URI SANs
    /// `uris`, and the DNS/IP SANs and validity of `opts` (its extra URIs are not used here).
    pub(crate) fn issue_raw_cert(
        &self,
        common_name: &str,
        uris: Vec<String>,
        opts: &NodeCertOptions,
    ) -> Result<(Certificate, KeyPair), TlsError> {
        if opts.not_before >= opts.not_after {
            return Err(TlsError::InvalidValidity {
                not_before: opts.not_before,
                not_after: opts.not_after,
            });
        }
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        let mut sans = Vec::with_capacity(uris.len() + opts.dns_names.len() + opts.ips.len());
        for uri in uris {
            sans.push(SanType::URI(Ia5String::try_from(uri)?));
        }
        for dns in &opts.dns_names {
            sans.push(SanType::DnsName(Ia5String::try_from(dns.as_str())?));
        }
        sans.extend(opts.ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = opts.not_before;
        params.not_after = opts.not_after;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key))
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster", &self.cluster)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Options for [`ClusterCa::issue_node`]; build with `NodeCertOptions::default()` and the
/// setters.
///
/// Defaults: DNS name `localhost`, IP addresses `127.0.0.1` and `::1`, valid from an hour ago
/// (computed when `default()` is called) for 365 days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertOptions {
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    extra_uri_sans: Vec<String>,
}

impl Default for NodeCertOptions {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            dns_names: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            not_before: now - BACKDATE,
            not_after: now + NODE_VALIDITY,
            extra_uri_sans: Vec::new(),
        }
    }
}

impl NodeCertOptions {
    /// Replaces the DNS SANs.
    #[must_use]
    pub fn dns_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dns_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the IP address SANs.
    #[must_use]
    pub fn ip_addresses(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ips = ips.into_iter().collect();
        self
    }

    /// Sets the start of the validity period.
    #[must_use]
    pub fn not_before(mut self, at: OffsetDateTime) -> Self {
        self.not_before = at;
        self
    }

    /// Sets the end of the validity period; a time in the past issues an already expired
    /// certificate.
    #[must_use]
    pub fn not_after(mut self, at: OffsetDateTime) -> Self {
        self.not_after = at;
        self
    }

    /// Adds URI SANs after the SPIFFE id (for tests of certificates with unusual SANs).
    #[cfg(test)]
    #[must_use]
    pub(crate) fn extra_uri_sans<I, S>(mut self, uris: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_uri_sans.extend(uris.into_iter().map(Into::into));
        self
    }
}

/// A freshly issued node certificate and key, in PEM (to write to files) and as an
/// [`Identity`] (to use at once).
///
/// `Debug` output never includes the private key.
#[derive(Clone)]
pub struct GeneratedNode {
    /// The node certificate in PEM (the leaf only: the CA certificate is distributed as the
    /// roots).
    pub cert_pem: String,
    /// The node's private key in PEM (PKCS#8). Secret.
    pub key_pem: String,
    /// The same certificate and key, loaded.
    pub identity: Identity,
}

impl fmt::Debug for GeneratedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedNode")
            .field("identity", &self.identity)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The creation time as `YYYYMMDDTHHMMSS.nnnnnnnnnZ`, to tell CAs of one cluster apart.
fn now_tag() -> String {
    let now = OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:09}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    )
}

/// A random positive serial number of [`SERIAL_LEN`] bytes.
fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; SERIAL_LEN];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(rustls::Error::from)?;
    // Clear the top bit so the DER INTEGER is positive; set the next one so it keeps its
    // full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Checks that `cert_der` is a CA certificate whose public key is `key`'s.
fn check_ca_certificate(cert_der: &CertificateDer<'_>, key: &KeyPair) -> Result<(), TlsError> {
    let invalid = |reason: String| TlsError::InvalidCa { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der.as_ref()).map_err(|e| {
        invalid(format!(
            "certificate does not parse: {}",
            excerpt(&e.to_string())
        ))
    })?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(format!("basic constraints: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(invalid("certificate is not a CA certificate".to_owned()));
    }
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(invalid(
            "the key does not belong to the certificate".to_owned(),
        ));
    }
    Ok(())
}

/// Revocation lists, signed by the CA.
impl ClusterCa {
    /// A certificate revocation list signed by this CA that revokes `revoked` (matched by
    /// serial number), numbered `crl_number` (increase it with each new list) and valid for
    /// `valid_for`. Load it on every node with
    /// [`RevocationLists::from_pem`](super::RevocationLists::from_pem).
    ///
    /// # Errors
    /// [`TlsError::MalformedCertificate`] if a revoked certificate does not parse,
    /// [`TlsError::Generation`] if rcgen cannot sign the list.
    pub fn revocation_list_pem(
        &self,
        revoked: &[&CertificateDer<'_>],
        crl_number: u64,
        valid_for: Duration,
    ) -> Result<String, TlsError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
                    TlsError::MalformedCertificate {
                        reason: excerpt(&e.to_string()),
                    }
                })?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + valid_for,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Shared setup for the TLS layer's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{ClusterCa, GeneratedNode, NodeCertOptions};
    use crate::tls::TlsContext;

    /// A new CA for `cluster`.
    pub(crate) fn ca(cluster: &str) -> ClusterCa {
        ClusterCa::generate(cluster).expect("CA generation")
    }

    /// A node certificate with default options.
    pub(crate) fn node(ca: &ClusterCa, node: &str) -> GeneratedNode {
        node_with(ca, node, &NodeCertOptions::default())
    }

    /// A node certificate naming `cluster`, signed by `ca` (whose own cluster may be another):
    /// the same CA loaded for that cluster issues it.
    pub(crate) fn node_of_cluster(ca: &ClusterCa, cluster: &str, node: &str) -> GeneratedNode {
        let key = ca.key_pem();
        let as_other = ClusterCa::from_pem(ca.cert_pem(), &key, cluster).expect("CA reloads");
        self::node(&as_other, node)
    }

    /// A node certificate with `opts`.
    pub(crate) fn node_with(ca: &ClusterCa, node: &str, opts: &NodeCertOptions) -> GeneratedNode {
        ca.issue_node(node, opts).expect("node certificate")
    }

    /// A TLS context for `node` of the CA's cluster, with `opts`, trusting `ca`.
    pub(crate) fn context_with(ca: &ClusterCa, node: &str, opts: &NodeCertOptions) -> TlsContext {
        let identity = node_with(ca, node, opts).identity;
        TlsContext::new(ca.cluster(), identity, ca.roots()).expect("TLS context")
    }

    /// A TLS context for `node` of the CA's cluster, trusting `ca`.
    pub(crate) fn context(ca: &ClusterCa, node: &str) -> TlsContext {
        context_with(ca, node, &NodeCertOptions::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn ca_certificate_shape() {
        let ca = ClusterCa::generate("prod").expect("CA");
        let der = ca.roots().certificates()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parses");
        assert!(cert.is_ca());
        let ku = cert.key_usage().expect("ok").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let cn = cert.subject().iter_common_name().next().expect("CN");
        let cn = cn.as_str().expect("utf8");
        assert!(cn.starts_with("quicraft prod CA "), "{cn}");
        // Two CAs of one cluster never share a name (revocation lists are matched by name).
        let other = ClusterCa::generate("prod").expect("CA");
        let other_der = other.roots().certificates()[0].clone();
        let (_, other_cert) =
            x509_parser::parse_x509_certificate(other_der.as_ref()).expect("parses");
        assert_ne!(other_cert.subject(), cert.subject());
        assert!(matches!(
            ClusterCa::generate("Prod"),
            Err(TlsError::InvalidClusterName { .. })
        ));
    }

    #[test]
    fn node_certificate_shape() {
        let ca = ClusterCa::generate("prod").expect("CA");
        let ip: IpAddr = "192.0.2.10".parse().expect("ip");
        let opts = NodeCertOptions::default()
            .dns_names(["n1.example.org"])
            .ip_addresses([ip]);
        let node = ca.issue_node("n1", &opts).expect("issued");
        let (_, cert) =
            x509_parser::parse_x509_certificate(node.identity.leaf().as_ref()).expect("parses");
        assert!(!cert.is_ca());
        let cn = cert.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("utf8"), "n1");
        let san = cert
            .subject_alternative_name()
            .expect("ok")
            .expect("present");
        let names = &san.value.general_names;
        assert!(names.contains(&GeneralName::URI("spiffe://prod/node/n1")));
        assert!(names.contains(&GeneralName::DNSName("n1.example.org")));
        assert!(names.contains(&GeneralName::IPAddress(&[192, 0, 2, 10])));
        assert_eq!(names.len(), 3);
        let eku = cert
            .extended_key_usage()
            .expect("ok")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = cert.key_usage().expect("ok").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert_eq!(node.identity.spiffe_id().to_uri(), "spiffe://prod/node/n1");
    }

    #[test]
    fn node_options_validity_and_another_cluster_of_one_ca() {
        let ca = ClusterCa::generate("prod").expect("CA");
        // The same CA, loaded for another cluster, names that cluster.
        let other = test_support::node_of_cluster(&ca, "staging", "n1");
        assert_eq!(other.identity.spiffe_id().cluster(), "staging");

        let now = OffsetDateTime::now_utc();
        let expired = NodeCertOptions::default()
            .not_before(now - Duration::days(2))
            .not_after(now - Duration::days(1));
        let node = ca
            .issue_node("n1", &expired)
            .expect("expired cert can be issued");
        let (_, cert) =
            x509_parser::parse_x509_certificate(node.identity.leaf().as_ref()).expect("parses");
        assert!(!cert.validity().is_valid());

        let empty = NodeCertOptions::default().not_before(now).not_after(now);
        assert!(matches!(
            ca.issue_node("n1", &empty),
            Err(TlsError::InvalidValidity { .. })
        ));
        assert!(matches!(
            ca.issue_node("n/1", &NodeCertOptions::default()),
            Err(TlsError::InvalidNodeId { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem(), "Bad"),
            Err(TlsError::InvalidClusterName { .. })
        ));
    }

    #[test]
    fn ca_reloads_from_pem_and_keeps_issuing() {
        let ca = ClusterCa::generate("prod").expect("CA");
        let reloaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem(), "prod").expect("reload");
        assert_eq!(reloaded.roots(), ca.roots());
        let node = reloaded
            .issue_node("n9", &NodeCertOptions::default())
            .expect("issued");
        // The reloaded CA's certificates chain to the original CA certificate.
        let parsed =
            rustls::server::ParsedCertificate::try_from(node.identity.leaf()).expect("parses");
        let provider = rustls::crypto::ring::default_provider();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &ca.roots().root_store().expect("store"),
            &[],
            rustls::pki_types::UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .expect("signed by the original CA");

        let other = ClusterCa::generate("prod").expect("CA");
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), &other.key_pem(), "prod"),
            Err(TlsError::InvalidCa { .. })
        ));
        let node = ca
            .issue_node("n1", &NodeCertOptions::default())
            .expect("issued");
        assert!(matches!(
            ClusterCa::from_pem(&node.cert_pem, &node.key_pem, "prod"),
            Err(TlsError::InvalidCa { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem(), "Prod"),
            Err(TlsError::InvalidClusterName { .. })
        ));
    }

    #[test]
    fn ca_with_common_name_and_validity() {
        let ca = ClusterCa::generate_with("prod", Some("Example Prod Root"), Duration::days(30))
            .expect("CA");
        let der = ca.roots().certificates()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parses");
        let cn = cert.subject().iter_common_name().next().expect("CN");
        assert_eq!(cn.as_str().expect("utf8"), "Example Prod Root");
        let validity = cert.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(span, (Duration::days(30) + BACKDATE).whole_seconds());
        assert!(cert.is_ca());

        let default = ClusterCa::generate_with("prod", None, Duration::days(1)).expect("CA");
        let der = default.roots().certificates()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parses");
        let cn = cert.subject().iter_common_name().next().expect("CN");
        assert!(cn.as_str().expect("utf8").starts_with("quicraft prod CA "));

        for bad in [
            Duration::ZERO,
            Duration::days(-1),
            Duration::days(10_000_000),
        ] {
            assert!(matches!(
                ClusterCa::generate_with("prod", None, bad),
                Err(TlsError::InvalidCa { .. })
            ));
        }
        assert!(matches!(
            ClusterCa::generate_with("prod", Some(""), Duration::days(1)),
            Err(TlsError::InvalidCa { .. })
        ));
        assert!(matches!(
            ClusterCa::generate_with("Prod", None, Duration::days(1)),
            Err(TlsError::InvalidClusterName { .. })
        ));
    }

    #[test]
    fn serials_are_unique() {
        let ca = ClusterCa::generate("prod").expect("CA");
        let opts = NodeCertOptions::default();
        let a = ca.issue_node("n1", &opts).expect("issued");
        let b = ca.issue_node("n1", &opts).expect("issued");
        let serial = |node: &GeneratedNode| {
            let (_, cert) =
                x509_parser::parse_x509_certificate(node.identity.leaf().as_ref()).expect("parses");
            cert.raw_serial().to_vec()
        };
        assert_ne!(serial(&a), serial(&b));
        assert_eq!(serial(&a).len(), SERIAL_LEN);
    }
}
