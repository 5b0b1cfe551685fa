//! What the node keeps on disk, and how it writes it: every record is written
//! to a temporary file, fsynced, renamed over the old one and the directory
//! fsynced, so a crash at any moment leaves either the old or the new record,
//! never a torn one.
//!
//! Layout under the state directory:
//!
//! ```text
//! gears/<id>/gear.json          the gear's record (node-only)
//! gears/<id>/home/              the gear's home, /gear inside its sandbox
//! gears/<id>/deployments/<n>/   deployed sources; the active one is bound at /gear/app-root/repo
//! gears/<id>/logs/              captured output of its processes and hooks (node-only)
//! gears/<id>/procs.json         its running supervised processes, for the next node to take back
//! netns/<id>                    the gear's network namespace, bound to a file (netns/ is a
//!                               private mount of its own, see `gearhost_sandbox::netns`)
//!
//! (for a gear with a disk quota, home/, deployments/ and logs/ are btrfs
//! subvolumes in the gear's qgroup; gear.json stays outside it)
//! cartridges/<name>/            installed cartridges (manifest + component)
//! cache/                        compiled components
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the gear record format.
pub const RECORD_VERSION: u32 = 1;

// The states and the deployment record are part of the node API (the
// answers carry them) and are stored in `gear.json` in the same form.
pub use gearhost_api::reply::{Deployment, DeploymentState, Desired, GearState};

/// A gear, as stored in `gear.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GearRecord {
    /// Record format version.
    pub version: u32,
    /// Node-unique, immutable id.
    pub id: String,
    /// Name, unique within the namespace.
    pub name: String,
    /// Owner namespace.
    pub namespace: String,
    /// Primary cartridge.
    pub cartridge: String,
    /// The gear's uid (and gid).
    pub uid: u32,
    /// SELinux MCS level derived from the uid.
    pub mcs_level: String,
    /// Unix time of creation.
    pub created: u64,
    /// What it should be doing.
    pub desired: Desired,
    /// What it was last seen doing.
    pub state: GearState,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// Variables set by the cartridge's hooks.
    pub cartridge_env: BTreeMap<String, String>,
    /// Variables set by the user.
    pub user_env: BTreeMap<String, String>,
    /// What the cartridge gave the app's primary process (the first its
    /// start hook spawned) at the last start: `gear exec` gets it too. Absent
    /// in records written before it was kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub process_env: BTreeMap<String, String>,
    /// Deployments, oldest first (at most `keep-deployments` good ones and a few failed ones).
    pub deployments: Vec<Deployment>,
    /// The active deployment.
    pub active: Option<u32>,
    /// Next deployment id.
    pub next_deployment: u32,
    /// Gears this one is linked to (`gear link`), oldest first. Absent in
    /// records written before links existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Extra host names the frontend routes to this gear (`gear alias`),
    /// lower-case, in the order they were added. Absent in records written
    /// before aliases existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The gear's disk quota in bytes: its `home`, `deployments` and `logs`
    /// are btrfs subvolumes in qgroup `1/<uid>`, limited to this. Absent for
    /// gears without a quota (and in records written before quotas existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// The user who created the gear; the per-user limits count it against
    /// them. Absent in records written before gears had owners (and for
    /// gears an operator created without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Which slot the app serves from: 0 on its declared ports, 1 on their
    /// beside ports after a start beside the serving app took over (see
    /// `frontend::LiveSlot`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slot: u8,
    /// What the gear asks of HTTPS (`gear https`).
    #[serde(default, skip_serializing_if = "GearHttps::is_default")]
    pub https: GearHttps,
}

/// A gear's HTTPS options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GearHttps {
    /// Plain-HTTP requests for its names that have a certificate are
    /// redirected to HTTPS.
    #[serde(default)]
    pub redirect: bool,
    /// Answers over TLS carry `Strict-Transport-Security` with this max-age
    /// (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_max_age: Option<u64>,
}

impl GearHttps {
    fn is_default(&self) -> bool {
        *self == GearHttps::default()
    }
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// A link from this gear to another one: the node listens on `port` on this
/// gear's loopback and forwards every connection to the same port on the
/// other gear's loopback; this gear also receives what the other gear's
/// cartridge publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Id of the gear linked to.
    pub gear: String,
    /// The port, as the other gear's primary endpoint declared it when the
    /// link was made.
    pub port: u16,
    /// Unix time the link was made.
    pub created: u64,
}

/// The first label of a gear's public host name, `<gear>-<namespace>`
/// (`<label>.<domain>`), which also names it in logs and messages.
pub fn public_label(name: &str, namespace: &str) -> String {
    format!("{name}-{namespace}")
}

impl GearRecord {
    /// [`public_label`] of this gear.
    pub fn label(&self) -> String {
        public_label(&self.name, &self.namespace)
    }

    /// `<gears>/<id>`
    pub fn dir(gears_dir: &Path, id: &str) -> PathBuf {
        gears_dir.join(id)
    }
}

/// Paths of one gear.
#[derive(Debug, Clone)]
pub struct GearPaths {
    /// `gears/<id>`
    pub root: PathBuf,
    /// `netns/<id>`, beside `gears/`
    netns: PathBuf,
}

impl GearPaths {
    /// Paths of gear `id`.
    pub fn new(gears_dir: &Path, id: &str) -> GearPaths {
        GearPaths {
            root: gears_dir.join(id),
            netns: gears_dir.with_file_name("netns").join(id),
        }
    }
    /// The record file.
    pub fn record(&self) -> PathBuf {
        self.root.join("gear.json")
    }
    /// The gear's home.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    /// Deployment `n`.
    pub fn deployment(&self, n: u32) -> PathBuf {
        self.root.join("deployments").join(n.to_string())
    }
    /// The node-written logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The gear's network namespace, bound to a file below the node's pins
    /// (`NodeConfig::netns_dir`).
    pub fn netns(&self) -> PathBuf {
        self.netns.clone()
    }
    /// Where nodes before the pins directory bound the gear's network namespace.
    pub fn old_netns(&self) -> PathBuf {
        self.root.join("netns")
    }
    /// The records of its running supervised processes (see `procs::records`).
    pub fn procs(&self) -> PathBuf {
        self.root.join("procs.json")
    }
}

/// An I/O failure of the state store.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot {action} {path}: {source}; check that the state directory is on a writable file system with space left"
)]
pub struct StateError {
    /// What was being done.
    pub action: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError {
        action,
        path,
        source,
    }
}

/// Write `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io("write", path))
}

/// Save a gear record.
pub fn save_gear(gears_dir: &Path, record: &GearRecord) -> Result<(), StateError> {
    let paths = GearPaths::new(gears_dir, &record.id);
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| StateError {
        action: "encode",
        path: paths.record(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&paths.record(), &bytes)
}

/// Load every gear record. Directories without a record (a create that
/// crashed before acknowledging) are returned separately for cleanup.
pub fn load_gears(gears_dir: &Path) -> Result<(Vec<GearRecord>, Vec<PathBuf>), StateError> {
    let mut gears = Vec::new();
    let mut orphans = Vec::new();
    let entries = match std::fs::read_dir(gears_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((gears, orphans)),
        Err(e) => return Err(io("read", gears_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("read", gears_dir))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let record = path.join("gear.json");
        match std::fs::read(&record) {
            Ok(bytes) => {
                let gear: GearRecord = serde_json::from_slice(&bytes).map_err(|e| StateError {
                    action: "decode",
                    path: record.clone(),
                    source: std::io::Error::other(e),
                })?;
                if gear.version != RECORD_VERSION {
                    return Err(StateError {
                        action: "understand",
                        path: record,
                        source: std::io::Error::other(format!(
                            "record version {} (this node reads {RECORD_VERSION})",
                            gear.version
                        )),
                    });
                }
                gears.push(gear);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => orphans.push(path),
            Err(e) => return Err(io("read", &record)(e)),
        }
    }
    gears.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((gears, orphans))
}

/// Current unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Deepest a [`remove_tree`] descends before it moves a directory up.
const REMOVE_DEPTH: usize = 32;

/// Removes `root` and everything below it, as root, over a tree a gear
/// controlled: symlinks are removed, never followed; the stack and the
/// descriptors used stay bounded however deep the tree is (a gear can nest
/// directories many thousands deep, and a recursive removal overflows its
/// thread's stack and ends the node): a directory deeper than
/// [`REMOVE_DEPTH`] is first moved up to `root` itself, then removed from
/// there. A `root` that does not exist is not an error.
pub fn remove_tree(root: &Path) -> std::io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{AtFlags, OFlag, openat, renameat};
    use nix::sys::stat::{Mode, SFlag, fstatat};
    use nix::unistd::{UnlinkatFlags, unlinkat};

    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open =
        |dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr| openat(dir, name, flags, Mode::empty());
    // a listing of its own (a duplicate descriptor would share the position)
    let list = |dir: &std::os::fd::OwnedFd| -> nix::Result<nix::dir::OwningIter> {
        Ok(nix::dir::Dir::from_fd(open(dir, c".")?)?.into_iter())
    };
    let top = match nix::fcntl::open(root, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTDIR | Errno::ELOOP) => return std::fs::remove_file(root),
        Err(e) => return Err(e.into()),
    };
    let mut moved: u64 = 0;
    // passes over the tree until `root` is empty: entries moved up to `root`
    // while it was being read may not show in the same pass
    loop {
        let mut removed = 0u64;
        // (descriptor for *at calls, its listing, its name in the parent)
        let mut stack = vec![(top.try_clone()?, list(&top)?, std::ffi::CString::default())];
        while let Some(depth) = stack.len().checked_sub(1) {
            let (dir, listing, _) = &mut stack[depth];
            let Some(entry) = listing.next() else {
                let (_, _, name) = stack.pop().unwrap_or_else(|| unreachable!());
                if let Some((parent, _, _)) = stack.last() {
                    match unlinkat(parent, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                        Ok(()) => removed += 1,
                        // what a pass missed, the next one finds
                        Err(Errno::ENOTEMPTY) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                continue;
            };
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let st = fstatat(&*dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
                unlinkat(&*dir, name, UnlinkatFlags::NoRemoveDir)?;
                removed += 1;
            } else if depth + 1 >= REMOVE_DEPTH {
                moved += 1;
                let to = std::ffi::CString::new(format!(".gearhost-removing-{moved}"))
                    .map_err(std::io::Error::other)?;
                renameat(&*dir, name, &top, to.as_c_str())?;
                removed += 1;
            } else {
                let name = name.to_owned();
                let child = open(dir, &name)?;
                let listing = list(&child)?;
                stack.push((child, listing, name));
            }
        }
        let empty = list(&top)?
            .filter_map(Result::ok)
            .all(|e| e.file_name() == c"." || e.file_name() == c"..");
        if empty {
            break;
        }
        if removed == 0 {
            return Err(std::io::Error::other(format!(
                "{} could not be emptied",
                root.display()
            )));
        }
    }
    drop(top);
    std::fs::remove_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_of_any_depth_is_removed_without_following_links() {
        let dir = tempfile::tempdir().expect("dir");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("keep"), b"mine").expect("keep");
        let root = dir.path().join("home");
        std::fs::create_dir(&root).expect("home");
        // 5,000 levels (far past PATH_MAX), made by descriptor; every 100th
        // holds a file, a symlink out and a FIFO
        use nix::fcntl::{OFlag, open, openat};
        use nix::sys::stat::Mode;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut at = open(&root, flags, Mode::empty()).expect("open home");
        for i in 0..5000 {
            if i % 100 == 0 {
                let file = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC;
                openat(&at, c"f", file, Mode::S_IRWXU).expect("file");
                nix::unistd::symlinkat(&outside, &at, c"out").expect("link");
                nix::unistd::mkfifoat(&at, c"fifo", Mode::S_IRWXU).expect("fifo");
            }
            nix::sys::stat::mkdirat(&at, c"d", Mode::S_IRWXU).expect("level");
            at = openat(&at, c"d", flags, Mode::empty()).expect("descend");
        }
        drop(at);
        // a thread with a small stack: the removal must not recurse per level
        let target = root.clone();
        let removed = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_tree(&target))
            .expect("thread")
            .join()
            .expect("no overflow");
        removed.expect("removed");
        assert!(!root.exists());
        assert_eq!(std::fs::read(outside.join("keep")).expect("kept"), b"mine");
        assert!(remove_tree(&root).is_ok(), "a missing tree is not an error");
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn records_written_before_links_existed_still_load() {
        let record = serde_json::json!({
            "version": 1, "id": "abc", "name": "web", "namespace": "default",
            "cartridge": "hello", "uid": 61000, "mcs_level": "s0:c0,c1", "created": 1,
            "desired": "stopped", "state": "new", "failure": null,
            "cartridge_env": {}, "user_env": {}, "deployments": [], "active": null,
            "next_deployment": 1
        });
        let gear: GearRecord = serde_json::from_value(record).expect("old record");
        assert!(gear.links.is_empty());
        assert!(gear.aliases.is_empty());
        assert_eq!(gear.disk, None, "records from before quotas have none");
        // and a record without links or aliases is written the way it was
        let text = serde_json::to_string(&gear).expect("encode");
        assert!(!text.contains("links"), "{text}");
        assert!(!text.contains("aliases"), "{text}");
        assert!(!text.contains("disk"), "{text}");
        let quota = GearRecord {
            disk: Some(64 << 20),
            ..gear
        };
        let text = serde_json::to_string(&quota).expect("encode");
        assert!(text.contains("\"disk\":67108864"), "{text}");
        assert_eq!(
            serde_json::from_str::<GearRecord>(&text).expect("decode"),
            quota
        );
    }

    #[test]
    fn records_without_a_file_are_orphans() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir_all(dir.path().join("abc/home")).expect("mkdir");
        let (gears, orphans) = load_gears(dir.path()).expect("load");
        assert!(gears.is_empty());
        assert_eq!(orphans, [dir.path().join("abc")]);
    }
}
