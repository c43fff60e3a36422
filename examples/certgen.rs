//! `certgen`: makes and inspects the certificates of a quicraft cluster.
//!
//! A cluster CA signs one certificate per node; a node's identity is the URI SAN
//! `spiffe://<cluster>/node/<id>` of its certificate. The tool is a thin command-line layer
//! over the library ([`quicraft::tls::ClusterCa`], [`quicraft::tls::NodeCertOptions`],
//! [`quicraft::tls::verify_node_chain`]):
//!
//! ```text
//! cargo run --example certgen -- cluster --cluster prod --nodes n1,n2,n3
//! cargo run --example certgen -- ca --cluster prod
//! cargo run --example certgen -- node --cluster prod --id n4 --dns n4.example.org --ip 192.0.2.14
//! cargo run --example certgen -- inspect certs/n1.pem --ca certs/ca.pem
//! cargo run --example certgen -- --help
//! ```
//!
//! Files go to `--out DIR` (`certs/` by default): `ca.pem`, `ca.key`, `<id>.pem`, `<id>.key`.
//! Keys are written with mode 0600. Every command checks all its input before writing, writes
//! each file to a temporary file in the same directory and renames it into place, and refuses
//! to replace an existing file unless `--force` is given, so a failed run leaves nothing
//! half-done. Errors are one line on stderr and exit status 1; usage errors exit with 2.
//! See `certs/README.md` for the layout and a step-by-step setup.

use std::ffi::OsString;
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use quicraft::CaRoots;
use quicraft::tls::{
    ClusterCa, GeneratedNode, NodeCertOptions, SpiffeId, validate_cluster_name, validate_node_id,
    verify_node_chain,
};
use rustls_pki_types::{CertificateDer, DnsName};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The longest validity the tool accepts, in days (about 100 years).
const MAX_VALIDITY_DAYS: i64 = 36_500;

/// Mode of written private keys: readable and writable by the owner only.
const KEY_MODE: u32 = 0o600;

/// Mode of written certificates: public.
const CERT_MODE: u32 = 0o644;

/// Mode of an output directory the tool creates: it holds private keys.
const DIR_MODE: u32 = 0o700;

/// Makes and inspects the certificates of a quicraft cluster (mutual TLS over QUIC).
///
/// A cluster CA signs one certificate per node. A node's identity is the URI subject
/// alternative name spiffe://<CLUSTER>/node/<ID> in its certificate; peers accept a node only
/// if its certificate chains to the CA and names the node they expect.
#[derive(Debug, Parser)]
#[command(
    name = "certgen",
    version,
    after_long_help = "\
FILES (in --out DIR, certs/ by default):
  ca.pem     the CA certificate: copy to every node (its trust root)
  ca.key     the CA private key (mode 0600): keep it off the nodes, offline if you can
  <ID>.pem   node <ID>'s certificate chain (the leaf; the CA is in ca.pem): copy to node <ID>
  <ID>.key   node <ID>'s private key (mode 0600): copy to node <ID> only

Existing files are never replaced without --force. Each file is written to a temporary file
in the same directory and renamed into place; every input is checked before anything is
written, so a failed run writes nothing.

EXIT STATUS:
  0  success
  1  bad input or I/O error (one line on stderr), or `inspect --ca` found that the
     certificate does not chain to the CA
  2  usage error (unknown flag, missing argument)

EXAMPLE (a 3-node cluster named prod):
  certgen cluster --cluster prod --nodes n1,n2,n3
  certgen inspect certs/n1.pem --ca certs/ca.pem

See certs/README.md for where each file goes and SECURITY.md for rotation."
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create a cluster CA: a new ECDSA P-256 key (ca.key) and a self-signed CA certificate
    /// (ca.pem).
    ///
    /// Refuses to overwrite an existing ca.pem or ca.key unless --force is given; replacing
    /// the CA means every node certificate must be re-issued (see SECURITY.md on rotation).
    Ca(CaArgs),

    /// Issue a node certificate (<ID>.pem) and a new key (<ID>.key), signed by an existing
    /// CA.
    ///
    /// The certificate names the node as the URI SAN spiffe://<CLUSTER>/node/<ID>, carries
    /// the --dns and --ip addresses as further SANs, and may be used both as a TLS server
    /// and as a TLS client (every node listens and dials).
    Node(NodeArgs),

    /// Create a CA and a certificate for every node in one go: ca.pem, ca.key and
    /// <ID>.pem, <ID>.key for each --nodes id.
    Cluster(ClusterArgs),

    /// Print who a certificate says it is (cluster, node id, SANs, validity, issuer) and,
    /// with --ca, whether it chains to that CA.
    ///
    /// Exits with status 1 if --ca is given and the certificate does not verify against it
    /// (another CA, expired, not yet valid, not usable for both TLS server and client, or
    /// not naming a node).
    Inspect(InspectArgs),

    /// Write a certificate revocation list (crl.pem), signed by the CA, that revokes the
    /// given node certificates.
    ///
    /// A new list replaces the old one on the nodes: name every certificate still revoked,
    /// not only the new one. Nodes load it with `QuicConfig::revocation`, `reload_tls` or a
    /// watched `crl` file, and then refuse those certificates at every handshake, on both
    /// sides (see SECURITY.md on revocation).
    Revoke(RevokeArgs),
}

/// Arguments of `certgen revoke`.
#[derive(Debug, Args)]
struct RevokeArgs {
    #[command(flatten)]
    cluster: ClusterName,

    /// A node certificate to revoke (PEM, as `certgen node` writes it). Repeat for several.
    #[arg(long = "cert", value_name = "FILE", required = true)]
    certs: Vec<PathBuf>,

    /// The list's number: each new list must carry a larger one [default: the current Unix
    /// time in seconds, which grows on its own].
    #[arg(long, value_name = "N")]
    crl_number: Option<u64>,

    /// Days until the list's next-update date (1 to 36500). quicraft keeps enforcing a list
    /// after that date; other TLS tools may not.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    validity_days: i64,

    /// The CA certificate to sign with, one certificate in PEM [default: <DIR>/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// The CA private key to sign with, in PEM [default: <DIR>/ca.key].
    #[arg(long, value_name = "FILE")]
    ca_key: Option<PathBuf>,

    #[command(flatten)]
    out: OutArgs,
}

/// Where to write and whether to replace existing files.
#[derive(Debug, Args)]
struct OutArgs {
    /// Directory to write the files into; created (mode 0700) if missing.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    out: PathBuf,

    /// Replace files that already exist. Without it the command refuses, naming the file,
    /// and writes nothing.
    #[arg(long)]
    force: bool,
}

/// The cluster name flag.
#[derive(Debug, Args)]
struct ClusterName {
    /// Cluster name: the SPIFFE trust domain of every node id, spiffe://<CLUSTER>/node/<ID>.
    /// 1 to 255 characters, each a lowercase letter a-z, a digit, '.', '-' or '_'. Nodes
    /// only talk to nodes of their own cluster.
    #[arg(long, value_name = "CLUSTER")]
    cluster: String,
}

/// Options of the CA certificate.
#[derive(Debug, Args)]
struct CaCertArgs {
    /// Common name (CN) of the CA certificate's subject and issuer name of every node
    /// certificate [default: "quicraft <CLUSTER> CA <creation time>", distinct for every CA].
    #[arg(long, value_name = "NAME")]
    common_name: Option<String>,
}

/// The addresses written into node certificates.
#[derive(Debug, Args)]
struct SanArgs {
    /// A DNS name the node is reached at, added as a DNS SAN. Repeat for several. If neither
    /// --dns nor --ip is given, the certificate names localhost, 127.0.0.1 and ::1 (a
    /// cluster on one machine). Peers identify a node by its SPIFFE id, not by these
    /// names; they are for other TLS tools and operators.
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,

    /// An IP address (IPv4 or IPv6) the node is reached at, added as an IP SAN. Repeat for
    /// several. See --dns for the default.
    #[arg(long = "ip", value_name = "ADDR")]
    ip: Vec<String>,
}

/// Arguments of `certgen ca`.
#[derive(Debug, Args)]
struct CaArgs {
    #[command(flatten)]
    cluster: ClusterName,

    /// Days the CA certificate is valid from now (1 to 36500). It starts an hour in the
    /// past, to tolerate clock skew between hosts.
    #[arg(long, value_name = "DAYS", default_value_t = 3650)]
    validity_days: i64,

    #[command(flatten)]
    ca: CaCertArgs,

    #[command(flatten)]
    out: OutArgs,
}

/// Arguments of `certgen node`.
#[derive(Debug, Args)]
struct NodeArgs {
    #[command(flatten)]
    cluster: ClusterName,

    /// Node (server) id, the id the Raft engine knows the node by: one URI path segment of 1
    /// to 128 characters, each a letter, a digit, '-', '.', '_' or '~' (not "." or "..", and
    /// not "ca", whose files are the CA's). Also the file names <ID>.pem and <ID>.key.
    #[arg(long, value_name = "ID")]
    id: String,

    #[command(flatten)]
    sans: SanArgs,

    /// Days the node certificate is valid from now (1 to 36500). It starts an hour in the
    /// past, to tolerate clock skew between hosts.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    validity_days: i64,

    /// The CA certificate to sign with, one certificate in PEM [default: <DIR>/ca.pem].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// The CA private key to sign with, in PEM (PKCS#8, as `certgen ca` writes it)
    /// [default: <DIR>/ca.key].
    #[arg(long, value_name = "FILE")]
    ca_key: Option<PathBuf>,

    #[command(flatten)]
    out: OutArgs,
}

/// Arguments of `certgen cluster`.
#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(flatten)]
    cluster: ClusterName,

    /// The node ids, comma-separated (n1,n2,n3) or by repeating the flag; one certificate
    /// each. The rules of `node --id` apply to each.
    #[arg(long, value_name = "ID,...", value_delimiter = ',', required = true)]
    nodes: Vec<String>,

    #[command(flatten)]
    sans: SanArgs,

    /// Days each node certificate is valid from now (1 to 36500).
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    validity_days: i64,

    /// Days the CA certificate is valid from now (1 to 36500).
    #[arg(long, value_name = "DAYS", default_value_t = 3650)]
    ca_validity_days: i64,

    #[command(flatten)]
    ca: CaCertArgs,

    #[command(flatten)]
    out: OutArgs,
}

/// Arguments of `certgen inspect`.
#[derive(Debug, Args)]
struct InspectArgs {
    /// The certificate file (PEM) to inspect: a node's <ID>.pem (the leaf first, then any
    /// intermediates) or a CA's ca.pem.
    #[arg(value_name = "CERT")]
    cert: PathBuf,

    /// A CA certificate file (PEM) to verify the chain against, as a peer would: it must
    /// chain to this CA, be valid now, be usable as TLS server and client, and name exactly
    /// one node.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// With --ca, also require the certificate to name a node of this cluster.
    #[arg(long, value_name = "CLUSTER", requires = "ca")]
    cluster: Option<String>,
}

/// A failure to report: one line on stderr, exit status 1.
#[derive(Debug)]
struct Failure(String);

impl Failure {
    /// A failure described as `context: cause`.
    fn new(context: impl Display, cause: impl Display) -> Self {
        Self(format!("{context}: {cause}"))
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

/// The tool's result type.
type Result<T, E = Failure> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Ca(args) => ca(&args).map(|()| ExitCode::SUCCESS),
        Command::Node(args) => node(&args).map(|()| ExitCode::SUCCESS),
        Command::Cluster(args) => cluster(&args).map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => inspect(&args),
        Command::Revoke(args) => revoke(&args).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(Failure(message)) => {
            // One line, whatever the error text holds.
            let message: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            eprintln!("certgen: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `certgen ca`.
fn ca(args: &CaArgs) -> Result<()> {
    let cluster = &args.cluster.cluster;
    validate_cluster_name(cluster)?;
    let validity = validity("--validity-days", args.validity_days)?;
    let ca = ClusterCa::generate_with(cluster, args.ca.common_name.as_deref(), validity)?;
    let files = ca_files(&ca);
    write_files(&args.out, &files)?;
    report_ca(&args.out.out, &ca)
}

/// `certgen node`.
fn node(args: &NodeArgs) -> Result<()> {
    let cluster = &args.cluster.cluster;
    validate_cluster_name(cluster)?;
    check_node_id(&args.id)?;
    let options = node_options(&args.sans, validity("--validity-days", args.validity_days)?)?;

    let ca = load_ca(
        cluster,
        args.ca.as_deref(),
        args.ca_key.as_deref(),
        &args.out.out,
    )?;

    let issued = issue(&ca, &args.id, &options)?;
    let files = node_files(&args.id, &issued);
    write_files(&args.out, &files)?;
    report_node(&args.out.out, &args.id, &issued)
}

/// The CA of `cluster` from `ca` and `ca_key`, by default `ca.pem` and `ca.key` in `dir`.
fn load_ca(
    cluster: &str,
    ca: Option<&Path>,
    ca_key: Option<&Path>,
    dir: &Path,
) -> Result<ClusterCa> {
    let cert_path = ca.map_or_else(|| dir.join("ca.pem"), Path::to_path_buf);
    let key_path = ca_key.map_or_else(|| dir.join("ca.key"), Path::to_path_buf);
    let cert_pem = read_text(&cert_path)?;
    let key_pem = read_text(&key_path)?;
    ClusterCa::from_pem(&cert_pem, &key_pem, cluster).map_err(|e| {
        let what = format!(
            "cannot use the CA of {} and {}",
            cert_path.display(),
            key_path.display()
        );
        Failure::new(what, e)
    })
}

/// `certgen revoke`.
fn revoke(args: &RevokeArgs) -> Result<()> {
    let cluster = &args.cluster.cluster;
    validate_cluster_name(cluster)?;
    let valid_for = validity("--validity-days", args.validity_days)?;
    let ca = load_ca(
        cluster,
        args.ca.as_deref(),
        args.ca_key.as_deref(),
        &args.out.out,
    )?;
    let mut revoked = Vec::with_capacity(args.certs.len());
    for path in &args.certs {
        let chain = load_certificates(path)?;
        let leaf = chain[0].clone();
        // Only certificates this CA issued can be revoked by its list.
        let roots = ca.roots();
        verify_node_chain(std::slice::from_ref(&leaf), &roots).map_err(|e| {
            Failure::new(format!("{} was not issued by this CA", path.display()), e)
        })?;
        revoked.push(leaf);
    }
    let number = match args.crl_number {
        Some(number) => number,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| Failure(format!("the clock is before 1970: {e}")))?
            .as_secs(),
    };
    let refs: Vec<&CertificateDer<'_>> = revoked.iter().collect();
    let crl = ca.revocation_list_pem(&refs, number, valid_for)?;
    let file = OutFile {
        name: "crl.pem".to_owned(),
        contents: crl,
        secret: false,
    };
    write_files(&args.out, std::slice::from_ref(&file))?;
    println!(
        "wrote {}: {} certificate(s) revoked, list number {number}",
        args.out.out.join("crl.pem").display(),
        revoked.len()
    );
    Ok(())
}

/// `certgen cluster`.
fn cluster(args: &ClusterArgs) -> Result<()> {
    let cluster = &args.cluster.cluster;
    validate_cluster_name(cluster)?;
    for (index, id) in args.nodes.iter().enumerate() {
        check_node_id(id)?;
        if args.nodes[..index].contains(id) {
            return Err(Failure(format!("node id {id:?} is given twice in --nodes")));
        }
    }
    let ca_validity = validity("--ca-validity-days", args.ca_validity_days)?;
    let options = node_options(&args.sans, validity("--validity-days", args.validity_days)?)?;

    let ca = ClusterCa::generate_with(cluster, args.ca.common_name.as_deref(), ca_validity)?;
    let mut files = ca_files(&ca);
    let mut issued = Vec::with_capacity(args.nodes.len());
    for id in &args.nodes {
        let node = issue(&ca, id, &options)?;
        files.extend(node_files(id, &node));
        issued.push((id, node));
    }
    write_files(&args.out, &files)?;
    report_ca(&args.out.out, &ca)?;
    for (id, node) in &issued {
        report_node(&args.out.out, id, node)?;
    }
    Ok(())
}

/// `certgen inspect`: prints the certificate; returns exit status 1 if `--ca` is given and
/// the certificate does not verify against it.
fn inspect(args: &InspectArgs) -> Result<ExitCode> {
    if let Some(cluster) = &args.cluster {
        validate_cluster_name(cluster)?;
    }
    let chain = load_certificates(&args.cert)?;
    let roots = args
        .ca
        .as_deref()
        .map(|path| CaRoots::from_pem_file(path).map(|roots| (path, roots)))
        .transpose()?;
    let leaf = &chain[0];
    let cert = parse(leaf).map_err(|Failure(e)| Failure::new(args.cert.display(), e))?;

    let mut out = io::stdout().lock();
    let mut line = |label: &str, value: &dyn Display| writeln!(out, "{label:<12}{value}");
    line("file:", &args.cert.display())?;
    match SpiffeId::from_certificate(leaf) {
        Ok(id) => {
            line("SPIFFE id:", &id)?;
            line("cluster:", &id.cluster())?;
            line("node id:", &id.node())?;
        }
        Err(e) => line("SPIFFE id:", &format!("none ({e})"))?,
    }
    line("subject:", &cert.subject())?;
    line("issuer:", &cert.issuer())?;
    line("serial:", &cert.raw_serial_as_string())?;
    let validity = cert.validity();
    line("not before:", &date(validity.not_before.to_datetime()))?;
    line("not after:", &date(validity.not_after.to_datetime()))?;
    let now = OffsetDateTime::now_utc();
    let state = if now < validity.not_before.to_datetime() {
        "NOT YET VALID"
    } else if now > validity.not_after.to_datetime() {
        "EXPIRED"
    } else {
        "valid now"
    };
    line("validity:", &state)?;
    line("CA:", &if cert.is_ca() { "yes" } else { "no" })?;
    line("SANs:", &sans(&cert))?;
    line("usages:", &usages(&cert))?;
    line(
        "chain:",
        &format!("{} certificate(s) in the file", chain.len()),
    )?;

    let Some((ca_path, roots)) = roots else {
        return Ok(ExitCode::SUCCESS);
    };
    let verdict = verify_node_chain(&chain, &roots).map_err(|e| e.to_string());
    let verdict = match (verdict, &args.cluster) {
        (Ok(id), Some(cluster)) if id.cluster() != cluster => {
            Err(format!("names cluster {:?}, not {cluster:?}", id.cluster()))
        }
        (verdict, _) => verdict,
    };
    match verdict {
        Ok(id) => {
            line(
                "verified:",
                &format!("yes, {id} chains to {}", ca_path.display()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            line(
                "verified:",
                &format!("NO, does not chain to {}: {reason}", ca_path.display()),
            )?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Checks a node id: a valid URI path segment, and not `ca` (whose files are the CA's).
fn check_node_id(id: &str) -> Result<()> {
    validate_node_id(id)?;
    if id.eq_ignore_ascii_case("ca") {
        return Err(Failure(format!(
            "invalid node id {id:?}: its files would replace the CA's ca.pem and ca.key"
        )));
    }
    Ok(())
}

/// A validity period of `days` days, checked against the tool's bounds.
fn validity(flag: &str, days: i64) -> Result<Duration> {
    if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
        return Err(Failure(format!(
            "{flag} must be between 1 and {MAX_VALIDITY_DAYS}, not {days}"
        )));
    }
    Ok(Duration::days(days))
}

/// The node certificate options from the SAN flags and a validity period.
fn node_options(sans: &SanArgs, validity: Duration) -> Result<NodeCertOptions> {
    let mut options = NodeCertOptions::default().not_after(OffsetDateTime::now_utc() + validity);
    if sans.dns.is_empty() && sans.ip.is_empty() {
        return Ok(options);
    }
    for name in &sans.dns {
        DnsName::try_from(name.as_str())
            .map_err(|_| Failure(format!("invalid DNS name {name:?} for --dns")))?;
    }
    let ips = sans
        .ip
        .iter()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| Failure(format!("invalid IP address {ip:?} for --ip")))
        })
        .collect::<Result<Vec<_>>>()?;
    options = options
        .dns_names(sans.dns.iter().cloned())
        .ip_addresses(ips);
    Ok(options)
}

/// Issues node `id`'s certificate and checks that it verifies against the CA now (it does
/// not if the CA certificate has expired or is not yet valid).
fn issue(ca: &ClusterCa, id: &str, options: &NodeCertOptions) -> Result<GeneratedNode> {
    let node = ca.issue_node(id, options)?;
    verify_node_chain(node.identity.chain(), &ca.roots()).map_err(|e| {
        Failure::new(
            format!("the certificate issued for {id} does not verify against its CA"),
            e,
        )
    })?;
    warn_if_outlives_ca(ca, &node, id)?;
    Ok(node)
}

/// Warns on stderr when a node certificate ends after its CA certificate: it stops verifying
/// when the CA expires.
fn warn_if_outlives_ca(ca: &ClusterCa, node: &GeneratedNode, id: &str) -> Result<()> {
    let ca_end = parse(&ca.roots().certificates()[0])?
        .validity()
        .not_after
        .to_datetime();
    let node_end = parse(node.identity.leaf())?
        .validity()
        .not_after
        .to_datetime();
    if node_end > ca_end {
        eprintln!(
            "certgen: warning: the certificate of {id} (valid until {}) outlives the CA \
             certificate (valid until {}); it stops verifying when the CA expires",
            date(node_end),
            date(ca_end)
        );
    }
    Ok(())
}

/// A file to write: its name in the output directory, its contents, whether it is secret.
struct OutFile {
    name: String,
    contents: String,
    secret: bool,
}

/// The CA's two files.
fn ca_files(ca: &ClusterCa) -> Vec<OutFile> {
    vec![
        OutFile {
            name: "ca.pem".to_owned(),
            contents: ca.cert_pem().to_owned(),
            secret: false,
        },
        OutFile {
            name: "ca.key".to_owned(),
            contents: ca.key_pem(),
            secret: true,
        },
    ]
}

/// A node's two files.
fn node_files(id: &str, node: &GeneratedNode) -> Vec<OutFile> {
    vec![
        OutFile {
            name: format!("{id}.pem"),
            contents: node.cert_pem.clone(),
            secret: false,
        },
        OutFile {
            name: format!("{id}.key"),
            contents: node.key_pem.clone(),
            secret: true,
        },
    ]
}

/// Writes `files` into the output directory, all or nothing as far as the file system
/// allows: refuses (before writing anything) if a file exists and `--force` is not given;
/// writes each to a temporary file in the same directory (keys with mode 0600), flushed to
/// disk; then moves them into place. On failure it removes what this run created.
fn write_files(out: &OutArgs, files: &[OutFile]) -> Result<()> {
    let dir = &out.out;
    if !out.force {
        for file in files {
            let path = dir.join(&file.name);
            if path.symlink_metadata().is_ok() {
                return Err(Failure(format!(
                    "{} already exists (use --force to replace it)",
                    path.display()
                )));
            }
        }
    }
    create_dir(dir)?;

    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(files.len());
    for file in files {
        match stage(dir, file) {
            Ok(temp) => staged.push((temp, dir.join(&file.name))),
            Err(e) => {
                for (temp, _) in &staged {
                    let _ = fs::remove_file(temp);
                }
                return Err(e);
            }
        }
    }

    let mut created: Vec<&Path> = Vec::with_capacity(staged.len());
    for (index, (temp, path)) in staged.iter().enumerate() {
        if let Err(e) = commit(temp, path, out.force) {
            for (temp, _) in &staged[index..] {
                let _ = fs::remove_file(temp);
            }
            for path in created {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        if !out.force {
            created.push(path);
        }
    }
    // Make the renames durable; not all platforms can sync a directory, so best effort.
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Creates the output directory (mode 0700) if it does not exist.
fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder
        .create(dir)
        .map_err(|e| Failure::new(format!("cannot create directory {}", dir.display()), e))
}

/// Writes `file` to a new temporary file in `dir` and flushes it to disk; returns its path.
fn stage(dir: &Path, file: &OutFile) -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = OsString::from(".");
    name.push(&file.name);
    name.push(format!(".{}.{nanos}.tmp", std::process::id()));
    let temp = dir.join(name);

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(
        &mut options,
        if file.secret { KEY_MODE } else { CERT_MODE },
    );
    let mut handle = options
        .open(&temp)
        .map_err(|e| Failure::new(format!("cannot create {}", temp.display()), e))?;
    let written = handle
        .write_all(file.contents.as_bytes())
        .and_then(|()| handle.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(Failure::new(format!("cannot write {}", temp.display()), e));
    }
    Ok(temp)
}

/// Moves a staged temporary file to its final path. Without `force`, a hard link makes the
/// final name appear only if it does not exist yet (where links are not supported, a rename
/// after a last existence check).
fn commit(temp: &Path, path: &Path, force: bool) -> Result<()> {
    let failed = |e: io::Error| Failure::new(format!("cannot write {}", path.display()), e);
    if force {
        return fs::rename(temp, path).map_err(failed);
    }
    match fs::hard_link(temp, path) {
        Ok(()) => {
            let _ = fs::remove_file(temp);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Failure(format!(
            "{} already exists (use --force to replace it)",
            path.display()
        ))),
        Err(_) if path.symlink_metadata().is_err() => fs::rename(temp, path).map_err(failed),
        Err(e) => Err(failed(e)),
    }
}

/// Reads a text file, naming it in the error.
fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Failure::new(format!("cannot read {}", path.display()), e))
}

/// Loads every certificate of a PEM file, leaf first. (`CaRoots` is the library's PEM
/// certificate loader: it reads any certificates, with errors that name the file.)
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    Ok(CaRoots::from_pem_file(path)?.certificates().to_vec())
}

/// Parses a DER certificate for display.
fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|e| Failure(format!("malformed certificate: {e}")))
}

/// The subject alternative names, as `URI:…, DNS:…, IP:…`.
fn sans(cert: &X509Certificate<'_>) -> String {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return "none".to_owned();
    };
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => format!("URI:{uri}"),
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
                Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(*bytes) {
                    Ok(v6) => format!("IP:{}", IpAddr::from(v6)),
                    Err(_) => format!("IP:{bytes:02x?}"),
                },
            },
            other => other.to_string(),
        })
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The key usages and extended key usages, as a list.
fn usages(cert: &X509Certificate<'_>) -> String {
    let mut usages = Vec::new();
    if let Ok(Some(ku)) = cert.key_usage() {
        usages.push(ku.value.to_string());
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let eku = eku.value;
        if eku.server_auth {
            usages.push("serverAuth".to_owned());
        }
        if eku.client_auth {
            usages.push("clientAuth".to_owned());
        }
    }
    if usages.is_empty() {
        "none listed".to_owned()
    } else {
        usages.join(", ")
    }
}

/// A date as `YYYY-MM-DD hh:mm:ss UTC`.
fn date(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Prints what `certgen ca` or `cluster` wrote about the CA.
fn report_ca(dir: &Path, ca: &ClusterCa) -> Result<()> {
    let end = parse(&ca.roots().certificates()[0])?
        .validity()
        .not_after
        .to_datetime();
    println!(
        "wrote {} (CA certificate of cluster {}, valid until {}: copy to every node)",
        dir.join("ca.pem").display(),
        ca.cluster(),
        date(end)
    );
    println!(
        "wrote {} (CA private key, mode 0600: keep it off the nodes)",
        dir.join("ca.key").display()
    );
    Ok(())
}

/// Prints what was written for node `id`.
fn report_node(dir: &Path, id: &str, node: &GeneratedNode) -> Result<()> {
    let end = parse(node.identity.leaf())?
        .validity()
        .not_after
        .to_datetime();
    println!(
        "wrote {} and {} ({}, valid until {}: copy to node {id})",
        dir.join(format!("{id}.pem")).display(),
        dir.join(format!("{id}.key")).display(),
        node.identity.spiffe_id(),
        date(end)
    );
    Ok(())
}
