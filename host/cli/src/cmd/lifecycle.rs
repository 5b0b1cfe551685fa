//! `gear build|start|stop|restart|status NAME`.

use gearhost_node::api::Request;

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
    let request = match op {
        Op::Build => Request::Build { gear },
        Op::Start => Request::Start { gear },
        Op::Stop => Request::Stop { gear },
        Op::Restart => Request::Restart { gear },
        Op::Status => Request::Status { gear },
    };
    let v = call(&args.target, &request)?;
    if args.json {
        print_json(&v)?;
        return Ok(());
    }
    match op {
        Op::Build => println!("built deployment {} of {}", v["built"], args.gear.name),
        _ => {
            if !crate::output::print_if_unchanged(&v) {
                println!("{}: {}", args.gear.name, v["state"].as_str().unwrap_or("?"));
            }
            if let Some(f) = v["failure"].as_str() {
                println!("  failure: {f}");
            }
            crate::output::print_processes(&v);
        }
    }
    Ok(())
}
