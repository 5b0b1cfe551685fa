//! `gear node restart`: the node stops accepting, lets the requests in flight finish and
//! executes its binary again in its own process (the file on disk now: replace the binary,
//! then restart, to upgrade), keeping its listening sockets, so no connection is refused.
//! The gears' processes keep running and are taken back. Returns once the new image has
//! taken back the gears, with what it did (as `gear node check` shows it).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use gearhost_api::ops;

use crate::client::{Target, call};
use crate::{CmdResult, Failure};

/// How long `gear node restart` waits for the new image to have resumed the gears.
const WAIT: Duration = Duration::from_secs(120);

/// Arguments of `gear node restart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let restarting = call(&args.target, ops::NodeRestart {})?;
    println!(
        "node (pid {}) restarting from {}",
        restarting.pid, restarting.binary
    );
    let started = Instant::now();
    // the old image may still answer for a moment: wait for a resume that began after the ask
    loop {
        match call(&args.target, ops::NodeResume {}) {
            Ok(outcome) if outcome.started_ms >= asked && outcome.done => {
                super::node_check::print_resume(&outcome);
                return Ok(());
            }
            Ok(_) => {}
            // between the images the socket's backlog holds the connection; an error
            // means the old image ended without a new one
            Err(e) if started.elapsed() > WAIT => return Err(e),
            Err(_) => {}
        }
        if started.elapsed() > WAIT {
            return Err(Failure::Failed(anyhow!(
                "the node did not come back within {} s; see its log",
                WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
