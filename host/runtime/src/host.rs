//! The host side of the contract as plain Rust: the [`GearHost`] trait that
//! whoever runs hooks (the node, or `gear cartridge call`) implements, and the
//! types that cross it.
//!
//! The runtime checks the manifest's permissions before it forwards an `exec`
//! or `spawn` here, and records every request; what a request *means* for a
//! real gear (which sandbox, which supervisor) is the implementor's business.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which lifecycle hook is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// `build`: make the current deployment runnable.
    Build,
    /// `start`: start the gear's processes.
    Start,
    /// `stop`: stop them.
    Stop,
    /// `control(action, args)`.
    Control,
}

impl HookKind {
    /// All hooks, in lifecycle order.
    pub const ALL: [HookKind; 4] = [
        HookKind::Build,
        HookKind::Start,
        HookKind::Stop,
        HookKind::Control,
    ];

    /// The hook's name as the contract spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Build => "build",
            HookKind::Start => "start",
            HookKind::Stop => "stop",
            HookKind::Control => "control",
        }
    }
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HookKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookKind::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| format!("unknown hook {s:?}: use one of build, start, stop, control"))
    }
}

/// Severity of a hook's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// For debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogSource {
    /// The hook called `host.log`.
    Hook,
    /// The hook wrote to its standard output.
    Stdout,
    /// The hook wrote to its standard error.
    Stderr,
}

/// A gear endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    /// Endpoint name.
    pub name: String,
    /// Port inside the gear's network namespace.
    pub private_port: u16,
    /// Protocols spoken on it.
    pub protocols: Vec<String>,
}

impl From<&crate::manifest::Endpoint> for EndpointInfo {
    fn from(e: &crate::manifest::Endpoint) -> Self {
        EndpointInfo {
            name: e.name.clone(),
            private_port: e.private_port,
            protocols: e.protocols.clone(),
        }
    }
}

/// Who and where a gear is, as a hook sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GearInfo {
    /// Node-unique id.
    pub id: String,
    /// Gear name.
    pub name: String,
    /// Owner namespace.
    pub namespace: String,
    /// Cartridge running the hook.
    pub cartridge: String,
    /// The gear's home as the hook and the gear's processes see it.
    pub home: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointInfo>,
}

/// A directory the hook may see through WASI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Whether the guest may write.
    pub writable: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exited:{c}"),
            ExitStatus::Signaled(s) => write!(f, "signaled:{s}"),
        }
    }
}

/// A program a hook asked to run inside the gear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Bare name or absolute path (already checked against the manifest).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory inside the gear.
    pub cwd: Option<String>,
    /// Bytes for standard input.
    #[serde(skip)]
    pub stdin: Option<Vec<u8>>,
    /// Own time limit.
    pub timeout: Option<Duration>,
}

/// Context of an `exec` or `spawn`: which hook asked and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestContext {
    /// The hook that asked.
    pub hook: HookKind,
    /// Whether the manifest lets this request use the network (only ever
    /// true during `build` with `permissions.build-network`); the host may
    /// still refuse.
    pub network: bool,
}

/// Result of an `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

/// Restart policy of a spawned process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Run once.
    Never,
    /// Restart when it fails.
    OnFailure,
    /// Restart whenever it exits.
    Always,
}

/// Signals a hook may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    /// SIGHUP
    Hup,
    /// SIGINT
    Int,
    /// SIGQUIT
    Quit,
    /// SIGKILL
    Kill,
    /// SIGUSR1
    Usr1,
    /// SIGUSR2
    Usr2,
    /// SIGTERM
    Term,
    /// SIGCONT
    Cont,
    /// SIGSTOP
    Stop,
}

impl Signal {
    /// Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
            Signal::Cont => 18,
            Signal::Stop => 19,
        }
    }
}

/// Supervisor state of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessState {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Waiting to be restarted.
    Backoff,
    /// Stopped on purpose.
    Stopped,
    /// Ended and will not be restarted.
    Exited,
    /// Crashed too often; given up.
    Failed,
}

/// One supervised process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    /// Name given to `spawn`.
    pub name: String,
    /// Host pid while running.
    pub pid: Option<u32>,
    /// State.
    pub state: ProcessState,
    /// Restart count.
    pub restarts: u32,
    /// How it last ended.
    pub last_exit: Option<ExitStatus>,
}

/// Why the host refused or failed a request. Reaches the guest as a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum HostError {
    /// The manifest does not allow it.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No such thing.
    #[error("not found: {0}")]
    NotFound(String),
    /// Malformed request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Not possible here.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Tried and failed.
    #[error("failed: {0}")]
    Failed(String),
}

/// What hooks can ask of the world outside their instance. Implemented by
/// the node for real gears, and by [`ScratchHost`] for standalone calls.
///
/// Implementations must be cheap to call from async code: long waits must be
/// awaited, never blocked on.
pub trait GearHost: Send + Sync + 'static {
    /// The gear the hook runs for.
    fn gear(&self) -> GearInfo;

    /// Directories to preopen for the hook (deny-by-default: nothing else
    /// of the file system is visible).
    fn preopens(&self) -> Vec<Preopen>;

    /// Record a log line from the hook.
    fn log(&self, hook: HookKind, source: LogSource, level: LogLevel, message: &str);

    /// An effective environment variable.
    fn env_get(&self, key: &str) -> Option<String>;

    /// The effective environment, sorted.
    fn env_list(&self) -> Vec<(String, String)>;

    /// Set a cartridge-layer variable, persistently.
    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError>;

    /// Remove a cartridge-layer variable.
    fn env_unset(&self, key: &str) -> Result<(), HostError>;

    /// Run a program to completion inside the gear's sandbox.
    fn exec(
        &self,
        ctx: RequestContext,
        cmd: CommandSpec,
    ) -> BoxFuture<'_, Result<ExecOutput, HostError>>;

    /// Start a supervised process inside the gear's sandbox.
    fn spawn(
        &self,
        ctx: RequestContext,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
    ) -> BoxFuture<'_, Result<u32, HostError>>;

    /// Signal a supervised process.
    fn signal(&self, name: &str, signal: Signal) -> BoxFuture<'_, Result<(), HostError>>;

    /// Wait for a supervised process to end.
    fn wait(
        &self,
        name: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<ExitStatus>, HostError>>;

    /// The gear's supervised processes.
    fn processes(&self) -> Vec<ProcessInfo>;

    /// Whose files the hook's own file operations create and may touch
    /// (see [`crate::fsid`]). `None`, the default, leaves them to the
    /// calling process's identity.
    fn file_owner(&self) -> Option<crate::fsid::FileOwner> {
        None
    }
}

/// Runs every call into the wrapped host as the node itself, even from
/// inside a hook's poll that runs under the gear's file identity.
#[cfg(feature = "engine")]
pub(crate) struct AsNodeHost(pub(crate) std::sync::Arc<dyn GearHost>);

#[cfg(feature = "engine")]
impl GearHost for AsNodeHost {
    fn gear(&self) -> GearInfo {
        crate::fsid::as_node(|| self.0.gear())
    }

    fn preopens(&self) -> Vec<Preopen> {
        crate::fsid::as_node(|| self.0.preopens())
    }

    fn log(&self, hook: HookKind, source: LogSource, level: LogLevel, message: &str) {
        crate::fsid::as_node(|| self.0.log(hook, source, level, message));
    }

    fn env_get(&self, key: &str) -> Option<String> {
        crate::fsid::as_node(|| self.0.env_get(key))
    }

    fn env_list(&self) -> Vec<(String, String)> {
        crate::fsid::as_node(|| self.0.env_list())
    }

    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError> {
        crate::fsid::as_node(|| self.0.env_set(key, value))
    }

    fn env_unset(&self, key: &str) -> Result<(), HostError> {
        crate::fsid::as_node(|| self.0.env_unset(key))
    }

    fn exec(
        &self,
        ctx: RequestContext,
        cmd: CommandSpec,
    ) -> BoxFuture<'_, Result<ExecOutput, HostError>> {
        let fut = crate::fsid::as_node(|| self.0.exec(ctx, cmd));
        Box::pin(crate::fsid::AsNode::new(fut))
    }

    fn spawn(
        &self,
        ctx: RequestContext,
        name: &str,
        cmd: CommandSpec,
        restart: RestartPolicy,
    ) -> BoxFuture<'_, Result<u32, HostError>> {
        let fut = crate::fsid::as_node(|| self.0.spawn(ctx, name, cmd, restart));
        Box::pin(crate::fsid::AsNode::new(fut))
    }

    fn signal(&self, name: &str, signal: Signal) -> BoxFuture<'_, Result<(), HostError>> {
        let fut = crate::fsid::as_node(|| self.0.signal(name, signal));
        Box::pin(crate::fsid::AsNode::new(fut))
    }

    fn wait(
        &self,
        name: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<ExitStatus>, HostError>> {
        let fut = crate::fsid::as_node(|| self.0.wait(name, timeout));
        Box::pin(crate::fsid::AsNode::new(fut))
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        crate::fsid::as_node(|| self.0.processes())
    }

    fn file_owner(&self) -> Option<crate::fsid::FileOwner> {
        self.0.file_owner()
    }
}

/// A boxed, sendable future, as [`GearHost`]'s async methods return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Whether `key` belongs to the node's system layer of a gear's environment
/// (see [`crate::sysenv`], which owns the list): set by the node only, never
/// by a cartridge, a user or a link.
pub fn is_system_env_key(key: &str) -> bool {
    crate::sysenv::is_system_key(key)
}

/// Check an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128
/// characters.
pub fn check_env_key(key: &str) -> Result<(), HostError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(HostError::Invalid(format!(
            "{key:?} is not a valid environment variable name (letters, digits and `_`, not starting with a digit)"
        )))
    }
}

/// A host for running hooks without a node: a scratch gear directory, an
/// in-memory environment, and no sandbox — so `exec` and `spawn` are refused
/// rather than run unconfined.
#[derive(Debug)]
pub struct ScratchHost {
    gear: GearInfo,
    dir: PathBuf,
    env: Mutex<BTreeMap<String, String>>,
    logs: Mutex<Vec<(HookKind, LogSource, LogLevel, String)>>,
}

impl ScratchHost {
    /// A scratch gear named `name` whose home is `dir` on the host, seen by
    /// the hook at `guest_home`.
    pub fn new(gear: GearInfo, dir: PathBuf) -> ScratchHost {
        let mut env = BTreeMap::new();
        env.insert("GEAR_HOME".to_string(), gear.home.clone());
        env.insert("GEAR_NAME".to_string(), gear.name.clone());
        env.insert("GEAR_NAMESPACE".to_string(), gear.namespace.clone());
        if let Some(ep) = gear.endpoints.first() {
            env.insert("GEAR_PORT".to_string(), ep.private_port.to_string());
        }
        ScratchHost {
            gear,
            dir,
            env: Mutex::new(env),
            logs: Mutex::new(Vec::new()),
        }
    }

    /// Everything the hooks logged, in order.
    pub fn logs(&self) -> Vec<(HookKind, LogSource, LogLevel, String)> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn refuse(&self, what: &str) -> HostError {
        HostError::Unavailable(format!(
            "{what} needs a gear sandbox, and this hook runs standalone without one; \
             run `gear cartridge call` as root to run it in a throwaway sandbox, or install \
             the cartridge on a node and use a real gear"
        ))
    }
}

impl GearHost for ScratchHost {
    fn gear(&self) -> GearInfo {
        self.gear.clone()
    }

    fn preopens(&self) -> Vec<Preopen> {
        vec![Preopen {
            host: self.dir.clone(),
            guest: self.gear.home.clone(),
            writable: true,
        }]
    }

    fn log(&self, hook: HookKind, source: LogSource, level: LogLevel, message: &str) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.push((hook, source, level, message.to_string()));
        }
    }

    fn env_get(&self, key: &str) -> Option<String> {
        self.env.lock().ok()?.get(key).cloned()
    }

    fn env_list(&self) -> Vec<(String, String)> {
        self.env
            .lock()
            .map(|e| e.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError> {
        check_env_key(key)?;
        self.env
            .lock()
            .map_err(|_| HostError::Failed("environment lock poisoned".into()))?
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn env_unset(&self, key: &str) -> Result<(), HostError> {
        check_env_key(key)?;
        self.env
            .lock()
            .map_err(|_| HostError::Failed("environment lock poisoned".into()))?
            .remove(key);
        Ok(())
    }

    fn exec(
        &self,
        _ctx: RequestContext,
        cmd: CommandSpec,
    ) -> BoxFuture<'_, Result<ExecOutput, HostError>> {
        let err = self.refuse(&format!("exec of {:?}", cmd.program));
        Box::pin(async move { Err(err) })
    }

    fn spawn(
        &self,
        _ctx: RequestContext,
        name: &str,
        _cmd: CommandSpec,
        _restart: RestartPolicy,
    ) -> BoxFuture<'_, Result<u32, HostError>> {
        let err = self.refuse(&format!("spawn of process {name:?}"));
        Box::pin(async move { Err(err) })
    }

    fn signal(&self, name: &str, _signal: Signal) -> BoxFuture<'_, Result<(), HostError>> {
        let err = HostError::NotFound(format!("no process named {name:?} in this scratch gear"));
        Box::pin(async move { Err(err) })
    }

    fn wait(
        &self,
        name: &str,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<ExitStatus>, HostError>> {
        let err = HostError::NotFound(format!("no process named {name:?} in this scratch gear"));
        Box::pin(async move { Err(err) })
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        Vec::new()
    }
}
