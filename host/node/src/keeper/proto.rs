//! The keeper's protocol: messages on a unix `SOCK_SEQPACKET` socket, one
//! message per packet, so a message and the descriptors it carries arrive
//! together and whole. A packet is a JSON header, a newline, then the raw
//! bytes the header counts (the bytes a spliced pair still owes each side).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The protocol's version: a node talks only to a keeper of its own version.
pub const VERSION: u32 = 1;

/// The most bytes a spliced pair may carry over to the keeper (what one side
/// sent that the other has not received yet); a pair owing more stays in the
/// node.
pub const MOST_PENDING: usize = 64 * 1024;

/// The largest packet: a header and [`MOST_PENDING`] bytes.
pub const MOST_PACKET: usize = MOST_PENDING + 4096;

/// A connection the keeper splices, as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    /// Chosen by the node, unique among the keeper's pairs.
    pub id: u64,
    /// What the pair belongs to (`ws:<gear id>`, `link:<from id>:<to id>`).
    pub tag: String,
}

/// A message between the node and its keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "kebab-case")]
pub enum Msg {
    /// Keeper → node, first on every connection: who it is and what it splices.
    Hello {
        /// [`VERSION`] of the keeper.
        version: u32,
        /// The keeper's pid.
        pid: u32,
        /// The pairs it splices now.
        pairs: Vec<PairInfo>,
    },
    /// Keeper → node after `Hello`: a descriptor it stores, one per message
    /// (the keeper keeps its copy).
    Stored {
        /// The descriptor's name.
        name: String,
    },
    /// Keeper → node: every stored descriptor has been sent.
    Ready,
    /// Keeper → node: a spliced pair ended (either side closed, or it was cut).
    Closed {
        /// The pair.
        id: u64,
    },
    /// Node → keeper: keep this descriptor (a listening socket) under `name`,
    /// replacing one of that name.
    Store {
        /// The name.
        name: String,
    },
    /// Node → keeper: forget the descriptor stored under `name`.
    Forget {
        /// The name.
        name: String,
    },
    /// Node → keeper: splice the two sockets attached (client, then the
    /// gear's side), after writing what each is owed: the first `to_client`
    /// bytes of the payload to the client, the rest to the gear.
    Splice {
        /// The pair.
        #[serde(flatten)]
        pair: PairInfo,
        /// How many payload bytes go to the client first.
        to_client: usize,
        /// The client is cut off when a write to it takes no byte for this
        /// long (`http.send-timeout`; none for a link between gears). A
        /// keeper from before it ignores it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        send_timeout_ms: Option<u64>,
    },
    /// Node → keeper: close every stored descriptor (the node stops on
    /// purpose: clients are refused until one runs again).
    Release,
    /// Node → keeper: end every pair whose tag is `tag` or starts with `tag:`.
    Cut {
        /// The tag.
        tag: String,
    },
    /// Node → keeper: end every pair, close every descriptor and exit.
    Quit,
}

/// Sends `msg` with `payload` and `fds` as one packet, without waiting.
pub fn send(sock: BorrowedFd<'_>, msg: &Msg, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut packet = serde_json::to_vec(msg).map_err(io::Error::other)?;
    packet.push(b'\n');
    packet.extend_from_slice(payload);
    if packet.len() > MOST_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a keeper message is too large",
        ));
    }
    let iov = [io::IoSlice::new(&packet)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        // never blocks: a keeper that does not read makes the send fail (the
        // node then splices the pair itself), it does not stall the frontend
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, flags, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A packet received: its message, payload and descriptors.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub msg: Msg,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// The descriptors it carried.
    pub fds: Vec<OwnedFd>,
}

/// Receives one packet; `Ok(None)` when the other side closed. A packet
/// that does not parse is an error (the descriptors it carried are closed).
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<Received>> {
    let mut buf = vec![0u8; MOST_PACKET];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = loop {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        fds.extend(raw.into_iter().map(owned));
                    }
                }
                if m.flags.contains(MsgFlags::MSG_TRUNC) || m.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a keeper message was truncated",
                    ));
                }
                break (m.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let buf = &buf[..len];
    let split = buf.iter().position(|b| *b == b'\n').unwrap_or(len);
    let msg: Msg = serde_json::from_slice(&buf[..split]).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a keeper message does not parse: {e}"),
        )
    })?;
    let payload = buf.get(split + 1..).unwrap_or_default().to_vec();
    Ok(Some(Received { msg, payload, fds }))
}

/// Takes ownership of a descriptor the kernel passed with `SCM_RIGHTS`.
fn owned(fd: RawFd) -> OwnedFd {
    gearhost_sys::fdpass::adopt_received(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    #[test]
    fn a_message_its_payload_and_descriptors_arrive_together() {
        let (a, b) = pair();
        let file = std::fs::File::open("/dev/null").expect("open");
        let msg = Msg::Splice {
            pair: PairInfo {
                id: 7,
                tag: "ws:abc".into(),
            },
            to_client: 3,
            send_timeout_ms: Some(60_000),
        };
        send(
            a.as_fd(),
            &msg,
            b"abc\ndef",
            &[file.as_raw_fd(), file.as_raw_fd()],
        )
        .expect("send");
        send(a.as_fd(), &Msg::Ready, b"", &[]).expect("send");
        let got = recv(b.as_fd()).expect("recv").expect("a packet");
        assert_eq!(got.msg, msg);
        assert_eq!(got.payload, b"abc\ndef");
        assert_eq!(got.fds.len(), 2);
        let got = recv(b.as_fd()).expect("recv").expect("a packet");
        assert_eq!(got.msg, Msg::Ready);
        assert!(got.payload.is_empty() && got.fds.is_empty());
        drop(a);
        assert!(recv(b.as_fd()).expect("recv").is_none(), "closed");
    }

    #[test]
    fn a_splice_without_a_send_deadline_reads_as_one_from_before_it() {
        // what a node from before the deadline sends, and what it is sent
        let old = r#"{"m":"splice","id":3,"tag":"link:a:b","to_client":0}"#;
        let msg: Msg = serde_json::from_str(old).expect("a splice");
        let none = Msg::Splice {
            pair: PairInfo {
                id: 3,
                tag: "link:a:b".into(),
            },
            to_client: 0,
            send_timeout_ms: None,
        };
        assert_eq!(msg, none);
        let sent = serde_json::to_string(&none).expect("json");
        assert!(!sent.contains("send_timeout_ms"), "{sent}");
    }

    #[test]
    fn oversized_and_malformed_messages_are_refused() {
        let (a, b) = pair();
        let big = vec![0u8; MOST_PACKET];
        assert!(send(a.as_fd(), &Msg::Ready, &big, &[]).is_err());
        nix::sys::socket::send(a.as_raw_fd(), b"not json\n", MsgFlags::empty()).expect("send");
        let e = recv(b.as_fd()).expect_err("refused");
        assert!(e.to_string().contains("does not parse"), "{e}");
    }
}
