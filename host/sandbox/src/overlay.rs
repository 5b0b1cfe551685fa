//! The root file system of an image gear: an overlay whose lower layers are an image's layers
//! (shared, read-only, in the node's image store) and whose upper layer belongs to one
//! deployment of one gear. The node mounts it once per deployment, in its own mount namespace,
//! at a path of its state directory; every process of the gear gets a clone of that one mount
//! (see [`crate::SandboxSpec::root`]), so they all see one file system, with one cache.
//!
//! Mounted with the new mount API, one `lowerdir+` per layer (Linux 6.8 and later), so an image
//! of any depth fits; an older kernel gets the classic option string, limited by the page size.
//! The mount is `nosuid` and `nodev`. Where SELinux is enabled the whole overlay carries the
//! gear's file context by the `context=` mount option: the shared layers are never relabelled.

use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::sys;

/// `OVERLAYFS_SUPER_MAGIC`.
const OVERLAY_MAGIC: i64 = 0x794c_7630;

/// What one overlay root is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayRoot {
    /// The image's layer directories, top first (overlayfs's order).
    pub lower: Vec<PathBuf>,
    /// The writable layer (a directory on the same file system as `work`).
    pub upper: PathBuf,
    /// Overlayfs's work directory, empty and beside `upper`.
    pub work: PathBuf,
    /// The SELinux context every file of the overlay carries (`context=`), when SELinux is
    /// enabled.
    pub context: Option<String>,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

/// Characters the classic option string cannot carry in a path.
fn plain_for_options(path: &Path) -> bool {
    !path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b',' | b':' | b'\\' | b'"'))
}

/// Mounts `root` on the directory `target`. Nothing is mounted when it fails.
pub fn mount_overlay(root: &OverlayRoot, target: &Path) -> io::Result<()> {
    if root.lower.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an overlay needs at least one lower layer",
        ));
    }
    match mount_appended(root, target) {
        Ok(()) => Ok(()),
        // Before Linux 6.8 layers cannot be appended one by one. Overlayfs before 6.5 does
        // not even see the parameters until the mount is made (they pass as one option
        // string), so the refusal comes at the end: either way the classic string follows.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => mount_classic(root, target),
        Err(e) => Err(with_path(e, target)),
    }
}

/// The new mount API, one `lowerdir+` per layer (errors as the kernel gives them).
fn mount_appended(root: &OverlayRoot, target: &Path) -> io::Result<()> {
    let fs = sys::fsopen(c"overlay")?;
    let set = |key: &std::ffi::CStr, value: &CString| sys::fsconfig_string(fs.as_fd(), key, value);
    for layer in &root.lower {
        set(c"lowerdir+", &cstring(layer)?)?;
    }
    set(c"upperdir", &cstring(&root.upper)?)?;
    set(c"workdir", &cstring(&root.work)?)?;
    // no index: the upper layer is only ever used by this one mount at a time
    set(c"index", &CString::from(c"off"))?;
    if let Some(context) = &root.context {
        let value = CString::new(context.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a context holds NUL"))?;
        set(c"context", &value)?;
    }
    let mounted =
        sys::fs_create_and_mount(fs.as_fd(), sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)?;
    let dir = std::fs::File::open(target)?;
    sys::move_mount_to(mounted.as_fd(), dir.as_fd())
}

/// The same with `mount(2)`'s option string, for kernels before 6.8.
fn mount_classic(root: &OverlayRoot, target: &Path) -> io::Result<()> {
    let all = root.lower.iter().chain([&root.upper, &root.work]);
    if let Some(bad) = all.clone().find(|p| !plain_for_options(p)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} holds one of `,:\\\"`, which this kernel's overlay options cannot carry; \
                 move the node's state directory to a plain path",
                bad.display()
            ),
        ));
    }
    let lower: Vec<String> = root.lower.iter().map(|p| p.display().to_string()).collect();
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        root.upper.display(),
        root.work.display()
    );
    if let Some(context) = &root.context {
        options.push_str(&format!(",context=\"{context}\""));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|e| {
        let e = io::Error::from(e);
        if e.raw_os_error() == Some(libc::EINVAL) && options.len() >= 4000 {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the image has {} layers, more than this kernel's overlay options can \
                     name (Linux 6.8 takes any number)",
                    root.lower.len()
                ),
            )
        } else {
            with_path(e, target)
        }
    })
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Whether an overlay is mounted on `target` (the directory itself is a mount point of type
/// overlay, not merely inside one).
pub fn is_overlay_mount(target: &Path) -> bool {
    let Ok(fs) = nix::sys::statfs::statfs(target) else {
        return false;
    };
    if fs.filesystem_type().0 != OVERLAY_MAGIC {
        return false;
    }
    let parent = target.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(target), std::fs::metadata(parent)) {
        (Ok(t), Ok(p)) => t.dev() != p.dev(),
        _ => false,
    }
}

/// Detaches whatever is mounted on `target` (nothing mounted is not an error). Processes that
/// still use a clone of it keep it until they end.
pub fn unmount(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL | nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(with_path(e.into(), target)),
    }
}

/// Makes `dir` a mount point of its own with private propagation (a bind of itself), once:
/// what is mounted below it then stays out of the host's other mount namespaces even where `/`
/// is shared, as on a systemd host. Whether it is a mount point already is asked of the kernel
/// for that one path (`statx`), not looked up in the mount table, which holds a line per gear.
pub fn make_private_mount_point(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| with_path(e, dir))?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    if !crate::sys::is_mount_root(&c).map_err(|e| with_path(e, dir))? {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| with_path(e.into(), dir))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| with_path(e.into(), dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_string_characters_are_refused() {
        assert!(plain_for_options(Path::new(
            "/var/lib/gearhost/images/layers/ab"
        )));
        assert!(!plain_for_options(Path::new("/srv/a:b")));
        assert!(!plain_for_options(Path::new("/srv/a,b")));
    }

    #[test]
    fn an_overlay_is_mounted_found_and_detached() {
        if !crate::testing::privileged("mount an overlay") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mk = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).expect("mkdir");
            p
        };
        let (low1, low2, upper, work, target) = (mk("l1"), mk("l2"), mk("u"), mk("w"), mk("root"));
        std::fs::write(low1.join("top"), "one").expect("write");
        std::fs::write(low2.join("top"), "two").expect("write");
        std::fs::write(low2.join("base"), "base").expect("write");
        let root = OverlayRoot {
            lower: vec![low1.clone(), low2.clone()],
            upper: upper.clone(),
            work,
            context: None,
        };
        assert!(!is_overlay_mount(&target));
        mount_overlay(&root, &target).expect("mount");
        assert!(is_overlay_mount(&target));
        assert_eq!(
            std::fs::read_to_string(target.join("top")).expect("top"),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("base")).expect("base"),
            "base"
        );
        std::fs::write(target.join("new"), "mine").expect("write through");
        assert_eq!(
            std::fs::read_to_string(upper.join("new")).expect("upper"),
            "mine"
        );
        assert!(!low1.join("new").exists() && !low2.join("new").exists());
        unmount(&target).expect("unmount");
        assert!(!is_overlay_mount(&target));
        unmount(&target).expect("a second unmount is no error");
        // the option string older kernels take gives the same overlay
        mount_classic(&root, &target).expect("mount with the option string");
        assert!(is_overlay_mount(&target));
        assert_eq!(
            std::fs::read_to_string(target.join("new")).expect("kept"),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("base")).expect("base"),
            "base"
        );
        unmount(&target).expect("unmount");
    }
}
