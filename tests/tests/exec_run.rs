//! End to end: `gear exec` is `run`. A command whose client goes away is
//! ended by the node, `gear stop` and `gear restart` leave none of its
//! commands running, and the command gets the app's environment: the same
//! layers, with the same precedence, as the app's processes and
//! `gear env list`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, json, privileged, processes_of};

fn example(name: &str) -> String {
    let dir: PathBuf = gearhost_tests::workspace_root().join("examples").join(name);
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir.to_str().expect("utf-8 path").to_string()
}

/// A node with the python cartridge installed (its apps here need no
/// package index: python-hello has no requirements).
fn python_node(uid_min: u32, extra: &str) -> (TestNode, tempfile::TempDir) {
    // each test here has 100 uids of the range 75000-75999
    let node = TestNode::start_with_uids(uid_min, 100, &format!("start-timeout = \"20s\"{extra}"));
    let cartridge = cartridge_dir("python-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        cartridge.path().to_str().expect("utf-8"),
    ]);
    (node, cartridge)
}

fn uid_of(node: &TestNode, gear: &str) -> u32 {
    json(&node.ok(&["show", gear, "--json"]))["uid"]
        .as_u64()
        .expect("uid") as u32
}

/// `gear exec GEAR -- ARGV` in the background, its stdio away from ours.
fn exec_in_background(node: &TestNode, gear: &str, argv: &[&str]) -> Child {
    // `gear exec` keeps a signal ignored when it was started so, as a background job's
    // programs should: started from a shell's background job or `nohup` (as CI may be),
    // it would never see the signals sent to it here
    Command::new("env")
        .arg("--default-signal=HUP,INT,QUIT,TERM")
        .arg(gear_bin())
        .args(["exec", gear, "--"])
        .args(argv)
        .env("GEARHOST_SOCKET", &node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run gear exec")
}

/// The processes of `uid` whose command line contains `marker`.
fn marked(uid: u32, marker: &str) -> Vec<String> {
    processes_of(uid)
        .into_iter()
        .filter(|p| p.contains(marker))
        .collect()
}

/// Wait until `check` holds, at most `within`.
fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send `signal` (`INT`, `TERM`, `KILL`) to a child not yet reaped.
fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} {}", child.id());
}

#[test]
fn an_exec_whose_client_goes_away_is_ended() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let (node, _cartridge) = python_node(75000, "");
    node.ok(&["create", "loop", "--cartridge", "python"]);
    let uid = uid_of(&node, "loop");
    // interrupted (^C, `timeout -s INT`), terminated, and gone without a
    // word (killed: its connection closes)
    for how in ["INT", "TERM", "KILL"] {
        let marker = format!("exec-{how}-marker");
        let mut client = exec_in_background(
            &node,
            "loop",
            &["sh", "-c", "while :; do sleep 1; done", &marker],
        );
        assert!(
            wait_until(Duration::from_secs(10), || !marked(uid, &marker).is_empty()),
            "the command never ran: {:?}\nnode log:\n{}",
            processes_of(uid),
            node.log()
        );
        signal(&client, how);
        let _ = client.wait();
        let gone = wait_until(Duration::from_secs(5), || processes_of(uid).is_empty());
        assert!(
            gone,
            "after SIG{how} to `gear exec`, the gear still runs {:?}",
            processes_of(uid)
        );
    }
    // on a terminal (the command gets one of its own in the gear) the same
    let command = format!(
        "timeout --foreground -s TERM 2 {} exec loop -- sh -c 'while :; do echo tick; sleep 1; done' terminal-marker",
        gear_bin().display()
    );
    let (code, text) =
        gearhost_tests::on_terminal(&command, &[("GEARHOST_SOCKET", node.socket.as_os_str())]);
    assert_eq!(code, Some(124), "timeout ended gear: {text}");
    assert!(
        text.contains("tick"),
        "the command ran on the terminal: {text:?}"
    );
    let gone = wait_until(Duration::from_secs(5), || processes_of(uid).is_empty());
    assert!(
        gone,
        "after SIGTERM to `gear exec` on a terminal, the gear still runs {:?}",
        processes_of(uid)
    );

    // a command that ends by itself still reports its status, and what it
    // started in the background goes with it, its output passed on
    let out = node.gear(&["exec", "loop", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = node.ok(&[
        "exec",
        "loop",
        "--",
        "sh",
        "-c",
        "(echo from-behind; sleep 1000) & echo started; sleep 0.2",
    ]);
    assert!(
        out.contains("started") && out.contains("from-behind"),
        "{out}"
    );
    assert!(
        processes_of(uid).is_empty(),
        "a finished exec left {:?}",
        processes_of(uid)
    );
}

#[test]
fn stop_and_restart_end_exec_commands() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let (node, _cartridge) = python_node(75100, "");
    node.ok(&["create", "app", "--cartridge", "python"]);
    node.ok(&["deploy", "app", &example("python-hello")]);
    let uid = uid_of(&node, "app");

    // a restart ends the command; the app comes back
    let mut first = exec_in_background(
        &node,
        "app",
        &["sh", "-c", "sleep 1000; :", "restart-marker"],
    );
    assert!(wait_until(Duration::from_secs(10), || !marked(
        uid,
        "restart-marker"
    )
    .is_empty()));
    node.ok(&["restart", "app"]);
    assert!(
        marked(uid, "restart-marker").is_empty(),
        "the exec'd command survived `gear restart`: {:?}",
        processes_of(uid)
    );
    assert!(!processes_of(uid).is_empty(), "the app is running again");
    let status = first.wait().expect("gear exec ends");
    assert!(!status.success(), "{status}");

    // so does `gear idle --stop`
    let mut idled = exec_in_background(&node, "app", &["sh", "-c", "sleep 1000; :", "idle-marker"]);
    assert!(wait_until(Duration::from_secs(10), || !marked(
        uid,
        "idle-marker"
    )
    .is_empty()));
    node.ok(&["idle", "--stop", "app"]);
    assert!(
        processes_of(uid).is_empty(),
        "`gear idle --stop` left {:?}",
        processes_of(uid)
    );
    let _ = idled.wait();
    node.ok(&["unidle", "app"]);

    // a stop leaves no process of the gear at all
    let mut second =
        exec_in_background(&node, "app", &["sh", "-c", "sleep 1000; :", "stop-marker"]);
    assert!(wait_until(Duration::from_secs(10), || !marked(
        uid,
        "stop-marker"
    )
    .is_empty()));
    node.ok(&["stop", "app"]);
    assert!(
        processes_of(uid).is_empty(),
        "`gear stop` left {:?}",
        processes_of(uid)
    );
    let _ = second.wait();

    // and so does stopping a gear that is stopped already
    let mut third = exec_in_background(
        &node,
        "app",
        &["sh", "-c", "sleep 1000; :", "stopped-marker"],
    );
    assert!(wait_until(Duration::from_secs(10), || !marked(
        uid,
        "stopped-marker"
    )
    .is_empty()));
    let again = node.ok(&["stop", "app"]);
    assert!(
        processes_of(uid).is_empty(),
        "`gear stop` of a stopped gear left {:?} ({again})",
        processes_of(uid)
    );
    let _ = third.wait();
}

/// The environment of the first process of `uid` whose command line
/// contains `marker`, from /proc.
fn environ_of(uid: u32, marker: &str) -> BTreeMap<String, String> {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let path = entry.path();
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let owner = std::fs::metadata(&path).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        if owner.ok() == Some(uid) && cmdline.contains(marker) {
            let environ = std::fs::read(path.join("environ")).unwrap_or_default();
            return environ
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect();
        }
    }
    panic!("no process of {uid} runs {marker}: {:?}", processes_of(uid));
}

/// What `gear exec GEAR -- env` prints, as a map.
fn exec_env(node: &TestNode, gear: &str) -> BTreeMap<String, String> {
    node.ok(&["exec", gear, "--", "env"])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn exec_gets_the_apps_environment_and_env_list_shows_it() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let (node, _cartridge) = python_node(75200, "");
    node.ok(&["create", "hello", "--cartridge", "python"]);
    node.ok(&["deploy", "hello", &example("python-hello")]);
    let uid = uid_of(&node, "hello");
    let venv = "/gear/app-root/runtime/venv";

    let seen = exec_env(&node, "hello");
    assert_eq!(
        seen.get("PORT").map(String::as_str),
        Some("8080"),
        "{seen:?}"
    );
    assert_eq!(seen.get("VIRTUAL_ENV").map(String::as_str), Some(venv));
    assert!(
        seen["PATH"].starts_with(&format!("{venv}/bin:")),
        "{}",
        seen["PATH"]
    );
    // the virtualenv's programs are found by name
    let python = node.ok(&["exec", "hello", "--", "sh", "-c", "command -v python"]);
    assert_eq!(python.trim(), format!("{venv}/bin/python"));
    let version = node.ok(&[
        "exec",
        "hello",
        "--",
        "python",
        "-c",
        "import sys; print(sys.prefix)",
    ]);
    assert_eq!(version.trim(), venv);

    // the app's process has exactly what exec has (but what the sandbox
    // and the shell add for themselves)
    let app = environ_of(uid, "app.py");
    for key in [
        "PORT",
        "VIRTUAL_ENV",
        "PATH",
        "PYTHONUNBUFFERED",
        "GEAR_NAME",
        "LANG",
    ] {
        assert_eq!(
            app.get(key),
            seen.get(key),
            "{key}: app {app:?}\nexec {seen:?}"
        );
    }

    // env list shows each of them with its layer, and the same effective values
    let listed = json(&node.ok(&["env", "hello", "list", "--json"]));
    assert_eq!(listed["layers"]["process"]["PORT"], "8080", "{listed}");
    assert_eq!(listed["layers"]["process"]["VIRTUAL_ENV"], venv);
    for key in ["PORT", "VIRTUAL_ENV", "PATH", "PYTHONUNBUFFERED"] {
        assert_eq!(
            listed["effective"][key].as_str(),
            seen.get(key).map(String::as_str),
            "{key}"
        );
    }
    let text = node.ok(&["env", "hello", "list"]);
    assert!(text.contains("PORT=8080  (process)"), "{text}");
    assert!(
        text.contains(&format!("VIRTUAL_ENV={venv}  (process)")),
        "{text}"
    );

    // a stopped gear's commands get the same environment (a migration runs
    // with the app down)
    node.ok(&["stop", "hello"]);
    let stopped = exec_env(&node, "hello");
    for key in ["PORT", "VIRTUAL_ENV", "PATH"] {
        assert_eq!(stopped.get(key), seen.get(key), "{key}");
    }
}

#[test]
fn the_users_variables_win_everywhere_and_port_is_refused() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let (node, _cartridge) = python_node(75300, "");
    node.ok(&["create", "hello", "--cartridge", "python"]);
    node.ok(&["deploy", "hello", &example("python-hello")]);
    let uid = uid_of(&node, "hello");

    // PORT is the cartridge's, tied to the port the frontend forwards to:
    // refused, saying why, and nothing changes
    let refused = node.gear(&["env", "hello", "set", "PORT=9000"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("PORT") && why.contains("frontend forwards to"),
        "{why}"
    );
    let listed = json(&node.ok(&["env", "hello", "list", "--json"]));
    assert!(listed["layers"]["user"].get("PORT").is_none(), "{listed}");
    assert_eq!(listed["effective"]["PORT"], "8080");

    // a variable the cartridge gives the app, set by the user: the user's
    // value wins in the app, in exec and in env list alike
    node.ok(&["env", "hello", "set", "PYTHONUNBUFFERED=2"]);
    node.ok(&["restart", "hello"]);
    let app = environ_of(uid, "app.py");
    assert_eq!(
        app.get("PYTHONUNBUFFERED").map(String::as_str),
        Some("2"),
        "{app:?}"
    );
    let seen = exec_env(&node, "hello");
    assert_eq!(seen.get("PYTHONUNBUFFERED").map(String::as_str), Some("2"));
    let listed = json(&node.ok(&["env", "hello", "list", "--json"]));
    assert_eq!(listed["effective"]["PYTHONUNBUFFERED"], "2", "{listed}");
    assert_eq!(listed["layers"]["user"]["PYTHONUNBUFFERED"], "2");
    assert_eq!(listed["layers"]["process"]["PYTHONUNBUFFERED"], "1");
    let text = node.ok(&["env", "hello", "list"]);
    assert!(text.contains("PYTHONUNBUFFERED=2  (user)"), "{text}");
    assert!(
        text.contains("# PYTHONUNBUFFERED=1  (process, overridden by user)"),
        "{text}"
    );
    // and the app still answers: its port is the cartridge's
    let (code, body) = node.http_get("hello-default", "/");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn nodejs_runs_in_production_unless_the_user_says_otherwise() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start_with_uids(75400, 100, "start-timeout = \"20s\"");
    let cartridge = cartridge_dir("nodejs-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        cartridge.path().to_str().expect("utf-8"),
    ]);
    node.ok(&["create", "app", "--cartridge", "nodejs"]);
    node.ok(&["deploy", "app", &example("node-hello")]);
    let uid = uid_of(&node, "app");

    let seen = exec_env(&node, "app");
    assert_eq!(
        seen.get("NODE_ENV").map(String::as_str),
        Some("production"),
        "{seen:?}"
    );
    assert_eq!(seen.get("PORT").map(String::as_str), Some("8080"));
    let app = environ_of(uid, "server.js");
    assert_eq!(app.get("NODE_ENV").map(String::as_str), Some("production"));

    node.ok(&["env", "app", "set", "NODE_ENV=development"]);
    node.ok(&["restart", "app"]);
    let app = environ_of(uid, "server.js");
    assert_eq!(
        app.get("NODE_ENV").map(String::as_str),
        Some("development"),
        "{app:?}"
    );
    let seen = exec_env(&node, "app");
    assert_eq!(
        seen.get("NODE_ENV").map(String::as_str),
        Some("development")
    );
    let listed = json(&node.ok(&["env", "app", "list", "--json"]));
    assert_eq!(listed["effective"]["NODE_ENV"], "development", "{listed}");
    assert_eq!(listed["layers"]["process"]["NODE_ENV"], "production");
}

#[test]
fn the_apps_own_programs_run_by_name() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let egress = gearhost_tests::package_index_egress();
    if egress.is_empty() {
        eprintln!("skipped: no package index resolves, and python-wsgi needs gunicorn from one");
        return;
    }
    let (node, _cartridge) = python_node(75500, &egress);
    node.ok(&["create", "wsgi", "--cartridge", "python"]);
    node.ok(&["deploy", "wsgi", &example("python-wsgi")]);
    // what requirements.txt installed is on the app's PATH, as the user
    // guide shows
    let version = node.ok(&["exec", "wsgi", "--", "gunicorn", "--version"]);
    assert!(version.contains("gunicorn"), "{version}");
    let imported = node.ok(&[
        "exec",
        "wsgi",
        "--",
        "python",
        "-c",
        "import gunicorn, os; print(os.environ['PORT'])",
    ]);
    assert_eq!(imported.trim(), "8080");
}

#[test]
fn the_idler_leaves_a_gear_alone_while_an_exec_command_runs() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let (node, _cartridge) = python_node(75600, "\nidle-timeout = \"2s\"");
    node.ok(&["create", "hello", "--cartridge", "python"]);
    node.ok(&["deploy", "hello", &example("python-hello")]);
    let uid = uid_of(&node, "hello");
    let state = || json(&node.ok(&["show", "hello", "--json"]))["state"].clone();

    let mut client = exec_in_background(
        &node,
        "hello",
        &["sh", "-c", "sleep 1000; :", "idler-marker"],
    );
    assert!(wait_until(Duration::from_secs(10), || !marked(
        uid,
        "idler-marker"
    )
    .is_empty()));
    // well past the idle timeout without a request: the command and the app run on
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(state(), "running");
    assert!(
        !marked(uid, "idler-marker").is_empty(),
        "{:?}",
        processes_of(uid)
    );

    // once the command is gone, the gear idles after the timeout
    signal(&client, "INT");
    let _ = client.wait();
    assert!(
        wait_until(Duration::from_secs(10), || state() == "idle"),
        "the gear never idled: {}",
        state()
    );
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
}
