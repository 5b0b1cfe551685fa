//! `gear idle NAME` and `gear unidle NAME`: put a running gear to sleep now
//! (its next request through the frontend wakes it), or wake an idle one
//! without waiting for a request.

use gearhost_node::api::Request;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// Arguments of `gear idle` and `gear unidle`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `gear idle`
pub fn idle(args: Args) -> CmdResult {
    let v = call(
        &args.target,
        &Request::Idle {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        return Ok(print_json(&v)?);
    }
    println!(
        "{}: idle (its next request starts it again)",
        args.gear.name
    );
    Ok(())
}

/// `gear unidle`
pub fn unidle(args: Args) -> CmdResult {
    let v = call(
        &args.target,
        &Request::Unidle {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        return Ok(print_json(&v)?);
    }
    println!("{}: {}", args.gear.name, v["state"].as_str().unwrap_or("?"));
    Ok(())
}
