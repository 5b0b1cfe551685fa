//! Unit tests of the cgroup module: mountinfo parsing, the layout, limits.

use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

fn placement() -> CgroupPlacement {
    CgroupPlacement {
        subtree: "gearhost".into(),
        leaf: "g1".into(),
    }
}

#[test]
fn hybrid_layout_uses_v1_controllers() {
    let m = parse_mountinfo(HYBRID).expect("parse");
    assert_eq!(m.layout, CgroupLayout::Hybrid);
    assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    let paths = gear_paths(&m, &placement());
    assert_eq!(
        paths["memory"],
        PathBuf::from("/sys/fs/cgroup/memory/gearhost/g1")
    );
    assert_eq!(
        paths["cpu"],
        PathBuf::from("/sys/fs/cgroup/cpu/gearhost/g1")
    );
    assert_eq!(paths.len(), 5);
    assert!(!paths.contains_key("unified"));
}

#[test]
fn shared_cpu_hierarchy_is_joined_once() {
    let text = "1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                2 0 0:2 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                3 0 0:3 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
    let m = parse_mountinfo(text).expect("parse");
    assert_eq!(m.layout, CgroupLayout::V1);
    let paths = gear_paths(&m, &placement());
    assert_eq!(paths.len(), 3);
    let cg = GearCgroup {
        layout: m.layout,
        dirs: paths,
    };
    assert_eq!(cg.dir_for("cpu"), cg.dir_for("cpuacct"));
}

#[test]
fn pure_v2_layout() {
    let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
    let m = parse_mountinfo(text).expect("parse");
    assert_eq!(m.layout, CgroupLayout::V2);
    let paths = gear_paths(&m, &placement());
    assert_eq!(
        paths["unified"],
        PathBuf::from("/sys/fs/cgroup/gearhost/g1")
    );
}

#[test]
fn no_cgroups_is_an_error() {
    assert!(matches!(
        parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
        Err(CgroupError::NotMounted)
    ));
}

#[test]
fn mountinfo_escapes_are_decoded() {
    assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
}

#[test]
fn stat_values_are_found() {
    assert_eq!(
        stat_value("nr_periods 10\nnr_throttled 4\n", "nr_throttled"),
        Some(4)
    );
    assert_eq!(
        stat_value("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
        Some(2)
    );
}

#[test]
fn a_gear_group_holds_one_leaf_per_start() {
    assert_eq!(group_path("gearhost", "g1"), "gearhost/g1");
    let service = leaf_placement("gearhost", "g1", &process_leaf("g1", "web", 7));
    assert_eq!(service.subtree, "gearhost/g1");
    assert_eq!(service.leaf, "g1-web-7");
    assert_eq!(group_of(&service), Some(("gearhost", "g1")));
    let exec = leaf_placement("nodes/a", "g2", &exec_leaf("g2", 3));
    assert_eq!(exec.leaf, "g2-x3");
    // a nested node subtree keeps its own slashes
    assert_eq!(group_of(&exec), Some(("nodes/a", "g2")));
    // a placement straight below the roots has no group
    assert_eq!(group_of(&placement()), None);
    // the names pass the spec's checks
    let mut spec = crate::SandboxSpec::new("g1", 5001, 5001, "/tmp", vec!["/bin/true".into()]);
    spec.cgroup = service;
    spec.validate().expect("valid placement");
}

#[test]
fn the_leaf_lands_under_every_root() {
    let m = parse_mountinfo(HYBRID).expect("parse");
    let paths = gear_paths(&m, &leaf_placement("gearhost", "g1", "g1-web-0"));
    assert_eq!(
        paths["pids"],
        PathBuf::from("/sys/fs/cgroup/pids/gearhost/g1/g1-web-0")
    );
}

#[test]
fn roots_are_listed_once_per_hierarchy() {
    let text = "1 0 0:1 / /cg/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                2 0 0:2 / /cg/memory rw - cgroup cgroup rw,memory\n\
                3 0 0:3 / /cg/unified rw - cgroup2 cgroup2 rw\n";
    let m = parse_mountinfo(text).expect("parse");
    assert_eq!(
        roots(&m),
        vec![
            PathBuf::from("/cg/cpu,cpuacct"),
            PathBuf::from("/cg/memory")
        ]
    );
    let v2 =
        parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").expect("parse");
    assert_eq!(roots(&v2), vec![PathBuf::from("/sys/fs/cgroup")]);
}

#[test]
fn legacy_leaves_are_found_by_gear_across_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (memory, pids) = (dir.path().join("memory"), dir.path().join("pids"));
    for made in [
        memory.join("gearhost/g1-web-0"),
        memory.join("gearhost/g1-x4"),
        pids.join("gearhost/g1-web-0"),
        pids.join("gearhost/g12-web-0"),
        pids.join("gearhost/g1"),
        memory.join("gearhost/g2-web-1"),
    ] {
        std::fs::create_dir_all(made).expect("mkdir");
    }
    // a control file that happens to share the prefix is not a cgroup
    std::fs::write(pids.join("gearhost/g1-notes"), "").expect("write");
    let mounts = CgroupMounts {
        layout: CgroupLayout::V1,
        v1: BTreeMap::from([
            ("memory".to_string(), memory.clone()),
            ("pids".to_string(), pids.clone()),
        ]),
        v2: None,
    };
    let found: Vec<String> = legacy_leaves(&mounts, "gearhost", "g1")
        .into_iter()
        .collect();
    assert_eq!(found, ["g1-web-0", "g1-x4"]);
    assert!(legacy_leaves(&mounts, "elsewhere", "g1").is_empty());
}

#[test]
fn proc_cgroup_lines_are_parsed() {
    let text = "12:pids:/user.slice\n\
                4:cpu,cpuacct:/user.slice/session-3.scope\n\
                1:name=systemd:/user.slice/session-3.scope\n\
                not a line\n\
                0::/user.slice/user-0.slice/session-3.scope\n";
    let groups = parse_proc_cgroup(text);
    assert_eq!(groups.len(), 4);
    assert_eq!(
        groups[1],
        ProcCgroup {
            hierarchy: 4,
            controllers: vec!["cpu".into(), "cpuacct".into()],
            path: "/user.slice/session-3.scope".into(),
        }
    );
    assert_eq!(groups[3].hierarchy, 0);
    assert!(groups[3].controllers.is_empty());
    // hybrid: pids from its v1 hierarchy, memory (not in the text) nowhere on v1, so v2
    let m = parse_mountinfo(HYBRID).expect("parse");
    assert_eq!(
        process_dir(&m, &groups, "pids"),
        Some(PathBuf::from("/sys/fs/cgroup/pids/user.slice"))
    );
    assert_eq!(
        process_dir(&m, &groups, "cpu"),
        Some(PathBuf::from(
            "/sys/fs/cgroup/cpu/user.slice/session-3.scope"
        ))
    );
    assert_eq!(
        process_dir(&m, &groups, "memory"),
        Some(PathBuf::from(
            "/sys/fs/cgroup/unified/user.slice/user-0.slice/session-3.scope"
        ))
    );
    let v2 =
        parse_mountinfo("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n").expect("parse");
    assert_eq!(
        process_dir(&v2, &groups, "pids"),
        Some(PathBuf::from(
            "/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope"
        ))
    );
}

#[test]
fn this_process_has_cgroups() {
    let groups = cgroups_of(std::process::id()).expect("own cgroups");
    assert!(!groups.is_empty());
    assert!(groups.iter().all(|g| g.path.starts_with('/')));
}

#[test]
fn available_memory_is_read_from_meminfo() {
    let text = "MemTotal:       16318412 kB\nMemFree:         1190436 kB\nMemAvailable:    9336392 kB\nBuffers:          512 kB\n";
    assert_eq!(parse_mem_available(text), Some(9_336_392 * 1024));
    assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
}

/// A real process in a real cgroup is frozen (it stops counting), keeps its pid and memory,
/// runs again once thawed, and a frozen cgroup is torn down (on v1 its tasks must be thawed
/// for SIGKILL to land).
#[test]
fn a_frozen_group_stops_running_and_thaws_where_it_was() {
    if !crate::testing::privileged("the cgroup freezer") {
        return;
    }
    let mounts = detect().expect("cgroups");
    let subtree = format!("gearhost-freeze-test-{}", std::process::id());
    let limits = Limits::default();
    ensure_group(&mounts, &subtree, "g", &limits).expect("group");
    let leaf = leaf_placement(&subtree, "g", "g-web-1");
    let (cg, _) = GearCgroup::create(&mounts, &leaf, &limits).expect("leaf");
    // a shell that counts in a file as fast as it can, placed in the leaf
    let dir = std::env::temp_dir().join(&subtree);
    std::fs::create_dir_all(&dir).expect("dir");
    let counter = dir.join("n");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while true; do i=$((i+1)); echo $i > {}; done",
            counter.display()
        ))
        .spawn()
        .expect("spawn");
    for f in cg.procs_files() {
        std::fs::write(&f, child.id().to_string()).expect("join");
    }
    // the shell rewrites the file: a read may find it just emptied
    let read = || {
        for _ in 0..1000 {
            if let Some(n) = std::fs::read_to_string(&counter)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                return n;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        0
    };
    assert!(read() > 0, "the shell counts");
    freeze_gear(&subtree, "g", Duration::from_secs(5)).expect("freeze");
    assert!(gear_frozen(&subtree, "g"));
    let group = gear_group(&mounts, &subtree, "g");
    assert_eq!(group.freezer_state(), Some(FreezerState::Frozen));
    let at = read();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(read(), at, "a frozen process does not run");
    assert!(gear_memory(&subtree, "g").is_some_and(|m| m > 0));
    assert_eq!(cg.pids(), vec![child.id() as i32], "the same process, kept");
    thaw_gear(&subtree, "g").expect("thaw");
    assert!(!gear_frozen(&subtree, "g"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(read() > at, "a thawed process runs on");
    // frozen again, then torn down while frozen
    freeze_gear(&subtree, "g", Duration::from_secs(5)).expect("freeze again");
    let done = remove_group(&subtree, "g").expect("teardown of a frozen group");
    assert!(done.killed >= 1);
    let _ = child.wait();
    remove_subtree(&subtree).expect("subtree");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The v2 freezer on this machine's cgroup2 mount, whichever layout the gears use: a v2
/// cgroup freezes (`cgroup.events` says `frozen 1`) and thaws.
#[test]
fn the_v2_freezer_freezes_and_thaws() {
    if !crate::testing::privileged("the cgroup v2 freezer") {
        return;
    }
    let mounts = detect().expect("cgroups");
    let Some(root) = mounts.v2.clone() else {
        eprintln!("no cgroup2 mount: nothing to test");
        return;
    };
    let dir = root.join(format!("gearhost-freeze-v2-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("cgroup");
    if !dir.join("cgroup.freeze").exists() {
        let _ = std::fs::remove_dir(&dir);
        eprintln!("this kernel has no v2 freezer: nothing to test");
        return;
    }
    let cg = GearCgroup {
        layout: CgroupLayout::V2,
        dirs: [("unified".to_string(), dir.clone())].into(),
    };
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn");
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("join");
    assert_eq!(cg.freezer_state(), Some(FreezerState::Thawed));
    cg.freeze(Duration::from_secs(5)).expect("freeze");
    assert_eq!(cg.freezer_state(), Some(FreezerState::Frozen));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    assert!(status.contains("State:"), "/proc of a frozen task reads");
    cg.thaw().expect("thaw");
    assert_eq!(cg.freezer_state(), Some(FreezerState::Thawed));
    // v2: SIGKILL reaches a frozen task
    cg.freeze(Duration::from_secs(5)).expect("freeze");
    child.kill().expect("kill");
    let _ = child.wait();
    cg.teardown(Duration::from_secs(5)).expect("teardown");
}
