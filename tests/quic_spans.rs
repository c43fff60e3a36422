//! The transport's spans: a call is an `rpc` span and its service on the peer a `serve_rpc`
//! span, with the same kind, term and stream id, each naming the other node as its peer, so
//! a slow call can be followed across both nodes. (Its own test binary: a thread's scoped
//! subscriber misses callsites that a concurrent test registered first.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::Fixture;
use quicraft::{Command, RequestVoteRequest, RequestVoteResponse, RpcHeader, Transport};

/// Writes what a subscriber formats into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fields of the first closed span named `name` in `text`: `name{a=1 b=2}`.
fn span_fields(text: &str, name: &str) -> BTreeMap<String, String> {
    let open = format!(" {name}{{");
    let line = text
        .lines()
        .find(|l| l.contains(&open))
        .unwrap_or_else(|| panic!("no {name} span in:\n{text}"));
    let start = line.find(&open).unwrap() + open.len();
    let end = start + line[start..].find('}').unwrap();
    line[start..end]
        .split(' ')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

// One thread runs both nodes, so the thread's subscriber sees both sides.
#[tokio::test(flavor = "current_thread")]
async fn a_call_and_its_service_are_spans_with_the_same_stream() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("quicraft=debug")
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fixture = Fixture::new("spans");
    let (s1, _incoming1) = fixture.node("s1").await;
    let (s2, mut incoming2) = fixture.node("s2").await;
    let me = RpcHeader::new(s2.local_id().clone(), s2.local_addr());
    let server = tokio::spawn(async move {
        while let Some(rpc) = incoming2.recv().await {
            let term = match rpc.command() {
                Command::RequestVote(req) => req.term,
                other => panic!("unexpected {other:?}"),
            };
            let answer = RequestVoteResponse {
                header: me.clone(),
                term,
                granted: true,
            };
            rpc.respond(Ok(answer.into()));
        }
    });
    let vote = RequestVoteRequest {
        header: RpcHeader::new(s1.local_id().clone(), s1.local_addr()),
        term: 7,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    let (to, at) = (s2.local_id().clone(), s2.local_addr());
    s1.request_vote(&to, &at, vote).await.expect("vote");
    s1.close().await;
    s2.close().await;
    server.await.unwrap();

    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let call = span_fields(&text, "rpc");
    let served = span_fields(&text, "serve_rpc");
    assert_eq!(call["peer"], "s2");
    assert_eq!(served["peer"], "s1");
    for field in ["kind", "term"] {
        assert_eq!(call[field], served[field], "{field}");
    }
    assert_eq!(call["kind"], "request_vote");
    assert_eq!(call["term"], "7");
    assert_eq!(call["stream"], served["stream"], "the stream id differs");
}
