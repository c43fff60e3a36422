//! Writes the checked-in seed corpus, a few small files per fuzz target, into `fuzz/corpus/`:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```
//!
//! Frames are encoded by quicraft's own encoder. The certificates are generated afresh (new
//! keys each run), so re-running changes the `spiffe_id` seeds' bytes but not their shapes.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use quicraft::fuzzing::{Frame, encode};
use quicraft::{AppendEntriesRequest, AppendEntriesResponse, Command, ErrorCode, InstallSnapshotRequest, Log, LogType, RemoteError, RequestPreVoteRequest, RequestVoteRequest, RequestVoteResponse, Response, RpcHeader, TimeoutNowRequest};
use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft_fuzz::MAX;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn header() -> RpcHeader {
    RpcHeader::new("n1", "127.0.0.1:7000")
}

fn append(first_index: u64, count: u64) -> AppendEntriesRequest {
    let entries = (first_index..first_index + count)
        .map(|index| {
            let mut log = Log::command(index, 3, Bytes::from(format!("set k{index}=v")));
            if index % 2 == 0 {
                log.log_type = LogType::Configuration;
                log.extensions = Bytes::from_static(b"ext");
                log.appended_at = Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
            }
            log
        })
        .collect();
    AppendEntriesRequest {
        header: header(),
        term: 3,
        prev_log_entry: first_index.saturating_sub(1),
        prev_log_term: 3,
        entries,
        leader_commit_index: first_index,
    }
}

fn encoded(frames: &[Frame]) -> Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    for frame in frames {
        encode(frame, &mut buf, MAX)?;
    }
    Ok(buf.to_vec())
}

/// A stream input: the two chunking-seed bytes, then the stream.
fn seeded(seed: [u8; 2], stream: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    out.extend_from_slice(stream);
    out
}

fn frame_seeds() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let offer = Frame::InstallSnapshot {
        transfer_id: 2,
        request: InstallSnapshotRequest {
            header: header().with_extensions(&b"engine"[..]),
            snapshot_version: 1,
            term: 4,
            last_log_index: 100,
            last_log_term: 4,
            configuration: Bytes::from_static(b"cfg"),
            configuration_index: 90,
            size: 1 << 20,
        },
    };
    let vote = Frame::Request(Command::RequestVote(RequestVoteRequest {
        header: header(),
        term: 4,
        last_log_index: 9,
        last_log_term: 3,
        leadership_transfer: true,
    }));
    let pre_vote = Frame::Request(Command::RequestPreVote(RequestPreVoteRequest {
        header: header(),
        term: 4,
        last_log_index: 9,
        last_log_term: 3,
    }));
    let answers = [
        Frame::Response(Response::AppendEntries(AppendEntriesResponse {
            header: header(),
            term: 3,
            last_log: 12,
            success: true,
            no_retry_backoff: false,
        })),
        Frame::Response(Response::RequestVote(RequestVoteResponse {
            header: header(),
            term: 4,
            granted: true,
        })),
        Frame::Error(RemoteError::new(ErrorCode::BAD_REQUEST, "malformed frame")),
    ];
    Ok(vec![
        (
            "append_entries",
            encoded(&[Frame::Request(append(10, 3).into())])?,
        ),
        ("install_snapshot", encoded(&[offer])?),
        ("votes", encoded(&[vote, pre_vote])?),
        (
            "openers",
            encoded(&[
                Frame::Request(TimeoutNowRequest { header: header() }.into()),
                Frame::PipelineOpen,
                Frame::SnapshotData { transfer_id: 6 },
            ])?,
        ),
        ("answers", encoded(&answers)?),
    ])
}

fn pipeline_seeds() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let heartbeat = AppendEntriesRequest::heartbeat(header(), 3);
    let good = encoded(&[
        Frame::PipelineOpen,
        Frame::Request(append(1, 2).into()),
        Frame::Request(heartbeat.into()),
        Frame::Request(append(3, 1).into()),
    ])?;
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 7);
    let wrong_frame = encoded(&[
        Frame::PipelineOpen,
        Frame::Request(append(1, 1).into()),
        Frame::SnapshotData { transfer_id: 1 },
    ])?;
    Ok(vec![
        ("pipeline_bytewise", seeded([0, 1], &good)),
        ("pipeline_chunks", seeded([40, 7], &good)),
        ("pipeline_truncated", seeded([9, 2], &truncated)),
        ("pipeline_wrong_frame", seeded([16, 3], &wrong_frame)),
    ])
}

fn snapshot_seeds() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let data = b"snapshot data follows the header as raw bytes";
    let mut stream = encoded(&[Frame::SnapshotData { transfer_id: 14 }])?;
    stream.extend_from_slice(data);
    let mut far = encoded(&[Frame::SnapshotData {
        transfer_id: u64::MAX,
    }])?;
    far.extend_from_slice(&[0; 16]);
    let not_data = encoded(&[Frame::PipelineOpen])?;
    Ok(vec![
        ("header_and_data", seeded([3, 5], &stream)),
        ("header_bytewise", seeded([0, 0], &far)),
        ("wrong_frame", seeded([255, 1], &not_data)),
    ])
}

/// A self-signed certificate with exactly these URI SANs (and a DNS SAN).
fn cert_with_uris(uris: &[&str]) -> Result<Vec<u8>> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::DnsName(Ia5String::try_from("localhost")?)];
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(*uri)?));
    }
    let key = KeyPair::generate()?;
    Ok(params.self_signed(&key)?.der().to_vec())
}

fn spiffe_seeds() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let ca = ClusterCa::generate("fuzz")?;
    let node = ca.issue_node("n1", &NodeCertOptions::default())?;
    let node_der = node.identity.leaf().to_vec();
    let ca_der = ca
        .roots()
        .certificates()
        .first()
        .ok_or("the CA has no certificate")?
        .to_vec();
    Ok(vec![
        ("node_cert", node_der),
        ("ca_cert_no_san", ca_der),
        (
            "two_spiffe_ids",
            cert_with_uris(&["spiffe://fuzz/node/a", "spiffe://fuzz/node/b"])?,
        ),
        (
            "bad_spiffe_id",
            cert_with_uris(&["https://example.com/", "SPIFFE://Fuzz/node/a?x"])?,
        ),
    ])
}

fn write(corpus: &Path, target: &str, seeds: Vec<(&'static str, Vec<u8>)>) -> Result<()> {
    let dir = corpus.join(target);
    fs::create_dir_all(&dir)?;
    for (name, bytes) in seeds {
        let path = dir.join(name);
        fs::write(&path, &bytes)?;
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

fn main() -> Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write(&corpus, "frame", frame_seeds()?)?;
    write(&corpus, "pipeline", pipeline_seeds()?)?;
    write(&corpus, "snapshot_header", snapshot_seeds()?)?;
    write(&corpus, "spiffe_id", spiffe_seeds()?)?;
    Ok(())
}
