//! Keys that let a restarted node reset its predecessor's connections (RFC 9000 §10.3).
//!
//! A peer learns that this node crashed only when a packet it sends on the old connection is
//! answered with a stateless reset that it can authenticate. That needs two keys to be the
//! same in the restarted process as in the crashed one: the HMAC key that derives reset
//! tokens, and the key of the connection-ID generator (quinn drops a packet whose connection
//! ID its generator does not recognise before it would answer it with a reset). quinn draws
//! both at random per process; here both are derived from a secret that survives a restart.

use std::sync::Arc;

use ring::hkdf;
use ring::hmac;

/// Domain separation: keys derived for this purpose never equal keys derived for another.
const SALT: &[u8] = b"quicraft stateless reset v1";
const RESET_KEY_INFO: &[&[u8]] = &[b"reset token key"];
const CID_KEY_INFO: &[&[u8]] = &[b"connection id key"];

/// How long a connection ID lives before a new one replaces it: one NEW_CONNECTION_ID and one
/// RETIRE_CONNECTION_ID frame per connection per period.
const CID_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The shortest configured secret accepted: 128 bits of entropy at least.
pub(super) const MIN_SECRET_LEN: usize = 16;

/// The endpoint keys derived from one stable secret.
pub(super) struct ResetKeys {
    /// Signs reset tokens (quinn `EndpointConfig::reset_key`).
    pub(super) reset_key: Arc<hmac::Key>,
    /// Keys the connection-ID generator, so the restarted endpoint recognises old IDs.
    pub(super) cid_key: u64,
}

impl ResetKeys {
    /// Derives both keys from `secret` with HKDF-SHA256 (the secret is the node's private
    /// key in DER, or a configured secret). HKDF is one-way: the keys reveal nothing of it.
    pub(super) fn derive(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        let reset_key = hmac::Key::from(expand(&prk, RESET_KEY_INFO, hmac::HMAC_SHA256));
        let mut cid = [0u8; 8];
        expand(&prk, CID_KEY_INFO, Len(cid.len()))
            .fill(&mut cid)
            // Fails only when the buffer's length differs from the Okm's, which is `cid.len()`.
            .expect("HKDF output of 8 bytes");
        Self {
            reset_key: Arc::new(reset_key),
            cid_key: u64::from_le_bytes(cid),
        }
    }

    /// The endpoint configuration carrying both keys.
    pub(super) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(self.reset_key.clone());
        let cid_key = self.cid_key;
        config.cid_generator(move || {
            let mut generator = quinn_proto::HashedConnectionIdGenerator::from_key(cid_key);
            // The connection ID a dialler picks in its handshake carries no reset token
            // (RFC 9000 §10.3): only IDs issued later do. Retiring IDs after a lifetime moves
            // the peer onto those, so a dialler's restart can reset its older connections too.
            generator.set_lifetime(CID_LIFETIME);
            Box::new(generator)
        });
        config
    }
}

fn expand<'a, L: hkdf::KeyType>(
    prk: &'a hkdf::Prk,
    info: &'static [&'static [u8]],
    len: L,
) -> hkdf::Okm<'a, L> {
    prk.expand(info, len)
        // Fails only for outputs over 255 hash lengths; both outputs are at most one.
        .expect("HKDF output of at most one hash length")
}

/// An HKDF output length for raw bytes.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_secret_gives_the_same_keys_and_another_secret_others() {
        let a = ResetKeys::derive(b"0123456789abcdef-node-a");
        let again = ResetKeys::derive(b"0123456789abcdef-node-a");
        let b = ResetKeys::derive(b"0123456789abcdef-node-b");
        assert_eq!(a.cid_key, again.cid_key);
        assert_ne!(a.cid_key, b.cid_key);
        let tag = |k: &ResetKeys| hmac::sign(&k.reset_key, b"connection id").as_ref().to_vec();
        assert_eq!(tag(&a), tag(&again));
        assert_ne!(tag(&a), tag(&b));
        // The two keys are separated: the CID key is not a prefix of the reset key's tags.
        assert_ne!(&tag(&a)[..8], &a.cid_key.to_le_bytes());
    }
}
