//! The root of an image gear: the image's overlay (a clone of the node's mount) attached in
//! the staging tmpfs, the prepared `/dev` and `/proc` moved into it, and the gear's identity
//! files made beside it and bound over the image's own, which are read as data only.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::{Builder, cpath, failure};
use crate::protocol::SetupFailure;
use crate::report::FilesystemReport;
use crate::sys;

/// The largest `/etc/passwd` or `/etc/group` of an image that is kept.
const IMAGE_ETC_MAX: u64 = 1 << 20;

/// Where an image's root is attached in the staging tmpfs before the pivot.
const IMAGE_ROOT: &str = "/.image-root";
/// Where the gear's own `/etc` files for an image root are written, in the staging tmpfs.
const IMAGE_ETC: &str = "/.image-etc";

/// Attaches the image root `tree` inside the staging tmpfs, moves the prepared `/dev` and
/// `/proc` (with their masks) into it and returns a builder rooted there. The host's system
/// binds stay behind in the staging root, which goes away with the pivot.
pub(super) fn enter_image_root(
    b: &mut Builder,
    tree: BorrowedFd<'_>,
) -> Result<Builder, SetupFailure> {
    let target = b.ensure(Path::new(IMAGE_ROOT), true)?;
    sys::move_mount_to(tree, target.as_fd())
        .map_err(|e| failure("image_root", "attach the image's root".into(), &e))?;
    drop(target);
    b.set_attrs(
        Path::new(IMAGE_ROOT),
        sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        false,
    )?;
    let root_fd = b.reopen(Path::new(IMAGE_ROOT))?;
    // the gear's /etc files, made here and bound read-only over the image's
    let scratch = b.root.join(IMAGE_ETC.trim_start_matches('/'));
    std::fs::create_dir(&scratch)
        .map_err(|e| failure("image_root", format!("create {}", scratch.display()), &e))?;
    // the host's resolver settings, as every gear gets them
    let resolv = std::fs::read(b.root.join("etc/resolv.conf")).unwrap_or_default();
    let mut image = Builder {
        root: b.root.join(IMAGE_ROOT.trim_start_matches('/')),
        root_fd: Some(root_fd),
        report: FilesystemReport {
            root: "image overlay + pivot_root".into(),
            read_only: b
                .report
                .read_only
                .iter()
                .filter(|p| p.starts_with("/proc") || p.starts_with("/dev"))
                .cloned()
                .collect(),
            read_write: vec![PathBuf::from("/")],
            masked: std::mem::take(&mut b.report.masked),
            sys_present: false,
        },
        scratch: Some(scratch),
    };
    for inner in ["/dev", "/proc"] {
        let from = b.reopen(Path::new(inner))?;
        let to = image.ensure(Path::new(inner), true)?;
        sys::move_mount_to(from.as_fd(), to.as_fd()).map_err(|e| {
            failure(
                "image_root",
                format!("move {inner} into the image's root"),
                &e,
            )
        })?;
    }
    if !resolv.is_empty() {
        image.write_file("/etc/resolv.conf", &String::from_utf8_lossy(&resolv))?;
    }
    Ok(image)
}

impl Builder {
    /// The image's `/etc/<name>` (passwd or group) without the entries that would name the
    /// gear's user or id: the gear's own entry is added after it. An absent, unreadable or
    /// oversized file (it is the image's, so the gear's) counts as empty.
    pub(super) fn image_etc(
        &self,
        name: &str,
        user: &str,
        id: u32,
    ) -> Result<String, SetupFailure> {
        let c = cpath(&Path::new("etc").join(name))?;
        let how = sys::RESOLVE_BENEATH | sys::RESOLVE_NO_SYMLINKS | sys::RESOLVE_NO_MAGICLINKS;
        // not blocking on a FIFO the image put there
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let Ok(fd) = sys::openat2_flags(self.root_fd()?, &c, flags, how) else {
            return Ok(String::new());
        };
        let mut text = String::new();
        let file = std::fs::File::from(fd);
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Ok(String::new());
        }
        use std::io::Read;
        if file
            .take(IMAGE_ETC_MAX + 1)
            .read_to_string(&mut text)
            .is_err()
            || text.len() as u64 > IMAGE_ETC_MAX
        {
            return Ok(String::new());
        }
        let id = id.to_string();
        let mut kept = String::with_capacity(text.len());
        for line in text.lines() {
            let mut fields = line.split(':');
            let (entry, _, entry_id) = (fields.next(), fields.next(), fields.next());
            if entry == Some(user) || entry_id == Some(id.as_str()) {
                continue;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        Ok(kept)
    }
}
