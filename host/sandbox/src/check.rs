//! What this machine can enforce, layer by layer (`gear node check`).
//!
//! The checks read kernel interfaces only, so they are safe to call from a multi-threaded
//! node; the one exception is the `disk-quota` row, which runs `btrfs qgroup show` once when
//! the state directory is on btrfs.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cgroup::{self, CgroupLayout};
use crate::sys;

/// Whether a layer holds on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerStatus {
    /// Enforced in full.
    Enforced,
    /// Enforced, with the limitation given in the detail.
    Partial,
    /// Not available; a gear runs without it.
    Missing,
    /// Compiled into the kernel (or not) but switched off; a gear runs without it.
    NotEnabled,
}

/// One layer's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCheck {
    /// The layer's name.
    pub layer: String,
    /// Whether gears may not run without it.
    pub required: bool,
    /// The verdict.
    pub status: LayerStatus,
    /// What was found, in plain words.
    pub detail: String,
}

/// What this machine can enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// Kernel release.
    pub kernel: String,
    /// Per layer.
    pub layers: Vec<LayerCheck>,
}

impl HostReport {
    /// True when every required layer is enforced (fully or partially).
    pub fn required_layers_hold(&self) -> bool {
        self.layers
            .iter()
            .filter(|l| l.required)
            .all(|l| matches!(l.status, LayerStatus::Enforced | LayerStatus::Partial))
    }

    /// The required layers that are missing.
    pub fn missing_required(&self) -> Vec<&LayerCheck> {
        self.layers
            .iter()
            .filter(|l| {
                l.required && !matches!(l.status, LayerStatus::Enforced | LayerStatus::Partial)
            })
            .collect()
    }
}

impl fmt::Display for LayerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerStatus::Enforced => "enforced",
            LayerStatus::Partial => "partial",
            LayerStatus::Missing => "MISSING",
            LayerStatus::NotEnabled => "not enabled",
        })
    }
}

impl fmt::Display for HostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {}", self.kernel)?;
        for l in &self.layers {
            let req = if l.required { "required" } else { "optional" };
            writeln!(
                f,
                "{:<12} {:<12} {:<9} {}",
                l.layer,
                l.status.to_string(),
                req,
                l.detail
            )?;
        }
        if self.required_layers_hold() {
            write!(f, "all required layers hold")
        } else {
            let names: Vec<&str> = self
                .missing_required()
                .iter()
                .map(|l| l.layer.as_str())
                .collect();
            write!(f, "required layers missing: {}", names.join(", "))
        }
    }
}

use gearhost_sys::proc_status::has_effective_cap as has_cap;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;

fn check(
    layer: &str,
    required: bool,
    status: LayerStatus,
    detail: impl Into<String>,
) -> LayerCheck {
    LayerCheck {
        layer: layer.to_string(),
        required,
        status,
        detail: detail.into(),
    }
}

fn namespaces() -> LayerCheck {
    let wanted = ["pid", "mnt", "uts", "ipc", "net", "cgroup"];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if !missing.is_empty() {
        return check(
            "namespaces",
            true,
            LayerStatus::Missing,
            format!("kernel lacks {} namespaces", missing.join(", ")),
        );
    }
    if !has_cap(CAP_SYS_ADMIN) {
        return check(
            "namespaces",
            true,
            LayerStatus::Missing,
            "the node lacks CAP_SYS_ADMIN: run it as root",
        );
    }
    let limits: Vec<String> = ["pid", "mnt", "uts", "ipc", "net", "cgroup"]
        .iter()
        .filter(|ns| {
            std::fs::read_to_string(format!("/proc/sys/user/max_{ns}_namespaces"))
                .is_ok_and(|v| v.trim() == "0")
        })
        .map(|s| s.to_string())
        .collect();
    if !limits.is_empty() {
        return check(
            "namespaces",
            true,
            LayerStatus::Missing,
            format!("user.max_*_namespaces is 0 for {}", limits.join(", ")),
        );
    }
    check(
        "namespaces",
        true,
        LayerStatus::Enforced,
        "pid, mnt, uts, ipc, net and cgroup namespaces available",
    )
}

fn filesystem() -> LayerCheck {
    if !has_cap(CAP_SYS_ADMIN) {
        return check(
            "filesystem",
            true,
            LayerStatus::Missing,
            "pivot_root and mounts need CAP_SYS_ADMIN: run the node as root",
        );
    }
    let release = kernel_release();
    let (major, minor) = parse_release(&release);
    if (major, minor) < (5, 12) {
        return check(
            "filesystem",
            true,
            LayerStatus::Missing,
            "mount_setattr and openat2 need Linux 5.12 or newer",
        );
    }
    check(
        "filesystem",
        true,
        LayerStatus::Enforced,
        "tmpfs root, pivot_root, read-only system, symlink-safe binds",
    )
}

fn credentials() -> LayerCheck {
    let missing: Vec<&str> = [
        (CAP_SETUID, "CAP_SETUID"),
        (CAP_SETGID, "CAP_SETGID"),
        (CAP_SETPCAP, "CAP_SETPCAP"),
    ]
    .iter()
    .filter(|(bit, _)| !has_cap(*bit))
    .map(|(_, n)| *n)
    .collect();
    if !missing.is_empty() {
        return check(
            "credentials",
            true,
            LayerStatus::Missing,
            format!("the node lacks {}", missing.join(", ")),
        );
    }
    check(
        "credentials",
        true,
        LayerStatus::Enforced,
        "own uid/gid, no groups, all capability sets cleared, no_new_privs",
    )
}

fn seccomp() -> LayerCheck {
    if gearhost_sys::proc_status::field("Seccomp").is_none() {
        return check(
            "seccomp",
            true,
            LayerStatus::Missing,
            "kernel built without seccomp",
        );
    }
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !actions.split_whitespace().any(|a| a == "errno") {
        return check(
            "seccomp",
            true,
            LayerStatus::Missing,
            "the errno action is not available",
        );
    }
    match crate::seccomp::build() {
        Ok(f) => check(
            "seccomp",
            true,
            LayerStatus::Enforced,
            format!("filter with {} rules, EPERM for denied calls", f.rules),
        ),
        Err(e) => check(
            "seccomp",
            true,
            LayerStatus::Missing,
            format!("the filter does not build: {e}"),
        ),
    }
}

fn landlock() -> LayerCheck {
    let abi = sys::landlock_abi();
    if abi == 0 {
        return check(
            "landlock",
            true,
            LayerStatus::Missing,
            "not available: add landlock to the lsm= boot parameter (Linux 5.13+)",
        );
    }
    if abi < 6 {
        return check(
            "landlock",
            true,
            LayerStatus::Partial,
            format!("ABI {abi}: filesystem writes restricted; signal/socket scoping needs ABI 6"),
        );
    }
    check(
        "landlock",
        true,
        LayerStatus::Enforced,
        format!("ABI {abi} (ruleset written for ABI 6)"),
    )
}

fn selinux(node_program: Option<&Path>) -> LayerCheck {
    if !crate::selinux::is_enabled() {
        return check(
            "selinux",
            false,
            LayerStatus::NotEnabled,
            "disabled: not enabled on this kernel",
        );
    }
    let node = node_program.map(|p| (p, crate::selinux::file_context(p)));
    let report = selinux_verdict(
        crate::selinux::mode(),
        crate::selinux::context_is_valid,
        crate::selinux::current_context().as_deref(),
        node.as_ref().map(|(p, label)| (*p, label.as_deref())),
    );
    check("selinux", false, report.0, report.1)
}

/// The SELinux verdict from the mode, what the loaded policy knows, this process's context
/// and, when this process is not the node, the node program's path and file label: the node
/// must run in `gear_node_t` at `s0`, which it enters when its program is labelled
/// `gear_node_exec_t`.
fn selinux_verdict(
    mode: &str,
    valid: impl Fn(&str) -> bool,
    current: Option<&str>,
    node_program: Option<(&Path, Option<&str>)>,
) -> (LayerStatus, String) {
    // The module's types make these contexts valid once it is loaded.
    let module_types = ["gear_t", "gear_file_t", "gear_node_t"];
    let unknown: Vec<&str> = module_types
        .iter()
        .copied()
        .filter(|t| {
            let role = if *t == "gear_file_t" {
                "object_r"
            } else {
                "system_r"
            };
            !valid(&format!("system_u:{role}:{t}:s0:c0,c1"))
        })
        .collect();
    if !unknown.is_empty() {
        return (
            LayerStatus::Missing,
            format!(
                "{mode}; gear policy module not loaded ({} unknown to the kernel): build and install host/sandbox/selinux as docs/security.md says",
                unknown.join(", ")
            ),
        );
    }
    let me = current.unwrap_or("unknown");
    // user:role:type:range; the range is everything after the third colon
    let range = me.splitn(4, ':').nth(3).unwrap_or("");
    // this process is the node, or runs the way the node must; else the node's program decides
    let node = if crate::selinux::range_is_s0(range) {
        format!("running as {me}")
    } else {
        let label_type = |label: &str| label.split(':').nth(2).map(str::to_owned);
        match node_program {
            Some((path, Some(label)))
                if label_type(label).as_deref() == Some("gear_node_exec_t") =>
            {
                format!(
                    "the node ({}, gear_node_exec_t) runs as gear_node_t:s0",
                    path.display()
                )
            }
            Some((path, label)) => {
                return (
                    LayerStatus::Missing,
                    format!(
                        "{mode}; gear policy module loaded, but the node's program {} is labelled {}, not gear_node_exec_t: the node would run as its caller (here {me}) and gears could not use the pipes and sockets it hands them (their logs); label it: restorecon -v {}",
                        path.display(),
                        label.unwrap_or("nothing"),
                        path.display()
                    ),
                );
            }
            None => {
                return (
                    LayerStatus::Missing,
                    format!(
                        "{mode}; gear policy module loaded, but this process runs as {me} and the node's program (gearhost-node) was not found to check its label; install it beside gear and label it (restorecon -v /usr/local/bin/gearhost-node)"
                    ),
                );
            }
        }
    };
    if mode != "enforcing" {
        return (
            LayerStatus::Partial,
            format!(
                "{mode}; gear policy module loaded; labels are applied but denials are only logged (setenforce 1); {node}"
            ),
        );
    }
    (
        LayerStatus::Enforced,
        format!("enforcing; gear policy module loaded; {node}"),
    )
}

fn cgroups() -> LayerCheck {
    let mounts = match cgroup::detect() {
        Ok(m) => m,
        Err(e) => return check("cgroups", true, LayerStatus::Missing, e.to_string()),
    };
    match mounts.layout {
        CgroupLayout::V2 => {
            let root = mounts.v2.clone().unwrap_or_default();
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            let missing: Vec<&str> = ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
                .collect();
            if !missing.is_empty() {
                return check(
                    "cgroups",
                    true,
                    LayerStatus::Missing,
                    format!("v2 without {}", missing.join(", ")),
                );
            }
            // cgroup.freeze (Linux 5.2) is in every cgroup but the root
            let (major, minor) = parse_release(&kernel_release());
            if (major, minor) < (5, 2) {
                return check(
                    "cgroups",
                    true,
                    LayerStatus::Partial,
                    "v2: memory (no swap), pids, cpu; no freezer before Linux 5.2 (idle gears are stopped, never frozen)",
                );
            }
            check(
                "cgroups",
                true,
                LayerStatus::Enforced,
                "v2: memory (no swap), pids, cpu; cgroup.kill teardown; freezer (idle gears are frozen first)",
            )
        }
        layout => {
            let missing: Vec<&str> = ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| !mounts.v1.contains_key(*c))
                .collect();
            if !missing.is_empty() {
                return check(
                    "cgroups",
                    true,
                    LayerStatus::Missing,
                    format!("{layout} without {}", missing.join(", ")),
                );
            }
            let memsw = mounts
                .v1
                .get("memory")
                .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists());
            let freezer = mounts.v1.contains_key("freezer");
            let mut notes = Vec::new();
            if !memsw {
                notes.push("no swap accounting (swappiness 0 instead)");
            }
            if !freezer {
                notes.push(
                    "no freezer (teardown kills in a loop; idle gears are stopped, never frozen)",
                );
            }
            if notes.is_empty() {
                check(
                    "cgroups",
                    true,
                    LayerStatus::Enforced,
                    format!(
                        "{layout}: memory+swap, pids, cpu, freezer (idle gears are frozen first)"
                    ),
                )
            } else {
                check(
                    "cgroups",
                    true,
                    LayerStatus::Partial,
                    format!("{layout}: {}", notes.join("; ")),
                )
            }
        }
    }
}

fn rlimits() -> LayerCheck {
    if has_cap(CAP_SYS_RESOURCE) {
        check(
            "rlimits",
            true,
            LayerStatus::Enforced,
            "nofile, nproc, core, fsize, memlock",
        )
    } else {
        check(
            "rlimits",
            true,
            LayerStatus::Enforced,
            "nofile, nproc, core, fsize, memlock; the node lacks CAP_SYS_RESOURCE, so requests above its own hard limits are clamped",
        )
    }
}

/// Whether an unprivileged user may create the user namespace a rootless gear needs, from
/// the values of `user.max_user_namespaces`, Debian's `kernel.unprivileged_userns_clone` and
/// Ubuntu's `kernel.apparmor_restrict_unprivileged_userns` (absent ones are `None`).
fn rootless_verdict(
    max_user: Option<&str>,
    debian_clone: Option<&str>,
    apparmor_restrict: Option<&str>,
) -> (LayerStatus, String) {
    let is = |v: Option<&str>, want: &str| v.map(str::trim) == Some(want);
    let blocked = if is(max_user, "0") {
        Some("user.max_user_namespaces is 0")
    } else if is(debian_clone, "0") {
        Some("kernel.unprivileged_userns_clone is 0")
    } else if is(apparmor_restrict, "1") {
        Some("kernel.apparmor_restrict_unprivileged_userns is 1")
    } else {
        None
    };
    match blocked {
        Some(why) => (
            LayerStatus::Missing,
            format!(
                "{why}: gears need root here (set it to allow rootless `gear sandbox run`)"
            ),
        ),
        None => (
            LayerStatus::Enforced,
            "unprivileged user namespaces available: a non-root `gear sandbox run` maps the caller to uid 0 of its own user namespace, with every layer but cgroups and SELinux".into(),
        ),
    }
}

fn rootless() -> LayerCheck {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (status, detail) = rootless_verdict(
        read("/proc/sys/user/max_user_namespaces").as_deref(),
        read("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref(),
    );
    check("rootless", false, status, detail)
}

/// Whether this kernel lets the node use io_uring (the frontend's batched sends), from
/// whether a ring could be made and `kernel.io_uring_disabled` (absent: `None`).
fn io_uring_verdict(ring: Result<(), String>, disabled: Option<&str>) -> (LayerStatus, String) {
    match ring {
        Ok(()) => (
            LayerStatus::Enforced,
            "available: the frontend passes each worker's sends to the kernel in batches (http.batch-sends); gears are refused it (seccomp)".into(),
        ),
        Err(e) => {
            let why = match disabled.map(str::trim) {
                Some(v @ ("1" | "2")) => format!("kernel.io_uring_disabled is {v}"),
                _ => e,
            };
            (
                LayerStatus::Missing,
                format!("{why}: the frontend sends one call per connection (set kernel.io_uring_disabled to 0 for batched sends)"),
            )
        }
    }
}

fn io_uring() -> LayerCheck {
    let ring = gearhost_sys::sendbatch::SendBatch::new()
        .map(drop)
        .map_err(|e| e.to_string());
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    let (status, detail) = io_uring_verdict(ring, disabled.as_deref());
    check("io_uring", false, status, detail)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// The state directory of a node configured with the defaults.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gearhost";

/// Whether per-gear disk quotas can be enforced on the file system of the gears under
/// `state_dir` (see [`crate::quota`]). Optional: a node without `gears.disk` runs without them.
fn disk_quota(state_dir: &Path) -> LayerCheck {
    let gears = state_dir.join("gears");
    let (status, detail) = match crate::quota::detect(&gears) {
        crate::quota::QuotaSupport::Btrfs { .. } => (
            LayerStatus::Enforced,
            format!(
                "btrfs qgroups on {}: a subvolume group per gear, limited in referenced bytes (inodes are not counted on their own)",
                state_dir.display()
            ),
        ),
        crate::quota::QuotaSupport::Unsupported { reason, .. } => (
            LayerStatus::Missing,
            format!(
                "{}: {reason}; a node with gears.disk set refuses to start unless gears.allow-no-quota = true",
                state_dir.display()
            ),
        ),
    };
    check("disk-quota", false, status, detail)
}

/// Checks every layer on this machine, for a node keeping its state in the default place.
pub fn host_capabilities() -> HostReport {
    host_capabilities_for(None, Path::new(DEFAULT_STATE_DIR))
}

/// [`host_capabilities`] as seen for a node started from `node_program` (SELinux: the
/// program's label decides the domain the node runs in, when the caller is not the node)
/// whose state is in `state_dir` (disk quotas: its file system decides).
pub fn host_capabilities_for(node_program: Option<&Path>, state_dir: &Path) -> HostReport {
    HostReport {
        kernel: kernel_release(),
        layers: vec![
            namespaces(),
            filesystem(),
            credentials(),
            seccomp(),
            landlock(),
            selinux(node_program),
            cgroups(),
            rlimits(),
            rootless(),
            io_uring(),
            disk_quota(state_dir),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_parsing() {
        assert_eq!(parse_release("6.18.0-1-amd64"), (6, 18));
        assert_eq!(parse_release("5.4"), (5, 4));
    }

    #[test]
    fn report_lists_every_layer_and_says_what_is_missing() {
        let r = host_capabilities();
        let names: Vec<&str> = r.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "filesystem",
                "credentials",
                "seccomp",
                "landlock",
                "selinux",
                "cgroups",
                "rlimits",
                "rootless",
                "io_uring",
                "disk-quota"
            ]
        );
        let text = r.to_string();
        assert!(text.contains("selinux"));
        if !crate::selinux::is_enabled() {
            assert!(
                text.contains("disabled: not enabled on this kernel"),
                "{text}"
            );
        }
        let json = serde_json::to_string(&r).expect("serialize");
        assert!(json.contains("\"layers\""));
    }

    #[test]
    fn io_uring_verdicts_name_the_switch_that_blocks_it() {
        let (status, detail) = io_uring_verdict(Ok(()), Some("0\n"));
        assert_eq!(status, LayerStatus::Enforced);
        assert!(detail.contains("batches"), "{detail}");
        let (status, detail) = io_uring_verdict(Err("Operation not permitted".into()), Some("2\n"));
        assert_eq!(status, LayerStatus::Missing);
        assert!(
            detail.starts_with(
                "kernel.io_uring_disabled is 2: the frontend sends one call per connection"
            ),
            "{detail}"
        );
        let (_, detail) = io_uring_verdict(Err("Function not implemented".into()), None);
        assert!(detail.starts_with("Function not implemented:"), "{detail}");
    }

    #[test]
    fn rootless_verdicts_name_the_switch_that_blocks_it() {
        let (status, _) = rootless_verdict(Some("96364\n"), None, None);
        assert_eq!(status, LayerStatus::Enforced);
        let (status, detail) = rootless_verdict(Some("0\n"), None, None);
        assert_eq!(status, LayerStatus::Missing);
        assert!(detail.contains("user.max_user_namespaces"), "{detail}");
        let (_, detail) = rootless_verdict(Some("10"), Some("0\n"), None);
        assert!(detail.contains("unprivileged_userns_clone"), "{detail}");
        let (_, detail) = rootless_verdict(Some("10"), Some("1"), Some("1\n"));
        assert!(detail.contains("apparmor"), "{detail}");
    }

    #[test]
    fn selinux_verdicts_name_the_mode_and_the_module() {
        let node = Some("system_u:system_r:gear_node_t:s0");
        let (status, detail) = selinux_verdict("enforcing", |_| true, node, None);
        assert_eq!(status, LayerStatus::Enforced);
        assert!(
            detail.starts_with("enforcing; gear policy module loaded"),
            "{detail}"
        );

        let (status, detail) = selinux_verdict("permissive", |_| true, node, None);
        assert_eq!(status, LayerStatus::Partial);
        assert!(
            detail.starts_with("permissive; gear policy module loaded"),
            "{detail}"
        );

        let (status, detail) = selinux_verdict("enforcing", |c| !c.contains("gear_"), node, None);
        assert_eq!(status, LayerStatus::Missing);
        assert!(detail.contains("gear policy module not loaded"), "{detail}");
        assert!(
            detail.contains("gear_t, gear_file_t, gear_node_t"),
            "{detail}"
        );

        // an administrator's shell: the node program's label decides
        let admin = Some("unconfined_u:unconfined_r:unconfined_t:s0-s0:c0.c1023");
        let program = Path::new("/usr/local/bin/gearhost-node");
        let (status, detail) = selinux_verdict(
            "enforcing",
            |_| true,
            admin,
            Some((program, Some("system_u:object_r:gear_node_exec_t:s0"))),
        );
        assert_eq!(status, LayerStatus::Enforced);
        assert!(
            detail.ends_with(
                "the node (/usr/local/bin/gearhost-node, gear_node_exec_t) runs as gear_node_t:s0"
            ),
            "{detail}"
        );
        let (status, detail) = selinux_verdict(
            "enforcing",
            |_| true,
            admin,
            Some((program, Some("system_u:object_r:bin_t:s0"))),
        );
        assert_eq!(status, LayerStatus::Missing);
        assert!(
            detail.contains("labelled system_u:object_r:bin_t:s0")
                && detail.contains("restorecon -v /usr/local/bin/gearhost-node"),
            "{detail}"
        );
        let (status, detail) = selinux_verdict("enforcing", |_| true, admin, None);
        assert_eq!(status, LayerStatus::Missing);
        assert!(detail.contains("was not found"), "{detail}");
    }

    #[test]
    fn missing_required_layer_fails_the_report() {
        let r = HostReport {
            kernel: "x".into(),
            layers: vec![
                check("seccomp", true, LayerStatus::Missing, "gone"),
                check(
                    "selinux",
                    false,
                    LayerStatus::NotEnabled,
                    "not enabled on this kernel",
                ),
            ],
        };
        assert!(!r.required_layers_hold());
        assert!(r.to_string().contains("required layers missing: seccomp"));
    }
}
