//! The gear's supervised processes: signal them, wait for them, list them.
//!
//! Processes are started with [`Command::spawn`](crate::Command::spawn) and
//! known by the name given there.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use gearhost_sdk::process::{self, Signal};
//!
//! # fn main() -> gearhost_sdk::Result<()> {
//! process::signal("web", Signal::Hup)?; // reload
//! for p in process::processes() {
//!     println!("{} {} (restarted {} times)", p.name, p.state, p.restarts);
//! }
//! process::stop_gracefully("web", Duration::from_secs(10))?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use crate::command::{Command, ExitStatus, Output, Restart};

use crate::__private::bindings::gearhost::cartridge::{host, types as wit};
use crate::HostError;

/// How long [`stop_gracefully`] waits for a process to end after `KILL`.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Signals a hook may send to the gear's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGHUP`: by convention, reload configuration.
    Hup,
    /// `SIGINT`: interrupt.
    Int,
    /// `SIGQUIT`: quit.
    Quit,
    /// `SIGKILL`: end it now; it cannot be caught.
    Kill,
    /// `SIGUSR1`: application-defined.
    Usr1,
    /// `SIGUSR2`: application-defined.
    Usr2,
    /// `SIGTERM`: ask it to end.
    Term,
    /// `SIGCONT`: continue a stopped process.
    Cont,
    /// `SIGSTOP`: pause it; it cannot be caught.
    Stop,
}

impl Signal {
    /// Every signal, in the order of the WIT `signal` enum.
    pub const ALL: [Signal; 9] = [
        Self::Hup,
        Self::Int,
        Self::Quit,
        Self::Kill,
        Self::Usr1,
        Self::Usr2,
        Self::Term,
        Self::Cont,
        Self::Stop,
    ];

    /// The lower-case name without `SIG`: `hup`, `int`, `term`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hup => "hup",
            Self::Int => "int",
            Self::Quit => "quit",
            Self::Kill => "kill",
            Self::Usr1 => "usr1",
            Self::Usr2 => "usr2",
            Self::Term => "term",
            Self::Cont => "cont",
            Self::Stop => "stop",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error from parsing a [`Signal`] name that is not one of the signals a
/// hook may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSignalError(String);

impl fmt::Display for ParseSignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Signal::ALL.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "unknown signal `{}`; use one of {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for ParseSignalError {}

impl FromStr for Signal {
    type Err = ParseSignalError;

    /// Parses a signal name, ignoring case and an optional `SIG` prefix.
    ///
    /// ```
    /// use gearhost_sdk::Signal;
    ///
    /// assert_eq!("term".parse(), Ok(Signal::Term));
    /// assert_eq!("SIGKILL".parse(), Ok(Signal::Kill));
    /// assert!("SIGSEGV".parse::<Signal>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let bare = lower.strip_prefix("sig").unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|sig| sig.as_str() == bare)
            .ok_or_else(|| ParseSignalError(s.to_owned()))
    }
}

impl From<Signal> for wit::PosixSignal {
    fn from(s: Signal) -> Self {
        match s {
            Signal::Hup => Self::Hup,
            Signal::Int => Self::Int,
            Signal::Quit => Self::Quit,
            Signal::Kill => Self::Kill,
            Signal::Usr1 => Self::Usr1,
            Signal::Usr2 => Self::Usr2,
            Signal::Term => Self::Term,
            Signal::Cont => Self::Cont,
            Signal::Stop => Self::Stop,
        }
    }
}

/// Supervisor state of a spawned process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessState {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Waiting before the supervisor restarts it.
    Backoff,
    /// Stopped on request.
    Stopped,
    /// Ended by itself and not restarted.
    Exited,
    /// Gave up: it kept failing.
    Failed,
}

impl ProcessState {
    /// The lower-case name: `starting`, `running`, `backoff`, `stopped`,
    /// `exited` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Backoff => "backoff",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<wit::ProcessState> for ProcessState {
    fn from(s: wit::ProcessState) -> Self {
        match s {
            wit::ProcessState::Starting => Self::Starting,
            wit::ProcessState::Running => Self::Running,
            wit::ProcessState::Backoff => Self::Backoff,
            wit::ProcessState::Stopped => Self::Stopped,
            wit::ProcessState::Exited => Self::Exited,
            wit::ProcessState::Failed => Self::Failed,
        }
    }
}

/// One supervised process of the gear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The name given to [`Command::spawn`].
    pub name: String,
    /// Host pid while it runs.
    pub pid: Option<u32>,
    /// Supervisor state.
    pub state: ProcessState,
    /// How many times the supervisor restarted it.
    pub restarts: u32,
    /// How it last ended, if it has.
    pub last_exit: Option<ExitStatus>,
}

impl fmt::Display for ProcessInfo {
    /// `running (pid 42)`, `backoff (restarted 3 times, last exited with code 1)` ...
    ///
    /// ```
    /// use gearhost_sdk::{ProcessInfo, ProcessState};
    /// let web = ProcessInfo {
    ///     name: "web".into(),
    ///     pid: Some(42),
    ///     state: ProcessState::Running,
    ///     restarts: 0,
    ///     last_exit: None,
    /// };
    /// assert_eq!(web.to_string(), "running (pid 42)");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.state)?;
        let mut details = Vec::new();
        if let Some(pid) = self.pid {
            details.push(format!("pid {pid}"));
        }
        if self.restarts > 0 {
            details.push(format!("restarted {} times", self.restarts));
        }
        if self.pid.is_none()
            && let Some(exit) = self.last_exit
        {
            details.push(format!("last {exit}"));
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join(", "))?;
        }
        Ok(())
    }
}

/// The supervised process called `name`, if the gear has one.
pub fn find(name: &str) -> Option<ProcessInfo> {
    processes().into_iter().find(|p| p.name == name)
}

/// Whether the process called `name` is running now.
pub fn is_running(name: &str) -> bool {
    find(name).is_some_and(|p| p.state == ProcessState::Running)
}

impl From<wit::ProcessInfo> for ProcessInfo {
    fn from(p: wit::ProcessInfo) -> Self {
        Self {
            name: p.name,
            pid: p.pid,
            state: p.state.into(),
            restarts: p.restarts,
            last_exit: p.last_exit.map(Into::into),
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Sends `sig` to the process called `name`. Stopping it this way (`term`,
/// `int`, `kill`, ...) also tells the supervisor not to restart it.
///
/// # Errors
///
/// [`HostError::NotFound`] when there is no process of that name, or whatever
/// else the host reports.
pub fn signal(name: &str, sig: Signal) -> Result<(), HostError> {
    host::signal(name, sig.into()).map_err(Into::into)
}

/// Waits up to `timeout` (millisecond resolution) for the process called
/// `name` to end. `Ok(None)` means it is still running when the time is up.
///
/// # Errors
///
/// [`HostError::NotFound`] when there is no process of that name, or whatever
/// else the host reports.
pub fn wait(name: &str, timeout: Duration) -> Result<Option<ExitStatus>, HostError> {
    host::wait(name, millis(timeout))
        .map(|s| s.map(Into::into))
        .map_err(Into::into)
}

/// The gear's supervised processes.
pub fn processes() -> Vec<ProcessInfo> {
    host::processes().into_iter().map(Into::into).collect()
}

/// Stops the process called `name`: sends `TERM`, waits up to `grace` for it
/// to end, then sends `KILL` and waits a little longer.
///
/// Returns how it ended, or `Ok(None)` when the host does not know a process
/// of that name (nothing to stop), so a `stop` hook that calls this is safe to
/// run twice.
///
/// # Errors
///
/// Whatever the host reports other than [`HostError::NotFound`], and
/// [`HostError::Failed`] if the process is still there a second after `KILL`.
pub fn stop_gracefully(name: &str, grace: Duration) -> Result<Option<ExitStatus>, HostError> {
    fn not_found_is_none<T>(r: Result<T, HostError>) -> Result<Option<T>, HostError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(HostError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    if not_found_is_none(signal(name, Signal::Term))?.is_none() {
        return Ok(None);
    }
    match not_found_is_none(wait(name, grace))? {
        None => return Ok(None),
        Some(Some(status)) => return Ok(Some(status)),
        Some(None) => {}
    }
    if not_found_is_none(signal(name, Signal::Kill))?.is_none() {
        return Ok(None);
    }
    match not_found_is_none(wait(name, KILL_WAIT))? {
        None => Ok(None),
        Some(Some(status)) => Ok(Some(status)),
        Some(None) => Err(HostError::Failed(format!(
            "process `{name}` was still running {} ms after SIGKILL; the node's log may say why",
            KILL_WAIT.as_millis()
        ))),
    }
}
