//! `gear idle NAME` and `gear unidle NAME`: put a running gear to sleep now
//! (its next request through the frontend wakes it), or wake an idle one
//! without waiting for a request.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::call;
use crate::output::print_json;

/// Arguments of `gear idle` and `gear unidle`.
pub type Args = crate::client::OneGear;

/// `gear idle`
pub fn idle(args: Args) -> CmdResult {
    let view = call(
        &args.target,
        ops::Idle {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        return Ok(print_json(&view)?);
    }
    if !crate::output::print_if_unchanged(view.unchanged, view.note.as_deref()) {
        println!(
            "{}: idle (its next request starts it again)",
            args.gear.name
        );
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
