//! The gear's root filesystem, built by `gearhost-init` in its own mount namespace: a tmpfs
//! holding read-only binds of the system, a curated `/etc`, the home read-write, a private
//! `/tmp`, a minimal `/dev` and a fresh `/proc` with sensitive entries masked; then pivot_root.
//!
//! Every bind source is opened (as an `O_PATH` descriptor) before anything is mounted, without
//! following symlinks where the gear controls the path, and mounted from `/proc/self/fd/N`, so a
//! symlink planted in the gear's home cannot redirect a bind. Mount targets that lie inside an
//! earlier bind are walked the same way.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::protocol::{HelperSpec, SetupFailure};
use crate::report::FilesystemReport;
use crate::sys;

mod image;

/// Where the new root is assembled (hidden by a tmpfs in the helper's private mount namespace;
/// every source is opened before it is mounted).
const STAGING: &str = "/tmp";

/// System directories bound read-only when they are directories, recreated when symlinks.
const SYSTEM_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// `/etc` directories bound read-only from the host when present.
const ETC_DIRS: &[&str] = &["ssl", "alternatives", "terminfo"];

/// `/etc` files the gear's read-only `/etc` gets from the host when present: small ones are
/// copied (a copy costs less than a bind mount at start and at teardown), larger ones bound
/// (their pages are not duplicated for every gear). A symlink into `/usr` is recreated as the
/// same symlink instead.
const ETC_FILES: &[&str] = &[
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "ld.so.cache",
    "ld.so.conf",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "inputrc",
];

/// Largest `/etc` file copied; bigger ones are bound.
const ETC_COPY_MAX: u64 = 16 << 10;

/// Device nodes bound from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// `/proc` entries bound read-only onto themselves.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// `/proc` files hidden behind `/dev/null`.
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kmsg",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "config.gz",
];

/// `/proc` directories hidden behind an empty read-only tmpfs.
const PROC_MASKED_DIRS: &[&str] = &["acpi", "scsi", "asound", "driver"];

fn failure(step: &str, detail: String, err: &io::Error) -> SetupFailure {
    SetupFailure {
        step: step.to_string(),
        detail: format!("{detail}: {err}"),
        errno: err.raw_os_error(),
    }
}

fn cpath(path: &Path) -> Result<CString, SetupFailure> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SetupFailure {
        step: "path".into(),
        detail: format!("{} contains a NUL byte", path.display()),
        errno: None,
    })
}

fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// A system directory of the host: bound, or recreated as the same symlink.
#[derive(Debug)]
enum SystemEntry {
    Dir(&'static str, OwnedFd),
    Symlink(&'static str, PathBuf),
}

/// An `/etc` file of the host as the gear gets it.
#[derive(Debug)]
enum EtcFile {
    Contents(Vec<u8>),
    Bind(OwnedFd),
    Symlink(PathBuf),
}

/// The host objects every gear's root is built from, opened before the first mount. They do
/// not depend on the gear, so a warm helper opens them before its spec arrives.
#[derive(Debug)]
pub(crate) struct SystemSources {
    system: Vec<SystemEntry>,
    etc_dirs: Vec<(&'static str, OwnedFd)>,
    etc_files: Vec<(&'static str, EtcFile)>,
    devices: Vec<(&'static str, OwnedFd)>,
    null: OwnedFd,
}

/// The gear's own sources, opened by the node (which sees the host as it is now), cloned there
/// into detached mount trees and passed to the helper as descriptors: the home, then
/// read-only and read-write binds as (tree, target, is a directory), and for an image gear its
/// root.
#[derive(Debug)]
pub(crate) struct GearSources {
    pub(crate) home: OwnedFd,
    /// The image root to use instead of the host's system (a detached clone).
    pub(crate) root: Option<OwnedFd>,
    pub(crate) ro: Vec<(OwnedFd, PathBuf, bool)>,
    pub(crate) rw: Vec<(OwnedFd, PathBuf, bool)>,
}

fn open_following(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    // With O_PATH the kernel ignores the access mode std adds.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

fn is_dir(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let meta = std::fs::metadata(fd_path(fd))?;
    Ok(meta.is_dir())
}

/// Opens the system parts of the gear's root: system directories, `/etc` files and
/// directories, devices.
pub(crate) fn open_system() -> Result<SystemSources, SetupFailure> {
    let mut system = Vec::new();
    for name in SYSTEM_DIRS {
        let path = Path::new("/").join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path).map_err(|e| {
                    failure("open_sources", format!("read link {}", path.display()), &e)
                })?;
                system.push(SystemEntry::Symlink(name, target));
            }
            Ok(meta) if meta.is_dir() => {
                let fd = open_following(&path)
                    .map_err(|e| failure("open_sources", format!("open {}", path.display()), &e))?;
                system.push(SystemEntry::Dir(name, fd));
            }
            _ => {}
        }
    }
    let mut etc_dirs = Vec::new();
    for name in ETC_DIRS {
        let path = Path::new("/etc").join(name);
        if let Ok(fd) = open_following(&path)
            && is_dir(fd.as_fd())
                .map_err(|e| failure("open_sources", format!("stat {}", path.display()), &e))?
        {
            etc_dirs.push((*name, fd));
        }
    }
    let mut etc_files = Vec::new();
    for name in ETC_FILES {
        let path = Path::new("/etc").join(name);
        if let Ok(target) = std::fs::read_link(&path) {
            let resolved = path.parent().unwrap_or(Path::new("/")).join(&target);
            if resolved.starts_with("/usr") || target.starts_with("../usr") {
                etc_files.push((*name, EtcFile::Symlink(target)));
                continue;
            }
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() <= ETC_COPY_MAX => {
                let contents = std::fs::read(&path)
                    .map_err(|e| failure("open_sources", format!("read {}", path.display()), &e))?;
                etc_files.push((*name, EtcFile::Contents(contents)));
            }
            Ok(meta) if meta.is_file() => {
                let fd = open_following(&path)
                    .map_err(|e| failure("open_sources", format!("open {}", path.display()), &e))?;
                etc_files.push((*name, EtcFile::Bind(fd)));
            }
            _ => {}
        }
    }
    let mut devices = Vec::new();
    for name in DEVICES {
        let path = Path::new("/dev").join(name);
        // /dev/tty may be absent in odd environments; the others are required.
        match open_following(&path) {
            Ok(fd) => devices.push((*name, fd)),
            Err(_) if *name == "tty" => {}
            Err(e) => {
                return Err(failure(
                    "open_sources",
                    format!("open {}", path.display()),
                    &e,
                ));
            }
        }
    }
    let null = open_following(Path::new("/dev/null"))
        .map_err(|e| failure("open_sources", "open /dev/null".into(), &e))?;
    Ok(SystemSources {
        system,
        etc_dirs,
        etc_files,
        devices,
        null,
    })
}

/// Mount helpers bound to the staging root.
struct Builder {
    root: PathBuf,
    root_fd: Option<OwnedFd>,
    report: FilesystemReport,
    /// In an image's root: where the gear's own files are made before they are bound.
    scratch: Option<PathBuf>,
}

impl Builder {
    fn root_fd(&self) -> Result<BorrowedFd<'_>, SetupFailure> {
        self.root_fd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or_else(|| SetupFailure {
                step: "rootfs".into(),
                detail: "the staging root is not open".into(),
                errno: None,
            })
    }

    /// Walks `inner` (an absolute path inside the gear) from the staging root, creating
    /// missing components, refusing symlinks, and returns an `O_PATH` descriptor of it.
    fn ensure(&self, inner: &Path, leaf_is_dir: bool) -> Result<OwnedFd, SetupFailure> {
        let root = self.root_fd()?;
        let mut current: Option<OwnedFd> = None;
        let comps: Vec<&std::ffi::OsStr> = inner
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        for (i, name) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let dir = current.as_ref().map_or(root, |f| f.as_fd());
            let c = CString::new(name.as_bytes()).map_err(|_| SetupFailure {
                step: "mount_target".into(),
                detail: format!("{} contains a NUL byte", inner.display()),
                errno: None,
            })?;
            let how = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS;
            let next = match sys::openat2_path(Some(dir), &c, how) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let made = if last && !leaf_is_dir {
                        sys::create_file_at(dir, &c)
                    } else {
                        sys::mkdirat(dir, &c, 0o755)
                    };
                    made.map_err(|e| {
                        failure("mount_target", format!("create {}", inner.display()), &e)
                    })?;
                    sys::openat2_path(Some(dir), &c, how).map_err(|e| {
                        failure("mount_target", format!("open {}", inner.display()), &e)
                    })?
                }
                Err(e) => {
                    return Err(failure(
                        "mount_target",
                        format!("open {} without following symlinks", inner.display()),
                        &e,
                    ));
                }
            };
            current = Some(next);
        }
        current.ok_or_else(|| SetupFailure {
            step: "mount_target".into(),
            detail: format!("{} is not below the root", inner.display()),
            errno: None,
        })
    }

    /// Re-opens `inner` after a mount so the descriptor names the new mount's root.
    fn reopen(&self, inner: &Path) -> Result<OwnedFd, SetupFailure> {
        let rel = inner.strip_prefix("/").unwrap_or(inner);
        let c = cpath(rel)?;
        sys::openat2_path(
            Some(self.root_fd()?),
            &c,
            sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| failure("mount", format!("reopen {}", inner.display()), &e))
    }

    fn set_attrs(&self, inner: &Path, attrs: u64, recursive: bool) -> Result<(), SetupFailure> {
        let fd = self.reopen(inner)?;
        sys::mount_setattr(fd.as_fd(), attrs, recursive).map_err(|e| {
            failure(
                "mount_setattr",
                format!("set flags on {}", inner.display()),
                &e,
            )
        })
    }

    /// Binds `source` at `inner` with `attrs` applied to the whole bound tree.
    fn bind(
        &mut self,
        source: BorrowedFd<'_>,
        inner: &Path,
        is_dir: bool,
        attrs: u64,
    ) -> Result<(), SetupFailure> {
        self.mount_at(inner, is_dir, attrs, |target| {
            mount(
                Some(fd_path(source).as_str()),
                fd_path(target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| failure("bind", format!("bind onto {}", inner.display()), &e.into()))
        })
    }

    /// Attaches the detached mount tree `tree` (cloned by the node) at `inner` with `attrs`
    /// applied to the whole tree.
    fn attach(
        &mut self,
        tree: BorrowedFd<'_>,
        inner: &Path,
        is_dir: bool,
        attrs: u64,
    ) -> Result<(), SetupFailure> {
        self.mount_at(inner, is_dir, attrs, |target| {
            sys::move_mount_to(tree, target)
                .map_err(|e| failure("bind", format!("attach onto {}", inner.display()), &e))
        })
    }

    /// Mounts something at `inner` with `mount` (given the target's descriptor), then applies
    /// `attrs` to the whole mounted tree and records it in the report.
    fn mount_at(
        &mut self,
        inner: &Path,
        is_dir: bool,
        attrs: u64,
        mount: impl FnOnce(BorrowedFd<'_>) -> Result<(), SetupFailure>,
    ) -> Result<(), SetupFailure> {
        let target = self.ensure(inner, is_dir)?;
        mount(target.as_fd())?;
        drop(target);
        self.set_attrs(inner, attrs, true)?;
        if attrs & sys::MOUNT_ATTR_RDONLY != 0 {
            self.report.read_only.push(inner.to_path_buf());
        } else {
            self.report.read_write.push(inner.to_path_buf());
        }
        Ok(())
    }

    fn tmpfs(&mut self, inner: &Path, options: &str, flags: MsFlags) -> Result<(), SetupFailure> {
        let target = self.ensure(inner, true)?;
        let target_path = fd_path(target.as_fd());
        mount(
            Some("tmpfs"),
            target_path.as_str(),
            Some("tmpfs"),
            flags,
            Some(options),
        )
        .map_err(|e| {
            failure(
                "tmpfs",
                format!("mount a tmpfs on {}", inner.display()),
                &e.into(),
            )
        })
    }

    /// Writes a file of the gear's root. In an image's root the file is made in the scratch
    /// directory and bound read-only over the image's own (which is never written).
    fn write_file(&mut self, inner: &str, contents: &str) -> Result<(), SetupFailure> {
        let Some(scratch) = self.scratch.clone() else {
            let path = self.root.join(inner.trim_start_matches('/'));
            return std::fs::write(&path, contents)
                .map_err(|e| failure("etc", format!("write {inner}"), &e));
        };
        let made = scratch.join(inner.trim_start_matches('/').replace('/', "_"));
        std::fs::write(&made, contents)
            .map_err(|e| failure("etc", format!("write {}", made.display()), &e))?;
        let file = open_following(&made)
            .map_err(|e| failure("etc", format!("open {}", made.display()), &e))?;
        self.bind(file.as_fd(), Path::new(inner), false, RO)
            .map_err(|f| SetupFailure {
                detail: format!(
                    "{} (the image's {inner} must be a plain file or absent)",
                    f.detail
                ),
                ..f
            })
    }

    fn symlink(&self, target: &Path, inner: &str) -> Result<(), SetupFailure> {
        let path = self.root.join(inner.trim_start_matches('/'));
        std::os::unix::fs::symlink(target, &path)
            .map_err(|e| failure("symlink", format!("create {inner}"), &e))
    }
}

const RO: u64 = sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
const RW: u64 = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;

/// A gear root under construction at the staging path: everything that is the same for every
/// gear is in place; [`finish_and_pivot`] adds the gear's own parts.
#[derive(Debug)]
pub(crate) struct Prepared {
    b: Builder,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").field("root", &self.root).finish()
    }
}

/// Builds the part of the root every gear shares, at the staging path, in the helper's own
/// mount namespace: the system read-only, `/etc` with the host's shared files, `/dev` without
/// its shared-memory mount, `/proc` with its masks. Runs before the spec is known.
pub(crate) fn prepare(sources: SystemSources) -> Result<Prepared, SetupFailure> {
    // No mount event may travel back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| failure("propagation", "make / private".into(), &e.into()))?;

    let mut b = Builder {
        root: PathBuf::from(STAGING),
        root_fd: None,
        report: FilesystemReport {
            root: "tmpfs + pivot_root".into(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            masked: Vec::new(),
            sys_present: false,
        },
        scratch: None,
    };
    mount(
        Some("tmpfs"),
        STAGING,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=4m"),
    )
    .map_err(|e| {
        failure(
            "root_tmpfs",
            format!("mount a tmpfs on {STAGING}"),
            &e.into(),
        )
    })?;
    let root_fd = std::fs::File::open(STAGING)
        .map_err(|e| failure("root_tmpfs", format!("open {STAGING}"), &e))?;
    b.root_fd = Some(OwnedFd::from(root_fd));

    // The system, read-only.
    for entry in &sources.system {
        match entry {
            SystemEntry::Dir(name, fd) => {
                b.bind(fd.as_fd(), &Path::new("/").join(name), true, RO)?
            }
            SystemEntry::Symlink(name, target) => b.symlink(target, name)?,
        }
    }

    // A curated /etc: the host's shared files now, the gear's identity files later.
    drop(b.ensure(Path::new("/etc"), true)?);
    for (name, file) in &sources.etc_files {
        let inner = format!("/etc/{name}");
        match file {
            EtcFile::Contents(bytes) => {
                let path = b.root.join(inner.trim_start_matches('/'));
                std::fs::write(&path, bytes)
                    .map_err(|e| failure("etc", format!("write {inner}"), &e))?;
            }
            EtcFile::Bind(fd) => b.bind(fd.as_fd(), Path::new(&inner), false, RO)?,
            EtcFile::Symlink(target) => b.symlink(target, &inner)?,
        }
    }
    for (name, fd) in &sources.etc_dirs {
        b.bind(fd.as_fd(), &Path::new("/etc").join(name), true, RO)?;
    }

    build_dev(&mut b, &sources)?;
    build_proc(&mut b, &sources)?;
    for empty in ["/run", "/var/tmp"] {
        drop(b.ensure(Path::new(empty), true)?);
    }
    Ok(Prepared { b })
}

/// Adds the gear's own parts to a prepared root — identity files in `/etc`, the home and the
/// spec's binds, a private `/tmp` and `/dev/shm` sized and labelled for the gear — and pivots
/// into it.
pub(crate) fn finish_and_pivot(
    prepared: Prepared,
    hs: &HelperSpec,
    sources: GearSources,
) -> Result<FilesystemReport, SetupFailure> {
    let spec = &hs.spec;
    let mut b = prepared.b;
    let image = match &sources.root {
        Some(tree) => Some(image::enter_image_root(&mut b, tree.as_fd())?),
        None => None,
    };
    if let Some(image) = image {
        b = image;
    }
    let user = &spec.gear_id;
    let home = spec.home_target.display();
    let (uid, gid) = hs.ids();
    // Rootless, the gear is uid 0 of its namespace: it is the one user, under its own name.
    let root = if hs.rootless {
        String::new()
    } else {
        "root:x:0:0:root:/root:/usr/sbin/nologin\n".to_string()
    };
    let root_group = if hs.rootless { "" } else { "root:x:0:\n" };
    let own_user = format!("{user}:x:{uid}:{gid}:gear {user}:{home}:/bin/sh\n");
    let own_group = format!("{user}:x:{gid}:\n");
    if b.scratch.is_some() {
        // an image keeps its own users and groups; the gear's uid gets its entry beside them
        let passwd = b.image_etc("passwd", user, uid)?;
        b.write_file("/etc/passwd", &format!("{passwd}{own_user}"))?;
        let group = b.image_etc("group", user, gid)?;
        b.write_file("/etc/group", &format!("{group}{own_group}"))?;
    } else {
        b.write_file(
            "/etc/passwd",
            &format!(
                "{root}nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n{own_user}"
            ),
        )?;
        b.write_file(
            "/etc/group",
            &format!("{root_group}nogroup:x:65534:\n{own_group}"),
        )?;
    }
    b.write_file("/etc/hostname", &format!("{}\n", spec.hostname))?;
    b.write_file(
        "/etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            spec.hostname
        ),
    )?;

    // The gear's home and extra binds, parents before children.
    let mut binds: Vec<(BorrowedFd<'_>, &Path, bool, u64)> =
        vec![(sources.home.as_fd(), &spec.home_target, true, RW)];
    for (fd, target, dir) in &sources.ro {
        binds.push((fd.as_fd(), target, *dir, RO));
    }
    for (fd, target, dir) in &sources.rw {
        binds.push((fd.as_fd(), target, *dir, RW));
    }
    binds.sort_by_key(|(_, target, _, _)| target.components().count());
    for (fd, target, dir, attrs) in binds {
        b.attach(fd, target, dir, attrs)?;
    }

    // Private /tmp and /dev/shm, labelled like the gear's files when SELinux is enabled.
    let label = context_option(hs.file_label.as_deref());
    b.tmpfs(
        Path::new("/tmp"),
        &format!("mode=1777,size={}{label}", spec.limits.tmp_bytes),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    b.report.read_write.push("/tmp".into());
    b.tmpfs(
        Path::new("/dev/shm"),
        &format!("mode=1777,size={}{label}", spec.limits.tmp_bytes),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    b.set_attrs(
        Path::new("/dev"),
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
        false,
    )?;

    // the host-built root is read-only; an image's root is the gear's writable layer
    pivot(&b, b.scratch.is_none())?;
    Ok(b.report)
}

/// The `context=` mount option that labels a whole tmpfs (and everything created in it) with
/// `label`; empty without SELinux. The label holds commas (`s0:c1,c2`), hence the quotes.
fn context_option(label: Option<&str>) -> String {
    label.map_or_else(String::new, |l| format!(",context=\"{l}\""))
}

fn build_dev(b: &mut Builder, sources: &SystemSources) -> Result<(), SetupFailure> {
    b.tmpfs(
        Path::new("/dev"),
        "mode=0755,size=64k",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )?;
    for (name, fd) in &sources.devices {
        // Device binds keep device access but never setuid or exec.
        b.bind(
            fd.as_fd(),
            &Path::new("/dev").join(name),
            false,
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NOEXEC,
        )?;
    }
    let pts = b.ensure(Path::new("/dev/pts"), true)?;
    mount(
        Some("devpts"),
        fd_path(pts.as_fd()).as_str(),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| {
        failure(
            "devpts",
            "mount a new devpts instance on /dev/pts".into(),
            &e.into(),
        )
    })?;
    drop(pts);
    for (target, name) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        b.symlink(Path::new(target), name)?;
    }
    Ok(())
}

fn build_proc(b: &mut Builder, sources: &SystemSources) -> Result<(), SetupFailure> {
    // A fresh proc for the gear's pid namespace, mounted before the old root goes away.
    let proc_dir = b.ensure(Path::new("/proc"), true)?;
    mount(
        Some("proc"),
        fd_path(proc_dir.as_fd()).as_str(),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| failure("proc", "mount a new proc on /proc".into(), &e.into()))?;
    drop(proc_dir);
    let proc_root = b.root.join("proc");
    for name in PROC_READ_ONLY {
        let inner = Path::new("/proc").join(name);
        if !proc_root.join(name).exists() {
            continue;
        }
        let fd = b.reopen(&inner)?;
        let path = fd_path(fd.as_fd());
        mount(
            Some(path.as_str()),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            failure(
                "proc_read_only",
                format!("bind {} onto itself", inner.display()),
                &e.into(),
            )
        })?;
        drop(fd);
        b.set_attrs(&inner, RO | sys::MOUNT_ATTR_NOEXEC, true)?;
        b.report.read_only.push(inner);
    }
    for name in PROC_MASKED_FILES {
        let inner = Path::new("/proc").join(name);
        if !proc_root.join(name).is_file() {
            continue;
        }
        let fd = b.reopen(&inner)?;
        mount(
            Some(fd_path(sources.null.as_fd()).as_str()),
            fd_path(fd.as_fd()).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| failure("proc_mask", format!("hide {}", inner.display()), &e.into()))?;
        drop(fd);
        b.set_attrs(&inner, RO | sys::MOUNT_ATTR_NOEXEC, false)?;
        b.report.masked.push(inner);
    }
    for name in PROC_MASKED_DIRS {
        let inner = Path::new("/proc").join(name);
        if !proc_root.join(name).is_dir() {
            continue;
        }
        b.tmpfs(
            &inner,
            "size=4k,mode=0555",
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
        b.report.masked.push(inner);
    }
    Ok(())
}

fn pivot(b: &Builder, read_only: bool) -> Result<(), SetupFailure> {
    let root = b.root_fd()?;
    nix::unistd::fchdir(root)
        .map_err(|e| failure("pivot_root", format!("enter {STAGING}"), &e.into()))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| failure("pivot_root", "pivot into the new root".into(), &e.into()))?;
    // The old root is now stacked on top of "."; detach it and everything below it.
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| failure("pivot_root", "detach the old root".into(), &e.into()))?;
    nix::unistd::chdir("/").map_err(|e| failure("pivot_root", "enter /".into(), &e.into()))?;
    if read_only {
        let slash =
            std::fs::File::open("/").map_err(|e| failure("pivot_root", "open /".into(), &e))?;
        sys::mount_setattr(slash.as_fd(), RO, false)
            .map_err(|e| failure("pivot_root", "make / read-only".into(), &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_and_read_only_proc_lists_do_not_overlap() {
        for f in PROC_MASKED_FILES {
            assert!(!PROC_READ_ONLY.contains(f));
        }
        assert!(PROC_READ_ONLY.contains(&"sys"));
        assert!(PROC_MASKED_FILES.contains(&"kcore"));
    }

    #[test]
    fn context_option_quotes_the_level() {
        assert_eq!(context_option(None), "");
        assert_eq!(
            context_option(Some("system_u:object_r:gear_file_t:s0:c1,c2")),
            ",context=\"system_u:object_r:gear_file_t:s0:c1,c2\""
        );
    }
}
