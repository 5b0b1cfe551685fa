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
//! - [`sysenv`]: the one list of the variables the node sets in every gear.
//! - [`GearHost`]: what a hook may ask of the world; the node implements it
//!   for real gears, [`ScratchHost`] for standalone calls.
//!
//! Everything but the manifest and the host types is behind the default
//! `engine` feature: without it the crate does not build wasmtime, which is
//! how the node's configuration crate and the fuzz targets use the manifest.
//!
//! ```no_run
//! # #[cfg(feature = "engine")]
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

#[cfg(feature = "engine")]
pub mod cache;
#[cfg(feature = "engine")]
mod call;
#[cfg(feature = "engine")]
mod engine;
pub mod fsid;
pub mod host;
#[cfg(feature = "engine")]
mod linking;
pub mod manifest;
#[cfg(feature = "engine")]
mod readdir;
#[cfg(feature = "engine")]
mod stamps;
pub mod sysenv;
#[cfg(feature = "engine")]
mod watchdog;

#[cfg(feature = "engine")]
pub use cache::{CacheError, CacheOutcome, Cached, ComponentCache, Lookup};
#[cfg(feature = "engine")]
pub use call::{Denial, HookCall, HookError, HookOutcome, HookState, HostRequest, LogLine};
#[cfg(feature = "engine")]
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
#[cfg(feature = "engine")]
pub use watchdog::Cancel;

/// Bindings generated from the contract in `sdk/wit`.
#[cfg(feature = "engine")]
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
    #[cfg(feature = "engine")]
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A hook call did not succeed.
    #[cfg(feature = "engine")]
    #[error(transparent)]
    Hook(#[from] HookError),
}
