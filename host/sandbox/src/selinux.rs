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
/// writing `/proc/thread-self/attr/exec`. Done directly so that `gearhost-init` makes no
/// libselinux call (with its configuration and label-translation lookups) on a gear's start;
/// only libselinux's constructor runs there, since it is linked statically (ARCHITECTURE.md).
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
mod tests;
