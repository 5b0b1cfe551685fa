//! The layout of the node's cgroups: a gear's group and the leaf of each
//! process start in it, the roots of the hierarchies, and what
//! `/proc/<pid>/cgroup` says about a process.

use std::path::{Path, PathBuf};

use super::*;

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

/// The cgroups inside gear `gear`'s group (the leaves of its process starts), by name,
/// across every hierarchy.
pub fn group_members(
    mounts: &CgroupMounts,
    subtree: &str,
    gear: &str,
) -> std::collections::BTreeSet<String> {
    let group = group_path(subtree, gear);
    roots(mounts)
        .iter()
        .filter_map(|root| std::fs::read_dir(root.join(&group)).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
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
