//! `gear node stop [--gears]`: stop the node. The gears' processes keep
//! running for the next node to take back; `--gears` stops them too (what
//! should run starts again with the next node). Returns once the node is
//! gone (its socket refuses connections, and its process, when this command
//! sees it, has ended).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use gearhost_api::ops;

use crate::client::{Target, call};
use crate::{CmdResult, Failure};

/// How long `gear node stop` waits for the node to be gone.
const WAIT: Duration = Duration::from_secs(90);

/// Arguments of `gear node stop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop every gear's processes too (by default they keep running, and the next node
    /// takes them back).
    #[arg(long)]
    pub gears: bool,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let stopping = call(&args.target, ops::NodeStop { gears: args.gears })?;
    let started = Instant::now();
    // the socket goes first; the process ends after (stopping the gears, with --gears)
    let node_there = |pid: u32| {
        // `pid (comm) state ...`; an ended node waiting to be reaped counts as gone
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.split_once(" (")
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .is_some_and(|(comm, rest)| {
                    comm == "gearhost-node" && !rest.trim_start().starts_with('Z')
                })
        })
    };
    while std::os::unix::net::UnixStream::connect(&args.target.socket).is_ok()
        || node_there(stopping.pid)
    {
        if started.elapsed() > WAIT {
            return Err(Failure::Failed(anyhow!(
                "the node (pid {}) is still there after {} s; see its log",
                stopping.pid,
                WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if stopping.gears {
        println!(
            "node stopped (pid {}), and the gears' processes with it",
            stopping.pid
        );
    } else {
        println!(
            "node stopped (pid {}); the gears' processes keep running for the next node",
            stopping.pid
        );
    }
    Ok(())
}
