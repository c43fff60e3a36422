//! The cert tool (`examples/certgen.rs`) as operators run it: the files it writes and their
//! modes, that the transport runs on them, that it refuses to overwrite or to accept bad
//! input without writing anything, `inspect`, and that openssl verifies its certificates.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quicraft::{
    Command as RpcCommand, Incoming, QuicConfig, QuicTransport, RequestVoteRequest,
    RequestVoteResponse, RpcHeader, Transport,
};

/// The built `certgen` example: `target/<profile>/examples/certgen`, beside the `deps/`
/// directory this test runs from; built first if missing or older than its source (as after
/// `cargo test --test certgen`, which does not build examples).
fn certgen() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let bin = profile_dir.join("examples").join("certgen");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/certgen.rs");
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified(&bin) < modified(&source) {
            let mut build = Command::new(env!("CARGO"));
            build
                .args(["build", "--example", "certgen"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success(), "cargo build --example certgen failed");
        }
        assert!(bin.exists(), "{} is missing", bin.display());
        bin
    })
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "quicraft-certgen-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
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

/// Runs `certgen args` in `dir`.
fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(certgen())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs `certgen args` in `dir` and requires success.
fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "certgen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The names in `dir`, hidden ones included; empty if it does not exist.
fn listing(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn cluster_writes_the_ca_and_node_files_with_private_keys() {
    let tmp = TempDir::new("cluster");
    let stdout = run_ok(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1,n2"],
    );
    assert!(stdout.contains("spiffe://prod/node/n1"), "{stdout}");
    let certs = tmp.join("certs");
    assert_eq!(
        listing(&certs),
        names(&["ca.pem", "ca.key", "n1.pem", "n1.key", "n2.pem", "n2.key"])
    );
    for key in ["ca.key", "n1.key", "n2.key"] {
        assert_eq!(mode(&certs.join(key)), 0o600, "{key}");
    }
    for cert in ["ca.pem", "n1.pem", "n2.pem"] {
        let text = std::fs::read_to_string(certs.join(cert)).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(!text.contains("PRIVATE KEY"), "{cert}");
    }
    // The directory it created holds keys: owner only.
    assert_eq!(mode(&certs), 0o700);

    // The same run again refuses and changes nothing.
    let before = std::fs::read(certs.join("n1.pem")).unwrap();
    let out = run(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1,n2"],
    );
    assert!(!out.status.success());
    assert_eq!(std::fs::read(certs.join("n1.pem")).unwrap(), before);
    assert_eq!(listing(&certs).len(), 6);
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

async fn bind(dir: &Path, node: &str) -> (QuicTransport, Incoming) {
    let config = QuicConfig::from_pem_files(
        "prod",
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
        dir.join("ca.pem"),
    )
    .unwrap()
    .bind("127.0.0.1:0".parse().unwrap())
    .rpc_timeout(Duration::from_secs(5))
    .connect_timeout(Duration::from_secs(2));
    QuicTransport::bind(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_on_the_generated_files() {
    let tmp = TempDir::new("rpc");
    run_ok(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1,n2,n3"],
    );
    let certs = tmp.join("certs");
    let (a, a_in) = bind(&certs, "n1").await;
    let (b, b_in) = bind(&certs, "n2").await;
    assert_eq!(a.local_id().to_string(), "n1");
    serve(&a, a_in);
    serve(&b, b_in);
    let guard = Duration::from_secs(10);
    let resp = tokio::time::timeout(
        guard,
        a.request_vote(b.local_id(), &b.local_addr(), vote(&a, 7)),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(resp.granted && resp.term == 7);
    let resp = tokio::time::timeout(
        guard,
        b.request_vote(a.local_id(), &a.local_addr(), vote(&b, 8)),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(resp.granted && resp.term == 8);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_writes_a_list_that_nodes_enforce() {
    let tmp = TempDir::new("revoke");
    run_ok(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1,n2,n3"],
    );
    let certs = tmp.join("certs");
    let shown = run_ok(
        tmp.path(),
        &[
            "revoke",
            "--cluster",
            "prod",
            "--cert",
            "certs/n3.pem",
            "--crl-number",
            "7",
        ],
    );
    assert!(shown.contains("1 certificate(s) revoked"), "{shown}");
    let lists = quicraft::RevocationLists::from_file(certs.join("crl.pem")).unwrap();

    // n1 enforces the list: n2 still talks to it, n3 is refused.
    let config = QuicConfig::from_pem_files(
        "prod",
        certs.join("n1.pem"),
        certs.join("n1.key"),
        certs.join("ca.pem"),
    )
    .unwrap()
    .bind("127.0.0.1:0".parse().unwrap())
    .revocation(lists);
    let (a, a_in) = QuicTransport::bind(config).await.unwrap();
    let (b, b_in) = bind(&certs, "n2").await;
    let (c, c_in) = bind(&certs, "n3").await;
    serve(&a, a_in);
    serve(&b, b_in);
    serve(&c, c_in);
    let guard = Duration::from_secs(10);
    let a_addr = a.local_addr();
    let ok = tokio::time::timeout(guard, b.request_vote(a.local_id(), &a_addr, vote(&b, 1)));
    assert!(ok.await.unwrap().is_ok());
    let refused = tokio::time::timeout(guard, c.request_vote(a.local_id(), &a_addr, vote(&c, 1)));
    let refused = refused.await.unwrap();
    assert!(
        matches!(refused, Err(quicraft::Error::Authentication(_))),
        "{refused:?}"
    );

    // Without --force an existing list is not replaced; a certificate of another CA is refused.
    let again = run(
        tmp.path(),
        &["revoke", "--cluster", "prod", "--cert", "certs/n3.pem"],
    );
    assert!(!again.status.success());
    run_ok(tmp.path(), &["ca", "--cluster", "prod", "--out", "other"]);
    run_ok(
        tmp.path(),
        &["node", "--cluster", "prod", "--id", "x", "--out", "other"],
    );
    let foreign = run(
        tmp.path(),
        &[
            "revoke",
            "--cluster",
            "prod",
            "--cert",
            "other/x.pem",
            "--force",
        ],
    );
    assert!(!foreign.status.success());
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("was not issued by this CA"));
    for t in [&a, &b, &c] {
        t.close().await;
    }
}

#[test]
fn ca_refuses_to_overwrite_without_force() {
    let tmp = TempDir::new("force");
    let out = tmp.join("pki");
    let out_arg = out.to_str().unwrap();
    run_ok(tmp.path(), &["ca", "--cluster", "prod", "--out", out_arg]);
    let cert = std::fs::read(out.join("ca.pem")).unwrap();
    let key = std::fs::read(out.join("ca.key")).unwrap();

    let refused = run(tmp.path(), &["ca", "--cluster", "prod", "--out", out_arg]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already exists") && stderr.contains("--force"));
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), cert);
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), key);

    // Only the key left: still refused, the key untouched, no certificate written.
    std::fs::remove_file(out.join("ca.pem")).unwrap();
    assert!(
        !run(tmp.path(), &["ca", "--cluster", "prod", "--out", out_arg])
            .status
            .success()
    );
    assert_eq!(listing(&out), names(&["ca.key"]));
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), key);

    run_ok(
        tmp.path(),
        &[
            "ca",
            "--cluster",
            "prod",
            "--out",
            out_arg,
            "--force",
            "--validity-days",
            "30",
            "--common-name",
            "Prod Root",
        ],
    );
    assert_ne!(std::fs::read(out.join("ca.key")).unwrap(), key);
    assert_eq!(mode(&out.join("ca.key")), 0o600);
    assert_eq!(listing(&out), names(&["ca.pem", "ca.key"]));
    let shown = run_ok(
        tmp.path(),
        &["inspect", out.join("ca.pem").to_str().unwrap()],
    );
    assert!(shown.contains("CN=Prod Root"), "{shown}");
    assert!(shown.contains("CA:         yes"), "{shown}");
}

#[test]
fn node_issues_from_an_existing_ca() {
    let tmp = TempDir::new("node");
    run_ok(tmp.path(), &["ca", "--cluster", "prod"]);
    let stdout = run_ok(
        tmp.path(),
        &[
            "node",
            "--cluster",
            "prod",
            "--id",
            "n4",
            "--dns",
            "n4.example.org",
            "--dns",
            "raft-4",
            "--ip",
            "192.0.2.14",
            "--ip",
            "2001:db8::14",
            "--validity-days",
            "30",
        ],
    );
    assert!(stdout.contains("spiffe://prod/node/n4"), "{stdout}");
    let certs = tmp.join("certs");
    assert_eq!(
        listing(&certs),
        names(&["ca.pem", "ca.key", "n4.pem", "n4.key"])
    );
    assert_eq!(mode(&certs.join("n4.key")), 0o600);
    let shown = run_ok(
        tmp.path(),
        &["inspect", "certs/n4.pem", "--ca", "certs/ca.pem"],
    );
    for expected in [
        "spiffe://prod/node/n4",
        "DNS:n4.example.org",
        "DNS:raft-4",
        "IP:192.0.2.14",
        "IP:2001:db8::14",
        "serverAuth",
        "clientAuth",
        "chains to certs/ca.pem",
    ] {
        assert!(
            shown.contains(expected),
            "{expected} missing from:\n{shown}"
        );
    }
    assert!(!shown.contains("localhost"), "{shown}");
    // Re-issuing needs --force.
    let args = ["node", "--cluster", "prod", "--id", "n4"];
    assert!(!run(tmp.path(), &args).status.success());
    run_ok(tmp.path(), &[&args[..], &["--force"]].concat());
}

#[test]
fn node_bad_input_fails_in_one_line_and_writes_nothing() {
    let tmp = TempDir::new("bad");
    let empty = tmp.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let good = tmp.join("good");
    let good_arg = good.to_str().unwrap();
    run_ok(tmp.path(), &["ca", "--cluster", "prod", "--out", good_arg]);
    let malformed = tmp.join("malformed");
    std::fs::create_dir(&malformed).unwrap();
    std::fs::write(
        malformed.join("ca.pem"),
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::copy(good.join("ca.key"), malformed.join("ca.key")).unwrap();
    let not_pem = tmp.join("not-pem");
    std::fs::create_dir(&not_pem).unwrap();
    std::fs::copy(good.join("ca.pem"), not_pem.join("ca.pem")).unwrap();
    std::fs::write(not_pem.join("ca.key"), "just some text\n").unwrap();

    let cases: [(&str, &Path, &str, &str, &str); 8] = [
        ("missing CA", &empty, "prod", "n1", "cannot read"),
        ("malformed PEM", &malformed, "prod", "n1", "malformed PEM"),
        ("key not PEM", &not_pem, "prod", "n1", "cannot use the CA"),
        ("id with a slash", &good, "prod", "a/b", "invalid node id"),
        ("id ..", &good, "prod", "..", "invalid node id"),
        ("id ca", &good, "prod", "ca", "invalid node id"),
        (
            "upper-case cluster",
            &good,
            "UPPER",
            "n1",
            "invalid cluster name",
        ),
        (
            "cluster with a slash",
            &good,
            "a/b",
            "n1",
            "invalid cluster name",
        ),
    ];
    for (what, dir, cluster, id, message) in cases {
        let before = listing(dir);
        let out = run(
            tmp.path(),
            &[
                "node",
                "--cluster",
                cluster,
                "--id",
                id,
                "--out",
                dir.to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "{what}: succeeded");
        assert_eq!(out.status.code(), Some(1), "{what}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr:?}");
        assert!(stderr.contains(message), "{what}: {stderr:?}");
        assert!(out.stdout.is_empty(), "{what}");
        assert_eq!(listing(dir), before, "{what}: files changed");
    }

    // A CA directory that does not exist is not created.
    let missing = tmp.join("missing");
    let out = run(
        tmp.path(),
        &[
            "node",
            "--cluster",
            "prod",
            "--id",
            "n1",
            "--out",
            missing.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(!missing.exists());

    // Bad addresses and validity: one line, nothing written.
    for extra in [
        ["--ip", "1.2.3"],
        ["--dns", "a b"],
        ["--validity-days", "0"],
    ] {
        let before = listing(&good);
        let args = [
            &["node", "--cluster", "prod", "--id", "n1", "--out", good_arg][..],
            &extra[..],
        ]
        .concat();
        let out = run(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
        assert_eq!(listing(&good), before, "{extra:?}");
    }

    // A cluster command with one bad id writes not even the CA.
    let out = run(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1,x/y,n3"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!tmp.join("certs").exists());
}

#[test]
fn inspect_names_the_node_and_whether_it_chains() {
    let tmp = TempDir::new("inspect");
    run_ok(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1"],
    );
    run_ok(tmp.path(), &["ca", "--cluster", "prod", "--out", "other"]);

    let shown = run_ok(tmp.path(), &["inspect", "certs/n1.pem"]);
    for expected in [
        "spiffe://prod/node/n1",
        "cluster:    prod",
        "node id:    n1",
        "issuer:     CN=quicraft prod CA",
        "not after:",
        "URI:spiffe://prod/node/n1",
    ] {
        assert!(
            shown.contains(expected),
            "{expected} missing from:\n{shown}"
        );
    }
    assert!(!shown.contains("chain to"), "{shown}");

    let out = run(
        tmp.path(),
        &["inspect", "certs/n1.pem", "--ca", "certs/ca.pem"],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("chains to certs/ca.pem"), "{stdout}");

    let out = run(
        tmp.path(),
        &["inspect", "certs/n1.pem", "--ca", "other/ca.pem"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("spiffe://prod/node/n1"), "{stdout}");
    assert!(
        stdout.contains("does not chain to other/ca.pem"),
        "{stdout}"
    );

    let out = run(
        tmp.path(),
        &[
            "inspect",
            "certs/n1.pem",
            "--ca",
            "certs/ca.pem",
            "--cluster",
            "staging",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("does not chain")
    );

    let out = run(tmp.path(), &["inspect", "certs/missing.pem"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("certs/missing.pem"), "{stderr}");
}

#[test]
fn help_explains_every_subcommand_and_flag() {
    let tmp = TempDir::new("help");
    let top = run_ok(tmp.path(), &["--help"]);
    for sub in ["ca", "node", "cluster", "inspect"] {
        assert!(top.contains(&format!("  {sub} ")), "{sub} missing:\n{top}");
    }
    let expectations: [(&str, &[&str]); 4] = [
        (
            "ca",
            &[
                "--cluster",
                "--validity-days",
                "--common-name",
                "--out",
                "--force",
            ],
        ),
        (
            "node",
            &[
                "--cluster",
                "--id",
                "--dns",
                "--ip",
                "--validity-days",
                "--ca ",
                "--ca-key",
                "--out",
                "--force",
            ],
        ),
        (
            "cluster",
            &[
                "--cluster",
                "--nodes",
                "--dns",
                "--ip",
                "--validity-days",
                "--ca-validity-days",
                "--out",
                "--force",
            ],
        ),
        ("inspect", &["--ca", "--cluster", "<CERT>"]),
    ];
    for (sub, flags) in expectations {
        let help = run_ok(tmp.path(), &[sub, "--help"]);
        for flag in flags {
            assert!(help.contains(flag), "{sub}: {flag} missing:\n{help}");
        }
    }
    // A usage error is clap's, with status 2.
    assert_eq!(run(tmp.path(), &["node"]).status.code(), Some(2));
}

#[test]
fn openssl_verifies_the_generated_certificates() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("skipped: openssl is not on PATH");
        return;
    }
    let tmp = TempDir::new("openssl");
    run_ok(
        tmp.path(),
        &["cluster", "--cluster", "prod", "--nodes", "n1,n2"],
    );
    run_ok(tmp.path(), &["ca", "--cluster", "prod", "--out", "other"]);
    for node in ["certs/n1.pem", "certs/n2.pem"] {
        let out = Command::new("openssl")
            .args(["verify", "-CAfile", "certs/ca.pem", node])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim() == format!("{node}: OK"),
            "openssl verify {node}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Both purposes, as each node both listens and dials.
    for purpose in ["sslserver", "sslclient"] {
        let out = Command::new("openssl")
            .args([
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                "certs/ca.pem",
                "certs/n1.pem",
            ])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "purpose {purpose}");
    }
    // And refuses them against another CA.
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "other/ca.pem", "certs/n1.pem"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}
