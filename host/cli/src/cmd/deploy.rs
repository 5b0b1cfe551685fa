//! `gear deploy NAME DIR`: a new deployment, built by the cartridge, activated, restarted.

use std::path::PathBuf;

use gearhost_api::ops;

use crate::archive;
use crate::client::{GearArg, Target, call_streaming};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear deploy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The directory of sources to deploy. It is read with your own rights
    /// and sent to the node as an archive: directories, regular files and
    /// symlinks (sent as links, never followed); FIFOs, sockets, device
    /// nodes and files you cannot read are refused. Default: the current
    /// directory. What its `.gearignore` names, and `.git`, is left out.
    #[arg(default_value = ".")]
    pub source: PathBuf,
    /// The most the sources' files may add up to (the node has its own
    /// limit, `gears.max-deploy-size`).
    #[arg(long, value_name = "SIZE", default_value = archive::DEFAULT_MAX_SIZE, value_parser = archive::parse_max_size)]
    pub max_size: u64,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let source = std::fs::canonicalize(&args.source).map_err(|e| {
        Failure::Invalid(anyhow::anyhow!(
            "cannot read {}: {e}; give an existing directory",
            args.source.display()
        ))
    })?;
    let sources = archive::walk(&source, args.max_size)?;
    eprintln!(
        "deploying {} to {} ({} entries, {} bytes)",
        source.display(),
        args.gear.name,
        sources.entries(),
        sources.bytes
    );
    let deployed = call_streaming(
        &args.target,
        ops::Deploy {
            gear: args.gear.to_ref(),
            source: archive::label(&source),
        },
        move |pipe| archive::write(&sources, pipe),
    )?;
    if args.json {
        print_json(&deployed)?;
    } else {
        match &deployed.url {
            Some(url) => println!(
                "deployment {} of {} is active ({}); {url}",
                deployed.deployment, args.gear.name, deployed.state
            ),
            None => println!(
                "deployment {} of {} is active ({})",
                deployed.deployment, args.gear.name, deployed.state
            ),
        }
    }
    Ok(())
}
