//! The shape of a node certificate (issue 14, item 7): a CA-signed leaf must carry key usage
//! `digitalSignature` and extended key usages `serverAuth` and `clientAuth`
//! (`docs/PROTOCOL.md` §2.2). A leaf without them is refused on both sides of the handshake:
//! by a dialler when the listener presents it, and by a listener when a dialler presents it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Fixture;
use quicraft::{Error, Identity, QuicTransport, RpcHeader, Transport};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose as Eku, KeyPair, KeyUsagePurpose as Ku};

/// A leaf for `node` signed by the fixture's CA with exactly these usages (an empty list
/// leaves the extension out), naming `spiffe://<cluster>/node/<node>`.
fn leaf(fixture: &Fixture, node: &str, key_usages: Vec<Ku>, ekus: Vec<Eku>) -> Identity {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let uri = format!("spiffe://{}/node/{node}", fixture.cluster());
    params
        .subject_alt_names
        .push(rcgen::SanType::URI(uri.as_str().try_into().unwrap()));
    params.key_usages = key_usages;
    params.extended_key_usages = ekus;
    let key = KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        fixture.ca.cert_pem(),
        KeyPair::from_pem(&fixture.ca.key_pem()).unwrap(),
    )
    .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Identity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

async fn vote(from: &QuicTransport, to: &QuicTransport) -> Result<(), Error> {
    let request = common::vote_from(from, 1);
    from.request_vote(to.local_id(), &to.local_addr(), request)
        .await
        .map(|_| ())
}

/// Node `n1` presenting `identity` and a well-formed `n2`; calls both ways. Returns
/// (n2 calling n1: n1's certificate as a server, n1 calling n2: as a client).
async fn both_directions(
    fixture: &Fixture,
    identity: Identity,
) -> (Result<(), Error>, Result<(), Error>) {
    let (n1, n1_incoming) = QuicTransport::bind(fixture.config_for(identity))
        .await
        .expect("a node with this certificate still binds (its own check only warns)");
    let (n2, n2_incoming) = fixture.node("n2").await;
    for (mut incoming, node) in [(n1_incoming, &n1), (n2_incoming, &n2)] {
        let me = RpcHeader::new(node.local_id().clone(), node.local_addr());
        tokio::spawn(async move {
            while let Some(rpc) = incoming.recv().await {
                rpc.respond(Ok(quicraft::RequestVoteResponse {
                    header: me.clone(),
                    term: 1,
                    granted: true,
                }
                .into()));
            }
        });
    }
    let as_server = tokio::time::timeout(Duration::from_secs(10), vote(&n2, &n1))
        .await
        .expect("n2 -> n1 within 10 s");
    let as_client = tokio::time::timeout(Duration::from_secs(10), vote(&n1, &n2))
        .await
        .expect("n1 -> n2 within 10 s");
    n1.close().await;
    n2.close().await;
    (as_server, as_client)
}

fn assert_refused(outcome: (Result<(), Error>, Result<(), Error>), case: &str) {
    let (as_server, as_client) = outcome;
    assert!(
        matches!(as_server, Err(Error::Authentication(_))),
        "{case}, presented by the listener: {as_server:?}"
    );
    assert!(
        matches!(as_client, Err(Error::Authentication(_))),
        "{case}, presented by the dialler: {as_client:?}"
    );
}

const BOTH: [Eku; 2] = [Eku::ServerAuth, Eku::ClientAuth];

/// The same construction with every required usage works both ways: the refusals below are
/// about the usages, not about how the certificates are made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_with_every_required_usage_is_accepted() {
    common::init_tracing();
    let fixture = Fixture::new("shape");
    let identity = leaf(&fixture, "n1", vec![Ku::DigitalSignature], BOTH.to_vec());
    let (as_server, as_client) = both_directions(&fixture, identity).await;
    as_server.expect("n2 -> n1");
    as_client.expect("n1 -> n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_without_extended_key_usage_is_refused_both_ways() {
    common::init_tracing();
    let fixture = Fixture::new("shape");
    let identity = leaf(&fixture, "n1", vec![Ku::DigitalSignature], vec![]);
    assert_refused(both_directions(&fixture, identity).await, "no EKU");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_with_key_usage_key_cert_sign_only_is_refused_both_ways() {
    common::init_tracing();
    let fixture = Fixture::new("shape");
    let identity = leaf(&fixture, "n1", vec![Ku::KeyCertSign], BOTH.to_vec());
    assert_refused(
        both_directions(&fixture, identity).await,
        "keyCertSign only",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_without_key_usage_is_refused_both_ways() {
    common::init_tracing();
    let fixture = Fixture::new("shape");
    let identity = leaf(&fixture, "n1", vec![], BOTH.to_vec());
    assert_refused(both_directions(&fixture, identity).await, "no key usage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_with_one_extended_key_usage_is_refused_both_ways() {
    common::init_tracing();
    let fixture = Fixture::new("shape");
    for (eku, case) in [
        (Eku::ServerAuth, "serverAuth only"),
        (Eku::ClientAuth, "clientAuth only"),
    ] {
        let identity = leaf(&fixture, "n1", vec![Ku::DigitalSignature], vec![eku]);
        assert_refused(both_directions(&fixture, identity).await, case);
    }
}
