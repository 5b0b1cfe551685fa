//! The node's ssh endpoint (`[ssh]`): a real OpenSSH `sshd`, run and
//! restarted by the node, through which app developers `git push` to deploy
//! and run `gear` commands (a shell in a gear among them) from their laptops.
//!
//! - **One login account** (`ssh.user`, `gear` by default), created by the
//!   node when missing: no password, a home it cannot write, no files of its
//!   own that sshd reads. sshd runs with a configuration the node writes:
//!   public keys only, no forwarding of any kind, no user rc, no sftp.
//! - **Keys map to users.** sshd's `AuthorizedKeysCommand` is `gear
//!   ssh-authorize`, which asks the node whose the offered key is and prints
//!   one line for it: the key, `restrict,pty`, and the forced command `gear
//!   ssh-session USER`. An unknown key gets no line and is refused.
//! - **The identity cannot be forged.** The node takes a request's
//!   [`crate::api::AS_USER`] only from the login account's uid, and only the
//!   node's own `gear` runs as that account (sshd's forced command, the git
//!   hooks below). Any other caller naming a user is refused; the account
//!   without a user may only look keys up.
//! - **Programs sshd trusts live under `<state>/ssh`**, owned by root and
//!   writable by nobody else, as sshd demands of every directory up to `/`:
//!   a copy of `gear` (`bin/gear`, with its `gearhost-registry` beside it),
//!   the host keys (made on first start), the
//!   generated `sshd_config`, and the hooks directory git runs for pushes.
//! - **Each gear has a bare repository** at `<state>/git/<gear id>.git`,
//!   outside the gear, made at its first use and owned by the login
//!   account (pushes write objects into it); its hooks are the node's
//!   (`core.hooksPath`), owned by root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::api::{ApiError, ErrorKind};
use crate::config::NodeConfig;
use crate::node::Node;
use gearhost_node_config::ssh::SshConfig;

/// The endpoint's state in the node: the login account's uid once known,
/// and the pid of the sshd the node runs.
#[derive(Debug, Default)]
pub struct SshEndpoint {
    uid: OnceLock<u32>,
    sshd: std::sync::atomic::AtomicU32,
}

impl SshEndpoint {
    /// The login account's uid, once the endpoint runs.
    pub fn uid(&self) -> Option<u32> {
        self.uid.get().copied()
    }

    /// End the sshd the node runs (the node stops or re-executes itself:
    /// sshd would outlive it, holding the port the next one needs). Sessions
    /// already open go on until their connections close.
    pub fn stop(&self) {
        let pid = self.sshd.swap(0, std::sync::atomic::Ordering::SeqCst);
        if pid != 0 {
            end_process(pid);
        }
    }

    /// Whether process `pid` descends from the node's sshd: a session, or a
    /// program a session started (git, its hook). A claim to act for a user
    /// is taken from nowhere else, even from the login account's uid.
    pub fn vouches_for(&self, pid: Option<i32>) -> bool {
        let sshd = self.sshd.load(std::sync::atomic::Ordering::SeqCst);
        let Some(mut pid) = pid.and_then(|p| u32::try_from(p).ok()) else {
            return false;
        };
        if sshd == 0 {
            return false;
        }
        // sshd, its session process, the shell of the forced command, gear,
        // git, its hook: a few levels; a bound keeps a loop from spinning
        for _ in 0..32 {
            if pid == sshd {
                return true;
            }
            let parent = gearhost_sys::proc_status::Status::of(pid)
                .ok()
                .and_then(|s| s.field("PPid").and_then(|p| p.parse::<u32>().ok()));
            match parent {
                Some(p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    }
}

/// SIGTERM to `pid`, then SIGKILL if it is still there after two seconds.
fn end_process(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if kill(target, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..40 {
        if kill(target, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(target, Signal::SIGKILL);
}

/// An sshd a node before this one left running (it was killed, or stopped
/// without ending it) holds the endpoint's port: end it, if its pid file
/// names an sshd.
fn end_leftover_sshd(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("sshd.pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    let is_sshd = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| {
            exe.file_name()
                .map(|n| n.to_string_lossy().starts_with("sshd"))
        })
        .unwrap_or(false);
    if is_sshd {
        tracing::info!(pid, "ending the sshd an earlier node left running");
        end_process(pid);
    }
}

/// Where the endpoint keeps what sshd reads.
fn dir(config: &NodeConfig) -> PathBuf {
    config.state_dir.join("ssh")
}

/// Where a gear's repository lives.
pub fn repo_path(config: &NodeConfig, gear_id: &str) -> PathBuf {
    config.state_dir.join("git").join(format!("{gear_id}.git"))
}

fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The login account: made when missing (a system account with `/bin/sh`,
/// a password no one can type, the given home), refused when it is root or
/// one of the gears' uids. Its uid and gid.
fn ensure_account(ssh: &SshConfig, config: &NodeConfig, home: &Path) -> anyhow::Result<(u32, u32)> {
    let existing = nix::unistd::User::from_name(&ssh.user)
        .map_err(|e| anyhow::anyhow!("cannot look up the ssh account {}: {e}", ssh.user))?;
    let user = match existing {
        Some(user) => user,
        None => {
            let home = home.to_string_lossy();
            run_tool(
                "useradd",
                &[
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    &home,
                    "--shell",
                    "/bin/sh",
                    "--comment",
                    "Gearhost ssh endpoint",
                    &ssh.user,
                ],
            )?;
            tracing::info!(account = %ssh.user, "made the ssh endpoint's login account");
            nix::unistd::User::from_name(&ssh.user)?
                .ok_or_else(|| anyhow::anyhow!("useradd made no account {}", ssh.user))?
        }
    };
    let uid = user.uid.as_raw();
    if uid == 0 || (config.uid_min..=config.uid_max).contains(&uid) {
        anyhow::bail!(
            "the ssh account {} has uid {uid}, which is root's or a gear's; set `ssh.user` to an account of its own",
            ssh.user
        );
    }
    // sshd (without PAM) refuses accounts whose password is locked (`!`);
    // `*` matches no password either, and is not a lock
    run_tool("usermod", &["--password", "*", &ssh.user])?;
    // sessions reach the node's socket, which only that group may open
    if let Some(group) = &config.users_group {
        run_tool("usermod", &["--append", "--groups", group, &ssh.user])?;
    }
    Ok((uid, user.gid.as_raw()))
}

/// sshd trusts `AuthorizedKeysCommand` only when it and every directory
/// above it belong to root and no one else may write them.
fn check_trusted_path(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for dir in path.ancestors() {
        let meta = std::fs::metadata(dir)
            .map_err(|e| anyhow::anyhow!("cannot look at {}: {e}", dir.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            anyhow::bail!(
                "{} is {} or writable by others, and sshd trusts programs only under \
                 directories that root alone may change: put the node's state directory \
                 elsewhere (not under /tmp), e.g. /var/lib/gearhost",
                dir.display(),
                if meta.uid() != 0 {
                    "not owned by root"
                } else {
                    "owned by root but"
                }
            );
        }
    }
    Ok(())
}

/// A directory owned by root, mode `mode`.
fn root_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    std::os::unix::fs::chown(path, Some(0), Some(0))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The `gear` program sessions run: `ssh.gear`, or the one beside the
/// node's own program.
fn gear_program(ssh: &SshConfig) -> anyhow::Result<PathBuf> {
    if let Some(gear) = &ssh.gear {
        return Ok(gear.clone());
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("gear");
    if beside.is_file() {
        Ok(beside)
    } else {
        anyhow::bail!(
            "no `gear` program beside {}; set `ssh.gear` to its path",
            me.display()
        )
    }
}

/// Put a copy of `gear` (or its registry helper) at `to` (a hard link when it
/// can): sshd runs it for every login, so it must sit where only root can
/// change it.
fn install_gear(from: &Path, to: &Path) -> anyhow::Result<()> {
    let staged = to.with_extension("new");
    let _ = std::fs::remove_file(&staged);
    if std::fs::hard_link(from, &staged).is_err() {
        std::fs::copy(from, &staged).map_err(|e| {
            anyhow::anyhow!(
                "cannot copy {} to {}: {e}",
                from.display(),
                staged.display()
            )
        })?;
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&staged)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        // a link to a file someone else may change would not do: copy it
        std::fs::remove_file(&staged)?;
        std::fs::copy(from, &staged)?;
        std::os::unix::fs::chown(&staged, Some(0), Some(0))?;
    }
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&staged, to)?;
    Ok(())
}

/// What a prepared endpoint runs.
struct Prepared {
    config_file: PathBuf,
    sshd: PathBuf,
}

/// Everything sshd needs, made or checked: the account, the trusted
/// directory with `gear`, the host key, the hooks, the configuration.
fn prepare(ssh: &SshConfig, config: &NodeConfig) -> anyhow::Result<(Prepared, u32)> {
    let dir = dir(config);
    for path in [&config.socket, &config.state_dir] {
        let text = path.to_string_lossy();
        if text.contains(|c: char| c.is_whitespace() || c == '"' || c == '%' || c == '\\') {
            anyhow::bail!(
                "{text:?} has a space, a quote, % or \\, which sshd's configuration cannot hold: \
                 choose a plainer path for the node's socket and state directory"
            );
        }
    }
    root_dir(&dir, 0o755)?;
    check_trusted_path(&dir)?;
    let home = dir.join("home");
    root_dir(&home, 0o755)?;
    let (uid, gid) = ensure_account(ssh, config, &home)?;
    let bin = dir.join("bin");
    root_dir(&bin, 0o755)?;
    let gear = bin.join("gear");
    let program = gear_program(ssh)?;
    install_gear(&program, &gear)?;
    // `gear`'s registry helper goes with it (`gear` looks for it beside itself)
    let registry = program.with_file_name("gearhost-registry");
    let registry_copy = bin.join("gearhost-registry");
    if registry.is_file() {
        install_gear(&registry, &registry_copy)?;
    } else {
        tracing::warn!(
            helper = %registry.display(),
            "no gearhost-registry beside gear: registry commands through ssh will say it is missing"
        );
        let _ = std::fs::remove_file(&registry_copy);
    }
    let hooks = dir.join("hooks");
    root_dir(&hooks, 0o755)?;
    let hook = hooks.join("pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n# a push to a gear deploys it (written by the node)\nexec {} ssh-hook pre-receive\n",
            gear.display()
        ),
    )?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let git = config.state_dir.join("git");
    root_dir(&git, 0o755)?;
    let key = dir.join("ssh_host_ed25519_key");
    if !key.exists() {
        run_tool(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "gearhost-node",
                "-f",
                &key.to_string_lossy(),
            ],
        )?;
    }
    // sshd's privilege separation directory, on machines that never ran it
    root_dir(Path::new("/run/sshd"), 0o755)?;
    end_leftover_sshd(&dir);
    let config_file = dir.join("sshd_config");
    std::fs::write(&config_file, sshd_config(ssh, &dir, &gear, &config.socket))?;
    let _ = gid;
    Ok((
        Prepared {
            config_file,
            sshd: ssh.sshd.clone(),
        },
        uid,
    ))
}

/// The configuration the node runs sshd with.
fn sshd_config(ssh: &SshConfig, dir: &Path, gear: &Path, socket: &Path) -> String {
    let listen = match ssh.listen {
        std::net::SocketAddr::V4(a) => a.to_string(),
        std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let d = dir.display();
    let g = gear.display();
    let user = &ssh.user;
    format!(
        "# Written by the Gearhost node at every start; changes are lost.\n\
         ListenAddress {listen}\n\
         HostKey {d}/ssh_host_ed25519_key\n\
         PidFile {d}/sshd.pid\n\
         AllowUsers {user}\n\
         AuthenticationMethods publickey\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitEmptyPasswords no\n\
         PermitRootLogin no\n\
         UsePAM no\n\
         AuthorizedKeysFile none\n\
         AuthorizedKeysCommand {g} ssh-authorize --socket {sock} %t %k\n\
         AuthorizedKeysCommandUser {user}\n\
         PermitUserEnvironment no\n\
         PermitUserRC no\n\
         AllowAgentForwarding no\n\
         AllowTcpForwarding no\n\
         AllowStreamLocalForwarding no\n\
         X11Forwarding no\n\
         PermitTunnel no\n\
         GatewayPorts no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         StrictModes yes\n\
         MaxAuthTries 6\n\
         LoginGraceTime 30\n\
         MaxStartups 20:30:100\n\
         PerSourceMaxStartups 10\n\
         MaxSessions 10\n\
         ClientAliveInterval 60\n\
         SetEnv GEARHOST_SOCKET={sock}\n\
         LogLevel INFO\n",
        sock = socket.display()
    )
}

impl Node {
    /// Run the ssh endpoint until the node stops: prepare it, then run sshd
    /// and start it again (after a pause that grows) whenever it ends.
    pub async fn run_ssh(self: Arc<Self>) {
        let Some(ssh) = self.config().ssh.clone() else {
            return;
        };
        let config = self.config().clone();
        let prepared = match tokio::task::spawn_blocking(move || prepare(&ssh, &config)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the ssh endpoint cannot start");
                eprintln!("gear node: the ssh endpoint cannot start: {e}");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "the ssh endpoint cannot start");
                return;
            }
        };
        let (prepared, uid) = prepared;
        let _ = self.ssh.uid.set(uid);
        let mut pause = Duration::from_millis(500);
        loop {
            let started = std::time::Instant::now();
            match self.sshd_once(&prepared).await {
                Ok(status) => tracing::warn!(%status, "sshd ended; starting it again"),
                Err(e) => tracing::error!(error = %e, "sshd could not run"),
            }
            if started.elapsed() > Duration::from_secs(60) {
                pause = Duration::from_millis(500);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    /// Run sshd once in the foreground, its log lines into the node's.
    async fn sshd_once(&self, p: &Prepared) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = tokio::process::Command::new(&p.sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&p.config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", p.sshd.display()))?;
        self.ssh
            .sshd
            .store(child.id().unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
        let listen = self.config().ssh.as_ref().map(|s| s.listen);
        tracing::info!(listen = ?listen, "ssh endpoint running");
        if let Some(stderr) = child.stderr.take() {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "sshd", "{line}");
            }
        }
        let status = child.wait().await;
        self.ssh.sshd.store(0, std::sync::atomic::Ordering::SeqCst);
        Ok(status?)
    }

    /// `git-access`: the gear's repository, made at its first use.
    pub async fn git_access(
        &self,
        gear: &crate::api::GearRef,
        write: bool,
    ) -> Result<crate::api::reply::GitRepo, ApiError> {
        let Some(ssh) = self.config().ssh.clone() else {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "this node has no ssh endpoint; an operator turns it on with `[ssh] listen`",
            ));
        };
        let Some(uid) = self.ssh.uid() else {
            return Err(ApiError::new(
                ErrorKind::Failed,
                "the node's ssh endpoint is not running; see the node's log",
            ));
        };
        let g = self.find(gear)?;
        let r = g.record();
        let cart = self.cartridge(&r.cartridge)?;
        if write && !cart.manifest().deploy.accepts {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "gear {} runs {}, which takes no deployments, so nothing can be pushed to it",
                    r.name, r.cartridge
                ),
            ));
        }
        let path = repo_path(self.config(), &r.id);
        let hooks = dir(self.config()).join("hooks");
        let branch = ssh.branch.clone();
        let made = path.clone();
        // a push's pack may be at most what a deploy may unpack (git counts
        // it compressed; the deploy checks the files again)
        let max_input = self.config().max_deploy_size;
        tokio::task::spawn_blocking(move || {
            // two pushes at once would both rewrite the configuration (git
            // refuses the second's lock): one setup at a time
            static SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = gearhost_sys::lock::lock(&SETUP);
            make_repo(&made, &hooks, &branch, uid)?;
            if write {
                seal_config(&made, max_input)?;
            }
            Ok::<(), anyhow::Error>(())
        })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))?
        .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))?;
        Ok(crate::api::reply::GitRepo {
            path,
            branch: ssh.branch,
        })
    }
}

/// A bare repository at `path` owned by the login account `uid`, its hooks
/// the node's, unless it exists already.
fn make_repo(path: &Path, hooks: &Path, branch: &str, uid: u32) -> anyhow::Result<()> {
    if path.join("HEAD").exists() {
        return Ok(());
    }
    let staged = path.with_extension("new");
    let _ = std::fs::remove_dir_all(&staged);
    let s = staged.to_string_lossy();
    run_tool(
        "git",
        &["init", "--quiet", "--bare", "--initial-branch", branch, &s],
    )?;
    let set = |key: &str, value: &str| {
        run_tool("git", &["--git-dir", &s, "config", key, value]).map(drop)
    };
    set("core.hooksPath", &hooks.to_string_lossy())?;
    set("receive.denyDeletes", "true")?;
    set("gc.auto", "0")?;
    // the sample hooks git copies are not run (hooksPath), and not kept
    let _ = std::fs::remove_dir_all(staged.join("hooks"));
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?
        .map_or(uid, |u| u.gid.as_raw());
    chown_tree(&staged, uid, gid)?;
    std::fs::rename(&staged, path)?;
    Ok(())
}

/// The repository's configuration as the node wants it before a push, owned
/// by root (git reads it as the login account, which cannot change it): its
/// hooks, and the largest pack a push may send.
fn seal_config(repo: &Path, max_input: u64) -> anyhow::Result<()> {
    let r = repo.to_string_lossy();
    run_tool(
        "git",
        &[
            "--git-dir",
            &r,
            "config",
            "receive.maxInputSize",
            &max_input.to_string(),
        ],
    )?;
    let config = repo.join("config");
    std::os::unix::fs::chown(&config, Some(0), Some(0))?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configuration_allows_keys_only_and_no_forwarding() {
        let ssh = SshConfig {
            listen: "[::1]:2222".parse().expect("address"),
            user: "gear".into(),
            sshd: "/usr/sbin/sshd".into(),
            gear: None,
            branch: "main".into(),
        };
        let text = sshd_config(
            &ssh,
            Path::new("/var/lib/gearhost/ssh"),
            Path::new("/var/lib/gearhost/ssh/bin/gear"),
            Path::new("/run/gearhost/node.sock"),
        );
        for line in [
            "ListenAddress [::1]:2222",
            "AllowUsers gear",
            "PasswordAuthentication no",
            "AuthorizedKeysFile none",
            "AuthorizedKeysCommand /var/lib/gearhost/ssh/bin/gear ssh-authorize --socket /run/gearhost/node.sock %t %k",
            "AllowTcpForwarding no",
            "PermitUserRC no",
            "PermitUserEnvironment no",
            "PerSourceMaxStartups 10",
            "SetEnv GEARHOST_SOCKET=/run/gearhost/node.sock",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("Subsystem"), "no sftp");
    }

    #[test]
    fn a_directory_others_may_write_is_not_trusted() {
        let e = check_trusted_path(Path::new("/tmp")).expect_err("/tmp is 1777");
        assert!(e.to_string().contains("not under /tmp"), "{e}");
    }
}
