//! Interoperability with certificates made by the openssl command-line tool: a CA made by
//! openssl signing nodes of both tools, a CA made by quicraft signing a node made by openssl,
//! and RPCs in both directions between the two kinds of node. Where `openssl` is not on PATH
//! each test prints why and passes without running.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft::{
    CaRoots, Command as RpcCommand, Identity, Incoming, QuicConfig, QuicTransport,
    RequestVoteRequest, RequestVoteResponse, RpcHeader, TlsError, Transport,
};

const CLUSTER: &str = "interop";

/// Whether `openssl` can be run; prints why not.
fn openssl_available() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            println!(
                "skipped: `openssl version` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            println!("skipped: openssl is not on PATH ({e})");
            false
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "quicraft-openssl-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `openssl args` in `dir`, requiring success.
fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `<name>.cnf`: the subject `CN = <name>` and the extensions of a CA (`ca_ext`) and
/// of a node certificate (`node_ext`) whose URI SAN is `spiffe_uri` (none if `None`).
fn write_config(dir: &TempDir, name: &str, spiffe_uri: Option<&str>) -> String {
    let uri = spiffe_uri.map_or(String::new(), |uri| format!("URI:{uri},"));
    let config = format!(
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         [dn]\n\
         CN = {name}\n\
         [ca_ext]\n\
         basicConstraints = critical,CA:TRUE\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [node_ext]\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth,clientAuth\n\
         subjectAltName = {uri}DNS:localhost,IP:127.0.0.1\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n"
    );
    let file = format!("{name}.cnf");
    std::fs::write(dir.join(&file), config).unwrap();
    file
}

/// A new EC P-256 key in PKCS#8 PEM, as `<name>.key`.
fn genkey(dir: &TempDir, name: &str) -> String {
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    key
}

/// An openssl-made CA: `ca.pem` and `ca.key` (PKCS#8).
fn openssl_ca(dir: &TempDir) {
    let config = write_config(dir, "ca", None);
    genkey(dir, "ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-config",
            &config,
            "-extensions",
            "ca_ext",
            "-days",
            "30",
            "-sha256",
            "-out",
            "ca.pem",
        ],
    );
}

/// A node certificate made by openssl, signed by `ca.pem`/`ca.key`: `<name>.pem` and
/// `<name>.key`, naming `spiffe_uri` (nothing if `None`), DNS localhost and IP 127.0.0.1,
/// serverAuth and clientAuth.
fn openssl_node(dir: &TempDir, name: &str, spiffe_uri: Option<&str>) {
    let config = write_config(dir, name, spiffe_uri);
    let key = genkey(dir, name);
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[
            "req", "-new", "-key", &key, "-config", &config, "-out", &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAserial",
            "ca.srl",
            "-CAcreateserial",
            "-days",
            "30",
            "-sha256",
            "-extfile",
            &config,
            "-extensions",
            "node_ext",
            "-out",
            &pem,
        ],
    );
}

fn node_uri(node: &str) -> String {
    format!("spiffe://{CLUSTER}/node/{node}")
}

fn config(identity: Identity, roots: CaRoots) -> QuicConfig {
    QuicConfig::new(CLUSTER, identity, roots)
        .bind("127.0.0.1:0".parse().unwrap())
        .rpc_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

fn vote(from: &QuicTransport, term: u64) -> RequestVoteRequest {
    RequestVoteRequest {
        header: RpcHeader::new(from.local_id().clone(), from.local_addr()),
        term,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    }
}

/// Grants every vote with the request's term.
fn serve(node: &QuicTransport, mut incoming: Incoming) {
    let me = RpcHeader::new(node.local_id().clone(), node.local_addr());
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            let term = match rpc.command() {
                RpcCommand::RequestVote(req) => req.term,
                other => panic!("unexpected {other:?}"),
            };
            let response = RequestVoteResponse {
                header: me.clone(),
                term,
                granted: true,
            };
            rpc.respond(Ok(response.into()));
        }
    });
}

/// Binds a node from each config and makes RPCs both ways, each node dialling first once.
async fn rpcs_both_ways(a: QuicConfig, b: QuicConfig) {
    let guard = Duration::from_secs(10);
    for first in [true, false] {
        let (a, a_in) = QuicTransport::bind(a.clone()).await.unwrap();
        let (b, b_in) = QuicTransport::bind(b.clone()).await.unwrap();
        serve(&a, a_in);
        serve(&b, b_in);
        let (x, y) = if first { (&a, &b) } else { (&b, &a) };
        for (from, to, term) in [(x, y, 1), (y, x, 2), (x, y, 3)] {
            let resp = tokio::time::timeout(
                guard,
                from.request_vote(to.local_id(), &to.local_addr(), vote(from, term)),
            )
            .await
            .unwrap_or_else(|_| panic!("{} → {} hung", from.local_id(), to.local_id()))
            .unwrap_or_else(|e| panic!("{} → {}: {e}", from.local_id(), to.local_id()));
            assert!(resp.granted && resp.term == term);
        }
        a.close().await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_ca_signs_nodes_of_both_tools() {
    if !openssl_available() {
        return;
    }
    let dir = TempDir::new("openssl-ca");
    openssl_ca(&dir);
    openssl_node(&dir, "n1", Some(&node_uri("n1")));

    // The openssl node, loaded as an operator would, with its key once as PKCS#8 and once
    // as SEC1 ("EC PRIVATE KEY").
    let roots = CaRoots::from_pem_file(dir.join("ca.pem")).unwrap();
    openssl(
        &dir,
        &[
            "pkey",
            "-in",
            "n1.key",
            "-traditional",
            "-out",
            "n1.sec1.key",
        ],
    );
    let sec1 = std::fs::read_to_string(dir.join("n1.sec1.key")).unwrap();
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let n1_pkcs8 = Identity::from_pem_files(dir.join("n1.pem"), dir.join("n1.key")).unwrap();
    let n1_sec1 = Identity::from_pem_files(dir.join("n1.pem"), dir.join("n1.sec1.key")).unwrap();
    assert_eq!(n1_pkcs8.spiffe_id().to_uri(), node_uri("n1"));

    // The quicraft node, issued by the openssl CA.
    let ca_cert = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    let ca = ClusterCa::from_pem(&ca_cert, &ca_key, CLUSTER).unwrap();
    assert_eq!(ca.roots(), roots);
    let n2 = ca.issue_node("n2", &NodeCertOptions::default()).unwrap();
    std::fs::write(dir.join("n2.pem"), &n2.cert_pem).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "n2.pem"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl rejects quicraft's n2");

    rpcs_both_ways(
        config(n1_pkcs8, roots.clone()),
        config(n2.identity.clone(), roots.clone()),
    )
    .await;
    rpcs_both_ways(config(n1_sec1, roots.clone()), config(n2.identity, roots)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quicraft_ca_signs_an_openssl_node() {
    if !openssl_available() {
        return;
    }
    let dir = TempDir::new("quicraft-ca");
    let ca = ClusterCa::generate(CLUSTER).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("ca.key"), ca.key_pem()).unwrap();
    openssl_node(&dir, "n1", Some(&node_uri("n1")));

    let n1 = QuicConfig::from_pem_files(
        CLUSTER,
        dir.join("n1.pem"),
        dir.join("n1.key"),
        dir.join("ca.pem"),
    )
    .unwrap()
    .bind("127.0.0.1:0".parse().unwrap())
    .rpc_timeout(Duration::from_secs(5))
    .connect_timeout(Duration::from_secs(2));
    let n2 = ca.issue_node("n2", &NodeCertOptions::default()).unwrap();
    rpcs_both_ways(n1, config(n2.identity, ca.roots())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_certificates_are_held_to_the_identity_rules() {
    if !openssl_available() {
        return;
    }
    let dir = TempDir::new("rules");
    openssl_ca(&dir);
    // No SPIFFE id: not an identity at all.
    openssl_node(&dir, "plain", None);
    let err = Identity::from_pem_files(dir.join("plain.pem"), dir.join("plain.key"))
        .expect_err("no SPIFFE id");
    assert!(matches!(err, TlsError::NoSpiffeId), "{err}");

    // A node of another cluster signed by the same CA is refused by a node of this one.
    openssl_node(&dir, "intruder", Some("spiffe://other/node/n1"));
    let roots = CaRoots::from_pem_file(dir.join("ca.pem")).unwrap();
    let intruder = Identity::from_pem_files(dir.join("intruder.pem"), dir.join("intruder.key"))
        .expect("a well-formed identity");
    let ca = ClusterCa::from_pem(
        &std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("ca.key")).unwrap(),
        CLUSTER,
    )
    .unwrap();
    let member = ca.issue_node("n2", &NodeCertOptions::default()).unwrap();
    let (n2, n2_in) = QuicTransport::bind(config(member.identity, roots.clone()))
        .await
        .unwrap();
    serve(&n2, n2_in);
    let other = QuicConfig::new("other", intruder, roots)
        .bind("127.0.0.1:0".parse().unwrap())
        .rpc_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2));
    let (intruder, _intruder_in) = QuicTransport::bind(other).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        intruder.request_vote(n2.local_id(), &n2.local_addr(), vote(&intruder, 1)),
    )
    .await
    .expect("refused promptly, not hung");
    assert!(result.is_err(), "a node of another cluster got an answer");
    intruder.close().await;
    n2.close().await;
}
