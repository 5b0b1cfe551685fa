//! `gear node list [--json]`: the nodes of the cluster the node belongs to,
//! up or down, with their addresses and load (operators only); a standalone
//! node lists itself alone.

use gearhost_api::ops;
use gearhost_runtime::manifest::format_size;

use crate::CmdResult;
use crate::client::{Target, call};
use crate::output::{print_json, print_table};

/// Arguments of `gear node list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the nodes as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let nodes = call(&args.target, ops::NodeList {})?;
    if args.json {
        print_json(&nodes)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let (gears, running, memory) = match &n.load {
                Some(l) => (
                    l.gears.to_string(),
                    l.running.to_string(),
                    format!(
                        "{} of {}",
                        format_size(l.memory_available),
                        format_size(l.memory_total)
                    ),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![
                if n.this {
                    format!("{} *", n.name)
                } else {
                    n.name.clone()
                },
                n.state.clone(),
                gears,
                running,
                memory,
                n.listen.clone().unwrap_or_else(|| "-".into()),
                n.frontend.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "STATE",
            "GEARS",
            "RUNNING",
            "MEMORY FREE",
            "CLUSTER",
            "FRONTEND",
        ],
        &rows,
    );
    Ok(())
}
