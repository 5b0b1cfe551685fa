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

/// Gearhost: run apps in sandboxed gears, with cartridges written in WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "gear", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
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
    /// Stop a running gear now and mark it idle; its next request starts it again.
    Idle(cmd::idle::Args),
    /// Start an idle gear now, without waiting for a request.
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
    /// Print shell completions for bash, zsh, fish, ...
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Inspect this node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Run commands in throwaway gear sandboxes.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

/// `gear node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Report which confinement layers this machine enforces (exit 4 if a required one is missing).
    Check(cmd::node_check::Args),
    /// Run the node in the foreground.
    Run(cmd::node_run::Args),
    /// Print the embedded default node configuration.
    Config,
    /// Print the node's metrics (Prometheus text format).
    Metrics(cmd::node_metrics::Args),
    /// What happened to gears: deploys, starts, stops, crashes, restarts, idles, wakes, failures.
    Events(cmd::node_events::Args),
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
    /// Install a cartridge on the node (validated and compiled once).
    Install(cmd::cartridge_store::InstallArgs),
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

/// Parse the command line, run the command, and turn the outcome into an exit code.
/// What `gear exec` exits with when `gear` itself fails, rather than the
/// command it runs.
pub const EXEC_OWN_FAILURE: u8 = 125;

/// Whether the command line asks for `gear exec` (global options may come
/// before the subcommand).
fn is_exec(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "exec")
}

pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let exec = is_exec(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if exec && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXEC_OWN_FAILURE);
        }
        Err(e) => e.exit(),
    };
    gearhost_sys::program::init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Cartridge(CartridgeCommand::New(args)) => cmd::cartridge_new::run(args),
        Command::Cartridge(CartridgeCommand::Check(args)) => cmd::cartridge_check::run(args),
        Command::Cartridge(CartridgeCommand::Call(args)) => cmd::cartridge_call::run(args),
        Command::Node(NodeCommand::Check(args)) => cmd::node_check::run(args),
        Command::Node(NodeCommand::Run(args)) => cmd::node_run::run(args, cli.verbose),
        Command::Node(NodeCommand::Config) => cmd::node_run::print_default(),
        Command::Node(NodeCommand::Metrics(args)) => cmd::node_metrics::run(args),
        Command::Node(NodeCommand::Events(args)) => cmd::node_events::run(args),
        Command::Cartridge(CartridgeCommand::Install(args)) => cmd::cartridge_store::install(args),
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
        Command::Idle(args) => cmd::idle::idle(args),
        Command::Unidle(args) => cmd::idle::unidle(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "gear", &mut std::io::stdout());
            Ok(())
        }
        Command::Sandbox(SandboxCommand::Run(args)) => cmd::sandbox_run::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            match &failure {
                Failure::Failed(e) | Failure::Invalid(e) | Failure::Environment(e) => {
                    eprintln!("error: {}", gearhost_sys::program::error_text(e));
                }
                Failure::Reported(_) => {}
            }
            match failure {
                Failure::Reported(code) => ExitCode::from(code),
                _ if exec => ExitCode::from(EXEC_OWN_FAILURE),
                other => ExitCode::from(other.code()),
            }
        }
    }
}
