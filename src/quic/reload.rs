//! Certificate rotation and revocation without restart: swapping the TLS context, re-checking
//! live connections, and watching the PEM files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Inner, QuicTransport, codes};
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
        self.inner.reload_tls(identity, roots, revocation)
    }

    /// The certificate and key this node presents now.
    pub fn tls_identity(&self) -> Identity {
        self.inner.tls().identity().clone()
    }

    /// Counts the TLS setups taken into effect since [`bind`](Self::bind) (by
    /// [`reload_tls`](Self::reload_tls) or the file watcher); `changed()` on the receiver
    /// waits for the next one.
    pub fn tls_reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.tls_reloads.subscribe()
    }
}

impl Inner {
    pub(super) fn tls(&self) -> TlsContext {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reload_tls(
        &self,
        identity: Identity,
        roots: CaRoots,
        revocation: RevocationLists,
    ) -> Result<(), Error> {
        let config_error = |e: crate::TlsError| Error::Config(e.to_string());
        let current = self.tls();
        if identity.spiffe_id() != current.local_id() {
            return Err(Error::Config(format!(
                "the new certificate is for {}, this node is {}",
                identity.spiffe_id(),
                current.local_id()
            )));
        }
        let tls = TlsContext::new(current.cluster(), identity, roots)
            .map_err(config_error)?
            .with_revocation(revocation);
        let mut server_config = tls.server_config().map_err(config_error)?;
        server_config.transport_config(self.transport_config.clone());
        super::admission::configure(&mut server_config);
        // Hold the lock across both swaps so dials and accepts see one setup or the other.
        let mut slot = self.tls.write().unwrap_or_else(|e| e.into_inner());
        if let Some(endpoint) = self.endpoint() {
            endpoint.set_server_config(Some(server_config));
        }
        *slot = tls.clone();
        drop(slot);
        self.tls_reloads.send_modify(|n| *n += 1);
        tracing::info!(id = %self.local_id, "TLS setup reloaded");
        self.recheck_connections(&tls);
        Ok(())
    }

    /// Closes every open connection (live or being retired) whose peer certificate the
    /// revocation lists of `tls` revoke. (Roots that no longer include a peer's CA apply from
    /// its next handshake.)
    fn recheck_connections(&self, tls: &TlsContext) {
        for (peer, conn) in self.pool.every_connection() {
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

    /// Reloads from `files` whenever one of them changes, checking every `interval`, until
    /// shutdown. A setup that fails to load or apply is logged and the old one kept.
    pub(super) async fn watch_files(self: Arc<Self>, files: TlsFiles, interval: Duration) {
        let mut seen = files.stamps();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = files.stamps();
            if now == seen {
                continue;
            }
            seen = now;
            // Whether stale lists fail closed is the node's setting, not the files'.
            let enforce = self.config.revocation.enforces_next_update();
            let loaded = files
                .load()
                .map(|(identity, roots, crls)| (identity, roots, crls.enforce_next_update(enforce)))
                .map_err(|e| Error::Config(e.to_string()));
            match loaded.and_then(|(identity, roots, crls)| self.reload_tls(identity, roots, crls))
            {
                Ok(()) => tracing::info!(files = ?files, "reloaded TLS files"),
                Err(error) => {
                    tracing::warn!(%error, "changed TLS files not applied; keeping the old setup")
                }
            }
        }
    }
}
