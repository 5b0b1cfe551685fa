//! `gear create NAME --cartridge C [--disk SIZE]`: a new gear with its own uid, MCS level,
//! home and, where the node enforces them, disk quota.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// Arguments of `gear create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The cartridge that decides what the gear runs (see `gear cartridge list`).
    #[arg(long, short)]
    pub cartridge: String,
    /// The gear's disk quota, e.g. 512MiB or 2GiB: its files, deployments and
    /// logs together (default: the node's gears.disk; at most its gears.max-disk).
    #[arg(long, value_name = "SIZE", value_parser = parse_disk)]
    pub disk: Option<u64>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the new gear as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A size such as `512MiB` or `2GiB`, in bytes.
fn parse_disk(text: &str) -> Result<u64, String> {
    gearhost_runtime::manifest::parse_size(text)
        .ok_or_else(|| format!("{text:?} is not a size; use e.g. 512MiB or 2GiB"))
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let gear = call(
        &args.target,
        ops::Create {
            gear: args.gear.to_ref(),
            cartridge: args.cartridge.clone(),
            disk: args.disk,
        },
    )?;
    if args.json {
        print_json(&gear)?;
    } else {
        let name = &args.gear.name;
        let next = if gear.takes_deployments {
            format!("deploy to it with `gear deploy {name} DIR`")
        } else {
            format!("start it with `gear start {name}`, then `gear link APP {name}`")
        };
        println!(
            "created gear {name} in namespace {} (uid {}, {}); {next}",
            gear.namespace, gear.uid, gear.mcs_level
        );
    }
    Ok(())
}
