//! `gear env NAME set K=V ... | unset K ... | list`: the gear's user variables.

use gearhost_api::ops;

use crate::client::{GearArg, Target, call};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear env`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// What to do.
    #[command(subcommand)]
    pub action: EnvAction,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// `gear env NAME ...`
#[derive(Debug, clap::Subcommand)]
pub enum EnvAction {
    /// Set variables: KEY=VALUE ...
    Set {
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        vars: Vec<String>,
    },
    /// Remove variables.
    Unset {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Show the effective environment and where each variable comes from.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let gear = args.gear.to_ref();
    match args.action {
        EnvAction::Set { vars } => {
            let mut pairs = Vec::new();
            for v in vars {
                let (k, val) = v.split_once('=').ok_or_else(|| {
                    Failure::Invalid(anyhow::anyhow!(
                        "{v:?} is not KEY=VALUE; write e.g. `gear env {} set DEBUG=1`",
                        args.gear.name
                    ))
                })?;
                pairs.push((k.to_string(), val.to_string()));
            }
            let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
            let changed = call(&args.target, ops::EnvSet { gear, vars: pairs })?;
            println!("{}: set {}", args.gear.name, keys.join(", "));
            eprintln!("{}", changed.note);
        }
        EnvAction::Unset { keys } => {
            let removed = call(&args.target, ops::EnvUnset { gear, keys })?;
            if !removed.unset.is_empty() {
                println!("{}: unset {}", args.gear.name, removed.unset.join(", "));
            }
            for k in &removed.missing {
                eprintln!("{k} was not set on {}; nothing to unset", args.gear.name);
            }
        }
        EnvAction::List { json } => {
            let env = call(&args.target, ops::EnvList { gear })?;
            if json {
                print_json(&env)?;
            } else {
                let l = &env.layers;
                for (layer, map) in [
                    ("system", &l.system),
                    ("cartridge", &l.cartridge),
                    ("linked", &l.linked),
                    ("user", &l.user),
                ] {
                    for (k, val) in map {
                        println!("{k}={val}  ({layer})");
                    }
                }
            }
        }
    }
    Ok(())
}
