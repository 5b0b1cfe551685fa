//! `gear cartridge install|list|remove`: the node's cartridge store.

use std::path::PathBuf;

use gearhost_node::api::Request;

use crate::CmdResult;
use crate::client::{Target, call};
use crate::output::print_json;

/// Arguments of `gear cartridge install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The cartridge directory (cartridge.toml + hooks component).
    pub dir: PathBuf,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gear cartridge list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `gear cartridge remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The cartridge's name.
    pub name: String,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// `gear cartridge install`
pub fn install(args: InstallArgs) -> CmdResult {
    let dir = std::fs::canonicalize(&args.dir).map_err(|e| {
        crate::Failure::Invalid(anyhow::anyhow!("cannot find {}: {e}", args.dir.display()))
    })?;
    let v = call(&args.target, &Request::CartridgeInstall { dir })?;
    if args.json {
        print_json(&v)?;
    } else {
        println!(
            "installed {} {}",
            v["name"].as_str().unwrap_or("?"),
            v["version"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `gear cartridge list`
pub fn list(args: ListArgs) -> CmdResult {
    let v = call(&args.target, &Request::CartridgeList)?;
    if args.json {
        print_json(&v)?;
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:<10} DESCRIPTION",
        "NAME", "VERSION", "CONTRACT"
    );
    for c in v.as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<10} {:<10} {}",
            c["name"].as_str().unwrap_or(""),
            c["version"].as_str().unwrap_or(""),
            c["contract"].as_str().unwrap_or(""),
            c["description"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `gear cartridge remove`
pub fn remove(args: RemoveArgs) -> CmdResult {
    call(
        &args.target,
        &Request::CartridgeRemove {
            name: args.name.clone(),
        },
    )?;
    println!("removed {}", args.name);
    Ok(())
}
