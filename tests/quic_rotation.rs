//! Certificate rotation and revocation while the cluster runs.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::Fixture;
use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft::{
    CaRoots, Command, Error, Incoming, QuicTransport, RequestVoteResponse, RevocationLists,
    RpcHeader, TlsFiles, Transport,
};

fn serve(node: &QuicTransport, mut incoming: Incoming) {
    let me = RpcHeader::new(node.local_id().clone(), node.local_addr());
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            let Command::RequestVote(req) = rpc.command() else {
                panic!("unexpected RPC")
            };
            let response = RequestVoteResponse {
                header: me.clone(),
                term: req.term,
                granted: true,
            };
            rpc.respond(Ok(response.into()));
        }
    });
}

async fn call(from: &QuicTransport, to: &QuicTransport) -> Result<RequestVoteResponse, Error> {
    from.request_vote(to.local_id(), &to.local_addr(), common::vote_from(from, 1))
        .await
}

fn roots(cas: &[&ClusterCa]) -> CaRoots {
    let pem: String = cas.iter().map(|ca| ca.cert_pem()).collect();
    CaRoots::from_pem(pem.as_bytes()).unwrap()
}

/// Binds `node` with a certificate from `issuer`, trusting `trusted`, answering votes.
async fn node(
    fx: &Fixture,
    issuer: &ClusterCa,
    trusted: &[&ClusterCa],
    node: &str,
) -> QuicTransport {
    let identity = issuer
        .issue_node(node, &NodeCertOptions::default())
        .unwrap()
        .identity;
    let config = quicraft::QuicConfig::new(fx.cluster(), identity, roots(trusted))
        .bind("127.0.0.1:0".parse().unwrap())
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100));
    let (transport, incoming) = QuicTransport::bind(config).await.unwrap();
    serve(&transport, incoming);
    transport
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_in_a_three_node_cluster_fails_no_rpc() {
    common::init_tracing();
    let fx = Fixture::new("rotation");
    let old = &fx.ca;
    let new = ClusterCa::generate("rotation").unwrap();
    let nodes = [
        node(&fx, old, &[old], "n1").await,
        node(&fx, old, &[old], "n2").await,
        node(&fx, old, &[old], "n3").await,
    ];

    // Every node calls every other, back to back, for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut traffic = Vec::new();
    for from in &nodes {
        for to in &nodes {
            if from.local_id() == to.local_id() {
                continue;
            }
            let (from, to, stop, calls) = (from.clone(), to.clone(), stop.clone(), calls.clone());
            traffic.push(tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    call(&from, &to).await.unwrap_or_else(|e| {
                        panic!(
                            "{} → {} failed during rotation: {e}",
                            from.local_id(),
                            to.local_id()
                        )
                    });
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let progress = |at: u64| {
        let calls = calls.clone();
        async move {
            // Let some traffic cross each step; bounded by the test's own call count.
            while calls.load(Ordering::Relaxed) < at {
                tokio::task::yield_now().await;
            }
        }
    };
    progress(50).await;

    // 1. Every node trusts both CAs.
    for n in &nodes {
        let identity = n.tls_identity();
        n.reload_tls(identity, roots(&[old, &new]), RevocationLists::none())
            .unwrap();
    }
    progress(100).await;

    // 2. Every node gets a certificate from the new CA.
    for n in &nodes {
        let identity = new
            .issue_node(n.local_id().as_str(), &NodeCertOptions::default())
            .unwrap()
            .identity;
        n.reload_tls(identity, roots(&[old, &new]), RevocationLists::none())
            .unwrap();
    }
    progress(150).await;

    // 3. The old CA is no longer trusted.
    for n in &nodes {
        n.reload_tls(n.tls_identity(), roots(&[&new]), RevocationLists::none())
            .unwrap();
    }
    progress(200).await;
    stop.store(true, Ordering::Release);
    for t in traffic {
        t.await.unwrap();
    }

    // New handshakes use the new setup: a node that trusts only the new CA reaches every
    // node and is reached by it (each presents its new certificate)...
    let fresh = node(&fx, &new, &[&new], "n4").await;
    for n in &nodes {
        call(&fresh, n).await.unwrap();
        call(n, &fresh).await.unwrap();
    }
    // ...and a node still holding an old-CA certificate is refused at its handshake.
    let stale = node(&fx, old, &[old, &new], "n5").await;
    for n in &nodes {
        let got = call(&stale, n).await;
        assert!(matches!(got, Err(Error::Authentication(_))), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_and_its_live_connections_closed() {
    common::init_tracing();
    let fx = Fixture::new("revocation");
    let ca = &fx.ca;
    let n1 = node(&fx, ca, &[ca], "n1").await;
    let n2 = node(&fx, ca, &[ca], "n2").await;
    let n3 = node(&fx, ca, &[ca], "n3").await;
    call(&n3, &n1).await.unwrap();
    call(&n1, &n2).await.unwrap();

    let n3_cert = n3.tls_identity().leaf().clone();
    let crl = ca
        .revocation_list_pem(&[&n3_cert], 1, time::Duration::days(7))
        .unwrap();
    let lists = RevocationLists::from_pem(crl.as_bytes()).unwrap();
    for n in [&n1, &n2] {
        n.reload_tls(n.tls_identity(), roots(&[ca]), lists.clone())
            .unwrap();
    }
    // n1's live connection with n3 was closed; every new handshake with n3 is refused, in
    // both directions.
    assert!(
        n1.connections().iter().all(|c| c.peer != *n3.local_id()),
        "revoked peer still connected"
    );
    for n in [&n1, &n2] {
        let got = call(&n3, n).await;
        assert!(
            matches!(got, Err(Error::Authentication(_))),
            "n3 → {}: {got:?}",
            n.local_id()
        );
        let got = call(n, &n3).await;
        assert!(
            matches!(got, Err(Error::Authentication(_))),
            "{} → n3: {got:?}",
            n.local_id()
        );
    }
    // Nodes that are not revoked still talk.
    call(&n1, &n2).await.unwrap();
    call(&n2, &n1).await.unwrap();
}

/// Two processes of n3 (two certificates) dial n1 one after the other, so n1 holds one live
/// connection from n3 and one being retired (its grace period is 12 s here). Revoking both
/// certificates closes both at once, not only the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_also_closes_a_revoked_peers_retiring_connection() {
    common::init_tracing();
    let fx = Fixture::new("revocation-retiring");
    let ca = &fx.ca;
    let n1 = node(&fx, ca, &[ca], "n1").await;
    let n3_old = node(&fx, ca, &[ca], "n3").await;
    let n3_new = node(&fx, ca, &[ca], "n3").await;
    call(&n3_old, &n1).await.unwrap();
    call(&n3_new, &n1).await.unwrap();
    assert_eq!(
        n1.open_connections(),
        2,
        "the replaced connection is retiring, not closed"
    );

    let certs = [
        n3_old.tls_identity().leaf().clone(),
        n3_new.tls_identity().leaf().clone(),
    ];
    let crl = ca
        .revocation_list_pem(&[&certs[0], &certs[1]], 1, time::Duration::days(7))
        .unwrap();
    let lists = RevocationLists::from_pem(crl.as_bytes()).unwrap();
    n1.reload_tls(n1.tls_identity(), roots(&[ca]), lists)
        .unwrap();
    // Closed connections leave the endpoint once drained (a few PTOs on loopback); the
    // retiring one would otherwise stay for its 12 s grace period.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n1.open_connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} connections of the revoked peer still open",
            n1.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A revocation list past its `nextUpdate`: used as it is by default; with
/// `enforce_next_update(true)` a new handshake with the node is refused (fail closed), the
/// connections already up are left alone, and a fresh list lets new handshakes through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_revocation_list_fails_closed_only_when_enforced() {
    common::init_tracing();
    let fx = Fixture::new("stale-crl");
    let ca = &fx.ca;
    let n1 = node(&fx, ca, &[ca], "n1").await;
    let n2 = node(&fx, ca, &[ca], "n2").await;
    // Issued a minute ago, stale for the last 30 s.
    let stale_pem = ca
        .revocation_list_pem(&[], 1, time::Duration::seconds(-30))
        .unwrap();
    let stale = RevocationLists::from_pem(stale_pem.as_bytes()).unwrap();
    let next_update = stale.next_update().expect("the list states a nextUpdate");
    assert!(
        next_update < std::time::SystemTime::now(),
        "the list is not stale"
    );

    // Not enforced (the default): the list is used as it is.
    assert!(!stale.enforces_next_update());
    n1.reload_tls(n1.tls_identity(), roots(&[ca]), stale.clone())
        .unwrap();
    call(&n2, &n1).await.unwrap();

    let stale = stale.enforce_next_update(true);
    let n3 = node(&fx, ca, &[ca], "n3").await;
    n1.reload_tls(n1.tls_identity(), roots(&[ca]), stale)
        .unwrap();
    let refused = call(&n3, &n1).await;
    assert!(
        matches!(refused, Err(Error::Authentication(_))),
        "{refused:?}"
    );
    let refused = call(&n1, &n3).await;
    assert!(
        matches!(refused, Err(Error::Authentication(_))),
        "{refused:?}"
    );
    // The connection that was up stays up.
    call(&n2, &n1).await.unwrap();

    let fresh_pem = ca
        .revocation_list_pem(&[], 2, time::Duration::days(7))
        .unwrap();
    let fresh = RevocationLists::from_pem(fresh_pem.as_bytes())
        .unwrap()
        .enforce_next_update(true);
    n1.reload_tls(n1.tls_identity(), roots(&[ca]), fresh)
        .unwrap();
    // n3 backs off after the refusal (at most 100 ms here): retry, bounded.
    let mut answer = call(&n3, &n1).await;
    for _ in 0..100 {
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer = call(&n3, &n1).await;
    }
    answer.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_certificate_of_another_node() {
    let fx = Fixture::new("reload");
    let n1 = node(&fx, &fx.ca, &[&fx.ca], "n1").await;
    let other = fx.identity("n2");
    let got = n1.reload_tls(other, fx.ca.roots(), RevocationLists::none());
    assert!(matches!(got, Err(Error::Config(_))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_files_are_reloaded_when_they_change() {
    common::init_tracing();
    let fx = Fixture::new("watch");
    let dir = std::env::temp_dir().join(format!("quicraft-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsFiles {
        cert_chain: dir.join("n1.pem"),
        key: dir.join("n1.key"),
        ca: dir.join("ca.pem"),
        crl: None,
    };
    let write = |node: &quicraft::tls::GeneratedNode, ca_pem: &str| {
        std::fs::write(&files.cert_chain, &node.cert_pem).unwrap();
        std::fs::write(&files.key, &node.key_pem).unwrap();
        std::fs::write(&files.ca, ca_pem).unwrap();
    };
    write(&fx.issue("n1"), fx.ca.cert_pem());
    let config = quicraft::QuicConfig::from_pem_files(
        fx.cluster(),
        &files.cert_chain,
        &files.key,
        &files.ca,
    )
    .unwrap()
    .bind("127.0.0.1:0".parse().unwrap())
    .watch_files(files.clone(), Duration::from_millis(20));
    let (n1, incoming) = QuicTransport::bind(config).await.unwrap();
    serve(&n1, incoming);
    let n2 = node(&fx, &fx.ca, &[&fx.ca], "n2").await;
    call(&n2, &n1).await.unwrap();

    // The files now say: trust only another CA. After the reload, n2 is refused.
    let other = ClusterCa::generate("watch").unwrap();
    let mut reloads = n1.tls_reloads();
    write(
        &other.issue_node("n1", &NodeCertOptions::default()).unwrap(),
        other.cert_pem(),
    );
    tokio::time::timeout(Duration::from_secs(10), reloads.changed())
        .await
        .unwrap()
        .unwrap();
    let fresh = node(&fx, &fx.ca, &[&fx.ca], "n3").await;
    let got = call(&fresh, &n1).await;
    assert!(matches!(got, Err(Error::Authentication(_))), "{got:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
