//! `gear whoami`, `gear namespace create|delete|add-member|remove-member|list`
//! and `gear audit`: who the node sees, the team namespaces operators
//! manage, and the node's audit trail.

use gearhost_api::ops;
use gearhost_api::reply::{AuditOutcome, NamespaceInfo};

use crate::CmdResult;
use crate::client::{Target, call};
use crate::output::print_json;

/// Arguments of `gear whoami`.
#[derive(Debug, clap::Args)]
pub struct WhoamiArgs {
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `gear whoami`
pub fn whoami(args: WhoamiArgs) -> CmdResult {
    let me = call(&args.target, ops::Whoami {})?;
    if args.json {
        return Ok(print_json(&me)?);
    }
    println!(
        "{} (uid {}){}",
        me.user,
        me.uid,
        if me.operator { ", an operator" } else { "" }
    );
    println!("namespaces: {}", me.namespaces.join(", "));
    Ok(())
}

/// `gear namespace ...`
#[derive(Debug, clap::Subcommand)]
pub enum NamespaceCommand {
    /// Create a team namespace (operators), with its first members.
    Create {
        /// The namespace.
        name: String,
        /// A member's user name (repeat for more).
        #[arg(long = "member", value_name = "USER")]
        members: Vec<String>,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
    },
    /// Delete a team namespace that holds no gears (operators).
    Delete {
        /// The namespace.
        name: String,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
    },
    /// Add a user to a team namespace (operators).
    AddMember {
        /// The namespace.
        name: String,
        /// The user's name.
        user: String,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
    },
    /// Remove a user from a team namespace (operators).
    RemoveMember {
        /// The namespace.
        name: String,
        /// The user's name.
        user: String,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
    },
    /// The namespaces you may act in (an operator: all).
    List {
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_namespace(ns: &NamespaceInfo) {
    println!(
        "{:<20} {:<5} {:<6} {}",
        ns.name,
        ns.kind,
        ns.gears,
        ns.members.join(", ")
    );
}

/// Run `gear namespace ...`.
pub fn namespace(command: NamespaceCommand) -> CmdResult {
    match command {
        NamespaceCommand::Create {
            name,
            members,
            target,
        } => {
            let ns = call(&target, ops::NamespaceCreate { name, members })?;
            println!(
                "created team namespace {}{}",
                ns.name,
                if ns.members.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", ns.members.join(", "))
                }
            );
        }
        NamespaceCommand::Delete { name, target } => {
            let gone = call(&target, ops::NamespaceDelete { name })?;
            println!("deleted namespace {}", gone.deleted);
        }
        NamespaceCommand::AddMember { name, user, target } => {
            let ns = call(&target, ops::NamespaceAddMember { name, user })?;
            println!("{}: {}", ns.name, ns.members.join(", "));
        }
        NamespaceCommand::RemoveMember { name, user, target } => {
            let ns = call(&target, ops::NamespaceRemoveMember { name, user })?;
            println!("{}: {}", ns.name, ns.members.join(", "));
        }
        NamespaceCommand::List { target, json } => {
            let list = call(&target, ops::NamespaceList {})?;
            if json {
                return Ok(print_json(&list)?);
            }
            println!("{:<20} {:<5} {:<6} MEMBERS", "NAMESPACE", "KIND", "GEARS");
            for ns in &list {
                print_namespace(ns);
            }
        }
    }
    Ok(())
}

/// Arguments of `gear audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many of the last entries.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// Print each entry as a JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `gear audit`
pub fn audit(args: AuditArgs) -> CmdResult {
    let log = call(&args.target, ops::Audit { lines: args.lines })?;
    for e in &log.entries {
        if args.json {
            match serde_json::to_string(e) {
                Ok(line) => println!("{line}"),
                Err(err) => return Err(crate::Failure::Failed(err.into())),
            }
            continue;
        }
        let what = match (&e.namespace, &e.gear) {
            (Some(ns), Some(g)) => format!(" {g} in {ns}"),
            _ => String::new(),
        };
        let outcome = match e.outcome {
            AuditOutcome::Ok => "ok".to_string(),
            AuditOutcome::Refused => format!("refused: {}", e.message.as_deref().unwrap_or("")),
            AuditOutcome::Failed => format!("failed: {}", e.message.as_deref().unwrap_or("")),
        };
        println!(
            "{} {} ({}) {}{what}: {outcome}",
            e.time, e.user, e.uid, e.verb
        );
    }
    Ok(())
}
