//! `gear deployments NAME` and `gear rollback NAME [ID]`.

use gearhost_node::api::Request;

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
    let v = call(
        &args.target,
        &Request::Deployments {
            gear: args.gear.to_ref(),
        },
    )?;
    if args.json {
        print_json(&v)?;
        return Ok(());
    }
    let active = v["active"].as_u64();
    println!("  {:<4} {:<8} {:<22} SOURCE", "ID", "STATE", "CREATED");
    for d in v["deployments"].as_array().into_iter().flatten() {
        let id = d["id"].as_u64().unwrap_or(0);
        let created = d["created"].as_u64().unwrap_or(0);
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(created),
        );
        println!(
            "{} {:<4} {:<8} {:<22} {}{}",
            if Some(id) == active { "*" } else { " " },
            id,
            d["state"].as_str().unwrap_or(""),
            when,
            d["source"].as_str().unwrap_or(""),
            d["error"]
                .as_str()
                .map_or(String::new(), |e| format!("  ({e})"))
        );
    }
    Ok(())
}

/// `gear rollback`
pub fn rollback(args: RollbackArgs) -> CmdResult {
    let v = call(
        &args.target,
        &Request::Rollback {
            gear: args.gear.to_ref(),
            id: args.id,
        },
    )?;
    println!("{} now runs deployment {}", args.gear.name, v["active"]);
    Ok(())
}
