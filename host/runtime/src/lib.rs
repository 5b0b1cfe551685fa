//! Gearhost's hook runtime: loads cartridge components with wasmtime and runs
//! their lifecycle hooks (`build`, `start`, `stop`, `control`) fast and
//! bounded.
//!
//! - [`manifest`]: `cartridge.toml`, parsed and validated.
//! - [`Runtime`]: the process-wide engine; [`Runtime::load_dir`] validates a
//!   cartridge against the contract and compiles it once (cached on disk).
//! - [`Cartridge::call`]: one hook call in a fresh instance with an epoch
//!   deadline, a memory cap, deny-by-default WASI and the manifest's
//!   permissions enforced on every `exec` and `spawn`, on a thread of its
//!   own that a watchdog breaks out of a blocked file operation when the
//!   call is due; [`Cartridge::call_cancellable`] with a [`Cancel`] to stop
//!   it from outside.
//! - [`GearHost`]: what a hook may ask of the world; the node implements it
//!   for real gears, [`ScratchHost`] for standalone calls.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use gearhost_runtime::{GearInfo, HookCall, Runtime, RuntimeConfig, ScratchHost};
//!
//! let runtime = Runtime::new(RuntimeConfig::with_cache_dir("/tmp/gearhost-cache".into()))?;
//! let cartridge = runtime.load_dir("examples/hello-cartridge".as_ref())?;
//! let gear = GearInfo {
//!     id: "scratch".into(),
//!     name: "demo".into(),
//!     namespace: "local".into(),
//!     cartridge: cartridge.manifest().name.clone(),
//!     home: "/gear".into(),
//!     endpoints: vec![],
//! };
//! let host = Arc::new(ScratchHost::new(gear, "/tmp/demo-gear".into()));
//! let outcome = cartridge
//!     .call(host, HookCall::Control { action: "greet".into(), args: vec![] })
//!     .await;
//! println!("{:?}", outcome.result);
//! # Ok(()) }
//! ```

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod cache;
mod call;
mod engine;
pub mod fsid;
pub mod host;
pub mod manifest;
mod readdir;
mod watchdog;

pub use cache::{CacheError, CacheOutcome, ComponentCache};
pub use call::{Denial, HookCall, HookError, HookOutcome, HookState, HostRequest, LogLine};
pub use engine::{
    CONTRACT_PACKAGE, CONTRACT_VERSION, Cartridge, ComponentInfo, EPOCH_TICK, LoadError, Runtime,
    RuntimeConfig,
};
pub use host::{
    CommandSpec, EndpointInfo, ExecOutput, ExitStatus, GearHost, GearInfo, HookKind, HostError,
    LogLevel, LogSource, Preopen, ProcessInfo, ProcessState, RequestContext, RestartPolicy,
    ScratchHost, Signal,
};
pub use manifest::{Manifest, ManifestError};
pub use watchdog::Cancel;

/// Bindings generated from the contract in `sdk/wit`.
#[allow(missing_docs, missing_debug_implementations)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../sdk/wit",
        world: "cartridge",
        imports: { default: async },
        exports: { default: async },
    });
}

/// Every error the runtime reports, gathered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A hook call did not succeed.
    #[error(transparent)]
    Hook(#[from] HookError),
}
