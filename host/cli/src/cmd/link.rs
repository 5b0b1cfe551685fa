//! `gear link GEAR TO` and `gear unlink GEAR TO`: let a gear reach another
//! gear of its namespace (an app its database) on its own loopback, with the
//! variables the other gear's cartridge publishes.

use gearhost_api::{GearRef, ops};

use crate::CmdResult;
use crate::client::{Target, call};
use crate::output::print_json;

/// Arguments of `gear link` and `gear unlink`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gear that gets (or loses) access, e.g. the app.
    pub gear: String,
    /// The gear it reaches, e.g. the database.
    pub to: String,
    /// The namespace of both gears (default: your user name; root's is `default`).
    #[arg(
        long,
        short = 'N',
        env = "GEARHOST_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn refs(&self) -> (GearRef, GearRef) {
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(crate::client::default_namespace);
        let r = |name: &str| GearRef {
            name: name.to_string(),
            namespace: namespace.clone(),
        };
        (r(&self.gear), r(&self.to))
    }
}

/// `gear link`
pub fn link(args: Args) -> CmdResult {
    let (gear, to) = args.refs();
    let linked = call(&args.target, ops::Link { gear, to })?;
    if args.json {
        print_json(&linked)?;
        return Ok(());
    }
    if crate::output::print_if_unchanged(linked.unchanged, linked.note.as_deref()) {
        return Ok(());
    }
    println!(
        "linked {} to {}: {} reaches it at 127.0.0.1:{}",
        args.gear, args.to, args.gear, linked.port
    );
    if !linked.env.is_empty() {
        println!("{} receives {}", args.gear, linked.env.join(", "));
    }
    print_note(linked.note.as_deref());
    Ok(())
}

/// `gear unlink`
pub fn unlink(args: Args) -> CmdResult {
    let (gear, to) = args.refs();
    let unlinked = call(&args.target, ops::Unlink { gear, to })?;
    if args.json {
        print_json(&unlinked)?;
        return Ok(());
    }
    if crate::output::print_if_unchanged(unlinked.unchanged, unlinked.note.as_deref()) {
        return Ok(());
    }
    println!("unlinked {} from {}", args.gear, args.to);
    print_note(unlinked.note.as_deref());
    Ok(())
}

fn print_note(note: Option<&str>) {
    if let Some(note) = note.filter(|n| !n.is_empty()) {
        eprintln!("{note}");
    }
}
