//! The crate's error type, gathering the errors of each layer.

use std::io;
use std::path::PathBuf;

use crate::cgroup::CgroupError;
use crate::protocol::SetupFailure;
use crate::selinux::SelinuxError;
use crate::spec::SpecError;

/// Why a gear could not be started, waited for or torn down.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec was refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The helper binary is missing.
    #[error(
        "gearhost-init not found at {path}: install it next to the node binary, set GEARHOST_INIT, or set the spec's init_path"
    )]
    InitNotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file operation on the node side failed.
    #[error("could not {action} {path}: {source}; {hint}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// Starting the helper failed.
    #[error("could not {what}: {source}; check the node's process and descriptor limits")]
    Spawn {
        /// The step.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The cgroup layer failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The SELinux layer failed while SELinux is enabled (the gear is not started).
    #[error(transparent)]
    Selinux(#[from] SelinuxError),
    /// A setup step inside the sandbox failed.
    #[error("gear setup failed at {}: {}", .0.step, .0.detail)]
    Setup(SetupFailure),
    /// The gear command could not be executed.
    #[error(
        "could not execute {program} inside the gear: {source}; check that it exists in the gear's view and is executable"
    )]
    Exec {
        /// The program.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The helper said something unexpected or nothing at all.
    #[error("gearhost-init: {0}")]
    Protocol(String),
    /// Waiting for the gear failed.
    #[error("could not wait for gear process {pid}: {source}; was it already reaped elsewhere?")]
    Wait {
        /// Its host pid.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
    /// Signalling the gear failed.
    #[error("could not signal gear process {pid}: {source}; it may have exited already")]
    Signal {
        /// Its host pid.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
}
