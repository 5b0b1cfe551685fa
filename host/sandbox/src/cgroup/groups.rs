//! Gears' groups over their lifetime: a group made with its limits once
//! (`ensure_group`), and teardown of leaves, groups, whole gears (those of an
//! earlier layout included) and the node's subtree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// What a teardown did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownReport {
    /// Processes that were still alive and were killed.
    pub killed: usize,
    /// Cgroup directories removed.
    pub removed: Vec<PathBuf>,
}

pub(super) fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Tears down the cgroup of a gear by placement (kills what is left, removes the directories).
pub fn teardown(placement: &CgroupPlacement) -> Result<TeardownReport, CgroupError> {
    let mounts = detect_kept()?;
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
pub(super) type Groups = BTreeMap<String, (Limits, CgroupReport, PathBuf)>;

pub(super) fn lock_groups() -> std::sync::MutexGuard<'static, Groups> {
    static GROUPS: std::sync::Mutex<Groups> = std::sync::Mutex::new(BTreeMap::new());
    gearhost_sys::lock::lock(&GROUPS)
}

pub(super) fn write_group(
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
pub(super) fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
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
    let mounts = detect_kept()?;
    let group_placement = CgroupPlacement {
        subtree: subtree.to_string(),
        leaf: name.to_string(),
    };
    let group = GearCgroup {
        layout: mounts.layout,
        dirs: gear_paths(&mounts, &group_placement),
    };
    // a frozen gear's processes are thawed first: on v1 a frozen task does not die of SIGKILL
    // until it is, and a member cannot be thawed while its group is frozen
    group.thaw()?;
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
    let mounts = match detect_kept() {
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
    let mounts = detect_kept()?;
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
