//! SELinux: the per-gear MCS level (OpenShift v2's uid mapping), detection, the exec label and
//! labelling of the gear's home.
//!
//! The home is labelled before every start while the gear's processes may be running and
//! changing it, so the walk ([`label_tree`]) never resolves a path under the home by name: it
//! goes from descriptor to descriptor (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV`, `O_PATH`), sets each label through the entry's own descriptor, and stops
//! (failing the start) past [`LABEL_WALK_LIMITS`].

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::spec::SelinuxLabel;
use crate::sys;

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
        "could not read {path} while labelling the gear's home: {source}; check that the home exists, is readable by root and has no symlink on its path"
    )]
    Walk {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The tree to label is deeper than the walk goes.
    #[error(
        "{path} is more than {max} directories below {root}, deeper than the label walk goes; the gear is not started: remove or flatten that tree on the host (e.g. rm -r the directory it is in)"
    )]
    TooDeep {
        /// The root of the walk (the gear's home or a read-write bind).
        root: PathBuf,
        /// The first entry found too deep.
        path: PathBuf,
        /// The bound.
        max: usize,
    },
    /// The tree to label holds more entries than the walk visits.
    #[error(
        "{root} holds more than {max} files, directories and links, more than the label walk visits; the gear is not started: remove files from it on the host"
    )]
    TooManyEntries {
        /// The root of the walk.
        root: PathBuf,
        /// The bound.
        max: u64,
    },
    /// The walk took longer than its time bound.
    #[error(
        "labelling {root} took longer than {seconds} s ({visited} entries visited); the gear is not started: remove files from it, or start it again when the machine is less loaded"
    )]
    TooSlow {
        /// The root of the walk.
        root: PathBuf,
        /// The bound.
        seconds: u64,
        /// Entries visited until then.
        visited: u64,
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

/// The extended attribute that holds a file's SELinux context.
const SELINUX_XATTR: &CStr = c"security.selinux";

/// How far the label walk may go. Past any bound the walk fails, and with it the gear's start
/// (fail closed): a home that cannot be walked in full cannot be known to be labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Directory levels below the root that are walked; each level holds one descriptor open
    /// while the walk is below it.
    pub max_depth: usize,
    /// Files, directories and links met, the root included (a file met twice, e.g. because the
    /// gear moves it during the walk, counts twice).
    pub max_entries: u64,
    /// Wall-clock time for the whole walk.
    pub max_time: Duration,
}

/// The bounds of the walk done before every start: 128 levels, a million entries, 60 seconds.
pub const LABEL_WALK_LIMITS: WalkLimits = WalkLimits {
    max_depth: 128,
    max_entries: 1_000_000,
    max_time: Duration::from_secs(60),
};

/// What kind of file a walked entry is (from `fstat` of its descriptor, not from the directory
/// listing, which may be out of date by the time the entry is opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A directory (entered after the visit).
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (the link itself: never followed).
    Symlink,
    /// A FIFO, socket or device node (never opened for I/O).
    Other,
}

/// One file met by [`walk`]. Its descriptor is an `O_PATH` one, opened relative to its parent's
/// descriptor without following any link and without crossing a mount, so whatever is done
/// through it ([`crate::sys::fd_setxattr`]) reaches this very file, whatever the gear renames
/// or swaps meanwhile.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    /// The `O_PATH` descriptor.
    pub(crate) fd: BorrowedFd<'a>,
    /// What it is.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the labeller treats every kind alike")
    )]
    pub(crate) kind: Kind,
    /// Where it was found (for messages: by the time it is read, another file may be there).
    pub(crate) path: &'a Path,
    /// Levels below the root (the root is 0).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the labeller treats every level alike")
    )]
    pub(crate) depth: usize,
}

/// What a walk met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// Entries visited, the root included.
    pub visited: u64,
    /// Entries that were gone by the time they were opened (removed or renamed meanwhile).
    pub vanished: u64,
    /// Mount points below the root: neither visited nor entered.
    pub mounts: u64,
    /// Entries whose label was changed (by [`label_tree`]).
    pub relabelled: u64,
}

/// Walks `root` and everything below it, calling `visit` on each entry (the root first, each
/// directory before its contents), without ever following a symlink or leaving the tree:
///
/// - the root is opened with `RESOLVE_NO_SYMLINKS` (no link anywhere on its path);
/// - each entry is opened relative to its directory's descriptor with `openat2(O_PATH |
///   O_NOFOLLOW, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: a symlink is opened
///   (and visited) as itself, a mount point is refused and skipped, and nothing is opened for
///   I/O (FIFOs, sockets, device nodes, leased files cannot block the walk);
/// - a directory is listed through a descriptor opened from its own `O_PATH` descriptor, so a
///   directory swapped for a symlink after it was opened is still the one listed, and its
///   entries are looked up in it, not by a path.
///
/// Entries removed meanwhile are skipped. Past a bound of `limits` the walk stops with an
/// error.
pub(crate) fn walk(
    root: &Path,
    limits: &WalkLimits,
    visit: &mut dyn FnMut(&Entry<'_>) -> Result<(), SelinuxError>,
) -> Result<WalkStats, SelinuxError> {
    let started = Instant::now();
    let walk_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SelinuxError::Walk { path, source }
    };
    let c_root = CString::new(root.as_os_str().as_bytes()).map_err(|_| SelinuxError::Walk {
        path: root.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"),
    })?;
    let root_fd = sys::openat2_path(
        None,
        &c_root,
        sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(walk_error(root))?;
    let mut stats = WalkStats {
        visited: 1,
        ..WalkStats::default()
    };
    let kind = kind_of(root_fd.as_fd()).map_err(walk_error(root))?;
    visit(&Entry {
        fd: root_fd.as_fd(),
        kind,
        path: root,
        depth: 0,
    })?;
    if kind != Kind::Dir {
        return Ok(stats);
    }
    struct Frame {
        entries: sys::DirEntries,
        path: PathBuf,
    }
    let mut stack = vec![Frame {
        entries: list(root_fd.as_fd()).map_err(walk_error(root))?,
        path: root.to_path_buf(),
    }];
    drop(root_fd);
    loop {
        // the entries listed now are this many levels below the root
        let depth = stack.len();
        let Some(frame) = stack.last_mut() else {
            break;
        };
        let Some(name) = frame.entries.next_name().map_err(walk_error(&frame.path))? else {
            stack.pop();
            continue;
        };
        let path = frame.path.join(OsStr::from_bytes(name.to_bytes()));
        if depth > limits.max_depth {
            return Err(SelinuxError::TooDeep {
                root: root.to_path_buf(),
                path,
                max: limits.max_depth,
            });
        }
        if stats.visited >= limits.max_entries {
            return Err(SelinuxError::TooManyEntries {
                root: root.to_path_buf(),
                max: limits.max_entries,
            });
        }
        if started.elapsed() > limits.max_time {
            return Err(SelinuxError::TooSlow {
                root: root.to_path_buf(),
                seconds: limits.max_time.as_secs(),
                visited: stats.visited,
            });
        }
        let child = match open_entry(frame.entries.fd(), &name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                stats.vanished += 1;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                stats.mounts += 1;
                continue;
            }
            Err(e) => return Err(walk_error(&path)(e)),
        };
        let kind = kind_of(child.as_fd()).map_err(walk_error(&path))?;
        stats.visited += 1;
        visit(&Entry {
            fd: child.as_fd(),
            kind,
            path: &path,
            depth,
        })?;
        if kind == Kind::Dir {
            match list(child.as_fd()) {
                Ok(entries) => stack.push(Frame { entries, path }),
                // removed between the visit and the listing
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => stats.vanished += 1,
                Err(e) => return Err(walk_error(&path)(e)),
            }
        }
    }
    Ok(stats)
}

/// Opens entry `name` of directory `dir` as an `O_PATH` descriptor: no link followed (a symlink
/// is opened itself), no mount crossed (`EXDEV`), never outside `dir`.
fn open_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    let resolve = sys::RESOLVE_BENEATH
        | sys::RESOLVE_NO_SYMLINKS
        | sys::RESOLVE_NO_MAGICLINKS
        | sys::RESOLVE_NO_XDEV;
    let mut tries = 0;
    loop {
        match sys::openat2_flags(dir, name, libc::O_PATH | libc::O_NOFOLLOW, resolve) {
            // the kernel saw a rename or mount race it could not rule out: look again
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 8 => tries += 1,
            other => return other,
        }
    }
}

/// Lists the directory an `O_PATH` descriptor refers to: `.` opened from that descriptor is
/// that same directory, whatever is at its name by now.
fn list(dir: BorrowedFd<'_>) -> io::Result<sys::DirEntries> {
    let fd = sys::openat2_flags(
        dir,
        c".",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_XDEV,
    )?;
    Ok(sys::DirEntries::new(fd))
}

fn kind_of(fd: BorrowedFd<'_>) -> io::Result<Kind> {
    let stat = nix::sys::stat::fstat(fd).map_err(io::Error::from)?;
    Ok(match stat.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    })
}

/// Labels `root` and everything below it with `context`, walking from descriptor to
/// descriptor within [`LABEL_WALK_LIMITS`]: each entry is opened `O_PATH` relative to its
/// directory's descriptor (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_XDEV`), no symlink is ever followed (links are labelled themselves), every label
/// is read and written through the entry's own descriptor (its `/proc/self/fd` path), and the
/// walk never leaves the tree. So a gear that swaps its directories for links to host files
/// while the walk runs cannot get a host file relabelled. Fails on the first file that cannot
/// be labelled, and past a bound.
///
/// Files that already carry `context` are left alone (a warm start writes nothing). Mount
/// points below `root` are neither labelled nor entered: whatever an operator mounted into a
/// gear's home is not the gear's to own, and a walk into another gear's files (a bind mount)
/// must not hand them to this gear's level.
pub fn label_tree(root: &Path, context: &str) -> Result<WalkStats, SelinuxError> {
    label_tree_with(root, context, SELINUX_XATTR, &LABEL_WALK_LIMITS)
}

/// [`label_tree`] with the attribute and the bounds chosen (tests label with a `trusted.`
/// attribute, which needs no SELinux).
pub(crate) fn label_tree_with(
    root: &Path,
    context: &str,
    xattr: &CStr,
    limits: &WalkLimits,
) -> Result<WalkStats, SelinuxError> {
    let value = CString::new(context).map_err(|_| SelinuxError::BadLevel(context.to_string()))?;
    let mut relabelled = 0;
    let mut current = vec![0u8; 1024];
    let mut stats = walk(root, limits, &mut |entry| {
        let same = match sys::fd_getxattr(entry.fd, xattr, &mut current) {
            Ok(n) => trim_nul(&current[..n]) == value.as_bytes(),
            // none yet, unreadable, or longer than any context we write: set it
            Err(_) => false,
        };
        if same {
            return Ok(());
        }
        sys::fd_setxattr(entry.fd, xattr, value.as_bytes_with_nul()).map_err(|e| {
            SelinuxError::Label {
                path: entry.path.to_path_buf(),
                context: context.to_string(),
                message: e.to_string(),
            }
        })?;
        relabelled += 1;
        Ok(())
    })?;
    stats.relabelled = relabelled;
    Ok(stats)
}

fn trim_nul(value: &[u8]) -> &[u8] {
    let end = value.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &value[..end]
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

/// The SELinux label of the file at `path` (not following a final symlink), e.g.
/// `system_u:object_r:gear_node_exec_t:s0`.
pub fn file_context(path: &Path) -> Option<String> {
    let context = ::selinux::SecurityContext::of_path(path, true, false).ok()??;
    let text = context.to_c_string().ok()??;
    let text = text.to_string_lossy().trim_end_matches('\0').to_string();
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

    // ---- the label walk: traversal (no SELinux, no root needed) ----

    use std::collections::HashSet;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Device and inode of a file, links not followed.
    fn inode(path: &Path) -> (u64, u64) {
        let m = std::fs::symlink_metadata(path).expect("lstat");
        (m.dev(), m.ino())
    }

    fn inode_of(fd: BorrowedFd<'_>) -> (u64, u64) {
        let st = nix::sys::stat::fstat(fd).expect("fstat");
        (st.st_dev, st.st_ino)
    }

    /// Every file of a tree (links not followed), by device and inode.
    fn inodes_below(root: &Path) -> HashSet<(u64, u64)> {
        let mut all = HashSet::from([inode(root)]);
        if std::fs::symlink_metadata(root).expect("lstat").is_dir() {
            for e in std::fs::read_dir(root).expect("read_dir") {
                all.extend(inodes_below(&e.expect("entry").path()));
            }
        }
        all
    }

    /// A host directory the gear must never get the walk into: a secret file and a directory
    /// with the same names as the gear's own.
    fn outside(base: &Path) -> PathBuf {
        let out = base.join("host");
        std::fs::create_dir_all(out.join("etc")).expect("mkdir");
        std::fs::write(out.join("secret"), "host secret").expect("write");
        std::fs::write(out.join("etc/passwd"), "root").expect("write");
        for i in 0..20 {
            std::fs::write(out.join(format!("f{i}")), "host").expect("write");
        }
        out
    }

    /// Walks `root` with no bound that a test would reach, collecting what was visited.
    fn visited(root: &Path) -> Vec<(PathBuf, Kind, (u64, u64))> {
        let mut seen = Vec::new();
        walk(root, &LABEL_WALK_LIMITS, &mut |e| {
            seen.push((e.path.to_path_buf(), e.kind, inode_of(e.fd)));
            Ok(())
        })
        .expect("walk");
        seen
    }

    #[test]
    fn the_walk_visits_links_as_links_and_never_leaves_the_tree() {
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let home = base.path().join("home");
        std::fs::create_dir_all(home.join("app/data/deep")).expect("mkdir");
        std::fs::write(home.join("app/data/own"), "own").expect("write");
        symlink(&out, home.join("app/to-host-dir")).expect("symlink");
        symlink(out.join("secret"), home.join("app/data/to-host-file")).expect("symlink");
        symlink("../../..", home.join("app/data/deep/up")).expect("symlink");
        symlink("self", home.join("self")).expect("symlink");
        symlink("b", home.join("a")).expect("symlink");
        symlink("a", home.join("b")).expect("symlink");
        nix::unistd::mkfifo(&home.join("app/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let _socket =
            std::os::unix::net::UnixListener::bind(home.join("app/sock")).expect("socket");

        let seen = visited(&home);
        let host = inodes_below(&out);
        for (path, _, ino) in &seen {
            assert!(!host.contains(ino), "{} is a host file", path.display());
        }
        let kind = |rel: &str| {
            seen.iter()
                .find(|(p, _, _)| p == &home.join(rel))
                .map(|(_, k, _)| *k)
                .unwrap_or_else(|| panic!("{rel} not visited: {seen:?}"))
        };
        assert_eq!(kind(""), Kind::Dir);
        assert_eq!(kind("app/data/own"), Kind::File);
        for link in [
            "app/to-host-dir",
            "app/data/to-host-file",
            "app/data/deep/up",
            "self",
            "a",
            "b",
        ] {
            assert_eq!(kind(link), Kind::Symlink, "{link}");
        }
        // FIFOs and sockets are visited (opened O_PATH: a FIFO would block an open for reading)
        assert_eq!(kind("app/fifo"), Kind::Other);
        assert_eq!(kind("app/sock"), Kind::Other);
        // each file exactly once: the loops were not followed
        assert_eq!(seen.len(), inodes_below(&home).len(), "{seen:?}");
    }

    #[test]
    fn a_directory_swapped_for_a_link_once_opened_is_still_the_one_walked() {
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let home = base.path().join("home");
        std::fs::create_dir_all(home.join("d/etc")).expect("mkdir");
        std::fs::write(home.join("d/secret"), "own").expect("write");
        std::fs::write(home.join("d/etc/passwd"), "own").expect("write");
        let own = inodes_below(&home.join("d"));
        let mut seen = HashSet::new();
        walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
            // the gear swaps the directory the walk just opened for a link to the host
            if e.path == home.join("d") {
                std::fs::rename(home.join("d"), home.join("d.moved")).expect("rename");
                symlink(&out, home.join("d")).expect("symlink");
            }
            seen.insert(inode_of(e.fd));
            Ok(())
        })
        .expect("walk");
        assert!(
            seen.is_disjoint(&inodes_below(&out)),
            "the walk reached the host"
        );
        // the directory that was opened is the one listed, under whatever name it has now
        assert!(
            own.is_subset(&seen),
            "the gear's own files were all visited"
        );
    }

    #[test]
    fn directories_swapped_for_links_after_the_listing_are_visited_as_links() {
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let home = base.path().join("home");
        let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
        for n in &names {
            std::fs::create_dir_all(home.join(n)).expect("mkdir");
            std::fs::write(home.join(n).join("secret"), "own").expect("write");
        }
        let mut swapped = false;
        let mut seen = Vec::new();
        walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
            // at the first entry the root's listing is read: the gear now swaps every other
            // directory of it for a link to the host
            if e.depth == 1 && !swapped {
                swapped = true;
                for n in &names {
                    let p = home.join(n);
                    if p != e.path {
                        std::fs::rename(&p, home.join(format!("{n}.old"))).expect("rename");
                        symlink(&out, &p).expect("symlink");
                    }
                }
            }
            seen.push((e.path.to_path_buf(), e.kind, inode_of(e.fd)));
            Ok(())
        })
        .expect("walk");
        let host = inodes_below(&out);
        assert!(seen.iter().all(|(_, _, i)| !host.contains(i)), "{seen:?}");
        let links = seen
            .iter()
            .filter(|(p, k, _)| *k == Kind::Symlink && p.parent() == Some(&*home))
            .count();
        assert_eq!(links, names.len() - 1, "{seen:?}");
    }

    /// A gear process swapping `d` (a directory whose files are named like the host's) and `x`
    /// (a link to the host directory) with RENAME_EXCHANGE as fast as it can, until dropped.
    struct Swapper {
        stop: Arc<AtomicBool>,
        swaps: Arc<AtomicU64>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Swapper {
        fn start(home: &Path, out: &Path) -> Swapper {
            std::fs::create_dir_all(home.join("d/etc")).expect("mkdir");
            std::fs::write(home.join("d/secret"), "own").expect("write");
            std::fs::write(home.join("d/etc/passwd"), "own").expect("write");
            for i in 0..20 {
                std::fs::write(home.join(format!("d/f{i}")), "own").expect("write");
            }
            symlink(out, home.join("x")).expect("symlink");
            let stop = Arc::new(AtomicBool::new(false));
            let swaps = Arc::new(AtomicU64::new(0));
            let dir = std::fs::File::open(home).expect("open home");
            let thread = {
                let (stop, swaps) = (stop.clone(), swaps.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        nix::fcntl::renameat2(
                            &dir,
                            "d",
                            &dir,
                            "x",
                            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                        )
                        .expect("exchange");
                        swaps.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            Swapper {
                stop,
                swaps,
                thread: Some(thread),
            }
        }

        fn swaps(&self) -> u64 {
            self.swaps.load(Ordering::Relaxed)
        }
    }

    impl Drop for Swapper {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().expect("swapper");
            }
        }
    }

    /// The walk this module had before, by path: `read_dir` of a directory's path, then each
    /// entry's path (`lstat`, as `lsetfilecon` resolved it: only the last component is not
    /// followed). Returns whether it reached a host file.
    fn walk_by_path(root: &Path, host: &HashSet<(u64, u64)>) -> bool {
        let mut reached = false;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    reached |= host.contains(&(m.dev(), m.ino()));
                }
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(path);
                }
            }
        }
        reached
    }

    #[test]
    fn a_racing_swapper_never_gets_the_walk_out_and_does_get_a_walk_by_path_out() {
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let host = inodes_below(&out);
        let home = base.path().join("home");
        std::fs::create_dir_all(&home).expect("mkdir");
        let swapper = Swapper::start(&home, &out);

        let deadline = Instant::now() + Duration::from_secs(2);
        let mut walks = 0;
        while walks < 20 || Instant::now() < deadline {
            let mut seen = Vec::new();
            walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
                seen.push(inode_of(e.fd));
                Ok(())
            })
            .expect("walk");
            assert!(
                seen.iter().all(|i| !host.contains(i)),
                "walk {walks} reached the host"
            );
            walks += 1;
        }
        let swaps = swapper.swaps();
        assert!(swaps > 100, "the swapper hardly ran ({swaps} swaps)");

        // The negative control: the same swapper against a walk by path gets it out, so the
        // check above can see the race
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut tries, mut lost) = (0u32, 0u32);
        while lost < 3 && Instant::now() < deadline {
            tries += 1;
            lost += u32::from(walk_by_path(&home, &host));
        }
        drop(swapper);
        eprintln!(
            "descriptor walk: {walks} walks, none out; walk by path: out in {lost} of {tries}"
        );
        assert!(
            lost >= 3,
            "the walk by path got out only {lost} times in {tries}"
        );
    }

    #[test]
    fn the_bounds_fail_closed() {
        let base = tempfile::tempdir().expect("tmp");
        let home = base.path().join("home");
        std::fs::create_dir_all(home.join("1/2/3/4/5")).expect("mkdir");
        std::fs::write(home.join("1/2/3/4/5/leaf"), "").expect("write");
        let depth = |max_depth| {
            walk(
                &home,
                &WalkLimits {
                    max_depth,
                    ..LABEL_WALK_LIMITS
                },
                &mut |_| Ok(()),
            )
        };
        // leaf is 6 levels below the home
        let stats = depth(6).expect("6 levels");
        assert_eq!(stats.visited, 7);
        match depth(5) {
            Err(e @ SelinuxError::TooDeep { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("leaf") && text.contains("not started"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let entries = |max_entries| {
            walk(
                &home,
                &WalkLimits {
                    max_entries,
                    ..LABEL_WALK_LIMITS
                },
                &mut |_| Ok(()),
            )
        };
        assert!(entries(7).is_ok());
        assert!(matches!(
            entries(6),
            Err(SelinuxError::TooManyEntries { max: 6, .. })
        ));
        let slow = walk(
            &home,
            &WalkLimits {
                max_time: Duration::ZERO,
                ..LABEL_WALK_LIMITS
            },
            &mut |_| Ok(()),
        );
        assert!(
            matches!(slow, Err(SelinuxError::TooSlow { .. })),
            "{slow:?}"
        );
        // a visitor's error ends the walk
        let mut calls = 0;
        let stopped = walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
            calls += 1;
            if e.depth == 2 {
                return Err(SelinuxError::BadLevel("stop".into()));
            }
            Ok(())
        });
        assert!(matches!(stopped, Err(SelinuxError::BadLevel(_))));
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_root_reached_through_a_link_is_refused() {
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        symlink(&out, base.path().join("home")).expect("symlink");
        let err = walk(&base.path().join("home"), &LABEL_WALK_LIMITS, &mut |_| {
            Ok(())
        })
        .expect_err("a link");
        assert!(
            matches!(&err, SelinuxError::Walk { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
            "{err:?}"
        );
    }

    // ---- labelling and mounts: need root (a `trusted.` attribute, a mount) ----

    fn may_run() -> bool {
        crate::testing::privileged("a trusted. attribute, a mount")
    }

    const TEST_XATTR: &CStr = c"trusted.gearhost-label-test";

    /// The test label of a file (links not followed), if any.
    fn test_label(path: &Path) -> Option<String> {
        let c = CString::new(path.as_os_str().as_bytes()).expect("path");
        // an absolute path: the directory descriptor is not used
        let root = std::fs::File::open("/").expect("root");
        let fd =
            sys::openat2_flags(root.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0).expect("open");
        let mut buf = [0u8; 256];
        sys::fd_getxattr(fd.as_fd(), TEST_XATTR, &mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(trim_nul(&buf[..n])).into_owned())
    }

    #[test]
    fn labelling_reaches_every_file_and_link_itself_and_nothing_outside() {
        if !may_run() {
            return;
        }
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let home = base.path().join("home");
        std::fs::create_dir_all(home.join("app/data")).expect("mkdir");
        std::fs::write(home.join("app/data/own"), "own").expect("write");
        symlink(&out, home.join("app/to-host-dir")).expect("symlink");
        symlink(out.join("secret"), home.join("app/data/to-host-file")).expect("symlink");
        nix::unistd::mkfifo(&home.join("app/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let files = [
            "",
            "app",
            "app/data",
            "app/data/own",
            "app/to-host-dir",
            "app/data/to-host-file",
            "app/fifo",
        ];

        let stats =
            label_tree_with(&home, "level-a", TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
        assert_eq!((stats.visited, stats.relabelled), (7, 7));
        for f in files {
            assert_eq!(test_label(&home.join(f)).as_deref(), Some("level-a"), "{f}");
        }
        for f in ["", "secret", "etc", "etc/passwd"] {
            assert_eq!(test_label(&out.join(f)), None, "host file {f} was labelled");
        }
        // a warm start writes nothing; a file at another level is put back
        let stats =
            label_tree_with(&home, "level-a", TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
        assert_eq!(stats.relabelled, 0);
        let own = std::fs::File::open(home.join("app/data/own")).expect("open");
        sys::fd_setxattr(own.as_fd(), TEST_XATTR, b"level-b\0").expect("set");
        let stats =
            label_tree_with(&home, "level-a", TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
        assert_eq!(stats.relabelled, 1);
        assert_eq!(
            test_label(&home.join("app/data/own")).as_deref(),
            Some("level-a")
        );
    }

    #[test]
    fn labelling_against_a_racing_swapper_never_labels_a_host_file() {
        if !may_run() {
            return;
        }
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let home = base.path().join("home");
        std::fs::create_dir_all(&home).expect("mkdir");
        let swapper = Swapper::start(&home, &out);
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut walks = 0;
        while walks < 20 || Instant::now() < deadline {
            // a new level each time, so every walk writes every label
            let level = format!("level-{walks}");
            label_tree_with(&home, &level, TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
            walks += 1;
        }
        let swaps = swapper.swaps();
        drop(swapper);
        assert!(swaps > 100, "the swapper hardly ran ({swaps} swaps)");
        let mut host = vec![out.clone()];
        while let Some(p) = host.pop() {
            assert_eq!(test_label(&p), None, "{} was labelled", p.display());
            if p.is_dir() && !p.is_symlink() {
                host.extend(
                    std::fs::read_dir(&p)
                        .expect("read")
                        .map(|e| e.expect("e").path()),
                );
            }
        }
        // and the gear's own files were labelled, under whichever name the directory had
        let own = ["d", "x"]
            .iter()
            .map(|n| home.join(n))
            .find(|p| !p.is_symlink())
            .expect("the directory");
        for f in ["", "secret", "etc", "etc/passwd", "f0", "f19"] {
            let label = test_label(&own.join(f));
            assert!(
                label.as_deref().is_some_and(|l| l.starts_with("level-")),
                "{f}: {label:?}"
            );
        }
    }

    #[test]
    fn mount_points_are_neither_labelled_nor_entered() {
        if !may_run() {
            return;
        }
        let base = tempfile::tempdir().expect("tmp");
        let out = outside(base.path());
        let home = base.path().join("home");
        std::fs::create_dir_all(home.join("app/peer")).expect("mkdir");
        std::fs::write(home.join("app/own"), "own").expect("write");
        // in a mount namespace of this thread's own, so nothing is left behind on the host
        let (home2, out2) = (home.clone(), out.clone());
        let (seen, stats) = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make private");
            nix::mount::mount(
                Some(&out2),
                &home2.join("app/peer"),
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind");
            let mut seen = HashSet::new();
            let stats = walk(&home2, &LABEL_WALK_LIMITS, &mut |e| {
                seen.insert(e.path.to_path_buf());
                Ok(())
            })
            .expect("walk");
            (seen, stats)
        })
        .join()
        .expect("thread");
        assert_eq!(stats.mounts, 1);
        assert!(!seen.contains(&home.join("app/peer")));
        assert!(seen.iter().all(|p| !p.starts_with(home.join("app/peer"))));
        assert!(seen.contains(&home.join("app/own")));
    }
}
