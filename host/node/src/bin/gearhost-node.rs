//! `gearhost-node`: the node as a process of its own. `gear node run` starts
//! it (the `gear` command does not link the node), and a service manager
//! may start it directly (see dist/gearhost-node.service), with its listening
//! sockets too (dist/gearhost-node.socket).
//!
//! Exit codes follow `gear`'s: 0 stopped cleanly, 2 bad command line, 3 the
//! configuration is invalid, 4 the environment is missing something (root,
//! a free socket, a listening address).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gearhost_node::config::{DEFAULT_CONFIG_PATH, NodeConfig};

/// Run a Gearhost node in the foreground.
#[derive(Debug, Parser)]
#[command(name = "gearhost-node", version, about, long_about = None)]
struct Args {
    /// The node configuration; default: /etc/gearhost/node.toml if it
    /// exists, else the embedded default (`gear node config` prints it).
    #[arg(long, env = "GEARHOST_CONFIG")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); GEARHOST_LOG takes
    /// a filter such as `gearhost_node=debug`.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    // `gearhost-node --keeper SOCKET`: the keeper the node starts, on the
    // listening socket it passes as standard input
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 3 && argv[1] == gearhost_node::keeper::KEEPER_ARG {
        use std::os::fd::AsFd;
        return match std::io::stdin().as_fd().try_clone_to_owned() {
            Ok(listener) => gearhost_node::keeper::daemon::run(listener, PathBuf::from(&argv[2])),
            Err(e) => {
                eprintln!("gearhost keeper: no listening socket on standard input: {e}");
                ExitCode::from(4)
            }
        };
    }
    // before any thread starts: this takes the variables out of the environment
    let inherited = match gearhost_sys::listenfds::Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("error: the listening sockets passed to the node: {e}");
            return ExitCode::from(4);
        }
    };
    let args = Args::parse();
    gearhost_sys::program::init_tracing(args.verbose);
    let config = match &args.config {
        Some(path) => NodeConfig::load(path),
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            NodeConfig::load(std::path::Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Ok(NodeConfig::embedded()),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "error: the node needs root to create gears (namespaces, cgroups, uids); run `sudo gear node run`"
        );
        return ExitCode::from(4);
    }
    let rt = match gearhost_node::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the node's runtime: {e}");
            return ExitCode::from(4);
        }
    };
    let result = rt.block_on(gearhost_node::run_with(config, inherited));
    // a hook's thread stuck where no signal reaches must not keep the node from exiting
    rt.shutdown_timeout(gearhost_node::SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", gearhost_sys::program::error_text(&e));
            ExitCode::from(4)
        }
    }
}
