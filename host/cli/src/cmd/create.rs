//! `gear create NAME --cartridge C`: a new gear with its own uid, MCS level and home.

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
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the new gear as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let gear = call(
        &args.target,
        ops::Create {
            gear: args.gear.to_ref(),
            cartridge: args.cartridge.clone(),
        },
    )?;
    if args.json {
        print_json(&gear)?;
    } else {
        println!(
            "created gear {} in namespace {} (uid {}, {}); deploy to it with `gear deploy {} DIR`",
            args.gear.name, gear.namespace, gear.uid, gear.mcs_level, args.gear.name
        );
    }
    Ok(())
}
