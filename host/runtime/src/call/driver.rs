//! Driving one hook call: the store with its limits (epoch deadline, memory
//! cap, deny-by-default WASI), the thread the hook runs on, the timers and
//! the cancel that bound it, and the classification of how it ended.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::limiter::{CancelHit, DeadlineHit, MemoryCapHit, MemoryLimiter};
use super::log_stream::LogStream;
use super::outcome::{HookCall, HookError, HookOutcome, Record};
use super::{CallShared, HookState};
use crate::engine::{Cartridge, EPOCH_TICK, error_chain};
use crate::host::{GearHost, HookKind, LogSource};
use crate::watchdog::{Cancel, Watch, Watched};

/// Slack on top of a budget for the outer timer that catches hooks stuck in
/// a host call (the engine's epoch check catches hooks stuck in wasm code).
const OUTER_TIMER_SLACK: Duration = Duration::from_millis(50);

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

    /// Prepare the store and run the hook in it, polled by the caller's own task (a runtime
    /// for few calls: see [`crate::Runtime::for_few_calls`]).
    async fn run_in_caller(self) -> Ran {
        let store = match self.cartridge.prepare(&self) {
            Ok(store) => store,
            Err(e) => return (Err(e), None, None),
        };
        let store_ready = self.started.elapsed();
        let (result, instantiated) = self.run(store).await;
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
        // The calling thread is the hook's own (see `call_cancellable`; in a
        // runtime for few calls, the caller's), and the watchdog breaks it
        // out of a file operation that waits too long.
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
    /// there in its file operations; see [`Cartridge::call_cancellable`]), or,
    /// in a runtime for few calls, on the caller's own.
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
    /// the runtime's watchdog breaks it out when the call is due. A runtime
    /// for few calls ([`crate::Runtime::for_few_calls`]) polls it in the
    /// calling task instead. Must be called from within a tokio runtime with
    /// time enabled.
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
        let watchdog = &self.runtime.watchdog;
        // a runtime for few calls has no watchdog thread: an alarm on this thread holds the
        // call's deadline, and is stopped once the call is over (`_alarm`, dropped last)
        let watched = if cancel.is_cancelled() {
            Err(limits.cancelled(cancel))
        } else if self.runtime.calls_in_caller {
            watchdog
                .watch_in_caller(deadline, cancel.clone(), &self.runtime.engine)
                .map(|(watch, alarm)| (watch, Some(alarm)))
                .map_err(|e| {
                    limits.host_error(format!(
                        "cannot set the timer that holds the hook's deadline: {e}"
                    ))
                })
        } else {
            Ok((watchdog.watch(deadline, cancel.clone()), None))
        };
        let (result, instantiated, store_ready, _alarm) = match watched {
            Err(e) => (Err(e), None, None, None),
            Ok((watch, alarm)) => {
                let job = Job {
                    cartridge: self.clone(),
                    host,
                    stdout: stdout.clone(),
                    stderr,
                    call,
                    owner,
                    watch,
                    cancel: cancel.clone(),
                    shared: shared.clone(),
                    limits: limits.clone(),
                    started,
                };
                let (result, instantiated, store_ready) = if alarm.is_some() {
                    job.run_in_caller().await
                } else {
                    run_on_own_thread(job, &limits, cancel).await
                };
                (result, instantiated, store_ready, alarm)
            }
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
