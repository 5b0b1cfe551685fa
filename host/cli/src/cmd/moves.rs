//! `gear move NAME NODE` (operators): move a gear to another node of the
//! cluster. Its requests wait meanwhile; it keeps its uid, MCS level, name,
//! aliases, deployments, data and environment, and runs again on the other
//! node if it ran.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// Arguments of `gear move`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The node to move it to (see `gear node list`).
    pub node: String,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let moved = call(
        &args.target,
        ops::Move {
            gear: args.gear.to_ref(),
            node: args.node.clone(),
        },
    )?;
    if args.json {
        return Ok(print_json(&moved)?);
    }
    for note in &moved.notes {
        eprintln!("{note}");
    }
    println!(
        "moved {} from {} to {} in {:.1} s ({} bytes); {}",
        args.gear.name,
        moved.from,
        moved.to,
        moved.millis as f64 / 1000.0,
        moved.bytes,
        moved.gear.state
    );
    Ok(())
}
