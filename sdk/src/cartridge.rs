//! The [`Cartridge`] trait and the [`export_cartridge!`](crate::export_cartridge) macro
//! that turns an implementation of it into the component's `hooks` export.

use std::marker::PhantomData;

use crate::__private::bindings::exports::gearhost::cartridge::hooks::{Guest, HookError};
use crate::Result;

/// The lifecycle hooks of a cartridge.
///
/// Every method has a default, so a cartridge implements only the hooks it
/// needs. Export the implementation with
/// [`export_cartridge!`](crate::export_cartridge).
///
/// # Why `&self` and `Default`
///
/// The host runs every hook call in a fresh WebAssembly instance, so nothing
/// in memory survives from one call to the next (state that must persist
/// belongs in the gear's [`env`](mod@crate::env) or in files under its home). The
/// exported glue therefore builds a new value with [`Default::default`] for
/// each call and calls the hook on it. Taking `&self` keeps the methods
/// ordinary trait methods, and a `Default` implementation is the natural place
/// to read configuration every hook needs (for example from
/// [`env::get`](crate::env::get)).
///
/// ```no_run
/// use gearhost_sdk::prelude::*;
///
/// #[derive(Default)]
/// struct Echo;
///
/// impl Cartridge for Echo {
///     const ACTIONS: &'static [&'static str] = &["echo"];
///
///     fn control(&self, action: &str, args: &[String]) -> Result<String> {
///         match action {
///             "echo" => Ok(args.join(" ")),
///             other => Err(Error::unknown_action(other, Self::ACTIONS)),
///         }
///     }
/// }
///
/// gearhost_sdk::export_cartridge!(Echo);
/// ```
pub trait Cartridge: Default {
    /// The `control` actions this cartridge implements, for error messages
    /// and help. The default [`control`](Cartridge::control) supports none.
    const ACTIONS: &'static [&'static str] = &[];

    /// Turn the gear's current deployment into something runnable: install
    /// dependencies, compile, render configuration. Runs under the manifest's
    /// `build-timeout`, and may use the network only when the manifest and the
    /// node allow it. Default: nothing to do.
    fn build(&self) -> Result<()> {
        Ok(())
    }

    /// Start the gear's processes, usually with
    /// [`Command::spawn`](crate::Command::spawn). Default: nothing to start.
    fn start(&self) -> Result<()> {
        Ok(())
    }

    /// Stop the gear's processes gracefully, usually with
    /// [`process::stop_gracefully`](crate::process::stop_gracefully).
    /// Default: nothing to stop.
    fn stop(&self) -> Result<()> {
        Ok(())
    }

    /// Run the named `action` with its `args` and return its output for the
    /// user. Default: an `unknown-action` error listing
    /// [`ACTIONS`](Cartridge::ACTIONS).
    fn control(&self, action: &str, args: &[String]) -> Result<String> {
        let _ = args;
        Err(crate::Error::unknown_action(action, Self::ACTIONS))
    }
}

/// Connects a [`Cartridge`] to the generated `hooks` export.
#[doc(hidden)]
#[derive(Debug)]
pub struct Adapter<T>(PhantomData<T>);

/// Make relative paths resolve against the gear's home, as they do for the
/// gear's own processes. The host passes the home as `GEAR_HOME`.
///
/// On `wasm32-wasip2` the working directory is wasi-libc's `__wasilibc_cwd`,
/// a path string that relative paths are joined to. `set_current_dir` would
/// also look the directory up, which makes libc list the preopened
/// directories and stat the home: a third of a trivial hook's time. The host
/// guarantees the home exists (it is preopened there), so the string is set
/// directly; the first file operation lists the preopens as it would anyway.
fn enter_home() {
    let Ok(home) = std::env::var("GEAR_HOME") else {
        return;
    };
    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    if home.starts_with('/')
        && let Ok(home) = std::ffi::CString::new(home.as_str())
    {
        set_libc_cwd(home);
        return;
    }
    let _ = std::env::set_current_dir(home);
}

/// Points wasi-libc's working directory at `dir`, which lives as long as the
/// instance (a fresh one per hook call).
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[allow(unsafe_code)]
fn set_libc_cwd(dir: std::ffi::CString) {
    unsafe extern "C" {
        static mut __wasilibc_cwd: *mut std::ffi::c_char;
    }
    let dir = dir.into_raw();
    // SAFETY: a guest instance runs one hook call on one thread, so nothing
    // reads the variable while it is written. wasi-libc only reads the string
    // and, on a later chdir, replaces the pointer without freeing what it did
    // not allocate itself; `dir` is NUL-terminated and leaked, so it stays
    // valid for the instance's life.
    unsafe {
        __wasilibc_cwd = dir;
    }
}

impl<T: Cartridge> Guest for Adapter<T> {
    fn build() -> Result<(), HookError> {
        enter_home();
        T::default().build().map_err(Into::into)
    }

    fn start() -> Result<(), HookError> {
        enter_home();
        T::default().start().map_err(Into::into)
    }

    fn stop() -> Result<(), HookError> {
        enter_home();
        T::default().stop().map_err(Into::into)
    }

    fn control(action: String, args: Vec<String>) -> Result<String, HookError> {
        enter_home();
        T::default().control(&action, &args).map_err(Into::into)
    }
}

/// Exports a [`Cartridge`] implementation as the component's hooks.
///
/// Use it exactly once, at the top level of the cartridge crate (a `cdylib`),
/// with the type that implements [`Cartridge`]:
///
/// ```no_run
/// #[derive(Default)]
/// struct Minimal;
///
/// impl gearhost_sdk::Cartridge for Minimal {}
///
/// gearhost_sdk::export_cartridge!(Minimal);
/// ```
///
/// The crate needs no dependency other than `gearhost-sdk`.
#[macro_export]
macro_rules! export_cartridge {
    ($ty:ty) => {
        const _: () = {
            type __GearhostCartridgeHooks = $crate::__private::Adapter<$ty>;
            $crate::__private::bindings::__export_hooks!(
                __GearhostCartridgeHooks with_types_in $crate::__private::bindings
            );
        };
    };
}
