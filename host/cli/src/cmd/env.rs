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
                // what the gear's processes get, each with the layer it comes from, highest
                // first; then what a higher layer overrides
                let l = &env.layers;
                let layers = [
                    ("system", &l.system),
                    ("user", &l.user),
                    ("linked", &l.linked),
                    ("process", &l.process),
                    ("cartridge", &l.cartridge),
                ];
                for (k, val) in &env.effective {
                    let from = layers.iter().find(|(_, m)| m.contains_key(k));
                    let layer = match from {
                        Some((name, m)) if m.get(k) == Some(val) => (*name).to_string(),
                        // PATH with an active virtualenv's bin first
                        Some((name, _)) => format!("{name}, with the virtualenv"),
                        None => "default".to_string(),
                    };
                    println!("{k}={val}  ({layer})");
                }
                for (i, (name, map)) in layers.iter().enumerate() {
                    for (k, val) in map.iter() {
                        if let Some((above, _)) =
                            layers[..i].iter().find(|(_, m)| m.contains_key(k))
                        {
                            println!("# {k}={val}  ({name}, overridden by {above})");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
