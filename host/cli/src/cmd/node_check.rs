//! `gear node check`: which confinement layers this machine enforces, layer by
//! layer, in the spirit of OpenShift's `oo-accept-node`. Exits 4 when a
//! required layer is missing.

use gearhost_sandbox::check::host_capabilities_for;

use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear node check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    // SELinux: the node's domain comes from its program's label
    let node = super::node_run::find_node().ok();
    let report = host_capabilities_for(node.as_deref());
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
