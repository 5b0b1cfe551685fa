//! `gear destroy NAME`: stop everything and remove the gear, leaving nothing behind.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};

/// Arguments of `gear destroy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    call(
        &args.target,
        ops::Destroy {
            gear: args.gear.to_ref(),
        },
    )?;
    println!(
        "destroyed gear {} in namespace {}",
        args.gear.name,
        args.gear.namespace()
    );
    Ok(())
}
