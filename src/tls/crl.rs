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

    /// The lists of both `self` and `other`.
    pub fn merged(mut self, other: RevocationLists) -> Self {
        self.crls.extend(other.crls);
        self
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
        Ok(Self { crls })
    }
}
