//! Write Gearhost cartridge hooks in Rust.
//!
//! A Gearhost cartridge is a directory with a `cartridge.toml` manifest and one
//! WebAssembly component, `hooks.wasm`, that implements the cartridge's
//! lifecycle hooks: `build`, `start`, `stop` and `control`. This crate is the
//! guest side of that contract (the `gearhost:cartridge` WIT package shipped in
//! `wit/`): you implement the [`Cartridge`] trait, export it with
//! [`export_cartridge!`], and build the crate as a `cdylib` for
//! `wasm32-wasip2`. The output is a component the node can load directly.
//!
//! Everything a hook does outside its sandbox goes through the host, which
//! enforces what the manifest allows:
//!
//! - [`Command`] runs programs inside the gear ([`Command::output`]) or starts
//!   supervised long-running processes ([`Command::spawn`]);
//! - [`process`] signals, waits for and lists those processes;
//! - [`env`](mod@env) reads and writes the gear's persistent environment;
//! - [`gear()`] says who and where the gear is;
//! - [`info!`], [`warn!`], [`error!`], [`debug!`] and [`trace!`] write to the
//!   gear's hook log.
//!
//! Files are ordinary `std::fs`: the gear's home is preopened for the hook, and
//! nothing else is. Build paths from [`Gear::home`] (or helpers such as
//! [`Gear::runtime_dir`]) rather than relying on a working directory. Standard
//! output and standard error go to the gear's log.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use gearhost_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Static;
//!
//! impl Cartridge for Static {
//!     const ACTIONS: &'static [&'static str] = &["status"];
//!
//!     fn build(&self) -> Result<()> {
//!         let gear = gear();
//!         std::fs::write(gear.runtime_dir().join("index.html"), "<h1>hi</h1>\n")?;
//!         info!("build: wrote index.html for {}", gear.name);
//!         Ok(())
//!     }
//!
//!     fn start(&self) -> Result<()> {
//!         let gear = gear();
//!         let port = gear.port("http").unwrap_or(8080);
//!         let pid = Command::new("python3")
//!             .args(["-m", "http.server", &port.to_string()])
//!             .current_dir(gear.runtime_dir())
//!             .spawn("web", Restart::OnFailure)?;
//!         info!("start: web is pid {pid}");
//!         Ok(())
//!     }
//!
//!     fn stop(&self) -> Result<()> {
//!         process::stop_gracefully("web", Duration::from_secs(5))?;
//!         Ok(())
//!     }
//!
//!     fn control(&self, action: &str, _args: &[String]) -> Result<String> {
//!         match action {
//!             "status" => {
//!                 let lines: Vec<String> = process::processes()
//!                     .iter()
//!                     .map(|p| format!("{} {}", p.name, p.state))
//!                     .collect();
//!                 Ok(lines.join("\n"))
//!             }
//!             other => Err(Error::unknown_action(other, Self::ACTIONS)),
//!         }
//!     }
//! }
//!
//! gearhost_sdk::export_cartridge!(Static);
//! ```
//!
//! The crate's `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! gearhost-sdk = "0.1"
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and copy
//! `target/wasm32-wasip2/release/<crate>.wasm` beside the manifest as
//! `hooks.wasm`.
//!
//! # Host targets
//!
//! The crate also compiles for the machine you develop on, so `cargo check`,
//! `cargo clippy` and `cargo doc` work as usual. Calls into the host only work
//! inside a Gearhost node, though: on any target other than `wasm32` they panic.
//!
//! # Unsafe code
//!
//! Unsafe code is the generated glue in a hidden module (and the exported
//! functions that [`export_cartridge!`] expands to), plus one hand-written
//! block: on `wasm32-wasip2`, before each hook, the SDK points wasi-libc's
//! private working-directory variable (`__wasilibc_cwd`) at the gear's home
//! (`set_current_dir` would do it too, at a third of a trivial hook's time).
//! Its `SAFETY` comment says why that is sound. A cartridge crate can itself be `#![forbid(unsafe_code)]`:
//! the export macro's expansion does not trip it.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod cartridge;
mod command;
pub mod env;
mod error;
pub mod fs;
mod gear;
pub mod log;
pub mod process;

pub use cartridge::Cartridge;
pub use command::{Command, ExitStatus, Output, Restart};
pub use error::{Error, HostError, Result};
pub use gear::{Endpoint, Gear, gear};
pub use process::{ProcessInfo, ProcessState, Signal};

/// The usual imports for a cartridge: `use gearhost_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::process::{self, Signal};
    pub use crate::{Cartridge, Error, Gear, HostError, Result, env, fs, gear};
    pub use crate::{Command, ExitStatus, Output, Restart};
    pub use crate::{debug, error, info, trace, warn};
}

/// Implementation details used by [`export_cartridge!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    /// Bindings generated from `wit/` (`gearhost:cartridge`, world `cartridge`).
    #[allow(
        unsafe_code,
        missing_docs,
        missing_debug_implementations,
        clippy::all,
        rust_2018_idioms
    )]
    pub mod bindings {
        wit_bindgen::generate!({
            world: "cartridge",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_hooks",
            default_bindings_module: "$crate::__private::bindings",
        });
    }

    pub use crate::cartridge::Adapter;
}
