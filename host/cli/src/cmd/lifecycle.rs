//! `gear build|start|stop|restart|status NAME`.

use gearhost_api::ops;

use gearhost_api::reply::GearView;

use crate::CmdResult;
use crate::client::call;
use crate::output::print_json;

/// Arguments shared by the lifecycle commands.
pub type Args = crate::client::OneGear;

/// Which lifecycle operation.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Run the build hook.
    Build,
    /// Start.
    Start,
    /// Stop.
    Stop,
    /// Stop, then start.
    Restart,
    /// Show state and processes.
    Status,
}

/// Run the command.
pub fn run(op: Op, args: Args) -> CmdResult {
    let gear = args.gear.to_ref();
    let view = match op {
        Op::Build => {
            let built = call(&args.target, ops::Build { gear })?;
            if args.json {
                print_json(&built)?;
            } else {
                println!("built deployment {} of {}", built.built, args.gear.name);
            }
            return Ok(());
        }
        Op::Start => call(&args.target, ops::Start { gear })?,
        Op::Stop => call(&args.target, ops::Stop { gear })?,
        Op::Restart => call(&args.target, ops::Restart { gear })?,
        Op::Status => call(&args.target, ops::Status { gear })?,
    };
    print_view(&view, args.json)
}

/// What a lifecycle operation left: the gear's state and processes, or the
/// note of one that found nothing to do.
pub(crate) fn print_view(view: &GearView, json: bool) -> CmdResult {
    if json {
        print_json(view)?;
        return Ok(());
    }
    if !crate::output::print_if_unchanged(view.unchanged, view.note.as_deref()) {
        println!("{}: {}", view.gear.name, view.gear.state);
    }
    if let Some(f) = &view.failure {
        println!("  failure: {f}");
    }
    crate::output::print_processes(&view.processes);
    Ok(())
}
