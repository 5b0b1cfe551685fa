//! `gear cartridge call DIR HOOK`: run one hook standalone against a scratch
//! gear directory and show what it logged, what it asked the host to do, and
//! how it ended. Without a node there is no gear sandbox, so `exec` and
//! `spawn` are refused rather than run unconfined.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use gearhost_runtime::{
    EndpointInfo, GearHost, GearInfo, HookCall, HookKind, HookOutcome, HostRequest, ScratchHost,
};
use serde::Serialize;

use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Where the gear's home appears to hooks.
pub const GUEST_HOME: &str = "/gear";

/// Arguments of `gear cartridge call`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cartridge directory (holding cartridge.toml).
    pub dir: PathBuf,
    /// The hook to run: build, start, stop or control.
    pub hook: HookKind,
    /// The action, for `control` (e.g. status).
    #[arg(long, short)]
    pub action: Option<String>,
    /// An argument for the control action (repeat for more).
    #[arg(long = "arg", value_name = "ARG")]
    pub args: Vec<String>,
    /// A directory to use as the gear's home (kept afterwards); default: a
    /// fresh temporary directory, removed afterwards.
    #[arg(long)]
    pub gear_dir: Option<PathBuf>,
    /// Name of the scratch gear.
    #[arg(long, default_value = "scratch")]
    pub gear_name: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where compiled components are cached: $GEARHOST_CACHE_DIR, else
    /// /var/cache/gearhost/components for root, else ~/.cache/gearhost/components.
    #[arg(long, env = "GEARHOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report<'a> {
    cartridge: &'a str,
    version: String,
    gear_dir: PathBuf,
    env: Vec<(String, String)>,
    #[serde(flatten)]
    outcome: &'a HookOutcome,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let call = match (args.hook, &args.action) {
        (HookKind::Control, Some(action)) => HookCall::Control {
            action: action.clone(),
            args: args.args.clone(),
        },
        (HookKind::Control, None) => {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "the control hook needs an action: add `--action status` (or another action the cartridge supports)"
            )));
        }
        (_, Some(_)) => {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "--action only applies to the control hook; drop it, or call `control`"
            )));
        }
        (HookKind::Build, None) => HookCall::Build,
        (HookKind::Start, None) => HookCall::Start,
        (HookKind::Stop, None) => HookCall::Stop,
    };
    if let Err(problem) = gearhost_runtime::manifest::check_name(&args.gear_name, 32) {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "invalid gear name {:?}: {problem}; use lower-case letters, digits and dashes",
            args.gear_name
        )));
    }

    let (_runtime, cartridge) = super::load_cartridge(&args.dir, args.cache_dir.as_deref())?;

    let (_tmp, gear_dir) = match &args.gear_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the gear directory {}", dir.display()))
                .map_err(Failure::Environment)?;
            (None, dir.clone())
        }
        None => {
            let tmp = scratch_dir()
                .context("cannot create a scratch gear directory in the temporary directory")
                .map_err(Failure::Environment)?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    for sub in [
        "app-root/repo",
        "app-root/data",
        "app-root/runtime",
        "app-root/logs",
    ] {
        let path = gear_dir.join(sub);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))
            .map_err(Failure::Environment)?;
    }

    let manifest = cartridge.manifest();
    let gear = GearInfo {
        id: format!("scratch-{}", std::process::id()),
        name: args.gear_name.clone(),
        namespace: "local".into(),
        cartridge: manifest.name.clone(),
        home: GUEST_HOME.into(),
        endpoints: manifest.endpoints.iter().map(EndpointInfo::from).collect(),
    };
    let host = Arc::new(ScratchHost::new(gear, gear_dir.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Environment)?;
    let outcome = rt.block_on(cartridge.call(host.clone(), call));

    if args.json {
        print_json(&Report {
            cartridge: &manifest.name,
            version: manifest.version.to_string(),
            gear_dir: gear_dir.clone(),
            env: host.env_list(),
            outcome: &outcome,
        })?;
    } else {
        print_human(&manifest.name, &outcome, &host);
    }
    match outcome.result {
        Ok(_) => Ok(()),
        Err(_) => Err(Failure::Reported(1)),
    }
}

fn print_human(cartridge: &str, outcome: &HookOutcome, host: &ScratchHost) {
    let hook = outcome.hook;
    for line in &outcome.logs {
        let source = match line.source {
            gearhost_runtime::LogSource::Hook => "log",
            gearhost_runtime::LogSource::Stdout => "stdout",
            gearhost_runtime::LogSource::Stderr => "stderr",
        };
        eprintln!("[{hook} {source} {}] {}", line.level.as_str(), line.message);
    }
    for request in &outcome.requests {
        let text = match request {
            HostRequest::EnvSet {
                key,
                value,
                outcome,
            } => format!("env set {key}={value:?}: {outcome}"),
            HostRequest::EnvUnset { key, outcome } => format!("env unset {key}: {outcome}"),
            HostRequest::Exec {
                program,
                args,
                outcome,
            } => {
                format!("exec {program} {}: {outcome}", args.join(" "))
            }
            HostRequest::Spawn {
                name,
                program,
                args,
                outcome,
            } => format!("spawn {name} = {program} {}: {outcome}", args.join(" ")),
            HostRequest::Signal {
                name,
                signal,
                outcome,
            } => format!("signal {name} {signal:?}: {outcome}"),
            HostRequest::Wait {
                name,
                timeout_ms,
                outcome,
            } => format!("wait {name} {timeout_ms}ms: {outcome}"),
        };
        eprintln!("[{hook} asked] {text}");
    }
    let elapsed = outcome.elapsed.as_secs_f64() * 1000.0;
    match &outcome.result {
        Ok(output) => {
            eprintln!("[{hook}] {cartridge}: ok in {elapsed:.1} ms");
            if !output.is_empty() {
                println!("{output}");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            let _ = host;
        }
    }
}

/// A throwaway gear directory: in memory (`/dev/shm`) when the machine has
/// it, so that making and removing it costs no disk work (on a disk mounted
/// with `discard`, removing even a small tree waits for the device), else in
/// the temporary directory.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("gear-scratch-");
    if std::env::var_os("TMPDIR").is_none() {
        let shm = std::path::Path::new("/dev/shm");
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}
