//! Certificate revocation lists: loaded and parsed once, checked on both sides of every
//! handshake.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use webpki::{CertRevocationList, OwnedCertRevocationList};

use super::TlsError;

/// The revocation lists a node checks peers against (empty: no revocation checking).
///
/// Each list must be issued (signed) by the cluster CA; a peer certificate listed in one is
/// refused at the handshake, whichever side it is on. Lists are parsed once, when loaded;
/// a handshake only looks them up. Cheap to clone.
#[derive(Clone, Default)]
pub struct RevocationLists {
    /// The lists as loaded.
    ders: Vec<CertificateRevocationListDer<'static>>,
    /// The same lists, parsed.
    crls: Vec<Arc<CertRevocationList<'static>>>,
    /// The earliest `nextUpdate` of `crls`.
    next_update: Option<SystemTime>,
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
        crls.into_iter()
            .map(Self::parse)
            .try_fold(Self::none(), |lists, one| Ok(lists.merged(one?)))
    }

    /// One DER-encoded CRL.
    ///
    /// # Errors
    /// [`TlsError::InvalidCrl`] when it does not parse as a CRL.
    pub fn from_der(der: Vec<u8>) -> Result<Self, TlsError> {
        Self::parse(CertificateRevocationListDer::from(der))
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
        self.ders.extend(other.ders);
        self.crls.extend(other.crls);
        self.next_update = self.next_update.into_iter().chain(other.next_update).min();
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
    /// `None` without lists.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// True when there is no list (revocation is not checked).
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The lists, DER-encoded.
    pub fn lists(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.ders
    }

    /// Runs `verify` with the revocation options of one WebPKI verification (`None` without
    /// lists): the leaf's status is looked up in the lists, an unknown status is refused, and
    /// a stale list is refused if [`enforce_next_update`](Self::enforce_next_update) says so.
    pub(crate) fn with_options<R>(
        &self,
        verify: impl FnOnce(Option<webpki::RevocationOptions<'_>>) -> R,
    ) -> R {
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().map(|crl| &**crl).collect();
        // The builder refuses only an empty slice, which means no revocation checking.
        let Ok(builder) = webpki::RevocationOptionsBuilder::new(&crls) else {
            return verify(None);
        };
        let expiration = if self.enforce_next_update {
            webpki::ExpirationPolicy::Enforce
        } else {
            webpki::ExpirationPolicy::Ignore
        };
        // The CA's lists cover the certificates it issued: the leaf is what to check.
        let options = builder
            .with_depth(webpki::RevocationCheckDepth::EndEntity)
            .with_status_policy(webpki::UnknownStatusPolicy::Deny)
            .with_expiration_policy(expiration)
            .build();
        verify(Some(options))
    }

    /// Parses one DER list (and reads its `nextUpdate`, which WebPKI keeps to itself).
    fn parse(der: CertificateRevocationListDer<'static>) -> Result<Self, TlsError> {
        let crl = OwnedCertRevocationList::from_der(&der)
            .map_err(|source| TlsError::InvalidCrl { source })?;
        let next_update = x509_parser::parse_x509_crl(&der)
            .ok()
            .and_then(|(_, crl)| crl.next_update())
            .and_then(|at| u64::try_from(at.timestamp()).ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        Ok(Self {
            ders: vec![der],
            crls: vec![Arc::new(crl.into())],
            next_update,
            enforce_next_update: false,
        })
    }
}

impl fmt::Debug for RevocationLists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationLists")
            .field("lists", &self.crls.len())
            .field("next_update", &self.next_update)
            .field("enforce_next_update", &self.enforce_next_update)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::tls::generate::test_support::{ca, node};

    #[test]
    fn lists_are_parsed_at_load_and_merge_their_next_update() {
        let ca = ca("prod");
        let n1 = node(&ca, "n1");
        let soon = ca
            .revocation_list_pem(&[n1.identity.leaf()], 1, time::Duration::hours(1))
            .expect("CRL");
        let later = ca
            .revocation_list_pem(&[], 2, time::Duration::days(7))
            .expect("CRL");
        let soon = RevocationLists::from_pem(soon.as_bytes()).expect("parses");
        let later = RevocationLists::from_pem(later.as_bytes())
            .expect("parses")
            .enforce_next_update(true);
        assert!(soon.next_update() < later.next_update());
        let both = later.clone().merged(soon.clone());
        assert_eq!(both.lists().len(), 2);
        assert_eq!(both.next_update(), soon.next_update());
        assert!(both.enforces_next_update());
        assert!(RevocationLists::none().is_empty());
        assert_eq!(RevocationLists::none().next_update(), None);

        let err = RevocationLists::from_der(b"not a CRL".to_vec()).expect_err("garbage");
        assert!(matches!(err, TlsError::InvalidCrl { .. }), "{err}");
        assert!(err.source().is_some(), "the parser's error is kept");
    }
}
