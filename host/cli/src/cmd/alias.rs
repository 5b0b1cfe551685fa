//! `gear alias add|remove|list NAME [HOSTNAME]`: extra host names the
//! node's frontend routes to a gear.

use gearhost_api::{Op, ops, reply::AliasChanged};

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
/// host name as the node stores it.
fn change<O: Op<Reply = AliasChanged>>(args: &ChangeArgs, op: O, what: &str) -> CmdResult {
    let changed = call(&args.target, op)?;
    if args.json {
        return Ok(print_json(&changed)?);
    }
    if changed.unchanged {
        println!("{} already answers to {}", args.gear.name, changed.hostname);
    } else {
        println!("{} {what} {}", args.gear.name, changed.hostname);
    }
    Ok(())
}

/// Run the command.
pub fn run(command: Command) -> CmdResult {
    match command {
        Command::Add(args) => change(
            &args,
            ops::AliasAdd {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
            "now also answers to",
        )?,
        Command::Remove(args) => change(
            &args,
            ops::AliasRemove {
                gear: args.gear.to_ref(),
                hostname: args.hostname.clone(),
            },
            "no longer answers to",
        )?,
        Command::List(args) => {
            let names = call(
                &args.target,
                ops::AliasList {
                    gear: args.gear.to_ref(),
                },
            )?;
            if args.json {
                return Ok(print_json(&names)?);
            }
            println!("{}", names.name);
            for alias in &names.aliases {
                println!("{alias}");
            }
        }
    }
    Ok(())
}
