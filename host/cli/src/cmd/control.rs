//! `gear control NAME ACTION [ARGS]`: the cartridge's control hook.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// Arguments of `gear control`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The action: status, tidy, reload, or one of the cartridge's own.
    pub action: String,
    /// Arguments for the action.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let out = call(
        &args.target,
        ops::Control {
            gear: args.gear.to_ref(),
            action: args.action.clone(),
            args: args.args.clone(),
        },
    )?;
    if args.json {
        print_json(&out)?;
    } else if !out.output.is_empty() {
        println!("{}", out.output);
    }
    Ok(())
}
