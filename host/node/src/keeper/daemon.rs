//! The keeper process (`gearhost-node --keeper SOCKET`): it holds what must
//! outlive a node process, and does nothing else. It keeps copies of the
//! node's listening sockets (given back to the next node, so connections made
//! while no node runs wait in the backlog) and splices the long-lived
//! connections the node hands it (upgraded websockets, connections through
//! link proxies) until either side closes. It reads no byte it relays: it
//! only copies. It drops to `nobody`, is not dumpable, and exits when its
//! socket file is removed, on `Quit`, or when no node is connected and it
//! holds nothing.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearhost_sys::lock::lock;
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::task::AbortHandle;

use super::proto::{self, Msg, PairInfo};
use crate::frontend::stall::{Bounded, SendStall};

/// How often the keeper looks whether its socket file is still there.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The unprivileged user and group the keeper runs as.
const NOBODY: u32 = 65534;

/// Runs the keeper on the listening socket `listener` (bound at `path` by the
/// node that started it) until it has nothing left to keep.
pub fn run(listener: OwnedFd, path: PathBuf) -> std::process::ExitCode {
    // out of the node's session: a terminal's Ctrl-C is not for it
    let _ = nix::unistd::setsid();
    let mut blocked = nix::sys::signal::SigSet::empty();
    blocked.add(nix::sys::signal::Signal::SIGINT);
    blocked.add(nix::sys::signal::Signal::SIGHUP);
    let _ = blocked.thread_block();
    // the socket file as it is now: the keeper ends when it is removed or replaced
    let identity = match std::fs::metadata(&path) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => {
            eprintln!("gearhost keeper: {}: {e}", path.display());
            return std::process::ExitCode::from(4);
        }
    };
    if let Err(e) = drop_privileges() {
        eprintln!("gearhost keeper: cannot drop privileges: {e}");
        return std::process::ExitCode::from(4);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gearhost keeper: cannot start: {e}");
            return std::process::ExitCode::from(4);
        }
    };
    match rt.block_on(serve(listener, path, identity)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gearhost keeper: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// No supplementary groups, `nobody`'s uid and gid, and not dumpable (so no
/// other process of that uid can trace it or take its descriptors).
fn drop_privileges() -> nix::Result<()> {
    if nix::unistd::geteuid().is_root() {
        nix::unistd::setgroups(&[])?;
        let gid = nix::unistd::Gid::from_raw(NOBODY);
        let uid = nix::unistd::Uid::from_raw(NOBODY);
        nix::unistd::setresgid(gid, gid, gid)?;
        nix::unistd::setresuid(uid, uid, uid)?;
    }
    nix::sys::prctl::set_dumpable(false)
}

/// What the keeper holds.
#[derive(Default)]
struct State {
    stored: Mutex<BTreeMap<String, OwnedFd>>,
    pairs: Mutex<HashMap<u64, (String, AbortHandle)>>,
    /// The connected node, if any.
    node: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
}

impl State {
    /// Tells the connected node that pair `id` ended.
    fn closed(&self, id: u64) {
        if lock(&self.pairs).remove(&id).is_none() {
            return;
        }
        if let Some(node) = lock(&self.node).clone()
            && let Err(e) = proto::send(node.get_ref().as_fd(), &Msg::Closed { id }, &[], &[])
        {
            eprintln!("gearhost keeper: cannot tell the node that connection {id} ended: {e}");
        }
    }

    /// Whether the keeper has nothing left to keep.
    fn empty(&self) -> bool {
        lock(&self.node).is_none() && lock(&self.pairs).is_empty() && lock(&self.stored).is_empty()
    }
}

async fn serve(listener: OwnedFd, path: PathBuf, (dev, ino): (u64, u64)) -> io::Result<()> {
    set_nonblocking(&listener)?;
    let listener = watch(listener)?;
    let state = Arc::new(State::default());
    loop {
        tokio::select! {
            accepted = accept(&listener) => {
                let accepted = accepted?;
                // only root (the node) may talk to the keeper, whatever the file's mode
                let peer = nix::sys::socket::getsockopt(&accepted, nix::sys::socket::sockopt::PeerCredentials);
                if !peer.is_ok_and(|p| p.uid() == 0) {
                    eprintln!("gearhost keeper: refused a connection from a process not running as root");
                    continue;
                }
                let conn = Arc::new(watch(accepted)?);
                // a new node replaces the one before (which is gone or re-executed)
                *lock(&state.node) = Some(conn.clone());
                if let Err(e) = greet(&state, &conn) {
                    eprintln!("gearhost keeper: cannot greet the node: {e}");
                    forget_node(&state, &conn);
                    continue;
                }
                tokio::spawn(read_node(state.clone(), conn));
            }
            () = tokio::time::sleep(WATCH_EVERY) => {
                if !socket_file_is(&path, dev, ino) {
                    // the node's state directory is gone, or another keeper took over
                    return Ok(());
                }
                if state.empty() {
                    return Ok(());
                }
            }
        }
    }
}

/// Registers `fd` for readiness. The constructor is deprecated because a
/// caller could close the descriptor behind tokio's back; here the `AsyncFd`
/// owns it, so nothing else can.
#[allow(deprecated)]
fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// Whether `path` is still the keeper's socket file. A directory the
/// unprivileged keeper may not search does not count as the file gone.
fn socket_file_is(path: &Path, dev: u64, ino: u64) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

async fn accept(listener: &AsyncFd<OwnedFd>) -> io::Result<OwnedFd> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|l| {
            nix::sys::socket::accept4(
                l.get_ref(),
                nix::sys::socket::SockFlag::SOCK_CLOEXEC
                    | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            )
            .map_err(io::Error::from)
        }) {
            Ok(Ok(fd)) => return Ok(fd),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

/// The first messages to a node: who the keeper is, what it splices, and a
/// copy of every descriptor it stores.
fn greet(state: &State, conn: &AsyncFd<OwnedFd>) -> io::Result<()> {
    let pairs = lock(&state.pairs)
        .iter()
        .map(|(id, (tag, _))| PairInfo {
            id: *id,
            tag: tag.clone(),
        })
        .collect();
    let fd = conn.get_ref().as_fd();
    proto::send(
        fd,
        &Msg::Hello {
            version: proto::VERSION,
            pid: std::process::id(),
            pairs,
        },
        &[],
        &[],
    )?;
    for (name, stored) in lock(&state.stored).iter() {
        proto::send(
            fd,
            &Msg::Stored { name: name.clone() },
            &[],
            &[stored.as_raw_fd()],
        )?;
    }
    proto::send(fd, &Msg::Ready, &[], &[])
}

fn forget_node(state: &State, conn: &Arc<AsyncFd<OwnedFd>>) {
    let mut node = lock(&state.node);
    if node.as_ref().is_some_and(|n| Arc::ptr_eq(n, conn)) {
        *node = None;
    }
}

/// Serves one node's messages until it disconnects.
async fn read_node(state: Arc<State>, conn: Arc<AsyncFd<OwnedFd>>) {
    loop {
        let received = match conn.readable().await {
            Ok(mut ready) => match ready.try_io(|c| proto::recv(c.get_ref().as_fd())) {
                Ok(r) => r,
                Err(_would_block) => continue,
            },
            Err(e) => Err(e),
        };
        match received {
            Ok(Some(r)) => handle(&state, r),
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                eprintln!("gearhost keeper: {e}");
            }
            Err(e) => {
                eprintln!("gearhost keeper: the node's connection failed: {e}");
                break;
            }
        }
    }
    forget_node(&state, &conn);
}

fn handle(state: &Arc<State>, r: proto::Received) {
    let proto::Received {
        msg,
        payload,
        mut fds,
    } = r;
    match msg {
        Msg::Store { name } if fds.len() == 1 => {
            lock(&state.stored).insert(name, fds.remove(0));
        }
        Msg::Forget { name } => {
            lock(&state.stored).remove(&name);
        }
        Msg::Release => lock(&state.stored).clear(),
        Msg::Splice {
            pair,
            to_client,
            send_timeout_ms,
        } if fds.len() == 2 && to_client <= payload.len() => {
            let gear = fds.remove(1);
            let client = fds.remove(0);
            let mut to_client_bytes = payload;
            let to_gear = to_client_bytes.split_off(to_client);
            let id = pair.id;
            // the runtime has one thread: the task cannot end before it is listed
            let task = {
                let state = state.clone();
                tokio::spawn(async move {
                    // a peer that resets is an ordinary end, like one that closes
                    let limit = send_timeout_ms.map(Duration::from_millis);
                    let _ = splice(client, gear, &to_client_bytes, &to_gear, limit).await;
                    state.closed(id);
                })
            };
            lock(&state.pairs).insert(id, (pair.tag, task.abort_handle()));
        }
        Msg::Cut { tag } => {
            let prefix = format!("{tag}:");
            let cut: Vec<u64> = lock(&state.pairs)
                .iter()
                .filter(|(_, (t, _))| *t == tag || t.starts_with(&prefix))
                .map(|(id, (_, task))| {
                    task.abort();
                    *id
                })
                .collect();
            for id in cut {
                state.closed(id);
            }
        }
        // the socket file is the node's to remove (the keeper cannot write its directory)
        Msg::Quit => std::process::exit(0),
        other => eprintln!(
            "gearhost keeper: ignored a message it cannot use ({} descriptors): {other:?}",
            fds.len()
        ),
    }
}

/// Writes what each side is owed, then copies both ways until either ends,
/// or until a write to the client takes no byte for `send_timeout` (see
/// `frontend::stall`).
async fn splice(
    client: OwnedFd,
    gear: OwnedFd,
    to_client: &[u8],
    to_gear: &[u8],
    send_timeout: Option<Duration>,
) -> io::Result<()> {
    let mut client = stream(client)?;
    let mut gear = stream(gear)?;
    let mut stall = SendStall::new(send_timeout.unwrap_or(Duration::MAX));
    let mut client = Bounded::new(&mut client, &mut stall);
    client.write_all(to_client).await?;
    gear.write_all(to_gear).await?;
    tokio::io::copy_bidirectional(&mut client, &mut gear).await?;
    Ok(())
}

/// A connected socket as a tokio stream (TCP or unix: reads, writes and
/// shutdown are the same calls).
fn stream(fd: OwnedFd) -> io::Result<tokio::net::TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// Both ends of a loopback TCP connection: the far one as a tokio
    /// stream, the near one as a descriptor for `splice`.
    async fn connection() -> (TcpStream, OwnedFd) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let far = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (near, _) = listener.accept().await.expect("accept");
        let near = near.into_std().expect("a std stream");
        (far, OwnedFd::from(near))
    }

    /// A gear that writes without end until its connection breaks.
    async fn flood(mut gear: TcpStream) -> usize {
        let piece = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while gear.write_all(&piece).await.is_ok() {
            written += piece.len();
        }
        written
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_is_cut_off_only_under_a_deadline() {
        // under a deadline: the pair ends, and the gear's writes fail
        let (client, client_fd) = connection().await;
        let (gear, gear_fd) = connection().await;
        let gear = tokio::spawn(flood(gear));
        let limit = Some(Duration::from_millis(300));
        let spliced = tokio::time::timeout(
            Duration::from_secs(30),
            splice(client_fd, gear_fd, b"hello", b"", limit),
        )
        .await
        .expect("the pair is cut off");
        let e = spliced.expect_err("a client that reads nothing");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let written = tokio::time::timeout(Duration::from_secs(30), gear)
            .await
            .expect("the gear's connection breaks")
            .expect("the gear");
        assert!(written > 0);
        drop(client);
        // a link between gears has none: the pair waits for its peers
        let (_client, client_fd) = connection().await;
        let (gear, gear_fd) = connection().await;
        tokio::spawn(flood(gear));
        let held = tokio::time::timeout(
            Duration::from_secs(2),
            splice(client_fd, gear_fd, b"", b"", None),
        )
        .await;
        assert!(held.is_err(), "a pair without a deadline ended: {held:?}");
    }
}
