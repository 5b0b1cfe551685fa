//! `gear complete ...` (hidden): the names a shell completes, asked of the
//! running node. The scripts `gear completions SHELL` prints call it.
//!
//! `gear complete gears|cartridges|namespaces [PREFIX]` prints the names of
//! that kind that start with PREFIX, one a line; `gear complete actions GEAR
//! [PREFIX]` the control actions of the gear's cartridge (as its manifest
//! lists them). `gear complete line INDEX --
//! WORDS...` looks at a whole command line as the shell split it (WORDS[0] is
//! the program) and the word at INDEX being completed: when that word is a
//! name (a gear after `gear start`, a cartridge after `--cartridge`, a
//! namespace after `-N`, an action after `gear control GEAR`, ...), it prints the names that fit and exits 0;
//! when it is not (a subcommand, a flag, a path), it prints nothing and exits
//! 1, and the script falls back to the completions clap generates. Both print
//! nothing and exit 0 when no node answers, or none in time: completing must
//! never hang the shell or print errors into the command line.

use std::path::PathBuf;
use std::time::Duration;

use gearhost_api::ops;

use crate::client::{Target, call_with, default_namespace};
use crate::{CmdResult, Failure};

/// How long a completion waits for the node before it offers nothing.
const WAIT: Duration = Duration::from_secs(2);

/// Arguments of `gear complete`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to complete.
    #[command(subcommand)]
    pub what: What,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
    /// The namespace whose gears to complete (default: your own).
    #[arg(
        long,
        short = 'N',
        global = true,
        env = "GEARHOST_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub namespace: Option<String>,
}

/// `gear complete ...`
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Gear names of the namespace.
    Gears {
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Cartridges installed on the node.
    Cartridges {
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Namespaces you may act in.
    Namespaces {
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// The control actions of a gear's cartridge.
    Actions {
        /// The gear.
        gear: String,
        /// Only names that start with this.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// The names that fit word INDEX of a command line, if it is a name.
    Line {
        /// Which word is being completed (0 is the program).
        index: usize,
        /// The command line's words, after `--`.
        #[arg(last = true)]
        words: Vec<String>,
    },
}

/// A kind of name the node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Gears of a namespace.
    Gears,
    /// Installed cartridges.
    Cartridges,
    /// Namespaces the caller may act in.
    Namespaces,
    /// The control actions of this gear's cartridge.
    Actions(String),
}

/// What `gear complete line` found out about the word being completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The kind of name wanted there.
    pub kind: Kind,
    /// What is typed of it so far.
    pub prefix: String,
    /// `--socket` as given on the line, if it was.
    pub socket: Option<PathBuf>,
    /// `-N/--namespace` as given on the line, if it was.
    pub namespace: Option<String>,
}

/// Subcommands whose first positional argument is a gear of the namespace
/// (`link` and `unlink` take two).
const ON_A_GEAR: &[&str] = &[
    "show",
    "deploy",
    "build",
    "start",
    "stop",
    "restart",
    "status",
    "control",
    "deployments",
    "rollback",
    "snapshot",
    "restore",
    "move",
    "env",
    "logs",
    "exec",
    "idle",
    "unidle",
    "destroy",
    "alias add",
    "alias remove",
    "alias list",
];

/// The kind of name positional argument `position` (0-based) of the
/// subcommand `path` ("alias add") takes, if any; `before` holds the
/// positional arguments given before it.
fn positional_kind(path: &str, position: usize, before: &[String]) -> Option<Kind> {
    match (path, position) {
        ("control", 1) => before.first().cloned().map(Kind::Actions),
        ("link" | "unlink", 0 | 1) => Some(Kind::Gears),
        ("cartridge remove", 0) => Some(Kind::Cartridges),
        ("namespace delete" | "namespace add-member" | "namespace remove-member", 0) => {
            Some(Kind::Namespaces)
        }
        (path, 0) if ON_A_GEAR.contains(&path) => Some(Kind::Gears),
        _ => None,
    }
}

/// The kind of name the value of option `id` is, if any.
fn option_kind(path: &str, id: &str) -> Option<Kind> {
    match (path, id) {
        (_, "namespace") => Some(Kind::Namespaces),
        ("create", "cartridge") => Some(Kind::Cartridges),
        _ => None,
    }
}

/// Reads `words` (as a shell split the line: `words[0]` is the program) up
/// to word `index`, the one being completed, and says which kind of name
/// belongs there; `None` when it is no name (a subcommand, a flag, a path,
/// a command for `exec` after `--`).
pub fn position(words: &[String], index: usize) -> Option<Position> {
    use clap::CommandFactory;
    let mut root = crate::Cli::command();
    root.build();
    let mut command = &root;
    let mut path: Vec<String> = Vec::new();
    let mut positionals: Vec<String> = Vec::new();
    let mut socket = None;
    let mut namespace = None;
    let current = words.get(index).cloned().unwrap_or_default();
    let mut i = 1;
    // what the word at `index` is the value of, when an option is before it
    let mut value_of: Option<String> = None;
    while i < index.min(words.len()) {
        let word = &words[i];
        i += 1;
        if word == "--" {
            return None;
        }
        if let Some(option) = word.strip_prefix('-').filter(|w| !w.is_empty()) {
            let (name, inline) = match option.strip_prefix('-') {
                Some(long) => match long.split_once('=') {
                    Some((name, value)) => (name.to_string(), Some(value.to_string())),
                    None => (long.to_string(), None),
                },
                None => {
                    // `-N`, `-Nteam` or `-N=team`; a cluster of flags takes no value of ours
                    let mut chars = option.chars();
                    let first = chars.next().unwrap_or('-');
                    let rest: String = chars.collect();
                    let rest = rest.strip_prefix('=').map_or(rest.clone(), str::to_string);
                    (first.to_string(), (!rest.is_empty()).then_some(rest))
                }
            };
            let arg = command.get_arguments().find(|a| {
                a.get_long() == Some(name.as_str())
                    || (name.chars().count() == 1 && a.get_short() == name.chars().next())
            });
            let Some(arg) = arg.filter(|a| a.get_action().takes_values()) else {
                continue;
            };
            let id = arg.get_id().as_str().to_string();
            let value = match inline {
                Some(value) => Some(value),
                None => {
                    // bash splits `--socket=/x` into `--socket`, `=`, `/x`
                    if words.get(i).is_some_and(|w| w == "=") {
                        i += 1;
                    }
                    if i == index {
                        value_of = Some(id.clone());
                        break;
                    }
                    i += 1;
                    words.get(i - 1).cloned()
                }
            };
            match id.as_str() {
                "socket" => socket = value.map(PathBuf::from),
                "namespace" => namespace = value,
                _ => {}
            }
            continue;
        }
        let takes = command.get_positionals().count();
        if positionals.len() >= takes
            && let Some(sub) = command.find_subcommand(word)
        {
            command = sub;
            path.push(sub.get_name().to_string());
            positionals.clear();
            continue;
        }
        positionals.push(word.clone());
    }
    let path = path.join(" ");
    let kind = match value_of {
        Some(id) => option_kind(&path, &id)?,
        None if current.starts_with('-') => return None,
        None => positional_kind(&path, positionals.len(), &positionals)?,
    };
    Some(Position {
        kind,
        prefix: current,
        socket,
        namespace,
    })
}

/// The names of `kind` the node knows that start with `prefix`, sorted; empty
/// when no node answers within [`WAIT`].
pub fn names(target: &Target, namespace: Option<&str>, kind: Kind, prefix: &str) -> Vec<String> {
    let target = target.clone();
    let namespace = namespace.map_or_else(default_namespace, str::to_string);
    let (send, receive) = std::sync::mpsc::channel();
    // a node that does not answer leaves this thread behind; the process ends anyway
    std::thread::spawn(move || {
        let _ = send.send(ask(&target, &namespace, kind));
    });
    let mut names: Vec<String> = receive
        .recv_timeout(WAIT)
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn ask(target: &Target, namespace: &str, kind: Kind) -> Result<Vec<String>, Failure> {
    let quiet = |_: &gearhost_api::Event| {};
    Ok(match kind {
        Kind::Gears => call_with(target, ops::List {}, quiet)?
            .into_iter()
            .filter(|v| v.gear.namespace == namespace)
            .map(|v| v.gear.name)
            .collect(),
        Kind::Cartridges => call_with(target, ops::CartridgeList {}, quiet)?
            .into_iter()
            .map(|c| c.name)
            .collect(),
        Kind::Namespaces => call_with(target, ops::NamespaceList {}, quiet)?
            .into_iter()
            .map(|n| n.name)
            .collect(),
        Kind::Actions(gear) => {
            let Some(cartridge) = call_with(target, ops::List {}, quiet)?
                .into_iter()
                .find(|v| v.gear.namespace == namespace && v.gear.name == gear)
                .map(|v| v.gear.cartridge)
            else {
                return Ok(Vec::new());
            };
            call_with(target, ops::CartridgeList {}, quiet)?
                .into_iter()
                .find(|c| c.name == cartridge)
                .map(|c| c.actions)
                .unwrap_or_default()
        }
    })
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let (kind, prefix, target, namespace) = match args.what {
        What::Gears { prefix } => (Kind::Gears, prefix, args.target, args.namespace),
        What::Cartridges { prefix } => (Kind::Cartridges, prefix, args.target, args.namespace),
        What::Namespaces { prefix } => (Kind::Namespaces, prefix, args.target, args.namespace),
        What::Actions { gear, prefix } => {
            (Kind::Actions(gear), prefix, args.target, args.namespace)
        }
        What::Line { index, words } => {
            let Some(at) = position(&words, index) else {
                return Err(Failure::Reported(1));
            };
            // what the line itself says beats the environment and the defaults
            let target = Target {
                socket: at.socket.unwrap_or(args.target.socket),
            };
            (at.kind, at.prefix, target, at.namespace.or(args.namespace))
        }
    };
    for name in names(&target, namespace.as_deref(), kind, &prefix) {
        println!("{name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: &str) -> Option<Position> {
        let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        // a trailing space means a new, empty word is being completed
        if line.ends_with(' ') {
            words.push(String::new());
        }
        let index = words.len() - 1;
        position(&words, index)
    }

    fn kind(line: &str) -> Option<Kind> {
        at(line).map(|p| p.kind)
    }

    #[test]
    fn gear_positions() {
        for line in [
            "gear start ",
            "gear start we",
            "gear -N team start w",
            "gear --socket /s status ",
            "gear --socket=/s exec ",
            "gear control ",
            "gear env ",
            "gear alias add ",
            "gear link app ",
            "gear unlink ",
            "gear logs -f ",
            "gear destroy --yes ",
        ] {
            assert_eq!(kind(line), Some(Kind::Gears), "{line:?}");
        }
    }

    #[test]
    fn other_names() {
        assert_eq!(kind("gear create web --cartridge "), Some(Kind::Cartridges));
        assert_eq!(kind("gear create web -c st"), Some(Kind::Cartridges));
        assert_eq!(kind("gear cartridge remove "), Some(Kind::Cartridges));
        assert_eq!(kind("gear -N "), Some(Kind::Namespaces));
        assert_eq!(kind("gear list -N t"), Some(Kind::Namespaces));
        assert_eq!(kind("gear list --namespace "), Some(Kind::Namespaces));
        assert_eq!(kind("gear namespace delete "), Some(Kind::Namespaces));
        assert_eq!(
            kind("gear control web "),
            Some(Kind::Actions("web".to_string()))
        );
        assert_eq!(
            kind("gear -N team control --json web re"),
            Some(Kind::Actions("web".to_string()))
        );
    }

    #[test]
    fn no_names_where_none_belong() {
        for line in [
            "gear ",
            "gear sta",
            "gear start web ",
            "gear control web status ",
            "gear start -",
            "gear create ",
            "gear env web ",
            "gear exec web -- ",
            "gear --socket ",
            "gear deploy web ",
            "gear cartridge ",
            "gear cartridge install ",
            "gear namespace create ",
            "gear alias ",
        ] {
            assert_eq!(kind(line), None, "{line:?}");
        }
    }

    #[test]
    fn the_line_s_own_socket_and_namespace_are_used() {
        let p = at("gear --socket /s -N team show ").expect("a gear position");
        assert_eq!(p.socket, Some(PathBuf::from("/s")));
        assert_eq!(p.namespace.as_deref(), Some("team"));
        for line in [
            "gear -Nteam show ",
            "gear -N=team show ",
            "gear --namespace=team show ",
            "gear show -N team ",
        ] {
            let p = at(line).expect("a gear position");
            assert_eq!(p.namespace.as_deref(), Some("team"), "{line:?}");
        }
        let words: Vec<String> = ["gear", "--socket", "=", "/x", "start", "a"]
            .map(str::to_string)
            .to_vec();
        let p = position(&words, 5).expect("a gear position");
        assert_eq!(p.socket, Some(PathBuf::from("/x")));
        assert_eq!(p.prefix, "a");
    }
}
