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

/// The path of gear `gear`'s group below the cgroup roots: `<subtree>/<gear>`.
pub fn group_path(subtree: &str, gear: &str) -> String {
    format!("{subtree}/{gear}")
}

/// Where a process start of gear `gear` is placed: leaf `leaf` inside the gear's group.
pub fn leaf_placement(subtree: &str, gear: &str, leaf: &str) -> CgroupPlacement {
    CgroupPlacement {
        subtree: group_path(subtree, gear),
        leaf: leaf.to_string(),
    }
}

/// The node's subtree and the gear of a placement made by [`leaf_placement`], or `None` for a
/// placement directly below the roots (no group to make first).
pub fn group_of(placement: &CgroupPlacement) -> Option<(&str, &str)> {
    placement.subtree.rsplit_once('/')
}

/// The leaf of start number `start` of the gear's process `name` (a supervised service).
pub fn process_leaf(gear: &str, name: &str, start: u64) -> String {
    format!("{gear}-{name}-{start}")
}

/// The leaf of the gear's command number `n` run to completion (`gear exec`, a hook's `exec`).
pub fn exec_leaf(gear: &str, n: u32) -> String {
    format!("{gear}-x{n}")
}

/// The root of every hierarchy a gear is placed in, each once: the cgroup2 mount on v2, the
/// mount point of each v1 controller otherwise (controllers sharing one hierarchy, such as
/// `cpu,cpuacct`, give one root).
pub fn roots(mounts: &CgroupMounts) -> Vec<PathBuf> {
    if mounts.layout == CgroupLayout::V2 {
        return mounts.v2.iter().cloned().collect();
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    for root in mounts.v1.values() {
        if !roots.contains(root) {
            roots.push(root.clone());
        }
    }
    roots
}

/// The cgroups a node of an earlier version left for gear `gear` directly under the subtree
/// (`<subtree>/<gear>-...`), by name, across every hierarchy.
pub fn legacy_leaves(
    mounts: &CgroupMounts,
    subtree: &str,
    gear: &str,
) -> std::collections::BTreeSet<String> {
    let prefix = format!("{gear}-");
    roots(mounts)
        .iter()
        .filter_map(|root| std::fs::read_dir(root.join(subtree)).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The hierarchy's id (0 for cgroup v2).
    pub hierarchy: u32,
    /// The v1 controllers bound to the hierarchy (`name=systemd` included); empty on v2.
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the hierarchy's root (it starts with `/`).
    pub path: String,
}

/// Parses the text of `/proc/<pid>/cgroup`; malformed lines are left out.
pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?.to_string();
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some(ProcCgroup {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// The cgroups of process `pid` (`/proc/<pid>/cgroup`).
pub fn cgroups_of(pid: u32) -> Result<Vec<ProcCgroup>, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(io_err(
        "read",
        &path,
        "the process may have ended, or /proc is not mounted",
    ))?;
    Ok(parse_proc_cgroup(&text))
}

/// The directory of the cgroup a process is in (its `/proc/<pid>/cgroup` lines `groups`) on the
/// hierarchy that carries `controller`: the v1 hierarchy of that controller when there is one,
/// the cgroup2 hierarchy otherwise.
pub fn process_dir(
    mounts: &CgroupMounts,
    groups: &[ProcCgroup],
    controller: &str,
) -> Option<PathBuf> {
    let below = |root: &Path, path: &str| root.join(path.trim_start_matches('/'));
    if mounts.layout != CgroupLayout::V2
        && let Some(root) = mounts.v1.get(controller)
        && let Some(group) = groups
            .iter()
            .find(|g| g.controllers.iter().any(|c| c == controller))
    {
        return Some(below(root, &group.path));
    }
    let root = mounts.v2.as_ref()?;
    let group = groups
        .iter()
        .find(|g| g.hierarchy == 0 && g.controllers.is_empty())?;
    Some(below(root, &group.path))
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

/// What a teardown did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownReport {
    /// Processes that were still alive and were killed.
    pub killed: usize,
    /// Cgroup directories removed.
    pub removed: Vec<PathBuf>,
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Tears down the cgroup of a gear by placement (kills what is left, removes the directories).
pub fn teardown(placement: &CgroupPlacement) -> Result<TeardownReport, CgroupError> {
    let mounts = detect()?;
    let cgroup = GearCgroup {
        layout: mounts.layout,
        dirs: gear_paths(&mounts, placement),
    };
    cgroup.teardown(Duration::from_secs(10))
}

/// Creates, or brings up to date, the group `<subtree>/<name>` on every
/// hierarchy with `limits`: a gear's group, which holds the cgroup of each of
/// the gear's process starts (placed with the subtree `<subtree>/<name>`), so
/// that the limits bound the gear as a whole, not each process on its own.
/// On cgroup v2 the controllers are enabled down to the group's children.
pub fn ensure_group(
    mounts: &CgroupMounts,
    subtree: &str,
    name: &str,
    limits: &Limits,
) -> Result<CgroupReport, CgroupError> {
    // a group made with these very limits, still there, needs no writes
    let key = format!("{subtree}/{name}");
    if let Some((written, report, dir)) = lock_groups().get(&key)
        && written == limits
        && dir.is_dir()
    {
        return Ok(report.clone());
    }
    let report = write_group(mounts, subtree, name, limits)?;
    if let Some(dir) = gear_paths(
        mounts,
        &CgroupPlacement {
            subtree: subtree.to_string(),
            leaf: name.to_string(),
        },
    )
    .into_values()
    .next()
    {
        lock_groups().insert(key, (limits.clone(), report.clone(), dir));
    }
    Ok(report)
}

/// The groups [`ensure_group`] made in this process, with the limits written and one of
/// their directories.
type Groups = BTreeMap<String, (Limits, CgroupReport, PathBuf)>;

fn lock_groups() -> std::sync::MutexGuard<'static, Groups> {
    static GROUPS: std::sync::Mutex<Groups> = std::sync::Mutex::new(BTreeMap::new());
    gearhost_sys::lock::lock(&GROUPS)
}

fn write_group(
    mounts: &CgroupMounts,
    subtree: &str,
    name: &str,
    limits: &Limits,
) -> Result<CgroupReport, CgroupError> {
    let placement = CgroupPlacement {
        subtree: subtree.to_string(),
        leaf: name.to_string(),
    };
    let group = GearCgroup {
        layout: mounts.layout,
        dirs: gear_paths(mounts, &placement),
    };
    if mounts.layout == CgroupLayout::V2 {
        let root = mounts.v2.as_ref().ok_or(CgroupError::NotMounted)?;
        let mut dir = root.clone();
        let levels = Path::new(subtree).join(name);
        for part in levels.components() {
            enable_controllers(&dir)?;
            dir.push(part);
            mkdir_if_missing(&dir)?;
        }
        enable_controllers(&dir)?;
    } else {
        for needed in ["memory", "pids", "cpu"] {
            if !mounts.v1.contains_key(needed) {
                return Err(CgroupError::MissingController { controller: needed });
            }
        }
        for dir in group.dirs.values() {
            std::fs::create_dir_all(dir).map_err(io_err(
                "create",
                dir,
                "run the node as root with the cgroup filesystem mounted read-write",
            ))?;
        }
    }
    group.write_limits(limits)
}

/// Lets the children of a v2 cgroup use the memory, pids and cpu controllers.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&control).unwrap_or_default();
    if ["memory", "pids", "cpu"]
        .iter()
        .all(|c| current.split_whitespace().any(|x| x == *c))
    {
        return Ok(());
    }
    write_file(
        &control,
        "+memory +pids +cpu",
        "enable the memory, pids and cpu controllers for the node's subtree",
    )
}

/// Tears down the group `<subtree>/<name>` made by [`ensure_group`]: every
/// cgroup in it (killing what is left there), then the group itself.
pub fn remove_group(subtree: &str, name: &str) -> Result<TeardownReport, CgroupError> {
    lock_groups().remove(&format!("{subtree}/{name}"));
    let mounts = detect()?;
    let group_placement = CgroupPlacement {
        subtree: subtree.to_string(),
        leaf: name.to_string(),
    };
    let group = GearCgroup {
        layout: mounts.layout,
        dirs: gear_paths(&mounts, &group_placement),
    };
    // the members, by name, across all hierarchies
    let mut members = std::collections::BTreeSet::new();
    for dir in group.dirs.values() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                members.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    let inner = format!("{subtree}/{name}");
    let mut report = TeardownReport {
        killed: 0,
        removed: Vec::new(),
    };
    for member in members {
        let member = GearCgroup {
            layout: mounts.layout,
            dirs: gear_paths(
                &mounts,
                &CgroupPlacement {
                    subtree: inner.clone(),
                    leaf: member,
                },
            ),
        };
        let done = member.teardown(Duration::from_secs(10))?;
        report.killed += done.killed;
        report.removed.extend(done.removed);
    }
    let done = group.teardown(Duration::from_secs(10))?;
    report.killed += done.killed;
    report.removed.extend(done.removed);
    Ok(report)
}

/// Removes every cgroup of gear `gear` under the node's `subtree`: its group with every process
/// start's cgroup in it ([`remove_group`]), and the leaves an earlier version of the node made
/// directly under the subtree ([`legacy_leaves`]), killing whatever is left in them. Every
/// cgroup is tried; the first failure is returned after that.
pub fn remove_gear(subtree: &str, gear: &str) -> Result<TeardownReport, CgroupError> {
    let mut report = TeardownReport {
        killed: 0,
        removed: Vec::new(),
    };
    let mut first_error = None;
    match remove_group(subtree, gear) {
        Ok(done) => {
            report.killed += done.killed;
            report.removed.extend(done.removed);
        }
        Err(e) => first_error = Some(e),
    }
    let mounts = match detect() {
        Ok(mounts) => mounts,
        Err(e) => return Err(first_error.unwrap_or(e)),
    };
    // a leaf exists once per hierarchy; teardown handles all of them at once
    for leaf in legacy_leaves(&mounts, subtree, gear) {
        let placement = CgroupPlacement {
            subtree: subtree.to_string(),
            leaf,
        };
        match teardown(&placement) {
            Ok(done) => {
                report.killed += done.killed;
                report.removed.extend(done.removed);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Removes the node's (empty) subtree directories, e.g. after tests.
pub fn remove_subtree(subtree: &str) -> Result<(), CgroupError> {
    let mounts = detect()?;
    for root in roots(&mounts) {
        let dir = root.join(subtree);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io_err(
                    "remove",
                    &dir,
                    "tear down the gears still in it first",
                )(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    fn placement() -> CgroupPlacement {
        CgroupPlacement {
            subtree: "gearhost".into(),
            leaf: "g1".into(),
        }
    }

    #[test]
    fn hybrid_layout_uses_v1_controllers() {
        let m = parse_mountinfo(HYBRID).expect("parse");
        assert_eq!(m.layout, CgroupLayout::Hybrid);
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let paths = gear_paths(&m, &placement());
        assert_eq!(
            paths["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/gearhost/g1")
        );
        assert_eq!(
            paths["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu/gearhost/g1")
        );
        assert_eq!(paths.len(), 5);
        assert!(!paths.contains_key("unified"));
    }

    #[test]
    fn shared_cpu_hierarchy_is_joined_once() {
        let text = "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    2 0 0:2 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                    3 0 0:3 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let m = parse_mountinfo(text).expect("parse");
        assert_eq!(m.layout, CgroupLayout::V1);
        let paths = gear_paths(&m, &placement());
        assert_eq!(paths.len(), 3);
        let cg = GearCgroup {
            layout: m.layout,
            dirs: paths,
        };
        assert_eq!(cg.dir_for("cpu"), cg.dir_for("cpuacct"));
    }

    #[test]
    fn pure_v2_layout() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let m = parse_mountinfo(text).expect("parse");
        assert_eq!(m.layout, CgroupLayout::V2);
        let paths = gear_paths(&m, &placement());
        assert_eq!(
            paths["unified"],
            PathBuf::from("/sys/fs/cgroup/gearhost/g1")
        );
    }

    #[test]
    fn no_cgroups_is_an_error() {
        assert!(matches!(
            parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            Err(CgroupError::NotMounted)
        ));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn stat_values_are_found() {
        assert_eq!(
            stat_value("nr_periods 10\nnr_throttled 4\n", "nr_throttled"),
            Some(4)
        );
        assert_eq!(
            stat_value("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
    }

    #[test]
    fn a_gear_group_holds_one_leaf_per_start() {
        assert_eq!(group_path("gearhost", "g1"), "gearhost/g1");
        let service = leaf_placement("gearhost", "g1", &process_leaf("g1", "web", 7));
        assert_eq!(service.subtree, "gearhost/g1");
        assert_eq!(service.leaf, "g1-web-7");
        assert_eq!(group_of(&service), Some(("gearhost", "g1")));
        let exec = leaf_placement("nodes/a", "g2", &exec_leaf("g2", 3));
        assert_eq!(exec.leaf, "g2-x3");
        // a nested node subtree keeps its own slashes
        assert_eq!(group_of(&exec), Some(("nodes/a", "g2")));
        // a placement straight below the roots has no group
        assert_eq!(group_of(&placement()), None);
        // the names pass the spec's checks
        let mut spec = crate::SandboxSpec::new("g1", 5001, 5001, "/tmp", vec!["/bin/true".into()]);
        spec.cgroup = service;
        spec.validate().expect("valid placement");
    }

    #[test]
    fn the_leaf_lands_under_every_root() {
        let m = parse_mountinfo(HYBRID).expect("parse");
        let paths = gear_paths(&m, &leaf_placement("gearhost", "g1", "g1-web-0"));
        assert_eq!(
            paths["pids"],
            PathBuf::from("/sys/fs/cgroup/pids/gearhost/g1/g1-web-0")
        );
    }

    #[test]
    fn roots_are_listed_once_per_hierarchy() {
        let text = "1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory\n\
                    3 0 0:3 / /cg/unified rw - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text).expect("parse");
        assert_eq!(
            roots(&m),
            vec![
                PathBuf::from("/cg/cpu,cpuacct"),
                PathBuf::from("/cg/memory")
            ]
        );
        let v2 = parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
            .expect("parse");
        assert_eq!(roots(&v2), vec![PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn legacy_leaves_are_found_by_gear_across_roots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (memory, pids) = (dir.path().join("memory"), dir.path().join("pids"));
        for made in [
            memory.join("gearhost/g1-web-0"),
            memory.join("gearhost/g1-x4"),
            pids.join("gearhost/g1-web-0"),
            pids.join("gearhost/g12-web-0"),
            pids.join("gearhost/g1"),
            memory.join("gearhost/g2-web-1"),
        ] {
            std::fs::create_dir_all(made).expect("mkdir");
        }
        // a control file that happens to share the prefix is not a cgroup
        std::fs::write(pids.join("gearhost/g1-notes"), "").expect("write");
        let mounts = CgroupMounts {
            layout: CgroupLayout::V1,
            v1: BTreeMap::from([
                ("memory".to_string(), memory.clone()),
                ("pids".to_string(), pids.clone()),
            ]),
            v2: None,
        };
        let found: Vec<String> = legacy_leaves(&mounts, "gearhost", "g1")
            .into_iter()
            .collect();
        assert_eq!(found, ["g1-web-0", "g1-x4"]);
        assert!(legacy_leaves(&mounts, "elsewhere", "g1").is_empty());
    }

    #[test]
    fn proc_cgroup_lines_are_parsed() {
        let text = "12:pids:/user.slice\n\
                    4:cpu,cpuacct:/user.slice/session-3.scope\n\
                    1:name=systemd:/user.slice/session-3.scope\n\
                    not a line\n\
                    0::/user.slice/user-0.slice/session-3.scope\n";
        let groups = parse_proc_cgroup(text);
        assert_eq!(groups.len(), 4);
        assert_eq!(
            groups[1],
            ProcCgroup {
                hierarchy: 4,
                controllers: vec!["cpu".into(), "cpuacct".into()],
                path: "/user.slice/session-3.scope".into(),
            }
        );
        assert_eq!(groups[3].hierarchy, 0);
        assert!(groups[3].controllers.is_empty());
        // hybrid: pids from its v1 hierarchy, memory (not in the text) nowhere on v1, so v2
        let m = parse_mountinfo(HYBRID).expect("parse");
        assert_eq!(
            process_dir(&m, &groups, "pids"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/user.slice"))
        );
        assert_eq!(
            process_dir(&m, &groups, "cpu"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/cpu/user.slice/session-3.scope"
            ))
        );
        assert_eq!(
            process_dir(&m, &groups, "memory"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/user.slice/user-0.slice/session-3.scope"
            ))
        );
        let v2 = parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
            .expect("parse");
        assert_eq!(
            process_dir(&v2, &groups, "pids"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope"
            ))
        );
    }

    #[test]
    fn this_process_has_cgroups() {
        let groups = cgroups_of(std::process::id()).expect("own cgroups");
        assert!(!groups.is_empty());
        assert!(groups.iter().all(|g| g.path.starts_with('/')));
    }
}
