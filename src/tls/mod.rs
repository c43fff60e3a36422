//! TLS and certificates (layer 4): PEM loading, node identities, certificate generation,
//! revocation lists, the trust policy, and the rustls configurations the QUIC transport runs
//! on.
//!
//! Every connection is mutual TLS 1.3 with ALPN [`ALPN`] and 0-RTT off. A cluster CA
//! ([`ClusterCa`]) signs every node certificate; a node's identity is the one URI SAN
//! `spiffe://<cluster>/node/<node-id>` in its certificate ([`SpiffeId`]).
//!
//! One policy decides every certificate: its chain leads to the CA roots, it is valid now,
//! it is not revoked by the [`RevocationLists`] in use, it is a node certificate, and it
//! names an accepted node. Both sides of a handshake and [`verify_node_chain`] apply it.
//!
//! - A dialler ([`TlsContext::client_config`]) accepts a server only if the policy accepts it
//!   and it names exactly the node the dialler meant to reach. The TLS server name is
//!   ignored: identity is the SPIFFE id.
//! - A listener ([`TlsContext::server_config`]) requires a client certificate and accepts it
//!   only if the policy accepts it and it names a node of the same cluster. Which node the
//!   client is, the transport reads from the connection's peer certificate after the
//!   handshake; binding each request to that id is the RPC layer's job.
//!
//! Loading a node's files:
//!
//! ```no_run
//! # use quicraft::tls::{CaRoots, Identity, TlsContext, TlsError};
//! # fn main() -> Result<(), TlsError> {
//! let identity = Identity::from_pem_files("certs/n1.pem", "certs/n1.key")?;
//! let roots = CaRoots::from_pem_file("certs/ca.pem")?;
//! let tls = TlsContext::new("prod", identity, roots)?;
//! let server = tls.server_config()?;
//! let to_n2 = tls.client_config("n2")?;
//! # let _ = (server, to_n2);
//! # Ok(())
//! # }
//! ```

mod config;
mod crl;
mod explain;
mod generate;
mod identity;
mod pem;
mod policy;
mod verifier;

use std::path::PathBuf;

pub use config::{ALPN, TlsContext};
pub(crate) use config::{SERVER_NAME, peer_spiffe_id};
pub use crl::RevocationLists;
pub(crate) use explain::peer_refusal;
pub use generate::{ClusterCa, GeneratedNode, NodeCertOptions};
pub(crate) use identity::MAX_NODE_ID_LEN;
pub use identity::{SpiffeId, validate_cluster_name, validate_node_id};
pub use pem::{CaRoots, Identity};
pub use policy::verify_node_chain;

/// Errors of the TLS and certificate layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file (certificate, key or CA roots) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// PEM input is malformed (bad section markers, bad base64, oversized section).
    #[error("malformed PEM in {what}: {source}")]
    MalformedPem {
        /// Which input: e.g. "certificate PEM" or a file name.
        what: String,
        /// The PEM decoder's error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    /// PEM input holds no PEM section at all (empty input, or not PEM).
    #[error("no PEM section found in {what}")]
    EmptyPem {
        /// Which input.
        what: String,
    },

    /// The key input holds no private key (PKCS#8, PKCS#1 or SEC1 section).
    #[error("no private key (PKCS#8, PKCS#1 or SEC1 PEM section) found in {what}")]
    NoPrivateKey {
        /// Which input.
        what: String,
    },

    /// The key input holds more than one private key, so which one to use is ambiguous.
    #[error("{count} private keys found in {what}; expected exactly one")]
    SeveralPrivateKeys {
        /// Which input.
        what: String,
        /// How many keys it holds.
        count: usize,
    },

    /// No certificate where one was required (a PEM input, a chain, a peer's identity).
    #[error("no certificate found in {what}")]
    NoCertificate {
        /// Which input.
        what: String,
    },

    /// A cluster name is not a valid SPIFFE trust domain.
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName {
        /// The rejected name (shortened and escaped if it came from untrusted input).
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A node id is not a valid URI path segment.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The rejected id (shortened and escaped if it came from untrusted input).
        id: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A `spiffe:` URI is not of the form `spiffe://<cluster>/node/<node-id>`.
    #[error("invalid SPIFFE id {uri:?}: {reason}")]
    InvalidSpiffeId {
        /// The rejected URI (shortened and escaped).
        uri: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A certificate could not be parsed as DER X.509.
    #[error("malformed certificate: {reason}")]
    MalformedCertificate {
        /// What the parser reported.
        reason: String,
    },

    /// A leaf certificate lacks the usages of a node certificate: key usage
    /// `digitalSignature` and extended key usages `serverAuth` and `clientAuth`.
    #[error("not a node certificate: {reason}")]
    NotANodeCertificate {
        /// Which usage is missing.
        reason: &'static str,
    },

    /// A certificate carries no `spiffe:` URI SAN, so it names no node.
    #[error("certificate has no SPIFFE id (no spiffe:// URI subject alternative name)")]
    NoSpiffeId,

    /// A certificate carries several `spiffe:` URI SANs, so its identity is ambiguous.
    #[error("certificate has {count} SPIFFE ids; exactly one is allowed")]
    MultipleSpiffeIds {
        /// How many `spiffe:` URI SANs it carries.
        count: usize,
    },

    /// A certificate names another identity than the one required.
    #[error("certificate identity mismatch: expected {expected}, found {found}")]
    IdentityMismatch {
        /// What was required (a SPIFFE id, or a description such as "a node of cluster X").
        expected: String,
        /// The SPIFFE id the certificate names.
        found: String,
    },

    /// A CA certificate and key cannot be used to issue certificates.
    #[error("unusable CA: {reason}")]
    InvalidCa {
        /// Why.
        reason: String,
    },

    /// A requested certificate validity period is empty (`not_before` is not before
    /// `not_after`).
    #[error("empty validity period: not_before {not_before} is not before not_after {not_after}")]
    InvalidValidity {
        /// The requested start.
        not_before: time::OffsetDateTime,
        /// The requested end.
        not_after: time::OffsetDateTime,
    },

    /// A certificate revocation list does not parse.
    #[error("invalid certificate revocation list: {source}")]
    InvalidCrl {
        /// What the parser reported.
        #[source]
        source: webpki::Error,
    },

    /// rustls rejected a certificate, key or configuration.
    #[error("TLS error: {0}")]
    Rustls(#[from] rustls::Error),

    /// The rustls configuration is not usable for QUIC (no TLS 1.3 initial cipher suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),

    /// Generating a key or a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
}
