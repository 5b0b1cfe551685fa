//! `gear keys add|list|remove`: the ssh public keys that log in to the
//! node's ssh endpoint as you (operators: as anyone).

use std::io::Read;
use std::path::PathBuf;

use gearhost_api::ops;

use crate::client::{Target, call};
use crate::output::print_json;
use crate::{CmdResult, Failure};

/// `gear keys ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add a public key: a `.pub` file, or `-` for standard input.
    Add {
        /// The public key file (e.g. ~/.ssh/id_ed25519.pub), or `-`.
        file: PathBuf,
        /// Whose key (operators; default: yours).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
    },
    /// Your keys (operators: `--user USER` or `--all`).
    List {
        /// Whose keys (operators).
        #[arg(long, value_name = "USER", conflicts_with = "all")]
        user: Option<String>,
        /// Every user's keys (operators).
        #[arg(long)]
        all: bool,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key by its fingerprint (`SHA256:...`, see `gear keys list`).
    Remove {
        /// The key's fingerprint.
        fingerprint: String,
        /// Whose key (operators; default: yours).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// How to reach the node.
        #[command(flatten)]
        target: Target,
    },
}

/// The most bytes read for one key line.
const MAX_KEY_FILE: u64 = 64 * 1024;

fn read_key(file: &PathBuf) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_KEY_FILE)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
    };
    read.map_err(|e| {
        Failure::Invalid(anyhow::anyhow!(
            "cannot read {}: {e}; give a public key file such as ~/.ssh/id_ed25519.pub, or `-`",
            file.display()
        ))
    })?;
    // comments and blank lines are skipped; one key remains
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match keys.as_slice() {
        [one] => Ok((*one).to_string()),
        [] if text.contains("PRIVATE KEY") => Ok(text),
        [] => Err(Failure::Invalid(anyhow::anyhow!(
            "{} holds no key; give a public key file such as ~/.ssh/id_ed25519.pub",
            file.display()
        ))),
        _ => Err(Failure::Invalid(anyhow::anyhow!(
            "{} holds {} keys; add one key at a time",
            file.display(),
            keys.len()
        ))),
    }
}

/// Run `gear keys ...`.
pub fn run(command: Command) -> CmdResult {
    match command {
        Command::Add { file, user, target } => {
            let key = read_key(&file)?;
            let added = call(&target, ops::KeysAdd { user, key })?;
            println!(
                "added {} key {} for {}{}",
                added.kind,
                added.fingerprint,
                added.user,
                if added.comment.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", added.comment)
                }
            );
        }
        Command::List {
            user,
            all,
            target,
            json,
        } => {
            let keys = call(&target, ops::KeysList { user, all })?;
            if json {
                return Ok(print_json(&keys)?);
            }
            if keys.is_empty() {
                eprintln!("no keys; add one with `gear keys add ~/.ssh/id_ed25519.pub`");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.user.clone(),
                        k.fingerprint.clone(),
                        format!("{} {}", k.kind, k.bits),
                        k.comment.clone(),
                        k.added.clone(),
                    ]
                })
                .collect();
            crate::output::print_table(&["USER", "FINGERPRINT", "TYPE", "COMMENT", "ADDED"], &rows);
        }
        Command::Remove {
            fingerprint,
            user,
            target,
        } => {
            let gone = call(&target, ops::KeysRemove { user, fingerprint })?;
            println!("removed key {} of {}", gone.fingerprint, gone.user);
        }
    }
    Ok(())
}
