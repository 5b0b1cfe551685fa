//! `gear sandbox run -- CMD ...`: run one command in a throwaway gear sandbox
//! with every layer on, so operators and tests can probe what a gear sees.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use anyhow::Context;
use gearhost_runtime::manifest::parse_size;
use gearhost_sandbox::{NetworkMode, Sandbox, SandboxSpec, Stdio};

use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear sandbox run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear's uid (and gid unless --gid is given); must not be 0. Default 60999. Needs
    /// root: run by another user, the gear is rootless and runs as that user
    #[arg(long)]
    pub uid: Option<u32>,
    /// The gear's gid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// Memory limit, swap included (e.g. 256MiB).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Most processes and threads the gear may have.
    #[arg(long)]
    pub pids: Option<u64>,
    /// CPU quota in millicores (1000 = one CPU).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// Hostname inside the sandbox.
    #[arg(long, default_value = "sandbox")]
    pub hostname: String,
    /// Use this directory as the gear's home (default: a fresh temporary
    /// directory, removed afterwards). It appears at /gear inside.
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Share the host's network instead of an isolated namespace with only loopback.
    #[arg(long)]
    pub host_network: bool,
    /// Print the layer report on stderr before the command's output.
    #[arg(long)]
    pub report: bool,
    /// Print the layer report as JSON on stdout and the command's status, instead of attaching stdio.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

fn parse_memory(text: &str) -> Result<u64, String> {
    parse_size(text).ok_or_else(|| format!("invalid size {text:?}: use e.g. 256MiB or 1GiB"))
}

/// A throwaway home: in memory (`/dev/shm`) when the machine has it and `TMPDIR` is not set,
/// so that making and removing it costs no disk work (on a disk mounted with `discard` even
/// an empty directory's removal waits on the device), else in the temporary directory. What
/// the gear writes there is charged to its memory cgroup like the rest of its memory.
fn temporary_home() -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("gear-sandbox-");
    if std::env::var_os("TMPDIR").is_none()
        && let Ok(dir) = builder.tempdir_in("/dev/shm")
    {
        return Ok(dir);
    }
    builder.tempdir()
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let root = crate::is_root();
    if !root {
        // Rootless: a user namespace maps the caller to the gear's uid 0; there is no cgroup.
        let needs_root = [
            ("--uid", args.uid.is_some()),
            ("--gid", args.gid.is_some()),
            ("--memory", args.memory.is_some()),
            ("--pids", args.pids.is_some()),
            ("--cpu", args.cpu.is_some()),
        ];
        if let Some((flag, _)) = needs_root.iter().find(|(_, given)| *given) {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "{flag} needs root: without it the gear is rootless (it runs as you, in a user namespace, with no cgroup to hold limits); run with sudo to use {flag}"
            )));
        }
    }
    let uid = match args.uid {
        Some(uid) => uid,
        None if root => 60999,
        None => gearhost_sys::proc_status::effective_uid(),
    };
    if root && (uid == 0 || args.gid == Some(0)) {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "a gear never runs as uid or gid 0; pick an unprivileged id with --uid"
        )));
    }
    let (_tmp, home) = match &args.home {
        Some(home) => (None, home.clone()),
        None => {
            let tmp = temporary_home()
                .context("cannot create a temporary home")
                .map_err(Failure::Environment)?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    let gid = match args.gid {
        Some(gid) => gid,
        None if root => uid,
        None => gearhost_sys::proc_status::effective_gid(),
    };
    if root {
        std::os::unix::fs::chown(&home, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to uid {uid}", home.display()))
            .map_err(Failure::Environment)?;
    }

    let id = format!("sandbox-{}", std::process::id());
    let mut spec = SandboxSpec::new(id, uid, gid, &home, args.command.clone());
    spec.hostname = args.hostname.clone();
    spec.limits.memory_bytes = args.memory;
    spec.limits.pids = args.pids;
    spec.limits.cpu_millicores = args.cpu;
    spec.env = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), "/gear".into()),
        (
            "TERM".into(),
            std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
        ),
    ];
    if args.host_network {
        spec.network = NetworkMode::Host;
    }
    // on a terminal the command gets a terminal of its own in the gear, relayed from this one
    let on_terminal = {
        use std::io::IsTerminal;
        !args.json && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
    };
    // told when this terminal changes size (before any thread starts: see window_changes)
    let resized = on_terminal
        .then(|| gearhost_sys::window_changes().ok())
        .flatten();
    if on_terminal {
        spec.stdio.terminal = true;
    } else if !args.json {
        spec.stdio.stdin = Stdio::Inherit;
        spec.stdio.stdout = Stdio::Inherit;
        spec.stdio.stderr = Stdio::Inherit;
    }
    let mut child = Sandbox::spawn(spec).map_err(|e| Failure::Environment(e.into()))?;
    if args.report && !args.json {
        eprintln!("{}", child.report());
    }
    if let Some(terminal) = child.take_terminal() {
        use std::os::fd::AsFd;
        let caller_in = std::io::stdin();
        let raw = gearhost_sys::RawTerminal::enter(caller_in.as_fd()).ok();
        let (input, output) = (
            caller_in.as_fd().try_clone_to_owned(),
            std::io::stdout().as_fd().try_clone_to_owned(),
        );
        if let (Ok(input), Ok(output)) = (input, output) {
            gearhost_sys::relay_terminal(
                &std::fs::File::from(input),
                &std::fs::File::from(output),
                &terminal,
                resized.as_ref(),
            );
        }
        drop(raw);
    }
    let status = child.wait().map_err(|e| Failure::Failed(e.into()))?;
    let report = child.report().clone();
    let teardown = child.teardown().map_err(|e| Failure::Failed(e.into()))?;
    if args.json {
        print_json(&serde_json::json!({
            "status": status.code(),
            "signal": status.signal(),
            "report": report,
            "teardown": teardown,
        }))?;
    }
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(Failure::Reported(u8::try_from(code).unwrap_or(1))),
        (None, Some(sig)) => Err(Failure::Reported(
            128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
        )),
        _ => Err(Failure::Reported(1)),
    }
}
