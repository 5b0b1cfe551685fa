//! Unpacking a tar stream a client sent (a deployment's sources, a
//! cartridge) into a fresh directory, so that nothing is ever created or
//! followed outside it.
//!
//! The rules, each named in the refusal that breaks it:
//! - every entry's path is relative and plain: no `/` at the start, no `..`,
//!   at most [`MAX_DEPTH`] components;
//! - every operation is relative to a descriptor of the target directory,
//!   walked one component at a time with `O_NOFOLLOW`, so a symlink the
//!   archive made earlier (or one a racing process put there) is never
//!   gone through: an entry below one is refused;
//! - only directories, regular files and symlinks are unpacked. Symlinks are
//!   kept as they are, whatever they point at: they are resolved later by
//!   whoever reads the deployment, and a gear sees its own root. Device
//!   nodes, FIFOs, sockets and hard links (even within the tree: the client
//!   sends linked files as separate copies) are refused;
//! - an entry may appear once (a second one for an existing file is refused);
//! - the files' sizes add up to at most [`Limits::max_bytes`], the entries
//!   to at most [`Limits::max_entries`], and the stream to the files
//!   accepted so far plus 2 KiB of framing per entry and 1 MiB (so no header,
//!   long name or pax record makes the node hold more than that in memory);
//! - the archive must end with its end marker: a stream that stops early
//!   (the client failed half-way) is refused, not taken as complete.
//!
//! Files are created by the node and handed to `owner` with `fchown` on the
//! descriptor just made (`fchownat` without following, for symlinks). The
//! caller removes the target directory when unpacking fails.

use std::cell::Cell;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstatat, mkdirat};

/// How deep an archive may nest directories.
pub const MAX_DEPTH: usize = 128;

/// Entries one archive may hold by default.
pub const MAX_ENTRIES: u64 = 100_000;

/// How long the node waits for the next bytes of an archive before giving up
/// on the client.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The limits on one archive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The sum of the regular files' sizes.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

/// What was unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries created.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Why an archive was refused: the entry and the rule it broke.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry broke a rule.
    #[error("{entry}: {rule}")]
    Entry {
        /// The entry's path as the archive gives it.
        entry: String,
        /// The rule, said so that the sender knows what to change.
        rule: String,
    },
    /// The archive as a whole is unusable.
    #[error("{0}")]
    Archive(String),
}

pub(crate) fn refuse(entry: &Path, rule: impl Into<String>) -> UnpackError {
    UnpackError::Entry {
        entry: entry.display().to_string(),
        rule: rule.into(),
    }
}

/// Unpack the tar stream `input` into `target`, which must not exist yet
/// (it is created, mode 0755, owned by `owner` when given).
pub fn unpack(
    input: impl Read,
    target: &Path,
    limits: Limits,
    owner: Option<u32>,
) -> Result<Unpacked, UnpackError> {
    let root = open_target(target, owner)?;
    let rules = Rules {
        what: "archive",
        max_entries: limits.max_entries,
        max_bytes: limits.max_bytes,
        too_many: format!(
            "the archive holds more than {} entries; deploy fewer files",
            limits.max_entries
        ),
        too_much: format!(
            "the files add up to more than the node's limit of {} bytes \
             (gears.max-deploy-size); deploy less, or ask the operator",
            limits.max_bytes
        ),
        end: "nothing was deployed",
    };
    let (entries, bytes) = each_entry(input, &root, owner, &rules, |entry, at, budget| {
        place_entry(entry, at, budget, owner)
    })?;
    Ok(Unpacked { entries, bytes })
}

/// Makes the directory, file or symlink `entry` describes at `at`, handed to
/// `owner` when given; refuses every other kind of entry.
pub(crate) fn place_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    at: Place<'_>,
    budget: &mut Budget<'_>,
    owner: Option<u32>,
) -> Result<(), UnpackError> {
    let Place {
        raw,
        name,
        parent,
        kind,
    } = at;
    let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
    if kind.is_dir() {
        let dir = make_dir(&parent, name, raw, owner)?;
        fchmod(&dir, Mode::from_bits_truncate(mode | 0o700))
            .map_err(|e| refuse(raw, format!("cannot set its mode: {e}")))
    } else if kind.is_file() || kind == tar::EntryType::Continuous {
        // the size the reader goes by (a pax record overrides the header's)
        let size = entry.size();
        budget.file(size, raw)?;
        write_file(&parent, name, entry, size, mode, owner, raw, "archive")
    } else if kind.is_symlink() {
        make_symlink(&parent, name, entry, raw, "archive")?;
        match owner {
            Some(uid) => nix::unistd::fchownat(
                &parent,
                name.as_os_str(),
                Some(uid.into()),
                Some(uid.into()),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| refuse(raw, format!("cannot chown the symlink: {e}"))),
            None => Ok(()),
        }
    } else if kind.is_hard_link() {
        Err(refuse(
            raw,
            "hard links are not unpacked; send the file itself (a current `gear` does)",
        ))
    } else if kind.is_character_special() || kind.is_block_special() {
        Err(refuse(
            raw,
            "device nodes are not unpacked; leave them out of the sources",
        ))
    } else if kind.is_fifo() {
        Err(refuse(
            raw,
            "FIFOs are not unpacked; leave them out of the sources",
        ))
    } else {
        Err(refuse(
            raw,
            format!(
                "entries of tar type {:?} are not unpacked; only directories, files and symlinks are",
                kind.as_byte() as char
            ),
        ))
    }
}

/// What an unpacker allows of one stream, and how it names what it refuses.
pub(crate) struct Rules {
    /// What the stream is, in messages (`archive`, `layer`).
    pub what: &'static str,
    /// Entries of any kind.
    pub max_entries: u64,
    /// The sum of the regular files' sizes.
    pub max_bytes: u64,
    /// The refusal of one entry too many.
    pub too_many: String,
    /// The refusal of a file past `max_bytes`.
    pub too_much: String,
    /// What became of the stream when it ends without its end marker.
    pub end: &'static str,
}

/// One entry, its path checked and its parent directory opened.
pub(crate) struct Place<'a> {
    /// The path as the stream gives it, for messages.
    pub raw: &'a Path,
    /// Its last component, to be made in `parent`.
    pub name: &'a Path,
    /// The directory it goes in, walked without following a symlink.
    pub parent: OwnedFd,
    /// Its tar type.
    pub kind: tar::EntryType,
}

/// A stream's budget: the files' sizes against the limit, and the credit
/// the stream is read with.
pub(crate) struct Budget<'r> {
    rules: &'r Rules,
    credit: Rc<Cell<u64>>,
    entries: u64,
    bytes: u64,
}

impl Budget<'_> {
    /// Accepts `size` bytes of file content (the stream may then carry them),
    /// or refuses the entry `raw` past the limit.
    pub(crate) fn file(&mut self, size: u64, raw: &Path) -> Result<(), UnpackError> {
        if self.bytes.saturating_add(size) > self.rules.max_bytes {
            return Err(refuse(raw, self.rules.too_much.clone()));
        }
        self.bytes += size;
        self.credit
            .set(self.bytes.saturating_add(framing(self.entries)));
        Ok(())
    }
}

/// Reads the tar stream `input` entry by entry under `rules` (plain paths,
/// bounded entries, bytes and framing, the end marker required), opens each
/// entry's parent below `root` without following a symlink (creating missing
/// directories for `owner`), and hands it to `visit`. Returns the entries and
/// the file bytes accepted.
pub(crate) fn each_entry<R: Read>(
    input: R,
    root: &OwnedFd,
    owner: Option<u32>,
    rules: &Rules,
    visit: impl FnMut(
        &mut tar::Entry<'_, &mut Capped<R>>,
        Place<'_>,
        &mut Budget<'_>,
    ) -> Result<(), UnpackError>,
) -> Result<(u64, u64), UnpackError> {
    each_entry_routed(
        input,
        rules,
        |_, raw, _, _| {
            let root = root
                .try_clone()
                .map_err(|e| refuse(raw, format!("cannot open the target: {e}")))?;
            Ok(Route::Under {
                root,
                skip: 0,
                owner,
            })
        },
        visit,
    )
}

/// Where [`each_entry_routed`] puts an entry.
pub(crate) enum Route {
    /// The router dealt with it (or it is to be passed over).
    Done,
    /// Below `root`, without the path's first `skip` components, for `owner`.
    Under {
        /// The directory the rest of the path is walked from.
        root: OwnedFd,
        /// How many leading components of the path `root` stands for.
        skip: usize,
        /// Who the directories made on the way, and the entry, belong to.
        owner: Option<u32>,
    },
}

/// [`each_entry`], with each entry's place decided by `route`, which sees
/// the entry, its path as the stream gives it and its plain components:
/// one stream may fill several directories, or hold entries the caller
/// reads itself.
pub(crate) fn each_entry_routed<R: Read>(
    input: R,
    rules: &Rules,
    mut route: impl FnMut(
        &mut tar::Entry<'_, &mut Capped<R>>,
        &Path,
        &[PathBuf],
        &mut Budget<'_>,
    ) -> Result<Route, UnpackError>,
    mut visit: impl FnMut(
        &mut tar::Entry<'_, &mut Capped<R>>,
        Place<'_>,
        &mut Budget<'_>,
    ) -> Result<(), UnpackError>,
) -> Result<(u64, u64), UnpackError> {
    let (mut stream, credit) = capped(input);
    let mut budget = Budget {
        rules,
        credit,
        entries: 0,
        bytes: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut stream);
        let entries = archive
            .entries()
            .map_err(|e| UnpackError::Archive(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                UnpackError::Archive(format!("the {} is damaged or cut short: {e}", rules.what))
            })?;
            let raw = entry
                .path()
                .map_err(|e| UnpackError::Archive(format!("an entry's name is unusable: {e}")))?
                .into_owned();
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            budget.entries += 1;
            budget
                .credit
                .set(budget.bytes.saturating_add(framing(budget.entries)));
            if budget.entries > rules.max_entries {
                return Err(refuse(&raw, rules.too_many.clone()));
            }
            let parts = plain_path(&raw)?;
            let (root, skip, owner) = match route(&mut entry, &raw, &parts, &mut budget)? {
                Route::Done => continue,
                Route::Under { root, skip, owner } => (root, skip, owner),
            };
            let parts = parts.get(skip..).unwrap_or_default();
            let Some((name, dirs)) = parts.split_last() else {
                // `.` or `./`: the target itself
                continue;
            };
            let parent = walk(&root, dirs, &raw, owner)?;
            let place = Place {
                raw: &raw,
                name,
                parent,
                kind,
            };
            visit(&mut entry, place, &mut budget)?;
        }
    }
    expect_end(&mut stream, rules.end)?;
    Ok((budget.entries, budget.bytes))
}

/// Creates `target` (which must not exist), mode 0755, handed to `owner`
/// when given, and opens it without following a symlink.
pub(crate) fn open_target(target: &Path, owner: Option<u32>) -> Result<OwnedFd, UnpackError> {
    let io = |what: &str, e: &dyn std::fmt::Display| {
        UnpackError::Archive(format!("{what} {}: {e}", target.display()))
    };
    std::fs::create_dir(target).map_err(|e| io("cannot create", &e))?;
    let root = nix::fcntl::open(
        target,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("cannot open", &e))?;
    fchmod(&root, Mode::from_bits_truncate(0o755)).map_err(|e| io("cannot set the mode of", &e))?;
    if let Some(uid) = owner {
        chown_fd(&root, uid).map_err(|e| io("cannot hand over", &e))?;
    }
    Ok(root)
}

/// `input`, read only as far as its credit allows, and the credit: what the
/// stream may hold so far is the files' data as each is accepted, and for
/// the framing (headers, padding, long names, extension records) 2 KiB per
/// entry plus 1 MiB, so that no header or extension record makes the node
/// hold more than that in memory.
fn capped<R>(input: R) -> (Capped<R>, Rc<Cell<u64>>) {
    let credit = Rc::new(Cell::new(framing(0)));
    let stream = Capped {
        inner: input,
        consumed: 0,
        credit: credit.clone(),
    };
    (stream, credit)
}

/// Creates file `name` in `parent` (never through a symlink, never over an
/// entry), hands it to `owner`, and copies `size` bytes of `entry` into it
/// with `mode`. `what` names the stream in refusals.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_file(
    parent: &OwnedFd,
    name: &Path,
    entry: &mut impl Read,
    size: u64,
    mode: u32,
    owner: Option<u32>,
    raw: &Path,
    what: &str,
) -> Result<(), UnpackError> {
    let fd = openat(
        parent,
        name.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| match e {
        Errno::EEXIST => refuse(raw, format!("the {what} names it twice")),
        e => refuse(raw, format!("cannot create it: {e}")),
    })?;
    if let Some(uid) = owner {
        chown_fd(&fd, uid).map_err(|e| refuse(raw, format!("cannot chown: {e}")))?;
    }
    let mut file = std::fs::File::from(fd);
    let written = std::io::copy(&mut entry.take(size), &mut file)
        .map_err(|e| refuse(raw, format!("cannot write it: {e}")))?;
    if written != size {
        return Err(refuse(raw, format!("the {what} ends inside this file")));
    }
    file.flush()
        .map_err(|e| refuse(raw, format!("cannot write it: {e}")))?;
    fchmod(&file, Mode::from_bits_truncate(mode))
        .map_err(|e| refuse(raw, format!("cannot set its mode: {e}")))
}

/// Creates the symlink `entry` describes as `name` in `parent`, pointing
/// wherever it points (resolved later by whoever reads the tree, in its own
/// root).
pub(crate) fn make_symlink<R: Read>(
    parent: &OwnedFd,
    name: &Path,
    entry: &tar::Entry<'_, R>,
    raw: &Path,
    what: &str,
) -> Result<(), UnpackError> {
    let to = entry
        .link_name()
        .map_err(|e| refuse(raw, format!("its link target is unusable: {e}")))?
        .ok_or_else(|| refuse(raw, "a symlink without a target"))?
        .into_owned();
    nix::unistd::symlinkat(to.as_os_str(), parent, name.as_os_str()).map_err(|e| match e {
        Errno::EEXIST => refuse(raw, format!("the {what} names it twice")),
        e => refuse(raw, format!("cannot create the symlink: {e}")),
    })
}

/// Reads what follows the last entry: the entries stop at the first zero
/// block, or at the end of the stream, and only the first is a complete
/// archive (another zero block follows it).
fn expect_end(stream: &mut impl Read, outcome: &str) -> Result<(), UnpackError> {
    let mut rest = [0u8; 512];
    let mut got = 0;
    while got < rest.len() {
        match stream.read(&mut rest[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Err(UnpackError::Archive(format!(
                    "cannot read the archive: {e}"
                )));
            }
        }
    }
    if got < rest.len() || rest.iter().any(|b| *b != 0) {
        return Err(UnpackError::Archive(format!(
            "the archive ends without its end marker: the sender stopped half-way (see its error) \
             and {outcome}"
        )));
    }
    Ok(())
}

/// The components of an entry's path, each a plain name.
pub(crate) fn plain_path(raw: &Path) -> Result<Vec<PathBuf>, UnpackError> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(name) => parts.push(PathBuf::from(name)),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(refuse(
                    raw,
                    "a path may not contain `..`; archive the directory from inside it",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(
                    raw,
                    "a path must be relative to the archive, not absolute",
                ));
            }
        }
    }
    if parts.len() > MAX_DEPTH {
        return Err(refuse(
            raw,
            format!("nested more than {MAX_DEPTH} directories deep; deploy a shallower tree"),
        ));
    }
    if parts.iter().any(|p| p.as_os_str().as_bytes().contains(&0)) {
        return Err(refuse(raw, "a name may not contain a NUL byte"));
    }
    Ok(parts)
}

/// Open the directory `dirs` below `root` one component at a time, never
/// through a symlink, creating the missing ones.
pub(crate) fn walk(
    root: &OwnedFd,
    dirs: &[PathBuf],
    raw: &Path,
    owner: Option<u32>,
) -> Result<OwnedFd, UnpackError> {
    let mut at = root
        .try_clone()
        .map_err(|e| refuse(raw, format!("cannot open the target: {e}")))?;
    for d in dirs {
        at = make_dir(&at, d, raw, owner)?;
    }
    Ok(at)
}

/// Open directory `name` in `parent` without following a symlink, creating
/// it (mode 0755, handed to `owner`) if it is missing.
pub(crate) fn make_dir(
    parent: &OwnedFd,
    name: &Path,
    raw: &Path,
    owner: Option<u32>,
) -> Result<OwnedFd, UnpackError> {
    let name: &OsStr = name.as_os_str();
    let created = match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(refuse(raw, format!("cannot create a directory: {e}"))),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => {
            let through = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st)
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK =>
                {
                    "a symlink"
                }
                _ => "a file",
            };
            refuse(
                raw,
                format!(
                    "its path goes through {through} ({}) the archive made earlier; \
                     nothing is unpacked through a link or over a file",
                    name.to_string_lossy()
                ),
            )
        }
        e => refuse(raw, format!("cannot open a directory: {e}")),
    })?;
    if created && let Some(uid) = owner {
        chown_fd(&fd, uid).map_err(|e| refuse(raw, format!("cannot chown: {e}")))?;
    }
    Ok(fd)
}

fn chown_fd(fd: &impl AsFd, uid: u32) -> nix::Result<()> {
    nix::unistd::fchown(fd, Some(uid.into()), Some(uid.into()))
}

/// What the framing of an archive with `entries` entries so far may take.
fn framing(entries: u64) -> u64 {
    entries
        .saturating_add(1)
        .saturating_mul(2048)
        .saturating_add(1 << 20)
}

/// A stream that fails instead of giving more than its credit: the files
/// accepted so far and their framing.
pub(crate) struct Capped<R> {
    inner: R,
    consumed: u64,
    credit: Rc<Cell<u64>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.credit.get().saturating_sub(self.consumed);
        if left == 0 {
            return Err(std::io::Error::other(
                "the archive holds more than its files and their headers need \
                 (an oversized header or extension record, or data past the end)",
            ));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// The read end of a pipe, read with a limit on how long the sender may
/// stay silent.
#[derive(Debug)]
pub struct PatientReader {
    file: std::fs::File,
    idle: Duration,
}

impl PatientReader {
    /// Read `fd`, waiting at most `idle` for each next bytes.
    pub fn new(fd: OwnedFd, idle: Duration) -> PatientReader {
        PatientReader {
            file: std::fs::File::from(fd),
            idle,
        }
    }
}

impl Read for PatientReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = u16::try_from(self.idle.as_millis()).unwrap_or(u16::MAX);
        let deadline = std::time::Instant::now() + self.idle;
        loop {
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if std::time::Instant::now() >= deadline => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the sender sent nothing for {}s", self.idle.as_secs()),
                    ));
                }
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => return self.file.read(buf),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
