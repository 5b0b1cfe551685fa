//! `gear deployments NAME` and `gear rollback NAME [ID]`.

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{GearArg, Target, call};
use crate::output::print_json;

/// Arguments of `gear deployments`.
pub type ListArgs = crate::client::OneGear;

/// Arguments of `gear rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The deployment to activate; default: the last good one before the active one.
    pub id: Option<u32>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// `gear deployments`
pub fn list(args: ListArgs) -> CmdResult {
    let list = call(
        &args.target,
        ops::Deployments {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        print_json(&list)?;
        return Ok(());
    }
    println!("  {:<4} {:<8} {:<22} SOURCE", "ID", "STATE", "CREATED");
    for d in &list.deployments {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(d.created),
        );
        println!(
            "{} {:<4} {:<8} {:<22} {}{}",
            if Some(d.id) == list.active { "*" } else { " " },
            d.id,
            d.state,
            when,
            d.source,
            d.error
                .as_deref()
                .map_or(String::new(), |e| format!("  ({e})"))
        );
    }
    Ok(())
}

/// `gear rollback`
pub fn rollback(args: RollbackArgs) -> CmdResult {
    let rolled = call(
        &args.target,
        ops::Rollback {
            gear: args.gear.to_ref(),
            id: args.id,
        },
    )?;
    println!("{} now runs deployment {}", args.gear.name, rolled.active);
    Ok(())
}
