//! The `gear` command line: argument parsing with clap, one module per
//! subcommand under [`cmd`], and the exit-code contract scripts rely on.
//!
//! Exit codes:
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | success |
//! | 1 | the operation failed (a hook failed, a check found a problem) |
//! | 2 | the command line is wrong (clap's usage errors) |
//! | 3 | the input is invalid (a manifest, a component, a name) |
//! | 4 | the environment is missing something (no node, no permission, a kernel feature) |
//! | 141 | the reader of its standard output went away (as SIGPIPE would end it) |
//!
//! `gear exec` is the exception, since it passes on its command's status: it
//! exits with that status (128 + N when signal N ended the command), and with
//! 125 when `gear` itself fails (a bad command line, no node, no permission,
//! no such gear), so a script can tell the two apart, as with `docker run`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Standard output for every command, in place of std's `print!`: a reader that went away
/// (`gear status | head`) ends `gear` quietly with status 141, as the default action of
/// SIGPIPE would, instead of a panic. Defined before the modules so that theirs are these.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// [`print!`] with a newline.
macro_rules! println {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod archive;
pub mod client;
pub mod cmd;
pub mod ignore;
mod output;
pub mod registry;
pub mod remote;

/// How a command failed, mapped to an exit code.
#[derive(Debug)]
pub enum Failure {
    /// The operation failed (exit 1).
    Failed(anyhow::Error),
    /// Invalid input (exit 3).
    Invalid(anyhow::Error),
    /// Missing environment (exit 4).
    Environment(anyhow::Error),
    /// Already reported to the user; just exit with this code.
    Reported(u8),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Failed(_) => 1,
            Failure::Invalid(_) => 3,
            Failure::Environment(_) => 4,
            Failure::Reported(code) => *code,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

/// Result of a subcommand.
pub type CmdResult = Result<(), Failure>;

/// The whole command line of `gear`.
pub type Cli = GearCli<Command>;

/// Gearhost: run apps in sandboxed gears, with cartridges written in WebAssembly.
///
/// Generic over its subcommands so that a command line whose subcommand is
/// known from its first words can be parsed against that subcommand alone
/// (see [`Focused`]); [`Cli`] has them all.
#[derive(Debug, Parser)]
#[command(name = "gear", version, about, long_about = None, propagate_version = true)]
pub struct GearCli<C: Subcommand> {
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// How to reach the node: `--socket`, before or after the subcommand.
    #[command(flatten)]
    pub target: client::Target,

    /// The namespace to act in (default: your user name; root's is `default`),
    /// before or after the subcommand.
    #[arg(
        long,
        short = 'N',
        global = true,
        env = "GEARHOST_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,

    /// Run the command on a remote node through its ssh endpoint:
    /// `ssh://gear@HOST[:PORT]`, or a remote's name from
    /// ~/.config/gearhost/remotes.toml (whose `default` applies when this is
    /// not given).
    #[arg(long, global = true, env = "GEARHOST_REMOTE", value_name = "REMOTE")]
    pub remote: Option<String>,

    /// The subcommand.
    #[command(subcommand)]
    pub command: C,
}

/// The subcommands whose whole time is short enough for defining every other
/// subcommand's arguments to count (that, and propagating the global options
/// into all of them, was 0.7 ms of a 3.3 ms `gear cartridge call`; `gear
/// sandbox run` is the other cold path people type): a command line that names one of
/// them is parsed against it alone, and only a line that parses so is taken
/// that way. Anything else, help and errors included, goes through the whole
/// tree, so what is printed is the same.
#[derive(Debug, Subcommand)]
pub enum Focused {
    /// See [`Command::Cartridge`].
    #[command(subcommand)]
    Cartridge(CartridgeCommand),
    /// See [`Command::Sandbox`].
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

impl From<GearCli<Focused>> for Cli {
    fn from(cli: GearCli<Focused>) -> Cli {
        GearCli {
            verbose: cli.verbose,
            target: cli.target,
            namespace: cli.namespace,
            remote: cli.remote,
            command: match cli.command {
                Focused::Cartridge(c) => Command::Cartridge(c),
                Focused::Sandbox(c) => Command::Sandbox(c),
            },
        }
    }
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a gear from a cartridge.
    Create(cmd::create::Args),
    /// List gears.
    List(cmd::list::ListArgs),
    /// Show one gear in detail.
    Show(cmd::list::ShowArgs),
    /// Deploy a directory of sources to a gear: build, activate, restart.
    Deploy(cmd::deploy::Args),
    /// Run the build hook on the active deployment.
    Build(cmd::lifecycle::Args),
    /// Start a gear.
    Start(cmd::lifecycle::Args),
    /// Stop a gear (it stays stopped across node restarts).
    Stop(cmd::lifecycle::Args),
    /// Stop, then start a gear.
    Restart(cmd::lifecycle::Args),
    /// A gear's state and processes.
    Status(cmd::lifecycle::Args),
    /// Run a control action of the gear's cartridge (status, tidy, reload, ...).
    Control(cmd::control::Args),
    /// Write an archive of a gear: its deployments, data and environment.
    Snapshot(cmd::snapshot::Args),
    /// Bring a gear back from an archive `gear snapshot` wrote.
    Restore(cmd::restore::Args),
    /// Move a gear to another node of the cluster (operators).
    Move(cmd::moves::Args),
    /// A gear's deployments.
    Deployments(cmd::deployments::ListArgs),
    /// Go back to an earlier deployment.
    Rollback(cmd::deployments::RollbackArgs),
    /// A gear's environment variables.
    Env(cmd::env::Args),
    /// A gear's logs.
    Logs(cmd::logs::Args),
    /// Run a command inside a gear's sandbox, attached to this terminal.
    Exec(cmd::exec::Args),
    /// Let a gear reach another gear of its namespace (an app its database).
    Link(cmd::link::Args),
    /// Remove a link made by `gear link`.
    Unlink(cmd::link::Args),
    /// Extra host names the frontend routes to a gear.
    #[command(subcommand)]
    Alias(cmd::alias::Command),
    /// What a gear asks of HTTPS: redirect plain HTTP, HSTS.
    Https(cmd::https::Args),
    /// Freeze a gear now (a request thaws it), or stop it with --stop.
    Idle(cmd::idle::IdleArgs),
    /// Thaw a frozen gear or start an idle one now, without a request.
    Unidle(cmd::idle::Args),
    /// Stop a gear and remove it with everything it had.
    Destroy(cmd::destroy::Args),
    /// Who the node sees you as, and the namespaces you may act in.
    Whoami(cmd::tenancy::WhoamiArgs),
    /// Team namespaces: list them; operators create them and manage members.
    #[command(subcommand)]
    Namespace(cmd::tenancy::NamespaceCommand),
    /// The node's audit log: who changed what, and what was refused (operators).
    Audit(cmd::tenancy::AuditArgs),
    /// Write, check, try and install cartridges.
    #[command(subcommand)]
    Cartridge(CartridgeCommand),
    /// Container images in the node's store (operators).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print shell completions for bash, zsh, fish, ... (names from the node included).
    Completions(cmd::completions::Args),
    /// The names a completion script offers, asked of the node (see `gear completions`).
    #[command(hide = true)]
    Complete(cmd::complete::Args),
    /// Your ssh keys, for `git push` and `ssh` to the node's ssh endpoint.
    #[command(subcommand)]
    Keys(cmd::keys::Command),
    /// sshd's AuthorizedKeysCommand: the key line for a user's key (the node's ssh endpoint).
    #[command(hide = true)]
    SshAuthorize(cmd::ssh::AuthorizeArgs),
    /// sshd's forced command: what an ssh client asked for, as USER (the node's ssh endpoint).
    #[command(hide = true)]
    SshSession(cmd::ssh::SessionArgs),
    /// A git hook of the gears' repositories (the node's ssh endpoint).
    #[command(hide = true)]
    SshHook(cmd::ssh::HookArgs),
    /// Inspect this node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run commands in throwaway gear sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

/// `gear image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image into the node's store (linux/amd64; layers shared by digest).
    Pull(cmd::image::PullArgs),
    /// Images in the node's store.
    List(cmd::image::StoreArgs),
    /// Remove the images no gear uses and the layers left unused.
    Prune(cmd::image::StoreArgs),
}

/// `gear node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Report which confinement layers this machine enforces (exit 4 if a required one is missing)
    /// and whether the last node took back the gears of the one before.
    Check(cmd::node_check::Args),
    /// Run the node in the foreground.
    Run(cmd::node_run::Args),
    /// Stop the node; the gears keep running for the next node (`--gears` stops them too).
    Stop(cmd::node_stop::Args),
    /// Restart the node in place (re-executing its binary, so a replaced binary is an
    /// upgrade), keeping its listening sockets and the gears' processes.
    Restart(cmd::node_restart::Args),
    /// Print the embedded default node configuration.
    Config,
    /// Print the node's metrics (Prometheus text format).
    Metrics(cmd::node_metrics::Args),
    /// What happened to gears: deploys, starts, stops, crashes, restarts, idles, wakes, failures.
    Events(cmd::node_events::Args),
    /// The nodes of the cluster (up or down, with their load); a standalone node lists itself.
    List(cmd::node_list::Args),
}

/// `gear sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run one command in a throwaway gear sandbox with every layer on.
    Run(cmd::sandbox_run::Args),
}

/// `gear cartridge ...`
#[derive(Debug, Subcommand)]
pub enum CartridgeCommand {
    /// Write a new cartridge crate, ready to build anywhere (the SDK vendored).
    New(cmd::cartridge_new::Args),
    /// Validate a cartridge directory (manifest and hooks component) and summarise it.
    Check(cmd::cartridge_check::Args),
    /// Run one hook of a cartridge standalone, against a scratch gear directory (as root,
    /// its programs run for real in a throwaway gear sandbox).
    Call(cmd::cartridge_call::Args),
    /// Install a cartridge on the node (validated and compiled once), from a
    /// directory or an OCI registry (`oci://REF`, `REF@sha256:...`).
    Install(cmd::cartridge_store::InstallArgs),
    /// Publish a cartridge to an OCI registry (the CNCF Wasm artifact layout).
    Push(cmd::cartridge_push::Args),
    /// Cartridges installed on the node.
    List(cmd::cartridge_store::ListArgs),
    /// Remove a cartridge no gear uses.
    Remove(cmd::cartridge_store::RemoveArgs),
}

/// Where compiled components are cached when no node is involved:
/// `$GEARHOST_CACHE_DIR`, else `/var/cache/gearhost/components` for root,
/// else `$XDG_CACHE_HOME/gearhost/components` or `~/.cache/gearhost/components`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GEARHOST_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if is_root() {
        return PathBuf::from("/var/cache/gearhost/components");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("gearhost/components")
}

pub(crate) fn is_root() -> bool {
    gearhost_sys::proc_status::is_root()
}

/// Where the companion program `name` is: as the environment variable `env`
/// names it, else beside this `gear` (or one directory up, as from a cargo
/// target directory's `deps/`), else on `PATH`.
pub(crate) fn find_program(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(std::path::Path::parent);
    let beside = dir.map(|d| d.join(name));
    let above = dir.and_then(std::path::Path::parent).map(|d| d.join(name));
    if let Some(found) = [beside, above].into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Parse the command line, run the command, and turn the outcome into an exit code.
/// What `gear exec` exits with when `gear` itself fails, rather than the
/// command it runs.
pub const EXEC_OWN_FAILURE: u8 = 125;

/// The subcommand the command line names, if any: its first word that is
/// not an option. Global options may come before the subcommand, and those
/// that take a value (`--socket S`, `-N NS`) take the word after them unless
/// written `--socket=S` or `-NNS`.
fn subcommand_word(command: &clap::Command, args: &[std::ffi::OsString]) -> Option<String> {
    let valued: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_action().takes_values())
        .collect();
    let takes_next = |word: &str| {
        valued.iter().any(|a| {
            a.get_long().is_some_and(|l| word == format!("--{l}"))
                || a.get_short().is_some_and(|s| word == format!("-{s}"))
        })
    };
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(word) = words.next() {
        if word == "--" {
            return None;
        }
        if !word.starts_with('-') {
            return Some(word.into_owned());
        }
        if takes_next(&word) {
            words.next();
        }
    }
    None
}

/// The command line parsed against the one subcommand it names, when that
/// is one of [`Focused`] and the line is valid (see there).
fn parse_focused(args: &[std::ffi::OsString]) -> Option<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    // a line without one of their names on it is not worth defining them for
    let named = |name: &str| {
        args.iter()
            .skip(1)
            .any(|a| a.as_encoded_bytes() == name.as_bytes())
    };
    if !named("cartridge") && !named("sandbox") {
        return None;
    }
    let mut command = GearCli::<Focused>::command();
    let word = subcommand_word(&command, args)?;
    command.find_subcommand(&word)?;
    let matches = command.try_get_matches_from_mut(args).ok()?;
    if node_options_for_no_node(&mut command, &matches).is_some() {
        return None;
    }
    GearCli::<Focused>::from_arg_matches(&matches)
        .ok()
        .map(Cli::from)
}

/// Parse the command line: `Ok` with whether it is `gear exec`, or the
/// error clap prints (with whether the line was `gear exec`).
fn parse(args: &[std::ffi::OsString]) -> Result<(Cli, bool), (clap::Error, bool)> {
    use clap::{CommandFactory, FromArgMatches};
    if let Some(cli) = parse_focused(args) {
        return Ok((cli, false));
    }
    // built once: defining every subcommand's arguments is a good part of a short command's time
    let mut command = Cli::command();
    let exec = subcommand_word(&command, args).as_deref() == Some("exec");
    command
        .try_get_matches_from_mut(args)
        .and_then(
            |matches| match node_options_for_no_node(&mut command, &matches) {
                Some(refused) => Err(refused),
                // formatted as clap's own parse would
                None => Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command)),
            },
        )
        .map(|cli| (cli, exec))
        .map_err(|e| (e, exec))
}

/// The subcommands that never talk to a running node.
const WITHOUT_NODE: &[&str] = &[
    "cartridge new",
    "cartridge check",
    "cartridge call",
    "node run",
    "node config",
    "sandbox run",
    "completions",
];

/// A usage error when `--socket` or `-N` is on the command line of a
/// subcommand that never talks to the node: being global, clap accepts them
/// there, and silently ignoring them would mislead (`gear node run --socket
/// S` does not make the node listen on S).
fn node_options_for_no_node(
    command: &mut clap::Command,
    matches: &clap::ArgMatches,
) -> Option<clap::Error> {
    let mut path = Vec::new();
    let mut leaf = matches;
    while let Some((name, sub)) = leaf.subcommand() {
        path.push(name);
        leaf = sub;
    }
    let path = path.join(" ");
    if !WITHOUT_NODE.contains(&path.as_str()) {
        return None;
    }
    let given = |id: &str| {
        leaf.try_contains_id(id).unwrap_or(false)
            && leaf.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    let option = if given("socket") {
        "--socket"
    } else if given("namespace") {
        "--namespace"
    } else {
        return None;
    };
    let advice = if path == "node run" {
        "; the node's own socket is `socket` in its node.toml"
    } else {
        ""
    };
    Some(command.error(
        clap::error::ErrorKind::ArgumentConflict,
        format!(
            "`gear {path}` does not talk to a running node, so {option} means nothing to it{advice}"
        ),
    ))
}

/// Run the command on a remote node when one is asked for (`--remote`,
/// `GEARHOST_REMOTE`, or the remotes file's default): its exit status, or
/// `None` to run it here.
fn remotely(cli: &Cli, args: &[std::ffi::OsString]) -> Option<u8> {
    use remote::Input;
    let local = matches!(
        &cli.command,
        Command::Cartridge(
            CartridgeCommand::New(_)
                | CartridgeCommand::Check(_)
                | CartridgeCommand::Call(_)
                | CartridgeCommand::Push(_),
        ) | Command::Node(NodeCommand::Check(_) | NodeCommand::Run(_) | NodeCommand::Config)
            | Command::Sandbox(_)
            | Command::Completions(_)
            | Command::SshAuthorize(_)
            | Command::SshSession(_)
            | Command::SshHook(_)
    );
    if local {
        // an explicit --remote on such a command is a mistake worth saying
        if cli.remote.is_some()
            && args
                .iter()
                .any(|a| a.to_string_lossy().starts_with("--remote"))
        {
            eprintln!("error: this command runs here, not on a remote node; drop --remote");
            return Some(2);
        }
        return None;
    }
    let failed = |f: Failure| {
        if let Failure::Failed(e) | Failure::Invalid(e) | Failure::Environment(e) = &f {
            eprintln!("error: {}", gearhost_sys::program::error_text(e));
        }
        match f {
            Failure::Reported(code) => code,
            other => other.code(),
        }
    };
    let remote = match remote::resolve(cli.remote.as_deref()) {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(f) => return Some(failed(f)),
    };
    let words: Vec<String> = remote::without_remote(args).into_iter().skip(1).collect();
    use std::io::IsTerminal;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (words, input, terminal) = match &cli.command {
        Command::Cartridge(CartridgeCommand::Install(_)) => {
            return Some(failed(Failure::Invalid(anyhow::anyhow!(
                "cartridges are installed on the node itself (`gear cartridge install DIR` there)"
            ))));
        }
        Command::Deploy(d)
            if !d.cancel && d.source.as_os_str() != "-" && d.image_reference().is_none() =>
        {
            let sources = match std::fs::canonicalize(&d.source)
                .map_err(|e| {
                    Failure::Invalid(anyhow::anyhow!(
                        "cannot read {}: {e}; give an existing directory",
                        d.source.display()
                    ))
                })
                .and_then(|dir| archive::walk(&dir, d.max_size).map(|s| (dir, s)))
            {
                Ok(s) => s,
                Err(f) => return Some(failed(f)),
            };
            eprintln!(
                "deploying {} to {} ({} entries, {} bytes)",
                sources.0.display(),
                d.gear.name,
                sources.1.entries(),
                sources.1.bytes
            );
            let mut w = vec!["deploy".to_string(), d.gear.name.clone()];
            if let Some(ns) = &d.gear.namespace {
                w.extend(["-N".to_string(), ns.clone()]);
            }
            if d.json {
                w.push("--json".into());
            }
            w.push("-".into());
            (w, Input::Sources(sources.1), false)
        }
        Command::Keys(cmd::keys::Command::Add { file, user, .. }) if file.as_os_str() != "-" => {
            let key = match std::fs::read(file) {
                Ok(k) => k,
                Err(e) => {
                    return Some(failed(Failure::Invalid(anyhow::anyhow!(
                        "cannot read {}: {e}",
                        file.display()
                    ))));
                }
            };
            let mut w = vec!["keys".to_string(), "add".into(), "-".into()];
            if let Some(u) = user {
                w.extend(["--user".to_string(), u.clone()]);
            }
            (w, Input::Bytes(key), false)
        }
        Command::Exec(_) | Command::Destroy(_) => (words, Input::Inherit, tty),
        _ => (words, Input::Inherit, false),
    };
    Some(match remote::run(&remote, &words, input, terminal) {
        Ok(code) => code,
        Err(f) => failed(f),
    })
}

pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "sandbox") && args.get(2).is_some_and(|a| a == "run") {
        // The gear's helper prepares its root while this process parses and makes the cgroup
        // (it exits with this process when the line turns out to be help or an error).
        // Nothing is printed before, as the helper, a copy of this process, requires.
        gearhost_sandbox::start_forked_helper();
    }
    ExitCode::from(run_args(args))
}

/// Run the command line `args` (the program's name first): its exit status.
pub fn run_args(args: Vec<std::ffi::OsString>) -> u8 {
    let (cli, exec) = match parse(&args) {
        Ok(parsed) => parsed,
        Err((e, true)) if e.use_stderr() => {
            let _ = e.print();
            return EXEC_OWN_FAILURE;
        }
        Err((e, _)) => {
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(2);
        }
    };
    gearhost_sys::program::init_tracing(cli.verbose);
    if let Some(code) = remotely(&cli, &args) {
        return code;
    }
    let result = match cli.command {
        Command::Cartridge(CartridgeCommand::New(args)) => cmd::cartridge_new::run(args),
        Command::Cartridge(CartridgeCommand::Check(args)) => cmd::cartridge_check::run(args),
        Command::Cartridge(CartridgeCommand::Call(args)) => cmd::cartridge_call::run(args),
        Command::Node(NodeCommand::Check(args)) => cmd::node_check::run(args),
        Command::Node(NodeCommand::Run(args)) => cmd::node_run::run(args, cli.verbose),
        Command::Node(NodeCommand::Config) => cmd::node_run::print_default(),
        Command::Node(NodeCommand::Metrics(args)) => cmd::node_metrics::run(args),
        Command::Node(NodeCommand::Stop(args)) => cmd::node_stop::run(args),
        Command::Node(NodeCommand::Restart(args)) => cmd::node_restart::run(args),
        Command::Node(NodeCommand::Events(args)) => cmd::node_events::run(args),
        Command::Node(NodeCommand::List(args)) => cmd::node_list::run(args),
        Command::Cartridge(CartridgeCommand::Install(args)) => cmd::cartridge_store::install(args),
        Command::Cartridge(CartridgeCommand::Push(args)) => cmd::cartridge_push::run(args),
        Command::Cartridge(CartridgeCommand::List(args)) => cmd::cartridge_store::list(args),
        Command::Cartridge(CartridgeCommand::Remove(args)) => cmd::cartridge_store::remove(args),
        Command::Create(args) => cmd::create::run(args),
        Command::List(args) => cmd::list::list(args),
        Command::Show(args) => cmd::list::show(args),
        Command::Deploy(args) => cmd::deploy::run(args),
        Command::Build(args) => cmd::lifecycle::run(cmd::lifecycle::Op::Build, args),
        Command::Start(args) => cmd::lifecycle::run(cmd::lifecycle::Op::Start, args),
        Command::Stop(args) => cmd::lifecycle::run(cmd::lifecycle::Op::Stop, args),
        Command::Restart(args) => cmd::lifecycle::run(cmd::lifecycle::Op::Restart, args),
        Command::Status(args) => cmd::lifecycle::run(cmd::lifecycle::Op::Status, args),
        Command::Control(args) => cmd::control::run(args),
        Command::Snapshot(args) => cmd::snapshot::run(args),
        Command::Restore(args) => cmd::restore::run(args),
        Command::Move(args) => cmd::moves::run(args),
        Command::Deployments(args) => cmd::deployments::list(args),
        Command::Rollback(args) => cmd::deployments::rollback(args),
        Command::Env(args) => cmd::env::run(args),
        Command::Logs(args) => cmd::logs::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Link(args) => cmd::link::link(args),
        Command::Unlink(args) => cmd::link::unlink(args),
        Command::Destroy(args) => cmd::destroy::run(args),
        Command::Whoami(args) => cmd::tenancy::whoami(args),
        Command::Namespace(command) => cmd::tenancy::namespace(command),
        Command::Audit(args) => cmd::tenancy::audit(args),
        Command::Alias(command) => cmd::alias::run(command),
        Command::Https(args) => cmd::https::run(args),
        Command::Idle(args) => cmd::idle::idle(args),
        Command::Unidle(args) => cmd::idle::unidle(args),
        Command::Completions(args) => cmd::completions::run(args),
        Command::Complete(args) => cmd::complete::run(args),
        Command::Sandbox(SandboxCommand::Run(args)) => cmd::sandbox_run::run(args),
        Command::Image(ImageCommand::Pull(args)) => cmd::image::pull(args),
        Command::Image(ImageCommand::List(args)) => cmd::image::list(args),
        Command::Image(ImageCommand::Prune(args)) => cmd::image::prune(args),
        Command::Keys(command) => cmd::keys::run(command),
        Command::SshAuthorize(args) => cmd::ssh::authorize(args),
        Command::SshSession(args) => match cmd::ssh::session(args) {
            Ok(0) => Ok(()),
            Ok(code) => Err(Failure::Reported(code)),
            Err(e) => Err(e),
        },
        Command::SshHook(args) => cmd::ssh::hook(args),
    };
    match result {
        Ok(()) => 0,
        Err(failure) => {
            match &failure {
                Failure::Failed(e) | Failure::Invalid(e) | Failure::Environment(e) => {
                    eprintln!("error: {}", gearhost_sys::program::error_text(e));
                }
                Failure::Reported(_) => {}
            }
            match failure {
                Failure::Reported(code) => code,
                _ if exec => EXEC_OWN_FAILURE,
                other => other.code(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn line(words: &[&str]) -> Vec<std::ffi::OsString> {
        std::iter::once("gear")
            .chain(words.iter().copied())
            .map(Into::into)
            .collect()
    }

    #[test]
    fn a_focused_parse_is_the_whole_trees_parse() {
        let lines: &[&[&str]] = &[
            &["cartridge", "call", "dir", "control", "--action", "status"],
            &["-v", "cartridge", "check", "dir", "--json"],
            &["cartridge", "-vv", "new", "site", "--dir", "/tmp/site"],
            &["-N", "team", "cartridge", "list"],
            &[
                "--socket",
                "/run/s",
                "cartridge",
                "install",
                "oci://r.example/a/b:1",
            ],
            &[
                "cartridge",
                "push",
                "dir",
                "localhost:5000/a/b:1",
                "--insecure",
            ],
            &[
                "sandbox", "run", "--memory", "64MiB", "--", "/bin/sh", "-c", "exit 3",
            ],
            &["sandbox", "run", "--json", "--", "cartridge"],
        ];
        for words in lines {
            let args = line(words);
            let focused = parse_focused(&args)
                .unwrap_or_else(|| panic!("gear {words:?} was not parsed focused"));
            let whole = Cli::try_parse_from(&args)
                .unwrap_or_else(|e| panic!("gear {words:?} does not parse: {e}"));
            assert_eq!(
                format!("{focused:?}"),
                format!("{whole:?}"),
                "gear {words:?}"
            );
        }
    }

    #[test]
    fn help_errors_and_other_commands_go_through_the_whole_tree() {
        let lines: &[&[&str]] = &[
            &["--version"],
            &["--help"],
            &["cartridge", "--help"],
            &["cartridge", "call", "--help"],
            &["cartridge", "calll", "dir", "control"],
            &["cartridge", "call", "--socket", "/s", "dir", "control"],
            &["sandbox", "run"],
            &["list"],
            &["exec", "cartridge"],
            &["--socket", "cartridge", "list"],
        ];
        for words in lines {
            assert!(
                parse_focused(&line(words)).is_none(),
                "gear {words:?} should not be parsed focused"
            );
        }
        // and the whole tree still says what is wrong
        let refused = parse(&line(&[
            "cartridge",
            "call",
            "--socket",
            "/s",
            "dir",
            "control",
        ]));
        let Err((error, false)) = refused else {
            panic!("a node option on `cartridge call` should be refused");
        };
        assert!(
            error
                .to_string()
                .contains("does not talk to a running node"),
            "{error}"
        );
    }
}
