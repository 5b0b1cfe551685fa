//! The kernel's own answer to "would a packet to this address stay on this
//! host?": a route lookup over rtnetlink (what `ip route get ADDR` does).
//!
//! A list of interface addresses would miss addresses a host accepts
//! without assigning them to an interface (`ip route add local
//! 10.9.0.0/16 dev lo`) and change between the listing and the connection;
//! the lookup asks the routing table itself, right before connecting. The
//! proxy also checks the connected socket afterwards (`egress::is_this_host`).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

// from <linux/netlink.h> and <linux/rtnetlink.h>
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;
const RTN_BROADCAST: u8 = 3;
const RTN_ANYCAST: u8 = 4;
const RTN_MULTICAST: u8 = 5;
const NLMSG_HEADER: usize = 16;
const RTMSG: usize = 12;

/// Where the kernel would send a packet for an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Out through an interface, to another machine.
    Away,
    /// To this host: one of its addresses, a local route, a broadcast or an
    /// anycast address of its own, or multicast.
    ThisHost,
    /// Nowhere: no route, or an unreachable, prohibited or blackhole route.
    Nowhere,
}

/// Look up the route of each address, in order.
pub(crate) fn lookup(addrs: &[IpAddr]) -> io::Result<Vec<Route>> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let kernel = NetlinkAddr::new(0, 0);
    let mut answer = vec![0u8; 4096];
    let mut routes = Vec::with_capacity(addrs.len());
    for (seq, addr) in (1u32..).zip(addrs) {
        let request = request(seq, *addr);
        sendto(sock.as_raw_fd(), &request, &kernel, MsgFlags::empty())?;
        let route = loop {
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, 2000u16)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not answer a route lookup",
                ));
            }
            let n = recv(sock.as_raw_fd(), &mut answer, MsgFlags::empty())?;
            if let Some(route) = parse(&answer[..n], seq)? {
                break route;
            }
        };
        routes.push(route);
    }
    Ok(routes)
}

/// An RTM_GETROUTE request for `addr`.
fn request(seq: u32, addr: IpAddr) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (AddressFamily::Inet as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (AddressFamily::Inet6 as u8, a.octets().to_vec()),
    };
    let attr_len = 4 + bytes.len();
    let len = NLMSG_HEADER + RTMSG + attr_len;
    let mut m = Vec::with_capacity(len);
    // struct nlmsghdr
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    m.extend_from_slice(&[family, (bytes.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    // struct rtattr RTA_DST and the address (4 or 16 bytes: already aligned)
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&RTA_DST.to_ne_bytes());
    m.extend_from_slice(&bytes);
    m
}

/// The route in the kernel's answer to request `seq` (`None`: the datagram
/// answers something else).
fn parse(mut data: &[u8], seq: u32) -> io::Result<Option<Route>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "a malformed rtnetlink answer");
    let u32_at = |d: &[u8], at: usize| -> io::Result<u32> {
        d.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(bad)
    };
    while data.len() >= NLMSG_HEADER {
        let len = u32_at(data, 0)? as usize;
        if len < NLMSG_HEADER || len > data.len() {
            return Err(bad());
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let this_seq = u32_at(data, 8)?;
        if this_seq == seq {
            if kind == NLMSG_ERROR {
                let errno = i32::from_ne_bytes(u32_at(data, NLMSG_HEADER)?.to_ne_bytes());
                let errno = errno.wrapping_neg();
                if errno == 0 {
                    return Err(bad());
                }
                return match Errno::from_raw(errno) {
                    Errno::ENETUNREACH | Errno::EHOSTUNREACH | Errno::EACCES => {
                        Ok(Some(Route::Nowhere))
                    }
                    _ => Err(io::Error::from_raw_os_error(errno)),
                };
            }
            if kind == RTM_NEWROUTE {
                let rtm_type = *data.get(NLMSG_HEADER + 7).ok_or_else(bad)?;
                return Ok(Some(match rtm_type {
                    RTN_UNICAST => Route::Away,
                    RTN_LOCAL | RTN_BROADCAST | RTN_ANYCAST | RTN_MULTICAST => Route::ThisHost,
                    _ => Route::Nowhere,
                }));
            }
        }
        // the next message, 4-byte aligned
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or(&[]);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_says_which_addresses_are_this_hosts() {
        let routes = lookup(&[
            "127.0.0.1".parse().expect("addr"),
            "127.1.2.3".parse().expect("addr"),
            "::1".parse().expect("addr"),
        ])
        .expect("route lookup");
        assert_eq!(routes, [Route::ThisHost, Route::ThisHost, Route::ThisHost]);
        // the machine's own addresses, whatever they are
        let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
        let mut own = Vec::new();
        let mut last: Option<&str> = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("|-- ") {
                last = Some(addr);
            } else if line == "/32 host LOCAL"
                && let Some(addr) = last
                && let Ok(ip) = addr.parse::<IpAddr>()
            {
                own.push(ip);
            }
        }
        assert!(!own.is_empty(), "no local addresses in /proc/net/fib_trie");
        let routes = lookup(&own).expect("route lookup");
        assert!(
            routes.iter().all(|r| *r == Route::ThisHost),
            "{own:?}: {routes:?}"
        );
    }

    #[test]
    fn answers_are_read_with_care() {
        // truncated, or a length that runs past the end
        assert!(parse(&[1, 2, 3], 1).expect("short").is_none());
        let mut m = request(7, "192.0.2.1".parse().expect("addr"));
        m[0] = 200;
        assert!(parse(&m, 7).is_err());
        // another sequence number is not the answer
        let m = request(7, "192.0.2.1".parse().expect("addr"));
        assert!(parse(&m, 8).expect("other").is_none());
    }
}
