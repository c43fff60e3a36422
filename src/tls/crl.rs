//! Certificate revocation lists: loading them, checked on both sides of every handshake.

use std::path::Path;

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;

use super::TlsError;

/// The revocation lists a node checks peers against (empty: no revocation checking).
///
/// Each list must be issued (signed) by the cluster CA; a peer certificate listed in one is
/// refused at the handshake, whichever side it is on. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RevocationLists {
    crls: Vec<CertificateRevocationListDer<'static>>,
    enforce_next_update: bool,
}

impl RevocationLists {
    /// No lists: revocation is not checked.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every `X509 CRL` section of a PEM document.
    ///
    /// # Errors
    /// [`TlsError::MalformedPem`], [`TlsError::EmptyPem`] when there is no CRL in it, and
    /// [`TlsError::InvalidCrl`] when one does not parse as a CRL.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        Self::from_pem_named(pem, "CRL PEM")
    }

    fn from_pem_named(pem: &[u8], what: &str) -> Result<Self, TlsError> {
        let crls = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::MalformedPem {
                what: what.to_owned(),
                source,
            })?;
        if crls.is_empty() {
            return Err(TlsError::EmptyPem {
                what: what.to_owned(),
            });
        }
        Self::checked(crls)
    }

    /// One DER-encoded CRL.
    ///
    /// # Errors
    /// [`TlsError::InvalidCrl`] when it does not parse as a CRL.
    pub fn from_der(der: Vec<u8>) -> Result<Self, TlsError> {
        Self::checked(vec![CertificateRevocationListDer::from(der)])
    }

    /// A CRL file, PEM or DER (told apart by the PEM header).
    ///
    /// # Errors
    /// [`TlsError::ReadFile`], and the errors of [`from_pem`](Self::from_pem) and
    /// [`from_der`](Self::from_der).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| TlsError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            Self::from_pem_named(&bytes, &path.display().to_string())
        } else {
            Self::from_der(bytes)
        }
    }

    /// The lists of both `self` and `other` (enforcing `nextUpdate` if either did).
    pub fn merged(mut self, other: RevocationLists) -> Self {
        self.crls.extend(other.crls);
        self.enforce_next_update |= other.enforce_next_update;
        self
    }

    /// Whether a list past its `nextUpdate` time makes every handshake fail (fail closed).
    /// Default `false`: a stale list is still used as it is.
    ///
    /// A list past `nextUpdate` may miss revocations made since, so a strict deployment
    /// refuses to trust it; the price is that a CA that does not publish in time (or a
    /// node whose list is not refreshed, see `QuicConfig::watch_files`) stops all new
    /// connections of that node until a fresh list is loaded. Connections already up are not
    /// touched. [`next_update`](Self::next_update) says when that would happen. Lists that
    /// `QuicConfig::watch_files` reads keep the setting of the lists given to
    /// `QuicConfig::revocation`.
    pub fn enforce_next_update(mut self, enforce: bool) -> Self {
        self.enforce_next_update = enforce;
        self
    }

    /// True when a list past its `nextUpdate` time fails handshakes
    /// ([`enforce_next_update`](Self::enforce_next_update)).
    pub fn enforces_next_update(&self) -> bool {
        self.enforce_next_update
    }

    /// The earliest `nextUpdate` time of the lists (when the first of them goes stale);
    /// `None` without lists or when none states one.
    pub fn next_update(&self) -> Option<std::time::SystemTime> {
        self.crls
            .iter()
            .filter_map(|der| {
                let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
                let at = crl.next_update()?.timestamp();
                let secs = u64::try_from(at).ok()?;
                Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            })
            .min()
    }

    /// True when there is no list (revocation is not checked).
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The lists, DER-encoded.
    pub fn lists(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    fn checked(crls: Vec<CertificateRevocationListDer<'static>>) -> Result<Self, TlsError> {
        for crl in &crls {
            webpki::BorrowedCertRevocationList::from_der(crl).map_err(|e| {
                TlsError::InvalidCrl {
                    reason: e.to_string(),
                }
            })?;
        }
        Ok(Self {
            crls,
            enforce_next_update: false,
        })
    }
}
