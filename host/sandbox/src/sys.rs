//! The sandbox's one module of raw system calls: thin wrappers over what `nix` does not cover
//! (openat2, open_tree, move_mount, mount_setattr, close_range, pidfd_open,
//! pidfd_send_signal, `waitid` on a pidfd with real-time signals, capset, the capability
//! `prctl`s, seccomp's filter mode, clone with a pidfd, clone3 into a cgroup (`clone3.rs`),
//! Landlock's version query, interface flags, extended attributes through a descriptor,
//! getdents64, a duplicate above a given number, whether a path is the root of a mount).
//!
//! The rest of the crate makes its system calls through `nix` (or `std`), and calls these
//! wrappers for the others; it does not call `libc` functions itself (the exceptions are the
//! `gearhost-init` child in `helper.rs`, see "Where unsafe code lives" in
//! docs/ARCHITECTURE.md). A few wrappers here (`mkdirat`, `create_file_at`) use `nix` too and
//! only add the treatment of an existing entry.
//!
//! Each wrapper but `fork_into_cgroup` (which has the contract of `fork`) is safe to call: it
//! takes owned Rust values, hands the kernel pointers that live
//! for the whole call, and turns `-1` into an [`std::io::Error`].

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

mod clone3;
pub(crate) use clone3::{Forked, fork_into_cgroup, into_cgroup_unsupported};

/// `RESOLVE_NO_SYMLINKS` from `<linux/openat2.h>`: refuse every symbolic link on the way.
pub(crate) const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// `RESOLVE_NO_MAGICLINKS`: refuse `/proc/<pid>/fd`-style links.
pub(crate) const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
/// `RESOLVE_BENEATH`: the path must stay below the directory fd.
pub(crate) const RESOLVE_BENEATH: u64 = 0x08;

/// `MOUNT_ATTR_*` bits from `<linux/mount.h>`.
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;

const AT_RECURSIVE: libc::c_uint = 0x8000;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const CLONE_PIDFD: libc::c_ulong = 0x1000;
const P_PIDFD: libc::idtype_t = 3;
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` relative to `dir` (or the working directory) as an `O_PATH` descriptor with
/// the given `RESOLVE_*` restrictions; with `RESOLVE_NO_SYMLINKS` any symlink on the way,
/// the last component included, fails with `ELOOP`.
pub(crate) fn openat2_path(
    dir: Option<BorrowedFd<'_>>,
    path: &CStr,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        // No O_NOFOLLOW: with it a trailing symlink would be opened itself instead of being
        // refused, and mounting from its /proc/self/fd link would then follow it.
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is a valid NUL-terminated string and `how` a properly laid out `open_how`,
    // both alive for the duration of the call; the size passed is the size of that struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `MOUNT_ATTR_*` flags on the mount `fd` refers to (an `O_PATH` descriptor of the mount's
/// root), on its whole subtree when `recursive`.
pub(crate) fn mount_setattr(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> io::Result<()> {
    setattr(fd, set, 0, recursive)
}

/// `mount_setattr` with both the flags to set and a propagation type (`MS_PRIVATE`, `MS_SLAVE`
/// ...; 0 leaves propagation as it is).
fn setattr(fd: BorrowedFd<'_>, set: u64, propagation: u64, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: the empty path is a valid NUL-terminated string and `attr` is a correctly laid
    // out `mount_attr`; both outlive the call and the size argument matches the struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Clones the mount tree at `fd` (an `O_PATH` descriptor, no path is resolved) into a new
/// detached tree, with every mount below it, and returns a descriptor of it. Unlike a bind
/// from `/proc/self/fd/N`, a detached tree can be attached in another mount namespace by
/// whoever receives the descriptor ([`move_mount_to`]); closing it unattached unmounts it.
///
/// Every mount of the clone is private before the descriptor is returned. A clone of a shared
/// mount (on a systemd host `/` and everything below it is shared) would otherwise join the
/// original's peer group, so that whatever is later mounted on it inside a gear (its
/// deployment, `/tmp` ...) would propagate back into the host's mount table, and the next
/// clone would copy those mounts again.
pub(crate) fn open_tree_clone(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_EMPTY_PATH as libc::c_uint
        | AT_RECURSIVE;
    // SAFETY: the empty path is a valid NUL-terminated string living for the call.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    // SAFETY: open_tree returned a fresh descriptor that only we own.
    let tree = unsafe { OwnedFd::from_raw_fd(check(ret)? as RawFd) };
    setattr(tree.as_fd(), 0, libc::MS_PRIVATE, true)?;
    Ok(tree)
}

/// Whether `path` is the root of a mount (`statx`'s `STATX_ATTR_MOUNT_ROOT`, Linux 5.8), the
/// last component not followed if it is a symlink.
pub(crate) fn is_mount_root(path: &CStr) -> io::Result<bool> {
    // SAFETY: statx is plain data, for which all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `stx` is writable, both living for the call.
    let ret = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            0,
            &mut stx,
        )
    };
    check(ret as libc::c_long)?;
    if stx.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel does not say which paths are mount roots (Linux 5.8 or later needed)",
        ));
    }
    Ok(stx.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0)
}

/// Attaches the detached tree `tree` on the mount point `target` (an `O_PATH` descriptor).
pub(crate) fn move_mount_to(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both paths are empty NUL-terminated strings living for the call; the
    // descriptors are borrowed for its duration.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// Opens a new file system context of type `fs` (`fsopen`).
pub(crate) fn fsopen(fs: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `fs` is a valid NUL-terminated string living for the call.
    let ret = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), FSOPEN_CLOEXEC) };
    // SAFETY: fsopen returned a fresh descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(check(ret)? as RawFd) })
}

/// Sets the string parameter `key` of the file system context `fs` to `value`.
pub(crate) fn fsconfig_string(fs: BorrowedFd<'_>, key: &CStr, value: &CStr) -> io::Result<()> {
    // SAFETY: both strings are valid NUL-terminated strings living for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    };
    check(ret).map(drop)
}

/// Creates the superblock of the configured context `fs` and returns it as a detached mount
/// with the mount attributes `attrs` (`fsconfig(FSCONFIG_CMD_CREATE)`, then `fsmount`).
pub(crate) fn fs_create_and_mount(fs: BorrowedFd<'_>, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: no pointer is passed; the descriptor is borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    check(ret)?;
    // SAFETY: plain integers and a borrowed descriptor.
    let ret = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    // SAFETY: fsmount returned a fresh descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(check(ret)? as RawFd) })
}

/// Creates directory `name` in `dir` (an existing entry is not an error).
pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    match nix::sys::stat::mkdirat(dir, name, nix::sys::stat::Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates an empty regular file `name` in `dir` to mount a file on (an existing entry is not
/// an error; symlinks are never followed).
pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o444);
    match nix::fcntl::openat(dir, name, flags, mode) {
        // closing the fresh descriptor is all that is needed
        Ok(fd) => {
            drop(fd);
            Ok(())
        }
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Marks every descriptor from `first` upwards close-on-exec, so none survives the next execve.
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags; it takes no
    // pointers.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    check(ret).map(drop)
}

/// Duplicates `fd` to a close-on-exec descriptor numbered `min` or above (`F_DUPFD_CLOEXEC`).
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens a pidfd for `pid` (as seen in the caller's pid namespace).
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = check(ret)? as RawFd;
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes a copy of descriptor `target` of the process behind `pidfd` (`pidfd_getfd`, which
/// needs ptrace access to it), close-on-exec.
pub(crate) fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes plain integers.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    let fd = check(ret)? as RawFd;
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd`; it cannot hit a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo pointer is allowed (the kernel fills in a default one).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// How a child ended, as `waitid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildState {
    /// Still running (only from a non-blocking wait).
    Running,
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Waits for (and reaps) the child behind `pidfd`; with `nohang` it returns at once.
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<ChildState> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for the kernel to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let options = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let ret =
            unsafe { libc::waitid(P_PIDFD, pidfd.as_raw_fd() as libc::id_t, &mut info, options) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid filled `info` for a child state change (or left it zeroed with WNOHANG);
        // si_pid and si_status are valid to read for SIGCHLD-type siginfo.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(ChildState::Running);
        }
        return Ok(match info.si_code {
            libc::CLD_EXITED => ChildState::Exited(status),
            _ => ChildState::Signaled(status),
        });
    }
}

/// `SECCOMP_SET_MODE_FILTER` from `<linux/seccomp.h>`.
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

/// Installs the classic BPF `program` as a seccomp filter of the calling thread (flags 0: no
/// thread synchronisation). Needs `no_new_privs` or CAP_SYS_ADMIN.
pub(crate) fn seccomp_set_filter(program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a seccomp program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // the kernel only reads the program
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`, which outlives the call and holds `len`
    // instructions; the kernel copies them before returning.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &raw const fprog,
        )
    };
    check(ret).map(drop)
}

/// The highest Landlock ABI version this kernel offers, 0 when Landlock is unavailable.
pub(crate) fn landlock_abi() -> u32 {
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only returns a
    // number.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if ret < 0 { 0 } else { ret as u32 }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears the effective, permitted and inheritable capability sets of the calling thread.
pub(crate) fn clear_capabilities() -> io::Result<()> {
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: version 3 expects exactly two CapData entries; both pointers are valid for the
    // call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    check(ret).map(drop)
}

/// Drops `cap` from the bounding set; unknown capability numbers are ignored.
pub(crate) fn drop_bounding_cap(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes plain integers.
    let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) {
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

/// Clears the ambient capability set.
pub(crate) fn clear_ambient() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT with CLEAR_ALL takes plain integers.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(ret as libc::c_long).map(drop)
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: `req` has the layout of `struct ifreq` (name then the flags member of the union,
    // padded to the full size) and lives for the call.
    let ret = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut req as *mut IfReqFlags,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above.
    let ret = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &mut req as *mut IfReqFlags,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process has one thread: `/proc/self/task` has a link for `.`, one for `..`
/// and one per thread.
pub(crate) fn single_threaded() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/task").is_ok_and(|m| m.nlink() == 3)
}

/// What the child of [`clone_into_new_pid_ns`] does: install descriptors, then run
/// [`ChildProgram`]. Everything is prepared before the clone so nothing is allocated in the
/// child before the program runs.
pub(crate) struct ExecPlan<'a> {
    /// `(source, target)` descriptor pairs installed with dup2; every source is above every
    /// target, so no pair clobbers another, and the targets are every number from 0 to the
    /// highest one.
    pub(crate) fds: &'a [(RawFd, RawFd)],
    /// What the child runs once its descriptors are in place.
    pub(crate) program: ChildProgram<'a>,
    /// Rootless mode: the child is cloned into a new user namespace too, waits until one byte
    /// arrives on this descriptor (the parent has written its uid and gid maps), then takes
    /// uid and gid 0 of that namespace before it executes.
    pub(crate) userns_sync: Option<RawFd>,
}

/// The program of an [`ExecPlan`].
pub(crate) enum ChildProgram<'a> {
    /// Execute `path` with NULL-terminated `argv` and `envp`.
    Exec {
        path: &'a CStr,
        argv: &'a [*const libc::c_char],
        envp: &'a [*const libc::c_char],
    },
    /// Call this function in the child, which is a copy of the caller (no exec): descriptors
    /// above the plan's targets are closed first, as an exec would have closed the
    /// close-on-exec ones, the environment is wiped, as an exec with none would have left it,
    /// and the child takes `name` as its command name. A panic in `run` ends the child (status
    /// 101) instead of unwinding into the frames it shares with the caller. Built with
    /// [`ChildProgram::call`] only, which checks that this process has one thread.
    Call { run: fn() -> !, name: &'a CStr },
}

impl<'a> ChildProgram<'a> {
    /// A program that is a function of this binary instead of another executable, when this
    /// process has one thread; `None` otherwise. The child runs ordinary code (allocation,
    /// locks) in its copy of the address space, which is only sound when no other thread could
    /// have held a lock at the moment of the clone; with one thread, no thread can appear
    /// between this check and the clone unless the caller starts it in between.
    pub(crate) fn call(run: fn() -> !, name: &'a CStr) -> Option<Self> {
        single_threaded().then_some(ChildProgram::Call { run, name })
    }
}

/// Forks a child into a new pid namespace (it is pid 1 there), returning its host pid and a
/// pidfd for it. The child resets its signal mask, installs the descriptors of `plan` and runs
/// its program; if an exec fails it exits with 127.
pub(crate) fn clone_into_new_pid_ns(plan: &ExecPlan<'_>) -> io::Result<(libc::pid_t, OwnedFd)> {
    if let ChildProgram::Exec { argv, envp, .. } = &plan.program {
        debug_assert_eq!(argv.last(), Some(&std::ptr::null()));
        debug_assert_eq!(envp.last(), Some(&std::ptr::null()));
    }
    let mut pidfd: libc::c_int = -1;
    let mut flags =
        libc::CLONE_NEWPID as libc::c_ulong | CLONE_PIDFD | libc::SIGCHLD as libc::c_ulong;
    if plan.userns_sync.is_some() {
        flags |= libc::CLONE_NEWUSER as libc::c_ulong;
    }
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like fork: the child
    // gets a copy-on-write image and returns 0 on the same stack. In the child we only call
    // async-signal-safe functions (sigprocmask, dup2, close_range, prctl, execve, _exit) on
    // data prepared before the clone, so the state of other threads' locks in the copied image
    // never matters; a `ChildProgram::Call` runs ordinary code after that, which is sound as
    // its constructor found this process with one thread. `pidfd` is a valid out-pointer for
    // CLONE_PIDFD (the parent_tid argument slot).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0 as libc::c_ulong,
            &mut pidfd as *mut libc::c_int,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if ret == 0 {
        // SAFETY: see above; this is the child.
        unsafe { exec_in_child(plan) }
    }
    // SAFETY: CLONE_PIDFD stored a fresh descriptor that only we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((ret as libc::pid_t, pidfd))
}

/// Runs in the freshly cloned child; never returns.
///
/// # Safety
///
/// Must only be called in the child of a fork-like clone, with `plan` prepared beforehand.
unsafe fn exec_in_child(plan: &ExecPlan<'_>) -> ! {
    // SAFETY: all calls below up to the program are async-signal-safe and use memory that was
    // valid in the parent at clone time and is therefore valid in this copy of its address
    // space; what a `Call` program may do is its constructor's contract.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if let Some(sync) = plan.userns_sync {
            let mut byte = 0u8;
            loop {
                let n = libc::read(sync, (&mut byte as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(125);
            }
            // Root of the new user namespace (mapped to the caller outside); without this the
            // exec would drop the capabilities the namespace gave this process.
            if libc::setresgid(0, 0, 0) < 0 || libc::setresuid(0, 0, 0) < 0 {
                libc::_exit(125);
            }
        }
        for &(src, dst) in plan.fds {
            if libc::dup2(src, dst) < 0 {
                libc::_exit(126);
            }
        }
        match &plan.program {
            ChildProgram::Exec { path, argv, envp } => {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127)
            }
            ChildProgram::Call { run, name } => {
                let first = plan
                    .fds
                    .iter()
                    .map(|&(_, dst)| dst)
                    .max()
                    .map_or(0, |d| d + 1);
                if libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    libc::c_uint::MAX,
                    0,
                ) < 0
                {
                    libc::_exit(126);
                }
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                // An exec would have left no environment; the caller's (tokens, agent sockets)
                // is overwritten where `/proc/<pid>/environ` reads it, then dropped.
                let mut entry = libc::environ;
                while !entry.is_null() && !(*entry).is_null() {
                    libc::memset((*entry).cast(), 0, libc::strlen(*entry));
                    entry = entry.add(1);
                }
                libc::clearenv();
                // A panic must not unwind out of here: above this frame is the caller's own
                // code, which the copy would go on running as if it were the caller. It ends
                // the copy with the status a panicking program's main thread has.
                let _ = std::panic::catch_unwind(|| run());
                libc::_exit(101)
            }
        }
    }
}

/// `RESOLVE_NO_XDEV`: refuse to cross a mount point (bind mounts included) on the way.
pub(crate) const RESOLVE_NO_XDEV: u64 = 0x01;

/// Opens `path` relative to `dir` with `openat2` and the given `O_*` flags (`O_CLOEXEC` is always
/// added) and `RESOLVE_*` restrictions. With `O_PATH | O_NOFOLLOW` and `RESOLVE_NO_SYMLINKS`, a
/// trailing symlink is opened itself (nothing is followed), which [`openat2_path`] refuses.
pub(crate) fn openat2_flags(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is a valid NUL-terminated string and `how` a properly laid out `open_how`,
    // both alive for the duration of the call; the size passed is the size of that struct.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `/proc/self/fd/N` path of a descriptor. Path calls given it act on the very file the
/// descriptor refers to: the kernel jumps to it and follows nothing further, not even when the
/// descriptor is an `O_PATH` one of a symlink (the link itself is reached).
fn proc_fd_path(fd: BorrowedFd<'_>) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap_or_else(|_| unreachable!("a formatted number holds no NUL"))
}

/// Reads extended attribute `name` of the file `fd` refers to (any descriptor, `O_PATH` ones
/// included, which `fgetxattr` refuses) into `buf`, through its `/proc/self/fd` path; returns
/// the value's length.
pub(crate) fn fd_getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let path = proc_fd_path(fd);
    // SAFETY: both strings are NUL-terminated and `buf` is writable for `buf.len()` bytes, all
    // alive for the call.
    let ret = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// Sets extended attribute `name` of the file `fd` refers to (any descriptor, `O_PATH` ones of
/// symlinks included: the link itself gets it), through its `/proc/self/fd` path.
pub(crate) fn fd_setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let path = proc_fd_path(fd);
    // SAFETY: both strings are NUL-terminated and `value` readable for `value.len()` bytes, all
    // alive for the call.
    let ret = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The entries of a directory, read with `getdents64` from a descriptor that stays usable as
/// the `dirfd` of calls on those entries. Holds one descriptor and a fixed 8 KiB buffer.
pub(crate) struct DirEntries {
    fd: OwnedFd,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

impl std::fmt::Debug for DirEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirEntries").field("fd", &self.fd).finish()
    }
}

impl DirEntries {
    /// Reads the directory `fd` (opened for reading, `O_DIRECTORY`).
    pub(crate) fn new(fd: OwnedFd) -> DirEntries {
        DirEntries {
            fd,
            buf: vec![0u8; 8192].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }

    /// The directory's descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The next entry's name (never `.` or `..`), or `None` at the end.
    pub(crate) fn next_name(&mut self) -> io::Result<Option<std::ffi::CString>> {
        // linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[]
        const NAME_AT: usize = 19;
        loop {
            if self.pos >= self.len {
                // SAFETY: `buf` is writable for its whole length and outlives the call; the
                // descriptor is open (owned by `self`).
                let ret = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr(),
                        self.buf.len(),
                    )
                };
                let n = check(ret)? as usize;
                if n == 0 {
                    return Ok(None);
                }
                self.pos = 0;
                self.len = n.min(self.buf.len());
            }
            let record = &self.buf[self.pos..self.len];
            let reclen = record
                .get(16..18)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]) as usize)
                .unwrap_or(0);
            if reclen <= NAME_AT || reclen > record.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "getdents64 returned a malformed record",
                ));
            }
            self.pos += reclen;
            let name = &record[NAME_AT..reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name.is_empty() || name == b"." || name == b".." {
                continue;
            }
            return Ok(Some(std::ffi::CString::new(name).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "a directory entry holds a NUL")
            })?));
        }
    }
}
