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

/// Run the command.
pub fn run(command: Command) -> CmdResult {
    match command {
        Command::Add(args) => {
            let v = call(
                &args.target,
                &Request::AliasAdd {
                    gear: args.gear.to_ref(),
                    hostname: args.hostname.clone(),
                },
            )?;
            if args.json {
                return Ok(print_json(&v)?);
            }
            println!(
                "{} now also answers to {}",
                args.gear.name,
                v["alias"].as_str().unwrap_or(&args.hostname)
            );
        }
        Command::Remove(args) => {
            let v = call(
                &args.target,
                &Request::AliasRemove {
                    gear: args.gear.to_ref(),
                    hostname: args.hostname.clone(),
                },
            )?;
            if args.json {
                return Ok(print_json(&v)?);
            }
            println!(
                "{} no longer answers to {}",
                args.gear.name,
                v["removed"].as_str().unwrap_or(&args.hostname)
            );
        }
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
