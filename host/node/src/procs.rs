//! Gear processes: starting them through the sandbox, running a command to
//! completion (hook `exec`), and supervising long-running ones (hook `spawn`,
//! in [`supervisor`]):
//! output captured into the gear's log, restarts with backoff, a process
//! that keeps crashing marked failed.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gearhost_runtime::{CommandSpec, ExitStatus, HostError};
use gearhost_sandbox::{Bind, Sandbox, SandboxSpec, Sandboxed, Stdio, cgroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::NodeConfig;

/// Where the gear's home appears inside its sandbox.
pub const GEAR_HOME: &str = "/gear";
/// Where the active deployment appears inside the sandbox.
pub const GEAR_REPO: &str = "/gear/app-root/repo";
/// PATH inside gears: system directories only, never gear-writable ones (but for the `bin`
/// of a virtualenv inside the gear that the environment names: [`crate::env::activate`]).
pub const GEAR_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to start a process in one gear.
#[derive(Debug, Clone)]
pub struct GearSandbox {
    /// Gear id.
    pub id: String,
    /// Gear name (its hostname).
    pub name: String,
    /// Its uid and gid.
    pub uid: u32,
    /// Home on the host.
    pub home: PathBuf,
    /// The active deployment on the host, bound at [`GEAR_REPO`].
    pub repo: Option<PathBuf>,
    /// For a deployment of an image: its root, mounted by the node (see
    /// `SandboxSpec::root`).
    pub root: Option<PathBuf>,
    /// The port the deployment's app serves HTTP on, when the deployment
    /// says (an image's), instead of the cartridge's `http` endpoint.
    pub http_port: Option<u16>,
    /// The gear's network namespace (bound file).
    pub netns: PathBuf,
    /// The environment's layers; a program's own variables become the
    /// process layer when it starts.
    pub layers: crate::env::Layers,
    /// Node settings.
    pub config: Arc<NodeConfig>,
}

impl GearSandbox {
    /// A sandbox spec for `argv` in this gear, in the gear's network
    /// namespace. `process` is what the cartridge gives this program (the
    /// process layer, under the linked and user variables); without it the
    /// program gets the app's primary process's, as `gear exec` does.
    pub fn spec(
        &self,
        leaf: &str,
        argv: Vec<String>,
        process: Option<&[(String, String)]>,
        cwd: Option<&str>,
    ) -> SandboxSpec {
        let mut spec = SandboxSpec::new(self.id.clone(), self.uid, self.uid, &self.home, argv);
        spec.hostname = self.name.clone();
        spec.home_target = PathBuf::from(GEAR_HOME);
        let env = match process {
            Some(process) => self.layers.for_process(process).effective(),
            None => self.layers.effective(),
        };
        spec.env = env.into_iter().collect();
        spec.cwd = Some(PathBuf::from(cwd.unwrap_or(if self.repo.is_some() {
            GEAR_REPO
        } else {
            GEAR_HOME
        })));
        spec.limits.memory_bytes = Some(self.config.gear_memory);
        spec.limits.pids = Some(self.config.gear_pids);
        spec.limits.cpu_millicores = Some(self.config.gear_cpu);
        // every start of the gear has its own cgroup inside the gear's group,
        // which holds the gear's limits (see `spawn_blocking_sandbox`)
        spec.cgroup = cgroup::leaf_placement(&self.config.cgroup_subtree, &self.id, leaf);
        if let Some(repo) = &self.repo {
            spec.rw_binds.push(Bind {
                source: repo.clone(),
                target: PathBuf::from(GEAR_REPO),
            });
        }
        spec.netns = Some(self.netns.clone());
        spec.root = self.root.clone();
        spec
    }
}

/// The program and its arguments, as one argv.
fn argv_of(cmd: &CommandSpec) -> Vec<String> {
    std::iter::once(&cmd.program)
        .chain(&cmd.args)
        .cloned()
        .collect()
}

fn sandbox_error(e: gearhost_sandbox::SandboxError) -> HostError {
    HostError::Failed(e.to_string())
}

fn exit_of(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) if code > 128 && code < 160 => ExitStatus::Signaled(code - 128),
        (Some(code), _) => ExitStatus::Exited(code),
        (None, Some(sig)) => ExitStatus::Signaled(sig),
        _ => ExitStatus::Exited(-1),
    }
}

async fn spawn_blocking_sandbox(spec: SandboxSpec) -> Result<Sandboxed, HostError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Some(root) = &spec.root
        && !gearhost_sandbox::overlay::is_overlay_mount(root)
    {
        return Err(HostError::Failed(format!(
            "the gear's root ({}) is not mounted: the image of its deployment could not be \
             mounted (the node's log says why); deploy the image again",
            root.display()
        )));
    }
    tokio::task::spawn_blocking(move || {
        let spawned = (|| {
            // the gear's group carries the gear's limits, shared by all its processes
            if let Some((subtree, gear)) = cgroup::group_of(&spec.cgroup) {
                let mounts = cgroup::detect_kept()?;
                cgroup::ensure_group(&mounts, subtree, gear, &spec.limits)?;
            }
            Sandbox::spawn(spec)
        })();
        // nobody waits for it any more (a hook cancelled while its program
        // started): nobody would ever stop it either
        if let Err(Ok(child)) = tx.send(spawned) {
            let _ = child.teardown();
        }
    });
    rx.await
        .map_err(|_| HostError::Failed("the sandbox thread failed".into()))?
        .map_err(sandbox_error)
}

/// Wait for a sandboxed process without blocking a runtime thread.
async fn wait_exit(child: &mut Sandboxed) -> Result<std::process::ExitStatus, HostError> {
    let fd = child
        .pidfd()
        .try_clone_to_owned()
        .map_err(|e| HostError::Failed(format!("cannot watch the process: {e}")))?;
    // The constructor is deprecated because a caller could close the fd
    // behind tokio's back; here the AsyncFd owns its own duplicate of the
    // pidfd, so nothing else can close it while it is registered.
    #[allow(deprecated)]
    let watcher = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
        .map_err(|e| HostError::Failed(format!("cannot watch the process: {e}")))?;
    loop {
        if let Some(status) = child.try_wait().map_err(sandbox_error)? {
            return Ok(status);
        }
        let mut guard = watcher
            .readable()
            .await
            .map_err(|e| HostError::Failed(format!("cannot watch the process: {e}")))?;
        guard.clear_ready();
    }
}

fn tear_down(child: Sandboxed) {
    // cgroup removal waits for the kernel; keep it off the async threads
    tokio::task::spawn_blocking(move || {
        if let Err(e) = child.teardown() {
            tracing::warn!(error = %e, "gear process teardown left something behind");
        }
    });
}

/// A child that is killed and torn down if it is dropped before [`TearDownOnDrop::disarm`].
struct TearDownOnDrop(Option<Sandboxed>);

impl TearDownOnDrop {
    fn disarm(mut self) -> Sandboxed {
        self.0.take().expect("armed until disarmed")
    }
}

impl std::ops::Deref for TearDownOnDrop {
    type Target = Sandboxed;
    fn deref(&self) -> &Sandboxed {
        self.0.as_ref().expect("armed until disarmed")
    }
}

impl std::ops::DerefMut for TearDownOnDrop {
    fn deref_mut(&mut self) -> &mut Sandboxed {
        self.0.as_mut().expect("armed until disarmed")
    }
}

impl Drop for TearDownOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = child.kill(gearhost_sandbox::Signal::Kill);
            if tokio::runtime::Handle::try_current().is_ok() {
                tear_down(child);
            } else if let Err(e) = child.teardown() {
                tracing::warn!(error = %e, "gear process teardown left something behind");
            }
        }
    }
}

fn pipe_reader(file: std::fs::File) -> Option<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_file(file).ok()
}

/// How much of each output stream of a program a hook runs is kept; the rest
/// is read and dropped, so the program never blocks on a full pipe.
const EXEC_OUTPUT_CAP: u64 = 4 << 20;

/// Run `cmd` to completion in the gear, capturing its output (at most
/// [`EXEC_OUTPUT_CAP`] each) and passing each line of it to `on_line` (with
/// `"stdout"` or `"stderr"`) as it comes, killing it after `timeout`. With `build_net`
/// it runs in the build's network (its own namespace, the egress proxy in
/// its environment) instead of the gear's.
pub async fn exec(
    gear: &GearSandbox,
    leaf: &str,
    cmd: CommandSpec,
    build_net: Option<&crate::egress::BuildNet>,
    timeout: Duration,
    on_line: &(dyn Fn(&str, &str) + Sync),
) -> Result<gearhost_runtime::ExecOutput, HostError> {
    let argv = argv_of(&cmd);
    let mut spec = gear.spec(leaf, argv, Some(&cmd.env), cmd.cwd.as_deref());
    if let Some(net) = build_net {
        net.apply(&mut spec);
    }
    spec.stdio.stdin = if cmd.stdin.is_some() {
        Stdio::Piped
    } else {
        Stdio::Null
    };
    spec.stdio.stdout = Stdio::Piped;
    spec.stdio.stderr = Stdio::Piped;
    // killed if this future is dropped first (the hook that asked was cancelled)
    let mut child = TearDownOnDrop(Some(spawn_blocking_sandbox(spec).await?));
    let stdin = child.take_stdin();
    let stdout = child.take_stdout().and_then(pipe_reader);
    let stderr = child.take_stderr().and_then(pipe_reader);
    let input = cmd.stdin.clone();
    let timeout = cmd.timeout.map_or(timeout, |t| t.min(timeout));

    let collect = async {
        let feed = async {
            if let (Some(stdin), Some(bytes)) = (stdin, input)
                && let Ok(mut w) = tokio::net::unix::pipe::Sender::from_file(stdin)
            {
                let _ = w.write_all(&bytes).await;
            }
        };
        let read_all = |r: Option<tokio::net::unix::pipe::Receiver>, stream: &'static str| async move {
            let mut out = Vec::new();
            if let Some(mut r) = r {
                let cap = EXEC_OUTPUT_CAP as usize;
                let mut buf = vec![0u8; 16 * 1024];
                // where the part of `out` not yet passed on as lines begins
                let mut from = 0;
                let mut noted = false;
                loop {
                    let n = match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // past the cap the rest is drained, neither kept nor passed on
                    let take = n.min(cap.saturating_sub(out.len()));
                    out.extend_from_slice(&buf[..take]);
                    while let Some(pos) = out[from..].iter().position(|b| *b == b'\n') {
                        on_line(stream, &String::from_utf8_lossy(&out[from..from + pos]));
                        from += pos + 1;
                    }
                    if out.len() - from >= crate::logs::MAX_LINE {
                        on_line(stream, &String::from_utf8_lossy(&out[from..]));
                        from = out.len();
                    }
                    if take < n && !noted {
                        noted = true;
                        on_line(
                            stream,
                            &format!(
                                "(more than {} MiB of output: the rest is dropped)",
                                EXEC_OUTPUT_CAP >> 20
                            ),
                        );
                    }
                }
                if from < out.len() {
                    on_line(stream, &String::from_utf8_lossy(&out[from..]));
                }
            }
            out
        };
        let ((), out, err) =
            tokio::join!(feed, read_all(stdout, "stdout"), read_all(stderr, "stderr"));
        (out, err)
    };
    let result = tokio::time::timeout(timeout, async {
        let (out, err) = collect.await;
        let status = wait_exit(&mut child).await?;
        Ok::<_, HostError>((status, out, err))
    })
    .await;
    let child = child.disarm();
    match result {
        Ok(Ok((status, stdout, stderr))) => {
            tear_down(child);
            Ok(gearhost_runtime::ExecOutput {
                status: exit_of(status),
                stdout,
                stderr,
            })
        }
        Ok(Err(e)) => {
            let _ = child.kill(gearhost_sandbox::Signal::Kill);
            tear_down(child);
            Err(e)
        }
        Err(_) => {
            let _ = child.kill(gearhost_sandbox::Signal::Kill);
            tear_down(child);
            Err(HostError::Failed(format!(
                "{} did not finish within {} and was killed",
                cmd.program,
                humantime::format_duration(timeout)
            )))
        }
    }
}

/// How long a `gear exec` command has after `SIGTERM`, once it must end, before what is
/// left of it is killed.
pub const EXEC_GRACE: Duration = Duration::from_secs(2);

/// Run `argv` in the gear with the caller's stdio (for `gear exec`), until it ends or `end`
/// does (the caller went away, the gear is stopped: it says why); then the command gets
/// `SIGTERM`, [`EXEC_GRACE`] to exit, and whatever is left of it is killed with its cgroup.
/// Nothing of it runs once this returns, and nothing once this future is dropped either (it
/// is then killed at once).
///
/// A terminal is handed to the command as it is (interactive shells). Pipes and files are
/// relayed through the node's own pipes instead: the command never holds the caller's
/// descriptors, and under SELinux it only uses objects at the node's level (a gear may not
/// read or write a pipe of an administrator's shell that holds every category, nor the
/// administrator's files).
pub async fn exec_attached(
    gear: &GearSandbox,
    leaf: &str,
    argv: Vec<String>,
    fds: [std::fs::File; 3],
    resized: Option<std::fs::File>,
    end: impl std::future::Future<Output = String>,
) -> Result<ExitStatus, HostError> {
    {
        use std::io::IsTerminal;
        if fds[0].is_terminal() && fds[1].is_terminal() {
            return exec_on_terminal(gear, leaf, argv, fds, resized, end).await;
        }
    }
    let mut spec = gear.spec(leaf, argv, None, None);
    let [stdin, stdout, stderr] = fds.map(attach);
    spec.stdio.stdin = stdin.0;
    spec.stdio.stdout = stdout.0;
    spec.stdio.stderr = stderr.0;
    let mut child = TearDownOnDrop(Some(spawn_blocking_sandbox(spec).await?));
    let feed = AbortOnDrop(tokio::spawn(relay_in(stdin.1, child.take_stdin())));
    let out = tokio::spawn(relay_out(child.take_stdout(), stdout.1));
    let err = tokio::spawn(relay_out(child.take_stderr(), stderr.1));
    let status = run_until(&mut child, end).await;
    // the command is gone, and so is anything it left behind; what they all
    // wrote in the pipes still reaches the caller
    drop(feed);
    finish(child.disarm()).await;
    let _ = out.await;
    let _ = err.await;
    status.map(exit_of)
}

/// Wait for the command; when `end` comes first, `SIGTERM` it and give it [`EXEC_GRACE`],
/// then kill the whole of it.
async fn run_until(
    child: &mut Sandboxed,
    end: impl std::future::Future<Output = String>,
) -> Result<std::process::ExitStatus, HostError> {
    tokio::select! {
        status = wait_exit(child) => return status,
        why = end => {
            tracing::info!(pid = child.pid(), reason = %why, "ending a gear exec command");
        }
    }
    let _ = child.kill(gearhost_sandbox::Signal::Term);
    if let Ok(status) = tokio::time::timeout(EXEC_GRACE, wait_exit(child)).await {
        return status;
    }
    let _ = child.kill(gearhost_sandbox::Signal::Kill);
    wait_exit(child).await
}

/// Kill what is left of a command and remove its cgroup, waiting for it.
async fn finish(child: Sandboxed) {
    let torn = tokio::task::spawn_blocking(move || child.teardown()).await;
    if let Ok(Err(e)) = torn {
        tracing::warn!(error = %e, "gear process teardown left something behind");
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `exec` for a caller on a terminal: the command gets a terminal of its own in the gear (its
/// controlling terminal, so job control and ^C work inside), and the node passes bytes between
/// it and the caller's terminal, which the caller has put in raw mode, keeping the sizes equal
/// (the caller says when its size changes on `resized`; without it the relay looks).
async fn exec_on_terminal(
    gear: &GearSandbox,
    leaf: &str,
    argv: Vec<String>,
    fds: [std::fs::File; 3],
    resized: Option<std::fs::File>,
    end: impl std::future::Future<Output = String>,
) -> Result<ExitStatus, HostError> {
    let mut spec = gear.spec(leaf, argv, None, None);
    spec.stdio.terminal = true;
    let mut child = TearDownOnDrop(Some(spawn_blocking_sandbox(spec).await?));
    let Some(terminal) = child.take_terminal() else {
        finish(child.disarm()).await;
        return Err(HostError::Failed(
            "the gear's terminal did not come back".into(),
        ));
    };
    let [caller_in, caller_out, _] = fds;
    let relay = std::thread::Builder::new()
        .name("gear-exec-terminal".into())
        .spawn(move || {
            gearhost_sys::relay_terminal(&caller_in, &caller_out, &terminal, resized.as_ref())
        })
        .map_err(|e| HostError::Failed(format!("cannot relay the terminal: {e}")))?;
    let status = run_until(&mut child, end).await;
    // whatever still holds the terminal goes with the cgroup; the relay ends when the last
    // process of the gear lets go of it
    finish(child.disarm()).await;
    let _ = tokio::task::spawn_blocking(move || relay.join()).await;
    status.map(exit_of)
}

/// How one of the caller's descriptors reaches the command: a terminal as it is, anything
/// else through a pipe of the node's (the descriptor is kept for the relay).
fn attach(file: std::fs::File) -> (Stdio, Option<std::fs::File>) {
    use std::io::IsTerminal;
    if file.is_terminal() {
        (Stdio::Fd(Arc::new(file)), None)
    } else {
        (Stdio::Piped, Some(file))
    }
}

/// Copies the caller's stdin into the command's until either ends.
async fn relay_in(from: Option<std::fs::File>, to: Option<std::fs::File>) {
    use std::os::unix::fs::FileTypeExt;
    let (Some(from), Some(to)) = (from, to) else {
        return;
    };
    let Ok(mut to) = tokio::net::unix::pipe::Sender::from_file(to) else {
        return;
    };
    if from.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        if let Ok(mut from) = tokio::net::unix::pipe::Receiver::from_file(from) {
            let _ = tokio::io::copy(&mut from, &mut to).await;
        }
    } else {
        let mut from = tokio::fs::File::from_std(from);
        let _ = tokio::io::copy(&mut from, &mut to).await;
    }
}

/// Copies the command's stdout or stderr to the caller's until the command closes it.
async fn relay_out(from: Option<std::fs::File>, to: Option<std::fs::File>) {
    let (Some(from), Some(to)) = (from, to) else {
        return;
    };
    let Some(mut from) = pipe_reader(from) else {
        return;
    };
    let mut to = tokio::fs::File::from_std(to);
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

pub mod records;
mod supervisor;

pub use supervisor::{Aside, Supervisor, node_start_base, take_back};
