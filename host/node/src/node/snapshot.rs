//! Snapshots of a gear (`gear snapshot`): a gzip-compressed tar archive of
//! its kept deployments, its data (`app-root/data`) and its environment,
//! described by a `snapshot.json` that comes first, written into a pipe the
//! client passed with the request. The cartridge takes part through its
//! `pre-snapshot` and `post-snapshot` control actions when its manifest
//! lists them (PostgreSQL dumps its databases into the data first).
//!
//! The archive (format [`FORMAT`]; docs/ARCHITECTURE.md has the decision):
//!
//! ```text
//! snapshot.json               [`Meta`]: what the gear is, its env, its deployments' records
//! deployments/<n>/...         each kept deployment's files (built ones and the active one)
//! home/app-root/data/...      the gear's data
//! ```
//!
//! Everything else of the gear is rebuilt on restore (the build hook runs on
//! the active deployment): `app-root/runtime`, the logs, what builds put in
//! the home, an image deployment's writable layer.
//!
//! The gear's files are hostile input here too: every directory is opened
//! below the last without following a link, a file is opened with
//! `O_NOFOLLOW` and checked to be a regular file, FIFOs, sockets and devices
//! are left out (and named in the answer), and the archive stays within
//! what a restore accepts ([`MAX_BYTES`], [`MAX_ENTRIES`]). Memory stays
//! bounded: the archive streams through a fixed buffer, and a client that
//! stops reading is given up on after [`IDLE`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gearhost_runtime::{Cartridge, HookCall};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use serde::{Deserialize, Serialize};

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind, GearRef};
use crate::state::{Deployment, DeploymentState, Desired, GearHttps, GearRecord};

/// The version of the archive's format this node writes and reads.
pub const FORMAT: u32 = 1;

/// The archive's first entry, which describes it.
pub const META: &str = "snapshot.json";

/// The most `snapshot.json` may hold.
pub const MAX_META: u64 = 4 << 20;

/// The most the files of one snapshot may add up to (a gear with a disk
/// quota is bounded by that too, when written and when restored).
pub const MAX_BYTES: u64 = 64 << 30;

/// The most entries one snapshot may hold.
pub const MAX_ENTRIES: u64 = 2_000_000;

/// How deep a gear's data may nest directories to be carried.
pub const MAX_DEPTH: usize = crate::unpack::MAX_DEPTH;

/// How long the node waits for the client to read (a snapshot) or send (a
/// restore) the next bytes before giving up on it.
pub const IDLE: Duration = Duration::from_secs(60);

/// Where the gear's data is in the archive (and in its directory).
pub const DATA: &str = "home/app-root/data";

/// `snapshot.json`: what the archive holds, enough to create the gear again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Meta {
    /// The archive's format version ([`FORMAT`]).
    pub format: u32,
    /// The gear's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its cartridge.
    pub cartridge: String,
    /// The version of the cartridge that ran it.
    pub cartridge_version: String,
    /// Its uid (and gid).
    pub uid: u32,
    /// Its SELinux MCS level (derived from the uid).
    pub mcs_level: String,
    /// Unix time the snapshot was taken.
    pub taken: u64,
    /// Unix time the gear was created.
    pub gear_created: u64,
    /// Whether it was meant to run when the snapshot was taken.
    pub was_running: bool,
    /// Variables the user set.
    pub user_env: BTreeMap<String, String>,
    /// Variables the cartridge's hooks set (credentials a database made).
    pub cartridge_env: BTreeMap<String, String>,
    /// Extra host names the frontend routed to it.
    pub aliases: Vec<String>,
    /// What it asked of HTTPS.
    pub https: GearHttps,
    /// Its disk quota in bytes, if it had one.
    pub disk: Option<u64>,
    /// The active deployment.
    pub active: Option<u32>,
    /// The id its next deployment gets.
    pub next_deployment: u32,
    /// The records of the deployments in the archive, oldest first.
    pub deployments: Vec<Deployment>,
}

impl Meta {
    /// The description of gear `r` as it is now, with the deployments worth
    /// carrying: the built ones and the active one (failed builds are not).
    pub fn of(r: &GearRecord, cartridge_version: &str) -> Meta {
        Meta {
            format: FORMAT,
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            cartridge: r.cartridge.clone(),
            cartridge_version: cartridge_version.to_string(),
            uid: r.uid,
            mcs_level: r.mcs_level.clone(),
            taken: crate::state::now(),
            gear_created: r.created,
            was_running: r.desired == Desired::Running,
            user_env: r.user_env.clone(),
            cartridge_env: r.cartridge_env.clone(),
            aliases: r.aliases.clone(),
            https: r.https,
            disk: r.disk,
            active: r.active,
            next_deployment: r.next_deployment,
            deployments: r
                .deployments
                .iter()
                .filter(|d| d.state == DeploymentState::Ready || Some(d.id) == r.active)
                .cloned()
                .collect(),
        }
    }

    /// Reads `snapshot.json`, saying plainly when it is of another format.
    pub fn parse(bytes: &[u8]) -> Result<Meta, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            format!("{META} is not JSON ({e}); this is not an archive of `gear snapshot`")
        })?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => {
                return Err(format!(
                    "the snapshot is of format {f}, and this node reads format {FORMAT}; restore it \
                     on a node of the Gearhost version that wrote it"
                ));
            }
            None => {
                return Err(format!(
                    "{META} names no format version; this is not an archive of `gear snapshot`"
                ));
            }
        }
        let meta: Meta = serde_json::from_value(value)
            .map_err(|e| format!("{META} does not describe a gear as format {FORMAT} does: {e}"))?;
        meta.check()?;
        Ok(meta)
    }

    /// What a description must hold together to be restored.
    fn check(&self) -> Result<(), String> {
        let mut ids: Vec<u32> = self.deployments.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!("{META} names a deployment twice"));
        }
        if let Some(active) = self.active
            && !ids.contains(&active)
        {
            return Err(format!(
                "{META} names deployment {active} active, but does not hold it"
            ));
        }
        if ids.last().is_some_and(|last| *last >= self.next_deployment) {
            return Err(format!(
                "{META} holds a deployment numbered past its next one ({})",
                self.next_deployment
            ));
        }
        Ok(())
    }
}

/// The one descriptor a snapshot or restore request carries.
pub(super) fn one_fd(fds: Vec<OwnedFd>, what: &str, which: &str) -> ApiResult<OwnedFd> {
    let mut fds = fds;
    match (fds.pop(), fds.is_empty()) {
        (Some(fd), true) => Ok(fd),
        _ => Err(invalid(format!(
            "{what} needs exactly one descriptor passed with the request: {which} (use a `gear` \
             of this node's version)"
        ))),
    }
}

impl Node {
    /// Runs the cartridge's control `action` when its manifest lists it:
    /// what it said, or `None` when it does not take part.
    pub(super) async fn cartridge_action(
        &self,
        g: &Arc<Gear>,
        cart: &Cartridge,
        action: &str,
    ) -> ApiResult<Option<String>> {
        if !cart.manifest().actions.iter().any(|a| a == action) {
            return Ok(None);
        }
        let call = HookCall::Control {
            action: action.into(),
            args: Vec::new(),
        };
        let out = self.hook(g, cart, call).await?;
        Ok(Some(super::lifecycle::bounded_output(out)))
    }

    /// Write an archive of the gear into `fds` (the write end of the pipe
    /// the client reads): `pre-snapshot`, the archive, then `post-snapshot`
    /// whatever became of the archive.
    pub async fn snapshot(
        &self,
        gear: &GearRef,
        fds: Vec<OwnedFd>,
        progress: &Progress,
    ) -> ApiResult<reply::Snapshotted> {
        let out = one_fd(
            fds,
            "snapshot",
            "the write end of the pipe the client reads the archive from",
        )?;
        let g = self.find(gear)?;
        let _op = g.op.lock().await;
        self.snapshot_locked(&g, out, progress).await
    }

    /// [`Node::snapshot`] of gear `g` into `out`, its lock held.
    pub(crate) async fn snapshot_locked(
        &self,
        g: &Arc<Gear>,
        out: OwnedFd,
        progress: &Progress,
    ) -> ApiResult<reply::Snapshotted> {
        let g = g.clone();
        let _watch = g.hook_log.watch(progress);
        // the cartridge's actions run in the gear: its processes must run
        self.awake(&g, "a snapshot is taken").await?;
        let cart = self.cartridge(&g.record().cartridge)?;
        let name = g.record().name;
        let said = self
            .cartridge_action(&g, &cart, "pre-snapshot")
            .await
            .map_err(|e| {
                ApiError::new(
                    e.kind,
                    format!(
                        "the cartridge's pre-snapshot action failed, so no snapshot was taken: {}; \
                         see `gear logs {name} --hooks`",
                        e.message
                    ),
                )
            })?;
        if let Some(said) = &said {
            let _ = progress.send(format!("pre-snapshot: {}", said.trim()));
        }
        let meta = Meta::of(&g.record(), &cart.manifest().version.to_string());
        let ids: Vec<u32> = meta.deployments.iter().map(|d| d.id).collect();
        let _ = progress.send(format!(
            "writing deployments {ids:?} and the gear's data into the archive"
        ));
        let root = g.paths.root.clone();
        let label = g.record().label();
        let written = tokio::task::spawn_blocking(move || write_archive(out, &root, &meta))
            .await
            .map_err(internal)?;
        // what pre-snapshot made (a dump) goes whatever became of the archive
        let after = self.cartridge_action(&g, &cart, "post-snapshot").await;
        let written = written.map_err(|e| {
            failed(format!(
                "the snapshot of {name} could not be written: {e}; the gear is as it was"
            ))
        })?;
        let mut cartridge = said.map(|s| s.trim().to_string());
        if let Err(e) = after {
            // the archive is whole: the cartridge's tidying up is what failed
            let note = format!(
                "post-snapshot failed: {}; run `gear control {name} post-snapshot` again",
                e.message
            );
            tracing::warn!(gear = %label, "{note}");
            cartridge = Some(match cartridge {
                Some(c) => format!("{c}; {note}"),
                None => note,
            });
        }
        Ok(reply::Snapshotted {
            gear: label,
            bytes: written.bytes,
            entries: written.entries,
            deployments: ids,
            cartridge,
            skipped: written.skipped,
        })
    }
}

/// What [`write_archive`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Bytes of the compressed archive.
    pub bytes: u64,
    /// Entries in it.
    pub entries: u64,
    /// What was left out, and why.
    pub skipped: Vec<String>,
}

/// Writes the archive of the gear whose directory is `root` into `out`.
pub fn write_archive(out: OwnedFd, root: &Path, meta: &Meta) -> Result<Written, String> {
    let sink = Counting {
        inner: PatientWriter::new(out, IDLE),
        count: 0,
    };
    let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
    let mut w = ArchiveWriter {
        tar: tar::Builder::new(gz),
        entries: 0,
        bytes: 0,
        skipped: Vec::new(),
    };
    let json = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
    w.bytes_entry(META, &json)?;
    w.dir_entry(Path::new("deployments"), 0o755, 0)?;
    for d in &meta.deployments {
        let n = d.id.to_string();
        let dir = open_dir_beneath(root, &["deployments", &n])
            .map_err(|e| format!("cannot open deployment {n}: {e}"))?;
        w.tree(dir, PathBuf::from(format!("deployments/{n}")))?;
    }
    w.dir_entry(Path::new("home"), 0o700, 0)?;
    w.dir_entry(Path::new("home/app-root"), 0o755, 0)?;
    let data = open_dir_beneath(root, &["home", "app-root", "data"])
        .map_err(|e| format!("cannot open the gear's data directory: {e}"))?;
    w.tree(data, PathBuf::from(DATA))?;
    let (entries, skipped) = (w.entries, w.skipped);
    let gz = w.tar.into_inner().map_err(|e| sent(&e))?;
    let mut sink = gz.finish().map_err(|e| sent(&e))?;
    sink.flush().map_err(|e| sent(&e))?;
    Ok(Written {
        bytes: sink.count,
        entries,
        skipped,
    })
}

/// A write that failed: most often the client stopped reading.
fn sent(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => {
            "the client stopped reading the archive (its disk full, or interrupted)".to_string()
        }
        _ => format!("cannot write the archive: {e}"),
    }
}

/// Opens the directory `parts` below `root` one component at a time, never
/// through a symlink.
pub(super) fn open_dir_beneath(root: &Path, parts: &[&str]) -> std::io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut at = nix::fcntl::open(root, flags, Mode::empty())?;
    for p in parts {
        at = openat(&at, *p, flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => std::io::Error::other(format!(
                "{p} is not a directory (a link or a file put in its place)"
            )),
            e => e.into(),
        })?;
    }
    Ok(at)
}

/// Adds the gear's files to the archive within a restore's limits.
struct ArchiveWriter<W: Write> {
    tar: tar::Builder<W>,
    entries: u64,
    bytes: u64,
    skipped: Vec<String>,
}

impl<W: Write> ArchiveWriter<W> {
    fn count(&mut self, size: u64, path: &Path) -> Result<(), String> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(size);
        if self.entries > MAX_ENTRIES {
            return Err(format!(
                "the gear holds more than {MAX_ENTRIES} files, more than a restore takes; \
                 remove some from its data (at {})",
                path.display()
            ));
        }
        if self.bytes > MAX_BYTES {
            return Err(format!(
                "the gear's files add up to more than {}, more than a restore takes; remove some \
                 from its data (at {})",
                gearhost_runtime::manifest::format_size(MAX_BYTES),
                path.display()
            ));
        }
        Ok(())
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: i64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o777);
        h.set_size(size);
        h.set_mtime(u64::try_from(mtime).unwrap_or(0));
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn bytes_entry(&mut self, path: &str, bytes: &[u8]) -> Result<(), String> {
        self.count(bytes.len() as u64, Path::new(path))?;
        let now = i64::try_from(crate::state::now()).unwrap_or(0);
        let mut h = Self::header(tar::EntryType::Regular, 0o600, bytes.len() as u64, now);
        self.tar
            .append_data(&mut h, path, bytes)
            .map_err(|e| sent(&e))
    }

    fn dir_entry(&mut self, path: &Path, mode: u32, mtime: i64) -> Result<(), String> {
        self.count(0, path)?;
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, mtime);
        self.tar
            .append_data(&mut h, path, std::io::empty())
            .map_err(|e| sent(&e))
    }

    /// The tree below the open directory `top`, as `prefix` in the archive,
    /// in name order.
    fn tree(&mut self, top: OwnedFd, prefix: PathBuf) -> Result<(), String> {
        let st = fstat(&top).map_err(|e| format!("cannot read {}: {e}", prefix.display()))?;
        self.dir_entry(&prefix, st.st_mode, st.st_mtime)?;
        let names = listing(&top, &prefix)?;
        let mut stack = vec![(top, names, prefix)];
        while let Some(depth) = stack.len().checked_sub(1) {
            let (dir, names, prefix) = &mut stack[depth];
            let Some(name) = names.pop() else {
                stack.pop();
                continue;
            };
            let path = prefix.join(&name);
            let st = match fstatat(&*dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => {
                    self.skipped
                        .push(format!("{}: went away while it was read", path.display()));
                    continue;
                }
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFDIR {
                if depth + 1 >= MAX_DEPTH {
                    return Err(format!(
                        "{} is nested more than {MAX_DEPTH} directories deep, deeper than a \
                         restore takes; flatten it",
                        path.display()
                    ));
                }
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let child = match openat(&*dir, name.as_os_str(), flags, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {
                        self.skipped
                            .push(format!("{}: changed while it was read", path.display()));
                        continue;
                    }
                    Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
                };
                self.dir_entry(&path, st.st_mode, st.st_mtime)?;
                let names = listing(&child, &path)?;
                stack.push((child, names, path));
            } else if kind == SFlag::S_IFREG {
                let dir = dir.try_clone().map_err(|e| e.to_string())?;
                self.file(&dir, &name, path)?;
            } else if kind == SFlag::S_IFLNK {
                let to = nix::fcntl::readlinkat(&*dir, name.as_os_str())
                    .map_err(|e| format!("cannot read the link {}: {e}", path.display()))?;
                self.count(0, &path)?;
                let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, st.st_mtime);
                self.tar
                    .append_link(&mut h, &path, Path::new(&to))
                    .map_err(|e| sent(&e))?;
            } else {
                let what = match kind {
                    SFlag::S_IFIFO => "a FIFO",
                    SFlag::S_IFSOCK => "a socket",
                    _ => "a device node",
                };
                self.skipped.push(format!(
                    "{}: {what}, which a snapshot does not carry",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// The regular file `name` in `dir`: as long as it was when opened (a
    /// file that shrinks while it is read is padded with zeros, one that
    /// grows is cut there).
    fn file(&mut self, dir: &OwnedFd, name: &OsString, path: PathBuf) -> Result<(), String> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(dir, name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP) => {
                self.skipped
                    .push(format!("{}: changed while it was read", path.display()));
                return Ok(());
            }
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        let st = fstat(&fd).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            self.skipped
                .push(format!("{}: changed while it was read", path.display()));
            return Ok(());
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        self.count(size, &path)?;
        let mut h = Self::header(tar::EntryType::Regular, st.st_mode, size, st.st_mtime);
        let body = std::fs::File::from(fd)
            .take(size)
            .chain(std::io::repeat(0))
            .take(size);
        self.tar
            .append_data(&mut h, &path, body)
            .map_err(|e| sent(&e))
    }
}

/// The names in directory `dir` (`path` in messages), last first, so that
/// popping them goes in name order.
fn listing(dir: &OwnedFd, path: &Path) -> Result<Vec<OsString>, String> {
    let own = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    let mut names = Vec::new();
    for entry in nix::dir::Dir::from_fd(own)
        .map_err(|e| format!("cannot list {}: {e}", path.display()))?
        .into_iter()
    {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", path.display()))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsString::from(std::ffi::OsStr::from_bytes(name)));
        if names.len() as u64 > MAX_ENTRIES {
            return Err(format!(
                "{} holds more than {MAX_ENTRIES} entries, more than a restore takes",
                path.display()
            ));
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

/// Counts what goes through.
struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The write end of a pipe, written with a limit on how long the reader may
/// leave it full.
#[derive(Debug)]
pub struct PatientWriter {
    file: std::fs::File,
    idle: Duration,
}

impl PatientWriter {
    /// Write `fd`, waiting at most `idle` for room each time.
    pub fn new(fd: OwnedFd, idle: Duration) -> PatientWriter {
        PatientWriter {
            file: std::fs::File::from(fd),
            idle,
        }
    }
}

impl Write for PatientWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = u16::try_from(self.idle.as_millis()).unwrap_or(u16::MAX);
        let deadline = std::time::Instant::now() + self.idle;
        loop {
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLOUT)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) if std::time::Instant::now() >= deadline => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client read nothing for {}s", self.idle.as_secs()),
                    ));
                }
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => return self.file.write(buf),
                Err(e) => return Err(e.into()),
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Whether `e` says the gear was not found (a restore then creates it).
pub(super) fn is_not_found(e: &ApiError) -> bool {
    e.kind == ErrorKind::NotFound
}

#[cfg(test)]
mod tests;
