//! Loading a node's certificate chain and key, and the cluster's CA roots, from PEM.

use std::fmt;
use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{SpiffeId, TlsError};

/// A node's credentials: its certificate chain (leaf first) and the leaf's private key.
///
/// Always consistent: the chain is not empty, the key matches the leaf's public key, and the
/// leaf names exactly one SPIFFE id (see [`Identity::spiffe_id`]).
///
/// `Debug` output never includes the private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    id: SpiffeId,
}

impl Identity {
    /// Builds an identity from a certificate chain (leaf first, then any intermediates; the
    /// root may be left out) and the leaf's private key.
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`] for an empty chain; [`TlsError::Rustls`] if the key cannot
    /// be loaded or does not match the leaf; a SPIFFE error ([`TlsError::NoSpiffeId`],
    /// [`TlsError::MultipleSpiffeIds`], [`TlsError::InvalidSpiffeId`],
    /// [`TlsError::MalformedCertificate`]) if the leaf does not name exactly one node.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
            what: "the certificate chain".to_owned(),
        })?;
        let id = SpiffeId::from_certificate(leaf)?;
        // Loads the key with the provider the TLS configs use and compares its public key with
        // the leaf's, so a mismatched pair fails here rather than at the first handshake.
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)?;
        Ok(Self { chain, key, id })
    }

    /// Reads an identity from PEM: every `CERTIFICATE` section of `cert_pem` in order (leaf
    /// first), and the one private key (PKCS#8, PKCS#1 or SEC1) of `key_pem`.
    ///
    /// # Errors
    /// PEM errors ([`TlsError::EmptyPem`], [`TlsError::MalformedPem`],
    /// [`TlsError::NoCertificate`], [`TlsError::NoPrivateKey`],
    /// [`TlsError::SeveralPrivateKeys`]) or any error of [`Identity::new`].
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = certificates_from_pem(cert_pem, "the certificate PEM")?;
        let key = key_from_pem(key_pem, "the private key PEM")?;
        Self::new(chain, key)
    }

    /// Reads an identity from a certificate chain file and a private key file, as
    /// [`Identity::from_pem`] does.
    ///
    /// # Errors
    /// [`TlsError::ReadFile`] with the path, or any error of [`Identity::from_pem`]; PEM
    /// errors name the file.
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let cert_path = cert_path.as_ref();
        let key_path = key_path.as_ref();
        let chain = certificates_from_pem(&read_file(cert_path)?, &describe(cert_path))?;
        let key = key_from_pem(&read_file(key_path)?, &describe(key_path))?;
        if let Some(mode) = exposed_mode(key_path) {
            // A warning, not an error: secret volumes (e.g. Kubernetes' default 0644) are
            // often readable by other users of the pod, and refusing would stop the node.
            tracing::warn!(
                path = %key_path.display(),
                mode = format_args!("{mode:o}"),
                "the private key file is readable by group or others; chmod 600 it"
            );
        }
        Self::new(chain, key)
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf (end-entity) certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `new` rejects an empty chain and the chain is never changed afterwards.
        &self.chain[0]
    }

    /// The SPIFFE id named by the leaf certificate.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The private key, for building TLS configurations.
    pub(crate) fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            id: self.id.clone(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id.to_uri())
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The trust anchors of a cluster: the CA certificates that every node certificate must chain
/// to. Never empty; every certificate is usable as a trust anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRoots {
    pub(super) certs: Vec<CertificateDer<'static>>,
}

impl CaRoots {
    /// Reads the roots from PEM: every `CERTIFICATE` section; other sections are ignored.
    ///
    /// # Errors
    /// [`TlsError::EmptyPem`], [`TlsError::MalformedPem`], [`TlsError::NoCertificate`], or
    /// [`TlsError::Rustls`] if a certificate is not usable as a trust anchor.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        Self::from_der(certificates_from_pem(pem, "the CA roots PEM")?)
    }

    /// Reads the roots from a PEM file, as [`CaRoots::from_pem`] does.
    ///
    /// # Errors
    /// [`TlsError::ReadFile`] with the path, or any error of [`CaRoots::from_pem`].
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        Self::from_der(certificates_from_pem(&read_file(path)?, &describe(path))?)
    }

    /// Builds the roots from DER certificates.
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`] for an empty list, [`TlsError::Rustls`] if a certificate
    /// is not usable as a trust anchor.
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                what: "the CA roots".to_owned(),
            });
        }
        let roots = Self { certs };
        roots.root_store()?;
        Ok(roots)
    }

    /// The CA certificates.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The roots as a rustls trust-anchor store.
    pub(crate) fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in &self.certs {
            store.add(cert.clone())?;
        }
        Ok(store)
    }
}

/// Reads a whole file, naming it in the error.
fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// The permission bits of `path` when group or others may read or write it (`None` when
/// only its owner may, when it cannot be inspected, or off Unix).
fn exposed_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o066 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// How errors name an input read from `path`.
fn describe(path: &Path) -> String {
    path.display().to_string()
}

/// Decodes every PEM section of `pem`; an input with none is an error.
fn sections(pem: &[u8], what: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::MalformedPem {
            what: what.to_owned(),
            source,
        })?;
    if sections.is_empty() {
        return Err(TlsError::EmptyPem {
            what: what.to_owned(),
        });
    }
    Ok(sections)
}

/// Every certificate of `pem`, in order; at least one.
fn certificates_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = sections(pem, what)?
        .into_iter()
        .filter_map(|(kind, der)| CertificateDer::from_pem(kind, der))
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// The one private key of `pem`.
fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut keys: Vec<_> = sections(pem, what)?
        .into_iter()
        .filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der))
        .collect();
    match keys.len() {
        0 => Err(TlsError::NoPrivateKey {
            what: what.to_owned(),
        }),
        1 => keys.pop().ok_or_else(|| TlsError::NoPrivateKey {
            what: what.to_owned(),
        }),
        count => Err(TlsError::SeveralPrivateKeys {
            what: what.to_owned(),
            count,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::generate::test_support;

    #[cfg(unix)]
    #[test]
    fn a_key_file_readable_by_others_is_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        let dir = std::env::temp_dir().join(format!("quicraft-key-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert, key) = (dir.join("n1.pem"), dir.join("n1.key"));
        std::fs::write(&cert, &node.cert_pem).expect("write cert");
        std::fs::write(&key, &node.key_pem).expect("write key");
        for (mode, exposed) in [(0o600, None), (0o640, Some(0o640)), (0o644, Some(0o644))] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(exposed_mode(&key), exposed, "mode {mode:o}");
            // Loading still works: exposure is warned about, not refused.
            Identity::from_pem_files(&cert, &key).expect("loads");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn pem_round_trip() {
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        let loaded =
            Identity::from_pem(node.cert_pem.as_bytes(), node.key_pem.as_bytes()).expect("loads");
        assert_eq!(loaded.chain(), node.identity.chain());
        assert_eq!(loaded.leaf(), node.identity.leaf());
        assert_eq!(loaded.key().secret_der(), node.identity.key().secret_der());
        assert_eq!(loaded.spiffe_id().to_uri(), "spiffe://prod/node/n1");

        let roots = CaRoots::from_pem(ca.cert_pem().as_bytes()).expect("roots");
        assert_eq!(roots, ca.roots());
        assert_eq!(roots.root_store().expect("store").len(), 1);
    }

    #[test]
    fn chain_order_is_kept() {
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        // leaf followed by the CA certificate, as a chain file may hold
        let chain_pem = format!("{}{}", node.cert_pem, ca.cert_pem());
        let loaded =
            Identity::from_pem(chain_pem.as_bytes(), node.key_pem.as_bytes()).expect("loads");
        assert_eq!(loaded.chain().len(), 2);
        assert_eq!(loaded.leaf(), node.identity.leaf());
        assert_eq!(&loaded.chain()[1], &ca.roots().certificates()[0]);
    }

    #[test]
    fn files_round_trip_and_name_the_path() {
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        let dir = std::env::temp_dir().join(format!("quicraft-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert_path = dir.join("n1.pem");
        let key_path = dir.join("n1.key");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&cert_path, &node.cert_pem).expect("write");
        std::fs::write(&key_path, &node.key_pem).expect("write");
        std::fs::write(&ca_path, ca.cert_pem()).expect("write");

        let loaded = Identity::from_pem_files(&cert_path, &key_path).expect("loads");
        assert_eq!(loaded.chain(), node.identity.chain());
        assert_eq!(CaRoots::from_pem_file(&ca_path).expect("roots"), ca.roots());

        let missing = dir.join("missing.pem");
        let err = Identity::from_pem_files(&missing, &key_path).expect_err("missing file");
        assert!(matches!(&err, TlsError::ReadFile { path, .. } if path == &missing));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        // A key file given as the certificate: the error names that file.
        let err = Identity::from_pem_files(&key_path, &key_path).expect_err("no cert");
        assert!(matches!(&err, TlsError::NoCertificate { what } if what.contains("n1.key")));

        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn garbage_and_empty_pem_are_errors() {
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        let key = node.key_pem.as_bytes();

        assert!(matches!(
            Identity::from_pem(b"", key),
            Err(TlsError::EmptyPem { .. })
        ));
        assert!(matches!(
            Identity::from_pem(b"not pem at all\n\x00\xff", key),
            Err(TlsError::EmptyPem { .. })
        ));
        assert!(matches!(
            Identity::from_pem(
                b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
                key
            ),
            Err(TlsError::MalformedPem { .. })
        ));
        assert!(matches!(
            Identity::from_pem(b"-----BEGIN CERTIFICATE-----\nMIIB\n", key),
            Err(TlsError::MalformedPem { .. })
        ));
        assert!(matches!(
            CaRoots::from_pem(b""),
            Err(TlsError::EmptyPem { .. })
        ));
        assert!(matches!(
            CaRoots::from_pem(node.key_pem.as_bytes()),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            CaRoots::from_der(Vec::new()),
            Err(TlsError::NoCertificate { .. })
        ));
        // Well-formed PEM whose contents are not a certificate.
        let bogus = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(CaRoots::from_pem(bogus), Err(TlsError::Rustls(_))));
    }

    #[test]
    fn key_missing_or_ambiguous_or_mismatched() {
        let ca = test_support::ca("prod");
        let n1 = test_support::node(&ca, "n1");
        let n2 = test_support::node(&ca, "n2");
        let cert = n1.cert_pem.as_bytes();

        assert!(matches!(
            Identity::from_pem(cert, b""),
            Err(TlsError::EmptyPem { .. })
        ));
        // A certificate where the key should be.
        assert!(matches!(
            Identity::from_pem(cert, cert),
            Err(TlsError::NoPrivateKey { .. })
        ));
        let two_keys = format!("{}{}", n1.key_pem, n2.key_pem);
        assert!(matches!(
            Identity::from_pem(cert, two_keys.as_bytes()),
            Err(TlsError::SeveralPrivateKeys { count: 2, .. })
        ));
        // n2's key with n1's certificate.
        assert!(matches!(
            Identity::from_pem(cert, n2.key_pem.as_bytes()),
            Err(TlsError::Rustls(_))
        ));
        assert!(matches!(
            Identity::new(Vec::new(), n1.identity.key().clone_key()),
            Err(TlsError::NoCertificate { .. })
        ));
    }

    #[test]
    fn identity_needs_a_spiffe_id() {
        let ca = test_support::ca("prod");
        // The CA's own certificate and key: consistent, but it names no node.
        let err = Identity::from_pem(ca.cert_pem().as_bytes(), ca.key_pem().as_bytes())
            .expect_err("no spiffe id");
        assert!(matches!(err, TlsError::NoSpiffeId), "{err}");
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let ca = test_support::ca("prod");
        let node = test_support::node(&ca, "n1");
        let debug = format!("{:?}", node.identity);
        assert!(debug.contains("spiffe://prod/node/n1"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        let key_b64: String = node
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!debug.contains(&key_b64[..16]), "{debug}");
        let debug_all = format!("{node:?}");
        assert!(!debug_all.contains(&key_b64[..16]), "{debug_all}");
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
