//! `gear logs NAME [-f] [-n N] [--hooks | --access]`: the gear's captured
//! output, its hooks' log, or the frontend's access log of its requests.

use gearhost_api::{Event, ops};

use crate::CmdResult;
use crate::client::{GearArg, Target, call_with};

/// Arguments of `gear logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear.
    #[command(flatten)]
    pub gear: GearArg,
    /// Keep printing new lines as they come.
    #[arg(long, short)]
    pub follow: bool,
    /// How many of the last lines to show.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
    /// Show the cartridge hooks' log instead of the processes' output.
    #[arg(long, conflicts_with = "access")]
    pub hooks: bool,
    /// Show the frontend's access log of the gear's requests instead.
    #[arg(long)]
    pub access: bool,
    /// Print each line as a JSON object (`{"log": "app", "line": "..."}`),
    /// one per line, so a program can follow the log.
    #[arg(long)]
    pub json: bool,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let op = ops::Logs {
        gear: args.gear.to_ref(),
        lines: args.lines,
        follow: args.follow,
        hooks: args.hooks,
        access: args.access,
    };
    let log = match (args.hooks, args.access) {
        (_, true) => "access",
        (true, false) => "hooks",
        (false, false) => "app",
    };
    // log lines go to stdout; what the node says about the stream (its gear
    // went away) to stderr
    call_with(&args.target, op, |event| match event {
        Event::Line(line) if args.json => {
            let entry = serde_json::json!({ "log": log, "line": line });
            println!("{entry}");
        }
        Event::Line(line) => println!("{line}"),
        Event::Progress(note) => eprintln!("{note}"),
    })?;
    Ok(())
}
