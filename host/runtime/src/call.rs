//! One hook call: a fresh store with its limits (epoch deadline, memory cap,
//! deny-by-default WASI), the host side of the `host` interface with the
//! manifest's permissions enforced, and the classification of how the call
//! ended.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::gearhost::cartridge::{host as wit, types as wt};
use crate::engine::{Cartridge, EPOCH_TICK, error_chain};
use crate::host::{
    CommandSpec, ExitStatus, GearHost, HookKind, HostError, LogLevel, LogSource, ProcessState,
    RequestContext, RestartPolicy, Signal,
};
use crate::manifest::{Manifest, format_size};
use crate::watchdog::{Cancel, Watch, Watched};

/// Most bytes of stdout+stderr kept from one hook call; the rest is dropped
/// and the drop is logged.
const OUTPUT_CAP: usize = 1 << 20;
/// Most log lines recorded in one call's report (all still reach the host).
const REPORT_LOG_CAP: usize = 1000;
/// Most host requests recorded in one call's report.
const REPORT_REQUEST_CAP: usize = 1000;
/// Most bytes of text (log messages, request arguments) a call's report
/// holds: a hook's report lives in the node's memory until the call ends.
const REPORT_BYTES_CAP: usize = 1 << 20;
/// Slack on top of a budget for the outer timer that catches hooks stuck in
/// a host call (the engine's epoch check catches hooks stuck in wasm code).
const OUTER_TIMER_SLACK: Duration = Duration::from_millis(50);

/// Which hook to call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookCall {
    /// `build()`
    Build,
    /// `start()`
    Start,
    /// `stop()`
    Stop,
    /// `control(action, args)`
    Control {
        /// Action name.
        action: String,
        /// Arguments.
        args: Vec<String>,
    },
}

impl HookCall {
    /// The hook this calls.
    pub fn kind(&self) -> HookKind {
        match self {
            HookCall::Build => HookKind::Build,
            HookCall::Start => HookKind::Start,
            HookCall::Stop => HookKind::Stop,
            HookCall::Control { .. } => HookKind::Control,
        }
    }
}

/// A permission check that failed during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// `exec` or `spawn`.
    pub request: &'static str,
    /// The program asked for.
    pub program: String,
    /// The manifest field that would have to allow it.
    pub field: &'static str,
}

/// Something a hook asked the host to do, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum HostRequest {
    /// `env-set`
    EnvSet {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// `ok` or the error.
        outcome: String,
    },
    /// `env-unset`
    EnvUnset {
        /// Key.
        key: String,
        /// `ok` or the error.
        outcome: String,
    },
    /// `exec`
    Exec {
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Exit status or the error.
        outcome: String,
    },
    /// `spawn`
    Spawn {
        /// Process name.
        name: String,
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Pid or the error.
        outcome: String,
    },
    /// `signal`
    Signal {
        /// Process name.
        name: String,
        /// Signal.
        signal: Signal,
        /// `ok` or the error.
        outcome: String,
    },
    /// `wait`
    Wait {
        /// Process name.
        name: String,
        /// Timeout in milliseconds.
        timeout_ms: u32,
        /// Exit status, `running`, or the error.
        outcome: String,
    },
}

/// A log line captured during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `host.log`, stdout or stderr.
    pub source: LogSource,
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub message: String,
}

/// How a hook call ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HookError {
    /// The hook returned an error value.
    #[error("the {hook} hook of cartridge {cartridge} failed ({code}): {message}")]
    Failed {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The cartridge's error code.
        code: String,
        /// The cartridge's message.
        message: String,
    },
    /// The hook asked for something its manifest does not allow, and failed.
    #[error(
        "the {hook} hook of cartridge {cartridge} was refused {}: {message}; if the cartridge really needs it, add it to its cartridge.toml",
        describe_denials(denials)
    )]
    PermissionDenied {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// What was refused.
        denials: Vec<Denial>,
        /// The hook's own message, or the trap.
        message: String,
    },
    /// The hook trapped (a panic, an unreachable, a bad memory access).
    #[error("the {hook} hook of cartridge {cartridge} crashed: {trap}; this is a bug in the cartridge, report it with the backtrace below to its author{}", backtrace.as_deref().map(|b| format!("\n{b}")).unwrap_or_default())]
    Trapped {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The trap and the guest's last words on stderr (e.g. its panic message).
        trap: String,
        /// The wasm backtrace, when available.
        backtrace: Option<String>,
    },
    /// The hook ran past its wall-clock budget and was stopped.
    #[error("the {hook} hook of cartridge {cartridge} ran past its {} budget and was stopped; make the hook finish sooner, or raise `limits.{}` in its cartridge.toml (the node caps it at {})", humantime::format_duration(*budget), limit_field(*hook), humantime::format_duration(*ceiling))]
    DeadlineExceeded {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The budget it had.
        #[serde(serialize_with = "serialize_duration")]
        budget: Duration,
        /// The node's ceiling for such budgets.
        #[serde(serialize_with = "serialize_duration")]
        ceiling: Duration,
    },
    /// The hook tried to grow its memory past its cap and was stopped.
    #[error("the {hook} hook of cartridge {cartridge} tried to use more than its {} of memory and was stopped; reduce what it keeps in memory, or raise `limits.memory` in its cartridge.toml", format_size(*limit))]
    MemoryLimitExceeded {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The cap, in bytes.
        limit: u64,
    },
    /// The hook was stopped from outside before it finished (its caller
    /// cancelled it, e.g. `gear stop` of a gear whose deploy was running).
    #[error("the {hook} hook of cartridge {cartridge} was stopped before it finished: {reason}")]
    Cancelled {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// Why it was stopped.
        reason: String,
    },
    /// The host could not run the hook at all.
    #[error("cannot run the {hook} hook of cartridge {cartridge}: {message}")]
    Host {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// What went wrong.
        message: String,
    },
}

fn limit_field(hook: HookKind) -> &'static str {
    if hook == HookKind::Build {
        "build-timeout"
    } else {
        "timeout"
    }
}

fn describe_denials(denials: &[Denial]) -> String {
    denials
        .iter()
        .map(|d| format!("{} of {:?} (not in {})", d.request, d.program, d.field))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serialize a duration as milliseconds with a fraction.
pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn serialize_option_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Everything about one finished hook call.
#[derive(Debug, Clone, Serialize)]
pub struct HookOutcome {
    /// The hook.
    pub hook: HookKind,
    /// `Ok(output)` (the `control` text; empty for other hooks) or how it failed.
    pub result: Result<String, HookError>,
    /// What it logged (`host.log`, stdout, stderr), capped.
    pub logs: Vec<LogLine>,
    /// What it asked the host to do.
    pub requests: Vec<HostRequest>,
    /// Permission checks that failed.
    pub denials: Vec<Denial>,
    /// Wall-clock time of the call, instantiation included.
    #[serde(rename = "elapsed_ms", serialize_with = "serialize_duration")]
    pub elapsed: Duration,
    /// Of which: preparing the store (WASI context, limits).
    #[serde(rename = "setup_ms", serialize_with = "serialize_duration")]
    pub setup: Duration,
    /// Of which: instantiating the component, when it got that far.
    #[serde(
        rename = "instantiate_ms",
        serialize_with = "serialize_option_duration"
    )]
    pub instantiate: Option<Duration>,
    /// Of which: waiting on the host for what the hook asked of it (programs
    /// run with `exec`, processes started with `spawn`, `wait`, `signal`).
    /// The rest of `elapsed` is the hook machinery and the hook's own code.
    #[serde(rename = "host_calls_ms", serialize_with = "serialize_duration")]
    pub host_calls: Duration,
}

#[derive(Debug, Default)]
struct Record {
    logs: Vec<LogLine>,
    requests: Vec<HostRequest>,
    denials: Vec<Denial>,
    stderr_tail: Vec<String>,
    dropped_log_lines: usize,
    dropped_requests: usize,
    /// Bytes of text held in `logs` and `requests`.
    bytes: usize,
    host_calls: Duration,
}

impl Record {
    fn log(&mut self, source: LogSource, level: LogLevel, message: String) {
        if source == LogSource::Stderr {
            if self.stderr_tail.len() == 20 {
                self.stderr_tail.remove(0);
            }
            self.stderr_tail.push(message.clone());
        }
        if self.logs.len() < REPORT_LOG_CAP && self.bytes + message.len() <= REPORT_BYTES_CAP {
            self.bytes += message.len();
            self.logs.push(LogLine {
                source,
                level,
                message,
            });
        } else {
            self.dropped_log_lines += 1;
        }
    }

    fn request(&mut self, request: HostRequest) {
        let weight = request.text_len();
        if self.requests.len() < REPORT_REQUEST_CAP && self.bytes + weight <= REPORT_BYTES_CAP {
            self.bytes += weight;
            self.requests.push(request);
        } else {
            self.dropped_requests += 1;
        }
    }
}

impl HostRequest {
    /// How many bytes of text the request holds.
    fn text_len(&self) -> usize {
        let args = |a: &[String]| a.iter().map(String::len).sum::<usize>();
        match self {
            HostRequest::EnvSet {
                key,
                value,
                outcome,
            } => key.len() + value.len() + outcome.len(),
            HostRequest::EnvUnset { key, outcome } => key.len() + outcome.len(),
            HostRequest::Exec {
                program,
                args: a,
                outcome,
            } => program.len() + args(a) + outcome.len(),
            HostRequest::Spawn {
                name,
                program,
                args: a,
                outcome,
            } => name.len() + program.len() + args(a) + outcome.len(),
            HostRequest::Signal { name, outcome, .. } | HostRequest::Wait { name, outcome, .. } => {
                name.len() + outcome.len()
            }
        }
    }
}

/// Per-call context shared by the store's host functions and the output
/// streams.
struct CallShared {
    host: Arc<dyn GearHost>,
    manifest: Arc<Manifest>,
    hook: HookKind,
    record: Mutex<Record>,
}

impl CallShared {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        gearhost_sys::lock::lock(&self.record)
    }

    fn log(&self, source: LogSource, level: LogLevel, message: &str) {
        self.host.log(self.hook, source, level, message);
        self.record().log(source, level, message.to_string());
    }
}

/// The store data of one hook call.
pub struct HookState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    limiter: MemoryLimiter,
    shared: Arc<CallShared>,
    deadline: Instant,
    deadline_hit: bool,
    cancel: Cancel,
    cancel_hit: bool,
}

impl std::fmt::Debug for HookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookState")
            .field("cartridge", &self.shared.manifest.name)
            .field("hook", &self.shared.hook)
            .field("deadline_hit", &self.deadline_hit)
            .field("cancel_hit", &self.cancel_hit)
            .finish_non_exhaustive()
    }
}

impl WasiView for HookState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and tables of one hook instance, and remembers whether
/// the cap was hit so the trap can be reported as what it is.
struct MemoryLimiter {
    memory_cap: usize,
    hit: bool,
}

#[derive(Debug)]
struct MemoryCapHit;

impl std::fmt::Display for MemoryCapHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit of the hook reached")
    }
}
impl std::error::Error for MemoryCapHit {}

#[derive(Debug)]
struct DeadlineHit;

impl std::fmt::Display for DeadlineHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wall-clock budget of the hook exhausted")
    }
}
impl std::error::Error for DeadlineHit {}

#[derive(Debug)]
struct CancelHit;

impl std::fmt::Display for CancelHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the hook call was cancelled")
    }
}
impl std::error::Error for CancelHit {}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryCapHit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }
    fn tables(&self) -> usize {
        32
    }
    fn memories(&self) -> usize {
        8
    }
}

/// Hook stdout/stderr: split into lines and forwarded to the gear's log, up
/// to a cap shared by both streams.
#[derive(Clone)]
struct LogStream {
    shared: Arc<CallShared>,
    source: LogSource,
    state: Arc<Mutex<StreamState>>,
}

#[derive(Default)]
struct StreamState {
    partial: Vec<u8>,
    total: usize,
    truncated: bool,
}

impl LogStream {
    fn level(&self) -> LogLevel {
        match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        self.shared.log(self.source, self.level(), text);
    }

    fn push(&self, bytes: &[u8]) {
        let mut state = gearhost_sys::lock::lock(&self.state);
        let room = OUTPUT_CAP.saturating_sub(state.total);
        let take = bytes.len().min(room);
        state.total += take;
        state.partial.extend_from_slice(&bytes[..take]);
        while let Some(pos) = state.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = state.partial.drain(..=pos).collect();
            self.emit(&line);
        }
        if take < bytes.len() && !state.truncated {
            state.truncated = true;
            self.shared.log(
                self.source,
                LogLevel::Warn,
                "hook output exceeded 1 MiB; the rest of it is dropped",
            );
        }
    }

    fn flush_partial(&self) {
        let mut state = gearhost_sys::lock::lock(&self.state);
        if !state.partial.is_empty() {
            let line = std::mem::take(&mut state.partial);
            drop(state);
            self.emit(&line);
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// How long a cancelled call's thread gets to come back before the caller stops waiting.
const CANCEL_GRACE: Duration = Duration::from_secs(1);
/// How long past its budget (and the outer timer) a call's thread gets to come back before
/// the caller stops waiting for it (a thread stuck in a wait the watchdog's signal cannot
/// break, such as a disk that does not answer).
const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// Everything one hook call needs on the thread that runs it.
struct Job {
    cartridge: Cartridge,
    host: Arc<dyn GearHost>,
    stdout: LogStream,
    stderr: LogStream,
    call: HookCall,
    owner: Option<crate::fsid::FileOwner>,
    watch: Arc<Watch>,
    cancel: Cancel,
    shared: Arc<CallShared>,
    limits: Limits,
    started: Instant,
}

/// What a call's outcome is judged against.
#[derive(Clone)]
struct Limits {
    cartridge: String,
    hook: HookKind,
    budget: Duration,
    ceiling: Duration,
    memory_cap: u64,
    deadline: Instant,
}

impl Limits {
    fn deadline_exceeded(&self) -> HookError {
        HookError::DeadlineExceeded {
            cartridge: self.cartridge.clone(),
            hook: self.hook,
            budget: self.budget,
            ceiling: self.ceiling,
        }
    }

    fn cancelled(&self, cancel: &Cancel) -> HookError {
        HookError::Cancelled {
            cartridge: self.cartridge.clone(),
            hook: self.hook,
            reason: cancel
                .reason()
                .unwrap_or_else(|| "the call was abandoned".into()),
        }
    }

    fn host_error(&self, message: String) -> HookError {
        HookError::Host {
            cartridge: self.cartridge.clone(),
            hook: self.hook,
            message,
        }
    }
}

/// A finished run: the result, when instantiation was done and when the
/// store was ready (both since the call started, when it got that far).
type Ran = (
    Result<String, HookError>,
    Option<Duration>,
    Option<Duration>,
);

impl Job {
    /// Prepare the store and run the hook in it, on this thread, polled through `handle`
    /// (a thread of that runtime's blocking pool).
    fn run_here(self, handle: &tokio::runtime::Handle) -> Ran {
        let store = match self.cartridge.prepare(&self) {
            Ok(store) => store,
            Err(e) => return (Err(e), None, None),
        };
        let store_ready = self.started.elapsed();
        let (result, instantiated) = handle.block_on(self.run(store));
        (result, instantiated, Some(store_ready))
    }

    /// Instantiate and call the hook, polled as the gear's file owner and watched: bounded by
    /// the epoch deadline, an outer timer, and `cancel`.
    async fn run(
        self,
        mut store: Store<HookState>,
    ) -> (Result<String, HookError>, Option<Duration>) {
        let pre = self.cartridge.pre.clone();
        let Job {
            call,
            owner,
            watch,
            cancel,
            shared,
            limits,
            started,
            ..
        } = self;
        let mut instantiated = None;
        let result = {
            let fut = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instantiated = Some(started.elapsed());
                let hooks = instance.gearhost_cartridge_hooks();
                match &call {
                    HookCall::Build => hooks
                        .call_build(&mut store)
                        .await
                        .map(|r| r.map(|()| String::new())),
                    HookCall::Start => hooks
                        .call_start(&mut store)
                        .await
                        .map(|r| r.map(|()| String::new())),
                    HookCall::Stop => hooks
                        .call_stop(&mut store)
                        .await
                        .map(|r| r.map(|()| String::new())),
                    HookCall::Control { action, args } => {
                        hooks.call_control(&mut store, action, args).await
                    }
                }
            };
            let outer = limits.deadline.saturating_duration_since(Instant::now())
                + OUTER_TIMER_SLACK
                + EPOCH_TICK;
            let watched = Watched::new(watch.clone(), crate::fsid::AsOwner::new(owner, fut));
            tokio::select! {
                ran = tokio::time::timeout(outer, watched) => match ran {
                    Err(_elapsed) => Err(limits.deadline_exceeded()),
                    Ok(Ok(Ok(output))) => Ok(output),
                    Ok(Ok(Err(e))) => Err(HookError::Failed {
                        cartridge: limits.cartridge.clone(),
                        hook: limits.hook,
                        code: e.code,
                        message: e.message,
                    }),
                    Ok(Err(trap)) => Err(classify_trap(&store, &shared, &limits, &cancel, &trap)),
                },
                () = cancel.cancelled() => Err(limits.cancelled(&cancel)),
            }
        };
        // a call the watchdog had to break out of the kernel, or that was cancelled, ended
        // because of that, whatever the guest made of the error it was given
        let result = match result {
            Ok(out) if !watch.interrupted() => Ok(out),
            Err(e @ HookError::MemoryLimitExceeded { .. }) => Err(e),
            _ if cancel.is_cancelled() => Err(limits.cancelled(&cancel)),
            _ if watch.interrupted() => Err(limits.deadline_exceeded()),
            other => other,
        };
        (result, instantiated)
    }
}

impl Cartridge {
    /// A fresh store for one call: WASI with the host's preopens and the
    /// hook's streams, the memory cap, the epoch deadline; or why the hook
    /// cannot run.
    fn prepare(&self, job: &Job) -> Result<Store<HookState>, HookError> {
        let Job {
            host,
            stdout,
            stderr,
            owner,
            cancel,
            shared,
            limits,
            ..
        } = job;
        let deadline = limits.deadline;
        let memory_cap = limits.memory_cap;
        let mut wasi = WasiCtxBuilder::new();
        // A hook's file operations are small and local; running them on the
        // calling thread costs far less than a round trip through the blocking
        // pool (measured: 64 µs -> see docs/performance.md for a trivial hook).
        // The calling thread is the hook's own (see `call_cancellable`), and
        // the watchdog breaks it out of a file operation that waits too long.
        wasi.allow_blocking_current_thread(true);
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        let gear = host.gear();
        wasi.env("GEAR_HOME", &gear.home)
            .env("PWD", &gear.home)
            .initial_cwd(&gear.home);
        let mut preopen_error = None;
        for p in host.preopens() {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            if let Err(e) = wasi.preopened_dir(&p.host, &p.guest, perms) {
                preopen_error = Some(format!(
                    "cannot open the gear directory {} for the hook: {e}; check that it exists",
                    p.host.display()
                ));
                break;
            }
        }
        if let Some(message) = preopen_error {
            return Err(limits.host_error(message));
        }
        if let Some(owner) = owner.filter(|o| !crate::fsid::can_take(*o)) {
            return Err(limits.host_error(format!(
                "cannot take the gear's file identity (uid {}, gid {}) for the hook; \
                 the node needs CAP_SETUID and CAP_SETGID (run it as root)",
                owner.uid, owner.gid
            )));
        }

        let state = HookState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                memory_cap: usize::try_from(memory_cap).unwrap_or(usize::MAX),
                hit: false,
            },
            shared: shared.clone(),
            deadline,
            deadline_hit: false,
            cancel: cancel.clone(),
            cancel_hit: false,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.cancel.is_cancelled() {
                state.cancel_hit = true;
                return Err(wasmtime::Error::new(CancelHit));
            }
            if Instant::now() >= state.deadline {
                state.deadline_hit = true;
                return Err(wasmtime::Error::new(DeadlineHit));
            }
            // yield to the executor at every tick so a busy hook never
            // monopolises its thread's executor
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }
}

/// Sets `cancel` if the call's future is dropped before it finished (the thread running the
/// hook cannot be dropped with it: it is told to stop).
struct CancelOnDrop<'a> {
    cancel: &'a Cancel,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cancel
                .cancel("the caller stopped waiting for the hook");
        }
    }
}

impl Cartridge {
    /// Run one hook in a fresh, fully limited instance against `host`.
    ///
    /// Never panics and never lets the guest take the process down: every
    /// way a call can end is reported in the returned [`HookOutcome`].
    /// The hook runs on a thread of the runtime's blocking pool (it may block
    /// there in its file operations; see [`Cartridge::call_cancellable`]).
    pub async fn call(&self, host: Arc<dyn GearHost>, call: HookCall) -> HookOutcome {
        self.call_cancellable(host, call, &Cancel::new()).await
    }

    /// [`Cartridge::call`], ending early with [`HookError::Cancelled`] when
    /// `cancel` is set: within a few milliseconds, even if the hook is blocked
    /// in a file operation; programs it was running with `exec` are stopped
    /// with it. Dropping the returned future cancels the call too.
    ///
    /// The hook's instance is polled on a thread of the current tokio
    /// runtime's blocking pool, entered into that runtime (so tasks the host
    /// spawns for it run on that runtime), never on one of the runtime's
    /// workers: a hook blocked in the kernel holds only its own thread, and
    /// the runtime's watchdog breaks it out when the call is due. Must be
    /// called from within a tokio runtime with time enabled.
    pub async fn call_cancellable(
        &self,
        host: Arc<dyn GearHost>,
        call: HookCall,
        cancel: &Cancel,
    ) -> HookOutcome {
        let started = Instant::now();
        let hook = call.kind();
        let owner = host.file_owner();
        // every call back into the host runs as the node (see crate::fsid)
        let host: Arc<dyn GearHost> = match owner {
            Some(_) => Arc::new(crate::host::AsNodeHost(host)),
            None => host,
        };
        let cfg = &self.runtime.config;
        let (budget, ceiling) = match hook {
            HookKind::Build => (self.manifest.limits.build_timeout, cfg.max_build_timeout),
            _ => (self.manifest.limits.timeout, cfg.max_timeout),
        };
        let budget = budget.min(ceiling);
        let memory_cap = self.manifest.limits.memory.min(cfg.max_memory);
        let deadline = started + budget;
        let limits = Limits {
            cartridge: self.manifest.name.clone(),
            hook,
            budget,
            ceiling,
            memory_cap,
            deadline,
        };

        let shared = Arc::new(CallShared {
            host: host.clone(),
            manifest: self.manifest.clone(),
            hook,
            record: Mutex::new(Record::default()),
        });
        let stdout = LogStream {
            shared: shared.clone(),
            source: LogSource::Stdout,
            state: Arc::default(),
        };
        let stderr = LogStream {
            shared: shared.clone(),
            source: LogSource::Stderr,
            state: stdout.state.clone(),
        };

        let mut cancel_on_drop = CancelOnDrop {
            cancel,
            armed: true,
        };
        let (result, instantiated, store_ready) = if cancel.is_cancelled() {
            (Err(limits.cancelled(cancel)), None, None)
        } else {
            let job = Job {
                cartridge: self.clone(),
                host,
                stdout: stdout.clone(),
                stderr,
                call,
                owner,
                watch: self.runtime.watchdog.watch(deadline, cancel.clone()),
                cancel: cancel.clone(),
                shared: shared.clone(),
                limits: limits.clone(),
                started,
            };
            run_on_own_thread(job, &limits, cancel).await
        };
        cancel_on_drop.armed = false;
        stdout.flush_partial();

        let record = std::mem::take(&mut *shared.record());
        if record.dropped_log_lines > 0 || record.dropped_requests > 0 {
            tracing::debug!(
                dropped_lines = record.dropped_log_lines,
                dropped_requests = record.dropped_requests,
                "hook report truncated"
            );
        }
        // a failure after a refused request is reported as the refusal: that
        // is what the cartridge's author has to fix
        let result =
            match result {
                Err(
                    HookError::Failed { message, .. } | HookError::Trapped { trap: message, .. },
                ) if !record.denials.is_empty() => Err(HookError::PermissionDenied {
                    cartridge: limits.cartridge.clone(),
                    hook,
                    denials: record.denials.clone(),
                    message,
                }),
                other => other,
            };
        HookOutcome {
            hook,
            result,
            logs: record.logs,
            requests: record.requests,
            denials: record.denials,
            elapsed: started.elapsed(),
            setup: store_ready.unwrap_or_default(),
            instantiate: instantiated.map(|t| t.saturating_sub(store_ready.unwrap_or_default())),
            host_calls: record.host_calls,
        }
    }
}

/// Run `job` on a thread of the blocking pool, entered into the current runtime, and wait
/// for it — but not past its budget plus a grace, nor long after `cancel`: a thread that
/// does not come back by then (stuck where no signal reaches) is left behind, and the call
/// reported as stopped (the host refuses every request from it from then on: it is past its
/// deadline, or cancelled).
async fn run_on_own_thread(job: Job, limits: &Limits, cancel: &Cancel) -> Ran {
    let handle = tokio::runtime::Handle::current();
    let mut task = tokio::task::spawn_blocking(move || job.run_here(&handle));
    let give_up = tokio::time::Instant::from_std(limits.deadline)
        + OUTER_TIMER_SLACK
        + EPOCH_TICK
        + ABANDON_GRACE;
    let joined = tokio::select! {
        joined = &mut task => joined,
        () = tokio::time::sleep_until(give_up) => {
            // past its deadline the hook is refused every request already
            match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
                Ok(joined) => joined,
                Err(_) => return abandoned(limits, limits.deadline_exceeded()),
            }
        }
        () = cancel.cancelled() => match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
            Ok(joined) => joined,
            Err(_) => return abandoned(limits, limits.cancelled(cancel)),
        },
    };
    match joined {
        Ok(ran) => ran,
        Err(e) => (
            Err(limits.host_error(format!(
                "the thread running the hook failed: {e}; this is a bug in the node, report it"
            ))),
            None,
            None,
        ),
    }
}

fn abandoned(limits: &Limits, error: HookError) -> Ran {
    tracing::error!(
        cartridge = %limits.cartridge,
        hook = %limits.hook,
        "a hook's thread did not come back after it was told to stop (a system call no signal \
         interrupts); it is left to finish on its own and can no longer reach the gear"
    );
    (Err(error), None, None)
}

/// Say what a trap means: the deadline, a cancel, the memory cap, or a crash.
fn classify_trap(
    store: &Store<HookState>,
    shared: &CallShared,
    limits: &Limits,
    cancel: &Cancel,
    trap: &wasmtime::Error,
) -> HookError {
    let cartridge = limits.cartridge.clone();
    let hook = limits.hook;
    let state = store.data();
    if state.cancel_hit || trap.is::<CancelHit>() {
        return limits.cancelled(cancel);
    }
    if state.deadline_hit || trap.is::<DeadlineHit>() {
        return limits.deadline_exceeded();
    }
    if state.limiter.hit || trap.is::<MemoryCapHit>() {
        return HookError::MemoryLimitExceeded {
            cartridge,
            hook,
            limit: limits.memory_cap,
        };
    }
    let mut text = match trap.downcast_ref::<wasmtime::Trap>() {
        Some(code) => format!("wasm trap: {code}"),
        None => error_chain(trap),
    };
    let tail = shared.record().stderr_tail.clone();
    let last_words: Vec<&String> = tail.iter().filter(|l| !l.trim().is_empty()).collect();
    if !last_words.is_empty() {
        text.push_str(&format!(
            " (stderr: {})",
            last_words
                .iter()
                .map(|s| s.trim())
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    let backtrace = trap
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string())
        .filter(|s| !s.trim().is_empty());
    HookError::Trapped {
        cartridge,
        hook,
        trap: text,
        backtrace,
    }
}

// ---------------------------------------------------------------------------
// the host interface

fn to_host_error(e: HostError) -> wt::HostError {
    match e {
        HostError::PermissionDenied(m) => wt::HostError::PermissionDenied(m),
        HostError::NotFound(m) => wt::HostError::NotFound(m),
        HostError::Invalid(m) => wt::HostError::Invalid(m),
        HostError::Unavailable(m) => wt::HostError::Unavailable(m),
        HostError::Failed(m) => wt::HostError::Failed(m),
    }
}

fn to_exit(s: ExitStatus) -> wt::ExitStatus {
    match s {
        ExitStatus::Exited(c) => wt::ExitStatus::Exited(c),
        ExitStatus::Signaled(s) => wt::ExitStatus::Signaled(s),
    }
}

fn from_level(l: wt::LogLevel) -> LogLevel {
    match l {
        wt::LogLevel::Trace => LogLevel::Trace,
        wt::LogLevel::Debug => LogLevel::Debug,
        wt::LogLevel::Info => LogLevel::Info,
        wt::LogLevel::Warn => LogLevel::Warn,
        wt::LogLevel::Error => LogLevel::Error,
    }
}

fn from_signal(s: wt::PosixSignal) -> Signal {
    match s {
        wt::PosixSignal::Hup => Signal::Hup,
        wt::PosixSignal::Int => Signal::Int,
        wt::PosixSignal::Quit => Signal::Quit,
        wt::PosixSignal::Kill => Signal::Kill,
        wt::PosixSignal::Usr1 => Signal::Usr1,
        wt::PosixSignal::Usr2 => Signal::Usr2,
        wt::PosixSignal::Term => Signal::Term,
        wt::PosixSignal::Cont => Signal::Cont,
        wt::PosixSignal::Stop => Signal::Stop,
    }
}

fn outcome<T: std::fmt::Display>(r: &Result<T, HostError>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Most bytes a hook may hand the host in one command (args, env, stdin).
const MAX_COMMAND_BYTES: usize = 8 << 20;

impl HookState {
    /// Refuse requests with effects once the call is over in all but name: past its
    /// deadline or cancelled (the guest is about to be stopped; a thread the watchdog could
    /// not bring back in time must not change the gear after its caller moved on).
    fn still_running(&self) -> Result<(), HostError> {
        if self.cancel.is_cancelled() {
            return Err(HostError::Unavailable(
                "the hook was stopped; the host takes no more requests from it".into(),
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(HostError::Unavailable(
                "the hook's time budget is spent; the host takes no more requests from it".into(),
            ));
        }
        Ok(())
    }

    fn command(&self, cmd: wt::Command) -> Result<CommandSpec, HostError> {
        if cmd.program.is_empty() {
            return Err(HostError::Invalid("the program is empty".into()));
        }
        let size = cmd.program.len()
            + cmd.args.iter().map(String::len).sum::<usize>()
            + cmd
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + cmd.stdin.as_ref().map_or(0, Vec::len);
        if size > MAX_COMMAND_BYTES {
            return Err(HostError::Invalid(
                "the command is larger than 8 MiB".into(),
            ));
        }
        if [&cmd.program]
            .into_iter()
            .chain(&cmd.args)
            .chain(cmd.env.iter().flat_map(|(k, v)| [k, v]))
            .any(|s| s.contains('\0'))
        {
            return Err(HostError::Invalid("the command contains a NUL byte".into()));
        }
        for (k, _) in &cmd.env {
            crate::host::check_env_key(k)?;
        }
        Ok(CommandSpec {
            program: cmd.program,
            args: cmd.args,
            env: cmd.env,
            cwd: cmd.cwd,
            stdin: cmd.stdin,
            timeout: cmd.timeout_ms.map(|ms| Duration::from_millis(ms.into())),
        })
    }

    fn check_permission(&self, request: &'static str, program: &str) -> Result<(), HostError> {
        let perms = &self.shared.manifest.permissions;
        let (list, field) = match request {
            "exec" => (&perms.exec, "permissions.exec"),
            _ => (&perms.spawn, "permissions.spawn"),
        };
        if list.allows(program) {
            return Ok(());
        }
        self.shared.record().denials.push(Denial {
            request,
            program: program.to_string(),
            field,
        });
        let allowed = if list.patterns().is_empty() {
            "nothing".to_string()
        } else {
            list.patterns().join(", ")
        };
        Err(HostError::PermissionDenied(format!(
            "{program:?} is not in {field} of cartridge {} (allowed: {allowed})",
            self.shared.manifest.name
        )))
    }

    fn request_context(&self) -> RequestContext {
        RequestContext {
            hook: self.shared.hook,
            network: self.shared.hook == HookKind::Build
                && self.shared.manifest.permissions.build_network,
        }
    }
}

impl wt::Host for HookState {}

impl wit::Host for HookState {
    async fn gear(&mut self) -> wt::GearInfo {
        let g = self.shared.host.gear();
        wt::GearInfo {
            id: g.id,
            name: g.name,
            namespace: g.namespace,
            cartridge: g.cartridge,
            home: g.home,
            endpoints: g
                .endpoints
                .into_iter()
                .map(|e| wt::Endpoint {
                    name: e.name,
                    private_port: e.private_port,
                    protocols: e.protocols,
                })
                .collect(),
        }
    }

    async fn log(&mut self, level: wt::LogLevel, message: String) {
        let message: String = message.chars().take(16 * 1024).collect();
        self.shared
            .log(LogSource::Hook, from_level(level), &message);
    }

    async fn env_get(&mut self, key: String) -> Option<String> {
        self.shared.host.env_get(&key)
    }

    async fn env_list(&mut self) -> Vec<(String, String)> {
        self.shared.host.env_list()
    }

    async fn env_set(&mut self, key: String, value: String) -> Result<(), wt::HostError> {
        let r = self
            .still_running()
            .and_then(|()| crate::host::check_env_key(&key))
            .and_then(|()| {
                if value.len() > 64 * 1024 || value.contains('\0') {
                    Err(HostError::Invalid(format!(
                        "the value of {key} is longer than 64 KiB or contains a NUL byte"
                    )))
                } else {
                    self.shared.host.env_set(&key, &value)
                }
            });
        self.shared.record().request(HostRequest::EnvSet {
            key,
            value,
            outcome: r.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
        r.map_err(to_host_error)
    }

    async fn env_unset(&mut self, key: String) -> Result<(), wt::HostError> {
        let r = self
            .still_running()
            .and_then(|()| crate::host::check_env_key(&key))
            .and_then(|()| self.shared.host.env_unset(&key));
        self.shared.record().request(HostRequest::EnvUnset {
            key,
            outcome: r.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
        r.map_err(to_host_error)
    }

    async fn exec(&mut self, cmd: wt::Command) -> Result<wt::ExecOutput, wt::HostError> {
        let program = cmd.program.clone();
        let args = cmd.args.clone();
        let r = match self.still_running().and_then(|()| self.command(cmd)) {
            Err(e) => Err(e),
            Ok(spec) => match self.check_permission("exec", &spec.program) {
                Err(e) => Err(e),
                Ok(()) => {
                    let started = Instant::now();
                    let r = self.shared.host.exec(self.request_context(), spec).await;
                    self.shared.record().host_calls += started.elapsed();
                    r
                }
            },
        };
        self.shared.record().request(HostRequest::Exec {
            program,
            args,
            outcome: match &r {
                Ok(out) => out.status.to_string(),
                Err(e) => e.to_string(),
            },
        });
        r.map(|out| wt::ExecOutput {
            status: to_exit(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
        .map_err(to_host_error)
    }

    async fn spawn(
        &mut self,
        name: String,
        cmd: wt::Command,
        restart: wt::RestartPolicy,
    ) -> Result<u32, wt::HostError> {
        let program = cmd.program.clone();
        let args = cmd.args.clone();
        let restart = match restart {
            wt::RestartPolicy::Never => RestartPolicy::Never,
            wt::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            wt::RestartPolicy::Always => RestartPolicy::Always,
        };
        let r = match crate::manifest::check_name(&name, 32) {
            Err(problem) => Err(HostError::Invalid(format!(
                "process name {name:?}: {problem}"
            ))),
            Ok(()) => match self.still_running().and_then(|()| self.command(cmd)) {
                Err(e) => Err(e),
                Ok(spec) => match self.check_permission("spawn", &spec.program) {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let started = Instant::now();
                        let r = self
                            .shared
                            .host
                            .spawn(self.request_context(), &name, spec, restart)
                            .await;
                        self.shared.record().host_calls += started.elapsed();
                        r
                    }
                },
            },
        };
        self.shared.record().request(HostRequest::Spawn {
            name,
            program,
            args,
            outcome: outcome(&r),
        });
        r.map_err(to_host_error)
    }

    async fn signal(&mut self, name: String, sig: wt::PosixSignal) -> Result<(), wt::HostError> {
        let signal = from_signal(sig);
        let started = Instant::now();
        let r = match self.still_running() {
            Ok(()) => self.shared.host.signal(&name, signal).await,
            Err(e) => Err(e),
        };
        self.shared.record().host_calls += started.elapsed();
        self.shared.record().request(HostRequest::Signal {
            name,
            signal,
            outcome: r.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
        r.map_err(to_host_error)
    }

    async fn wait(
        &mut self,
        name: String,
        timeout_ms: u32,
    ) -> Result<Option<wt::ExitStatus>, wt::HostError> {
        // never wait past the hook's own deadline
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_millis(timeout_ms.into()).min(left);
        let started = Instant::now();
        let r = match self.still_running() {
            Ok(()) => self.shared.host.wait(&name, timeout).await,
            Err(e) => Err(e),
        };
        self.shared.record().host_calls += started.elapsed();
        self.shared.record().request(HostRequest::Wait {
            name,
            timeout_ms,
            outcome: match &r {
                Ok(Some(s)) => s.to_string(),
                Ok(None) => "running".into(),
                Err(e) => e.to_string(),
            },
        });
        r.map(|s| s.map(to_exit)).map_err(to_host_error)
    }

    async fn processes(&mut self) -> Vec<wt::ProcessInfo> {
        self.shared
            .host
            .processes()
            .into_iter()
            .map(|p| wt::ProcessInfo {
                name: p.name,
                pid: p.pid,
                state: match p.state {
                    ProcessState::Starting => wt::ProcessState::Starting,
                    ProcessState::Running => wt::ProcessState::Running,
                    ProcessState::Backoff => wt::ProcessState::Backoff,
                    ProcessState::Stopped => wt::ProcessState::Stopped,
                    ProcessState::Exited => wt::ProcessState::Exited,
                    ProcessState::Failed => wt::ProcessState::Failed,
                },
                restarts: p.restarts,
                last_exit: p.last_exit.map(to_exit),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_report_holds_a_bounded_amount_of_text() {
        let mut record = Record::default();
        let big = "x".repeat(64 * 1024);
        for _ in 0..100 {
            record.request(HostRequest::EnvSet {
                key: "K".into(),
                value: big.clone(),
                outcome: "ok".into(),
            });
            record.log(LogSource::Hook, LogLevel::Info, big.clone());
        }
        assert!(record.bytes <= REPORT_BYTES_CAP, "{}", record.bytes);
        // 1 MiB holds 15 of them, whatever their kind
        assert_eq!(record.requests.len() + record.logs.len(), 15);
        assert_eq!(record.dropped_requests + record.dropped_log_lines, 185);
    }
}
