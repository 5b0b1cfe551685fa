//! `gear node check`: which confinement layers this machine enforces, layer by
//! layer, in the spirit of OpenShift's `oo-accept-node`. Exits 4 when a
//! required layer is missing. The `disk-quota` row looks at the file system of
//! the node's state directory, read from the node configuration.
//!
//! The `https` row says whether the frontend has an HTTPS listener, which
//! certificates it serves (the operator's and the aliases' kept in the state
//! directory) and which expires first.
//!
//! It also says whether the gears of the node before were taken back by the
//! last node that started (how many, and which were started again and why):
//! through the API when a node runs, else from the record the node left in its
//! state directory.

use gearhost_sandbox::check::host_capabilities_for;

use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear node check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The node configuration whose state directory the disk-quota row looks
    /// at; default: /etc/gearhost/node.toml if it exists, else the embedded
    /// default (state in /var/lib/gearhost).
    #[arg(long, env = "GEARHOST_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: crate::client::Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    // SELinux: the node's domain comes from its program's label
    let node = super::node_run::find_node().ok();
    use gearhost_node_config::{DEFAULT_CONFIG_PATH, NodeConfig};
    let config = match &args.config {
        Some(path) => NodeConfig::load(path),
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            NodeConfig::load(std::path::Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Ok(NodeConfig::embedded()),
    }
    .map_err(|e| Failure::Invalid(anyhow::anyhow!("{e}")))?;
    let report = host_capabilities_for(node.as_deref(), &config.state_dir);
    let resume = last_resume(&args.target, &config.state_dir);
    let https = https_row(&config);
    if args.json {
        // the report's fields, and what the last resume did
        let mut value =
            serde_json::to_value(&report).map_err(|e| Failure::Failed(anyhow::anyhow!("{e}")))?;
        if let (Some(map), Ok(outcome)) = (value.as_object_mut(), &resume) {
            map.insert(
                "resume".into(),
                serde_json::to_value(outcome)
                    .map_err(|e| Failure::Failed(anyhow::anyhow!("{e}")))?,
            );
        }
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "https".into(),
                serde_json::to_value(&https)
                    .map_err(|e| Failure::Failed(anyhow::anyhow!("{e}")))?,
            );
        }
        print_json(&value)?;
    } else {
        println!("{report}");
        println!("{}", https.line());
        match &resume {
            Ok(outcome) => print_resume(outcome),
            Err(why) => println!("resume: {why}"),
        }
    }
    let missing = report.missing_required();
    if missing.is_empty() {
        if !args.json {
            println!("ok: every required layer holds on this machine");
        }
        Ok(())
    } else {
        let names: Vec<&str> = missing.iter().map(|l| l.layer.as_str()).collect();
        eprintln!(
            "error: required layers missing: {}; gears cannot be started safely here \
             (see docs/security.md for what each layer needs from the kernel)",
            names.join(", ")
        );
        Err(Failure::Reported(4))
    }
}

/// What the last node's resume did: from the running node, else from its record.
fn last_resume(
    target: &crate::client::Target,
    state_dir: &std::path::Path,
) -> Result<gearhost_api::reply::ResumeOutcome, String> {
    if std::os::unix::net::UnixStream::connect(&target.socket).is_ok() {
        // the node's keeper holds the socket while no node runs: a connection is
        // then accepted by the next node only, so the answer is waited for a while
        let (tx, rx) = std::sync::mpsc::channel();
        let asked = target.clone();
        std::thread::spawn(move || {
            let _ = tx.send(crate::client::call(
                &asked,
                gearhost_api::ops::NodeResume {},
            ));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(3)) {
            Ok(answer) => {
                return answer.map_err(|e| format!("cannot ask the node: {}", failure_text(&e)));
            }
            Err(_) => eprintln!(
                "note: no node answered on {} within 3 s (it may be restarting); the last record follows",
                target.socket.display()
            ),
        }
    }
    let path = state_dir.join("last-resume.json");
    let text = std::fs::read(&path).map_err(|e| {
        format!(
            "no node runs, and no record of a resume in {} ({e})",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not readable: {e}", path.display()))
}

/// Prints what a resume did, one line and a line for each gear started again.
pub fn print_resume(o: &gearhost_api::reply::ResumeOutcome) {
    let state = if o.done {
        format!("took {} ms", o.took_ms)
    } else {
        "still running".to_string()
    };
    println!(
        "resume (node pid {}, {state}): {} of {} gears taken back running, {} started again, {} not to run",
        o.pid,
        o.adopted.len(),
        o.gears,
        o.started.len(),
        o.not_running
    );
    for s in &o.started {
        match &s.error {
            None => println!("  started again: {}: {}", s.gear, s.why),
            Some(e) => println!(
                "  started again: {}: {} (the start failed: {e})",
                s.gear, s.why
            ),
        }
    }
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Failed(e) | Failure::Invalid(e) | Failure::Environment(e) => e.to_string(),
        Failure::Reported(code) => format!("exit {code}"),
    }
}

/// A certificate the frontend serves, and when it expires.
#[derive(Debug, Clone, serde::Serialize)]
struct Served {
    /// The name it is served for (`*.<domain>` for the operator's).
    host: String,
    /// Its leaf's expiry, seconds since the epoch.
    not_after: i64,
}

/// The `https` row of `gear node check`.
#[derive(Debug, serde::Serialize)]
struct HttpsRow {
    /// The `[https]` listener's address, when one is configured.
    listen: Option<String>,
    /// The certificates served, the operator's first.
    certificates: Vec<Served>,
    /// Certificates that could not be read, with the reason.
    unreadable: Vec<String>,
}

/// The leaf certificate's expiry in the PEM file `path`.
fn expiry(path: &std::path::Path) -> Result<i64, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| format!("{}: no PEM certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp())
}

fn https_row(config: &gearhost_node_config::NodeConfig) -> HttpsRow {
    let mut row = HttpsRow {
        listen: config.https.as_ref().map(|h| h.listen.clone()),
        certificates: Vec::new(),
        unreadable: Vec::new(),
    };
    if row.listen.is_none() {
        return row;
    }
    if let Some((certificate, _)) = config.https.as_ref().and_then(|h| h.certificate.as_ref()) {
        match expiry(certificate) {
            Ok(not_after) => row.certificates.push(Served {
                host: format!("*.{}", config.domain),
                not_after,
            }),
            Err(e) => row.unreadable.push(e),
        }
    }
    // the aliases' certificates, kept by the node as <state>/tls/<host>.pem
    let mut aliases: Vec<std::path::PathBuf> = std::fs::read_dir(config.state_dir.join("tls"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    aliases.sort();
    for path in aliases {
        let host = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match expiry(&path) {
            Ok(not_after) => row.certificates.push(Served { host, not_after }),
            Err(e) => row.unreadable.push(e),
        }
    }
    row
}

impl HttpsRow {
    /// The row as one line of the report.
    fn line(&self) -> String {
        let Some(listen) = &self.listen else {
            return "https: off (no `[https] listen` in the node configuration)".into();
        };
        let mut line = format!(
            "https: listening on {listen}, {} certificate(s) served",
            self.certificates.len()
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Some(first) = self.certificates.iter().min_by_key(|c| c.not_after) {
            let at = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(first.not_after.max(0) as u64);
            let left = (first.not_after - now) / 86_400;
            let when = humantime::format_rfc3339_seconds(at);
            if first.not_after <= now {
                line.push_str(&format!("; {} EXPIRED at {when}: renew it", first.host));
            } else {
                line.push_str(&format!(
                    "; the first to expire: {} at {when} (in {left} days)",
                    first.host
                ));
            }
        }
        for e in &self.unreadable {
            line.push_str(&format!("; cannot read {e}"));
        }
        line
    }
}
