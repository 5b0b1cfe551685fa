//! The terminal of `gear exec -t` and `gear sandbox run -t`: the caller's terminal in raw mode
//! ([`RawTerminal`]), the relay between it and a gear's pseudo-terminal ([`relay_terminal`]),
//! and the window size kept in step ([`window_changes`], [`terminal_size`],
//! [`set_terminal_size`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The window size (rows, columns) of the terminal `fd`, if it is one.
pub fn terminal_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    // SAFETY: an all-zero winsize is a valid value for the kernel to overwrite.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which lives for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (ret == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets the window size of the terminal `fd` (its foreground processes get SIGWINCH).
pub fn set_terminal_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which lives for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    check(ret)
}

/// A terminal put in raw mode (no line editing, no signals from keys, no echo) for as long as
/// this lives; its settings are restored when it is dropped.
#[derive(Debug)]
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts the terminal `fd` in raw mode. The descriptor must stay open while this lives.
    pub fn enter(fd: BorrowedFd<'_>) -> io::Result<RawTerminal> {
        // SAFETY: termios is a plain C struct; all-zero is a valid value for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` lives for the call; the descriptor is borrowed for it.
        if unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits only the struct given; tcsetattr reads it during the call.
        let set = unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &raw)
        };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawTerminal {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same descriptor, which the
        // caller keeps open while this value lives; `saved` lives for the call.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// A pipe that gets a byte each time this process is sent SIGWINCH (the window of its
/// terminal changed size), for [`relay_terminal`]: hand it to whoever relays for this
/// terminal. Call it before this process starts other threads: SIGWINCH is blocked in the
/// calling thread, and so in the threads it starts later, and one thread of its own waits for
/// it.
pub fn window_changes() -> io::Result<std::fs::File> {
    use nix::sys::signal::{SigSet, Signal};
    use std::io::Write;
    let mut winch = SigSet::empty();
    winch.add(Signal::SIGWINCH);
    winch.thread_block().map_err(io::Error::from)?;
    let (read, mut write) = io::pipe()?;
    std::thread::Builder::new()
        .name("window-changes".into())
        .spawn(move || {
            while winch.wait().is_ok() {
                if write.write_all(b"w").is_err() {
                    return;
                }
            }
        })?;
    Ok(std::fs::File::from(OwnedFd::from(read)))
}

/// Copies between a caller's terminal (`caller_in`, `caller_out`, in raw mode) and the
/// controlling side of a gear's terminal until the gear's side is closed (every process of the
/// gear has let go of it), copying the caller's window size over whenever it changes: when a
/// byte arrives on `resized` (see [`window_changes`]), or, without it, by looking every 250 ms.
pub fn relay_terminal(
    caller_in: &std::fs::File,
    caller_out: &std::fs::File,
    gear: &std::fs::File,
    resized: Option<&std::fs::File>,
) {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let mut size = None;
    let mut buf = [0u8; 16 * 1024];
    let (mut from_caller, mut to_caller, mut with_gear) = (caller_in, caller_out, gear);
    let mut caller_open = true;
    let mut resized = resized;
    loop {
        let now = terminal_size(caller_out.as_fd());
        if now.is_some() && now != size {
            size = now;
            if let Some((rows, cols)) = size {
                let _ = set_terminal_size(gear.as_fd(), rows, cols);
            }
        }
        let mut fds = vec![nix::poll::PollFd::new(
            gear.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if caller_open {
            fds.push(nix::poll::PollFd::new(
                caller_in.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        if let Some(r) = resized {
            fds.push(nix::poll::PollFd::new(
                r.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        let timeout = if resized.is_some() {
            nix::poll::PollTimeout::NONE
        } else {
            nix::poll::PollTimeout::from(250u16)
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let gear_ready = ready(0);
        let caller_ready = caller_open && ready(1);
        if let Some(mut r) = resized
            && ready(fds.len() - 1)
        {
            // the notices only say "look again"; at their end, go back to looking by time
            let mut notices = [0u8; 64];
            if !matches!(r.read(&mut notices), Ok(n) if n > 0) {
                resized = None;
            }
        }
        if gear_ready {
            match with_gear.read(&mut buf) {
                // EIO: every process of the gear has closed its terminal
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_caller.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    let _ = to_caller.flush();
                }
            }
        }
        if caller_ready {
            match from_caller.read(&mut buf) {
                Ok(0) | Err(_) => caller_open = false,
                Ok(n) => {
                    if with_gear.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// A pseudo-terminal pair: (the side a terminal emulator holds, the side a program holds).
    fn pty() -> (std::fs::File, std::fs::File) {
        let pair = nix::pty::openpty(None, None).expect("openpty");
        (
            std::fs::File::from(pair.master),
            std::fs::File::from(pair.slave),
        )
    }

    fn wait_for_size(fd: BorrowedFd<'_>, want: (u16, u16)) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while terminal_size(fd) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "the gear's terminal is {:?}, not {want:?}",
                terminal_size(fd)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Relays between a caller's terminal and a gear's, changes the caller's size, and waits
    /// for the gear's to follow; `told` sends a notice as a terminal's SIGWINCH would.
    fn relay_follows_a_resize(told: bool) {
        let (emulator, caller) = pty();
        let (gear, gear_program) = pty();
        set_terminal_size(emulator.as_fd(), 24, 80).expect("size");
        let (notices, mut notify) = io::pipe().expect("pipe");
        let notices = std::fs::File::from(OwnedFd::from(notices));
        let caller_in = caller.try_clone().expect("dup");
        let relay = std::thread::spawn(move || {
            relay_terminal(&caller_in, &caller, &gear, told.then_some(&notices));
        });
        wait_for_size(gear_program.as_fd(), (24, 80));
        set_terminal_size(emulator.as_fd(), 40, 120).expect("size");
        if told {
            use std::io::Write;
            notify.write_all(b"w").expect("notice");
        }
        wait_for_size(gear_program.as_fd(), (40, 120));
        // the gear lets go of its terminal: the relay ends
        drop(gear_program);
        relay.join().expect("relay");
    }

    #[test]
    fn the_relay_copies_a_new_window_size_when_told_and_otherwise_looks() {
        // told: the relay waits on the notices alone (no timeout), so only a notice wakes it
        relay_follows_a_resize(true);
        // not told: it looks by itself
        relay_follows_a_resize(false);
    }
}
