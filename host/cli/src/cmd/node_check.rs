//! `gear node check`: which confinement layers this machine enforces, layer by
//! layer, in the spirit of OpenShift's `oo-accept-node`. Exits 4 when a
//! required layer is missing. The `disk-quota` row looks at the file system of
//! the node's state directory, read from the node configuration.

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
    if args.json {
        print_json(&report)?;
    } else {
        println!("{report}");
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
