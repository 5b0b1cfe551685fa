//! What the node's ssh endpoint runs (hidden commands; see the node's
//! `ssh` module for the whole design):
//!
//! - `gear ssh-authorize TYPE KEY`, sshd's `AuthorizedKeysCommand`: asks the
//!   node whose the key is and prints its `authorized_keys` line, with the
//!   forced command `gear ssh-session USER`; nothing for an unknown key.
//! - `gear ssh-session USER`, the forced command: runs what the client asked
//!   for (`SSH_ORIGINAL_COMMAND`) as USER: a `gear` command, or git's
//!   `git-receive-pack` / `git-upload-pack` on the gear's repository.
//! - `gear ssh-hook pre-receive`, the repositories' hook: deploys the pushed
//!   commit, and refuses the push when the deploy fails.

use std::io::BufRead;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use gearhost_api::{GearRef, ops};

use crate::client::{SSH_USER_ENV, Target, act_for, call, call_streaming, default_namespace};
use crate::{CmdResult, Failure};

/// Arguments of `gear ssh-authorize`.
#[derive(Debug, clap::Args)]
pub struct AuthorizeArgs {
    /// The key's type, as sshd gives it (`%t`).
    pub kind: String,
    /// The key, base64, as sshd gives it (`%k`).
    pub key: String,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `gear ssh-session`.
#[derive(Debug, clap::Args)]
pub struct SessionArgs {
    /// The user whose key logged in.
    pub user: String,
}

/// Arguments of `gear ssh-hook`.
#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// The git hook (`pre-receive`).
    pub hook: String,
    /// How to reach the node.
    #[command(flatten)]
    pub target: Target,
}

/// A user name as the node gives it: what may stand in a forced command.
fn plain_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `gear ssh-authorize TYPE KEY`
pub fn authorize(args: AuthorizeArgs) -> CmdResult {
    let owner = call(
        &args.target,
        ops::KeysLookup {
            kind: args.kind.clone(),
            key: args.key.clone(),
        },
    )?;
    let Some(user) = owner.user else {
        return Ok(());
    };
    let me = std::env::current_exe().map_err(|e| Failure::Environment(e.into()))?;
    let me = me.to_string_lossy();
    if !plain_user(&user) || me.contains(['"', '\\', '\n']) {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "refusing to write a forced command for {user:?} with {me:?}"
        )));
    }
    println!(
        "restrict,pty,command=\"{me} ssh-session {user}\" {} {}",
        args.kind, args.key
    );
    Ok(())
}

/// Commands a session may not run: they read or start things on the node
/// itself (a directory on its disk, a node, a sandbox), or are the
/// endpoint's own.
fn refused(words: &[String]) -> Option<String> {
    let verb = words.first().map_or("", String::as_str);
    let sub = words.get(1).map_or("", String::as_str);
    if words
        .iter()
        .any(|w| w == "--socket" || w.starts_with("--socket="))
    {
        return Some("--socket is the node's own through ssh".into());
    }
    if words
        .iter()
        .any(|w| w == "--remote" || w.starts_with("--remote="))
    {
        return Some("--remote is where a command starts, not where it arrives".into());
    }
    match (verb, sub) {
        ("node", "metrics" | "list") => None,
        ("node" | "sandbox", _) | ("ssh-authorize" | "ssh-session" | "ssh-hook", _) => Some(format!(
            "`gear {verb}` runs on the node itself, not through ssh"
        )),
        ("cartridge", "new" | "check" | "call" | "install") => Some(format!(
            "`gear cartridge {sub}` reads a directory, which through ssh would be the node's; \
             run it where the cartridge is"
        )),
        ("deploy", _) if words.last().map(String::as_str) != Some("-") => Some(
            "`gear deploy` through ssh reads the sources as a tar archive on standard input: \
             `tar -c . | ssh ... deploy NAME -`, or push with git"
                .into(),
        ),
        ("keys", "add") if words.last().map(String::as_str) != Some("-") => Some(
            "`gear keys add` through ssh reads the key on standard input: `ssh ... keys add - < KEY.pub`"
                .into(),
        ),
        _ => None,
    }
}

/// `gear ssh-session USER`: what the client asked for, as USER.
pub fn session(args: SessionArgs) -> Result<u8, Failure> {
    if !plain_user(&args.user) {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "{:?} is not a user name",
            args.user
        )));
    }
    act_for(&args.user);
    let asked = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    let Some(words) = shlex::split(&asked) else {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "cannot split {asked:?} into words (an open quote?)"
        )));
    };
    if words.is_empty() {
        eprintln!(
            "Hi {}! This is a Gearhost node: run gear commands through ssh (`ssh -t ... exec APP` \
             for a shell in a gear, `ssh ... list`, `ssh ... logs APP -f`), and deploy with \
             `git push`.",
            args.user
        );
        return Ok(0);
    }
    match words[0].as_str() {
        "git-receive-pack" | "git-upload-pack" | "git" => git(&args.user, &words),
        _ => {
            if let Some(why) = refused(&words) {
                return Err(Failure::Invalid(anyhow::anyhow!("{why}")));
            }
            let mut argv: Vec<std::ffi::OsString> = vec!["gear".into()];
            argv.extend(words.into_iter().map(Into::into));
            Ok(crate::run_args(argv))
        }
    }
}

/// The gear a repository path names: `NAMESPACE/NAME` or `NAME` (in the
/// user's namespace), with or without `/` before and `.git` after.
fn repo_gear(path: &str) -> Result<GearRef, Failure> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let trimmed = trimmed.strip_suffix(".git").unwrap_or(trimmed);
    let mut parts = trimmed.split('/');
    let (namespace, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (default_namespace(), name.to_string()),
        (Some(ns), Some(name), None) => (ns.to_string(), name.to_string()),
        _ => {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "{path:?} is not a gear's repository; use NAMESPACE/NAME or NAME"
            )));
        }
    };
    if name.is_empty() || namespace.is_empty() {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "{path:?} is not a gear's repository; use NAMESPACE/NAME or NAME"
        )));
    }
    Ok(GearRef { name, namespace })
}

/// git's side of a push or a fetch, on the gear's repository; pushes to one
/// gear wait for each other.
fn git(user: &str, words: &[String]) -> Result<u8, Failure> {
    let (service, path) = match words {
        [service, path] if service.starts_with("git-") => (service.as_str(), path),
        [git, service, path] if git == "git" => match service.as_str() {
            "receive-pack" => ("git-receive-pack", path),
            "upload-pack" => ("git-upload-pack", path),
            _ => {
                return Err(Failure::Invalid(anyhow::anyhow!(
                    "git {service} is not served here"
                )));
            }
        },
        _ => {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "give git one repository, NAMESPACE/NAME"
            )));
        }
    };
    let gear = repo_gear(path)?;
    let write = service == "git-receive-pack";
    let target = Target {
        socket: std::env::var_os("GEARHOST_SOCKET")
            .map_or_else(|| gearhost_api::DEFAULT_SOCKET.into(), Into::into),
    };
    let repo = call(
        &target,
        ops::GitAccess {
            gear: gear.clone(),
            write,
        },
    )?;
    // one push at a time per gear: the lock is held until git is done
    let _lock = if write {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(repo.path.join("gearhost-push.lock"))
            .map_err(|e| Failure::Environment(e.into()))?;
        Some(
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((file, _)) => {
                    eprintln!("waiting for another push to {} to finish ...", gear.name);
                    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                        .map_err(|(_, e)| Failure::Environment(e.into()))?
                }
            },
        )
    } else {
        None
    };
    let status = std::process::Command::new("git")
        .arg(service.trim_start_matches("git-"))
        .arg(&repo.path)
        .env(SSH_USER_ENV, user)
        .env("GEARHOST_GEAR", format!("{}/{}", gear.namespace, gear.name))
        .env("GEARHOST_BRANCH", &repo.branch)
        .status()
        .map_err(|e| Failure::Environment(anyhow::anyhow!("cannot run git: {e}")))?;
    Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

/// `gear ssh-hook pre-receive`: deploy the pushed commit of the deploying
/// branch; any other update is refused, and a failed deploy refuses the push.
pub fn hook(args: HookArgs) -> CmdResult {
    if args.hook != "pre-receive" {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "no hook {:?} here",
            args.hook
        )));
    }
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            Failure::Environment(anyhow::anyhow!(
                "{name} is not set: this hook runs for pushes through the node's ssh endpoint"
            ))
        })
    };
    let user = var(SSH_USER_ENV)?;
    act_for(&user);
    let gear = repo_gear(&var("GEARHOST_GEAR")?)?;
    let branch = var("GEARHOST_BRANCH")?;
    let wanted = format!("refs/heads/{branch}");
    let mut deploy = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Failure::Environment(e.into()))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_old, new, name] = fields.as_slice() else {
            continue;
        };
        if *name != wanted {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "only {branch} deploys, and this repository takes nothing else: push to {branch} \
                 (`git push gear {}:{branch}`)",
                name.trim_start_matches("refs/heads/")
            )));
        }
        if new.bytes().all(|b| b == b'0') {
            return Err(Failure::Invalid(anyhow::anyhow!(
                "{branch} cannot be deleted: it is what the gear serves"
            )));
        }
        deploy = Some((*new).to_string());
    }
    let Some(commit) = deploy else {
        return Ok(());
    };
    let short: String = commit.chars().take(12).collect();
    eprintln!("deploying {short} to {}", gear.name);
    let deployed = call_streaming(
        &args.target,
        ops::Deploy {
            gear,
            source: format!("git push {short}"),
        },
        move |pipe| {
            let out = OwnedFd::from(pipe);
            let status = std::process::Command::new("git")
                .args(["archive", "--format=tar", &commit])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .status()
                .map_err(|e| {
                    Failure::Environment(anyhow::anyhow!("cannot run git archive: {e}"))
                })?;
            if status.success() {
                Ok(())
            } else {
                Err(Failure::Failed(anyhow::anyhow!(
                    "git archive of {commit} failed ({status})"
                )))
            }
        },
    )?;
    match deployed.url {
        Some(url) => eprintln!(
            "deployment {} is active ({}): {url}",
            deployed.deployment, deployed.state
        ),
        None => eprintln!(
            "deployment {} is active ({})",
            deployed.deployment, deployed.state
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        shlex::split(s).expect("words")
    }

    #[test]
    fn what_reads_the_nodes_disk_is_refused_through_ssh() {
        for (line, allowed) in [
            ("list", true),
            ("exec web -- sh", true),
            ("logs web -f", true),
            ("node metrics", true),
            ("deploy web -", true),
            ("keys add -", true),
            ("deploy web /etc", false),
            ("deploy web", false),
            ("keys add /root/.ssh/id.pub", false),
            ("cartridge install /srv/c", false),
            ("node run", false),
            ("sandbox run -- sh", false),
            ("ssh-session root", false),
            ("--socket /tmp/other.sock list", false),
            ("list --socket=/tmp/x", false),
            ("--remote ssh://x@elsewhere list", false),
        ] {
            assert_eq!(refused(&words(line)).is_none(), allowed, "{line}");
        }
    }

    #[test]
    fn repository_paths_name_gears() {
        let g = repo_gear("/team/web.git").expect("gear");
        assert_eq!((g.namespace.as_str(), g.name.as_str()), ("team", "web"));
        let g = repo_gear("team/web").expect("gear");
        assert_eq!(g.name, "web");
        for bad in ["", "/", "a/b/c", "team//web", "/.git"] {
            assert!(repo_gear(bad).is_err(), "{bad:?}");
        }
    }
}
