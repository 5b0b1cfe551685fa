//! Unit tests of the SELinux module: the uid to MCS mapping, contexts, and the label walk
//! over trees a gear could have built.

use super::*;

#[test]
fn fixed_points_match_openshift() {
    let cases = [
        (1, "s0:c0,c1"),
        (1000, "s0:c0,c1000"),
        (1023, "s0:c0,c1023"),
        (1024, "s0:c1,c2"),
        (6000, "s0:c5,c900"),
    ];
    for (uid, want) in cases {
        assert_eq!(
            mcs_level_for_uid(uid).expect("in range").to_string(),
            want,
            "uid {uid}"
        );
    }
    assert_eq!(
        mcs_level_for_uid(MAX_MCS_UID).expect("last").to_string(),
        "s0:c1022,c1023"
    );
}

#[test]
fn bounds_are_errors() {
    assert!(matches!(
        mcs_level_for_uid(0),
        Err(SelinuxError::UidOutOfRange { uid: 0 })
    ));
    assert!(mcs_level_for_uid(MAX_MCS_UID + 1).is_err());
    assert!(mcs_level_for_uid(u32::MAX).is_err());
}

#[test]
fn levels_are_unique_and_ordered() {
    let mut previous: Option<McsLevel> = None;
    for uid in 1..=20_000 {
        let level = mcs_level_for_uid(uid).expect("in range");
        assert!(level.low < level.high);
        if let Some(p) = previous {
            assert!(p < level, "uid {uid}: {p} !< {level}");
        }
        previous = Some(level);
    }
}

#[test]
fn levels_parse_back() {
    let level = mcs_level_for_uid(6000).expect("in range");
    assert_eq!(level.to_string().parse::<McsLevel>().expect("parse"), level);
    for bad in ["s0:c2,c1", "s0:c1,c1024", "s1:c0,c1", "c0,c1"] {
        assert!(bad.parse::<McsLevel>().is_err(), "{bad}");
    }
}

#[test]
fn node_runs_at_s0() {
    assert!(range_is_s0("s0"));
    assert!(range_is_s0("s0-s0"));
    assert!(!range_is_s0("s0-s0:c0.c1023"));
    assert!(!range_is_s0("s0:c1,c2"));
}

#[test]
fn mode_is_a_known_word() {
    assert!(["enforcing", "permissive", "disabled"].contains(&mode()));
    if !is_enabled() {
        assert_eq!(mode(), "disabled");
    }
}

#[test]
fn contexts_use_the_uid_level() {
    let c = gear_contexts(None, 1024).expect("contexts");
    assert_eq!(c.process, "system_u:system_r:gear_t:s0:c1,c2");
    assert_eq!(c.file, "system_u:object_r:gear_file_t:s0:c1,c2");
}

// ---- the label walk: traversal (no SELinux, no root needed) ----

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, symlink};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Device and inode of a file, links not followed.
fn inode(path: &Path) -> (u64, u64) {
    let m = std::fs::symlink_metadata(path).expect("lstat");
    (m.dev(), m.ino())
}

fn inode_of(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = nix::sys::stat::fstat(fd).expect("fstat");
    (st.st_dev, st.st_ino)
}

/// Every file of a tree (links not followed), by device and inode.
fn inodes_below(root: &Path) -> HashSet<(u64, u64)> {
    let mut all = HashSet::from([inode(root)]);
    if std::fs::symlink_metadata(root).expect("lstat").is_dir() {
        for e in std::fs::read_dir(root).expect("read_dir") {
            all.extend(inodes_below(&e.expect("entry").path()));
        }
    }
    all
}

/// A host directory the gear must never get the walk into: a secret file and a directory
/// with the same names as the gear's own.
fn outside(base: &Path) -> PathBuf {
    let out = base.join("host");
    std::fs::create_dir_all(out.join("etc")).expect("mkdir");
    std::fs::write(out.join("secret"), "host secret").expect("write");
    std::fs::write(out.join("etc/passwd"), "root").expect("write");
    for i in 0..20 {
        std::fs::write(out.join(format!("f{i}")), "host").expect("write");
    }
    out
}

/// Walks `root` with no bound that a test would reach, collecting what was visited.
fn visited(root: &Path) -> Vec<(PathBuf, Kind, (u64, u64))> {
    let mut seen = Vec::new();
    walk(root, &LABEL_WALK_LIMITS, &mut |e| {
        seen.push((e.path.to_path_buf(), e.kind, inode_of(e.fd)));
        Ok(())
    })
    .expect("walk");
    seen
}

#[test]
fn the_walk_visits_links_as_links_and_never_leaves_the_tree() {
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let home = base.path().join("home");
    std::fs::create_dir_all(home.join("app/data/deep")).expect("mkdir");
    std::fs::write(home.join("app/data/own"), "own").expect("write");
    symlink(&out, home.join("app/to-host-dir")).expect("symlink");
    symlink(out.join("secret"), home.join("app/data/to-host-file")).expect("symlink");
    symlink("../../..", home.join("app/data/deep/up")).expect("symlink");
    symlink("self", home.join("self")).expect("symlink");
    symlink("b", home.join("a")).expect("symlink");
    symlink("a", home.join("b")).expect("symlink");
    nix::unistd::mkfifo(&home.join("app/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let _socket = std::os::unix::net::UnixListener::bind(home.join("app/sock")).expect("socket");

    let seen = visited(&home);
    let host = inodes_below(&out);
    for (path, _, ino) in &seen {
        assert!(!host.contains(ino), "{} is a host file", path.display());
    }
    let kind = |rel: &str| {
        seen.iter()
            .find(|(p, _, _)| p == &home.join(rel))
            .map(|(_, k, _)| *k)
            .unwrap_or_else(|| panic!("{rel} not visited: {seen:?}"))
    };
    assert_eq!(kind(""), Kind::Dir);
    assert_eq!(kind("app/data/own"), Kind::File);
    for link in [
        "app/to-host-dir",
        "app/data/to-host-file",
        "app/data/deep/up",
        "self",
        "a",
        "b",
    ] {
        assert_eq!(kind(link), Kind::Symlink, "{link}");
    }
    // FIFOs and sockets are visited (opened O_PATH: a FIFO would block an open for reading)
    assert_eq!(kind("app/fifo"), Kind::Other);
    assert_eq!(kind("app/sock"), Kind::Other);
    // each file exactly once: the loops were not followed
    assert_eq!(seen.len(), inodes_below(&home).len(), "{seen:?}");
}

#[test]
fn a_directory_swapped_for_a_link_once_opened_is_still_the_one_walked() {
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let home = base.path().join("home");
    std::fs::create_dir_all(home.join("d/etc")).expect("mkdir");
    std::fs::write(home.join("d/secret"), "own").expect("write");
    std::fs::write(home.join("d/etc/passwd"), "own").expect("write");
    let own = inodes_below(&home.join("d"));
    let mut seen = HashSet::new();
    walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
        // the gear swaps the directory the walk just opened for a link to the host
        if e.path == home.join("d") {
            std::fs::rename(home.join("d"), home.join("d.moved")).expect("rename");
            symlink(&out, home.join("d")).expect("symlink");
        }
        seen.insert(inode_of(e.fd));
        Ok(())
    })
    .expect("walk");
    assert!(
        seen.is_disjoint(&inodes_below(&out)),
        "the walk reached the host"
    );
    // the directory that was opened is the one listed, under whatever name it has now
    assert!(
        own.is_subset(&seen),
        "the gear's own files were all visited"
    );
}

#[test]
fn directories_swapped_for_links_after_the_listing_are_visited_as_links() {
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let home = base.path().join("home");
    let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for n in &names {
        std::fs::create_dir_all(home.join(n)).expect("mkdir");
        std::fs::write(home.join(n).join("secret"), "own").expect("write");
    }
    let mut swapped = false;
    let mut seen = Vec::new();
    walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
        // at the first entry the root's listing is read: the gear now swaps every other
        // directory of it for a link to the host
        if e.depth == 1 && !swapped {
            swapped = true;
            for n in &names {
                let p = home.join(n);
                if p != e.path {
                    std::fs::rename(&p, home.join(format!("{n}.old"))).expect("rename");
                    symlink(&out, &p).expect("symlink");
                }
            }
        }
        seen.push((e.path.to_path_buf(), e.kind, inode_of(e.fd)));
        Ok(())
    })
    .expect("walk");
    let host = inodes_below(&out);
    assert!(seen.iter().all(|(_, _, i)| !host.contains(i)), "{seen:?}");
    let links = seen
        .iter()
        .filter(|(p, k, _)| *k == Kind::Symlink && p.parent() == Some(&*home))
        .count();
    assert_eq!(links, names.len() - 1, "{seen:?}");
}

/// A gear process swapping `d` (a directory whose files are named like the host's) and `x`
/// (a link to the host directory) with RENAME_EXCHANGE as fast as it can, until dropped.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(home: &Path, out: &Path) -> Swapper {
        std::fs::create_dir_all(home.join("d/etc")).expect("mkdir");
        std::fs::write(home.join("d/secret"), "own").expect("write");
        std::fs::write(home.join("d/etc/passwd"), "own").expect("write");
        for i in 0..20 {
            std::fs::write(home.join(format!("d/f{i}")), "own").expect("write");
        }
        symlink(out, home.join("x")).expect("symlink");
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let dir = std::fs::File::open(home).expect("open home");
        let thread = {
            let (stop, swaps) = (stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    nix::fcntl::renameat2(
                        &dir,
                        "d",
                        &dir,
                        "x",
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .expect("exchange");
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Swapper {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("swapper");
        }
    }
}

/// The walk this module had before, by path: `read_dir` of a directory's path, then each
/// entry's path (`lstat`, as `lsetfilecon` resolved it: only the last component is not
/// followed). Returns whether it reached a host file.
fn walk_by_path(root: &Path, host: &HashSet<(u64, u64)>) -> bool {
    let mut reached = false;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                reached |= host.contains(&(m.dev(), m.ino()));
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
            }
        }
    }
    reached
}

#[test]
fn a_racing_swapper_never_gets_the_walk_out_and_does_get_a_walk_by_path_out() {
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let host = inodes_below(&out);
    let home = base.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let swapper = Swapper::start(&home, &out);

    let deadline = Instant::now() + Duration::from_secs(2);
    let mut walks = 0;
    while walks < 20 || Instant::now() < deadline {
        let mut seen = Vec::new();
        walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
            seen.push(inode_of(e.fd));
            Ok(())
        })
        .expect("walk");
        assert!(
            seen.iter().all(|i| !host.contains(i)),
            "walk {walks} reached the host"
        );
        walks += 1;
    }
    let swaps = swapper.swaps();
    assert!(swaps > 100, "the swapper hardly ran ({swaps} swaps)");

    // The negative control: the same swapper against a walk by path gets it out, so the
    // check above can see the race
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut tries, mut lost) = (0u32, 0u32);
    while lost < 3 && Instant::now() < deadline {
        tries += 1;
        lost += u32::from(walk_by_path(&home, &host));
    }
    drop(swapper);
    eprintln!("descriptor walk: {walks} walks, none out; walk by path: out in {lost} of {tries}");
    assert!(
        lost >= 3,
        "the walk by path got out only {lost} times in {tries}"
    );
}

#[test]
fn the_bounds_fail_closed() {
    let base = tempfile::tempdir().expect("tmp");
    let home = base.path().join("home");
    std::fs::create_dir_all(home.join("1/2/3/4/5")).expect("mkdir");
    std::fs::write(home.join("1/2/3/4/5/leaf"), "").expect("write");
    let depth = |max_depth| {
        walk(
            &home,
            &WalkLimits {
                max_depth,
                ..LABEL_WALK_LIMITS
            },
            &mut |_| Ok(()),
        )
    };
    // leaf is 6 levels below the home
    let stats = depth(6).expect("6 levels");
    assert_eq!(stats.visited, 7);
    match depth(5) {
        Err(e @ SelinuxError::TooDeep { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("leaf") && text.contains("not started"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let entries = |max_entries| {
        walk(
            &home,
            &WalkLimits {
                max_entries,
                ..LABEL_WALK_LIMITS
            },
            &mut |_| Ok(()),
        )
    };
    assert!(entries(7).is_ok());
    assert!(matches!(
        entries(6),
        Err(SelinuxError::TooManyEntries { max: 6, .. })
    ));
    let slow = walk(
        &home,
        &WalkLimits {
            max_time: Duration::ZERO,
            ..LABEL_WALK_LIMITS
        },
        &mut |_| Ok(()),
    );
    assert!(
        matches!(slow, Err(SelinuxError::TooSlow { .. })),
        "{slow:?}"
    );
    // a visitor's error ends the walk
    let mut calls = 0;
    let stopped = walk(&home, &LABEL_WALK_LIMITS, &mut |e| {
        calls += 1;
        if e.depth == 2 {
            return Err(SelinuxError::BadLevel("stop".into()));
        }
        Ok(())
    });
    assert!(matches!(stopped, Err(SelinuxError::BadLevel(_))));
    assert_eq!(calls, 3);
}

#[test]
fn a_root_reached_through_a_link_is_refused() {
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    symlink(&out, base.path().join("home")).expect("symlink");
    let err = walk(&base.path().join("home"), &LABEL_WALK_LIMITS, &mut |_| {
        Ok(())
    })
    .expect_err("a link");
    assert!(
        matches!(&err, SelinuxError::Walk { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
        "{err:?}"
    );
}

// ---- labelling and mounts: need root (a `trusted.` attribute, a mount) ----

fn may_run() -> bool {
    crate::testing::privileged("a trusted. attribute, a mount")
}

const TEST_XATTR: &CStr = c"trusted.gearhost-label-test";

/// The test label of a file (links not followed), if any.
fn test_label(path: &Path) -> Option<String> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path");
    // an absolute path: the directory descriptor is not used
    let root = std::fs::File::open("/").expect("root");
    let fd =
        sys::openat2_flags(root.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0).expect("open");
    let mut buf = [0u8; 256];
    sys::fd_getxattr(fd.as_fd(), TEST_XATTR, &mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(trim_nul(&buf[..n])).into_owned())
}

#[test]
fn labelling_reaches_every_file_and_link_itself_and_nothing_outside() {
    if !may_run() {
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let home = base.path().join("home");
    std::fs::create_dir_all(home.join("app/data")).expect("mkdir");
    std::fs::write(home.join("app/data/own"), "own").expect("write");
    symlink(&out, home.join("app/to-host-dir")).expect("symlink");
    symlink(out.join("secret"), home.join("app/data/to-host-file")).expect("symlink");
    nix::unistd::mkfifo(&home.join("app/fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let files = [
        "",
        "app",
        "app/data",
        "app/data/own",
        "app/to-host-dir",
        "app/data/to-host-file",
        "app/fifo",
    ];

    let stats = label_tree_with(&home, "level-a", TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
    assert_eq!((stats.visited, stats.relabelled), (7, 7));
    for f in files {
        assert_eq!(test_label(&home.join(f)).as_deref(), Some("level-a"), "{f}");
    }
    for f in ["", "secret", "etc", "etc/passwd"] {
        assert_eq!(test_label(&out.join(f)), None, "host file {f} was labelled");
    }
    // a warm start writes nothing; a file at another level is put back
    let stats = label_tree_with(&home, "level-a", TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
    assert_eq!(stats.relabelled, 0);
    let own = std::fs::File::open(home.join("app/data/own")).expect("open");
    sys::fd_setxattr(own.as_fd(), TEST_XATTR, b"level-b\0").expect("set");
    let stats = label_tree_with(&home, "level-a", TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
    assert_eq!(stats.relabelled, 1);
    assert_eq!(
        test_label(&home.join("app/data/own")).as_deref(),
        Some("level-a")
    );
}

#[test]
fn labelling_against_a_racing_swapper_never_labels_a_host_file() {
    if !may_run() {
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let home = base.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    let swapper = Swapper::start(&home, &out);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut walks = 0;
    while walks < 20 || Instant::now() < deadline {
        // a new level each time, so every walk writes every label
        let level = format!("level-{walks}");
        label_tree_with(&home, &level, TEST_XATTR, &LABEL_WALK_LIMITS).expect("label");
        walks += 1;
    }
    let swaps = swapper.swaps();
    drop(swapper);
    assert!(swaps > 100, "the swapper hardly ran ({swaps} swaps)");
    let mut host = vec![out.clone()];
    while let Some(p) = host.pop() {
        assert_eq!(test_label(&p), None, "{} was labelled", p.display());
        if p.is_dir() && !p.is_symlink() {
            host.extend(
                std::fs::read_dir(&p)
                    .expect("read")
                    .map(|e| e.expect("e").path()),
            );
        }
    }
    // and the gear's own files were labelled, under whichever name the directory had
    let own = ["d", "x"]
        .iter()
        .map(|n| home.join(n))
        .find(|p| !p.is_symlink())
        .expect("the directory");
    for f in ["", "secret", "etc", "etc/passwd", "f0", "f19"] {
        let label = test_label(&own.join(f));
        assert!(
            label.as_deref().is_some_and(|l| l.starts_with("level-")),
            "{f}: {label:?}"
        );
    }
}

#[test]
fn mount_points_are_neither_labelled_nor_entered() {
    if !may_run() {
        return;
    }
    let base = tempfile::tempdir().expect("tmp");
    let out = outside(base.path());
    let home = base.path().join("home");
    std::fs::create_dir_all(home.join("app/peer")).expect("mkdir");
    std::fs::write(home.join("app/own"), "own").expect("write");
    // in a mount namespace of this thread's own, so nothing is left behind on the host
    let (home2, out2) = (home.clone(), out.clone());
    let (seen, stats) = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make private");
        nix::mount::mount(
            Some(&out2),
            &home2.join("app/peer"),
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        let mut seen = HashSet::new();
        let stats = walk(&home2, &LABEL_WALK_LIMITS, &mut |e| {
            seen.insert(e.path.to_path_buf());
            Ok(())
        })
        .expect("walk");
        (seen, stats)
    })
    .join()
    .expect("thread");
    assert_eq!(stats.mounts, 1);
    assert!(!seen.contains(&home.join("app/peer")));
    assert!(seen.iter().all(|p| !p.starts_with(home.join("app/peer"))));
    assert!(seen.contains(&home.join("app/own")));
}
