//! `gear cartridge install|list|remove`: the node's cartridge store.

use std::path::PathBuf;

use gearhost_api::ops;

use crate::CmdResult;
use crate::archive;
use crate::client::{Target, call, call_streaming};
use crate::output::print_json;

/// Arguments of `gear cartridge install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The cartridge directory (cartridge.toml + hooks component), read with
    /// your own rights and sent to the node as an archive.
    pub dir: PathBuf,
    /// The most the directory's files may add up to.
    #[arg(long, value_name = "SIZE", default_value = crate::archive::DEFAULT_MAX_SIZE, value_parser = crate::archive::parse_max_size)]
    pub max_size: u64,
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
    let sources = archive::walk(&dir, args.max_size)?;
    let installed = call_streaming(
        &args.target,
        ops::CartridgeInstall {
            source: archive::label(&dir),
        },
        move |pipe| archive::write(&sources, pipe),
    )?;
    if args.json {
        print_json(&installed)?;
    } else {
        println!("installed {} {}", installed.name, installed.version);
    }
    Ok(())
}

/// `gear cartridge list`
pub fn list(args: ListArgs) -> CmdResult {
    let cartridges = call(&args.target, ops::CartridgeList {})?;
    if args.json {
        print_json(&cartridges)?;
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:<10} DESCRIPTION",
        "NAME", "VERSION", "CONTRACT"
    );
    for c in &cartridges {
        println!(
            "{:<16} {:<10} {:<10} {}",
            c.name, c.version, c.contract, c.description
        );
    }
    Ok(())
}

/// `gear cartridge remove`
pub fn remove(args: RemoveArgs) -> CmdResult {
    call(
        &args.target,
        ops::CartridgeRemove {
            name: args.name.clone(),
        },
    )?;
    println!("removed {}", args.name);
    Ok(())
}
