//! Listening sockets a node is given instead of binding its own: by a service manager's
//! socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`: descriptors 3, 4, ...
//! named in order), or by the node it replaces on `gear node restart`
//! (`GEARHOST_LISTEN_FDS=name:fd,...` with `LISTEN_PID`: the numbers as they were, since the
//! node re-executes itself with its threads still running and cannot move descriptors to 3
//! and up safely). Either way the sockets keep their listen backlogs: a connection that
//! arrives while no node process accepts waits there instead of being refused.
//!
//! [`Inherited::from_env`] must run before the process starts threads: it removes the
//! variables from the environment, so that nothing the node starts sees them.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor of socket activation.
const SD_LISTEN_FDS_START: RawFd = 3;
/// The variable of a node's own hand-over (`name:fd` pairs, comma-separated).
pub const HANDOVER_VAR: &str = "GEARHOST_LISTEN_FDS";

/// Where the inherited sockets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// None were given.
    None,
    /// A service manager's socket activation.
    Activation,
    /// The node this process replaced (`gear node restart`).
    Handover,
}

/// The listening sockets this process was given, by name.
#[derive(Debug)]
pub struct Inherited {
    fds: BTreeMap<String, OwnedFd>,
    source: Source,
}

impl Inherited {
    /// No inherited sockets.
    pub fn none() -> Self {
        Inherited {
            fds: BTreeMap::new(),
            source: Source::None,
        }
    }

    /// Takes the sockets the environment names (and removes the variables). Sockets meant
    /// for another process (`LISTEN_PID` is not ours) are left alone. An error says which
    /// variable is wrong; a descriptor that is not open or not a socket is an error too.
    pub fn from_env() -> Result<Self, String> {
        let pid = std::env::var("LISTEN_PID").ok();
        let handover = std::env::var(HANDOVER_VAR).ok();
        let count = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        // SAFETY: called before the process starts threads (see the module's description),
        // so nothing reads the environment concurrently.
        unsafe {
            for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", HANDOVER_VAR] {
                std::env::remove_var(var);
            }
        }
        let ours = pid
            .as_deref()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| p == std::process::id());
        if !ours {
            return Ok(Inherited::none());
        }
        let mut numbered: Vec<(String, RawFd)> = Vec::new();
        let source = if let Some(list) = handover {
            for item in list.split(',').filter(|s| !s.is_empty()) {
                let (name, fd) = item
                    .split_once(':')
                    .and_then(|(n, f)| Some((n, f.parse::<RawFd>().ok()?)))
                    .ok_or_else(|| format!("{HANDOVER_VAR}: {item:?} is not name:descriptor"))?;
                numbered.push((name.to_string(), fd));
            }
            Source::Handover
        } else if let Some(count) = count {
            let n: RawFd = count
                .trim()
                .parse()
                .map_err(|_| format!("LISTEN_FDS: {count:?} is not a number"))?;
            let names: Vec<String> = names
                .unwrap_or_default()
                .split(':')
                .map(str::to_string)
                .collect();
            for i in 0..n {
                let name = names
                    .get(i as usize)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| format!("unknown{i}"));
                numbered.push((name, SD_LISTEN_FDS_START + i));
            }
            Source::Activation
        } else {
            return Ok(Inherited::none());
        };
        let mut fds = BTreeMap::new();
        for (name, fd) in numbered {
            if fd < 0 {
                return Err(format!("socket {name:?}: descriptor {fd} is not valid"));
            }
            // SAFETY: `fd` is only borrowed to check it is an open socket before it is owned.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let stat = nix::sys::stat::fstat(borrowed)
                .map_err(|e| format!("socket {name:?}: descriptor {fd} is not open: {e}"))?;
            if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(format!("socket {name:?}: descriptor {fd} is not a socket"));
            }
            let name = if fds.contains_key(&name) {
                // a socket unit gives all its sockets one name: keep them apart
                format!("{name}#{fd}")
            } else {
                name
            };
            // SAFETY: the descriptor was handed to this process for it to own (the protocol
            // above), it is open (checked), and it is taken once (the numbers a service
            // manager or the earlier node passes are distinct).
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(owned.as_raw_fd(), true).map_err(|e| format!("socket {name:?}: {e}"))?;
            fds.insert(name, owned);
        }
        Ok(Inherited { fds, source })
    }

    /// Where the sockets came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// Takes the socket named `name`, if one was given.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds.remove(name)
    }

    /// Takes the first socket not taken yet for which `matches` holds (a service manager's
    /// socket unit names all its sockets alike: they are told apart by address then).
    pub fn take_where(&mut self, matches: impl Fn(&OwnedFd) -> bool) -> Option<OwnedFd> {
        let name = self
            .fds
            .iter()
            .find(|(_, fd)| matches(fd))
            .map(|(n, _)| n.clone())?;
        self.fds.remove(&name)
    }

    /// The names of the sockets not taken yet.
    pub fn left(&self) -> Vec<String> {
        self.fds.keys().cloned().collect()
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<(), String> {
    use nix::fcntl::{F_GETFD, F_SETFD, FdFlag, fcntl};
    // SAFETY: the caller keeps `fd` open for the call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed, F_GETFD).map_err(|e| format!("cannot read its flags: {e}"))?;
    let mut flags = FdFlag::from_bits_truncate(flags);
    flags.set(FdFlag::FD_CLOEXEC, on);
    fcntl(borrowed, F_SETFD(flags)).map_err(|e| format!("cannot set its flags: {e}"))?;
    Ok(())
}

/// The environment that hands `sockets` (name and descriptor) to the image this process
/// executes next (the pid stays the same): clears `FD_CLOEXEC` on each, so that they
/// survive `execve`, and returns the variables to set.
pub fn handover_env(sockets: &[(&str, BorrowedFd<'_>)]) -> Result<Vec<(String, String)>, String> {
    let mut list = Vec::new();
    for (name, fd) in sockets {
        if name.contains([':', ',']) || name.is_empty() {
            return Err(format!("socket name {name:?} cannot be passed on"));
        }
        set_cloexec(fd.as_raw_fd(), false).map_err(|e| format!("socket {name:?}: {e}"))?;
        list.push(format!("{name}:{}", fd.as_raw_fd()));
    }
    Ok(vec![
        ("LISTEN_PID".into(), std::process::id().to_string()),
        (HANDOVER_VAR.into(), list.join(",")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloexec_is_cleared_and_set() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let env = handover_env(&[("frontend", std::os::fd::AsFd::as_fd(&l))]).expect("hand over");
        let fd = l.as_raw_fd();
        assert_eq!(env[1], (HANDOVER_VAR.to_string(), format!("frontend:{fd}")));
        let flags =
            nix::fcntl::fcntl(std::os::fd::AsFd::as_fd(&l), nix::fcntl::F_GETFD).expect("flags");
        assert_eq!(flags & libc::FD_CLOEXEC, 0);
        set_cloexec(fd, true).expect("set");
        let flags =
            nix::fcntl::fcntl(std::os::fd::AsFd::as_fd(&l), nix::fcntl::F_GETFD).expect("flags");
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        assert!(handover_env(&[("a:b", std::os::fd::AsFd::as_fd(&l))]).is_err());
    }
}
