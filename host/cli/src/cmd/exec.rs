//! `gear exec NAME -- CMD ...`: run a command inside the gear's sandbox with
//! this terminal (or these pipes) attached, like OpenShift's gear ssh.

use std::os::fd::AsFd;

use gearhost_api::{ops, reply::ExecEnd};

use crate::client::{GearArg, Target, call_attached};
use crate::{CmdResult, Failure};

/// Arguments of `gear exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// The command and its arguments (default: a shell).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Run the command; exits with the command's status.
pub fn run(args: Args) -> CmdResult {
    let argv = if args.command.is_empty() {
        vec!["/bin/sh".to_string()]
    } else {
        args.command.clone()
    };
    // on a terminal the command gets one of its own in the gear, which does the line editing
    // and turns ^C into SIGINT there: this one passes keys through untouched meanwhile, and
    // tells the node when its window changes size
    let on_terminal = {
        use std::io::IsTerminal;
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    };
    let resized = on_terminal
        .then(|| gearhost_sys::window_changes().ok())
        .flatten();
    let raw = on_terminal
        .then(|| gearhost_sys::RawTerminal::enter(std::io::stdin().as_fd()).ok())
        .flatten();
    let end = call_attached(
        &args.target,
        ops::Exec {
            gear: args.gear.to_ref(),
            argv,
        },
        resized.as_ref(),
    );
    drop(raw);
    match end? {
        ExecEnd::Exit(0) => Ok(()),
        // a code that does not fit a byte is cut the way a shell would see it
        ExecEnd::Exit(code) => Err(Failure::Reported((code & 0xff) as u8)),
        ExecEnd::Signal(sig) => Err(Failure::Reported(
            128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        )),
    }
}
