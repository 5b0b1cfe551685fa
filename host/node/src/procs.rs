//! Gear processes: starting them through the sandbox, running a command to
//! completion (hook `exec`), and supervising long-running ones (hook `spawn`):
//! output captured into the gear's log, restarts with backoff, a process
//! that keeps crashing marked failed.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearhost_runtime::{
    CommandSpec, ExitStatus, HostError, ProcessInfo, ProcessState, RestartPolicy, Signal,
};
use gearhost_sandbox::{Bind, Sandbox, SandboxSpec, Sandboxed, Stdio, cgroup};
use gearhost_sys::lock::lock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::logs::LogFile;

/// Where the gear's home appears inside its sandbox.
pub const GEAR_HOME: &str = "/gear";
/// Where the active deployment appears inside the sandbox.
pub const GEAR_REPO: &str = "/gear/app-root/repo";
/// PATH inside gears: system directories only, never gear-writable ones.
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
    /// The gear's network namespace (bound file).
    pub netns: PathBuf,
    /// Effective environment.
    pub env: Vec<(String, String)>,
    /// Node settings.
    pub config: Arc<NodeConfig>,
}

impl GearSandbox {
    /// A sandbox spec for `argv` in this gear, in the gear's network
    /// namespace.
    pub fn spec(
        &self,
        leaf: &str,
        argv: Vec<String>,
        extra_env: &[(String, String)],
        cwd: Option<&str>,
    ) -> SandboxSpec {
        let mut spec = SandboxSpec::new(self.id.clone(), self.uid, self.uid, &self.home, argv);
        spec.hostname = self.name.clone();
        spec.home_target = PathBuf::from(GEAR_HOME);
        let mut env: BTreeMap<String, String> = self.env.iter().cloned().collect();
        for (k, v) in extra_env {
            if !crate::env::is_system_key(k) {
                env.insert(k.clone(), v.clone());
            }
        }
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
    tokio::task::spawn_blocking(move || {
        let spawned = (|| {
            // the gear's group carries the gear's limits, shared by all its processes
            if let Some((subtree, gear)) = cgroup::group_of(&spec.cgroup) {
                let mounts = cgroup::detect()?;
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
/// [`EXEC_OUTPUT_CAP`] each), killing it after `timeout`. With `build_net`
/// it runs in the build's network (its own namespace, the egress proxy in
/// its environment) instead of the gear's.
pub async fn exec(
    gear: &GearSandbox,
    leaf: &str,
    cmd: CommandSpec,
    build_net: Option<&crate::egress::BuildNet>,
    timeout: Duration,
) -> Result<gearhost_runtime::ExecOutput, HostError> {
    let argv = argv_of(&cmd);
    let mut spec = gear.spec(leaf, argv, &cmd.env, cmd.cwd.as_deref());
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
        let read_all = |r: Option<tokio::net::unix::pipe::Receiver>| async move {
            let mut out = Vec::new();
            if let Some(mut r) = r {
                let _ = (&mut r).take(EXEC_OUTPUT_CAP).read_to_end(&mut out).await;
                // the rest is drained, not kept
                let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
            }
            out
        };
        let ((), out, err) = tokio::join!(feed, read_all(stdout), read_all(stderr));
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

/// Run `argv` in the gear with the caller's stdio (for `gear exec`).
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
) -> Result<ExitStatus, HostError> {
    {
        use std::io::IsTerminal;
        if fds[0].is_terminal() && fds[1].is_terminal() {
            return exec_on_terminal(gear, leaf, argv, fds, resized).await;
        }
    }
    let mut spec = gear.spec(leaf, argv, &[], None);
    let [stdin, stdout, stderr] = fds.map(attach);
    spec.stdio.stdin = stdin.0;
    spec.stdio.stdout = stdout.0;
    spec.stdio.stderr = stderr.0;
    let mut child = spawn_blocking_sandbox(spec).await?;
    let feed = tokio::spawn(relay_in(stdin.1, child.take_stdin()));
    let out = tokio::spawn(relay_out(child.take_stdout(), stdout.1));
    let err = tokio::spawn(relay_out(child.take_stderr(), stderr.1));
    let status = wait_exit(&mut child).await;
    // the command is gone: what it left in its pipes still reaches the caller
    feed.abort();
    let _ = out.await;
    let _ = err.await;
    tear_down(child);
    status.map(exit_of)
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
) -> Result<ExitStatus, HostError> {
    let mut spec = gear.spec(leaf, argv, &[], None);
    spec.stdio.terminal = true;
    let mut child = spawn_blocking_sandbox(spec).await?;
    let Some(terminal) = child.take_terminal() else {
        tear_down(child);
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
    let status = wait_exit(&mut child).await;
    // the relay ends when the last process of the gear lets go of the terminal
    let _ = tokio::task::spawn_blocking(move || relay.join()).await;
    tear_down(child);
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

// ---------------------------------------------------------------------------
// supervision

#[derive(Debug)]
struct ProcStatus {
    state: ProcessState,
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    crashes: VecDeque<Instant>,
}

#[derive(Debug)]
struct Proc {
    name: String,
    status: Mutex<ProcStatus>,
    stop: AtomicBool,
    /// The running child's pidfd-backed handle lives in the monitor task;
    /// signals go through this channel.
    signals: tokio::sync::mpsc::UnboundedSender<gearhost_sandbox::Signal>,
    /// Bumped whenever the process ends; `wait` watches it.
    ended: watch::Sender<u64>,
}

/// The supervised processes of one gear.
#[derive(Debug, Default)]
pub struct Supervisor {
    procs: Mutex<BTreeMap<String, Arc<Proc>>>,
    counter: AtomicU32,
}

impl Supervisor {
    /// Start `cmd` as supervised process `name`. Returns its pid once the
    /// sandbox reports every layer in place.
    pub async fn spawn(
        &self,
        gear: GearSandbox,
        log: LogFile,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
    ) -> Result<u32, HostError> {
        {
            let procs = lock(&self.procs);
            let live = procs
                .values()
                .filter(|p| {
                    !matches!(
                        lock(&p.status).state,
                        ProcessState::Exited | ProcessState::Stopped | ProcessState::Failed
                    )
                })
                .count();
            if live >= MAX_SUPERVISED && !procs.contains_key(name) {
                return Err(HostError::Invalid(format!(
                    "the gear runs {MAX_SUPERVISED} supervised processes already, the most a \
                     gear may; stop one first"
                )));
            }
            if let Some(p) = procs.get(name) {
                let s = lock(&p.status);
                if matches!(
                    s.state,
                    ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
                ) {
                    return Err(HostError::Invalid(format!(
                        "a process named {name:?} is already running (pid {}); stop it first or pick another name",
                        s.pid.map_or("?".into(), |p| p.to_string())
                    )));
                }
            }
        }
        let (signals, signal_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ended, _) = watch::channel(0);
        let proc = Arc::new(Proc {
            name: name.to_string(),
            status: Mutex::new(ProcStatus {
                state: ProcessState::Starting,
                pid: None,
                restarts: 0,
                last_exit: None,
                crashes: VecDeque::new(),
            }),
            stop: AtomicBool::new(false),
            signals,
            ended,
        });
        lock(&self.procs).insert(name.to_string(), proc.clone());
        let first = start_one(&gear, &cmd, &log, name).await;
        let child = match first {
            Ok(child) => child,
            Err(e) => {
                let mut s = lock(&proc.status);
                s.state = ProcessState::Failed;
                return Err(e);
            }
        };
        let pid = child.pid();
        {
            let mut s = lock(&proc.status);
            s.state = ProcessState::Running;
            s.pid = Some(pid);
        }
        let crash_limit = gear.config.crash_limit;
        let crash_window = gear.config.crash_window;
        tokio::spawn(monitor(
            proc,
            child,
            signal_rx,
            gear,
            cmd,
            restart,
            log,
            crash_limit,
            crash_window,
        ));
        self.counter.fetch_add(1, Ordering::Relaxed);
        Ok(pid)
    }

    /// Send `signal` to process `name`. Stopping signals also stop restarts.
    pub fn signal(&self, name: &str, signal: Signal) -> Result<(), HostError> {
        let proc = lock(&self.procs).get(name).cloned().ok_or_else(|| {
            HostError::NotFound(format!("no process named {name:?} in this gear"))
        })?;
        let sig = match signal {
            Signal::Term => gearhost_sandbox::Signal::Term,
            Signal::Int => gearhost_sandbox::Signal::Int,
            Signal::Hup => gearhost_sandbox::Signal::Hup,
            Signal::Quit => gearhost_sandbox::Signal::Quit,
            Signal::Usr1 => gearhost_sandbox::Signal::Usr1,
            Signal::Usr2 => gearhost_sandbox::Signal::Usr2,
            Signal::Kill => gearhost_sandbox::Signal::Kill,
            Signal::Cont | Signal::Stop => {
                return Err(HostError::Invalid(
                    "stop and cont are not supported; use term to stop a process".into(),
                ));
            }
        };
        if matches!(
            signal,
            Signal::Term | Signal::Int | Signal::Quit | Signal::Kill
        ) {
            proc.stop.store(true, Ordering::SeqCst);
        }
        let state = lock(&proc.status).state;
        if !matches!(
            state,
            ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
        ) {
            return Ok(());
        }
        proc.signals
            .send(sig)
            .map_err(|_| HostError::NotFound(format!("process {name:?} is not running")))
    }

    /// Wait up to `timeout` for process `name` to end.
    pub async fn wait(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, HostError> {
        let proc = lock(&self.procs).get(name).cloned().ok_or_else(|| {
            HostError::NotFound(format!("no process named {name:?} in this gear"))
        })?;
        let mut rx = proc.ended.subscribe();
        let done = |p: &Proc| {
            let s = lock(&p.status);
            (!matches!(
                s.state,
                ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
            ))
            .then_some(s.last_exit)
        };
        if let Some(exit) = done(&proc) {
            return Ok(exit);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => return Ok(None),
                Ok(Err(_)) => return Ok(lock(&proc.status).last_exit),
                Ok(Ok(())) => {
                    if let Some(exit) = done(&proc) {
                        return Ok(exit);
                    }
                }
            }
        }
    }

    /// The gear's processes.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        lock(&self.procs)
            .values()
            .map(|p| {
                let s = lock(&p.status);
                ProcessInfo {
                    name: p.name.clone(),
                    pid: s.pid,
                    state: s.state,
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                }
            })
            .collect()
    }

    /// Whether any process is running or about to.
    pub fn any_running(&self) -> bool {
        self.processes().iter().any(|p| {
            matches!(
                p.state,
                ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
            )
        })
    }

    /// Whether some process was given up on.
    pub fn failed(&self) -> Option<String> {
        self.processes()
            .into_iter()
            .find(|p| p.state == ProcessState::Failed)
            .map(|p| p.name)
    }

    /// Stop every process: TERM, then KILL after `grace`.
    pub async fn stop_all(&self, grace: Duration) {
        let names: Vec<String> = lock(&self.procs).keys().cloned().collect();
        for name in &names {
            let _ = self.signal(name, Signal::Term);
        }
        for name in &names {
            if let Ok(None) = self.wait(name, grace).await {
                let _ = self.signal(name, Signal::Kill);
                let _ = self.wait(name, Duration::from_secs(5)).await;
            }
        }
    }

    /// Forget processes that have ended (so their names can be reused cleanly).
    pub fn forget_ended(&self) {
        lock(&self.procs).retain(|_, p| {
            matches!(
                lock(&p.status).state,
                ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
            )
        });
    }
}

/// The most processes one gear's supervisor keeps (each holds two pipes and
/// a pidfd in the node, and a task).
const MAX_SUPERVISED: usize = 64;

/// Start numbers, so every start of a process gets a cgroup of its own: the
/// previous one may still be being removed when its successor starts.
static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn start_one(
    gear: &GearSandbox,
    cmd: &CommandSpec,
    log: &LogFile,
    name: &str,
) -> Result<Sandboxed, HostError> {
    let argv = argv_of(cmd);
    let leaf = cgroup::process_leaf(&gear.id, name, STARTS.fetch_add(1, Ordering::Relaxed));
    let mut spec = gear.spec(&leaf, argv, &cmd.env, cmd.cwd.as_deref());
    spec.stdio.stdout = Stdio::Piped;
    spec.stdio.stderr = Stdio::Piped;
    let mut child = spawn_blocking_sandbox(spec).await?;
    for (stream, file) in [("out", child.take_stdout()), ("err", child.take_stderr())] {
        if let Some(reader) = file.and_then(pipe_reader) {
            let log = log.clone();
            let source = format!("{name}[{stream}]");
            tokio::spawn(crate::logs::copy_lines(reader, move |line| {
                log.line(&source, line)
            }));
        }
    }
    log.line(
        &format!("{name}[node]"),
        &format!("started as pid {}", child.pid()),
    );
    Ok(child)
}

#[allow(clippy::too_many_arguments)]
async fn monitor(
    proc: Arc<Proc>,
    mut child: Sandboxed,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<gearhost_sandbox::Signal>,
    gear: GearSandbox,
    cmd: CommandSpec,
    restart: RestartPolicy,
    log: LogFile,
    crash_limit: u32,
    crash_window: Duration,
) {
    let name = proc.name.clone();
    loop {
        // wait for the exit, forwarding signals meanwhile
        let status = loop {
            tokio::select! {
                status = wait_exit(&mut child) => break status,
                Some(sig) = signals.recv() => {
                    let _ = child.kill(sig);
                }
            }
        };
        let exit = match status {
            Ok(s) => exit_of(s),
            Err(e) => {
                log.line(
                    &format!("{name}[node]"),
                    &format!("lost track of the process: {e}"),
                );
                ExitStatus::Signaled(9)
            }
        };
        let pid = child.pid();
        tear_down(child);
        let stopping = proc.stop.load(Ordering::SeqCst);
        let failed = !matches!(exit, ExitStatus::Exited(0));
        log.line(
            &format!("{name}[node]"),
            &format!("pid {pid} ended ({exit})"),
        );
        let again = !stopping
            && match restart {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Always => true,
            };
        let backoff = {
            let mut s = lock(&proc.status);
            s.last_exit = Some(exit);
            s.pid = None;
            if !again {
                s.state = if stopping {
                    ProcessState::Stopped
                } else {
                    ProcessState::Exited
                };
                None
            } else {
                let now = Instant::now();
                s.crashes.push_back(now);
                while s
                    .crashes
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > crash_window)
                {
                    s.crashes.pop_front();
                }
                if s.crashes.len() as u32 >= crash_limit {
                    s.state = ProcessState::Failed;
                    None
                } else {
                    s.state = ProcessState::Backoff;
                    let n = s.crashes.len() as u32;
                    Some(Duration::from_millis(250u64 << n.min(7)).min(Duration::from_secs(30)))
                }
            }
        };
        proc.ended.send_modify(|n| *n += 1);
        let Some(delay) = backoff else {
            if lock(&proc.status).state == ProcessState::Failed {
                log.line(
                    &format!("{name}[node]"),
                    &format!(
                        "crashed {crash_limit} times within {}; giving up",
                        humantime::format_duration(crash_window)
                    ),
                );
            }
            return;
        };
        log.line(
            &format!("{name}[node]"),
            &format!("restarting in {}", humantime::format_duration(delay)),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            Some(_) = signals.recv() => {}
        }
        if proc.stop.load(Ordering::SeqCst) {
            lock(&proc.status).state = ProcessState::Stopped;
            proc.ended.send_modify(|n| *n += 1);
            return;
        }
        match start_one(&gear, &cmd, &log, &name).await {
            Ok(next) => {
                let mut s = lock(&proc.status);
                s.restarts += 1;
                s.state = ProcessState::Running;
                s.pid = Some(next.pid());
                drop(s);
                child = next;
            }
            Err(e) => {
                log.line(&format!("{name}[node]"), &format!("restart failed: {e}"));
                lock(&proc.status).state = ProcessState::Failed;
                proc.ended.send_modify(|n| *n += 1);
                return;
            }
        }
    }
}
