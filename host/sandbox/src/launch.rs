//! The node side of starting a gear: prepare the cgroup and labels, clone `gearhost-init`
//! straight into a new pid namespace, hand it the spec, and read back its layer report.
//!
//! Why a raw `clone(CLONE_NEWPID | CLONE_PIDFD)` instead of `std::process::Command`: with
//! `Command` the helper would be an ordinary process that has to fork once more to get a pid 1,
//! and the node would supervise a middleman. Cloning into the new pid namespace makes the
//! helper itself pid 1 of the gear, so the pid the node holds *is* the gear's init (killing it
//! kills the whole gear) and one process per gear is saved. The child of the clone does only
//! what `posix_spawn` would (reset the signal mask, dup2, execve) on memory prepared before the
//! clone, which is safe in a multi-threaded node. `CLONE_PIDFD` hands back a pidfd with no
//! pid-reuse race, for waiting, signalling and async readiness.
//!
//! A gear that is not `detached` dies with the node through that pidfd's mirror image: the node
//! passes a pidfd of *itself* to the helper, which polls it. Unlike `PR_SET_PDEATHSIG` this
//! follows the node process, not the thread that happened to start the gear (tokio retires idle
//! threads). A `detached` gear (the node's supervised processes) outlives the node; with
//! `keep_output` its init keeps its output pipes for the next node (see [`crate::adopt`]).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::cgroup::{self, GearCgroup, TeardownReport};
use crate::error::SandboxError;
use crate::protocol::{
    HelperMessage, HelperSpec, KEPT_PIPE_BYTES, KEPT_STDERR_FD, KEPT_STDOUT_FD, MAX_SPEC_FDS,
    SpecFds,
};
use crate::report::LayerReport;
use crate::selinux;
use crate::spec::{Bind, NetworkMode, SandboxSpec, Stdio};
use crate::sys::{self, ChildState};
use crate::warm::{self, Helper, high_dup};

/// Name of the helper binary.
pub const INIT_NAME: &str = "gearhost-init";

/// Finds `gearhost-init`: the spec's explicit path, else `$GEARHOST_INIT`, else next to the
/// running executable (or one directory up, where cargo puts binaries when running tests).
pub fn find_init(explicit: Option<&Path>) -> Result<PathBuf, SandboxError> {
    if let Some(p) = explicit {
        return existing(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("GEARHOST_INIT") {
        return existing(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|source| SandboxError::Io {
        action: "locate",
        path: PathBuf::from("/proc/self/exe"),
        source,
        hint: "set GEARHOST_INIT to the path of gearhost-init",
    })?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let beside = dir.join(INIT_NAME);
    if beside.is_file() {
        return Ok(beside);
    }
    let above = dir.parent().map(|d| d.join(INIT_NAME));
    match above {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(SandboxError::InitNotFound { path: beside }),
    }
}

fn existing(path: PathBuf) -> Result<PathBuf, SandboxError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(SandboxError::InitNotFound { path })
    }
}

/// A signal the node may send to a gear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: ask the command to stop (forwarded by the gear's init).
    Term,
    /// SIGINT (forwarded).
    Int,
    /// SIGHUP (forwarded).
    Hup,
    /// SIGQUIT (forwarded).
    Quit,
    /// SIGUSR1 (forwarded).
    Usr1,
    /// SIGUSR2 (forwarded).
    Usr2,
    /// SIGKILL: kills the gear's init and with it every process of the gear.
    Kill,
}

impl Signal {
    pub(crate) fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Quit => libc::SIGQUIT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Starts confined gear processes.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox;

/// A running gear process (its init, pid 1 of the gear's pid namespace).
///
/// Reap it with [`wait`](Self::wait) or [`try_wait`](Self::try_wait); an unreaped exited gear
/// stays a zombie of the node. Then call [`teardown`](Self::teardown) to remove its cgroup.
#[derive(Debug)]
pub struct Sandboxed {
    pid: u32,
    pidfd: OwnedFd,
    report: LayerReport,
    cgroup: GearCgroup,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    terminal: Option<File>,
    status: Option<ExitStatus>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SandboxError::Spawn {
        what: "create a pipe",
        source: e.into(),
    })
}

/// Hands a pipe that becomes one of the gear's standard streams to the gear's
/// user. A process reaches its own stream by path as well as by descriptor
/// (`/dev/stdout` is `/proc/self/fd/1`, which nginx, for one, opens), and the
/// kernel checks such an open against the pipe's owner and mode: a pipe the
/// node made belongs to root with mode 0600. Files, terminals and sockets
/// are left as they are.
fn give_pipe(fd: BorrowedFd<'_>, spec: &SandboxSpec) -> Result<(), SandboxError> {
    let stat = nix::sys::stat::fstat(fd).map_err(|e| SandboxError::Spawn {
        what: "inspect a standard stream",
        source: e.into(),
    })?;
    let kind = stat.st_mode & nix::sys::stat::SFlag::S_IFMT.bits();
    let is_fifo = kind == nix::sys::stat::SFlag::S_IFIFO.bits();
    if !is_fifo || (stat.st_uid == spec.uid && stat.st_gid == spec.gid) {
        return Ok(());
    }
    nix::unistd::fchown(
        fd,
        Some(nix::unistd::Uid::from_raw(spec.uid)),
        Some(nix::unistd::Gid::from_raw(spec.gid)),
    )
    .map_err(|e| SandboxError::Spawn {
        what: "hand a standard stream pipe to the gear's user",
        source: e.into(),
    })
}

/// The child ends and parent ends of the three standard streams, and the reading ends the
/// init keeps (`keep_output`) with the descriptor number each gets there.
struct StdioPlan {
    child: Vec<OwnedFd>,
    parent: [Option<File>; 3],
    kept: Vec<(OwnedFd, i32)>,
}

/// Enlarges an output pipe the init keeps to [`KEPT_PIPE_BYTES`] (at most
/// `/proc/sys/fs/pipe-max-size` for a caller without `CAP_SYS_RESOURCE`: then it keeps the
/// default size, which only shortens how long the command writes on while no node runs).
fn enlarge_pipe(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, KEPT_PIPE_BYTES) };
}

fn plan_stdio(spec: &SandboxSpec) -> Result<StdioPlan, SandboxError> {
    let mut child = Vec::new();
    let mut parent: [Option<File>; 3] = [None, None, None];
    let mut kept = Vec::new();
    for (i, stdio) in [&spec.stdio.stdin, &spec.stdio.stdout, &spec.stdio.stderr]
        .into_iter()
        .enumerate()
    {
        let fd = match stdio {
            Stdio::Null => high_dup(warm::open_null()?.as_fd())?,
            Stdio::Inherit => {
                // SAFETY: 0, 1 and 2 are the node's standard descriptors, borrowed only for
                // the duplicate call.
                let own = unsafe { BorrowedFd::borrow_raw(i as RawFd) };
                high_dup(own)?
            }
            Stdio::Piped => {
                let (read, write) = pipe()?;
                give_pipe(read.as_fd(), spec)?;
                if i == 0 {
                    parent[0] = Some(File::from(write));
                    high_dup(read.as_fd())?
                } else {
                    if spec.keep_output {
                        enlarge_pipe(read.as_fd());
                        let at = if i == 1 {
                            KEPT_STDOUT_FD
                        } else {
                            KEPT_STDERR_FD
                        };
                        kept.push((high_dup(read.as_fd())?, at));
                    }
                    parent[i] = Some(File::from(read));
                    high_dup(write.as_fd())?
                }
            }
            Stdio::Fd(file) => {
                give_pipe(file.as_fd(), spec)?;
                high_dup(file.as_fd())?
            }
        };
        child.push(fd);
    }
    Ok(StdioPlan {
        child,
        parent,
        kept,
    })
}

/// Receives the controlling side of the command's terminal, which the helper sends on the spec
/// socket before the command runs.
fn receive_terminal(sock: &std::os::unix::net::UnixStream) -> Result<File, SandboxError> {
    let mut byte = [0u8; 1];
    let (n, mut fds) = gearhost_sys::fdpass::recv_with_fds(sock, &mut byte)
        .map_err(|e| SandboxError::Protocol(format!("receive the gear's terminal: {e}")))?;
    match (n, fds.pop()) {
        (1, Some(fd)) if fds.is_empty() => Ok(File::from(fd)),
        _ => Err(SandboxError::Protocol(
            "gearhost-init did not send the gear's terminal".into(),
        )),
    }
}

/// A bind source as the node opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResolvedBind {
    source: BindSource,
    target: PathBuf,
}

/// Where a bind comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BindSource {
    /// Below the gear's home (gear-controlled: no symlink may be followed).
    InHome(PathBuf),
    /// Elsewhere on the host (node-controlled, already canonical).
    Host(PathBuf),
}

/// The gear's home and bind sources as detached mount trees: each opened by the node without
/// following any symlink (and, below the home, without leaving it), so a symlink planted in
/// the gear's home cannot redirect a bind, then cloned with `open_tree`.
struct OpenedSources {
    home: OwnedFd,
    root: Option<OwnedFd>,
    ro: Vec<(OwnedFd, bool)>,
    rw: Vec<(OwnedFd, bool)>,
}

fn open_sources(
    canonical_home: &Path,
    root: Option<&Path>,
    ro: &[ResolvedBind],
    rw: &[ResolvedBind],
    rootless: bool,
) -> Result<OpenedSources, SandboxError> {
    let plain = sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS;
    let home_c = cstring(
        canonical_home.as_os_str().as_bytes(),
        "encode the home path",
    )?;
    let home = sys::openat2_path(None, &home_c, plain).map_err(|source| SandboxError::Io {
        action: "open the gear home",
        path: canonical_home.to_path_buf(),
        source,
        hint: "create it, and make sure no symlink is on its path",
    })?;
    // the root is the node's own mount (an image's overlay), never reached through a symlink
    let root = root
        .map(|path| {
            let c = cstring(path.as_os_str().as_bytes(), "encode the root path")?;
            sys::openat2_path(None, &c, plain).map_err(|source| SandboxError::Io {
                action: "open the gear's root",
                path: path.to_path_buf(),
                source,
                hint: "mount the gear's root first (the node does it when the gear starts)",
            })
        })
        .transpose()?;
    let open = |bind: &ResolvedBind| -> Result<(OwnedFd, bool), SandboxError> {
        let (opened, shown) = match &bind.source {
            BindSource::InHome(rel) => (
                cstring(rel.as_os_str().as_bytes(), "encode a bind source").map(|c| {
                    sys::openat2_path(Some(home.as_fd()), &c, plain | sys::RESOLVE_BENEATH)
                })?,
                canonical_home.join(rel),
            ),
            BindSource::Host(path) => (
                cstring(path.as_os_str().as_bytes(), "encode a bind source")
                    .map(|c| sys::openat2_path(None, &c, plain))?,
                path.clone(),
            ),
        };
        let fd = opened.map_err(|source| SandboxError::Io {
            action: "open bind source",
            hint: if source.raw_os_error() == Some(libc::ELOOP) {
                "a symlink is on the way; bind sources are never reached through symlinks"
            } else {
                "create it or remove the bind from the spec"
            },
            path: shown.clone(),
            source,
        })?;
        let stat = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| SandboxError::Io {
            action: "inspect bind source",
            path: shown,
            source: e.into(),
            hint: "check the node's file system",
        })?;
        let dir = stat.st_mode & libc::S_IFMT == libc::S_IFDIR;
        Ok((fd, dir))
    };
    let ro: Vec<(OwnedFd, bool)> = ro.iter().map(&open).collect::<Result<_, _>>()?;
    let rw: Vec<(OwnedFd, bool)> = rw.iter().map(&open).collect::<Result<_, _>>()?;
    // The helper lives in a mount namespace of its own (made before the spec, when warm), where
    // a mount of the node's namespace cannot be bound: hand it detached clones instead. A
    // rootless node may not clone its mounts; its helper finds the files itself.
    if rootless {
        if root.is_some() {
            return Err(SandboxError::Spawn {
                what: "give the gear its own root",
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "a rootless node cannot mount an image's root; run the node as root",
                ),
            });
        }
        return Ok(OpenedSources {
            home,
            root: None,
            ro,
            rw,
        });
    }
    let clone = |fd: &OwnedFd| {
        sys::open_tree_clone(fd.as_fd()).map_err(|source| SandboxError::Spawn {
            what: "clone a bind source into a detached mount",
            source,
        })
    };
    let clone_all = |list: Vec<(OwnedFd, bool)>| -> Result<Vec<(OwnedFd, bool)>, SandboxError> {
        list.iter()
            .map(|(fd, dir)| Ok((clone(fd)?, *dir)))
            .collect()
    };
    Ok(OpenedSources {
        home: clone(&home)?,
        root: root.as_ref().map(clone).transpose()?,
        ro: clone_all(ro)?,
        rw: clone_all(rw)?,
    })
}

/// Splits bind sources into those below the gear's home (opened beneath it, no symlinks) and
/// host paths (canonicalized here, then opened without following symlinks).
fn resolve_binds(
    home: &Path,
    canonical_home: &Path,
    binds: &[Bind],
) -> Result<Vec<ResolvedBind>, SandboxError> {
    binds
        .iter()
        .map(|b| {
            let rel = b
                .source
                .strip_prefix(home)
                .ok()
                .or_else(|| b.source.strip_prefix(canonical_home).ok());
            let source = match rel {
                Some(rel) if rel.as_os_str().is_empty() => {
                    BindSource::Host(canonical_home.to_path_buf())
                }
                Some(rel) => BindSource::InHome(rel.to_path_buf()),
                None => BindSource::Host(std::fs::canonicalize(&b.source).map_err(|source| {
                    SandboxError::Io {
                        action: "resolve bind source",
                        path: b.source.clone(),
                        source,
                        hint: "create it or remove the bind from the spec",
                    }
                })?),
            };
            Ok(ResolvedBind {
                source,
                target: b.target.clone(),
            })
        })
        .collect()
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::Spawn {
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

/// A helper started before the spec is ready: killed and reaped if the start fails before the
/// spec is handed over.
struct Early(Option<Helper>);

impl Early {
    fn into_inner(mut self) -> Helper {
        self.0.take().expect("an early helper is handed over once")
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(helper) = self.0.take() {
            helper.discard();
        }
    }
}

impl Sandbox {
    /// Starts `spec.argv` confined as described in the crate docs and returns once every layer
    /// is in place and the command was executed (or setup failed). Blocking: call it from a
    /// blocking thread in async code.
    pub fn spawn(spec: SandboxSpec) -> Result<Sandboxed, SandboxError> {
        spec.validate()?;
        // The helper first: a fresh one execs and builds the shared part of the root in its own
        // process while this one labels the home, creates the cgroups and writes the spec, instead
        // of after. It learns nothing of the gear until the spec arrives.
        let helper = warm::helper_for(spec.init_path.as_deref())?;
        let helper = Early(Some(helper));
        let rootless = warm::rootless();

        let canonical_home =
            std::fs::canonicalize(&spec.home).map_err(|source| SandboxError::Io {
                action: "resolve the gear home",
                path: spec.home.clone(),
                source,
                hint: "create the gear's home directory first",
            })?;
        let binds = (
            resolve_binds(&spec.home, &canonical_home, &spec.ro_binds)?,
            resolve_binds(&spec.home, &canonical_home, &spec.rw_binds)?,
        );
        // SELinux: label the home and the read-write binds with the gear's level before
        // anything runs; fail closed. (A rootless caller can neither relabel nor transition.)
        let contexts = if selinux::is_enabled() && !rootless {
            let contexts = selinux::gear_contexts(spec.selinux.as_ref(), spec.uid)?;
            selinux::label_tree(&canonical_home, &contexts.file)?;
            // binds from below the home were labelled with it; the others by their canonical path
            for bind in &binds.1 {
                if let BindSource::Host(path) = &bind.source {
                    selinux::label_tree(path, &contexts.file)?;
                }
            }
            Some(contexts)
        } else {
            None
        };

        // A rootless caller has no cgroup to place gears in: no limits, said in the report.
        let (cgroup, cgroup_report) = if rootless {
            (GearCgroup::unplaced(), None)
        } else {
            // (read once per process: the mount table holds a line per gear's network
            // namespace, so reading it per start grew with the gear count)
            let mounts = cgroup::detect_kept()?;
            let (cgroup, report) = GearCgroup::create(&mounts, &spec.cgroup, &spec.limits)?;
            (cgroup, Some(report))
        };
        let started = Self::start_helper(
            &spec,
            helper,
            (&canonical_home, &binds.0, &binds.1),
            contexts,
            &cgroup,
            rootless,
        );
        match started {
            Ok((pid, pidfd, mut report, stdio, terminal)) => {
                report.cgroup = cgroup_report;
                let [stdin, stdout, stderr] = stdio;
                Ok(Sandboxed {
                    pid,
                    pidfd,
                    report,
                    cgroup,
                    stdin,
                    stdout,
                    stderr,
                    terminal,
                    status: None,
                })
            }
            Err(e) => {
                let _ = cgroup.teardown(Duration::from_secs(5));
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn start_helper(
        spec: &SandboxSpec,
        helper: Early,
        (canonical_home, ro, rw): (&Path, &[ResolvedBind], &[ResolvedBind]),
        contexts: Option<selinux::GearContexts>,
        cgroup: &GearCgroup,
        rootless: bool,
    ) -> Result<(u32, OwnedFd, LayerReport, [Option<File>; 3], Option<File>), SandboxError> {
        let sources = open_sources(canonical_home, spec.root.as_deref(), ro, rw, rootless)?;
        // Isolated, the namespace is made here while the helper prepares: made by the helper after
        // the spec, it was the longest single step on a cold start's path (about 0.25 ms), while
        // this process only waited. Rootless, only the helper can, in its user namespace.
        let fresh = spec.network == NetworkMode::Isolated && spec.netns.is_none() && !rootless;
        let netns = if fresh {
            let made = crate::netns::create_private_on_this_thread().map_err(|source| {
                SandboxError::Spawn {
                    what: "create the gear's network namespace",
                    source,
                }
            })?;
            Some(made)
        } else {
            spec.netns
                .as_ref()
                .map(|path| {
                    File::open(path)
                        .map(OwnedFd::from)
                        .map_err(|source| SandboxError::Io {
                            action: "open the network namespace",
                            path: path.clone(),
                            source,
                            hint: "create the gear's network namespace first",
                        })
                })
                .transpose()?
        };
        // on v2 the command is cloned straight into its leaf (see `HelperSpec::cgroup_fd`)
        let cgroup_dir = cgroup
            .v2_leaf()
            .map(|dir| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(dir)
                    .map(OwnedFd::from)
                    .map_err(|source| SandboxError::Io {
                        action: "open the gear's cgroup",
                        path: dir.to_path_buf(),
                        source,
                        hint: "check that the cgroup2 file system is mounted and the node runs as root",
                    })
            })
            .transpose()?;
        let stdio = plan_stdio(spec)?;
        let helper_spec = HelperSpec {
            kept: stdio.kept.iter().map(|(_, at)| *at).collect(),
            spec: spec.clone(),
            cgroup_procs: cgroup.procs_files(),
            cgroup_fd: cgroup_dir.is_some(),
            exec_label: contexts.as_ref().map(|c| c.process.clone()),
            file_label: contexts.map(|c| c.file),
            home: canonical_home.to_path_buf(),
            ro_binds: ro
                .iter()
                .zip(&sources.ro)
                .map(|(b, (_, dir))| (b.target.clone(), *dir))
                .collect(),
            rw_binds: rw
                .iter()
                .zip(&sources.rw)
                .map(|(b, (_, dir))| (b.target.clone(), *dir))
                .collect(),
            fresh_netns: fresh,
            watch_parent: !spec.detached,
            rootless,
            terminal: spec.stdio.terminal,
        };
        let spec_json = serde_json::to_vec(&helper_spec)
            .map_err(|e| SandboxError::Protocol(format!("encode the spec: {e}")))?;
        let [stdin, stdout, stderr] = <[OwnedFd; 3]>::try_from(stdio.child)
            .map_err(|_| SandboxError::Protocol("three standard streams expected".into()))?;
        let fds = SpecFds {
            stdio: [stdin, stdout, stderr],
            home: sources.home,
            netns,
            root: sources.root,
            cgroup: cgroup_dir,
            ro: sources.ro,
            rw: sources.rw,
            kept: stdio.kept.into_iter().map(|(fd, _)| fd).collect(),
        }
        .into_vec();
        if fds.len() > MAX_SPEC_FDS {
            return Err(SandboxError::Protocol(format!(
                "{} descriptors for one gear, at most {MAX_SPEC_FDS}: use fewer binds",
                fds.len()
            )));
        }

        let helper = helper.into_inner();
        let Helper {
            pid,
            pidfd,
            spec: spec_sock,
            report,
        } = helper;
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        // A helper that died early closes its end; its reason arrives on the report pipe.
        let sent = gearhost_sys::fdpass::send_with_fds_max(
            &spec_sock,
            &spec_json,
            &borrowed,
            MAX_SPEC_FDS,
        );
        // end of the spec; the socket stays open for a terminal coming back
        let _ = spec_sock.shutdown(std::net::Shutdown::Write);
        drop(borrowed);
        // Our copies of the helper's descriptors must go, or end-of-file never comes.
        drop(fds);
        let outcome = Self::handshake(sent, report, &spec.argv[0]).and_then(|report| {
            let terminal = if spec.stdio.terminal {
                Some(receive_terminal(&spec_sock)?)
            } else {
                None
            };
            Ok((report, terminal))
        });
        match outcome {
            Ok((report, terminal)) => Ok((pid as u32, pidfd, report, stdio.parent, terminal)),
            Err(e) => {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
                let _ = sys::waitid_pidfd(pidfd.as_fd(), false);
                Err(e)
            }
        }
    }

    /// Sends the spec and reads messages until the helper closes the report pipe.
    fn handshake(
        write_result: io::Result<()>,
        mut report: File,
        program: &str,
    ) -> Result<LayerReport, SandboxError> {
        let mut text = Vec::new();
        report
            .read_to_end(&mut text)
            .map_err(|e| SandboxError::Protocol(format!("read the helper's report: {e}")))?;
        let mut ready = None;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let message: HelperMessage = serde_json::from_slice(line).map_err(|e| {
                SandboxError::Protocol(format!("undecodable message from gearhost-init: {e}"))
            })?;
            match message {
                HelperMessage::Prepared => {}
                HelperMessage::Ready(report) => ready = Some(*report),
                HelperMessage::Failed(failure) => return Err(SandboxError::Setup(failure)),
                HelperMessage::ExecFailed { program, errno } => {
                    return Err(SandboxError::Exec {
                        program,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
            }
        }
        match (ready, write_result) {
            (Some(report), _) => Ok(report),
            (None, Err(e)) => Err(SandboxError::Protocol(format!(
                "gearhost-init exited before reading its spec ({e}); check that it matches this build"
            ))),
            (None, Ok(())) => Err(SandboxError::Protocol(format!(
                "gearhost-init exited without a report while starting {program}; run it under strace to see why"
            ))),
        }
    }
}

impl Sandboxed {
    /// The host pid of the gear's init.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A pidfd of the gear's init: it becomes readable when the gear exits (register it with
    /// an async reactor, then call [`try_wait`](Self::try_wait)).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// What each layer did.
    pub fn report(&self) -> &LayerReport {
        &self.report
    }

    /// The gear's cgroup.
    pub fn cgroup(&self) -> &GearCgroup {
        &self.cgroup
    }

    /// The writing end of the gear's stdin, when it was [`Stdio::Piped`].
    pub fn take_stdin(&mut self) -> Option<File> {
        self.stdin.take()
    }

    /// The reading end of the gear's stdout, when it was [`Stdio::Piped`].
    pub fn take_stdout(&mut self) -> Option<File> {
        self.stdout.take()
    }

    /// The reading end of the gear's stderr, when it was [`Stdio::Piped`].
    pub fn take_stderr(&mut self) -> Option<File> {
        self.stderr.take()
    }

    /// The controlling side of the command's terminal, when the spec asked for one
    /// ([`StdioSpec::terminal`](crate::StdioSpec::terminal)): what is written to it is the
    /// command's input, what is read from it its output; reading fails with `EIO` once the
    /// command and everything it started have closed the terminal.
    pub fn take_terminal(&mut self) -> Option<File> {
        self.terminal.take()
    }

    fn record(&mut self, state: ChildState) -> Option<ExitStatus> {
        let status = match state {
            ChildState::Running => return None,
            ChildState::Exited(code) => ExitStatus::from_raw((code & 0xff) << 8),
            ChildState::Signaled(sig) => ExitStatus::from_raw(sig & 0x7f),
        };
        self.status = Some(status);
        Some(status)
    }

    /// The exit status if the gear has exited (reaping it), without blocking. The status is
    /// the command's exit code, or 128 + signal when the command was killed.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let state =
            sys::waitid_pidfd(self.pidfd.as_fd(), true).map_err(|source| SandboxError::Wait {
                pid: self.pid,
                source,
            })?;
        Ok(self.record(state))
    }

    /// Blocks until the gear exits and returns its status.
    pub fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let state =
            sys::waitid_pidfd(self.pidfd.as_fd(), false).map_err(|source| SandboxError::Wait {
                pid: self.pid,
                source,
            })?;
        Ok(self.record(state).unwrap_or_default())
    }

    /// Sends `signal` to the gear's init (race-free, through the pidfd). Forwarded signals reach
    /// the command; [`Signal::Kill`] ends the whole gear.
    pub fn kill(&self, signal: Signal) -> Result<(), SandboxError> {
        if self.status.is_some() {
            return Ok(());
        }
        sys::pidfd_send_signal(self.pidfd.as_fd(), signal.raw()).map_err(|source| {
            SandboxError::Signal {
                pid: self.pid,
                source,
            }
        })
    }

    /// Kills whatever is left of the gear, reaps its init and removes its cgroup on every
    /// hierarchy.
    pub fn teardown(mut self) -> Result<TeardownReport, SandboxError> {
        if self.status.is_none() {
            let _ = sys::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            self.wait()?;
        }
        Ok(self.cgroup.teardown(Duration::from_secs(10))?)
    }
}
