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
    /// `-` reads a tar archive of the sources from standard input instead.
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

/// `gear deploy NAME -`: the sources are a tar archive on standard input
/// (how a deploy travels through the node's ssh endpoint); the node checks
/// it as it checks any other.
fn from_stdin(args: &Args) -> CmdResult {
    let max = args.max_size;
    let deployed = call_streaming(
        &args.target,
        ops::Deploy {
            gear: args.gear.to_ref(),
            source: "standard input".into(),
        },
        move |mut pipe| {
            use std::io::Read;
            // a little over the files' limit: the archive's headers count too
            let mut input = std::io::stdin()
                .lock()
                .take(max.saturating_mul(2).max(1 << 20));
            std::io::copy(&mut input, &mut pipe)
                .map(drop)
                .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot pass the archive on: {e}")))
        },
    )?;
    report(args, &deployed)
}

fn report(args: &Args, deployed: &gearhost_api::reply::Deployed) -> CmdResult {
    if args.json {
        print_json(deployed)?;
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

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    if args.source.as_os_str() == "-" {
        return from_stdin(&args);
    }
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
    report(&args, &deployed)
}
