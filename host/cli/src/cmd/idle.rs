//! `gear idle [--stop] NAME` and `gear unidle NAME`: put a running gear to
//! sleep now, frozen (its memory kept; its next request through the frontend
//! thaws it) or with `--stop` stopped (its next request starts it again), or
//! wake a sleeping one without waiting for a request.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::call;
use crate::output::print_json;

/// Arguments of `gear unidle`.
pub type Args = crate::client::OneGear;

/// Arguments of `gear idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// The gear, how to reach the node, `--json`.
    #[command(flatten)]
    pub one: crate::client::OneGear,
    /// Stop the gear (a frozen one too) rather than freeze it: it frees its
    /// memory, and its next request starts it again.
    #[arg(long)]
    pub stop: bool,
}

/// `gear idle`
pub fn idle(args: IdleArgs) -> CmdResult {
    let IdleArgs { one: args, stop } = args;
    let view = call(
        &args.target,
        ops::Idle {
            gear: args.gear.to_ref(),
            stop,
        },
    )?;
    if args.json {
        return Ok(print_json(&view)?);
    }
    if !crate::output::print_if_unchanged(view.unchanged, view.note.as_deref()) {
        if let Some(note) = &view.note {
            eprintln!("{note}");
        }
        match view.gear.state {
            gearhost_api::reply::GearState::Frozen => println!(
                "{}: frozen (its memory is kept; its next request thaws it)",
                args.gear.name
            ),
            _ => println!(
                "{}: idle (its next request starts it again)",
                args.gear.name
            ),
        }
    }
    Ok(())
}

/// `gear unidle`
pub fn unidle(args: Args) -> CmdResult {
    let view = call(
        &args.target,
        ops::Unidle {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        return Ok(print_json(&view)?);
    }
    if !crate::output::print_if_unchanged(view.unchanged, view.note.as_deref()) {
        println!("{}: {}", args.gear.name, view.gear.state);
    }
    Ok(())
}
