//! `gear node run`: run the node in the foreground (under systemd, see
//! docs/operator-guide.md). The node is a program of its own,
//! `gearhost-node`, which this command replaces itself with, so `gear`
//! carries none of the node's code. `gear node config` prints the embedded
//! default configuration.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use gearhost_node_config::DEFAULT_CONFIG;

use crate::{CmdResult, Failure};

/// The node's program.
const NODE_NAME: &str = "gearhost-node";

/// Arguments of `gear node run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node configuration; default: /etc/gearhost/node.toml if it
    /// exists, else the embedded default (`gear node config` prints it).
    #[arg(long, env = "GEARHOST_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Where `gearhost-node` is: `$GEARHOST_NODE_BIN`, else beside this `gear`
/// (or one directory up, as in a cargo target directory's `deps/`), else
/// on `PATH`.
pub(crate) fn find_node() -> Result<PathBuf, Failure> {
    crate::find_program(NODE_NAME, "GEARHOST_NODE_BIN").ok_or_else(|| {
        Failure::Environment(anyhow::anyhow!(
            "{NODE_NAME} is not installed beside gear nor on PATH; install it next to gear \
             (`cargo build --release -p gearhost-node` builds it) or set GEARHOST_NODE_BIN"
        ))
    })
}

/// Run the command: becomes the node, and returns only when that fails.
pub fn run(args: Args, verbose: u8) -> CmdResult {
    let node = find_node()?;
    let mut command = std::process::Command::new(&node);
    if let Some(config) = &args.config {
        command.arg("--config").arg(config);
    }
    if verbose > 0 {
        command.arg(format!("-{}", "v".repeat(usize::from(verbose.min(3)))));
    }
    let e = command.exec();
    Err(Failure::Environment(anyhow::anyhow!(
        "cannot run the node {}: {e}",
        node.display()
    )))
}

/// Print the embedded default configuration.
pub fn print_default() -> CmdResult {
    print!("{DEFAULT_CONFIG}");
    Ok(())
}
