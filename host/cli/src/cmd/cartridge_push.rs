//! `gear cartridge push DIR REF`: publish a cartridge to an OCI registry in
//! the CNCF Wasm artifact layout (see `gearhost_oci`), after checking it as
//! `gear cartridge check` does. The tag must be the manifest's version, so a
//! tag always names what the manifest says; the digest printed pins it.

use std::path::PathBuf;

use crate::output::print_json;
use crate::{CmdResult, Failure};

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

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let invalid = |e: String| Failure::Invalid(anyhow::anyhow!(e));
    let reference =
        gearhost_oci::parse_reference(&args.reference).map_err(|e| invalid(e.to_string()))?;
    let (_runtime, cartridge) = super::load_cartridge(&args.dir, args.cache_dir.as_deref())?;
    let m = cartridge.manifest();
    let version = m.version.to_string();
    match reference.tag() {
        Some(tag) if tag == version => {}
        Some(tag) => {
            return Err(invalid(format!(
                "the tag {tag} is not the cartridge's version {version} (cartridge.toml); push it as {}/{}:{version}",
                reference.registry(),
                reference.repository()
            )));
        }
        None => {
            return Err(invalid(format!(
                "push names a tag, the cartridge's version: {}/{}:{version}",
                reference.registry(),
                reference.repository()
            )));
        }
    }
    let read = |path: PathBuf| {
        std::fs::read(&path).map_err(|e| {
            Failure::Environment(anyhow::anyhow!("cannot read {}: {e}", path.display()))
        })
    };
    let info = cartridge.info();
    let publication = gearhost_oci::Publication {
        manifest: read(args.dir.join(gearhost_runtime::manifest::MANIFEST_FILE))?,
        wasm: read(m.hooks_path(&args.dir))?,
        component: gearhost_oci::Component {
            exports: vec![format!(
                "{}/hooks@{}",
                gearhost_runtime::CONTRACT_PACKAGE,
                info.contract_version
            )],
            imports: info.imports.clone(),
            target: Some(format!(
                "{}/cartridge@{}",
                gearhost_runtime::CONTRACT_PACKAGE,
                info.contract_version
            )),
        },
    };
    let credentials =
        gearhost_oci::credentials_for(reference.registry(), args.auth_file.as_deref())
            .map_err(|e| Failure::Environment(anyhow::anyhow!("{e}")))?;
    let target = gearhost_oci::Target::new(&args.reference, args.insecure, credentials)
        .map_err(|e| invalid(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Environment(anyhow::anyhow!("cannot start: {e}")))?;
    let digest = runtime
        .block_on(gearhost_oci::push(&target, &publication))
        .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot push {}: {e}", args.reference)))?;
    let pinned = format!(
        "{}/{}@{digest}",
        reference.registry(),
        reference.repository()
    );
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
