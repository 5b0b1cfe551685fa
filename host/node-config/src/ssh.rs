//! `[ssh]`: the node's ssh endpoint, where app developers `git push` to
//! deploy, open a shell in their gears and run every `gear` command from
//! their laptops. Off unless the section names an address to listen on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The ssh endpoint, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshConfig {
    /// Where sshd listens.
    pub listen: std::net::SocketAddr,
    /// The one login account (created by the node when missing).
    pub user: String,
    /// The OpenSSH server the node runs.
    pub sshd: PathBuf,
    /// The `gear` program sessions run (none: the one beside the node's own
    /// program).
    pub gear: Option<PathBuf>,
    /// The branch whose pushes deploy.
    pub branch: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSsh {
    listen: Option<String>,
    user: Option<String>,
    sshd: Option<PathBuf>,
    gear: Option<PathBuf>,
    branch: Option<String>,
}

/// Names an account or a branch may have: lower-case letters, digits, `-`
/// and `_`, starting with a letter.
fn plain_name(s: &str) -> bool {
    s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl RawSsh {
    /// The endpoint, or none when `listen` is unset; the error is the
    /// problem and what to do.
    pub(crate) fn resolve(self) -> Result<Option<SshConfig>, (String, &'static str)> {
        let Some(listen) = self.listen else {
            if self.user.is_some() || self.sshd.is_some() || self.gear.is_some() {
                return Err((
                    "`[ssh]` sets options but no `listen` address".into(),
                    "add `listen = \"0.0.0.0:2222\"` to turn the ssh endpoint on, or remove the section",
                ));
            }
            return Ok(None);
        };
        let listen = listen.parse().map_err(|_| {
            (
                format!("`ssh.listen` {listen:?} is not an address and port"),
                "use e.g. \"0.0.0.0:2222\" or \"[::]:2222\"",
            )
        })?;
        let user = self.user.unwrap_or_else(|| "gear".into());
        if !plain_name(&user) {
            return Err((
                format!("`ssh.user` {user:?} is not a usable account name"),
                "use lower-case letters, digits, - and _ (at most 32), starting with a letter",
            ));
        }
        let branch = self.branch.unwrap_or_else(|| "main".into());
        if !plain_name(&branch) {
            return Err((
                format!("`ssh.branch` {branch:?} is not a plain branch name"),
                "use e.g. \"main\" or \"master\"",
            ));
        }
        for (field, path) in [
            ("ssh.sshd", self.sshd.as_ref()),
            ("ssh.gear", self.gear.as_ref()),
        ] {
            if path.is_some_and(|p| !p.is_absolute()) {
                return Err((
                    format!("`{field}` is not an absolute path"),
                    "give the program's full path",
                ));
            }
        }
        Ok(Some(SshConfig {
            listen,
            user,
            sshd: self.sshd.unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd")),
            gear: self.gear,
            branch,
        }))
    }
}
