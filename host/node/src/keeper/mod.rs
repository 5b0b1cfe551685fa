//! The node's keeper: a small process of its own (see [`daemon`]) that holds
//! what must outlive a node process, whatever ends it (SIGTERM, SIGKILL, a
//! crash, `gear node restart`):
//! - **listening sockets**: the frontend's, the https and metrics listeners,
//!   the API socket and every link proxy's listener are stored in it, so while
//!   no node runs connections wait in the backlog instead of being refused,
//!   and the next node takes them back;
//! - **long-lived connections**: an upgraded websocket (plain HTTP) and a
//!   connection through a link proxy are handed to it once set up, with the
//!   bytes each side is owed; it splices them until either side closes, so
//!   they stay open through node restarts.
//!
//! The node finds its keeper at `<state-dir>/keeper.sock`, or starts one
//! there, moved into the cgroup `<subtree>/.keeper` so a service manager
//! stopping the node's unit does not kill it. Without a keeper (it cannot be
//! started) the node works as before: it listens and splices itself.

pub mod daemon;
pub mod proto;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gearhost_sys::lock::lock;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};

use proto::{Msg, PairInfo};

/// The argument that makes `gearhost-node` the keeper.
pub const KEEPER_ARG: &str = "--keeper";

/// The tag of a websocket (an upgraded connection) to gear `id`.
pub fn websocket_tag(id: &str) -> String {
    format!("ws:{id}")
}

/// The tag of the connections through the link from gear `from` to gear `to`.
pub fn link_tag(from: &str, to: &str) -> String {
    format!("link:{from}:{to}")
}

/// The name the listener of the link from `from` to `to` on `port` is stored under.
pub fn link_listener(from: &str, to: &str, port: u16) -> String {
    format!("link:{from}:{to}:{port}")
}

/// How long the node waits for its keeper's greeting.
const GREETING_TIME: Duration = Duration::from_secs(5);

/// What runs when a spliced pair ends (counters, leases).
pub type OnClose = Box<dyn FnOnce() + Send>;

/// The node's connection to its keeper.
pub struct Keeper {
    sock: OwnedFd,
    pid: u32,
    next: AtomicU64,
    alive: AtomicBool,
    on_close: Mutex<HashMap<u64, OnClose>>,
    /// Pairs of an earlier node that ended before this node counted them.
    ended_early: Mutex<std::collections::HashSet<u64>>,
    /// Descriptors the keeper held when the node connected, until taken.
    stored: Mutex<BTreeMap<String, OwnedFd>>,
    /// Pairs the keeper spliced when the node connected.
    live: Vec<PairInfo>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").field("pid", &self.pid).finish()
    }
}

static KEEPER: OnceLock<Arc<Keeper>> = OnceLock::new();

/// The node's keeper, if it has one.
pub fn get() -> Option<&'static Arc<Keeper>> {
    KEEPER.get().filter(|k| k.alive.load(Ordering::Relaxed))
}

/// Where the keeper of the node with state directory `state_dir` listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("keeper.sock")
}

/// Connects to the node's keeper, starting one if none runs, and makes it the
/// one [`get`] returns.
pub fn start(state_dir: &Path, subtree: &str) -> io::Result<Arc<Keeper>> {
    let path = socket_path(state_dir);
    let keeper = match connect(&path) {
        Ok(sock) => greeted(sock)?,
        Err(_) => {
            spawn(&path, subtree)?;
            greeted(connect(&path)?)?
        }
    };
    let keeper = Arc::new(keeper);
    {
        let keeper = keeper.clone();
        std::thread::Builder::new()
            .name("keeper-events".into())
            .spawn(move || keeper.events())?;
    }
    let _ = KEEPER.set(keeper.clone());
    Ok(keeper)
}

fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

/// Binds the keeper's socket at `path` (a file left by a keeper that is gone
/// is replaced) and starts the keeper on it, in its own cgroup.
fn spawn(path: &Path, subtree: &str) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::bind(listener.as_raw_fd(), &UnixAddr::new(path)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(16)?)?;
    let binary = crate::restart::binary().map_err(|e| io::Error::other(e.to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path.with_extension("log"))?;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(binary)
        .arg(KEEPER_ARG)
        .arg(path)
        .stdin(std::process::Stdio::from(listener))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .process_group(0)
        .spawn()?;
    if let Err(e) = place(subtree, child.id()) {
        tracing::warn!(error = %e, "the keeper stays in the node's cgroup; a service manager stopping the node will end it");
    }
    // reaped when it ends, by this node or (after a re-exec) left to the system
    std::thread::Builder::new()
        .name("keeper-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        })?;
    Ok(())
}

/// Moves process `pid` into the cgroup `<subtree>/.keeper` on every
/// hierarchy (no limits: it only copies bytes).
fn place(subtree: &str, pid: u32) -> io::Result<()> {
    use gearhost_sandbox::cgroup;
    let mounts = cgroup::detect().map_err(|e| io::Error::other(e.to_string()))?;
    let placement = gearhost_sandbox::CgroupPlacement {
        subtree: subtree.to_string(),
        leaf: ".keeper".to_string(),
    };
    let existing = cgroup::GearCgroup::existing(&mounts, &placement);
    let group = if existing.paths().iter().all(|p| p.is_dir()) && !existing.paths().is_empty() {
        existing
    } else {
        cgroup::GearCgroup::create(&mounts, &placement, &gearhost_sandbox::Limits::default())
            .map_err(|e| io::Error::other(e.to_string()))?
            .0
    };
    for procs in group.procs_files() {
        std::fs::write(&procs, pid.to_string())?;
    }
    Ok(())
}

/// Reads the keeper's greeting: its version, its pairs and its descriptors.
fn greeted(sock: OwnedFd) -> io::Result<Keeper> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let timeout = TimeVal::new(GREETING_TIME.as_secs() as i64, 0);
    setsockopt(&sock, ReceiveTimeout, &timeout)?;
    let unexpected =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("the keeper {what}"));
    let first = proto::recv(sock.as_fd())?.ok_or_else(|| unexpected("closed at once"))?;
    let Msg::Hello {
        version,
        pid,
        pairs,
    } = first.msg
    else {
        return Err(unexpected("did not greet"));
    };
    if version != proto::VERSION {
        return Err(unexpected(&format!(
            "(pid {pid}) speaks version {version}, this node {}; stop it (`kill {pid}`) to let the node start a new one",
            proto::VERSION
        )));
    }
    let mut stored = BTreeMap::new();
    loop {
        let r = proto::recv(sock.as_fd())?.ok_or_else(|| unexpected("closed while greeting"))?;
        match r.msg {
            Msg::Ready => break,
            Msg::Stored { name } => {
                if let Some(fd) = r.fds.into_iter().next() {
                    stored.insert(name, fd);
                }
            }
            _ => return Err(unexpected("sent something else while greeting")),
        }
    }
    setsockopt(&sock, ReceiveTimeout, &TimeVal::new(0, 0))?;
    let next = pairs.iter().map(|p| p.id + 1).max().unwrap_or(1);
    Ok(Keeper {
        sock,
        pid,
        next: AtomicU64::new(next),
        alive: AtomicBool::new(true),
        on_close: Mutex::new(HashMap::new()),
        ended_early: Mutex::new(std::collections::HashSet::new()),
        stored: Mutex::new(stored),
        live: pairs,
    })
}

impl Keeper {
    /// The keeper's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pairs the keeper spliced when this node connected (an earlier
    /// node handed them over).
    pub fn live_pairs(&self) -> &[PairInfo] {
        &self.live
    }

    /// Runs `f` when pair `id` (one of [`Keeper::live_pairs`]) ends.
    pub fn when_closed(&self, id: u64, f: OnClose) {
        let mut on_close = lock(&self.on_close);
        if lock(&self.ended_early).remove(&id) {
            drop(on_close);
            f();
        } else {
            on_close.insert(id, f);
        }
    }

    /// Takes the descriptor the keeper stored as `name` if `fits` accepts it
    /// (a listener bound to the address the configuration names).
    pub fn take(&self, name: &str, fits: impl FnOnce(&OwnedFd) -> bool) -> Option<OwnedFd> {
        let mut stored = lock(&self.stored);
        if stored.get(name).is_some_and(fits) {
            stored.remove(name)
        } else {
            None
        }
    }

    /// The stored descriptors nobody took (a configuration changed): the
    /// keeper forgets them.
    pub fn forget_untaken(&self) -> Vec<String> {
        let names: Vec<String> = std::mem::take(&mut *lock(&self.stored))
            .into_keys()
            .collect();
        for name in &names {
            self.forget(name);
        }
        names
    }

    fn send(&self, msg: &Msg, payload: &[u8], fds: &[std::os::fd::RawFd]) -> io::Result<()> {
        if !self.alive.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the keeper is gone",
            ));
        }
        proto::send(self.sock.as_fd(), msg, payload, fds)
    }

    /// Has the keeper keep a copy of `fd` (a listening socket) as `name`.
    pub fn store(&self, name: &str, fd: BorrowedFd<'_>) {
        // the copy the keeper sent at the greeting is replaced, not left to forget
        lock(&self.stored).remove(name);
        let msg = Msg::Store {
            name: name.to_string(),
        };
        if let Err(e) = self.send(&msg, &[], &[fd.as_raw_fd()]) {
            tracing::warn!(name, error = %e, "the keeper cannot hold a listening socket");
        }
    }

    /// Has the keeper close its copy of `name`.
    pub fn forget(&self, name: &str) {
        let _ = self.send(
            &Msg::Forget {
                name: name.to_string(),
            },
            &[],
            &[],
        );
    }

    /// Hands a connected pair to the keeper, which writes `to_client` to
    /// `client` and `to_gear` to `gear` and then splices them, cutting the
    /// pair off when a write to `client` takes no byte for `send_timeout`;
    /// `on_close` runs when it ends. The caller closes its own copies.
    /// Refused (and `on_close` given back) when the keeper cannot take it:
    /// the caller splices the pair itself.
    #[allow(clippy::too_many_arguments)]
    pub fn splice(
        &self,
        tag: String,
        client: BorrowedFd<'_>,
        gear: BorrowedFd<'_>,
        to_client: &[u8],
        to_gear: &[u8],
        send_timeout: Option<std::time::Duration>,
        on_close: OnClose,
    ) -> Result<(), OnClose> {
        if to_client.len() + to_gear.len() > proto::MOST_PENDING {
            return Err(on_close);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut payload = Vec::with_capacity(to_client.len() + to_gear.len());
        payload.extend_from_slice(to_client);
        payload.extend_from_slice(to_gear);
        // listed first: the keeper may report the end at once
        lock(&self.on_close).insert(id, on_close);
        let msg = Msg::Splice {
            pair: PairInfo { id, tag },
            to_client: to_client.len(),
            send_timeout_ms: send_timeout
                .map(|t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
        };
        match self.send(&msg, &payload, &[client.as_raw_fd(), gear.as_raw_fd()]) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "the keeper did not take a connection");
                lock(&self.on_close).remove(&id).map_or_else(|| Ok(()), Err)
            }
        }
    }

    /// Has the keeper close every listening socket it holds.
    pub fn release(&self) {
        let _ = self.send(&Msg::Release, &[], &[]);
    }

    /// Ends every pair tagged `tag` (or `tag:...`).
    pub fn cut(&self, tag: &str) {
        let _ = self.send(
            &Msg::Cut {
                tag: tag.to_string(),
            },
            &[],
            &[],
        );
    }

    /// Ends the keeper: every pair it splices, every socket it holds.
    pub fn quit(&self) {
        let _ = self.send(&Msg::Quit, &[], &[]);
    }

    /// Reads the keeper's reports until it goes away; then every pair it
    /// spliced is over.
    fn events(self: Arc<Self>) {
        loop {
            match proto::recv(self.sock.as_fd()) {
                Ok(Some(r)) => {
                    if let Msg::Closed { id } = r.msg {
                        let f = {
                            let mut on_close = lock(&self.on_close);
                            let f = on_close.remove(&id);
                            if f.is_none() && self.live.iter().any(|p| p.id == id) {
                                lock(&self.ended_early).insert(id);
                            }
                            f
                        };
                        if let Some(f) = f {
                            f();
                        }
                    }
                }
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(error = %e, "the keeper sent a message the node cannot read");
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the connection to the keeper failed");
                    break;
                }
            }
        }
        self.alive.store(false, Ordering::Relaxed);
        tracing::warn!(
            pid = self.pid,
            "the keeper is gone: its connections ended; the next node start starts a new one"
        );
        let ended: Vec<OnClose> = lock(&self.on_close).drain().map(|(_, f)| f).collect();
        for f in ended {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keeper of another protocol version at `path`: it greets, then waits.
    fn foreign_keeper(path: &Path, version: u32) -> std::thread::JoinHandle<()> {
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        nix::sys::socket::bind(listener.as_raw_fd(), &UnixAddr::new(path).expect("addr"))
            .expect("bind");
        nix::sys::socket::listen(
            &listener,
            nix::sys::socket::Backlog::new(1).expect("backlog"),
        )
        .expect("listen");
        std::thread::spawn(move || {
            let conn = nix::sys::socket::accept(&listener).expect("accept");
            let hello = Msg::Hello {
                version,
                pid: 4242,
                pairs: vec![],
            };
            proto::send(conn.as_fd(), &hello, &[], &[]).expect("hello");
            // the node hangs up after reading the greeting
            let _ = proto::recv(conn.as_fd());
        })
    }

    #[test]
    fn a_keeper_of_another_version_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("dir");
        let path = socket_path(dir.path());
        let keeper = foreign_keeper(&path, proto::VERSION + 1);
        let e = start(dir.path(), "unused").expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("speaks version"), "{text}");
        assert!(text.contains("kill 4242"), "{text}");
        keeper.join().expect("keeper");
        assert!(get().is_none(), "no keeper is used");
    }
}
