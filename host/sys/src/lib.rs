//! Operating-system plumbing that the node, the CLI and the sandbox share but that has nothing
//! to do with confining a gear:
//!
//! - [`fdpass`]: passing file descriptors over a unix socket (`gear exec` hands the node its
//!   terminal or pipes; the sandbox hands its helper the gear's descriptors);
//! - [`terminal`]: the caller's terminal in raw mode and the relay to a gear's pseudo-terminal;
//! - [`sendbatch`]: the frontend's socket sends, passed to the kernel in batches (io_uring);
//! - [`interrupt`]: breaking a thread out of a blocking system call (hook time budgets);
//! - [`listenfds`]: listening sockets given by socket activation or by the node replaced;
//!
//! and three small helpers every crate used to write for itself: [`lock`] (poison-tolerant
//! locking), [`proc_status`] (reading `/proc/<pid>/status`), [`hex`] and [`base64`]; with the `program`
//! feature, what the `gear` and `gearhost-node` programs share (log output, error text).
//!
//! Unsafe code is allowed per module, only where a system call needs it, and every unsafe
//! block says why it is sound (see "Where unsafe code lives" in docs/ARCHITECTURE.md).

pub mod base64;
#[allow(unsafe_code)]
pub mod fdpass;
pub mod hex;
#[allow(unsafe_code)]
pub mod interrupt;
#[allow(unsafe_code)]
pub mod listenfds;
pub mod lock;
pub mod proc_status;
#[cfg(feature = "program")]
pub mod program;
#[allow(unsafe_code)]
pub mod sendbatch;
#[allow(unsafe_code)]
pub mod terminal;

pub use terminal::{RawTerminal, relay_terminal, set_terminal_size, terminal_size, window_changes};
