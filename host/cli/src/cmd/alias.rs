//! `gear alias add|remove|list NAME [HOSTNAME]`: extra host names the
//! node's frontend routes to a gear.

use gearhost_node::api::Request;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// `gear alias ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Route another host name to the gear (point its DNS at this node).
    Add(ChangeArgs),
    /// Stop routing a host name to the gear.
    Remove(ChangeArgs),
    /// The gear's own host name and its aliases.
    List(ListArgs),
}

/// Arguments of `gear alias add` and `remove`.
#[derive(Debug, clap::Args)]
pub struct ChangeArgs {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The host name, e.g. www.example.com.
    pub hostname: String,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gear alias list`.
pub type ListArgs = crate::client::OneGear;

/// Sends an add or remove request and says what changed: `<gear> <what> <hostname>`, the
/// host name as the node reports it under `key`.
fn change(args: &ChangeArgs, request: Request, key: &str, what: &str) -> CmdResult {
    let v = call(&args.target, &request)?;
    if args.json {
        return Ok(print_json(&v)?);
    }
    println!(
        "{} {what} {}",
        args.gear.name,
        v[key].as_str().unwrap_or(&args.hostname)
    );
    Ok(())
}

/// Run the command.
pub fn run(command: Command) -> CmdResult {
    match command {
        Command::Add(args) => change(
            &args,
            Request::AliasAdd {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
            "alias",
            "now also answers to",
        )?,
        Command::Remove(args) => change(
            &args,
            Request::AliasRemove {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
            "removed",
            "no longer answers to",
        )?,
        Command::List(args) => {
            let v = call(
                &args.target,
                &Request::AliasList {
                    gear: args.gear.to_ref(),
                },
            )?;
            if args.json {
                return Ok(print_json(&v)?);
            }
            println!("{}", v["name"].as_str().unwrap_or(""));
            for alias in v["aliases"].as_array().into_iter().flatten() {
                println!("{}", alias.as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}
