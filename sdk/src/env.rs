//! The gear's environment: variables that persist with the gear and that
//! every process of the gear sees.
//!
//! A hook's own process environment (`std::env::var`) is not the gear's: the
//! host gives hooks at most a few variables of its own and inherits nothing.
//! These functions ask the host for the gear's environment. Variables set here
//! live in the cartridge's layer of the gear's environment, so an app
//! developer's own settings are not overwritten by a cartridge.
//!
//! ```no_run
//! use gearhost_sdk::env;
//!
//! # fn main() -> gearhost_sdk::Result<()> {
//! if env::get("APP_SECRET").is_none() {
//!     env::set("APP_SECRET", "generated-once")?;
//! }
//! for (key, value) in env::list() {
//!     println!("{key}={value}");
//! }
//! # Ok(())
//! # }
//! ```

use crate::__private::bindings::gearhost::cartridge::host;
use crate::HostError;

/// The gear's effective value of `key`, if set.
pub fn get(key: &str) -> Option<String> {
    host::env_get(key)
}

/// Sets `key` to `value` in the cartridge's layer; it persists with the gear.
///
/// # Errors
///
/// [`HostError::Invalid`] for a malformed key, or whatever else the host
/// reports.
pub fn set(key: &str, value: &str) -> Result<(), HostError> {
    host::env_set(key, value).map_err(Into::into)
}

/// Removes `key` from the cartridge's layer.
///
/// # Errors
///
/// [`HostError::Invalid`] for a malformed key, or whatever else the host
/// reports.
pub fn unset(key: &str) -> Result<(), HostError> {
    host::env_unset(key).map_err(Into::into)
}

/// The gear's effective environment, sorted by key.
pub fn list() -> Vec<(String, String)> {
    host::env_list()
}
