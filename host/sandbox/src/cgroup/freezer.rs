//! The cgroup freezer: a gear's group frozen whole (every process start and
//! command in it, and any made in it while it is frozen) and thawed again.
//! Its processes keep their memory, files and connections; they get no CPU
//! until thawed.
//!
//! v1 writes `FROZEN` / `THAWED` to the freezer hierarchy's `freezer.state`
//! and waits until it reads `FROZEN` (it reads `FREEZING` while tasks are on
//! their way). v2 writes `1` / `0` to `cgroup.freeze` and waits until
//! `cgroup.events` says `frozen 1`. A freeze that does not complete within its
//! deadline (a task stuck in the kernel) is undone, so that a gear is never
//! left half frozen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// Whether a gear's group is frozen, as the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    /// Its processes run.
    Thawed,
    /// Asked to freeze, not every task is frozen yet.
    Freezing,
    /// Every task is frozen.
    Frozen,
}

impl GearCgroup {
    /// The file that freezes the cgroup: `freezer.state` (v1) or `cgroup.freeze` (v2).
    fn freeze_file(&self) -> Option<PathBuf> {
        if self.layout == CgroupLayout::V2 {
            return self.dir_for("unified").map(|d| d.join("cgroup.freeze"));
        }
        self.dirs.get("freezer").map(|d| d.join("freezer.state"))
    }

    /// The cgroup's freezer state; `None` when it has no freezer (no v1 freezer hierarchy, a
    /// v2 kernel older than 5.2) or does not exist.
    pub fn freezer_state(&self) -> Option<FreezerState> {
        let file = self.freeze_file()?;
        if self.layout == CgroupLayout::V2 {
            let dir = file.parent()?;
            let events = std::fs::read_to_string(dir.join("cgroup.events")).ok()?;
            let asked = std::fs::read_to_string(&file).ok()?.trim() == "1";
            return Some(match (asked, stat_value(&events, "frozen") == Some(1)) {
                (_, true) => FreezerState::Frozen,
                (true, false) => FreezerState::Freezing,
                (false, false) => FreezerState::Thawed,
            });
        }
        let text = std::fs::read_to_string(&file).ok()?;
        Some(match text.trim() {
            "FROZEN" => FreezerState::Frozen,
            "FREEZING" => FreezerState::Freezing,
            _ => FreezerState::Thawed,
        })
    }

    /// Freezes every process in the cgroup and its descendants, waiting up to `deadline` for
    /// all of them to be frozen. A freeze that does not complete in time is undone (the cgroup
    /// is thawed) and reported as [`CgroupError::FreezeTimeout`].
    pub fn freeze(&self, deadline: Duration) -> Result<(), CgroupError> {
        let file = self.freeze_file().ok_or(CgroupError::NoFreezer)?;
        let value = if self.layout == CgroupLayout::V2 {
            "1"
        } else {
            "FROZEN"
        };
        write_file(
            &file,
            value,
            "check that the gear's cgroup exists and the freezer is available",
        )?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match self.freezer_state() {
                Some(FreezerState::Frozen) => return Ok(()),
                None => return Err(CgroupError::NoFreezer),
                Some(_) => {}
            }
            if started.elapsed() >= deadline {
                let _ = self.thaw();
                return Err(CgroupError::FreezeTimeout {
                    path: file,
                    waited: deadline,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Thaws the cgroup: its processes run again where they stopped. Thawing a cgroup that is
    /// not frozen, or is gone, changes nothing.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        let Some(file) = self.freeze_file() else {
            return Ok(());
        };
        let value = if self.layout == CgroupLayout::V2 {
            "0"
        } else {
            "THAWED"
        };
        match std::fs::write(&file, value) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(
                "write",
                &file,
                "thaw the gear's cgroup by hand (echo THAWED > freezer.state, or echo 0 > cgroup.freeze)",
            )(e)),
        }
    }
}

/// The group of gear `gear` under the node's `subtree` (as made by [`ensure_group`]), for the
/// freezer and for reading its memory.
pub fn gear_group(mounts: &CgroupMounts, subtree: &str, gear: &str) -> GearCgroup {
    GearCgroup::existing(
        mounts,
        &CgroupPlacement {
            subtree: subtree.to_string(),
            leaf: gear.to_string(),
        },
    )
}

/// Freezes the whole group of gear `gear` (see [`GearCgroup::freeze`]).
pub fn freeze_gear(subtree: &str, gear: &str, deadline: Duration) -> Result<(), CgroupError> {
    let mounts = detect_kept()?;
    let group = gear_group(&mounts, subtree, gear);
    if group.pids_below().is_empty() {
        return Err(CgroupError::NothingToFreeze {
            path: group.dirs.values().next().cloned().unwrap_or_default(),
        });
    }
    group.freeze(deadline)
}

/// Thaws the whole group of gear `gear`; a group that is not frozen, or does not exist, is
/// left as it is.
pub fn thaw_gear(subtree: &str, gear: &str) -> Result<(), CgroupError> {
    let mounts = detect_kept()?;
    gear_group(&mounts, subtree, gear).thaw()
}

/// Whether the group of gear `gear` is frozen (or freezing); `false` when it has no freezer
/// or does not exist.
pub fn gear_frozen(subtree: &str, gear: &str) -> bool {
    detect_kept().is_ok_and(|mounts| {
        matches!(
            gear_group(&mounts, subtree, gear).freezer_state(),
            Some(FreezerState::Frozen | FreezerState::Freezing)
        )
    })
}

/// The memory the group of gear `gear` holds now, in bytes (its processes' pages, page cache
/// and tmpfs included), if it can be read.
pub fn gear_memory(subtree: &str, gear: &str) -> Option<u64> {
    let mounts = detect_kept().ok()?;
    gear_group(&mounts, subtree, gear).memory_usage()
}

impl GearCgroup {
    /// Host pids in the cgroup and every cgroup below it.
    fn pids_below(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.dirs.values() {
            collect_pids(dir, &mut pids, 0);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>, depth: usize) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if depth > 4 {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_pids(&entry.path(), pids, depth + 1);
        }
    }
}

/// How much memory the machine has available for new work, in bytes (`MemAvailable` in
/// `/proc/meminfo`).
pub fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// The machine's memory and how much of it is available for new work, in bytes (`MemTotal`
/// and `MemAvailable` in `/proc/meminfo`, read once).
pub fn memory_total_and_available() -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (
        meminfo_bytes(&text, "MemTotal:"),
        parse_mem_available(&text),
    )
}

pub(super) fn parse_mem_available(text: &str) -> Option<u64> {
    meminfo_bytes(text, "MemAvailable:")
}

/// The field `name` (with its colon) of `/proc/meminfo`'s text, in bytes.
fn meminfo_bytes(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}
