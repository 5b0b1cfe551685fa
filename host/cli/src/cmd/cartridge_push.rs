//! `gear cartridge push DIR REF`: publish a cartridge to an OCI registry in
//! the CNCF Wasm artifact layout (see `gearhost_oci`), after checking it as
//! `gear cartridge check` does. The tag must be the manifest's version, so a
//! tag always names what the manifest says; the digest printed pins it.

use std::path::PathBuf;

use crate::output::print_json;
use crate::{CmdResult, registry};

/// Arguments of `gear cartridge push`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cartridge directory (cartridge.toml + hooks component).
    pub dir: PathBuf,
    /// Where to publish it: `registry/namespace/name:version` (an `oci://`
    /// prefix is allowed); the tag must be the manifest's version.
    pub reference: String,
    /// Reach the registry over plain HTTP (a registry on loopback only).
    #[arg(long)]
    pub insecure: bool,
    /// A Docker config file with the registry's credentials (`auths`); default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Where compiled components are cached (the check compiles the component).
    #[arg(long, env = "GEARHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Pushed<'a> {
    reference: &'a str,
    digest: &'a str,
    pinned: String,
}

/// Run the command: the check here, the upload by the registry helper (see
/// [`crate::registry`]).
pub fn run(args: Args) -> CmdResult {
    let (_runtime, cartridge) = super::load_cartridge(&args.dir, args.cache_dir.as_deref())?;
    let m = cartridge.manifest();
    let version = m.version.to_string();
    let info = cartridge.info();
    let contract = |what: &str| {
        format!(
            "{}/{what}@{}",
            gearhost_runtime::CONTRACT_PACKAGE,
            info.contract_version
        )
    };
    let (digest, pinned) = registry::publish(registry::Push {
        reference: args.reference.clone(),
        version: version.clone(),
        insecure: args.insecure,
        auth_file: args.auth_file.clone(),
        manifest: args.dir.join(gearhost_runtime::manifest::MANIFEST_FILE),
        wasm: m.hooks_path(&args.dir),
        component: gearhost_oci::Component {
            exports: vec![contract("hooks")],
            imports: info.imports.clone(),
            target: Some(contract("cartridge")),
        },
    })?;
    if args.json {
        print_json(&Pushed {
            reference: &args.reference,
            digest: &digest,
            pinned,
        })?;
    } else {
        println!("pushed {} {version} to {}", m.name, args.reference);
        println!("digest {digest}");
        println!("install it anywhere as: gear cartridge install {pinned}");
    }
    Ok(())
}
