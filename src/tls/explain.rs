//! Certificate refusals in plain words, for the one log line an operator reads: which node,
//! what is wrong, and what to check. The TLS alert sent to the peer is not affected.

use rustls::pki_types::CertificateDer;
use rustls::{AlertDescription, CertificateError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::policy::Refusal;
use super::{SpiffeId, TlsError};

/// Why a peer's (or this node's own) certificate was refused, in words: `whose` names it
/// ("node n2's certificate", "this node's own certificate").
pub(crate) fn refusal(refusal: &Refusal, leaf: &CertificateDer<'_>, whose: &str) -> String {
    match refusal {
        Refusal::Chain(error) => chain_refusal(error, leaf, whose),
        Refusal::NotANode(TlsError::NotANodeCertificate { reason }) => format!(
            "{whose} is not a node certificate ({reason}; it needs key usage digitalSignature \
             and extended key usages serverAuth and clientAuth)"
        ),
        Refusal::NotANode(error) => format!("{whose} could not be read: {error}"),
        Refusal::Identity(error) => format!("{whose} does not name an accepted node: {error}"),
    }
}

/// True when `refusal` is about the validity period, which this host's clock may be wrong
/// about.
pub(crate) fn outside_validity_period(refusal: &Refusal) -> bool {
    matches!(
        refusal,
        Refusal::Chain(rustls::Error::InvalidCertificate(
            CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }
        ))
    )
}

/// [`refusal`] for a refusal of WebPKI (the chain).
fn chain_refusal(error: &rustls::Error, leaf: &CertificateDer<'_>, whose: &str) -> String {
    let rustls::Error::InvalidCertificate(error) = error else {
        return format!("{whose} could not be checked: {error}");
    };
    match error {
        CertificateError::UnknownIssuer => format!(
            "{whose} was not issued by a CA this node trusts: it may come from another \
             cluster's CA, or the CA was rotated without this node trusting the new one"
        ),
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => outside_validity(leaf, whose),
        CertificateError::Revoked => format!("{whose} is revoked (a revocation list lists it)"),
        CertificateError::UnknownRevocationStatus => format!(
            "{whose} was issued by a CA for which this node has no revocation list, and \
             revocation lists are in use"
        ),
        CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => format!(
            "{whose} could not be checked: a revocation list of this node is past its \
             nextUpdate time, and stale lists are refused (load a fresh list)"
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!(
                "{whose} is not a node certificate (it needs key usage digitalSignature and \
                 extended key usages serverAuth and clientAuth)"
            )
        }
        CertificateError::BadSignature => format!("{whose} has a bad signature"),
        other => format!("{whose} was refused: {other:?}"),
    }
}

/// The validity window of `leaf` against this host's clock, and what to check.
fn outside_validity(leaf: &CertificateDer<'_>, whose: &str) -> String {
    let now = date(OffsetDateTime::now_utc());
    let Some((from, until)) = validity(leaf) else {
        return format!("{whose} is outside its validity period (this host's clock says {now})");
    };
    format!(
        "{whose} is valid from {from} until {until}, but this host's clock says {now}: if the \
         certificate is current, check this host's clock"
    )
}

fn validity(leaf: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let validity = cert.validity();
    Some((
        date(validity.not_before.to_datetime()),
        date(validity.not_after.to_datetime()),
    ))
}

fn date(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// "node n2's certificate", or "the certificate of an unknown node" when it names none.
pub(crate) fn whose(leaf: &CertificateDer<'_>) -> String {
    match SpiffeId::from_certificate(leaf) {
        Ok(id) => format!(
            "the certificate of node {} (cluster {})",
            crate::sanitize::untrusted(id.node()),
            crate::sanitize::untrusted(id.cluster())
        ),
        Err(_) => "a certificate naming no node".to_owned(),
    }
}

/// What the TLS alert a peer sent when it refused this node's certificate means, or `None`
/// for an alert that is not about certificates.
pub(crate) fn peer_refusal(alert: u8) -> Option<&'static str> {
    let alert = AlertDescription::from(alert);
    Some(match alert {
        AlertDescription::UnknownCA => {
            "it does not trust the CA that issued this node's certificate (another cluster's \
             CA, or a CA rotation it has not taken yet)"
        }
        AlertDescription::CertificateExpired => {
            "it says this node's certificate is outside its validity period: check the \
             certificate's dates, then the clocks of both hosts"
        }
        AlertDescription::CertificateRevoked => "it says this node's certificate is revoked",
        AlertDescription::UnsupportedCertificate => {
            "it says this node's certificate is not a node certificate (usages)"
        }
        AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
            "it refused this node's certificate (wrong cluster or node id, or unusable; its own \
             log says which)"
        }
        AlertDescription::CertificateRequired => "it requires a client certificate",
        AlertDescription::AccessDenied => "it denied access",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{ClusterCa, NodeCertOptions};

    #[test]
    fn an_expired_certificate_names_its_dates_and_the_clock() {
        let ca = ClusterCa::generate("plain").unwrap();
        let past = OffsetDateTime::now_utc() - time::Duration::days(30);
        let node = ca
            .issue_node(
                "n1",
                &NodeCertOptions::default()
                    .not_before(past - time::Duration::days(1))
                    .not_after(past),
            )
            .unwrap();
        let leaf = &node.identity.chain()[0];
        let words = refusal(
            &Refusal::Chain(rustls::Error::InvalidCertificate(CertificateError::Expired)),
            leaf,
            &whose(leaf),
        );
        assert!(words.contains("node n1"), "{words}");
        assert!(words.contains(&date(past)[..10]), "{words}");
        assert!(words.contains("check this host's clock"), "{words}");
    }

    #[test]
    fn an_unknown_issuer_says_another_ca() {
        let ca = ClusterCa::generate("plain").unwrap();
        let node = ca.issue_node("n1", &NodeCertOptions::default()).unwrap();
        let leaf = &node.identity.chain()[0];
        let words = refusal(
            &Refusal::Chain(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            leaf,
            "x",
        );
        assert!(words.contains("another cluster's CA"), "{words}");
    }

    #[test]
    fn certificate_alerts_from_a_peer_are_explained() {
        assert!(peer_refusal(48).unwrap().contains("CA"));
        assert!(peer_refusal(45).unwrap().contains("clocks"));
        assert_eq!(peer_refusal(10), None);
    }
}
