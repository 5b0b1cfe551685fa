//! Passing file descriptors over a unix socket (SCM_RIGHTS), so `gear exec`
//! can hand the node its own terminal or pipes and the command in the gear
//! talks to them directly.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 8;

/// Takes ownership of a descriptor received with `SCM_RIGHTS` (by a caller
/// that parsed the control message itself, such as nix's `recvmsg`).
pub fn adopt_received(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed `fd` in this process when it delivered the
    // message, and nothing else owns it yet: the caller hands it over once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Send `data` with `fds` attached, in one message.
pub fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_with_fds_max(sock, data, fds, MAX_FDS)
}

/// [`send_with_fds`] allowing up to `max_fds` descriptors.
pub fn send_with_fds_max(
    sock: &UnixStream,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    max_fds: usize,
) -> io::Result<()> {
    if fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a message needs at least one byte",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut control = vec![0u8; if raw.is_empty() { 0 } else { space }];
    let mut sent = 0;
    while sent < data.len() {
        let rest = &data[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: msghdr is a plain C struct; all-zero is its empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // the descriptors travel with the first part only
        if sent == 0 && !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len();
            // SAFETY: msg_control points at `control`, CMSG_SPACE(payload) bytes long, so the
            // first header and its data fit; the data is `payload` bytes of RawFds copied
            // from `raw`, which outlives the call.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    payload,
                );
            }
        }
        // SAFETY: `msg` points at `iov` (and `control`), live for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Receive into `buf`, collecting any descriptors that come with it (with
/// close-on-exec set). Returns the byte count (0 at end of stream) and the
/// descriptors.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_fds_max(sock, buf, MAX_FDS)
}

/// [`recv_with_fds`] with room for up to `max_fds` descriptors.
pub fn recv_with_fds_max(
    sock: &UnixStream,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space =
        unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    let n = loop {
        // SAFETY: `msg` points at `buf` and `control`, both live and writable for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` (msg_controllen bytes); the CMSG_* macros walk its
    // headers within that length. Each SCM_RIGHTS payload is an array of descriptors the
    // kernel just installed in this process, so taking ownership of each is sound.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors in one message",
        ));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_cross_a_socket() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (mut r, mut w) = std::io::pipe().expect("pipe");
        send_with_fds(&a, b"hello\n", &[w.as_fd()]).expect("send");
        let mut buf = [0u8; 64];
        let (n, mut fds) = recv_with_fds(&b, &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"hello\n");
        assert_eq!(fds.len(), 1);
        let mut passed = std::fs::File::from(fds.remove(0));
        passed.write_all(b"through").expect("write");
        drop(passed);
        w.flush().expect("flush");
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).expect("read");
        assert_eq!(got, "through");
    }
}
