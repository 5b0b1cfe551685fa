//! `gear cartridge check DIR`: validate a cartridge and summarise it.

use std::path::PathBuf;

use gearhost_runtime::manifest::format_size;
use serde::Serialize;

use crate::CmdResult;
use crate::output::{print_json, print_rows};

/// Arguments of `gear cartridge check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cartridge directory (holding cartridge.toml).
    pub dir: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where compiled components are cached (default: see `gear cartridge call --help`).
    #[arg(long, env = "GEARHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct Summary<'a> {
    ok: bool,
    manifest: &'a gearhost_runtime::Manifest,
    component: &'a gearhost_runtime::ComponentInfo,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let (_runtime, cartridge) = super::load_cartridge(&args.dir, args.cache_dir.as_deref())?;
    let m = cartridge.manifest();
    let info = cartridge.info();
    if args.json {
        print_json(&Summary {
            ok: true,
            manifest: m,
            component: info,
        })?;
        return Ok(());
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(", ")
        }
    };
    let endpoints = if m.endpoints.is_empty() {
        "(none)".to_string()
    } else {
        m.endpoints
            .iter()
            .map(|e| format!("{}:{} ({})", e.name, e.private_port, e.protocols.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!("ok: {} is a valid cartridge", args.dir.display());
    print_rows(&[
        ("name", m.name.clone()),
        ("version", m.version.to_string()),
        ("display name", m.display_name.clone()),
        ("description", m.description.clone()),
        ("categories", list(&m.categories)),
        ("actions", list(&m.actions)),
        (
            "contract",
            format!(
                "{}@{}",
                gearhost_runtime::CONTRACT_PACKAGE,
                info.contract_version
            ),
        ),
        ("hooks", list(&info.hooks)),
        ("endpoints", endpoints),
        (
            "limits",
            format!(
                "timeout {}, build-timeout {}, memory {}",
                humantime::format_duration(m.limits.timeout),
                humantime::format_duration(m.limits.build_timeout),
                format_size(m.limits.memory)
            ),
        ),
        ("may exec", list(m.permissions.exec.patterns())),
        ("may spawn", list(m.permissions.spawn.patterns())),
        (
            "build network",
            if m.permissions.build_network {
                "allowed"
            } else {
                "denied"
            }
            .to_string(),
        ),
        (
            "component",
            format!("{} bytes, sha256 {}", info.wasm_bytes, info.content_hash),
        ),
        (
            "compiled",
            format!(
                "{:?} in {:.1} ms",
                info.cache,
                info.load_time.as_secs_f64() * 1000.0
            )
            .to_lowercase(),
        ),
    ]);
    Ok(())
}
