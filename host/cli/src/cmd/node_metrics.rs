//! `gear node metrics`: the node's metrics (frontend requests, errors,
//! latency, wake-ups, gears by state) in the Prometheus text format, through
//! the node API, so only those who may use the node's socket see them.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{Target, call};

/// Arguments of `gear node metrics`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let metrics = call(&args.target, ops::Metrics {})?;
    print!("{}", metrics.text);
    Ok(())
}
