//! Persistent network namespaces: one per gear, bound to a file so it
//! outlives any process. Every process of the gear joins it (its app server,
//! the programs its hooks run, `gear exec` shells), so they reach each other
//! on the gear's loopback; the node opens sockets inside it to reach the app
//! (no veth, no NAT).

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

fn nix_err(what: &str, path: &Path, e: nix::Error) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{what} {}: {e}", path.display()),
    )
}

/// Makes `dir` the directory that holds the node's bound network namespaces ("pins"): a
/// mount of its own (bound onto itself the first time), with private propagation.
///
/// Every pin is a mount. Kept among the node's other directories, ten thousand gears put ten
/// thousand mounts beside everything else on the file system holding the state directory,
/// and the kernel walks all of them whenever a mount below that file system is cloned (each
/// bind source of a gear start, `open_tree`), besides copying them into every new mount
/// namespace. Below a mount of their own they are walked only when that mount is, and a
/// mount namespace made without them ([`crate::warm::hide_from_helpers`]) does not see them.
/// Private, so that no pin propagates into the mount namespaces of other processes (on a
/// systemd host `/` is shared).
pub fn prepare_pins(dir: &Path) -> io::Result<()> {
    crate::overlay::make_private_mount_point(dir)
}

/// Unbinds every pin below `dir` (made by [`prepare_pins`]) at once, with the mount holding
/// them: their namespaces end with the last process inside. For a node's state directory
/// that is being thrown away.
pub fn remove_pins(dir: &Path) -> io::Result<()> {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(nix_err("unbind", dir, e)),
    }
}

/// Moves the pin of a network namespace from `from` to `to` (a new file): bound there, then
/// unbound and removed at `from`. For pins a node made before [`prepare_pins`] existed.
pub fn move_pin(from: &Path, to: &Path) -> io::Result<()> {
    File::options().write(true).create_new(true).open(to)?;
    if let Err(e) = mount(Some(from), to, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(to);
        return Err(nix_err("bind the network namespace to", to, e));
    }
    remove(from)
}

/// Create a new network namespace with `lo` up and bind it to `path` (a file
/// is created there; its directory must exist).
pub fn create(path: &Path) -> io::Result<()> {
    File::options().write(true).create_new(true).open(path)?;
    let target = path.to_path_buf();
    // namespaces belong to threads: do it in a thread of its own, which ends
    // while the bind mount keeps the namespace alive
    let result = std::thread::Builder::new()
        .name("gearhost-netns".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| nix_err("create a network namespace for", &target, e))?;
            crate::sys::loopback_up()?;
            allow_low_ports();
            mount(
                Some(Path::new("/proc/thread-self/ns/net")),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| nix_err("bind the network namespace to", &target, e))
        })?
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?;
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// In the calling thread's network namespace, lets any user bind any port: the namespace is
/// the gear's alone, reached only through the node, so a port below 1024 is no privilege
/// there, and an image made to listen on port 80 runs as the gear's uid unchanged. Where the
/// kernel lacks the setting, ports below 1024 stay root's.
fn allow_low_ports() {
    if low_ports_through_own_proc().is_err() {
        let _ = std::fs::write(SYSCTL_PATH, "0");
    }
}

/// The setting, as the node's `/proc` names it.
const SYSCTL_PATH: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// Writes the setting through a procfs instance of its own, detached and gone when done.
///
/// Through the node's `/proc`, every network namespace the node ever looked a sysctl up in
/// leaves its own dentries under the same parents (`/proc/sys/net`, `.../ipv4`), told apart
/// by a comparison that runs against each of them: with 10,000 gears, one lookup took 13 ms
/// and made every create slower the more gears there were. A fresh instance holds the
/// dentries of this one lookup alone, so the write costs the same whatever the gear count
/// (`benches/netns.rs`).
fn low_ports_through_own_proc() -> io::Result<()> {
    let fs = crate::sys::fsopen(c"proc")?;
    let proc = crate::sys::fs_create_and_mount(
        fs.as_fd(),
        crate::sys::MOUNT_ATTR_NOSUID
            | crate::sys::MOUNT_ATTR_NODEV
            | crate::sys::MOUNT_ATTR_NOEXEC,
    )?;
    let file = nix::fcntl::openat(
        proc.as_fd(),
        c"sys/net/ipv4/ip_unprivileged_port_start",
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )?;
    std::io::Write::write_all(&mut File::from(file), b"0")
}

/// Benchmark access: the setting written through the node's `/proc` (`own: false`) or a
/// procfs instance of its own (`own: true`), in the calling thread's network namespace.
#[doc(hidden)]
pub fn allow_low_ports_for_bench(own: bool) -> io::Result<()> {
    if own {
        low_ports_through_own_proc()
    } else {
        std::fs::write(SYSCTL_PATH, "0")
    }
}

/// Create a new network namespace with only `lo` (up) and return a descriptor
/// of it, without binding it anywhere. The namespace lives as long as the
/// descriptor (or a copy of it) stays open or a process is inside it, so it
/// leaves nothing behind when its owner goes away, even after a crash.
///
/// Other functions of this module take a path: the owner's descriptor is
/// named by `/proc/self/fd/<n>` for as long as it stays open.
pub fn create_private() -> io::Result<std::os::fd::OwnedFd> {
    std::thread::Builder::new()
        .name("gearhost-netns".into())
        // the thread ends once it is open; the descriptor keeps the namespace
        .spawn(enter_new)?
        .join()
        .map_err(|_| io::Error::other("the network namespace thread panicked"))?
}

/// [`create_private`] without a thread: the calling thread enters the new namespace to make
/// it and goes back to its own before this returns, failed or not (a thread that cannot go
/// back aborts the process). For a caller that only waits meanwhile, as `Sandbox::spawn` does
/// while its helper prepares: a new thread there was queued by the scheduler behind the helper
/// on the helper's CPU for about half a millisecond (a task just woken counts as cache-hot and
/// is not pulled to the idle CPU), longer than making the namespace takes.
pub fn create_private_on_this_thread() -> io::Result<std::os::fd::OwnedFd> {
    let own = File::open(THREAD_NS)?;
    let made = enter_new();
    // Back before anything else runs on this thread, whatever happened above. The thread had
    // the privilege to leave, so it has it to return; only a failed allocation can stop it,
    // and a thread left in another namespace would make every later socket of the caller's
    // there, unnoticed: the process ends instead.
    if let Err(e) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
        eprintln!("gearhost: cannot return to this thread's network namespace ({e}); stopping");
        std::process::abort();
    }
    made
}

/// The calling thread's network namespace.
const THREAD_NS: &str = "/proc/thread-self/ns/net";

/// Moves the calling thread into a new network namespace, brings its `lo` up and opens it.
fn enter_new() -> io::Result<std::os::fd::OwnedFd> {
    let here = Path::new(THREAD_NS);
    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| nix_err("create a network namespace in", here, e))?;
    crate::sys::loopback_up()?;
    Ok(File::open(here)?.into())
}

/// Whether `path` holds a bound network namespace.
pub fn exists(path: &Path) -> bool {
    // an unbound placeholder file has size 0 and lives on the parent's fs;
    // the nsfs inode reports its own device
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(ns), Some(Ok(dir))) => {
            use std::os::unix::fs::MetadataExt;
            ns.dev() != dir.dev()
        }
        _ => false,
    }
}

/// Unbind and remove a namespace created by [`create`]. The namespace itself
/// goes away with its last process.
pub fn remove(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_err("unbind", path, e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Connect to `addr` from inside the network namespace bound at `path`. The
/// returned socket stays in that namespace; the calling thread does not.
pub fn connect(path: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    inside(path, "gearhost-netns-connect", move || {
        TcpStream::connect_timeout(&addr, timeout)
    })
}

/// Listen on `addr` inside the network namespace bound at `path`. The
/// returned listener stays in that namespace (so do the connections it
/// accepts); the calling thread does not. Address reuse is on, so a port a
/// previous node left in `TIME_WAIT` can be taken again at once.
pub fn listen(path: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    // std sets SO_REUSEADDR and close-on-exec on Unix
    inside(path, "gearhost-netns-listen", move || {
        TcpListener::bind(addr)
    })
}

/// Runs `f` on a short-lived thread that has entered the network namespace
/// bound at `path`: sockets `f` makes belong to that namespace, and no thread
/// of the caller ever changes namespace.
fn inside<T: Send + 'static>(
    path: &Path,
    thread_name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(path)?;
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| nix_err("enter the network namespace", &path, e))?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other(format!("the thread {thread_name} panicked")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_namespace_made_on_this_thread_has_loopback_and_the_thread_goes_back() {
        use std::os::unix::fs::MetadataExt;
        if !crate::testing::privileged("creating a network namespace") {
            return;
        }
        let id = |meta: std::fs::Metadata| (meta.dev(), meta.ino());
        let own = || id(std::fs::metadata("/proc/thread-self/ns/net").expect("own namespace"));
        let before = own();
        let made = create_private_on_this_thread().expect("make a namespace");
        assert_eq!(own(), before, "the thread is back in its own namespace");
        let made = File::from(made);
        assert_ne!(
            id(made.metadata().expect("stat")),
            before,
            "a new namespace"
        );
        std::thread::spawn(move || {
            setns(made.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter it");
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
            let names: Vec<&str> = dev
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(str::trim)
                .collect();
            assert_eq!(names, ["lo"]);
            // a connection over it goes through only when it is up
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            TcpStream::connect(listener.local_addr().expect("address")).expect("loopback is up");
        })
        .join()
        .expect("checked inside");
    }

    fn may_run() -> bool {
        crate::testing::privileged("network namespaces")
    }

    #[test]
    fn low_ports_are_any_users_in_a_gear_namespace_set_through_a_procfs_of_its_own() {
        if !may_run() {
            return;
        }
        let read = || {
            std::fs::read_to_string(SYSCTL_PATH)
                .expect("the setting")
                .trim()
                .to_string()
        };
        let host = read();
        let inside = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("a network namespace");
            let before = read();
            low_ports_through_own_proc().expect("written through a procfs of its own");
            (before, read())
        })
        .join()
        .expect("thread");
        assert_eq!(inside, ("1024".to_string(), "0".to_string()));
        // the node's own namespace keeps its setting
        assert_eq!(read(), host);
    }

    #[test]
    fn a_bound_namespace_is_shared_and_private() {
        if !may_run() {
            return;
        }
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ns");
        create(&path).expect("create");
        assert!(exists(&path));
        // a listener inside the namespace
        let inside = path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let ns = File::open(&inside).expect("open ns");
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(listener.local_addr().expect("addr").port())
                .expect("send");
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"from inside").expect("write");
        });
        let port = rx.recv().expect("port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        // the host's loopback does not have it
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
        let mut s = connect(&path, addr, Duration::from_secs(2)).expect("connect inside");
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        assert_eq!(got, "from inside");
        server.join().expect("server");
        remove(&path).expect("remove");
        assert!(!path.exists());
    }

    #[test]
    fn a_listener_made_for_a_namespace_lives_in_it() {
        if !may_run() {
            return;
        }
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ns");
        create(&path).expect("create");
        let listener = listen(&path, "127.0.0.1:0".parse().expect("addr")).expect("listen");
        let addr = listener.local_addr().expect("addr");
        // not on the host's loopback
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
        // but inside the namespace, from another thread of this process
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut s = connect(&path, addr, Duration::from_secs(2)).expect("connect inside");
                s.write_all(b"hello").expect("write");
            }
        });
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = String::new();
        s.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello");
        client.join().expect("client");
        // the port is taken inside the namespace while the listener lives...
        let taken = listen(&path, addr).expect_err("port in use");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
        // ...and free again once it is dropped, at once
        drop(s);
        drop(listener);
        listen(&path, addr).expect("listen again");
        remove(&path).expect("remove");
    }

    #[test]
    fn a_private_namespace_lives_with_its_descriptor() {
        use std::os::fd::AsRawFd;
        if !may_run() {
            return;
        }
        let ns = create_private().expect("create");
        let path = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
        // not the caller's namespace
        let own = std::fs::metadata("/proc/self/ns/net").expect("own ns");
        let made = std::fs::metadata(&path).expect("made ns");
        {
            use std::os::unix::fs::MetadataExt;
            assert_ne!(own.ino(), made.ino());
        }
        let listener = listen(&path, "127.0.0.1:0".parse().expect("addr")).expect("listen");
        let addr = listener.local_addr().expect("addr");
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
        let client = std::thread::spawn({
            let path = path.clone();
            move || connect(&path, addr, Duration::from_secs(2)).map(drop)
        });
        listener.accept().expect("accept");
        client.join().expect("client").expect("connect inside");
        // only the loopback: nothing outside is routed
        let out = connect(
            &path,
            "192.0.2.1:80".parse().expect("addr"),
            Duration::from_secs(2),
        )
        .expect_err("no route out");
        assert_eq!(out.raw_os_error(), Some(libc::ENETUNREACH), "{out}");
    }
}
