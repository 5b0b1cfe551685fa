//! `gear image pull|list|prune`: the node's store of container images
//! (operators). The node pulls (`linux/amd64`, every blob verified by its
//! digest and size, layers unpacked once and shared), with the credentials
//! found here for the registry.

use std::path::PathBuf;

use gearhost_api::ops;

use crate::CmdResult;
use crate::client::{Target, call};
use crate::output::print_json;

/// Arguments of `gear image pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image: `registry/repository:tag` or `registry/repository@sha256:...`
    /// (an `oci://` prefix is allowed).
    pub reference: String,
    /// Reach the registry over plain HTTP (a registry on loopback only).
    #[arg(long)]
    pub insecure: bool,
    /// A Docker config file with the registry's credentials (`auths`); default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How `gear create --image` and `gear deploy --image` reach an image.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageArgs {
    /// Run a container image: `registry/repository:tag` or
    /// `registry/repository@sha256:...`. The gear runs the `image` cartridge;
    /// the image's layers become its root, and its Entrypoint and Cmd its app,
    /// run as the gear's own uid.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// The port the image's app serves HTTP on (default: its first exposed
    /// TCP port, else 8080).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Reach the registry over plain HTTP (a registry on loopback only).
    #[arg(long)]
    pub insecure: bool,
    /// A Docker config file with the registry's credentials (`auths`);
    /// default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
}

impl ImageArgs {
    /// `--port`, `--insecure` and `--auth-file` go with an image only.
    pub fn check(&self) -> Result<(), crate::Failure> {
        if self.image.is_none()
            && (self.port.is_some() || self.insecure || self.auth_file.is_some())
        {
            return Err(crate::Failure::Invalid(anyhow::anyhow!(
                "--port, --insecure and --auth-file go with an image; add --image REF"
            )));
        }
        Ok(())
    }

    /// The request that deploys `reference` (this image, unless given) to `gear`.
    pub fn deploy_op(
        &self,
        gear: gearhost_api::GearRef,
        reference: &str,
    ) -> Result<ops::DeployImage, crate::Failure> {
        let credentials = crate::registry::credentials(reference, self.auth_file.as_deref())?;
        Ok(ops::DeployImage {
            gear,
            reference: reference.to_string(),
            insecure: self.insecure,
            credentials,
            port: self.port,
        })
    }
}

/// Arguments of `gear image list` and `gear image prune`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `gear image pull`
pub fn pull(args: PullArgs) -> CmdResult {
    let credentials = crate::registry::credentials(&args.reference, args.auth_file.as_deref())?;
    let image = call(
        &args.target,
        ops::ImagePull {
            reference: args.reference.clone(),
            insecure: args.insecure,
            credentials,
        },
    )?;
    if args.json {
        print_json(&image)?;
        return Ok(());
    }
    println!(
        "pulled {} ({}): {} layers, {} fetched, {} already here",
        image.reference, image.digest, image.layers, image.fetched, image.shared
    );
    Ok(())
}

/// `gear image list`
pub fn list(args: StoreArgs) -> CmdResult {
    let images = call(&args.target, ops::ImageList {})?;
    if args.json {
        print_json(&images)?;
        return Ok(());
    }
    println!("{:<48} {:<8} {:<12} COMMAND", "IMAGE", "LAYERS", "PORTS");
    for i in &images {
        println!(
            "{:<48} {:<8} {:<12} {}",
            i.reference,
            i.layers,
            i.ports.join(","),
            i.command.join(" ")
        );
        println!("{:<48} digest {}", "", i.digest);
    }
    Ok(())
}

/// `gear image prune`
pub fn prune(args: StoreArgs) -> CmdResult {
    let pruned = call(&args.target, ops::ImagePrune {})?;
    if args.json {
        print_json(&pruned)?;
        return Ok(());
    }
    println!(
        "removed {} images and {} layers no gear uses",
        pruned.images, pruned.layers
    );
    Ok(())
}
