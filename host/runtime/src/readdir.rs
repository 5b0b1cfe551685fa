//! Directory listings for hooks, one entry at a time.
//!
//! wasmtime-wasi answers a guest's `read-directory` by reading the whole directory, and
//! `stat`ing every entry, in one blocking call, and keeps the list in the host's memory until
//! the guest has read it. A gear controls what its directories hold: a million names in one
//! of them would cost the node hundreds of megabytes and seconds of uninterruptible work
//! inside one call, past any budget. This module replaces the two functions of
//! `wasi:filesystem/types` that list directories (and the stream resource between them) with
//! a stream that reads the directory as the guest asks: each `read-directory-entry` reads at
//! most one buffer of the kernel's listing, the host holds one buffer per open listing, and
//! the guest's own memory cap bounds what it keeps. Entry types come from the listing itself;
//! only a file system that does not give them costs a `stat` for that entry.

use std::ffi::CStr;
use std::sync::Arc;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::filesystem::types::{DescriptorType, DirectoryEntry, ErrorCode};

use crate::call::HookState;

/// The interface whose functions are replaced, as wasmtime-wasi registers it.
const INTERFACE: &str = "wasi:filesystem/types@0.2.12";

/// An open listing: the directory read as the guest asks.
pub(crate) struct EntryStream {
    entries: nix::dir::OwningIter,
    /// The directory listed (for the type of an entry the listing does not give).
    dir: Arc<std::fs::File>,
}

/// Replace wasmtime-wasi's `read-directory` and `read-directory-entry` (and the
/// `directory-entry-stream` resource) in `linker`, which must already hold WASI.
pub(crate) fn add_to_linker(linker: &mut Linker<HookState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let defined = define(linker);
    linker.allow_shadowing(false);
    defined
}

fn define(linker: &mut Linker<HookState>) -> wasmtime::Result<()> {
    let mut types = linker.instance(INTERFACE)?;
    types.resource(
        "directory-entry-stream",
        ResourceType::host::<EntryStream>(),
        |mut store, rep| {
            store
                .data_mut()
                .table
                .delete(Resource::<EntryStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let table = &mut store.data_mut().table;
                let opened = match table.get(&fd)? {
                    Descriptor::Dir(d) => open_listing(&d.dir),
                    Descriptor::File(_) => Err(std::io::Error::from_raw_os_error(libc_enotdir())),
                };
                match opened {
                    Ok(stream) => Ok((Ok(table.push(stream)?),)),
                    Err(e) => Ok((Err(error_code(e)?),)),
                }
            })
        },
    )?;
    types.func_wrap_async(
        "[method]directory-entry-stream.read-directory-entry",
        |mut store, (stream,): (Resource<EntryStream>,)| {
            Box::new(async move {
                let stream = store.data_mut().table.get_mut(&stream)?;
                match next_entry(stream) {
                    Ok(entry) => Ok((Ok(entry),)),
                    Err(Failure::Io(e)) => Ok((Err(error_code(e)?),)),
                    Err(Failure::NotUtf8) => Ok((Err(ErrorCode::IllegalByteSequence),)),
                }
            })
        },
    )?;
    Ok(())
}

fn libc_enotdir() -> i32 {
    nix::errno::Errno::ENOTDIR as i32
}

/// The WASI error code for an I/O error, as wasmtime-wasi maps it.
fn error_code(e: std::io::Error) -> wasmtime::Result<ErrorCode> {
    FsError::from(e).downcast()
}

/// A fresh listing of `dir` (its own open file description, so two listings of one
/// descriptor do not share a position).
fn open_listing(dir: &Arc<std::fs::File>) -> std::io::Result<EntryStream> {
    let listing = nix::dir::Dir::openat(
        dir.as_ref(),
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    Ok(EntryStream {
        entries: listing.into_iter(),
        dir: dir.clone(),
    })
}

enum Failure {
    Io(std::io::Error),
    NotUtf8,
}

fn next_entry(stream: &mut EntryStream) -> Result<Option<DirectoryEntry>, Failure> {
    loop {
        let Some(entry) = stream.entries.next() else {
            return Ok(None);
        };
        let entry = entry.map_err(|e| Failure::Io(e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let type_ = match entry.file_type() {
            Some(t) => descriptor_type(t),
            None => type_by_stat(&stream.dir, name),
        };
        let name = name.to_str().map_err(|_| Failure::NotUtf8)?.to_owned();
        return Ok(Some(DirectoryEntry { type_, name }));
    }
}

fn descriptor_type(t: nix::dir::Type) -> DescriptorType {
    use nix::dir::Type;
    match t {
        Type::Fifo => DescriptorType::Fifo,
        Type::CharacterDevice => DescriptorType::CharacterDevice,
        Type::Directory => DescriptorType::Directory,
        Type::BlockDevice => DescriptorType::BlockDevice,
        Type::File => DescriptorType::RegularFile,
        Type::Symlink => DescriptorType::SymbolicLink,
        Type::Socket => DescriptorType::Socket,
    }
}

/// The type of entry `name` of `dir`, from `stat` (the link itself for a symbolic link).
fn type_by_stat(dir: &std::fs::File, name: &CStr) -> DescriptorType {
    let Ok(st) = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return DescriptorType::Unknown;
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    match kind {
        SFlag::S_IFIFO => DescriptorType::Fifo,
        SFlag::S_IFCHR => DescriptorType::CharacterDevice,
        SFlag::S_IFDIR => DescriptorType::Directory,
        SFlag::S_IFBLK => DescriptorType::BlockDevice,
        SFlag::S_IFREG => DescriptorType::RegularFile,
        SFlag::S_IFLNK => DescriptorType::SymbolicLink,
        SFlag::S_IFSOCK => DescriptorType::Socket,
        _ => DescriptorType::Unknown,
    }
}
