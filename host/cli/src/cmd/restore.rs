//! `gear restore NAME FILE`: bring a gear back from an archive of `gear
//! snapshot` (`-`: standard input), streamed to the node through a pipe. The
//! gear is created when it does not exist; else its deployments, data and
//! environment are replaced, whole or not at all.

use std::path::PathBuf;

use gearhost_api::ops;

use crate::client::{GearArg, Target, call_streaming, pass_on};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// Arguments of `gear restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear: the one the archive was taken of, or another name to bring
    /// it back as.
    #[command(flatten)]
    pub gear: GearArg,
    /// The archive `gear snapshot` wrote, or `-` to read it from standard
    /// input.
    pub file: PathBuf,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let from_stdin = args.file.as_os_str() == "-";
    let (label, input): (String, Box<dyn std::io::Read + Send>) = if from_stdin {
        ("standard input".into(), Box::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.file).map_err(|e| {
            Failure::Invalid(anyhow::anyhow!(
                "cannot read {}: {e}; give the file `gear snapshot` wrote",
                args.file.display()
            ))
        })?;
        (args.file.display().to_string(), Box::new(file))
    };
    eprintln!("restoring {} from {label}", args.gear.name);
    let restored = call_streaming(
        &args.target,
        ops::Restore {
            gear: args.gear.to_ref(),
            source: label.clone(),
        },
        move |pipe| pass_on(input, pipe),
    )?;
    if args.json {
        print_json(&restored)?;
        return Ok(());
    }
    let g = &restored.gear;
    let uid = if restored.uid_kept {
        format!("uid {} and MCS level {} kept", g.uid, g.mcs_level)
    } else {
        format!(
            "uid {} (MCS level {}) instead of the archive's {}",
            g.uid, g.mcs_level, restored.archived_uid
        )
    };
    println!(
        "{} gear {} in namespace {} from {label} ({} entries, {} bytes); {uid}; {}",
        if restored.created {
            "created"
        } else {
            "restored"
        },
        g.name,
        g.namespace,
        restored.entries,
        restored.bytes,
        g.state
    );
    for note in &restored.notes {
        println!("  {note}");
    }
    Ok(())
}
