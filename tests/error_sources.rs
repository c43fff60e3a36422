//! Errors keep their causes (issue 17, item 2): what quinn or rustls reported is reachable
//! through `std::error::Error::source`, typed, not only as words in a message.

mod common;

use std::error::Error as _;

use common::Fixture;
use quicraft::{ConfigError, Error, QuicTransport, RequestVoteRequest, RpcHeader, Transport};

fn vote(from: &QuicTransport) -> RequestVoteRequest {
    RequestVoteRequest {
        header: RpcHeader::new(from.local_id().clone(), from.local_addr()),
        term: 1,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    }
}

#[tokio::test]
async fn a_peer_closing_under_a_call_is_connection_lost_with_quinns_error_as_cause() {
    let fixture = Fixture::new("errors");
    let (a, _a_in) = fixture.node("a").await;
    let (b, mut b_in) = fixture.node("b").await;
    let (id, addr) = (b.local_id().clone(), b.local_addr());
    let call = {
        let a = a.clone();
        let request = vote(&a);
        tokio::spawn(async move { a.request_vote(&id, &addr, request).await })
    };
    // The request reached b's consumer; b closes without answering it.
    let rpc = b_in.recv().await.expect("the request reaches b");
    b.close().await;
    drop(rpc);
    let got = call.await.expect("call task");
    let Err(Error::ConnectionLost { source, .. }) = &got else {
        panic!("expected ConnectionLost, got {got:?}");
    };
    let cause = source.as_ref().expect("a cause is kept");
    let quinn_error = cause
        .downcast_ref::<quinn::ConnectionError>()
        .unwrap_or_else(|| panic!("the cause is quinn's error: {cause:?}"));
    assert!(
        matches!(quinn_error, quinn::ConnectionError::ApplicationClosed(_)),
        "{quinn_error:?}"
    );
    let error = got.unwrap_err();
    assert!(error.source().is_some(), "{error}");
    a.close().await;
}

#[tokio::test]
async fn a_certificate_of_another_cluster_is_a_config_error_caused_by_the_tls_error() {
    let fixture = Fixture::new("errors");
    let stranger = Fixture::new("elsewhere");
    let config = fixture.config_for(stranger.identity("n1"));
    let got = QuicTransport::bind(config).await;
    let Err(error @ Error::Config(ConfigError::Tls(_))) = got else {
        panic!("expected Error::Config(Tls), got {:?}", got.map(|_| ()));
    };
    let cause = error.source().expect("the config error is the source");
    assert!(cause.downcast_ref::<ConfigError>().is_some(), "{cause:?}");
    assert!(
        error.to_string().contains("spiffe://elsewhere/node/n1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_malformed_peer_address_is_a_protocol_error_caused_by_the_decoding_error() {
    let fixture = Fixture::new("errors");
    let (a, _a_in) = fixture.node("a").await;
    let got = a.decode_peer(&[0xff, 0xfe]);
    let Err(error @ Error::Protocol { .. }) = got else {
        panic!("expected Error::Protocol, got {got:?}");
    };
    let cause = error.source().expect("the decoding error is kept");
    assert!(
        cause.downcast_ref::<std::str::Utf8Error>().is_some(),
        "{cause:?}"
    );
    a.close().await;
}
