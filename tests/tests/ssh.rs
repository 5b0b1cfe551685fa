//! End to end through the node's ssh endpoint: a real OpenSSH sshd run by
//! the node on a loopback port, the real `ssh` and `git` clients, and two
//! users with keys of their own. A push deploys and the app answers; a push
//! whose build fails is refused with the reason while the old deployment
//! keeps answering; an unknown key is refused; one user cannot push to or
//! exec into the other's gear; a shell in a gear gets a terminal; two
//! pushes at once both end cleanly, one after the other.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, free_port, privileged};

/// The login account of this test's endpoint (its own, so that tests and
/// machines do not share one).
const ACCOUNT: &str = "gh-ssh-80800";

/// A state directory outside /tmp (sshd trusts no program under a directory
/// others may write), removed at the end.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        let path = PathBuf::from(format!(
            "/var/lib/gearhost-tests/ssh-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("state dir");
        StateDir(path)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client key pair in `dir`: the private key's path and the public line.
fn key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@laptop"))
        .arg("-f")
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public)
}

/// What `ssh` and git's ssh are run with: the key, no known-hosts file, no
/// questions.
fn ssh_options(key: &Path, port: u16) -> Vec<String> {
    [
        "-p",
        &port.to_string(),
        "-i",
        &key.display().to_string(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Client {
    key: PathBuf,
    port: u16,
}

impl Client {
    /// `ssh gear@127.0.0.1 ARGS`.
    fn ssh(&self, extra: &[&str], command: &str) -> Output {
        Command::new("ssh")
            .args(ssh_options(&self.key, self.port))
            .args(extra)
            .arg(format!("{ACCOUNT}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("ssh")
    }

    /// `git ARGS` in `dir`, its ssh with this key.
    fn git(&self, dir: &Path, args: &[&str]) -> Output {
        let ssh = format!("ssh {}", ssh_options(&self.key, self.port).join(" "));
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_SSH_COMMAND", ssh)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .stdin(Stdio::null())
            .output()
            .expect("git")
    }

    fn url(&self, repo: &str) -> String {
        format!("ssh://{ACCOUNT}@127.0.0.1:{}/{repo}", self.port)
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Write `files` into the work tree `dir` and commit them.
fn commit(client: &Client, dir: &Path, files: &[(&str, &str)], message: &str) {
    use std::os::unix::fs::PermissionsExt;
    for (path, contents) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, contents).expect("write");
        if path.starts_with(".gear/") {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    for args in [&["add", "-A"][..], &["commit", "-q", "-m", message]] {
        let out = client.git(dir, args);
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
    }
}

/// A diy app that serves `page`.
fn app(page: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            ".gear/start",
            "#!/bin/sh\nexec python3 -m http.server --bind 127.0.0.1 \"$PORT\"\n".to_string(),
        ),
        ("index.html", format!("{page}\n")),
    ]
}

fn serves(node: &TestNode, label: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get(label, "/");
        if code == 200 && body.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{label} answered {code} {body:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn push_to_deploy_and_ssh_into_gears_as_their_owners_only() {
    if !privileged("the node runs sshd and makes its login account") {
        return;
    }
    let state = StateDir::new();
    let port = free_port();
    let node = TestNode::start_shared_in(
        &state.0,
        80800,
        &format!("[ssh]\nlisten = \"127.0.0.1:{port}\"\nuser = \"{ACCOUNT}\"\n"),
        "max-deploy-size = \"2MiB\"\n",
    );
    let _carts: Vec<_> = ["diy-cartridge", "python-cartridge"]
        .iter()
        .map(|p| {
            let dir = cartridge_dir(p);
            node.ok(&["cartridge", "install", dir.path().to_str().expect("utf-8")]);
            dir
        })
        .collect();
    let keys = tempfile::tempdir().expect("keys");
    let (ada_key, ada_pub) = key(keys.path(), "ada");
    let (bob_key, bob_pub) = key(keys.path(), "bob");
    let (stranger_key, _) = key(keys.path(), "stranger");
    for (user, public) in [("ssh-ada", &ada_pub), ("ssh-bob", &bob_pub)] {
        let file = keys.path().join(format!("{user}.pub"));
        std::fs::write(&file, public).expect("write");
        let out = node.ok(&["keys", "add", "--user", user, file.to_str().expect("utf-8")]);
        assert!(out.contains("SHA256:"), "{out}");
    }
    // a key that is not one is refused with the reason, and nothing is kept
    let bad = keys.path().join("bad.pub");
    std::fs::write(&bad, "ssh-ed25519 AAAA!!!! x\n").expect("write");
    let out = node.gear(&[
        "keys",
        "add",
        "--user",
        "ssh-ada",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not base64"),
        "{out:?}"
    );
    let listed = node.ok(&["keys", "list", "--all"]);
    assert_eq!(listed.matches("SHA256:").count(), 2, "{listed}");

    let ada = Client { key: ada_key, port };
    let bob = Client { key: bob_key, port };
    let stranger = Client {
        key: stranger_key,
        port,
    };
    // sshd comes up beside the node
    let deadline = Instant::now() + Duration::from_secs(20);
    let whoami = loop {
        let out = ada.ssh(&[], "whoami");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not let ada in: {}\nnode log:\n{}",
            text(&out),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(whoami.starts_with("ssh-ada "), "{whoami}");
    assert!(whoami.contains("namespaces: ssh-ada"), "{whoami}");

    // no local user can pose as a key's owner: not an ordinary one naming
    // a user, not a process of the login account outside sshd's sessions,
    // and the login account by itself may only look keys up
    for (account, claim, wants) in [
        (
            "nobody",
            "ssh-ada",
            "only the node's ssh endpoint may act for another user",
        ),
        (
            ACCOUNT,
            "ssh-ada",
            "must come from a session of the node's ssh endpoint",
        ),
        (ACCOUNT, "", "may only look up keys"),
    ] {
        let out = Command::new("runuser")
            .args(["-u", account, "--"])
            .arg(gearhost_tests::gear_bin())
            .args(["list"])
            .env("GEARHOST_SOCKET", node.socket())
            .env("GEARHOST_SSH_USER", claim)
            .output()
            .expect("runuser");
        assert!(!out.status.success(), "{account}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(wants),
            "{account}: {}",
            text(&out)
        );
    }

    // an unknown key gets nowhere
    let out = stranger.ssh(&[], "list");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out)
    );

    // ada makes a gear and pushes to it
    let out = ada.ssh(&[], "create app --cartridge diy");
    assert!(out.status.success(), "{}", text(&out));
    let work = tempfile::tempdir().expect("work tree");
    let out = ada.git(work.path(), &["init", "-q", "-b", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    let first: Vec<(&str, String)> = app("first release");
    let files: Vec<(&str, &str)> = first.iter().map(|(p, c)| (*p, c.as_str())).collect();
    commit(&ada, work.path(), &files, "first");
    let began = Instant::now();
    let out = ada.git(
        work.path(),
        &["push", "-q", &ada.url("ssh-ada/app"), "main"],
    );
    assert!(
        out.status.success(),
        "{}\nnode log:\n{}",
        text(&out),
        node.log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("deployment 1 is active"), "{stderr}");
    // the build's and the start's progress reached the pusher
    assert!(stderr.contains("building deployment 1"), "{stderr}");
    serves(&node, "app-ssh-ada", "first release");
    println!("git push to answering: {:.2?}", began.elapsed());

    // a push whose build fails is refused with the reason; the first
    // release keeps answering
    commit(
        &ada,
        work.path(),
        &[(
            ".gear/build",
            "#!/bin/sh\necho 'the tests do not pass' >&2\nexit 3\n",
        )],
        "broken",
    );
    let out = ada.git(
        work.path(),
        &["push", "-q", &ada.url("ssh-ada/app"), "main"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("build of deployment 2 failed"), "{stderr}");
    assert!(stderr.contains("pre-receive hook declined"), "{stderr}");
    serves(&node, "app-ssh-ada", "first release");
    // the refused commit did not become the branch
    let remote = ada.git(work.path(), &["ls-remote", &ada.url("ssh-ada/app"), "main"]);
    let local_first = ada.git(work.path(), &["rev-parse", "HEAD~1"]);
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout)
            .split_whitespace()
            .next(),
        String::from_utf8_lossy(&local_first.stdout)
            .split_whitespace()
            .next(),
        "{}",
        text(&remote)
    );

    // a push larger than a deploy may be is refused by git itself: the
    // node's disk holds no more of it than that
    let big = tempfile::tempdir().expect("big tree");
    let out = ada.git(big.path(), &["init", "-q", "-b", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut noise = vec![0u8; 3 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut noise))
        .expect("random bytes");
    std::fs::write(big.path().join("noise.bin"), &noise).expect("write");
    commit(&ada, big.path(), &[], "big");
    let out = ada.git(
        big.path(),
        &["push", "-q", "-f", &ada.url("ssh-ada/app"), "main"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maximum allowed size"),
        "{}",
        text(&out)
    );
    serves(&node, "app-ssh-ada", "first release");

    // bob can neither push to nor exec into nor clone ada's gear
    let theirs = tempfile::tempdir().expect("bob's tree");
    let out = bob.git(theirs.path(), &["init", "-q", "-b", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    commit(
        &bob,
        theirs.path(),
        &[("index.html", "bob was here\n")],
        "bob",
    );
    let out = bob.git(
        theirs.path(),
        &["push", "-q", &bob.url("ssh-ada/app"), "main"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not act in namespace ssh-ada"),
        "{}",
        text(&out)
    );
    let out = bob.ssh(&[], "exec -N ssh-ada app -- true");
    assert_eq!(out.status.code(), Some(125), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not act"),
        "{}",
        text(&out)
    );
    let clone = tempfile::tempdir().expect("clone");
    let out = bob.git(clone.path(), &["clone", "-q", &bob.url("ssh-ada/app"), "x"]);
    assert!(!out.status.success(), "{}", text(&out));
    // nor read the node's files through a deploy
    let out = bob.ssh(&[], "deploy app /etc");
    assert!(!out.status.success(), "{}", text(&out));
    serves(&node, "app-ssh-ada", "first release");

    // ada clones her gear's repository
    let out = ada.git(
        clone.path(),
        &["clone", "-q", &ada.url("ssh-ada/app"), "mine"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(clone.path().join("mine/index.html").is_file());

    // a command in the gear: its status comes back, and -t gives it a terminal
    let out = ada.ssh(&[], "exec app -- sh -c 'exit 7'");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let mut round_trips = Vec::new();
    for _ in 0..5 {
        let began = Instant::now();
        let out = ada.ssh(&[], "exec app -- true");
        round_trips.push(began.elapsed());
        assert!(out.status.success(), "{}", text(&out));
    }
    round_trips.sort();
    println!(
        "ssh ... exec app -- true: median {:.1?}, slowest {:.1?} (each a new ssh connection)",
        round_trips[2], round_trips[4]
    );
    let out = ada.ssh(&["-tt"], "exec app -- sh -c 'test -t 0 && tty'");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("/dev/pts/"),
        "{}",
        text(&out)
    );
    let out = ada.ssh(&[], "logs app -n 5");
    assert!(out.status.success(), "{}", text(&out));

    // the gear CLI from a laptop: --remote, with the laptop's key
    remote_cli(&node, &ada, port);

    // a Python app whose virtualenv exists: push to answering, timed
    python_push(&node, &ada);

    // the endpoint comes back with the node: after `gear node restart` the
    // next sshd takes the port, and sessions act for their users again
    node.ok(&["node", "restart"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ada.ssh(&[], "whoami");
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("ssh-ada "));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ssh after the restart: {}\n{}",
            text(&out),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // two pushes at once: the second waits for the first, both deploy
    let second = tempfile::tempdir().expect("second tree");
    let out = ada.git(
        second.path(),
        &["clone", "-q", &ada.url("ssh-ada/app"), "."],
    );
    assert!(out.status.success(), "{}", text(&out));
    let one = app("pushed first");
    let two = app("pushed second");
    let files_one: Vec<(&str, &str)> = one.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let files_two: Vec<(&str, &str)> = two.iter().map(|(p, c)| (*p, c.as_str())).collect();
    commit(
        &ada,
        work.path(),
        &[(".gear/build", "#!/bin/sh\nexit 0\n")],
        "fixed",
    );
    commit(&ada, work.path(), &files_one, "one");
    commit(&ada, second.path(), &files_two, "two");
    let before = node.ok(&["deployments", "app", "-N", "ssh-ada"]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            ada.git(
                work.path(),
                &["push", "-f", &ada.url("ssh-ada/app"), "main"],
            )
        });
        let b = s.spawn(|| {
            ada.git(
                second.path(),
                &["push", "-f", &ada.url("ssh-ada/app"), "main"],
            )
        });
        (a.join().expect("push"), b.join().expect("push"))
    });
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let after = node.ok(&["deployments", "app", "-N", "ssh-ada"]);
    assert_eq!(
        after.lines().count(),
        before.lines().count() + 2,
        "{before}\n---\n{after}"
    );
    // whichever went second is what answers
    let (code, body) = node.http_get("app-ssh-ada", "/");
    assert_eq!(code, 200);
    assert!(
        body.contains("pushed first") || body.contains("pushed second"),
        "{body}"
    );
}

/// `gear --remote ...` as ada, from a "laptop" whose home holds a remotes
/// file: create, deploy of a local directory, logs, exec with a terminal.
fn remote_cli(node: &TestNode, ada: &Client, port: u16) {
    let laptop = tempfile::tempdir().expect("laptop home");
    let config = laptop.path().join(".config/gearhost");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("remotes.toml"),
        format!(
            "default = \"test\"\n[remotes.test]\nurl = \"ssh://{ACCOUNT}@127.0.0.1:{port}\"\nidentity = \"{}\"\n",
            ada.key.display()
        ),
    )
    .expect("remotes.toml");
    let ssh = "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
               -o BatchMode=yes"
        .to_string();
    let gear = |args: &[&str]| {
        Command::new(gearhost_tests::gear_bin())
            .args(args)
            .env("HOME", laptop.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("GEARHOST_REMOTE")
            .env("GEARHOST_SOCKET", "/nonexistent/not-this-node.sock")
            .env("GEARHOST_SSH_COMMAND", &ssh)
            .stdin(Stdio::null())
            .output()
            .expect("gear")
    };
    // the remotes file's default is used; an explicit URL works too
    let out = gear(&["create", "site", "--cartridge", "diy"]);
    assert!(out.status.success(), "{}", text(&out));
    let url = format!("ssh://{ACCOUNT}@127.0.0.1:{port}");
    let out = gear(&["--remote", &url, "whoami"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ssh-ada "),
        "{}",
        text(&out)
    );
    // a local directory, sent as an archive over ssh
    let site = tempfile::tempdir().expect("site");
    for (path, contents) in app("from a laptop") {
        let p = site.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, contents).expect("write");
        use std::os::unix::fs::PermissionsExt;
        if path.starts_with(".gear/") {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    let out = gear(&["deploy", "site", site.path().to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}\nnode log:\n{}",
        text(&out),
        node.log()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployment 1 of site is active"),
        "{}",
        text(&out)
    );
    serves(node, "site-ssh-ada", "from a laptop");
    let out = gear(&["logs", "site", "--hooks", "-n", "50"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("start[node]"),
        "{}",
        text(&out)
    );
    // exec: the status comes back, and on a terminal the command has one
    let out = gear(&["exec", "site", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let script = format!(
        "HOME={} GEARHOST_SSH_COMMAND='{ssh}' {} exec site -- sh -c 'test -t 0 && echo on-a-terminal'",
        laptop.path().display(),
        gearhost_tests::gear_bin().display()
    );
    let (code, shown) = gearhost_tests::on_terminal(&script, &[]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("on-a-terminal"), "{shown}");
    // and a change of this terminal's size reaches the command in the gear
    let mut resized = Command::new(gearhost_tests::gear_bin());
    resized
        .args(["exec", "site", "--"])
        .env("HOME", laptop.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .env("GEARHOST_SSH_COMMAND", &ssh);
    gearhost_tests::assert_terminal_follows_a_resize_over_shared_ssh(resized);
    // what the node's disk holds is not reachable this way
    let out = gear(&["cartridge", "install", "/srv"]);
    assert!(!out.status.success(), "{}", text(&out));
    // local and remote list, timed (the shared connection is warm by now)
    let mut remote = Vec::new();
    for _ in 0..5 {
        let began = Instant::now();
        let out = gear(&["list"]);
        remote.push(began.elapsed());
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut local = Vec::new();
    for _ in 0..5 {
        let began = Instant::now();
        node.ok(&["list"]);
        local.push(began.elapsed());
    }
    remote.sort();
    local.sort();
    println!(
        "gear list: local median {:.1?}, --remote median {:.1?} (shared ssh connection)",
        local[2], remote[2]
    );
}

/// A Python app (`app.py`) pushed twice: the first push makes its
/// virtualenv, the second is timed from `git push` to the new page.
fn python_push(node: &TestNode, ada: &Client) {
    let out = ada.ssh(&[], "create py --cartridge python");
    assert!(out.status.success(), "{}", text(&out));
    let work = tempfile::tempdir().expect("work tree");
    let out = ada.git(work.path(), &["init", "-q", "-b", "main"]);
    assert!(out.status.success(), "{}", text(&out));
    let app = |page: &str| {
        format!(
            "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
             class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        \
             body = b'{page}\\n'\n        self.send_response(200)\n        \
             self.send_header('Content-Length', str(len(body)))\n        \
             self.end_headers()\n        self.wfile.write(body)\n\
             HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
        )
    };
    commit(ada, work.path(), &[("app.py", &app("python one"))], "one");
    let out = ada.git(work.path(), &["push", "-q", &ada.url("ssh-ada/py"), "main"]);
    assert!(
        out.status.success(),
        "{}\nnode log:\n{}",
        text(&out),
        node.log()
    );
    serves(node, "py-ssh-ada", "python one");
    commit(ada, work.path(), &[("app.py", &app("python two"))], "two");
    let began = Instant::now();
    let out = ada.git(work.path(), &["push", "-q", &ada.url("ssh-ada/py"), "main"]);
    assert!(out.status.success(), "{}", text(&out));
    serves(node, "py-ssh-ada", "python two");
    println!(
        "git push of a Python app (virtualenv made by the first push) to answering: {:.2?}",
        began.elapsed()
    );
}
