//! Certificate rotation and revocation without restart: swapping the TLS context, re-checking
//! live connections, and watching the PEM files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::pool::Pool;
use super::{Node, QuicTransport, codes};
use crate::error::Error;
use crate::tls::{CaRoots, Identity, RevocationLists, TlsContext};

/// The files a node's TLS setup is read from, for [`QuicConfig::watch_files`].
///
/// [`QuicConfig::watch_files`]: super::QuicConfig::watch_files
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM, leaf first).
    pub cert_chain: PathBuf,
    /// The node's private key (PEM).
    pub key: PathBuf,
    /// The CA roots (PEM); several certificates during a CA rotation.
    pub ca: PathBuf,
    /// Revocation lists (PEM or DER), if any.
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads every file.
    fn load(&self) -> Result<(Identity, CaRoots, RevocationLists), crate::TlsError> {
        let identity = Identity::from_pem_files(&self.cert_chain, &self.key)?;
        let roots = CaRoots::from_pem_file(&self.ca)?;
        let crls = match &self.crl {
            Some(path) => RevocationLists::from_file(path)?,
            None => RevocationLists::none(),
        };
        Ok((identity, roots, crls))
    }

    /// When each file last changed (`None` for one that cannot be read now).
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        [
            Some(&self.cert_chain),
            Some(&self.key),
            Some(&self.ca),
            self.crl.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
    }
}

impl QuicTransport {
    /// Replaces this node's certificate, the CA roots and the revocation lists while running.
    ///
    /// New handshakes, in both directions, use the new setup at once: a peer whose
    /// certificate the new roots or lists do not accept is refused at its next handshake.
    /// Live connections keep working (so a CA rotation fails no RPC), except those whose peer
    /// certificate the new lists revoke: they are closed at once.
    ///
    /// # Errors
    /// [`Error::Config`] when the new certificate is unusable or names another node or
    /// cluster than this one (a node's identity does not change while it runs); the old setup
    /// then stays in force.
    pub fn reload_tls(
        &self,
        identity: Identity,
        roots: CaRoots,
        revocation: RevocationLists,
    ) -> Result<(), Error> {
        self.node.reload_tls(identity, roots, revocation)
    }

    /// The certificate and key this node presents now.
    pub fn tls_identity(&self) -> Identity {
        self.node.connector().tls().identity().clone()
    }

    /// Counts the TLS setups taken into effect since [`bind`](Self::bind) (by
    /// [`reload_tls`](Self::reload_tls) or the file watcher); `changed()` on the receiver
    /// waits for the next one.
    pub fn tls_reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.node.connector().tls_reloads()
    }
}

impl Node {
    fn reload_tls(
        &self,
        identity: Identity,
        roots: CaRoots,
        revocation: RevocationLists,
    ) -> Result<(), Error> {
        let tls = self.connector().replace_tls(identity, roots, revocation)?;
        tracing::info!(id = %self.local_id, "TLS setup reloaded");
        recheck_connections(self.pool(), &tls);
        Ok(())
    }
}

/// Closes every open connection (live or being retired) whose peer certificate the
/// revocation lists of `tls` revoke. (Roots that no longer include a peer's CA apply from its
/// next handshake.)
fn recheck_connections(pool: &Pool, tls: &TlsContext) {
    for (peer, conn) in pool.every_connection() {
        let chain = conn.conn.peer_identity().and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let Some(chain) = chain else { continue };
        if let Err(
            error @ crate::TlsError::Rustls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            )),
        ) = tls.verify_peer_chain(&chain)
        {
            tracing::warn!(%peer, %error, "closing the connection of a revoked peer");
            conn.conn
                .close(codes::conn::IDENTITY, b"certificate revoked");
        }
    }
}

/// Reloads `node`'s TLS setup from `files` whenever one of them changes, checking every
/// `interval`, until shutdown. A setup that fails to load or apply is logged and the old one
/// kept.
pub(super) async fn watch_files(node: Arc<Node>, files: TlsFiles, interval: Duration) {
    let mut seen = files.stamps();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = files.stamps();
        if now == seen {
            continue;
        }
        seen = now;
        // Whether stale lists fail closed is the node's setting, not the files'.
        let enforce = node.enforce_next_update;
        let loaded = files
            .load()
            .map(|(identity, roots, crls)| (identity, roots, crls.enforce_next_update(enforce)))
            .map_err(|e| Error::Config(e.into()));
        match loaded.and_then(|(identity, roots, crls)| node.reload_tls(identity, roots, crls)) {
            Ok(()) => tracing::info!(files = ?files, "reloaded TLS files"),
            Err(error) => {
                tracing::warn!(%error, "changed TLS files not applied; keeping the old setup")
            }
        }
    }
}
