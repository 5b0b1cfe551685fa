//! What a hook's component is linked against: WASI 0.2, the Gearhost host
//! interface, and the bounded directory listing that replaces WASI's.
//!
//! A runtime that serves many cartridges (the node) links everything once.
//! A runtime made for one call ([`crate::Runtime::for_few_calls`], `gear
//! cartridge call`) links each component against the interfaces it imports
//! and nothing else: defining all of WASI is some 150 host functions, each
//! wrapped and its type registered with the engine, a fifth of a millisecond
//! of a process that lives for two, while a hook built with the SDK imports
//! about half of them (no sockets, for one). Either way an interface is
//! defined by the same functions of `wasmtime-wasi`, so a component sees the
//! same host; an import that neither defines is refused when the component
//! is pre-linked, with the same message.

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random, sockets};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView as _};

use crate::HookState;

/// The resource table, for the `wasi:io` interfaces.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

type Define = fn(&mut Linker<HookState>) -> wasmtime::Result<()>;

/// Every WASI 0.2 interface a runtime defines, by name without version, with
/// what defines it (as `wasmtime_wasi::p2::add_to_linker_async` does).
const WASI: &[(&str, Define)] = &[
    ("wasi:io/error", |l| {
        io::error::add_to_linker::<HookState, HasIo>(l, |t| t.ctx().table)
    }),
    ("wasi:io/poll", |l| {
        io::poll::add_to_linker::<HookState, HasIo>(l, |t| t.ctx().table)
    }),
    ("wasi:io/streams", |l| {
        io::streams::add_to_linker::<HookState, HasIo>(l, |t| t.ctx().table)
    }),
    ("wasi:clocks/wall-clock", |l| {
        clocks::wall_clock::add_to_linker::<HookState, WasiClocks>(l, HookState::clocks)
    }),
    ("wasi:clocks/monotonic-clock", |l| {
        clocks::monotonic_clock::add_to_linker::<HookState, WasiClocks>(l, HookState::clocks)
    }),
    ("wasi:filesystem/types", |l| {
        filesystem::types::add_to_linker::<HookState, WasiFilesystem>(l, HookState::filesystem)
    }),
    ("wasi:filesystem/preopens", |l| {
        filesystem::preopens::add_to_linker::<HookState, WasiFilesystem>(l, HookState::filesystem)
    }),
    ("wasi:random/random", |l| {
        random::random::add_to_linker::<HookState, WasiRandom>(l, |t| t.ctx().ctx.random())
    }),
    ("wasi:random/insecure", |l| {
        random::insecure::add_to_linker::<HookState, WasiRandom>(l, |t| t.ctx().ctx.random())
    }),
    ("wasi:random/insecure-seed", |l| {
        random::insecure_seed::add_to_linker::<HookState, WasiRandom>(l, |t| t.ctx().ctx.random())
    }),
    ("wasi:cli/exit", |l| {
        cli::exit::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/environment", |l| {
        cli::environment::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/stdin", |l| {
        cli::stdin::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/stdout", |l| {
        cli::stdout::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/stderr", |l| {
        cli::stderr::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/terminal-input", |l| {
        cli::terminal_input::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/terminal-output", |l| {
        cli::terminal_output::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/terminal-stdin", |l| {
        cli::terminal_stdin::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/terminal-stdout", |l| {
        cli::terminal_stdout::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:cli/terminal-stderr", |l| {
        cli::terminal_stderr::add_to_linker::<HookState, WasiCli>(l, HookState::cli)
    }),
    ("wasi:sockets/tcp-create-socket", |l| {
        sockets::tcp_create_socket::add_to_linker::<HookState, WasiSockets>(l, HookState::sockets)
    }),
    ("wasi:sockets/instance-network", |l| {
        sockets::instance_network::add_to_linker::<HookState, WasiSockets>(l, HookState::sockets)
    }),
    ("wasi:sockets/network", |l| {
        sockets::network::add_to_linker::<HookState, WasiSockets>(
            l,
            &sockets::network::LinkOptions::default(),
            HookState::sockets,
        )
    }),
    ("wasi:sockets/ip-name-lookup", |l| {
        sockets::ip_name_lookup::add_to_linker::<HookState, WasiSockets>(l, HookState::sockets)
    }),
    ("wasi:sockets/tcp", |l| {
        sockets::tcp::add_to_linker::<HookState, WasiSockets>(l, HookState::sockets)
    }),
    ("wasi:sockets/udp", |l| {
        sockets::udp::add_to_linker::<HookState, WasiSockets>(l, HookState::sockets)
    }),
    ("wasi:sockets/udp-create-socket", |l| {
        sockets::udp_create_socket::add_to_linker::<HookState, WasiSockets>(l, HookState::sockets)
    }),
];

/// `name` without its `@version`.
fn unversioned(name: &str) -> &str {
    name.split_once('@').map_or(name, |(bare, _)| bare)
}

/// A linker with all of WASI and the host's own interfaces: for a runtime
/// that serves any cartridge.
pub(crate) fn everything(linker: &mut Linker<HookState>) -> wasmtime::Result<()> {
    for (_, define) in WASI {
        define(linker)?;
    }
    own(linker, true)
}

/// A linker with the WASI interfaces among `imports` (full names, versioned)
/// and the host's own interfaces: for one component.
pub(crate) fn for_imports(
    linker: &mut Linker<HookState>,
    imports: &[String],
) -> wasmtime::Result<()> {
    let wanted = |interface: &str| imports.iter().any(|i| unversioned(i) == interface);
    for (interface, define) in WASI {
        if wanted(interface) {
            define(linker)?;
        }
    }
    own(linker, wanted("wasi:filesystem/types"))
}

/// The Gearhost host interface, and the bounded directory listing over WASI's
/// when `filesystem` (WASI's `filesystem/types`) is defined.
fn own(linker: &mut Linker<HookState>, filesystem: bool) -> wasmtime::Result<()> {
    crate::bindings::Cartridge::add_to_linker::<_, wasmtime::component::HasSelf<HookState>>(
        linker,
        |state| state,
    )?;
    if filesystem {
        crate::readdir::add_to_linker(linker)
            .map_err(|e| e.context("cannot install the bounded directory listing"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_version_only() {
        assert_eq!(unversioned("wasi:cli/stdout@0.2.6"), "wasi:cli/stdout");
        assert_eq!(unversioned("wasi:cli/stdout"), "wasi:cli/stdout");
    }

    #[test]
    fn every_interface_is_listed_once() {
        let mut names: Vec<&str> = WASI.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), WASI.len());
        // all of WASI 0.2's command world but http
        assert_eq!(WASI.len(), 27);
    }
}
