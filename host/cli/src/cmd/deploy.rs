//! `gear deploy NAME DIR`: a new deployment, built by the cartridge, activated, restarted.

use std::path::PathBuf;

use gearhost_api::ops;

use crate::client::{GearArg, Target, call};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear deploy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The directory of sources to deploy.
    pub source: PathBuf,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let source = std::fs::canonicalize(&args.source).map_err(|e| {
        Failure::Invalid(anyhow::anyhow!(
            "cannot read {}: {e}; give an existing directory",
            args.source.display()
        ))
    })?;
    eprintln!("deploying {} to {}", source.display(), args.gear.name);
    let deployed = call(
        &args.target,
        ops::Deploy {
            gear: args.gear.to_ref(),
            source,
        },
    )?;
    if args.json {
        print_json(&deployed)?;
    } else {
        println!(
            "deployment {} of {} is active ({}); {}",
            deployed.deployment, args.gear.name, deployed.state, deployed.url
        );
    }
    Ok(())
}
