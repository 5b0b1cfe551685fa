//! `gear node events [-n N] [-f] [--json] [--gear NAME]`: what happened to
//! gears (deploys, starts, stops, crashes, restarts, idles, wakes, rollbacks,
//! hook failures), from the node's event log. Operators see every gear's
//! events; a user those of the namespaces it may act in.

use gearhost_api::reply::NodeEvent;
use gearhost_api::{Event, GearRef, ops};

use crate::client::{Target, call_with, default_namespace};
use crate::{CmdResult, Failure};

/// Arguments of `gear node events`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many of the last events to show.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
    /// Keep printing events as they happen.
    #[arg(long, short)]
    pub follow: bool,
    /// Only the events of this gear: `NAME` in your own namespace (root's is
    /// `default`), or `NAMESPACE/NAME`.
    #[arg(long, value_name = "NAME")]
    pub gear: Option<String>,
    /// Print each event as a JSON object, one per line.
    #[arg(long)]
    pub json: bool,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// One event as a line for people: time, gear, kind, deployment, reason.
pub fn format_event(e: &NodeEvent) -> String {
    let deployment = e
        .deployment
        .map(|d| format!(" (deployment {d})"))
        .unwrap_or_default();
    format!(
        "{} {}/{} {}{deployment}: {}",
        e.time, e.namespace, e.gear, e.kind, e.reason
    )
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let op = ops::NodeEvents {
        lines: args.lines,
        follow: args.follow,
        gear: args.gear.as_deref().map(|gear| match gear.split_once('/') {
            Some((namespace, name)) => GearRef {
                name: name.to_string(),
                namespace: namespace.to_string(),
            },
            None => GearRef {
                name: gear.to_string(),
                namespace: default_namespace(),
            },
        }),
    };
    let mut bad = None;
    call_with(&args.target, op, |event| match event {
        Event::Line(line) if args.json => println!("{line}"),
        Event::Line(line) => match serde_json::from_str::<NodeEvent>(line) {
            Ok(e) => println!("{}", format_event(&e)),
            Err(e) => {
                bad.get_or_insert(e);
            }
        },
        Event::Progress(note) => eprintln!("{note}"),
    })?;
    match bad {
        Some(e) => Err(Failure::Failed(anyhow::anyhow!(
            "the node sent an event this `gear` cannot read ({e}); are `gear` and the node the \
             same release (`gear --version`, `gearhost-node --version`)?"
        ))),
        None => Ok(()),
    }
}
