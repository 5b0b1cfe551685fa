//! cgroups: layout detection (v2, v1 or hybrid), the gear's cgroup with its memory, pids and
//! cpu limits, and teardown once its processes are gone.
//!
//! The node's subtree is created under each controller's root, never under the cgroup the node
//! itself happens to sit in: on v1 that may belong to whatever started the node.
//!
//! This module owns the layout; the node asks it for names and paths instead of building them:
//!
//! ```text
//! <root>/<subtree>/<gear>/<leaf>      one root per hierarchy (roots)
//!        |         |      `- one cgroup per process start (leaf_placement, process_leaf, exec_leaf)
//!        |         `- the gear's group, holding the gear's limits (group_path, ensure_group)
//!        `- the node's subtree (node.toml's cgroup-subtree)
//! ```
//!
//! A node of an earlier version placed each start directly under the subtree as
//! `<subtree>/<gear>-...`; [`remove_gear`] removes those too ([`legacy_leaves`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::spec::{CgroupPlacement, Limits};

/// CPU quota period in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// v1 controllers a gear is placed in (when the kernel has them).
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct", "freezer"];

/// Errors of the cgroup layer.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup filesystem was found.
    #[error(
        "no cgroup filesystem is mounted: mount cgroup2 at /sys/fs/cgroup (or the v1 controllers) and retry"
    )]
    NotMounted,
    /// A controller the limits need is missing.
    #[error(
        "the {controller} cgroup controller is not available: enable it in the kernel or mount it, then retry"
    )]
    MissingController {
        /// The controller's name.
        controller: &'static str,
    },
    /// A cgroup file operation failed.
    #[error("could not {action} {path}: {source}; {hint}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The cgroup has no freezer: no v1 freezer hierarchy, or a v2 kernel older than 5.2.
    #[error(
        "the cgroup freezer is not available (no v1 freezer hierarchy, or a kernel before 5.2 on v2)"
    )]
    NoFreezer,
    /// The freezer did not freeze every task in time; the cgroup was thawed again.
    #[error(
        "not every process in {path} froze within {waited:?} (one is stuck in the kernel); the cgroup was thawed again"
    )]
    FreezeTimeout {
        /// The freezer file.
        path: PathBuf,
        /// How long it was given.
        waited: Duration,
    },
    /// The gear's group holds no process to freeze.
    #[error("{path} holds no process to freeze")]
    NothingToFreeze {
        /// The group's directory.
        path: PathBuf,
    },
    /// Processes were still in the gear's cgroup after the teardown deadline.
    #[error(
        "{count} process(es) still in {path} after teardown; kill them (cat {path}/cgroup.procs) and remove the directory"
    )]
    Busy {
        /// The leaf directory.
        path: PathBuf,
        /// How many processes were left.
        count: usize,
    },
}

fn io_err(
    action: &'static str,
    path: &Path,
    hint: &'static str,
) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
        hint,
    }
}

/// Which cgroup hierarchy the machine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLayout {
    /// Only cgroup v2.
    V2,
    /// Only cgroup v1.
    V1,
    /// v1 controllers plus a cgroup2 mount that carries none of the controllers used here;
    /// treated as v1.
    Hybrid,
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupLayout::V2 => "v2",
            CgroupLayout::V1 => "v1",
            CgroupLayout::Hybrid => "hybrid (v1 controllers used)",
        })
    }
}

/// The cgroup mounts of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The layout.
    pub layout: CgroupLayout,
    /// v1 controller name to its mount point.
    pub v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any.
    pub v2: Option<PathBuf>,
}

/// Decodes the octal escapes (`\040`) mountinfo uses for spaces and the like.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` text into the cgroup mounts it lists.
pub fn parse_mountinfo(text: &str) -> Result<CgroupMounts, CgroupError> {
    let mut v1 = BTreeMap::new();
    let mut v2 = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let mount_point = PathBuf::from(unescape_mountinfo(left[4]));
        match right[0] {
            "cgroup2" => {
                v2.get_or_insert(mount_point);
            }
            "cgroup" => {
                for opt in right[2].split(',') {
                    if V1_CONTROLLERS.contains(&opt) {
                        v1.entry(opt.to_string())
                            .or_insert_with(|| mount_point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let layout = match (v1.is_empty(), &v2) {
        (true, None) => return Err(CgroupError::NotMounted),
        (true, Some(_)) => CgroupLayout::V2,
        (false, None) => CgroupLayout::V1,
        (false, Some(_)) => CgroupLayout::Hybrid,
    };
    Ok(CgroupMounts { layout, v1, v2 })
}

/// Detects the cgroup mounts of the calling process's mount namespace.
pub fn detect() -> Result<CgroupMounts, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text =
        std::fs::read_to_string(path).map_err(io_err("read", path, "mount /proc and retry"))?;
    parse_mountinfo(&text)
}

/// [`detect`], read the first time and kept for the life of the process: for a node
/// taking back a thousand gears at its start, where reading `/proc/self/mountinfo` (a
/// line per gear's network namespace) for each gear twice made the adoption quadratic.
/// The cgroup mounts of a running node do not change.
pub fn detect_kept() -> Result<CgroupMounts, CgroupError> {
    static MOUNTS: std::sync::OnceLock<CgroupMounts> = std::sync::OnceLock::new();
    if let Some(m) = MOUNTS.get() {
        return Ok(m.clone());
    }
    let m = detect()?;
    Ok(MOUNTS.get_or_init(|| m).clone())
}

/// What the cgroup layer set up for one gear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupReport {
    /// The layout in use.
    pub layout: CgroupLayout,
    /// Controllers the gear was placed in.
    pub controllers: Vec<String>,
    /// Memory limit (bytes), if any.
    pub memory_bytes: Option<u64>,
    /// Whether swap is included in the memory limit (no swap escape).
    pub swap_limited: bool,
    /// Process limit, if any.
    pub pids: Option<u64>,
    /// CPU quota in millicores, if any.
    pub cpu_millicores: Option<u32>,
    /// The gear's cgroup directories.
    pub paths: Vec<PathBuf>,
}

/// The cgroup of one gear: one leaf directory per v1 hierarchy, or one v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GearCgroup {
    layout: CgroupLayout,
    /// Controller (or hierarchy) name to the leaf directory; v2 uses the key `unified`.
    dirs: BTreeMap<String, PathBuf>,
}

/// Where the leaf directories of `placement` are (or would be) on this machine.
pub fn gear_paths(mounts: &CgroupMounts, placement: &CgroupPlacement) -> BTreeMap<String, PathBuf> {
    let mut dirs = BTreeMap::new();
    if mounts.layout == CgroupLayout::V2 {
        if let Some(root) = &mounts.v2 {
            dirs.insert(
                "unified".to_string(),
                root.join(&placement.subtree).join(&placement.leaf),
            );
        }
        return dirs;
    }
    let mut seen: Vec<&PathBuf> = Vec::new();
    for (controller, mount_point) in &mounts.v1 {
        // cpu and cpuacct may share one hierarchy; place the gear there once.
        if seen.contains(&mount_point) {
            continue;
        }
        seen.push(mount_point);
        dirs.insert(
            controller.clone(),
            mount_point.join(&placement.subtree).join(&placement.leaf),
        );
    }
    dirs
}

fn write_file(path: &Path, value: &str, hint: &'static str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err("write", path, hint))
}

fn mkdir_if_missing(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(
            "create",
            path,
            "run the node as root with the cgroup filesystem mounted read-write",
        )(e)),
    }
}

impl GearCgroup {
    /// A gear placed in no cgroup (rootless mode): no paths, nothing to tear down.
    pub(crate) fn unplaced() -> Self {
        GearCgroup {
            layout: CgroupLayout::V2,
            dirs: BTreeMap::new(),
        }
    }

    /// The cgroup of `placement` as it already is (made by an earlier [`GearCgroup::create`],
    /// possibly by an earlier node), for reading and teardown.
    pub fn existing(mounts: &CgroupMounts, placement: &CgroupPlacement) -> Self {
        GearCgroup {
            layout: mounts.layout,
            dirs: gear_paths(mounts, placement),
        }
    }

    /// Creates the gear's cgroup on every hierarchy and writes its limits. A leftover empty
    /// cgroup of the same name is replaced; a busy one is an error.
    pub fn create(
        mounts: &CgroupMounts,
        placement: &CgroupPlacement,
        limits: &Limits,
    ) -> Result<(Self, CgroupReport), CgroupError> {
        let dirs = gear_paths(mounts, placement);
        if mounts.layout != CgroupLayout::V2 {
            for needed in ["memory", "pids", "cpu"] {
                if !mounts.v1.contains_key(needed) {
                    return Err(CgroupError::MissingController { controller: needed });
                }
            }
        }
        let cgroup = GearCgroup {
            layout: mounts.layout,
            dirs,
        };
        let result = cgroup
            .create_dirs(mounts, placement)
            .and_then(|()| cgroup.write_limits(limits));
        match result {
            Ok(report) => Ok((cgroup, report)),
            Err(e) => {
                let _ = cgroup.remove_dirs();
                Err(e)
            }
        }
    }

    fn create_dirs(
        &self,
        mounts: &CgroupMounts,
        placement: &CgroupPlacement,
    ) -> Result<(), CgroupError> {
        if self.layout == CgroupLayout::V2 {
            let root = mounts.v2.as_ref().ok_or(CgroupError::NotMounted)?;
            let subtree = root.join(&placement.subtree);
            mkdir_if_missing(&subtree)?;
            let wanted = "+memory +pids +cpu";
            for dir in [root.as_path(), subtree.as_path()] {
                let control = dir.join("cgroup.subtree_control");
                let current = std::fs::read_to_string(&control).unwrap_or_default();
                if !["memory", "pids", "cpu"]
                    .iter()
                    .all(|c| current.split_whitespace().any(|x| x == *c))
                {
                    write_file(
                        &control,
                        wanted,
                        "enable the memory, pids and cpu controllers for the node's subtree",
                    )?;
                }
            }
        } else {
            for dir in self.dirs.values() {
                if let Some(parent) = dir.parent() {
                    mkdir_if_missing(parent)?;
                }
            }
        }
        for dir in self.dirs.values() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A leftover of an earlier run: reuse only if it is empty.
                    std::fs::remove_dir(dir).map_err(io_err(
                        "replace leftover cgroup",
                        dir,
                        "tear the old gear down first",
                    ))?;
                    std::fs::create_dir(dir).map_err(io_err(
                        "create",
                        dir,
                        "run the node as root",
                    ))?;
                }
                Err(e) => {
                    return Err(io_err(
                        "create",
                        dir,
                        "run the node as root with the cgroup filesystem mounted read-write",
                    )(e));
                }
            }
        }
        Ok(())
    }

    fn write_limits(&self, limits: &Limits) -> Result<CgroupReport, CgroupError> {
        let hint = "check that the controller accepts this value";
        let mut swap_limited = false;
        if self.layout == CgroupLayout::V2 {
            let dir = &self.dirs["unified"];
            if let Some(bytes) = limits.memory_bytes {
                write_file(&dir.join("memory.max"), &bytes.to_string(), hint)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0", hint)?;
                }
                swap_limited = true;
            }
            let group = dir.join("memory.oom.group");
            if group.exists() {
                write_file(&group, "0", hint)?;
            }
            if let Some(pids) = limits.pids {
                write_file(&dir.join("pids.max"), &pids.to_string(), hint)?;
            }
            if let Some(mc) = limits.cpu_millicores {
                let quota = u64::from(mc) * CPU_PERIOD_US / 1000;
                write_file(
                    &dir.join("cpu.max"),
                    &format!("{quota} {CPU_PERIOD_US}"),
                    hint,
                )?;
            }
        } else {
            if let Some(bytes) = limits.memory_bytes {
                let dir = &self.dirs["memory"];
                write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string(), hint)?;
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &bytes.to_string(), hint)?;
                    swap_limited = true;
                } else {
                    // No swap accounting: at least keep the gear's pages out of swap.
                    write_file(&dir.join("memory.swappiness"), "0", hint)?;
                }
            }
            if let Some(pids) = limits.pids {
                write_file(&self.dirs["pids"].join("pids.max"), &pids.to_string(), hint)?;
            }
            if let Some(mc) = limits.cpu_millicores {
                let dir = self
                    .dir_for("cpu")
                    .ok_or(CgroupError::MissingController { controller: "cpu" })?;
                write_file(
                    &dir.join("cpu.cfs_period_us"),
                    &CPU_PERIOD_US.to_string(),
                    hint,
                )?;
                let quota = u64::from(mc) * CPU_PERIOD_US / 1000;
                write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string(), hint)?;
            }
        }
        Ok(CgroupReport {
            layout: self.layout,
            controllers: self.controllers(),
            memory_bytes: limits.memory_bytes,
            swap_limited: swap_limited || limits.memory_bytes.is_none(),
            pids: limits.pids,
            cpu_millicores: limits.cpu_millicores,
            paths: self.dirs.values().cloned().collect(),
        })
    }

    /// Controllers the gear is placed in.
    pub fn controllers(&self) -> Vec<String> {
        if self.layout == CgroupLayout::V2 {
            return vec!["memory".into(), "pids".into(), "cpu".into()];
        }
        self.dirs.keys().cloned().collect()
    }

    /// The leaf directory that holds `controller` (v1), or the v2 directory.
    pub fn dir_for(&self, controller: &str) -> Option<&Path> {
        if self.layout == CgroupLayout::V2 {
            return self.dirs.get("unified").map(PathBuf::as_path);
        }
        if let Some(d) = self.dirs.get(controller) {
            return Some(d);
        }
        // cpu and cpuacct share a directory when they share a hierarchy.
        let sibling = match controller {
            "cpu" => "cpuacct",
            "cpuacct" => "cpu",
            _ => return None,
        };
        self.dirs.get(sibling).map(PathBuf::as_path)
    }

    /// The leaf directories.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.values().cloned().collect()
    }

    /// The `cgroup.procs` files a process writes itself into to join the gear.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.values().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The gear's leaf directory on a cgroup v2 layout, where a process can be started
    /// directly (`clone3` with `CLONE_INTO_CGROUP`); `None` on v1 and hybrid layouts and for
    /// a gear placed in no cgroup.
    pub fn v2_leaf(&self) -> Option<&Path> {
        if self.layout != CgroupLayout::V2 {
            return None;
        }
        self.dirs.get("unified").map(PathBuf::as_path)
    }

    /// Host pids currently in the gear's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.dirs.values() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for p in text.lines().filter_map(|l| l.trim().parse().ok()) {
                    if !pids.contains(&p) {
                        pids.push(p);
                    }
                }
            }
        }
        pids
    }

    /// Current memory use of the gear in bytes (page cache and tmpfs included).
    pub fn memory_usage(&self) -> Option<u64> {
        let (dir, file) = if self.layout == CgroupLayout::V2 {
            (self.dir_for("memory")?, "memory.current")
        } else {
            (self.dir_for("memory")?, "memory.usage_in_bytes")
        };
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// CPU time used by the gear so far.
    pub fn cpu_usage(&self) -> Option<Duration> {
        if self.layout == CgroupLayout::V2 {
            let text = std::fs::read_to_string(self.dir_for("cpu")?.join("cpu.stat")).ok()?;
            let usec = stat_value(&text, "usage_usec")?;
            return Some(Duration::from_micros(usec));
        }
        let text = std::fs::read_to_string(self.dir_for("cpuacct")?.join("cpuacct.usage")).ok()?;
        Some(Duration::from_nanos(text.trim().parse().ok()?))
    }

    /// How many CPU periods the gear was throttled in.
    pub fn cpu_throttled_periods(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir_for("cpu")?.join("cpu.stat")).ok()?;
        stat_value(&text, "nr_throttled")
    }

    /// How many processes of the gear the kernel's OOM killer has killed.
    pub fn oom_kills(&self) -> Option<u64> {
        let (file, key) = if self.layout == CgroupLayout::V2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let text = std::fs::read_to_string(self.dir_for("memory")?.join(file)).ok()?;
        stat_value(&text, key)
    }

    /// Kills every process left in the gear's cgroup, waits up to `deadline` for them to be
    /// gone and removes the cgroup on every hierarchy.
    pub fn teardown(&self, deadline: Duration) -> Result<TeardownReport, CgroupError> {
        let started = Instant::now();
        let mut killed = 0;
        let v2_kill = self
            .dir_for("pids")
            .map(|d| d.join("cgroup.kill"))
            .filter(|p| self.layout == CgroupLayout::V2 && p.exists());
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if started.elapsed() > deadline {
                let path = self.dirs.values().next().cloned().unwrap_or_default();
                return Err(CgroupError::Busy {
                    path,
                    count: pids.len(),
                });
            }
            if let Some(kill) = &v2_kill {
                let _ = std::fs::write(kill, "1");
                killed = killed.max(pids.len());
            } else {
                // Freeze first so nothing can fork while we kill, then thaw so SIGKILL lands.
                let freezer = self.dir_for("freezer").map(|d| d.join("freezer.state"));
                if let Some(f) = &freezer {
                    let _ = std::fs::write(f, "FROZEN");
                }
                for pid in self.pids() {
                    // a pid that vanished yields ESRCH
                    let pid = nix::unistd::Pid::from_raw(pid);
                    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                        killed += 1;
                    }
                }
                if let Some(f) = &freezer {
                    let _ = std::fs::write(f, "THAWED");
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.remove_dirs()?;
        Ok(TeardownReport {
            killed,
            removed: self.paths(),
        })
    }

    fn remove_dirs(&self) -> Result<(), CgroupError> {
        for dir in self.dirs.values() {
            // rmdir can briefly fail with EBUSY while exited tasks are still being released.
            let mut attempts = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 500 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        return Err(io_err(
                            "remove",
                            dir,
                            "kill the processes left in it and remove it by hand",
                        )(e));
                    }
                }
            }
        }
        Ok(())
    }
}

mod freezer;
mod groups;
mod layout;
#[cfg(test)]
mod tests;

pub use freezer::*;
pub use groups::*;
pub use layout::*;
