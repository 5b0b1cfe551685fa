//! The node's listening sockets (API, frontend, https, metrics), from
//! wherever they already exist: passed by the service manager (`LISTEN_FDS`)
//! or by the node image before a `gear node restart`, held by the keeper for
//! the node before (one that ended by SIGTERM, SIGKILL or a crash), else
//! bound now. Each is then kept for the next node: a copy in the keeper, and
//! one for a `gear node restart`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use gearhost_sys::listenfds::Inherited;

use crate::keeper::Keeper;
use crate::restart::Handover;

/// The node's listeners.
#[derive(Debug)]
pub struct Listeners {
    /// The API's unix socket.
    pub api: tokio::net::UnixListener,
    /// Whether the API socket's file belongs to someone else (a socket unit,
    /// the keeper): the node does not remove it when it stops.
    pub keep_socket_file: bool,
    /// The frontend (plain HTTP).
    pub frontend: std::net::TcpListener,
    /// The HTTPS frontend, when configured.
    pub https: Option<std::net::TcpListener>,
    /// The metrics endpoint, when configured.
    pub metrics: Option<std::net::TcpListener>,
    /// Copies to hand to the image a `gear node restart` executes.
    pub handover: Handover,
}

/// Finds or binds every listener the configuration asks for.
pub fn open(
    config: &gearhost_node_config::NodeConfig,
    inherited: &mut Inherited,
    keeper: Option<&Keeper>,
) -> anyhow::Result<Listeners> {
    let mut handover = Handover::default();
    let socket = config.socket.clone();
    // by name (`FileDescriptorName=`), else by kind and address, else the keeper's copy
    let api_given = inherited
        .take("api")
        .or_else(|| inherited.take_where(|fd| listens_at(fd, None)));
    let keep_socket_file = api_given.is_some();
    let api_given = api_given.or_else(|| keeper?.take("api", |fd| unix_listener_at(fd, &socket)));
    let api = match api_given {
        Some(fd) => {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)?
        }
        None => crate::server::bind(&socket, config.users_group.as_deref())?,
    };
    keep(&mut handover, keeper, "api", &api)?;

    let frontend_at: Option<SocketAddr> = config.frontend.parse().ok();
    let frontend = match given(inherited, keeper, "frontend", frontend_at) {
        Some(fd) => std::net::TcpListener::from(fd),
        None => std::net::TcpListener::bind(&config.frontend).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on the frontend address {}: {e}; set `frontend` in the node configuration",
                config.frontend
            )
        })?,
    };
    keep(&mut handover, keeper, "frontend", &frontend)?;

    let https = match &config.https {
        Some(h) => Some(
            match given(inherited, keeper, "https", h.listen.parse().ok()) {
                Some(fd) => std::net::TcpListener::from(fd),
                None => std::net::TcpListener::bind(&h.listen).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on the https address {}: {e}; set `https.listen` in the node configuration",
                        h.listen
                    )
                })?,
            },
        ),
        None => None,
    };
    if let Some(l) = &https {
        keep(&mut handover, keeper, "https", l)?;
    }

    let metrics = match &config.metrics {
        Some(addr) => Some(match given(inherited, keeper, "metrics", addr.parse().ok()) {
            Some(fd) => std::net::TcpListener::from(fd),
            None => std::net::TcpListener::bind(addr).map_err(|e| {
                anyhow::anyhow!("cannot listen on the metrics address {addr}: {e}; set `metrics` in the node configuration, or remove it")
            })?,
        }),
        None => None,
    };
    if let Some(l) = &metrics {
        keep(&mut handover, keeper, "metrics", l)?;
    }
    Ok(Listeners {
        api,
        keep_socket_file,
        frontend,
        https,
        metrics,
        handover,
    })
}

/// The listener `name` bound to `at`: passed to this process, else held by the keeper.
fn given(
    inherited: &mut Inherited,
    keeper: Option<&Keeper>,
    name: &str,
    at: Option<SocketAddr>,
) -> Option<OwnedFd> {
    inherited
        .take(name)
        .or_else(|| inherited.take_where(|fd| at.is_some_and(|a| listens_at(fd, Some(a)))))
        .or_else(|| keeper?.take(name, |fd| at.is_some_and(|a| serves(fd, a))))
}

/// Whether the kept listener `fd` serves the configured address `at`: bound
/// to it, or to a port of its host when the configuration asks for any port
/// (`:0`), so the node keeps the port it had.
fn serves(fd: &OwnedFd, at: SocketAddr) -> bool {
    if at.port() != 0 {
        return listens_at(fd, Some(at));
    }
    fd.try_clone()
        .ok()
        .map(std::net::TcpListener::from)
        .and_then(|l| l.local_addr().ok())
        .is_some_and(|bound| bound.ip() == at.ip())
}

/// Keeps a copy of `socket` for a `gear node restart` and one in the keeper.
fn keep(
    handover: &mut Handover,
    keeper: Option<&Keeper>,
    name: &'static str,
    socket: &impl AsFd,
) -> std::io::Result<()> {
    handover.keep(name, socket)?;
    if let Some(k) = keeper {
        k.store(name, socket.as_fd());
    }
    Ok(())
}

/// Whether `fd` is a listening unix socket (`at` none) or a TCP socket bound to `at`.
pub fn listens_at(fd: &OwnedFd, at: Option<SocketAddr>) -> bool {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname};
    let Ok(addr) = getsockname::<SockaddrStorage>(fd.as_raw_fd()) else {
        return false;
    };
    match at {
        None => addr.family() == Some(nix::sys::socket::AddressFamily::Unix),
        Some(want) => {
            addr.family() != Some(nix::sys::socket::AddressFamily::Unix)
                && fd
                    .try_clone()
                    .ok()
                    .map(std::net::TcpListener::from)
                    .and_then(|l| l.local_addr().ok())
                    == Some(want)
        }
    }
}

/// Whether `fd` is a unix socket bound at `path`, and that file is still there.
fn unix_listener_at(fd: &OwnedFd, path: &Path) -> bool {
    use nix::sys::socket::{SockaddrStorage, getsockname};
    let Ok(addr) = getsockname::<SockaddrStorage>(fd.as_raw_fd()) else {
        return false;
    };
    addr.as_unix_addr().and_then(|u| u.path()) == Some(path) && path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_listener_serves_its_address_or_any_port_of_its_host() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let bound = l.local_addr().expect("addr");
        let fd = OwnedFd::from(l);
        assert!(serves(&fd, bound));
        assert!(serves(&fd, "127.0.0.1:0".parse().expect("any port")));
        assert!(!serves(&fd, "127.0.0.2:0".parse().expect("other host")));
        let other = SocketAddr::new(bound.ip(), bound.port().wrapping_add(1).max(1));
        assert!(!serves(&fd, other));
        assert!(!listens_at(&fd, None), "not a unix socket");
    }

    #[test]
    fn a_kept_api_socket_must_be_at_the_configured_path_and_still_there() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("node.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let fd = OwnedFd::from(l);
        assert!(listens_at(&fd, None));
        assert!(unix_listener_at(&fd, &path));
        assert!(!unix_listener_at(&fd, &dir.path().join("other.sock")));
        std::fs::remove_file(&path).expect("rm");
        assert!(!unix_listener_at(&fd, &path), "its file is gone");
    }
}
