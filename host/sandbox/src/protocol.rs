//! The messages exchanged between the node side and `gearhost-init` over inherited descriptors.
//!
//! fd 3 is one end of a unix `SOCK_SEQPACKET` socket pair: the node sends one message holding a
//! [`HelperSpec`] as JSON with the gear's descriptors attached (see [`SpecFds`]), then closes its
//! end. The helper may have been started long before (a warm helper, see `launch`), so every
//! host object the gear's root needs from the node's current view — home, bind sources,
//! network namespace, standard streams — travels as a descriptor, never as a path. The helper
//! writes newline-separated [`HelperMessage`]s to fd 4; the node reads until end of file, which
//! comes when the gear command has been executed (the descriptor is close-on-exec) or the
//! helper died. fd 5 is a pidfd of the node; fd 6, when open, the mount namespace to start from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::report::LayerReport;
use crate::spec::SandboxSpec;

/// Descriptor (a `SOCK_SEQPACKET` socket) the helper receives its spec on.
pub const SPEC_FD: i32 = 3;
/// Descriptor the helper writes its messages to.
pub const REPORT_FD: i32 = 4;
/// Descriptor of a pidfd for the node process (closed by the helper when detached).
pub const PARENT_FD: i32 = 5;
/// Descriptor of the mount namespace the helper makes its own from, when the node gave one
/// ([`crate::warm::hide_from_helpers`]); not open otherwise, and the helper copies the node's.
pub const TEMPLATE_FD: i32 = 6;

/// Where the gear's init keeps its copy of the reading end of the command's stdout pipe
/// (a spec with `keep_output`). High, so that nothing the init opens while setting up is
/// already there.
pub const KEPT_STDOUT_FD: i32 = 200;
/// Where the gear's init keeps its copy of the reading end of the command's stderr pipe.
pub const KEPT_STDERR_FD: i32 = 201;
/// The size the node gives a kept output pipe (`F_SETPIPE_SZ`): what a command may write
/// while no node reads before it has to wait.
pub const KEPT_PIPE_BYTES: i32 = 1 << 20;

/// Most descriptors one spec message may carry (the kernel's own limit is 253).
pub const MAX_SPEC_FDS: usize = 128;

/// Largest spec message, in bytes.
pub const MAX_SPEC_BYTES: usize = 4 << 20;

/// The order of the descriptors attached to the spec message: the three standard streams,
/// the gear's home, the gear's network namespace when the spec names one or the caller made
/// it ([`HelperSpec::fresh_netns`]), the root tree when the spec gives one, the gear's cgroup2
/// leaf when there is one ([`HelperSpec::cgroup_fd`]), then one descriptor per read-only bind
/// and per read-write bind, in the spec's order, then the output pipes the init keeps (see
/// [`HelperSpec::kept`]).
#[derive(Debug)]
pub struct SpecFds<T> {
    /// Standard input, output and error for the gear command.
    pub stdio: [T; 3],
    /// The gear's home, an `O_PATH` descriptor opened without following symlinks.
    pub home: T,
    /// The gear's network namespace, when it joins one.
    pub netns: Option<T>,
    /// The gear's root, a detached clone of [`crate::SandboxSpec::root`], when it has one.
    pub root: Option<T>,
    /// The directory of the gear's leaf on a cgroup v2 layout (`O_RDONLY | O_DIRECTORY`): the
    /// command is cloned into it (see [`HelperSpec::cgroup_fd`]).
    pub cgroup: Option<T>,
    /// Read-only bind sources (`O_PATH`), with whether each is a directory.
    pub ro: Vec<(T, bool)>,
    /// Read-write bind sources (`O_PATH`), with whether each is a directory.
    pub rw: Vec<(T, bool)>,
    /// Reading ends of output pipes for the init to keep open (never read).
    pub kept: Vec<T>,
}

impl<T> SpecFds<T> {
    /// The descriptors in wire order.
    pub fn into_vec(self) -> Vec<T> {
        let [a, b, c] = self.stdio;
        let mut all = vec![a, b, c, self.home];
        all.extend(self.netns);
        all.extend(self.root);
        all.extend(self.cgroup);
        all.extend(self.ro.into_iter().map(|(fd, _)| fd));
        all.extend(self.rw.into_iter().map(|(fd, _)| fd));
        all.extend(self.kept);
        all
    }

    /// Rebuilds the structure from descriptors in wire order, checking the count.
    pub fn from_vec(
        fds: Vec<T>,
        has_netns: bool,
        has_root: bool,
        has_cgroup: bool,
        ro_dirs: &[bool],
        rw_dirs: &[bool],
        kept: usize,
    ) -> Result<Self, String> {
        let expected = 4
            + usize::from(has_netns)
            + usize::from(has_root)
            + usize::from(has_cgroup)
            + ro_dirs.len()
            + rw_dirs.len()
            + kept;
        if fds.len() != expected {
            return Err(format!(
                "expected {expected} descriptors with the spec, got {}",
                fds.len()
            ));
        }
        let mut it = fds.into_iter();
        let mut next = || it.next().expect("count checked above");
        let stdio = [next(), next(), next()];
        let home = next();
        let netns = has_netns.then(&mut next);
        let root = has_root.then(&mut next);
        let cgroup = has_cgroup.then(&mut next);
        let ro = ro_dirs.iter().map(|d| (next(), *d)).collect();
        let rw = rw_dirs.iter().map(|d| (next(), *d)).collect();
        let kept = (0..kept).map(|_| next()).collect();
        Ok(SpecFds {
            stdio,
            home,
            netns,
            root,
            cgroup,
            ro,
            rw,
            kept,
        })
    }
}

/// The fully resolved spec the helper works from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperSpec {
    /// The caller's spec (stdio is passed as descriptors 0 to 2 instead).
    pub spec: SandboxSpec,
    /// `cgroup.procs` files to write the helper's pid into.
    pub cgroup_procs: Vec<PathBuf>,
    /// On a cgroup v2 layout, the leaf of `cgroup_procs` comes as a descriptor too
    /// ([`SpecFds::cgroup`]), and the helper does not join before the fork: it clones the
    /// command into the leaf (`CLONE_INTO_CGROUP`), so no migration is on the start's path, and
    /// follows it there itself once the command runs. A kernel without `CLONE_INTO_CGROUP`
    /// gets the join before the fork.
    #[serde(default)]
    pub cgroup_fd: bool,
    /// The SELinux label to execute the command under, when SELinux is enabled.
    pub exec_label: Option<String>,
    /// The SELinux context of the gear's files, given to its private `/tmp` and `/dev/shm`
    /// (`context=` mount option), when SELinux is enabled.
    pub file_label: Option<String>,
    /// Canonical home path (resolved by the node; for messages, the home itself arrives as a
    /// descriptor).
    pub home: PathBuf,
    /// Targets of the read-only binds, with whether each source is a directory (the sources
    /// arrive as descriptors).
    pub ro_binds: Vec<(PathBuf, bool)>,
    /// Targets of the read-write binds, the same way.
    pub rw_binds: Vec<(PathBuf, bool)>,
    /// The network namespace descriptor ([`SpecFds::netns`]) is one the caller made for this
    /// gear alone in isolated mode, loopback up: the helper enters it instead of making one.
    #[serde(default)]
    pub fresh_netns: bool,
    /// Whether the helper watches the node's pidfd (fd [`PARENT_FD`]) and takes the gear down
    /// with the node.
    pub watch_parent: bool,
    /// Rootless mode: the helper is root of a user namespace of its own, where only uid and gid
    /// 0 exist (mapped to the non-root caller outside); the gear runs as that 0, with no
    /// capabilities, and has no cgroup.
    #[serde(default)]
    pub rootless: bool,
    /// Make a pseudo-terminal in the gear for the command, and send its controlling side back
    /// on fd [`SPEC_FD`] (one byte with the descriptor) before the command runs.
    #[serde(default)]
    pub terminal: bool,
    /// The descriptor number at which the init keeps each kept output pipe, in the order of
    /// [`SpecFds::kept`] ([`KEPT_STDOUT_FD`], [`KEPT_STDERR_FD`]).
    #[serde(default)]
    pub kept: Vec<i32>,
}

impl HelperSpec {
    /// The uid and gid the gear runs as, inside its namespaces.
    pub fn ids(&self) -> (u32, u32) {
        if self.rootless {
            (0, 0)
        } else {
            (self.spec.uid, self.spec.gid)
        }
    }
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
    /// The part of the root shared by every gear is built; the helper waits for its spec.
    Prepared,
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
