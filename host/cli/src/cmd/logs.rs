//! `gear logs NAME [-f] [-n N] [--hooks]`: the gear's captured output.

use gearhost_node::api::Request;

use crate::CmdResult;
use crate::client::{GearArg, Target, call_with};

/// Arguments of `gear logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// Keep printing new lines as they come.
    #[arg(long, short)]
    pub follow: bool,
    /// How many of the last lines to show.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
    /// Show the cartridge hooks' log instead of the processes' output.
    #[arg(long)]
    pub hooks: bool,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let request = Request::Logs {
        gear: args.gear.to_ref(),
        lines: args.lines,
        follow: args.follow,
        hooks: args.hooks,
    };
    call_with(&args.target, &request, |line| println!("{line}"))?;
    Ok(())
}
