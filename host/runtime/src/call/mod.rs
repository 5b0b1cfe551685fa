//! One hook call. The pieces, each in its own file:
//!
//! - `outcome`: what a call reports ([`HookCall`], [`HookOutcome`],
//!   [`HookError`], the requests and denials) and the bounded record it is
//!   collected in;
//! - `limiter`: the memory cap and the markers of a stopped call's trap;
//! - `log_stream`: the hook's stdout and stderr, forwarded line by line;
//! - `host_impl`: the `host` interface of the contract, with the
//!   manifest's permissions enforced;
//! - `driver`: the store, the thread, the timers and the cancel of one
//!   call, and how it ended ([`Cartridge::call`](crate::Cartridge::call)).
//!
//! This file holds what they share: the per-call context and the store data.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::host::{GearHost, HookKind, LogLevel, LogSource};
use crate::manifest::Manifest;
use crate::watchdog::Cancel;

mod driver;
mod host_impl;
mod limiter;
mod log_stream;
mod outcome;

pub(crate) use outcome::serialize_duration;
pub use outcome::{Denial, HookCall, HookError, HookOutcome, HostRequest, LogLine};

use limiter::MemoryLimiter;
use outcome::Record;

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
