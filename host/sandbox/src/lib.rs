//! Starts a gear's processes confined in layers: namespaces, a pivot_root into a per-gear root,
//! an unprivileged uid with no capabilities and `no_new_privs`, seccomp, Landlock, SELinux
//! (where enabled), cgroups and rlimits. Breaking one layer still leaves the others.
//!
//! Every unsafe block says why it is sound, and unsafe code is allowed only in the three modules
//! that need it: `sys` (the system calls `nix` does not wrap), [`helper`] (the gear's first
//! process) and [`launch`] (see "Where unsafe code lives" in docs/ARCHITECTURE.md). The API is
//! small and safe:
//!
//! - build a [`SandboxSpec`], call [`Sandbox::spawn`], get a [`Sandboxed`] (pid, pidfd, stdio,
//!   wait, kill, teardown) and its [`LayerReport`];
//! - [`check::host_capabilities`] says which layers this machine enforces;
//! - [`selinux::mcs_level_for_uid`] is the uid to MCS level mapping.
//!
//! Operating-system plumbing that is not confinement (descriptor passing, the terminal relay,
//! the frontend's batched sends, interrupting a blocked thread) lives in `gearhost-sys`.
//!
//! The work inside the sandbox is done by the small `gearhost-init` binary of this crate (see
//! [`launch`] for how it is started and [`find_init`] for where it is looked up).
//!
//! ```no_run
//! use gearhost_sandbox::{Sandbox, SandboxSpec};
//!
//! let mut spec = SandboxSpec::new("g1", 5001, 5001, "/var/lib/gearhost/gears/g1", vec!["/bin/true".into()]);
//! spec.limits.memory_bytes = Some(256 << 20);
//! let mut gear = Sandbox::spawn(spec)?;
//! println!("{}", gear.report());
//! let status = gear.wait()?;
//! gear.teardown()?;
//! # Ok::<(), gearhost_sandbox::SandboxError>(())
//! ```
pub mod adopt;
pub mod cgroup;
pub mod check;
mod confine;
mod error;
#[doc(hidden)]
#[allow(unsafe_code)] // the child's side of the clone: raw descriptors, prctl, execve
pub mod helper;
#[allow(unsafe_code)] // borrows the node's standard descriptors
pub mod launch;
pub mod netns;
pub mod overlay;
#[doc(hidden)]
pub mod protocol;
pub mod quota;
pub mod report;
mod rootfs;
pub mod seccomp;
pub mod selinux;
pub mod spec;
#[allow(unsafe_code)] // the system calls nix does not wrap, as safe functions
mod sys;
pub mod warm;

/// For the workspace's own unit tests.
#[doc(hidden)]
pub mod testing {
    /// Whether a test that needs root (`what` says for what) may run here:
    /// without root it is skipped, unless `GEARHOST_REQUIRE_PRIVILEGED=1`
    /// is set, when it fails.
    pub fn privileged(what: &str) -> bool {
        if nix::unistd::Uid::effective().is_root() {
            return true;
        }
        assert!(
            std::env::var("GEARHOST_REQUIRE_PRIVILEGED").map_or(true, |v| v != "1"),
            "this test needs root ({what}) and GEARHOST_REQUIRE_PRIVILEGED=1 forbids skipping it"
        );
        eprintln!("skipped: needs root ({what})");
        false
    }

    /// The lines of `pid`'s `/proc/<pid>/mountinfo` whose mount point is `dir` or below it;
    /// an error when the table cannot be read (the process is gone), never an empty list.
    pub fn mountinfo_below(pid: u32, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        let dir = dir.to_string_lossy().into_owned();
        Ok(table
            .lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| p == dir || p.starts_with(&format!("{dir}/")))
            })
            .map(str::to_string)
            .collect())
    }

    /// The children of `parent` running `gearhost-init` (waiting helpers, gears' inits).
    pub fn helpers_of(parent: u32) -> Vec<u32> {
        let parent = parent.to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            if let Some((comm, rest)) = stat.split_once(") ")
                && comm.ends_with("(gearhost-init")
                && rest.split(' ').nth(1) == Some(parent.as_str())
            {
                found.push(pid);
            }
        }
        found
    }
}

pub use adopt::Adopted;
pub use cgroup::{CgroupError, CgroupLayout, CgroupReport, TeardownReport};
pub use error::SandboxError;
pub use launch::{INIT_NAME, Sandbox, Sandboxed, Signal, find_init};
pub use report::LayerReport;
pub use spec::{
    Bind, CgroupPlacement, Limits, NetworkMode, Rlimits, SandboxSpec, SelinuxLabel, Stdio,
    StdioSpec,
};
pub use warm::{keep_warm, start_forked_helper, wait_warm, warm_status};

/// Tears down a gear's cgroup by placement: kills any process left in it, waits for them to be
/// gone and removes the cgroup on every hierarchy. Use it for gears whose [`Sandboxed`] handle
/// is gone (e.g. after a node restart).
pub fn teardown(placement: &CgroupPlacement) -> Result<TeardownReport, SandboxError> {
    Ok(cgroup::teardown(placement)?)
}
