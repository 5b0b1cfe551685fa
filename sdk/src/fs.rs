//! Files in the gear's home, with errors that name the path.
//!
//! Thin wrappers over [`std::fs`]: a hook sees the gear's directories through
//! WASI, and [`std::fs`] works on them directly; these functions only turn an
//! [`std::io::Error`] into a hook [`Error`] whose message says which path
//! failed and how, so a cartridge can use `?` without losing that.
//!
//! ```no_run
//! use gearhost_sdk::{fs, gear};
//!
//! # fn main() -> gearhost_sdk::Result<()> {
//! let conf = gear().runtime_dir().join("app.conf");
//! fs::write(&conf, "port = 8080\n")?;
//! assert!(fs::read_to_string(&conf)?.contains("8080"));
//! # Ok(())
//! # }
//! ```

use std::io;
use std::path::Path;

use crate::Error;

fn failed(what: &str, path: &Path, e: &io::Error) -> Error {
    Error::new("io", format!("{what} {}: {e}", path.display()))
}

/// Reads a whole file as UTF-8 text.
///
/// # Errors
///
/// Code `io`, naming the path, when it cannot be read.
pub fn read_to_string(path: impl AsRef<Path>) -> Result<String, Error> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|e| failed("cannot read", path, &e))
}

/// Writes `contents` to a file, creating or truncating it.
///
/// # Errors
///
/// Code `io`, naming the path, when it cannot be written.
pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    let path = path.as_ref();
    std::fs::write(path, contents).map_err(|e| failed("cannot write", path, &e))
}

/// Creates a directory and any missing parents; an existing one is fine.
///
/// # Errors
///
/// Code `io`, naming the path, when it cannot be created.
pub fn create_dir_all(path: impl AsRef<Path>) -> Result<(), Error> {
    let path = path.as_ref();
    std::fs::create_dir_all(path).map_err(|e| failed("cannot create", path, &e))
}

/// Removes a directory and everything in it; a missing one is fine.
///
/// # Errors
///
/// Code `io`, naming the path, when it exists but cannot be removed.
pub fn remove_dir_all(path: impl AsRef<Path>) -> Result<(), Error> {
    let path = path.as_ref();
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(failed("cannot remove", path, &e)),
        _ => Ok(()),
    }
}

/// Removes a file; a missing one is fine.
///
/// # Errors
///
/// Code `io`, naming the path, when it exists but cannot be removed.
pub fn remove_file(path: impl AsRef<Path>) -> Result<(), Error> {
    let path = path.as_ref();
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(failed("cannot remove", path, &e)),
        _ => Ok(()),
    }
}

/// The total size in bytes of the files under `path` (a file's own size when
/// it is one; 0 when it does not exist). Symbolic links are not followed.
pub fn size_of(path: impl AsRef<Path>) -> u64 {
    fn walk(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| walk(&entry.path()))
            .sum()
    }
    walk(path.as_ref())
}
