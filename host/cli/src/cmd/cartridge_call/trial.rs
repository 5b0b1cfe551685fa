//! The host of `gear cartridge call` when the caller may build gear
//! sandboxes (root): a throwaway gear whose `exec` and `spawn` run for real,
//! confined by `gearhost-sandbox` as a node's would be, and which is removed
//! afterwards.
//!
//! The gear has the scratch directory as its home (handed to the gear's
//! uid), one network namespace with only a loopback that all its processes
//! share (held by a descriptor, so it goes away with this process), and one
//! cgroup per process under the sandbox's default subtree. Environment, logs
//! and the gear's description are the [`ScratchHost`]'s. Processes started
//! with `spawn` are not restarted (there is no supervisor standalone); their
//! output is copied to this process's standard error, each line prefixed
//! with the process's name.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gearhost_runtime::fsid::FileOwner;
use gearhost_runtime::{
    CommandSpec, ExecOutput, ExitStatus, GearHost, GearInfo, HookKind, HostError, LogLevel,
    LogSource, Preopen, ProcessInfo, ProcessState, RequestContext, RestartPolicy, ScratchHost,
    Signal, sysenv,
};
use gearhost_sandbox::{Sandbox, SandboxSpec, Sandboxed, Stdio};

/// The programs' `PATH` in the throwaway gear (a node's gears get the same).
const GEAR_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How much of each output stream of an `exec` is kept; the rest is read and
/// dropped so the program never blocks on a full pipe.
const EXEC_OUTPUT_CAP: u64 = 4 << 20;

/// How often a process is looked at while something waits for it.
const POLL: Duration = Duration::from_millis(5);

type BoxFuture<'a, T> = gearhost_runtime::host::BoxFuture<'a, T>;

/// A process started with `spawn`.
struct Proc {
    child: Sandboxed,
    pid: u32,
    last_exit: Option<ExitStatus>,
}

impl Proc {
    /// Whether it still runs (reaping it if it ended).
    fn running(&mut self) -> bool {
        if self.last_exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.last_exit = Some(exit_of(status));
        }
        self.last_exit.is_none()
    }
}

/// A throwaway gear for standalone hook calls; see the module's documentation.
pub struct TrialHost {
    scratch: ScratchHost,
    id: String,
    owner: FileOwner,
    home: PathBuf,
    /// The gear's network namespace, named by `/proc/self/fd/<n>` while open.
    netns: std::sync::OnceLock<OwnedFd>,
    procs: Mutex<BTreeMap<String, Proc>>,
    /// Numbers the cgroups of `exec`s apart.
    execs: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for TrialHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrialHost")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

/// What is left of a throwaway gear once it is torn down.
#[derive(Debug, Default, serde::Serialize)]
pub struct Removed {
    /// Processes that were still running and were killed.
    pub killed: Vec<String>,
    /// Cgroups that could not be removed (their paths and why).
    pub left_behind: Vec<String>,
}

impl TrialHost {
    /// A throwaway gear over `scratch`, whose home on the host is `home`,
    /// run as `owner`: the home and its `app-root` directories are handed to
    /// the gear's uid.
    pub fn new(
        scratch: ScratchHost,
        home: &Path,
        owner: FileOwner,
    ) -> Result<TrialHost, anyhow::Error> {
        use anyhow::Context as _;
        for dir in [
            "",
            "app-root",
            "app-root/repo",
            "app-root/data",
            "app-root/runtime",
            "app-root/logs",
        ] {
            let path = home.join(dir);
            std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid))
                .with_context(|| format!("cannot hand {} to uid {}", path.display(), owner.uid))?;
        }
        Ok(TrialHost {
            id: format!("trial-{}", std::process::id()),
            scratch,
            owner,
            home: home.to_path_buf(),
            netns: std::sync::OnceLock::new(),
            procs: Mutex::new(BTreeMap::new()),
            execs: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The path of the gear's network namespace, made at the first use (a
    /// hook that starts no program never needs one).
    fn netns_path(&self) -> Result<PathBuf, HostError> {
        let fd = match self.netns.get() {
            Some(fd) => fd,
            None => {
                let fd = gearhost_sandbox::netns::create_private().map_err(|e| {
                    HostError::Failed(format!(
                        "cannot create the throwaway gear's network namespace: {e}"
                    ))
                })?;
                self.netns.get_or_init(|| fd)
            }
        };
        Ok(PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Proc>> {
        gearhost_sys::lock::lock(&self.procs)
    }

    /// A sandbox spec for `cmd` in this gear, in its network namespace.
    fn spec(&self, leaf: String, cmd: &CommandSpec) -> Result<SandboxSpec, HostError> {
        let argv = std::iter::once(&cmd.program)
            .chain(&cmd.args)
            .cloned()
            .collect();
        let gear = self.scratch.gear();
        let mut spec = SandboxSpec::new(leaf, self.owner.uid, self.owner.gid, &self.home, argv);
        spec.hostname = gear.name.clone();
        spec.home_target = PathBuf::from(&gear.home);
        spec.netns = Some(self.netns_path()?);
        spec.cwd = Some(PathBuf::from(cmd.cwd.as_deref().unwrap_or(&gear.home)));
        let env = environment(&gear, self.scratch.env_list(), &cmd.env);
        spec.env = env.into_iter().collect();
        Ok(spec)
    }

    /// The processes started with `spawn`, for the report.
    pub fn spawned(&self) -> Vec<ProcessInfo> {
        self.processes()
    }

    /// Whether the process called `name` still runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.procs().get_mut(name).is_some_and(Proc::running)
    }

    /// Whether any spawned process still runs.
    pub fn any_running(&self) -> bool {
        self.procs().values_mut().any(Proc::running)
    }

    /// Connect to `port` on the gear's loopback, as the node's frontend would.
    pub fn answers(&self, port: u16, timeout: Duration) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.netns_path()
            .is_ok_and(|ns| gearhost_sandbox::netns::connect(&ns, addr, timeout).is_ok())
    }

    /// Kill what still runs and remove every process's cgroup.
    pub fn remove(&self) -> Removed {
        let mut removed = Removed::default();
        let procs = std::mem::take(&mut *self.procs());
        for (name, mut proc) in procs {
            if proc.running() {
                removed.killed.push(name.clone());
            }
            if let Err(e) = proc.child.teardown() {
                removed.left_behind.push(format!("process {name}: {e}"));
            }
        }
        removed
    }
}

/// A program's environment in the throwaway gear: the defaults, the gear's
/// variables, what the hook asked for (never a system variable), and the
/// system variables, which nobody overrides.
fn environment(
    gear: &GearInfo,
    gear_env: Vec<(String, String)>,
    extra: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = sysenv::DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    env.extend(gear_env);
    for (k, v) in extra {
        if !sysenv::is_system_key(k) {
            env.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in [
        ("HOME", gear.home.as_str()),
        ("PATH", GEAR_PATH),
        ("USER", gear.name.as_str()),
        ("LOGNAME", gear.name.as_str()),
        ("HOSTNAME", gear.name.as_str()),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

fn exit_of(status: std::process::ExitStatus) -> ExitStatus {
    match (status.code(), status.signal()) {
        // the sandbox reports a command killed by a signal as 128 + the signal
        (Some(code), _) if code > 128 && code < 160 => ExitStatus::Signaled(code - 128),
        (Some(code), _) => ExitStatus::Exited(code),
        (None, Some(sig)) => ExitStatus::Signaled(sig),
        _ => ExitStatus::Exited(-1),
    }
}

fn sandbox_signal(signal: Signal) -> Option<gearhost_sandbox::Signal> {
    use gearhost_sandbox::Signal as S;
    Some(match signal {
        Signal::Hup => S::Hup,
        Signal::Int => S::Int,
        Signal::Quit => S::Quit,
        Signal::Kill => S::Kill,
        Signal::Usr1 => S::Usr1,
        Signal::Usr2 => S::Usr2,
        Signal::Term => S::Term,
        Signal::Cont | Signal::Stop => return None,
    })
}

/// Read `from` to the end on a thread of its own, keeping at most `cap` bytes.
fn collect(from: Option<std::fs::File>, cap: u64) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut from) = from {
            let _ = (&mut from).take(cap).read_to_end(&mut out);
            let _ = std::io::copy(&mut from, &mut std::io::sink());
        }
        out
    })
}

/// Copy `from` to this process's standard error line by line, each line
/// prefixed with `[name stream]`, on a thread of its own.
fn forward(from: Option<std::fs::File>, name: String, stream: &'static str) {
    if let Some(from) = from {
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(from).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line);
                let _ = writeln!(std::io::stderr(), "[{name} {stream}] {}", text.trim_end());
            }
        });
    }
}

/// A child killed and torn down if the future that runs it is dropped
/// (the hook that asked was stopped).
struct TearDownOnDrop(Option<Sandboxed>);

impl Drop for TearDownOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = child.kill(gearhost_sandbox::Signal::Kill);
            let _ = child.teardown();
        }
    }
}

impl GearHost for TrialHost {
    fn gear(&self) -> GearInfo {
        self.scratch.gear()
    }

    fn preopens(&self) -> Vec<Preopen> {
        self.scratch.preopens()
    }

    fn log(&self, hook: HookKind, source: LogSource, level: LogLevel, message: &str) {
        self.scratch.log(hook, source, level, message);
    }

    fn env_get(&self, key: &str) -> Option<String> {
        self.scratch.env_get(key)
    }

    fn env_list(&self) -> Vec<(String, String)> {
        self.scratch.env_list()
    }

    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError> {
        self.scratch.env_set(key, value)
    }

    fn env_unset(&self, key: &str) -> Result<(), HostError> {
        self.scratch.env_unset(key)
    }

    fn exec(
        &self,
        _ctx: RequestContext,
        cmd: CommandSpec,
    ) -> BoxFuture<'_, Result<ExecOutput, HostError>> {
        Box::pin(async move {
            let n = self
                .execs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut spec = self.spec(format!("{}-exec-{n}", self.id), &cmd)?;
            spec.stdio.stdin = if cmd.stdin.is_some() {
                Stdio::Piped
            } else {
                Stdio::Null
            };
            spec.stdio.stdout = Stdio::Piped;
            spec.stdio.stderr = Stdio::Piped;
            let mut guard =
                TearDownOnDrop(Some(Sandbox::spawn(spec).map_err(|e| {
                    HostError::Failed(format!("cannot start {}: {e}", cmd.program))
                })?));
            let child = guard
                .0
                .as_mut()
                .ok_or_else(|| HostError::Failed("lost".into()))?;
            if let (Some(mut stdin), Some(bytes)) = (child.take_stdin(), cmd.stdin.clone()) {
                std::thread::spawn(move || {
                    let _ = stdin.write_all(&bytes);
                });
            }
            let stdout = collect(child.take_stdout(), EXEC_OUTPUT_CAP);
            let stderr = collect(child.take_stderr(), EXEC_OUTPUT_CAP);
            let deadline = cmd.timeout.map(|t| Instant::now() + t);
            let status = loop {
                let child = guard
                    .0
                    .as_mut()
                    .ok_or_else(|| HostError::Failed("lost".into()))?;
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(exit_of(status)),
                    Ok(None) => {}
                    Err(e) => break Err(HostError::Failed(e.to_string())),
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let _ = child.kill(gearhost_sandbox::Signal::Kill);
                    break Err(HostError::Failed(format!(
                        "{} did not finish within {} and was killed",
                        cmd.program,
                        humantime::format_duration(cmd.timeout.unwrap_or_default())
                    )));
                }
                tokio::time::sleep(POLL).await;
            };
            // the child is done (or killed): its cgroup goes now
            drop(guard);
            let status = status?;
            Ok(ExecOutput {
                status,
                stdout: stdout.join().unwrap_or_default(),
                stderr: stderr.join().unwrap_or_default(),
            })
        })
    }

    fn spawn(
        &self,
        _ctx: RequestContext,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
    ) -> BoxFuture<'_, Result<u32, HostError>> {
        let name = name.to_string();
        Box::pin(async move {
            if self.is_running(&name) {
                return Err(HostError::Invalid(format!(
                    "a process named {name:?} is already running in this gear"
                )));
            }
            let mut spec = self.spec(format!("{}-{name}", self.id), &cmd)?;
            spec.stdio.stdout = Stdio::Piped;
            spec.stdio.stderr = Stdio::Piped;
            let mut child = Sandbox::spawn(spec)
                .map_err(|e| HostError::Failed(format!("cannot start {}: {e}", cmd.program)))?;
            forward(child.take_stdout(), name.clone(), "stdout");
            forward(child.take_stderr(), name.clone(), "stderr");
            let pid = child.pid();
            if restart != RestartPolicy::Never {
                let _ = writeln!(
                    std::io::stderr(),
                    "[{name}] started (pid {pid}); standalone it is not restarted if it ends \
                     (on a node its restart policy applies)"
                );
            }
            let old = self.procs().insert(
                name,
                Proc {
                    child,
                    pid,
                    last_exit: None,
                },
            );
            if let Some(old) = old {
                let _ = old.child.teardown();
            }
            Ok(pid)
        })
    }

    fn signal(&self, name: &str, signal: Signal) -> BoxFuture<'_, Result<(), HostError>> {
        let result = (|| {
            let mut procs = self.procs();
            let proc = procs.get_mut(name).ok_or_else(|| {
                HostError::NotFound(format!("no process named {name:?} in this gear"))
            })?;
            let sig = sandbox_signal(signal).ok_or_else(|| {
                HostError::Unavailable(format!(
                    "{signal:?} is not forwarded to a process of a throwaway gear"
                ))
            })?;
            if !proc.running() {
                return Ok(());
            }
            proc.child
                .kill(sig)
                .map_err(|e| HostError::Failed(format!("cannot signal {name}: {e}")))
        })();
        Box::pin(async move { result })
    }

    fn wait(
        &self,
        name: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<ExitStatus>, HostError>> {
        let name = name.to_string();
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            loop {
                {
                    let mut procs = self.procs();
                    let proc = procs.get_mut(&name).ok_or_else(|| {
                        HostError::NotFound(format!("no process named {name:?} in this gear"))
                    })?;
                    if !proc.running() {
                        return Ok(proc.last_exit);
                    }
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                tokio::time::sleep(POLL).await;
            }
        })
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        self.procs()
            .iter_mut()
            .map(|(name, proc)| {
                let running = proc.running();
                ProcessInfo {
                    name: name.clone(),
                    pid: running.then_some(proc.pid),
                    state: if running {
                        ProcessState::Running
                    } else {
                        ProcessState::Exited
                    },
                    restarts: 0,
                    last_exit: proc.last_exit,
                }
            })
            .collect()
    }

    fn file_owner(&self) -> Option<FileOwner> {
        Some(self.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn a_program_gets_the_gears_environment_and_cannot_override_the_system() {
        let gear = GearInfo {
            id: "trial".into(),
            name: "site".into(),
            namespace: "local".into(),
            cartridge: "c".into(),
            home: "/gear".into(),
            endpoints: vec![],
        };
        let env = environment(
            &gear,
            pairs(&[("GEAR_HOME", "/gear"), ("GREETING", "hi")]),
            &pairs(&[
                ("PATH", "/evil"),
                ("GEAR_HOME", "/tmp"),
                ("LANG", "de_DE.UTF-8"),
            ]),
        );
        assert_eq!(env["PATH"], GEAR_PATH);
        assert_eq!(env["GEAR_HOME"], "/gear");
        assert_eq!(env["HOME"], "/gear");
        assert_eq!(env["USER"], "site");
        assert_eq!(env["GREETING"], "hi");
        // a default gives way to what the hook asked for
        assert_eq!(env["LANG"], "de_DE.UTF-8");
        for key in sysenv::SYSTEM_KEYS {
            assert!(env.contains_key(*key), "{key}");
        }
        let plain = environment(&gear, vec![], &[]);
        assert_eq!(plain["LANG"], "C.UTF-8");
    }

    #[test]
    fn a_killed_command_is_reported_as_signalled() {
        use std::os::unix::process::ExitStatusExt as _;
        let from_code = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert_eq!(exit_of(from_code(0)), ExitStatus::Exited(0));
        assert_eq!(exit_of(from_code(3)), ExitStatus::Exited(3));
        // the sandbox reports SIGTERM as 128 + 15
        assert_eq!(exit_of(from_code(143)), ExitStatus::Signaled(15));
        assert_eq!(
            exit_of(std::process::ExitStatus::from_raw(9)),
            ExitStatus::Signaled(9)
        );
    }
}
