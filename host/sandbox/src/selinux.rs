//! SELinux: the per-gear MCS level (OpenShift v2's uid mapping), detection, the exec label and
//! labelling of the gear's home.

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cgroup::unescape_mountinfo;
use crate::spec::SelinuxLabel;

/// Number of MCS categories (`c0` to `c1023`).
pub const CATEGORIES: u32 = 1024;

/// Number of distinct 2-category levels, i.e. the largest uid that has one.
pub const MAX_MCS_UID: u32 = CATEGORIES * (CATEGORIES - 1) / 2;

/// An MCS level of the form `s0:cA,cB` with `A < B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct McsLevel {
    /// The lower category.
    pub low: u16,
    /// The higher category.
    pub high: u16,
}

impl fmt::Display for McsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s0:c{},c{}", self.low, self.high)
    }
}

impl FromStr for McsLevel {
    type Err = SelinuxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SelinuxError::BadLevel(s.to_string());
        let rest = s.strip_prefix("s0:c").ok_or_else(bad)?;
        let (a, b) = rest.split_once(",c").ok_or_else(bad)?;
        let low: u16 = a.parse().map_err(|_| bad())?;
        let high: u16 = b.parse().map_err(|_| bad())?;
        if low >= high || u32::from(high) >= CATEGORIES {
            return Err(bad());
        }
        Ok(McsLevel { low, high })
    }
}

impl Serialize for McsLevel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for McsLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Errors of the SELinux layer.
#[derive(Debug, thiserror::Error)]
pub enum SelinuxError {
    /// The uid has no MCS level.
    #[error(
        "uid {uid} has no MCS level: gear uids run from 1 to {MAX_MCS_UID}; pick a uid in that range"
    )]
    UidOutOfRange {
        /// The refused uid.
        uid: u32,
    },
    /// A level string is malformed.
    #[error("{0:?} is not an MCS level: write it as s0:cA,cB with A < B < 1024")]
    BadLevel(String),
    /// Labelling a file failed while SELinux is enabled, so the gear is not started.
    #[error(
        "could not label {path} with {context}: {message}; the gear is not started: check that the gear policy module is installed (semodule -l | grep gear) and that the file may be relabelled (not immutable: lsattr)"
    )]
    Label {
        /// The file.
        path: PathBuf,
        /// The context that was to be set.
        context: String,
        /// What libselinux said.
        message: String,
    },
    /// Reading a directory of the gear's home failed during labelling.
    #[error(
        "could not read {path} while labelling the gear's home: {source}; check that the home exists and is readable by root"
    )]
    Walk {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// OpenShift v2's mapping from a gear uid to its MCS level: uid `n` gets the `n`-th (1-based)
/// 2-combination of `c0..c1023` in lexicographic order, so uid 1 is `s0:c0,c1`, uid 1023 is
/// `s0:c0,c1023`, uid 1024 is `s0:c1,c2`. Distinct uids get distinct levels.
pub fn mcs_level_for_uid(uid: u32) -> Result<McsLevel, SelinuxError> {
    if uid == 0 || uid > MAX_MCS_UID {
        return Err(SelinuxError::UidOutOfRange { uid });
    }
    let mut remaining = uid;
    let mut low = 0u32;
    // Each lower category `low` pairs with CATEGORIES - 1 - low higher ones.
    loop {
        let row = CATEGORIES - 1 - low;
        if remaining <= row {
            let high = low + remaining;
            return Ok(McsLevel {
                low: low as u16,
                high: high as u16,
            });
        }
        remaining -= row;
        low += 1;
    }
}

/// Whether SELinux is enabled on this kernel (its filesystem is mounted and a policy is loaded).
pub fn is_enabled() -> bool {
    matches!(
        ::selinux::kernel_support(),
        ::selinux::KernelSupport::SELinux | ::selinux::KernelSupport::SELinuxMLS
    )
}

/// What the SELinux layer did for one gear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelinuxReport {
    /// The gear runs under this label and its home carries the same level.
    Applied {
        /// The process label.
        label: String,
    },
    /// SELinux is not enabled on this kernel; the other layers still hold.
    NotEnabled,
}

impl fmt::Display for SelinuxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelinuxReport::Applied { label } => write!(f, "applied ({label})"),
            SelinuxReport::NotEnabled => f.write_str("not enabled on this kernel"),
        }
    }
}

/// The process and file contexts of one gear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GearContexts {
    /// Label of the gear's processes, e.g. `system_u:system_r:gear_t:s0:c1,c2`.
    pub process: String,
    /// Label of the gear's files, e.g. `system_u:object_r:gear_file_t:s0:c1,c2`.
    pub file: String,
}

/// Resolves the contexts of a gear from its label choice and uid.
pub fn gear_contexts(label: Option<&SelinuxLabel>, uid: u32) -> Result<GearContexts, SelinuxError> {
    let default = SelinuxLabel::default();
    let label = label.unwrap_or(&default);
    let level = match label.level {
        Some(level) => level,
        None => mcs_level_for_uid(uid)?,
    };
    Ok(GearContexts {
        process: format!("{}:{}:{}:{level}", label.user, label.role, label.type_),
        file: format!("{}:object_r:{}:{level}", label.user, label.file_type),
    })
}

/// Labels `root` and everything below it (without following symlinks) with `context`.
/// Fails on the first file that cannot be labelled.
///
/// Files that already carry `context` are left alone (a warm start writes nothing). Mount
/// points below `root` are neither labelled nor entered: whatever an operator mounted into a
/// gear's home is not the gear's to own, and a walk into another gear's files (a bind mount)
/// must not hand them to this gear's level.
pub fn label_tree(root: &Path, context: &str) -> Result<(), SelinuxError> {
    let c_context =
        CString::new(context).map_err(|_| SelinuxError::BadLevel(context.to_string()))?;
    let ctx = ::selinux::SecurityContext::from_c_str(&c_context, true);
    let label = |path: &Path| {
        let current = ::selinux::SecurityContext::of_path(path, false, true)
            .ok()
            .flatten()
            .and_then(|c| c.to_c_string().ok().flatten().map(|c| c.into_owned()));
        if current.as_deref() == Some(c_context.as_c_str()) {
            return Ok(());
        }
        ctx.set_for_path(path, false, true)
            .map_err(|e| SelinuxError::Label {
                path: path.to_path_buf(),
                context: context.to_string(),
                message: match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                },
            })
    };
    let mounts = mount_points_below(root);
    label(root)?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| SelinuxError::Walk {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| SelinuxError::Walk {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if mounts.iter().any(|m| m == &path) {
                continue;
            }
            label(&path)?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Mount points strictly below `root` in this process's mount namespace.
fn mount_points_below(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p != root && p.starts_with(root))
        .collect()
}

/// The mode SELinux is in: `enforcing`, `permissive` or `disabled`.
pub fn mode() -> &'static str {
    if !is_enabled() {
        return "disabled";
    }
    match ::selinux::current_mode() {
        ::selinux::SELinuxMode::Enforcing => "enforcing",
        ::selinux::SELinuxMode::Permissive => "permissive",
        _ => "disabled",
    }
}

/// Whether the loaded policy knows `context` (e.g. whether the gear policy module is loaded:
/// its types make its contexts valid).
pub fn context_is_valid(context: &str) -> bool {
    CString::new(context)
        .ok()
        .and_then(|c| ::selinux::SecurityContext::from_c_str(&c, true).check())
        .unwrap_or(false)
}

/// The calling process's own context, e.g. `system_u:system_r:gear_node_t:s0-s0:c0.c1023`.
pub fn current_context() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/attr/current").ok()?;
    let text = text.trim_end_matches(['\0', '\n']).to_string();
    (!text.is_empty()).then_some(text)
}

/// Whether an MLS range (the part of a context after its type) is the single level `s0`, the
/// level the node must run at: the pipes and sockets it hands a gear carry the node's level,
/// and a gear may only use what its own level dominates.
pub fn range_is_s0(range: &str) -> bool {
    matches!(range, "s0" | "s0-s0")
}

/// Sets the label the calling thread's next execve runs under, as `setexeccon` does: by
/// writing `/proc/thread-self/attr/exec`. Done directly so `gearhost-init` does not load
/// libselinux (and its configuration) on every gear start.
pub(crate) fn set_exec_label(context: &str) -> Result<(), String> {
    let path = "/proc/thread-self/attr/exec";
    std::fs::write(path, context.as_bytes())
        .map_err(|e| format!("write {context} to {path} (setexeccon): {e}"))
}

/// Moves the calling thread to `context` at once, as `setcon` does: by writing
/// `/proc/thread-self/attr/current` (the policy must allow the dynamic transition). Used by
/// the gear's init, which never executes anything after setup.
pub(crate) fn set_current_label(context: &str) -> Result<(), String> {
    let path = "/proc/thread-self/attr/current";
    std::fs::write(path, context.as_bytes())
        .map_err(|e| format!("write {context} to {path} (setcon): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_points_match_openshift() {
        let cases = [
            (1, "s0:c0,c1"),
            (1000, "s0:c0,c1000"),
            (1023, "s0:c0,c1023"),
            (1024, "s0:c1,c2"),
            (6000, "s0:c5,c900"),
        ];
        for (uid, want) in cases {
            assert_eq!(
                mcs_level_for_uid(uid).expect("in range").to_string(),
                want,
                "uid {uid}"
            );
        }
        assert_eq!(
            mcs_level_for_uid(MAX_MCS_UID).expect("last").to_string(),
            "s0:c1022,c1023"
        );
    }

    #[test]
    fn bounds_are_errors() {
        assert!(matches!(
            mcs_level_for_uid(0),
            Err(SelinuxError::UidOutOfRange { uid: 0 })
        ));
        assert!(mcs_level_for_uid(MAX_MCS_UID + 1).is_err());
        assert!(mcs_level_for_uid(u32::MAX).is_err());
    }

    #[test]
    fn levels_are_unique_and_ordered() {
        let mut previous: Option<McsLevel> = None;
        for uid in 1..=20_000 {
            let level = mcs_level_for_uid(uid).expect("in range");
            assert!(level.low < level.high);
            if let Some(p) = previous {
                assert!(p < level, "uid {uid}: {p} !< {level}");
            }
            previous = Some(level);
        }
    }

    #[test]
    fn levels_parse_back() {
        let level = mcs_level_for_uid(6000).expect("in range");
        assert_eq!(level.to_string().parse::<McsLevel>().expect("parse"), level);
        for bad in ["s0:c2,c1", "s0:c1,c1024", "s1:c0,c1", "c0,c1"] {
            assert!(bad.parse::<McsLevel>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }

    #[test]
    fn mount_points_below_a_root_exclude_the_root() {
        let below_root = mount_points_below(Path::new("/"));
        assert!(
            below_root.iter().any(|p| p == Path::new("/proc")),
            "{below_root:?}"
        );
        assert!(!below_root.iter().any(|p| p == Path::new("/")));
        let below_proc = mount_points_below(Path::new("/proc"));
        assert!(
            below_proc
                .iter()
                .all(|p| p.starts_with("/proc") && p != Path::new("/proc"))
        );
    }

    #[test]
    fn node_runs_at_s0() {
        assert!(range_is_s0("s0"));
        assert!(range_is_s0("s0-s0"));
        assert!(!range_is_s0("s0-s0:c0.c1023"));
        assert!(!range_is_s0("s0:c1,c2"));
    }

    #[test]
    fn mode_is_a_known_word() {
        assert!(["enforcing", "permissive", "disabled"].contains(&mode()));
        if !is_enabled() {
            assert_eq!(mode(), "disabled");
        }
    }

    #[test]
    fn contexts_use_the_uid_level() {
        let c = gear_contexts(None, 1024).expect("contexts");
        assert_eq!(c.process, "system_u:system_r:gear_t:s0:c1,c2");
        assert_eq!(c.file, "system_u:object_r:gear_file_t:s0:c1,c2");
    }
}
