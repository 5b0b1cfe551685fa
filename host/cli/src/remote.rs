//! `gear --remote ssh://gear@HOST[:PORT] ...`: the same command, run by a
//! node's ssh endpoint (where it runs as the user whose key logs in), over
//! the real `ssh` client. What a command reads from this machine travels on
//! ssh's standard input: `deploy DIR` sends a tar archive of DIR (walked
//! here with your rights, `.gearignore` honoured), `keys add FILE` the key.
//! `exec` gets a terminal when this one is one; `logs -f` streams.
//!
//! Remotes have names in `~/.config/gearhost/remotes.toml`:
//!
//! ```toml
//! default = "prod"                    # used when neither --remote nor GEARHOST_REMOTE is given
//! [remotes.prod]
//! url = "ssh://gear@apps.example.org:2222"
//! identity = "~/.ssh/id_ed25519"      # optional: the key to log in with
//! ```
//!
//! Connections are shared (OpenSSH's `ControlMaster`), so after the first
//! command the next ones skip the key exchange.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde::Deserialize;

use crate::Failure;

/// A remote node: where its ssh endpoint is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The login account.
    pub user: String,
    /// The host.
    pub host: String,
    /// The port (none: ssh's default).
    pub port: Option<u16>,
    /// The key to log in with (none: ssh's own choice).
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemotesFile {
    default: Option<String>,
    #[serde(default)]
    remotes: std::collections::BTreeMap<String, RemoteEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteEntry {
    url: String,
    identity: Option<PathBuf>,
}

/// `~/.config/gearhost/remotes.toml` (or under `$XDG_CONFIG_HOME`).
pub fn remotes_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("gearhost/remotes.toml"))
}

fn load_file() -> Result<RemotesFile, Failure> {
    let Some(path) = remotes_file() else {
        return Ok(RemotesFile::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            Failure::Invalid(anyhow::anyhow!(
                "{}: {}; see `gear --help` for the format",
                path.display(),
                e.message()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RemotesFile::default()),
        Err(e) => Err(Failure::Environment(anyhow::anyhow!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn expand_home(path: PathBuf) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}

/// Parses `ssh://USER@HOST[:PORT][/]`.
pub fn parse_url(url: &str) -> Result<Remote, String> {
    let rest = url.strip_prefix("ssh://").ok_or_else(|| {
        format!("{url:?} is not an ssh URL; write ssh://gear@HOST[:PORT], or a remote's name")
    })?;
    let rest = rest.trim_end_matches('/');
    let (user, hostport) = rest
        .split_once('@')
        .ok_or_else(|| format!("{url:?} names no login account; write ssh://gear@HOST"))?;
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?} has an unclosed ["))?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: {p:?} is not a port"))
        })
        .transpose()?;
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    };
    if !plain(user) || !plain(host) || user.contains(':') {
        return Err(format!("{url:?} is not a usable ssh://USER@HOST[:PORT]"));
    }
    Ok(Remote {
        user: user.to_string(),
        host: host.to_string(),
        port,
        identity: None,
    })
}

/// The remote to use: `--remote` (a URL or a name from the remotes file),
/// else `GEARHOST_REMOTE` (clap reads it into `--remote`), else the file's
/// default; none for a local command (also when the file cannot be read
/// and no remote was named).
pub fn resolve(given: Option<&str>) -> Result<Option<Remote>, Failure> {
    let file = match (given, load_file()) {
        (_, Ok(file)) => file,
        // a command that names no remote runs here whatever that file is
        // (another user's HOME, through sudo or runuser, is not readable)
        (None, Err(_)) => return Ok(None),
        (Some(_), Err(e)) => return Err(e),
    };
    let name = match given {
        Some(g) if g.starts_with("ssh://") => {
            return parse_url(g)
                .map(Some)
                .map_err(|e| Failure::Invalid(anyhow::anyhow!(e)));
        }
        Some(g) => g.to_string(),
        None => match &file.default {
            Some(d) => d.clone(),
            None => return Ok(None),
        },
    };
    let entry = file.remotes.get(&name).ok_or_else(|| {
        Failure::Invalid(anyhow::anyhow!(
            "no remote named {name:?} in {}; add [remotes.{name}] with url = \"ssh://gear@HOST\", \
             or give --remote ssh://gear@HOST",
            remotes_file().map_or_else(|| "remotes.toml".into(), |p| p.display().to_string())
        ))
    })?;
    let mut remote = parse_url(&entry.url).map_err(|e| Failure::Invalid(anyhow::anyhow!(e)))?;
    remote.identity = entry.identity.clone().map(expand_home);
    Ok(Some(remote))
}

/// What stdin carries to the remote command.
#[derive(Debug)]
pub enum Input {
    /// Nothing (ssh's stdin is closed).
    Nothing,
    /// This process's own stdin (and terminal).
    Inherit,
    /// These bytes.
    Bytes(Vec<u8>),
    /// A tar archive of this directory's sources.
    Sources(crate::archive::Sources),
}

/// Where shared connections wait: a directory of this user's own.
fn control_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("gearhost/ssh");
    std::fs::create_dir_all(&dir).ok()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    Some(dir)
}

/// Run `words` (a `gear` command line without the program's name) on the
/// remote node, with `input` on its standard input and a terminal when
/// `terminal`: the remote command's exit status.
pub fn run(remote: &Remote, words: &[String], input: Input, terminal: bool) -> Result<u8, Failure> {
    let line = shlex::try_join(words.iter().map(String::as_str))
        .map_err(|e| Failure::Invalid(anyhow::anyhow!("cannot quote the command for ssh: {e}")))?;
    // GEARHOST_SSH_COMMAND replaces `ssh` and its options, as GIT_SSH_COMMAND does
    let mut ssh = match std::env::var("GEARHOST_SSH_COMMAND") {
        Ok(custom) if !custom.trim().is_empty() => {
            let parts = shlex::split(&custom).ok_or_else(|| {
                Failure::Invalid(anyhow::anyhow!(
                    "GEARHOST_SSH_COMMAND cannot be split into words"
                ))
            })?;
            let (program, args) = parts.split_first().ok_or_else(|| {
                Failure::Invalid(anyhow::anyhow!("GEARHOST_SSH_COMMAND is empty"))
            })?;
            let mut c = Process::new(program);
            c.args(args);
            c
        }
        _ => Process::new("ssh"),
    };
    if let Some(dir) = control_dir() {
        ssh.arg("-o").arg("ControlMaster=auto");
        ssh.arg("-o")
            .arg(format!("ControlPath={}/%C", dir.display()));
        ssh.arg("-o").arg("ControlPersist=120");
    }
    if let Some(port) = remote.port {
        ssh.arg("-p").arg(port.to_string());
    }
    if let Some(identity) = &remote.identity {
        ssh.arg("-i")
            .arg(identity)
            .arg("-o")
            .arg("IdentitiesOnly=yes");
    }
    ssh.arg(if terminal { "-tt" } else { "-T" });
    ssh.arg(format!("{}@{}", remote.user, remote.host));
    ssh.arg("--").arg(&line);
    ssh.stdin(match input {
        Input::Nothing => Stdio::null(),
        Input::Inherit => Stdio::inherit(),
        Input::Bytes(_) | Input::Sources(_) => Stdio::piped(),
    });
    let mut child = ssh
        .spawn()
        .map_err(|e| Failure::Environment(anyhow::anyhow!("cannot run ssh: {e}")))?;
    let fed = match (input, child.stdin.take()) {
        (Input::Bytes(bytes), Some(mut stdin)) => Some(std::thread::spawn(move || {
            stdin
                .write_all(&bytes)
                .map_err(|e| Failure::Failed(anyhow::anyhow!("cannot send to ssh: {e}")))
        })),
        (Input::Sources(sources), Some(stdin)) => Some(std::thread::spawn(move || {
            let (read, write) = std::io::pipe()
                .map_err(|e| Failure::Environment(anyhow::anyhow!("cannot make a pipe: {e}")))?;
            let copy = std::thread::spawn(move || {
                let mut read = read;
                let mut stdin = stdin;
                std::io::copy(&mut read, &mut stdin).map(drop)
            });
            let written = crate::archive::write(&sources, write);
            let _ = copy.join();
            written
        })),
        _ => None,
    };
    let status = child
        .wait()
        .map_err(|e| Failure::Environment(anyhow::anyhow!("ssh failed: {e}")))?;
    if let Some(feeder) = fed {
        match feeder.join() {
            Ok(Err(refused @ Failure::Invalid(_))) => return Err(refused),
            Ok(_) => {}
            Err(_) => return Err(Failure::Failed(anyhow::anyhow!("sending the input failed"))),
        }
    }
    // ssh says 255 for its own failures (no connection, no key accepted)
    Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

/// Drop `--remote X` / `--remote=X` from a command line.
pub fn without_remote(args: &[OsString]) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(word) = words.next() {
        if word == "--" {
            out.push(word);
            out.extend(words.by_ref());
            break;
        }
        if word == "--remote" {
            words.next();
            continue;
        }
        if word.starts_with("--remote=") {
            continue;
        }
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_parse() {
        let r = parse_url("ssh://gear@apps.example.org:2222").expect("url");
        assert_eq!(
            (r.user.as_str(), r.host.as_str(), r.port),
            ("gear", "apps.example.org", Some(2222))
        );
        let r = parse_url("ssh://gear@[::1]:22/").expect("v6");
        assert_eq!((r.host.as_str(), r.port), ("::1", Some(22)));
        assert_eq!(parse_url("ssh://gear@host").expect("url").port, None);
        for bad in [
            "gear@host",
            "ssh://host",
            "ssh://gear@host:x",
            "ssh://ge ar@host",
            "ssh://gear@-oProxyCommand=x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_remote_option_is_not_passed_on() {
        let args: Vec<OsString> = ["gear", "--remote", "prod", "list", "--remote=x", "-N", "t"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(without_remote(&args), ["gear", "list", "-N", "t"]);
        let exec: Vec<OsString> = ["gear", "exec", "a", "--", "x", "--remote", "y"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            without_remote(&exec),
            ["gear", "exec", "a", "--", "x", "--remote", "y"]
        );
    }
}
