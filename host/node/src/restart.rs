//! `gear node restart`: the node executes its binary again in its own process, handing the
//! new image its listening sockets (the frontend's, the https and metrics listeners, the
//! API's unix socket). Connections that arrive while no image accepts wait in the listen
//! backlogs; the gears' processes run on and the new image takes them back like any node
//! that starts.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use crate::api::{ApiError, ErrorKind};

/// The binary to execute again: the file the node was started from, as it is on disk now
/// (a binary replaced since is the new one: that is how an upgrade works).
pub fn binary() -> Result<PathBuf, ApiError> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| {
        ApiError::new(
            ErrorKind::Failed,
            format!("cannot tell which binary the node runs: {e}"),
        )
    })?;
    // a binary replaced by a rename (or removed) reads as "<path> (deleted)"
    let text = exe.to_string_lossy();
    let path = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text));
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(ApiError::new(
            ErrorKind::Failed,
            format!(
                "{} is not an executable file; put the node's binary back there before restarting",
                path.display()
            ),
        )),
        Err(e) => Err(ApiError::new(
            ErrorKind::Failed,
            format!(
                "the node's binary {} is gone ({e}); put the node's binary back there before restarting",
                path.display()
            ),
        )),
    }
}

/// The listening sockets to hand over, by name (copies of the descriptors the acceptors use).
#[derive(Debug, Default)]
pub struct Handover {
    sockets: Vec<(&'static str, OwnedFd)>,
}

impl Handover {
    /// Keeps a copy of `socket` to hand over as `name`.
    pub fn keep(&mut self, name: &'static str, socket: &impl AsFd) -> std::io::Result<()> {
        self.sockets
            .push((name, socket.as_fd().try_clone_to_owned()?));
        Ok(())
    }

    /// Executes the node's binary again with the sockets; returns only if that fails.
    pub fn exec(self) -> anyhow::Error {
        let binary = match binary() {
            Ok(b) => b,
            Err(e) => return anyhow::anyhow!("{e}"),
        };
        let borrowed: Vec<(&str, std::os::fd::BorrowedFd<'_>)> = self
            .sockets
            .iter()
            .map(|(n, fd)| (*n, fd.as_fd()))
            .collect();
        let env = match gearhost_sys::listenfds::handover_env(&borrowed) {
            Ok(env) => env,
            Err(e) => return anyhow::anyhow!("cannot hand the listening sockets over: {e}"),
        };
        let mut args = std::env::args_os();
        let argv0 = args
            .next()
            .unwrap_or_else(|| binary.clone().into_os_string());
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new(&binary)
            .arg0(argv0)
            .args(args)
            .envs(env)
            .exec();
        anyhow::anyhow!("cannot execute {}: {e}", binary.display())
    }
}

/// How long `gear node restart` waits for gear operations in flight (a deploy, a start).
pub const OPERATIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits, at most `most` in all, until no gear operation is in flight (the
/// API no longer accepts, so none starts): each gear's operation lock is
/// taken and let go, then the answers of the requests being served are
/// waited for. Returns the gears whose operation was still running.
pub async fn finish_operations(node: &crate::node::Node, most: std::time::Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + most;
    let mut busy = Vec::new();
    for gear in node.gears_snapshot() {
        if gear.op.try_lock().is_ok() {
            continue;
        }
        tracing::info!(gear = %gear.record().label(), "waiting for its operation before the restart");
        if tokio::time::timeout_at(deadline, gear.op.lock())
            .await
            .is_err()
        {
            busy.push(gear.record().label());
        }
    }
    // and their answers written, so the callers learn how they ended
    if !crate::server::answered(deadline).await {
        tracing::warn!("restarting with API answers not yet written");
    }
    busy
}
