//! Unpacking one OCI image layer (an uncompressed tar stream) into a fresh
//! directory, in the form overlayfs reads as a lower layer. A layer comes
//! from whoever built the image, so it is hostile input: the rules of
//! [`crate::unpack`] hold (plain relative paths, no `..`, every step taken
//! with `O_NOFOLLOW` from a descriptor of the target, so nothing is written
//! through a symlink or outside the directory; bounded sizes and entries; the
//! end marker required), with what image layers need besides:
//! - **whiteouts**: `.wh.NAME` becomes overlayfs's whiteout for `NAME` (a
//!   character device 0/0), and `.wh..wh..opq` marks its directory opaque
//!   (`trusted.overlay.opaque = y`); any other `.wh..wh.` name is refused;
//! - **hard links** are made when their target is an entry of the same layer
//!   (its path walked like any other, so it cannot lead outside);
//! - **device nodes, FIFOs and sockets are skipped** and counted: a gear has a
//!   minimal `/dev` of its own, and a node never makes devices an image asks
//!   for;
//! - **modes** keep their permission and sticky bits; setuid and setgid bits
//!   are dropped (a gear runs with `no_new_privs` anyway);
//! - **owners** are not taken from the archive: everything is root's, and
//!   read-only to gears (their writes go to their own upper layer).

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, SFlag, fchmod, mknodat};

use crate::unpack::{
    Place, Rules, UnpackError, each_entry, make_dir, make_symlink, open_target, plain_path, refuse,
    walk, write_file,
};

/// The prefix of a whiteout's name.
const WHITEOUT: &str = ".wh.";
/// The name that marks its directory opaque.
const OPAQUE: &str = ".wh..wh..opq";

/// The limits on one layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerLimits {
    /// The sum of the regular files' sizes.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

/// What a layer held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// Entries made (directories, files, links, whiteouts).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Whiteouts made.
    pub whiteouts: u64,
    /// Directories marked opaque.
    pub opaque: u64,
    /// Device nodes, FIFOs and sockets left out.
    pub skipped: u64,
}

/// Unpacks the layer `input` into `target`, which must not exist yet.
pub fn unpack_layer(
    input: impl Read,
    target: &Path,
    limits: LayerLimits,
) -> Result<UnpackedLayer, UnpackError> {
    let root = open_target(target, None)?;
    let rules = Rules {
        what: "layer",
        max_entries: limits.max_entries,
        max_bytes: limits.max_bytes,
        too_many: format!("the layer holds more than {} entries", limits.max_entries),
        too_much: format!(
            "the layer's files add up to more than {} bytes",
            limits.max_bytes
        ),
        end: "the layer was not kept",
    };
    let mut done = UnpackedLayer::default();
    let (entries, bytes) = each_entry(input, &root, None, &rules, |entry, at, budget| {
        let Place {
            raw,
            name,
            parent,
            kind,
        } = at;
        let name_bytes = name.as_os_str().as_bytes();
        // an image's permission and sticky bits, never setuid or setgid
        let mode = entry.header().mode().unwrap_or(0o644) & 0o1777;
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
            if name_bytes == OPAQUE.as_bytes() {
                rustix::fs::fsetxattr(
                    &parent,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(|e| refuse(raw, format!("cannot mark the directory opaque: {e}")))?;
                done.opaque += 1;
            } else if hidden.starts_with(WHITEOUT.as_bytes()) || hidden.is_empty() {
                return Err(refuse(
                    raw,
                    "an unknown whiteout kind; only .wh.NAME and .wh..wh..opq are",
                ));
            } else {
                let hidden = std::ffi::OsStr::from_bytes(hidden);
                mknodat(&parent, hidden, SFlag::S_IFCHR, Mode::empty(), 0).map_err(
                    |e| match e {
                        Errno::EEXIST => refuse(raw, "the layer names what it removes"),
                        e => refuse(raw, format!("cannot make the whiteout: {e}")),
                    },
                )?;
                done.whiteouts += 1;
            }
        } else if kind.is_dir() {
            let dir = make_dir(&parent, name, raw, None)?;
            fchmod(&dir, Mode::from_bits_truncate(mode))
                .map_err(|e| refuse(raw, format!("cannot set its mode: {e}")))?;
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let size = entry.size();
            budget.file(size, raw)?;
            write_file(&parent, name, entry, size, mode, None, raw, "layer")?;
        } else if kind.is_symlink() {
            make_symlink(&parent, name, entry, raw, "layer")?;
        } else if kind.is_hard_link() {
            let to = entry
                .link_name()
                .map_err(|e| refuse(raw, format!("its link target is unusable: {e}")))?
                .ok_or_else(|| refuse(raw, "a hard link without a target"))?
                .into_owned();
            hard_link(&root, &parent, name.as_os_str(), &to, raw)?;
        } else if kind.is_character_special()
            || kind.is_block_special()
            || kind.is_fifo()
            || kind.as_byte() == b's'
        {
            done.skipped += 1;
        } else {
            return Err(refuse(
                raw,
                format!(
                    "entries of tar type {:?} are not unpacked",
                    kind.as_byte() as char
                ),
            ));
        }
        Ok(())
    })?;
    done.entries = entries;
    done.bytes = bytes;
    Ok(done)
}

/// Links `name` in `parent` to the entry `to` of the same layer, found from
/// `root` without following a symlink.
fn hard_link(
    root: &OwnedFd,
    parent: &OwnedFd,
    name: &std::ffi::OsStr,
    to: &Path,
    raw: &Path,
) -> Result<(), UnpackError> {
    let parts = plain_path(to).map_err(|_| {
        refuse(
            raw,
            format!("its hard link leads to {}, outside the layer", to.display()),
        )
    })?;
    let Some((target, dirs)) = parts.split_last() else {
        return Err(refuse(raw, "a hard link to the layer's root"));
    };
    let at = walk(root, dirs, raw, None)?;
    nix::unistd::linkat(
        at.as_fd(),
        target.as_os_str(),
        parent.as_fd(),
        name,
        AtFlags::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => refuse(
            raw,
            format!(
                "its hard link leads to {}, which the layer does not hold (yet)",
                to.display()
            ),
        ),
        Errno::EEXIST => refuse(raw, "the layer names it twice"),
        Errno::EPERM => refuse(raw, "a hard link to a directory"),
        e => refuse(raw, format!("cannot make the hard link: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    const LIMITS: LayerLimits = LayerLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
    };

    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: &str,
        body: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        // straight into the fields: the tar crate's setters refuse what a hostile layer holds
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        let l = &mut h.as_old_mut().linkname;
        l[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, body).expect("append");
    }

    fn run(
        build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    ) -> (Result<UnpackedLayer, UnpackError>, tempfile::TempDir) {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().expect("archive");
        let tmp = tempfile::tempdir().expect("tmp");
        let got = unpack_layer(&bytes[..], &tmp.path().join("layer"), LIMITS);
        let outside: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n != "layer")
            .collect();
        assert!(outside.is_empty(), "made outside the layer: {outside:?}");
        (got, tmp)
    }

    fn refused(build: impl FnOnce(&mut tar::Builder<Vec<u8>>), says: &str) {
        let (got, _tmp) = run(build);
        let e = got.expect_err("refused").to_string();
        assert!(e.contains(says), "{e}");
    }

    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};

    #[test]
    fn a_layer_becomes_an_overlay_lower_directory() {
        let (got, tmp) = run(|b| {
            entry(b, "usr/", Directory, 0o755, "", b"");
            entry(b, "usr/bin/tool", Regular, 0o4755, "", b"#!/bin/sh\n");
            entry(b, "usr/bin/same", Link, 0o644, "usr/bin/tool", b"");
            entry(
                b,
                "usr/lib/libc.so",
                Symlink,
                0o777,
                "/lib/x86_64/libc.so.6",
                b"",
            );
            entry(b, "tmp/", Directory, 0o1777, "", b"");
            entry(b, "etc/.wh.motd", Regular, 0o644, "", b"");
            entry(b, "var/cache/.wh..wh..opq", Regular, 0o644, "", b"");
            entry(b, "dev/null", Char, 0o666, "", b"");
            entry(b, "dev/sda", Block, 0o660, "", b"");
            entry(b, "run/pipe", Fifo, 0o600, "", b"");
        });
        let done = got.expect("unpacked");
        assert_eq!(
            (done.whiteouts, done.opaque, done.skipped),
            (1, 1, 3),
            "{done:?}"
        );
        let layer = tmp.path().join("layer");
        let tool = std::fs::metadata(layer.join("usr/bin/tool")).expect("tool");
        assert_eq!(tool.permissions().mode() & 0o7777, 0o755, "setuid dropped");
        assert_eq!(tool.uid(), 0, "root's");
        let same = std::fs::metadata(layer.join("usr/bin/same")).expect("link");
        assert_eq!(same.ino(), tool.ino(), "a hard link within the layer");
        assert_eq!(
            std::fs::read_link(layer.join("usr/lib/libc.so")).expect("symlink"),
            Path::new("/lib/x86_64/libc.so.6"),
            "kept as it is"
        );
        let tmpdir = std::fs::metadata(layer.join("tmp")).expect("tmp");
        assert_eq!(tmpdir.permissions().mode() & 0o7777, 0o1777, "sticky kept");
        let motd = std::fs::symlink_metadata(layer.join("etc/motd")).expect("whiteout");
        assert!(
            motd.file_type().is_char_device() && motd.rdev() == 0,
            "a 0/0 whiteout"
        );
        assert!(!layer.join("etc/.wh.motd").exists());
        let opaque = rustix::fs::getxattr(
            layer.join("var/cache"),
            "trusted.overlay.opaque",
            &mut [0u8; 4],
        )
        .expect("opaque xattr");
        assert_eq!(opaque, 1);
        assert!(!layer.join("dev/null").exists() && !layer.join("run/pipe").exists());
    }

    #[test]
    fn nothing_is_written_outside_the_layer() {
        refused(|b| entry(b, "../escape", Regular, 0o644, "", b"x"), "`..`");
        refused(
            |b| entry(b, "/etc/passwd", Regular, 0o644, "", b"x"),
            "absolute",
        );
        // a symlink the layer made is never gone through
        refused(
            |b| {
                entry(b, "up", Symlink, 0o777, "..", b"");
                entry(b, "up/escape", Regular, 0o644, "", b"x");
            },
            "goes through a symlink",
        );
        refused(
            |b| {
                entry(b, "etc", Symlink, 0o777, "/etc", b"");
                entry(b, "etc/.wh.passwd", Regular, 0o644, "", b"");
            },
            "goes through a symlink",
        );
        // hard links only to entries of the layer
        refused(
            |b| entry(b, "shadow", Link, 0o644, "../../etc/shadow", b""),
            "outside the layer",
        );
        refused(
            |b| entry(b, "shadow", Link, 0o644, "/etc/shadow", b""),
            "outside the layer",
        );
        refused(
            |b| entry(b, "later", Link, 0o644, "not/yet", b""),
            "does not hold",
        );
        refused(
            |b| {
                entry(b, "dir", Symlink, 0o777, "/etc", b"");
                entry(b, "passwd", Link, 0o644, "dir/passwd", b"");
            },
            "goes through a symlink",
        );
        refused(
            |b| entry(b, ".wh..wh..plnk", Regular, 0o644, "", b""),
            "unknown whiteout",
        );
        refused(
            |b| {
                entry(b, "a", Regular, 0o644, "", b"1");
                entry(b, "a", Regular, 0o644, "", b"2");
            },
            "twice",
        );
    }

    #[test]
    fn absurd_sizes_and_counts_are_refused() {
        refused(
            |b| entry(b, "big", Regular, 0o644, "", &vec![0u8; (1 << 20) + 1]),
            "more than",
        );
        refused(
            |b| {
                for i in 0..101 {
                    entry(b, &format!("f{i}"), Regular, 0o644, "", b"");
                }
            },
            "more than 100 entries",
        );
        // a layer cut short
        let mut b = tar::Builder::new(Vec::new());
        entry(&mut b, "f", Regular, 0o644, "", b"data");
        let mut bytes = b.into_inner().expect("archive");
        bytes.truncate(bytes.len() - 1024);
        let tmp = tempfile::tempdir().expect("tmp");
        let e = unpack_layer(&bytes[..], &tmp.path().join("layer"), LIMITS).expect_err("cut");
        assert!(e.to_string().contains("end marker"), "{e}");
    }
}
