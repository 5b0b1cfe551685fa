//! `gear node run`: run the node in the foreground (under systemd, see
//! docs/operator-guide.md). `gear node config` prints the embedded default.

use std::path::PathBuf;

use gearhost_node::config::{DEFAULT_CONFIG, DEFAULT_CONFIG_PATH, NodeConfig};

use crate::{CmdResult, Failure};

/// Arguments of `gear node run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node configuration; default: /etc/gearhost/node.toml if it
    /// exists, else the embedded default (`gear node config` prints it).
    #[arg(long, env = "GEARHOST_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    if !crate::is_root() {
        return Err(Failure::Environment(anyhow::anyhow!(
            "the node needs root to create gears (namespaces, cgroups, uids); run `sudo gear node run`"
        )));
    }
    let config = match &args.config {
        Some(path) => NodeConfig::load(path),
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            NodeConfig::load(std::path::Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Ok(NodeConfig::embedded()),
    }
    .map_err(|e| Failure::Invalid(e.into()))?;
    let rt = gearhost_node::runtime().map_err(|e| Failure::Environment(e.into()))?;
    let result = rt.block_on(gearhost_node::run(config));
    // a hook's thread stuck where no signal reaches must not keep the node from exiting
    rt.shutdown_timeout(gearhost_node::SHUTDOWN_GRACE);
    result.map_err(Failure::Environment)
}

/// Print the embedded default configuration.
pub fn print_default() -> CmdResult {
    print!("{DEFAULT_CONFIG}");
    Ok(())
}
