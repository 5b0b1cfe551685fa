//! `gear cartridge call DIR HOOK`: run one hook standalone against a scratch
//! gear directory and show what it logged, what it asked the host to do, and
//! how it ended.
//!
//! As root, the hook's `exec` and `spawn` run for real in a throwaway gear
//! sandbox ([`trial`]); `start` is then followed by a look at what it
//! spawned (and whether the primary endpoint answers), then by the
//! cartridge's own `stop` (at once, or at Ctrl-C with `--keep-running`), and
//! the throwaway gear is removed. Without root (or with `--no-sandbox`)
//! there is no gear sandbox, so `exec` and `spawn` are refused rather than
//! run unconfined.

mod trial;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gearhost_runtime::{
    EndpointInfo, GearHost, GearInfo, HookCall, HookKind, HookOutcome, HostRequest, ScratchHost,
};
use serde::Serialize;
use trial::TrialHost;

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
    /// A directory to use as the gear's home (kept afterwards; as root it is
    /// handed to the gear's uid); default: a fresh temporary directory,
    /// removed afterwards.
    #[arg(long)]
    pub gear_dir: Option<PathBuf>,
    /// Name of the scratch gear.
    #[arg(long, default_value = "scratch")]
    pub gear_name: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Refuse the hook's exec and spawn even as root, as without one.
    #[arg(long)]
    pub no_sandbox: bool,
    /// The uid (and gid) the throwaway gear's programs run as, as root; never 0.
    #[arg(long, default_value_t = 60999)]
    pub uid: u32,
    /// After `start`: keep what it started running until Ctrl-C, then run `stop`.
    #[arg(long)]
    pub keep_running: bool,
    /// After `start`: how long to wait for the primary endpoint to accept
    /// connections (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,
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
    /// What happened in the throwaway gear, when the hook ran in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a SandboxReport>,
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

    let (runtime, cartridge) = super::load_cartridge(&args.dir, args.cache_dir.as_deref())?;

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
    let scratch = ScratchHost::new(gear, gear_dir.clone());
    let sandboxed = !args.no_sandbox && crate::is_root();
    if sandboxed && args.uid == 0 {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "a gear never runs as uid 0; pick an unprivileged id with --uid"
        )));
    }
    let (host, trial): (Arc<dyn GearHost>, Option<Arc<TrialHost>>) = if sandboxed {
        let owner = gearhost_runtime::fsid::FileOwner {
            uid: args.uid,
            gid: args.uid,
        };
        let trial =
            Arc::new(TrialHost::new(scratch, &gear_dir, owner).map_err(Failure::Environment)?);
        (trial.clone(), Some(trial))
    } else {
        (Arc::new(scratch), None)
    };
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time();
    if sandboxed {
        // hooks run under the gear's file identity: every new thread starts as
        // this process (see gearhost_runtime::fsid)
        builder.on_thread_start(gearhost_runtime::fsid::reset_thread);
    }
    if sandboxed && args.keep_running {
        // Ctrl-C is caught (the signal driver needs the I/O driver)
        builder.enable_io();
    }
    let rt = builder
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::Environment)?;
    let outcome = rt.block_on(cartridge.call(host.clone(), call));
    if !args.json {
        print_human(&manifest.name, &outcome);
    }
    let sandbox = trial.as_ref().map(|trial| {
        let report = rt.block_on(after_hook(&cartridge, trial, &host, &outcome, &args));
        // the throwaway gear goes, whatever happened
        let removed = trial.remove();
        if !args.json {
            if !removed.killed.is_empty() {
                eprintln!(
                    "[sandbox] killed {}, still running at the end",
                    removed.killed.join(", ")
                );
            }
            for problem in &removed.left_behind {
                eprintln!("[sandbox] left behind: {problem}");
            }
            eprintln!("[sandbox] removed the throwaway gear");
        }
        SandboxReport { removed, ..report }
    });

    if args.json {
        print_json(&Report {
            cartridge: &manifest.name,
            version: manifest.version.to_string(),
            gear_dir: gear_dir.clone(),
            env: host.env_list(),
            outcome: &outcome,
            sandbox: sandbox.as_ref(),
        })?;
    }
    let sandbox_failed = sandbox.as_ref().is_some_and(SandboxReport::failed);
    // The process ends here: nothing is left to run, and freeing the engine,
    // the component's mappings and the runtime's threads one by one would
    // only delay the exit (0.1 ms of a 2.5 ms call); the OS reclaims them.
    rt.shutdown_background();
    std::mem::forget((runtime, cartridge));
    match outcome.result {
        Ok(_) if !sandbox_failed => Ok(()),
        _ => Err(Failure::Reported(1)),
    }
}

/// What happened in the throwaway gear after the hook.
#[derive(Debug, Default, Serialize)]
struct SandboxReport {
    /// The processes the hook started.
    spawned: Vec<gearhost_runtime::ProcessInfo>,
    /// Whether the primary endpoint came up, after `start`.
    ready: Option<Readiness>,
    /// The cartridge's `stop`, run after `start`.
    stop: Option<HookOutcome>,
    /// What removing the throwaway gear did.
    removed: trial::Removed,
}

impl SandboxReport {
    /// Whether what followed the hook failed: the endpoint never answered, or
    /// `stop` failed.
    fn failed(&self) -> bool {
        self.ready.as_ref().is_some_and(|r| !r.up)
            || self.stop.as_ref().is_some_and(|s| s.result.is_err())
    }
}

/// Whether the primary endpoint accepted connections after `start`.
#[derive(Debug, Serialize)]
struct Readiness {
    endpoint: String,
    port: u16,
    up: bool,
    /// How long after `start` returned it answered (or was given up on).
    #[serde(rename = "after_ms")]
    after: u128,
}

/// After a hook in the throwaway gear: for a successful `start`, say what it
/// spawned and whether the primary endpoint answers, keep it running until
/// Ctrl-C if asked, then run the cartridge's `stop`.
async fn after_hook(
    cartridge: &gearhost_runtime::Cartridge,
    trial: &TrialHost,
    host: &Arc<dyn GearHost>,
    outcome: &HookOutcome,
    args: &Args,
) -> SandboxReport {
    let manifest = cartridge.manifest();
    let hook = outcome.hook;
    let mut report = SandboxReport {
        spawned: trial.spawned(),
        ..SandboxReport::default()
    };
    if !args.json {
        for p in &report.spawned {
            let pid = p.pid.map_or_else(|| "-".to_string(), |pid| pid.to_string());
            let state = match p.last_exit {
                Some(status) => format!("ended ({status})"),
                None => "running".to_string(),
            };
            eprintln!("[{hook}] spawned {}: pid {pid}, {state}", p.name);
        }
    }
    if hook != HookKind::Start || outcome.result.is_err() {
        return report;
    }
    if let Some(endpoint) = manifest
        .primary_endpoint()
        .filter(|_| !report.spawned.is_empty())
    {
        let port = endpoint.private_port;
        let started = Instant::now();
        let up = loop {
            if trial.answers(port, Duration::from_millis(200)) {
                break true;
            }
            if !trial.any_running() || started.elapsed() >= args.ready_timeout {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let after = started.elapsed();
        if !args.json {
            if up {
                eprintln!(
                    "[start] up: endpoint {} (port {port}) accepts connections, {:.2} s after start",
                    endpoint.name,
                    after.as_secs_f64()
                );
            } else if trial.any_running() {
                eprintln!(
                    "error: nothing accepted connections on port {port} (endpoint {}) within {}; \
                     the app must listen on 127.0.0.1:{port} in its gear (raise --ready-timeout \
                     if it is only slow)",
                    endpoint.name,
                    humantime::format_duration(args.ready_timeout)
                );
            } else {
                eprintln!(
                    "error: what start spawned ended before anything accepted connections on \
                     port {port} (endpoint {}); its output is above",
                    endpoint.name
                );
            }
        }
        report.ready = Some(Readiness {
            endpoint: endpoint.name.clone(),
            port,
            up,
            after: after.as_millis(),
        });
    }
    if args.keep_running && trial.any_running() {
        if !args.json {
            eprintln!("[start] running; press Ctrl-C to run stop and remove the gear");
        }
        let ended = async {
            while trial.any_running() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = ended => {
                if !args.json {
                    eprintln!("[start] everything it started has ended");
                }
            }
        }
    }
    let stop = cartridge.call(host.clone(), HookCall::Stop).await;
    if !args.json {
        print_human(&manifest.name, &stop);
        for p in trial.spawned() {
            if let Some(status) = p.last_exit {
                eprintln!("[stop] {} ended ({status})", p.name);
            }
        }
    }
    report.stop = Some(stop);
    report
}

fn print_human(cartridge: &str, outcome: &HookOutcome) {
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
        Err(e) => eprintln!("error: {e}"),
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
