//! The layer report: what each confinement layer actually did for one gear process.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupReport;
use crate::selinux::SelinuxReport;
use crate::spec::NetworkMode;

/// Per layer, what was applied to a gear process. Produced inside the sandbox after the last
/// layer (seccomp) was installed, completed by the node with the cgroup layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Namespaces.
    pub namespaces: NamespaceReport,
    /// The gear's root filesystem.
    pub filesystem: FilesystemReport,
    /// Uid, gid, capabilities, no_new_privs, descriptors.
    pub credentials: CredentialReport,
    /// The seccomp filter.
    pub seccomp: SeccompReport,
    /// Landlock.
    pub landlock: LandlockReport,
    /// SELinux.
    pub selinux: SelinuxReport,
    /// cgroups (filled in by the node side).
    pub cgroup: Option<CgroupReport>,
    /// rlimits.
    pub rlimits: Vec<RlimitReport>,
    /// Whether the gear dies with the process that started it.
    pub dies_with_parent: bool,
}

/// What the namespace layer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// Namespaces the gear has of its own (`pid`, `mnt`, `uts`, `ipc`, `net`, `cgroup`).
    pub unshared: Vec<String>,
    /// The hostname set in the gear's UTS namespace.
    pub hostname: String,
    /// The network mode.
    pub network: NetworkMode,
    /// Whether `lo` was brought up (isolated mode only).
    pub loopback_up: bool,
    /// How nested user namespaces are prevented.
    pub nested_userns: String,
    /// Rootless mode: the gear's user namespace and its one mapping.
    #[serde(default)]
    pub user: Option<String>,
}

/// What the filesystem layer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemReport {
    /// How the root was built.
    pub root: String,
    /// Read-only mounts inside the gear.
    pub read_only: Vec<PathBuf>,
    /// Read-write mounts inside the gear.
    pub read_write: Vec<PathBuf>,
    /// Paths under `/proc` hidden from the gear.
    pub masked: Vec<PathBuf>,
    /// Whether `/sys` is present (it is not).
    pub sys_present: bool,
}

/// What the credential layer did (as read back from the kernel).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialReport {
    /// Real, effective and saved uid.
    pub uid: u32,
    /// Real, effective and saved gid.
    pub gid: u32,
    /// Supplementary groups were cleared.
    pub groups_cleared: bool,
    /// Number of capabilities removed from the bounding set.
    pub bounding_caps_dropped: u32,
    /// Effective, permitted, inheritable, bounding and ambient sets are all empty.
    pub all_capability_sets_empty: bool,
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// Every descriptor except 0, 1 and 2 is closed at exec.
    pub other_fds_closed: bool,
    /// The environment is exactly the one in the spec.
    pub env_cleared: bool,
}

/// What the seccomp layer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompReport {
    /// A filter is installed.
    pub installed: bool,
    /// Number of syscall rules in the filter.
    pub rules: usize,
    /// What unlisted syscalls get.
    pub default_action: String,
    /// What listed syscalls get.
    pub deny_action: String,
}

/// How much of the requested Landlock ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Everything requested.
    Full,
    /// Part of it (an older ABI).
    Partial,
    /// Nothing (no Landlock in this kernel).
    None,
}

/// What the Landlock layer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockReport {
    /// The kernel's Landlock ABI (0 = unavailable).
    pub kernel_abi: u32,
    /// The ABI the ruleset was written for.
    pub requested_abi: u32,
    /// How much is enforced.
    pub enforcement: Enforcement,
    /// Paths the gear may write below.
    pub writable: Vec<PathBuf>,
}

/// One rlimit as applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RlimitReport {
    /// `nofile`, `nproc`, ...
    pub resource: String,
    /// What the spec asked for.
    pub requested: u64,
    /// What was set (soft = hard).
    pub applied: u64,
    /// True when the request was above the node's own hard limit and was lowered to it (the
    /// node cannot raise hard limits without CAP_SYS_RESOURCE).
    pub clamped: bool,
}

impl fmt::Display for LayerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = &self.namespaces;
        writeln!(
            f,
            "namespaces   {} (hostname {}, network {:?}, lo up: {})",
            ns.unshared.join(","),
            ns.hostname,
            ns.network,
            ns.loopback_up
        )?;
        if let Some(user) = &ns.user {
            writeln!(f, "rootless     {user}")?;
        }
        writeln!(
            f,
            "filesystem   {}; {} read-only, {} read-write, {} masked",
            self.filesystem.root,
            self.filesystem.read_only.len(),
            self.filesystem.read_write.len(),
            self.filesystem.masked.len()
        )?;
        let c = &self.credentials;
        writeln!(
            f,
            "credentials  uid {} gid {}, capabilities empty: {}, no_new_privs: {}",
            c.uid, c.gid, c.all_capability_sets_empty, c.no_new_privs
        )?;
        writeln!(
            f,
            "seccomp      installed: {}, {} rules, {}",
            self.seccomp.installed, self.seccomp.rules, self.seccomp.deny_action
        )?;
        writeln!(
            f,
            "landlock     abi {} (kernel {}), enforcement {:?}",
            self.landlock.requested_abi, self.landlock.kernel_abi, self.landlock.enforcement
        )?;
        writeln!(f, "selinux      {}", self.selinux)?;
        match &self.cgroup {
            Some(cg) => writeln!(
                f,
                "cgroup       {} [{}] memory {:?} pids {:?} cpu {:?}m",
                cg.layout,
                cg.controllers.join(","),
                cg.memory_bytes,
                cg.pids,
                cg.cpu_millicores
            )?,
            None if self.namespaces.user.is_some() => writeln!(
                f,
                "cgroup       none: rootless mode, no limits (a non-root caller has no cgroup of its own to place gears in)"
            )?,
            None => writeln!(f, "cgroup       not set")?,
        }
        let rl: Vec<String> = self
            .rlimits
            .iter()
            .map(|r| {
                format!(
                    "{}={}{}",
                    r.resource,
                    r.applied,
                    if r.clamped { " (clamped)" } else { "" }
                )
            })
            .collect();
        write!(f, "rlimits      {}", rl.join(" "))
    }
}
