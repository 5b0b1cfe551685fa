//! `gear node check`: which confinement layers this machine enforces, layer by
//! layer, in the spirit of OpenShift's `oo-accept-node`. Exits 4 when a
//! required layer is missing. The `disk-quota` row looks at the file system of
//! the node's state directory, read from the node configuration.
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
        print_json(&value)?;
    } else {
        println!("{report}");
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
