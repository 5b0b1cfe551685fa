//! `gear cartridge install|list|remove`: the node's cartridge store. A
//! cartridge comes from a directory (sent to the node as an archive) or from
//! an OCI registry (`oci://REF` or `REF@sha256:...`: the node pulls and
//! verifies it, with the credentials found here).

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
    /// your own rights and sent to the node as an archive; or a registry
    /// artifact, `oci://registry/namespace/name:version` or
    /// `registry/namespace/name@sha256:...`, which the node pulls.
    pub dir: PathBuf,
    /// Reach the registry over plain HTTP (a registry on loopback only).
    #[arg(long)]
    pub insecure: bool,
    /// A Docker config file with the registry's credentials (`auths`); default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
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

/// Whether `source` names a registry artifact rather than a directory.
fn registry_source(source: &std::path::Path) -> Option<&str> {
    let text = source.to_str()?;
    if text.starts_with("oci://") || (text.contains("@sha256:") && !source.exists()) {
        Some(text)
    } else {
        None
    }
}

/// `gear cartridge install`
pub fn install(args: InstallArgs) -> CmdResult {
    if let Some(reference) = registry_source(&args.dir) {
        return install_from_registry(&args, reference);
    }
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

/// The node pulls `reference` with the credentials found here for its registry.
fn install_from_registry(args: &InstallArgs, reference: &str) -> CmdResult {
    let credentials = crate::registry::credentials(reference, args.auth_file.as_deref())?;
    let installed = call(
        &args.target,
        ops::CartridgePull {
            reference: reference.to_string(),
            insecure: args.insecure,
            credentials,
        },
    )?;
    if args.json {
        print_json(&installed)?;
    } else {
        let digest = installed.origin.as_ref().map_or("", |o| o.digest.as_str());
        println!(
            "installed {} {} from {} ({digest})",
            installed.name, installed.version, reference
        );
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
        "{:<16} {:<10} {:<10} {:<40} DESCRIPTION",
        "NAME", "VERSION", "CONTRACT", "FROM"
    );
    for c in &cartridges {
        let from = c
            .origin
            .as_ref()
            .map_or("(a directory)", |o| o.reference.as_str());
        println!(
            "{:<16} {:<10} {:<10} {:<40} {}",
            c.name, c.version, c.contract, from, c.description
        );
        if let Some(o) = &c.origin {
            println!("{:<16} digest {}", "", o.digest);
        }
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
