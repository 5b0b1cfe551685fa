//! The messages exchanged between the node side and `gearhost-init` over two inherited pipes.
//!
//! The node writes one [`HelperSpec`] as JSON to fd 3 and closes it. The helper writes
//! newline-separated [`HelperMessage`]s to fd 4; the node reads until end of file, which comes
//! when the gear command has been executed (the descriptor is close-on-exec) or the helper died.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::report::LayerReport;
use crate::spec::SandboxSpec;

/// Descriptor the helper reads its spec from.
pub const SPEC_FD: i32 = 3;
/// Descriptor the helper writes its messages to.
pub const REPORT_FD: i32 = 4;
/// Descriptor of a pidfd for the node process (absent when detached).
pub const PARENT_FD: i32 = 5;

/// The fully resolved spec the helper works from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperSpec {
    /// The caller's spec (stdio is passed as descriptors 0 to 2 instead).
    pub spec: SandboxSpec,
    /// `cgroup.procs` files to write the helper's pid into.
    pub cgroup_procs: Vec<PathBuf>,
    /// The SELinux label to execute the command under, when SELinux is enabled.
    pub exec_label: Option<String>,
    /// The SELinux context of the gear's files, given to its private `/tmp` and `/dev/shm`
    /// (`context=` mount option), when SELinux is enabled.
    pub file_label: Option<String>,
    /// Canonical home path (resolved by the node).
    pub home: PathBuf,
    /// Bind sources, each either below the home (relative path) or canonical absolute.
    pub ro_binds: Vec<ResolvedBind>,
    /// Read-write bind sources, resolved the same way.
    pub rw_binds: Vec<ResolvedBind>,
    /// Whether fd [`PARENT_FD`] holds a pidfd of the node to watch.
    pub watch_parent: bool,
}

/// A bind source as the helper must open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedBind {
    /// Either a path relative to the gear's home (opened beneath it without symlinks) or an
    /// absolute canonical path (opened without symlinks).
    pub source: BindSource,
    /// Target inside the gear.
    pub target: PathBuf,
}

/// Where a bind comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindSource {
    /// Below the gear's home (gear-controlled: no symlink may be followed).
    InHome(PathBuf),
    /// Elsewhere on the host (node-controlled, already canonical).
    Host(PathBuf),
}

/// A setup step of the helper that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    /// The step, e.g. `pivot_root`.
    pub step: String,
    /// What went wrong, naming the path involved.
    pub detail: String,
    /// The errno, when a system call failed.
    pub errno: Option<i32>,
}

/// One message from the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperMessage {
    /// Every layer is in place; the command is about to be executed.
    Ready(Box<LayerReport>),
    /// A setup step failed; the helper exits.
    Failed(SetupFailure),
    /// execve of the command failed.
    ExecFailed {
        /// The program.
        program: String,
        /// The errno.
        errno: i32,
    },
}
