//! `gear create NAME --cartridge C [--disk SIZE]`: a new gear with its own uid, MCS level,
//! home and, where the node enforces them, disk quota. `gear create NAME --image REF` makes a
//! gear of the `image` cartridge and deploys the image to it; when the image cannot be
//! deployed the new gear goes again.

use gearhost_api::ops;

use crate::client::{GearArg, Target, call};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear create`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// The cartridge that decides what the gear runs (see `gear cartridge list`).
    #[arg(
        long,
        short,
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    pub cartridge: Option<String>,
    /// The image the gear runs instead of a cartridge's app.
    #[command(flatten)]
    pub image: super::image::ImageArgs,
    /// The gear's disk quota, e.g. 512MiB or 2GiB: its files, deployments and
    /// logs together (default: the node's gears.disk; at most its gears.max-disk).
    #[arg(long, value_name = "SIZE", value_parser = parse_disk)]
    pub disk: Option<u64>,
    /// In a cluster, the node to place the gear on (default: the node with
    /// the fewest gears for its free memory; see `gear node list`).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the new gear as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A size such as `512MiB` or `2GiB`, in bytes.
fn parse_disk(text: &str) -> Result<u64, String> {
    gearhost_runtime::manifest::parse_size(text)
        .ok_or_else(|| format!("{text:?} is not a size; use e.g. 512MiB or 2GiB"))
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let cartridge = match (&args.cartridge, &args.image.image) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => IMAGE_CARTRIDGE.to_string(),
        (None, None) => unreachable!("clap requires --cartridge or --image"),
    };
    args.image.check()?;
    let deploy = match &args.image.image {
        // credentials are found before anything is created
        Some(reference) => Some(args.image.deploy_op(args.gear.to_ref(), reference)?),
        None => None,
    };
    let gear = call(
        &args.target,
        ops::Create {
            gear: args.gear.to_ref(),
            cartridge,
            disk: args.disk,
            node: args.node.clone(),
        },
    )?;
    let name = &args.gear.name;
    if let Some(op) = deploy {
        eprintln!("created gear {name}; deploying {}", op.reference);
        let deployed = match call(&args.target, op) {
            Ok(d) => d,
            Err(e) => {
                // a gear that cannot run its image is not kept
                let gone = call(
                    &args.target,
                    ops::Destroy {
                        gear: args.gear.to_ref(),
                    },
                );
                if let Err(
                    Failure::Failed(again) | Failure::Invalid(again) | Failure::Environment(again),
                ) = gone
                {
                    eprintln!("gear {name} could not be removed again: {again:#}");
                }
                return Err(e);
            }
        };
        if args.json {
            print_json(&deployed)?;
        } else {
            match &deployed.url {
                Some(url) => println!(
                    "created gear {name} running {} (uid {}); {url}",
                    args.image.image.as_deref().unwrap_or_default(),
                    gear.uid
                ),
                None => println!("created gear {name} (uid {})", gear.uid),
            }
        }
        return Ok(());
    }
    if args.json {
        print_json(&gear)?;
    } else {
        let next = if gear.takes_deployments {
            format!("deploy to it with `gear deploy {name} DIR`")
        } else {
            format!("start it with `gear start {name}`, then `gear link APP {name}`")
        };
        println!(
            "created gear {name} in namespace {} (uid {}, {}); {next}",
            gear.namespace, gear.uid, gear.mcs_level
        );
    }
    Ok(())
}

/// The cartridge of gears made with `--image`.
pub const IMAGE_CARTRIDGE: &str = "image";
