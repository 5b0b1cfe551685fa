//! Supervision of a gear's long-running processes (hook `spawn`): one monitor
//! task per process waiting on its pidfd, output captured into the gear's
//! log, restarts with exponential backoff, and a process that crashes
//! `crash-limit` times within `crash-window` marked failed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearhost_runtime::{
    CommandSpec, ExitStatus, HostError, ProcessInfo, ProcessState, RestartPolicy, Signal,
};
use gearhost_sys::lock::lock;
use tokio::sync::watch;

use super::records::{ProcRecord, ProcRecords};
use super::*;
use crate::logs::LogFile;
use gearhost_sandbox::Adopted;

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

impl Proc {
    /// A supervised process `name` in `state`, and the receiving end of its
    /// signal channel (for its monitor).
    fn new(
        name: &str,
        state: ProcessState,
        pid: Option<u32>,
        restarts: u32,
    ) -> (
        Arc<Proc>,
        tokio::sync::mpsc::UnboundedReceiver<gearhost_sandbox::Signal>,
    ) {
        let (signals, signal_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ended, _) = watch::channel(0);
        let proc = Arc::new(Proc {
            name: name.to_string(),
            status: Mutex::new(ProcStatus {
                state,
                pid,
                restarts,
                last_exit: None,
                crashes: VecDeque::new(),
            }),
            stop: AtomicBool::new(false),
            signals,
            ended,
        });
        (proc, signal_rx)
    }
}

/// The supervised processes of one gear.
#[derive(Debug, Default)]
pub struct Supervisor {
    procs: Mutex<BTreeMap<String, Arc<Proc>>>,
    counter: AtomicU32,
    /// What a later node needs to take the processes back.
    records: Arc<ProcRecords>,
}

/// A supervised process: started by this node (its child), or taken back from an earlier
/// node (not a child: its end is seen, its status is not).
enum Child {
    Spawned(Box<Sandboxed>),
    Adopted(Adopted),
}

impl Child {
    fn pid(&self) -> u32 {
        match self {
            Child::Spawned(c) => c.pid(),
            Child::Adopted(c) => c.pid(),
        }
    }

    fn kill(&mut self, signal: gearhost_sandbox::Signal) {
        let _ = match self {
            Child::Spawned(c) => c.kill(signal),
            Child::Adopted(c) => c.kill(signal),
        };
    }

    /// Waits for the end: the exit status of a spawned process, `None` for an adopted one.
    async fn exit(&mut self) -> Result<Option<std::process::ExitStatus>, HostError> {
        let adopted = match self {
            Child::Spawned(c) => return wait_exit(c).await.map(Some),
            Child::Adopted(c) => c,
        };
        let fd = adopted
            .pidfd()
            .try_clone_to_owned()
            .map_err(|e| HostError::Failed(format!("cannot watch the process: {e}")))?;
        // as in `wait_exit`: the AsyncFd owns its own duplicate of the pidfd
        #[allow(deprecated)]
        let watcher = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
            .map_err(|e| HostError::Failed(format!("cannot watch the process: {e}")))?;
        loop {
            if adopted.has_ended() {
                return Ok(None);
            }
            let mut guard = watcher
                .readable()
                .await
                .map_err(|e| HostError::Failed(format!("cannot watch the process: {e}")))?;
            guard.clear_ready();
        }
    }

    fn tear_down(self) {
        match self {
            Child::Spawned(c) => tear_down(*c),
            Child::Adopted(c) => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = c.teardown() {
                        tracing::warn!(error = %e, "gear process teardown left something behind");
                    }
                });
            }
        }
    }
}

/// Checks that the process `record` names still runs as recorded in `gear` (see
/// [`Adopted::adopt`]) and takes it back with its output pipes; the error says what does
/// not match.
pub fn take_back(gear: &GearSandbox, record: &ProcRecord) -> Result<Adopted, String> {
    if record.repo != gear.repo {
        let shown = |repo: &Option<std::path::PathBuf>| {
            repo.as_ref()
                .map_or("no deployment".to_string(), |p| p.display().to_string())
        };
        return Err(format!(
            "process {} runs {}, the gear's active deployment is {} (the node stopped while the app was replaced)",
            record.name,
            shown(&record.repo),
            shown(&gear.repo)
        ));
    }
    let placement = cgroup::leaf_placement(&gear.config.cgroup_subtree, &gear.id, &record.leaf);
    Adopted::adopt(record.pid, record.start_time, &placement)
        .map_err(|e| format!("process {}: {e}", record.name))
}

impl Supervisor {
    /// A supervisor that records its processes in `path` (see [`ProcRecords`]).
    pub fn recording(path: std::path::PathBuf) -> Self {
        Supervisor {
            records: Arc::new(ProcRecords::at(path)),
            ..Default::default()
        }
    }

    /// Forgets the records of processes (they were taken down with the gear's cgroups).
    pub fn clear_records(&self) {
        self.records.clear();
    }

    /// Goes on supervising the process `record` names, which an earlier node started and
    /// `adopted` holds again (see [`take_back`]): its output goes to the gear's log again
    /// (what it wrote meanwhile first, from the pipe), and its end counts as a crash for the
    /// restart policy, since its status is not known. Returns its pid.
    pub fn adopt(
        &self,
        gear: GearSandbox,
        log: LogFile,
        record: ProcRecord,
        mut adopted: Adopted,
        events: crate::events::GearEvents,
    ) -> u32 {
        let name = record.name.clone();
        copy_output(&log, &name, [adopted.take_stdout(), adopted.take_stderr()]);
        let pid = adopted.pid();
        log.line(
            &format!("{name}[node]"),
            &format!("pid {pid} taken back from an earlier node"),
        );
        let (proc, signal_rx) = Proc::new(&name, ProcessState::Running, Some(pid), record.restarts);
        lock(&self.procs).insert(name, proc.clone());
        self.records.put_loaded(record.clone());
        self.watch(
            proc,
            Child::Adopted(adopted),
            signal_rx,
            gear,
            record,
            log,
            events,
        );
        pid
    }

    /// Supervises `child` as `proc` from now on: a monitor task restarts it by
    /// its policy, within the gear's crash limits, and keeps its record.
    #[allow(clippy::too_many_arguments)]
    fn watch(
        &self,
        proc: Arc<Proc>,
        child: Child,
        signal_rx: tokio::sync::mpsc::UnboundedReceiver<gearhost_sandbox::Signal>,
        gear: GearSandbox,
        record: ProcRecord,
        log: LogFile,
        events: crate::events::GearEvents,
    ) {
        let crash_limit = gear.config.crash_limit;
        let crash_window = gear.config.crash_window;
        tokio::spawn(monitor(
            proc,
            child,
            signal_rx,
            Watched {
                gear,
                record,
                records: self.records.clone(),
            },
            log,
            events,
            crash_limit,
            crash_window,
        ));
    }

    /// Start `cmd` as supervised process `name`. Returns its pid once the
    /// sandbox reports every layer in place.
    pub async fn spawn(
        &self,
        gear: GearSandbox,
        log: LogFile,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
        events: crate::events::GearEvents,
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
        let (proc, signal_rx) = Proc::new(name, ProcessState::Starting, None, 0);
        lock(&self.procs).insert(name.to_string(), proc.clone());
        let first = start_one(&gear, &cmd, &log, name).await;
        let (child, leaf, start_time) = match first {
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
        let record = ProcRecord {
            name: name.to_string(),
            pid,
            start_time,
            leaf,
            repo: gear.repo.clone(),
            cmd,
            restart,
            restarts: 0,
        };
        self.records.put(record.clone());
        self.watch(
            proc,
            Child::Spawned(Box::new(child)),
            signal_rx,
            gear,
            record,
            log,
            events,
        );
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

    /// Take every process out of the supervisor, running as they are (their
    /// monitors keep restarting them): an app started beside them can take
    /// their names. They go on until [`Supervisor::stop_aside`] or
    /// [`Supervisor::put_back`].
    pub fn set_aside(&self) -> Aside {
        Aside(std::mem::take(&mut *lock(&self.procs)))
    }

    /// Put processes set aside back (the start beside them failed, and its
    /// own processes were stopped).
    pub fn put_back(&self, aside: Aside) {
        let mut procs = lock(&self.procs);
        for (name, proc) in aside.0 {
            procs.entry(name).or_insert(proc);
        }
    }

    /// Stop processes set aside: TERM, then KILL after `grace`.
    pub async fn stop_aside(aside: Aside, grace: Duration) {
        let set = Supervisor {
            procs: Mutex::new(aside.0),
            counter: AtomicU32::new(0),
            // their monitors remove their records as they end
            records: Arc::default(),
        };
        set.stop_all(grace).await;
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

/// Processes taken out of a supervisor by [`Supervisor::set_aside`].
#[derive(Debug, Default)]
pub struct Aside(BTreeMap<String, Arc<Proc>>);

impl Aside {
    /// Whether nothing was set aside.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The most processes one gear's supervisor keeps (each holds two pipes and
/// a pidfd in the node, and a task).
const MAX_SUPERVISED: usize = 64;

/// Start numbers, so every start of a process gets a cgroup of its own: the
/// previous one may still be being removed when its successor starts. They
/// count from the node's start time in milliseconds, so that a node started
/// after one that was killed never picks a leaf the dying processes of the
/// old one still hold.
static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The first start number of this node (see [`STARTS`]): every process leaf of an earlier
/// node has a smaller one.
pub fn node_start_base() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

/// The next start number (see [`STARTS`]).
fn next_start() -> u64 {
    node_start_base() + STARTS.fetch_add(1, Ordering::Relaxed)
}

/// Copies a process's stdout and stderr (reading ends) into the gear's log.
fn copy_output(log: &LogFile, name: &str, files: [Option<std::fs::File>; 2]) {
    for (stream, file) in ["out", "err"].into_iter().zip(files) {
        if let Some(reader) = file.and_then(pipe_reader) {
            let log = log.clone();
            let source = format!("{name}[{stream}]");
            tokio::spawn(crate::logs::copy_lines(reader, move |line| {
                log.line(&source, line)
            }));
        }
    }
}

/// Starts one run of a supervised process: detached from the node's life, its init keeping
/// the output pipes open (see `SandboxSpec::keep_output`). Returns it with its cgroup leaf
/// and its init's start time (0 when it could not be read: a later node then does not take
/// it back but starts the gear again).
async fn start_one(
    gear: &GearSandbox,
    cmd: &CommandSpec,
    log: &LogFile,
    name: &str,
) -> Result<(Sandboxed, String, u64), HostError> {
    let argv = argv_of(cmd);
    let leaf = cgroup::process_leaf(&gear.id, name, next_start());
    let mut spec = gear.spec(&leaf, argv, Some(&cmd.env), cmd.cwd.as_deref());
    spec.stdio.stdout = Stdio::Piped;
    spec.stdio.stderr = Stdio::Piped;
    spec.detached = true;
    spec.keep_output = true;
    let mut child = spawn_blocking_sandbox(spec).await?;
    let start_time = gearhost_sandbox::adopt::start_time(child.pid()).unwrap_or(0);
    copy_output(log, name, [child.take_stdout(), child.take_stderr()]);
    log.line(
        &format!("{name}[node]"),
        &format!("started as pid {}", child.pid()),
    );
    Ok((child, leaf, start_time))
}

/// What a monitor keeps of its process beyond the running child: the gear to start it in
/// again, and its record (command, policy, current run) in the gear's records.
struct Watched {
    gear: GearSandbox,
    record: ProcRecord,
    records: Arc<ProcRecords>,
}

#[allow(clippy::too_many_arguments)]
async fn monitor(
    proc: Arc<Proc>,
    mut child: Child,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<gearhost_sandbox::Signal>,
    watched: Watched,
    log: LogFile,
    events: crate::events::GearEvents,
    crash_limit: u32,
    crash_window: Duration,
) {
    use crate::api::reply::NodeEventKind;
    let name = proc.name.clone();
    let Watched {
        gear,
        mut record,
        records,
    } = watched;
    let (cmd, restart) = (record.cmd.clone(), record.restart);
    loop {
        // wait for the exit, forwarding signals meanwhile
        let status = loop {
            tokio::select! {
                status = child.exit() => break status,
                Some(sig) = signals.recv() => {
                    child.kill(sig);
                }
            }
        };
        let exit = match status {
            Ok(Some(s)) => exit_of(s),
            Ok(None) => {
                log.line(
                    &format!("{name}[node]"),
                    "the process was taken back from an earlier node, so its exit status is \
                     unknown here: its end counts as a failure",
                );
                ExitStatus::Exited(-1)
            }
            Err(e) => {
                log.line(
                    &format!("{name}[node]"),
                    &format!("lost track of the process: {e}"),
                );
                ExitStatus::Signaled(9)
            }
        };
        let pid = child.pid();
        child.tear_down();
        let stopping = proc.stop.load(Ordering::SeqCst);
        let failed = !matches!(exit, ExitStatus::Exited(0));
        log.line(
            &format!("{name}[node]"),
            &format!("pid {pid} ended ({exit})"),
        );
        if failed && !stopping {
            let how = match exit {
                ExitStatus::Exited(code) => format!("exited with status {code}"),
                ExitStatus::Signaled(signal) => format!("was killed by signal {signal}"),
            };
            events.record(
                NodeEventKind::Crashed,
                &format!("process {name} (pid {pid}) {how}"),
            );
        }
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
        if backoff.is_none() {
            // ended for good; a process waiting for its restart keeps its record (whose pid
            // is gone), so a node that dies meanwhile leaves the next one a mismatch to restart
            records.remove(&record.leaf);
        }
        proc.ended.send_modify(|n| *n += 1);
        let Some(delay) = backoff else {
            if lock(&proc.status).state == ProcessState::Failed {
                let why = format!(
                    "crashed {crash_limit} times within {}; giving up",
                    humantime::format_duration(crash_window)
                );
                log.line(&format!("{name}[node]"), &why);
                events.record(NodeEventKind::GaveUp, &format!("process {name} {why}"));
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
            records.remove(&record.leaf);
            lock(&proc.status).state = ProcessState::Stopped;
            proc.ended.send_modify(|n| *n += 1);
            return;
        }
        match start_one(&gear, &cmd, &log, &name).await {
            Ok((next, leaf, start_time)) => {
                let mut s = lock(&proc.status);
                s.restarts += 1;
                s.state = ProcessState::Running;
                s.pid = Some(next.pid());
                let restarts = s.restarts;
                drop(s);
                let old = std::mem::replace(&mut record.leaf, leaf);
                record.pid = next.pid();
                record.start_time = start_time;
                record.restarts = restarts;
                records.replace(&old, record.clone());
                events.record(
                    NodeEventKind::Restarted,
                    &format!(
                        "process {name} restarted as pid {} after {} (restart {restarts})",
                        next.pid(),
                        humantime::format_duration(delay)
                    ),
                );
                child = Child::Spawned(Box::new(next));
            }
            Err(e) => {
                records.remove(&record.leaf);
                log.line(&format!("{name}[node]"), &format!("restart failed: {e}"));
                events.record(
                    NodeEventKind::GaveUp,
                    &format!("process {name} could not be restarted: {e}"),
                );
                lock(&proc.status).state = ProcessState::Failed;
                proc.ended.send_modify(|n| *n += 1);
                return;
            }
        }
    }
}
