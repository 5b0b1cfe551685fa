//! `gear idle NAME` and `gear unidle NAME`: put a running gear to sleep now
//! (its next request through the frontend wakes it), or wake an idle one
//! without waiting for a request.

use gearhost_node::api::Request;

use crate::CmdResult;
use crate::client::call;
use crate::output::print_json;

/// Arguments of `gear idle` and `gear unidle`.
pub type Args = crate::client::OneGear;

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
    if !crate::output::print_if_unchanged(&v) {
        println!(
            "{}: idle (its next request starts it again)",
            args.gear.name
        );
    }
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
    if !crate::output::print_if_unchanged(&v) {
        println!("{}: {}", args.gear.name, v["state"].as_str().unwrap_or("?"));
    }
    Ok(())
}
