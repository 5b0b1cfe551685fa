//! `gear destroy NAME`: stop everything and remove the gear, leaving nothing
//! behind. On a terminal it asks first (what the gear holds goes with it);
//! `--yes` skips the question for scripts, and without a terminal nothing
//! is asked.

use std::io::{BufRead, IsTerminal, Write};

use gearhost_api::ops;

use crate::client::{GearArg, Target, call};
use crate::{CmdResult, Failure};

/// Arguments of `gear destroy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Asks on the terminal whether to destroy the gear; true for yes.
fn confirmed(gear: &str, namespace: &str) -> Result<bool, Failure> {
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "destroy gear {gear} in namespace {namespace}, with its data, deployments and logs? [y/N] "
    );
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::Environment(e.into()))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let namespace = args.gear.namespace();
    let ask = !args.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if ask && !confirmed(&args.gear.name, &namespace)? {
        eprintln!("nothing was destroyed");
        return Err(Failure::Reported(1));
    }
    call(
        &args.target,
        ops::Destroy {
            gear: args.gear.to_ref(),
        },
    )?;
    println!("destroyed gear {} in namespace {namespace}", args.gear.name);
    Ok(())
}
