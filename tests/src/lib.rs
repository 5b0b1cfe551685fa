//! Support shared by Gearhost's integration tests and benchmarks: building the
//! real guest crates to wasm, assembling cartridge directories from them,
//! finding the `gear` binary, and the gate for tests that need root.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use gearhost_sys::proc_status::Status;

pub mod apps;
pub mod etcd;
mod pki;
pub use pki::{openssl, test_ca, test_cert, test_pki};
/// Container images made by the tests: layers, an OCI layout, a push.
pub mod images;
pub mod registry;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    // as cargo says when it runs the test or bench: a binary found fresh in a shared target
    // directory may have been built from a checkout elsewhere, whose path `env!` would give
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory guest crates are built in. Separate from the host's target
/// directory so a test can run cargo while the outer cargo holds its lock.
pub fn guest_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("guests")
}

/// Build the guest package `package` for wasm32-wasip2 (release) once per
/// process and return the path of its component.
///
/// Panics with cargo's output when the build fails: a test that needs a
/// guest cannot run without it.
pub fn build_guest(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = gearhost_sys::lock::lock(built);
    if let Some(path) = built.get(package) {
        return path.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = guest_target_dir();
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
            "--target-dir",
        ])
        .arg(&target_dir)
        // the outer cargo's settings are for the host build
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo to build a guest");
    assert!(
        output.status.success(),
        "building guest {package} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        path.is_file(),
        "guest {package} built but {} is missing",
        path.display()
    );
    built.insert(package.to_string(), path.clone());
    path
}

/// Where a guest's sources (and its `cartridge.toml`) live.
pub fn guest_dir(package: &str) -> PathBuf {
    let root = workspace_root();
    // cartridges/<name> holds the package `<name>-cartridge`
    let cartridge = package.strip_suffix("-cartridge").unwrap_or(package);
    for dir in [
        root.join("tests/guests").join(package),
        root.join("examples").join(package),
        root.join("cartridges").join(cartridge),
    ] {
        if dir.join("Cargo.toml").is_file() {
            return dir;
        }
    }
    panic!("no guest crate named {package} under tests/guests, examples or cartridges");
}

/// A cartridge directory assembled from a guest crate: its `cartridge.toml`
/// and the freshly built component as `hooks.wasm`, in a temporary directory.
pub fn cartridge_dir(package: &str) -> tempfile::TempDir {
    let wasm = build_guest(package);
    let dir = tempfile::Builder::new()
        .prefix(&format!("cartridge-{package}-"))
        .tempdir()
        .expect("temporary cartridge directory");
    let src = guest_dir(package);
    std::fs::copy(
        src.join("cartridge.toml"),
        dir.path().join("cartridge.toml"),
    )
    .expect("copy manifest");
    std::fs::copy(&wasm, dir.path().join("hooks.wasm")).expect("copy component");
    dir
}

/// Copies an executable that a test then runs, with `cp` in a child process, so that no
/// descriptor of the test process ever has the copy open for writing: a copy made with
/// `std::fs::copy` stays open for writing for a moment in any child another test thread
/// forks meanwhile, and executing it then fails with ETXTBSY ("Text file busy").
pub fn copy_executable(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp {} {} failed",
        from.display(),
        to.display()
    );
}

/// The `gear` binary of this build: `$GEARHOST_GEAR_BIN`, else `gear` in the
/// target directory this test binary was built into.
pub fn gear_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GEARHOST_GEAR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // <target>/<profile>/deps/<test> -> <target>/<profile>/gear
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps");
    let gear = profile_dir.join("gear");
    assert!(
        gear.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) \
         or build it first with `cargo build -p gearhost-cli`",
        gear.display()
    );
    gear
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    gearhost_sys::proc_status::is_root()
}

/// Whether this process may run privileged tests. When it cannot and
/// `GEARHOST_REQUIRE_PRIVILEGED=1` is set, panics (the test fails); otherwise
/// prints why the test is skipped and returns false.
pub fn privileged(reason: &str) -> bool {
    if is_root() {
        return true;
    }
    let required = std::env::var("GEARHOST_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "this test needs root ({reason}) and GEARHOST_REQUIRE_PRIVILEGED=1 forbids skipping it"
    );
    eprintln!("skipped: needs root ({reason})");
    false
}

/// A real node (`gear node run`) with its own state directory, socket,
/// cgroup subtree, uid range and frontend port, stopped and cleaned up on
/// drop. Several can run side by side.
#[derive(Debug)]
pub struct TestNode {
    /// The node's state and socket live here.
    pub dir: tempfile::TempDir,
    /// The node's API socket.
    pub socket: PathBuf,
    /// The frontend's address.
    pub frontend: std::net::SocketAddr,
    /// The operator's metrics endpoint (`GET /metrics`).
    pub metrics: std::net::SocketAddr,
    /// The node's cgroup subtree.
    pub subtree: String,
    /// The node's state directory (`<dir>/state` unless started with [`TestNode::start_in`]).
    state: PathBuf,
    child: std::process::Child,
    /// A command the node runs under (`prlimit ...`, a mount namespace of
    /// its own); empty for none.
    wrapper: Vec<String>,
}

/// A wrapper for [`TestNode::start_wrapped`]: the node runs in a mount
/// namespace of its own whose `/` has shared propagation, as on a systemd
/// host (`/` of this machine is private): the namespace stands for the
/// host's, and what the node's work leaves in it shows in its table
/// (`/proc/<node pid>/mountinfo`).
pub const ON_SHARED_PROPAGATION: &[&str] = &[
    "unshare",
    "--mount",
    "--propagation",
    "unchanged",
    "sh",
    "-c",
    // private first: a copy of a shared table would stay a peer of the
    // test's own, and other tests' mounts would come and go in it
    "mount --make-rprivate / && mount --make-rshared / && exec \"$0\" \"$@\"",
];

impl TestNode {
    /// Start a node whose uids start at `uid_min` (give each test its own
    /// range of 200).
    pub fn start(uid_min: u32, extra_gears_config: &str) -> TestNode {
        Self::start_with_uids(uid_min, 200, extra_gears_config)
    }

    /// Start a node with `uid_count` uids from `uid_min` (for more than 200 gears).
    pub fn start_with_uids(uid_min: u32, uid_count: u32, extra_gears_config: &str) -> TestNode {
        Self::start_full(uid_min, uid_count, "", extra_gears_config, &[], None)
    }

    /// Start a node (uids from `uid_min`, 200 of them) whose state directory
    /// is `state` (e.g. on a file system the test made).
    pub fn start_in(state: &Path, uid_min: u32, extra_gears_config: &str) -> TestNode {
        Self::start_full(uid_min, 200, "", extra_gears_config, &[], Some(state))
    }

    /// Start a node (uids from `uid_min`, 200 of them) that runs under
    /// `wrapper`, a command that ends by executing its arguments (so the
    /// node's pid is the wrapper's): [`ON_SHARED_PROPAGATION`], `prlimit ...`.
    pub fn start_wrapped(uid_min: u32, extra_gears_config: &str, wrapper: &[&str]) -> TestNode {
        Self::start_full(uid_min, 200, "", extra_gears_config, wrapper, None)
    }

    /// Start a node that other local users reach too (its directory is
    /// open to them, as `/run/gearhost` is), with `top_config` added to the
    /// top level of its configuration (`operator-group = ...`, `[users]`
    /// tables go after `[gears]`: put them in `extra_gears_config`).
    pub fn start_shared(uid_min: u32, top_config: &str, extra_gears_config: &str) -> TestNode {
        Self::start_full(uid_min, 200, top_config, extra_gears_config, &[], None)
    }

    /// [`TestNode::start_shared`] with the state directory at `state` (the
    /// ssh endpoint needs one no one but root may change, unlike /tmp).
    pub fn start_shared_in(
        state: &Path,
        uid_min: u32,
        top_config: &str,
        extra_gears_config: &str,
    ) -> TestNode {
        Self::start_full(
            uid_min,
            200,
            top_config,
            extra_gears_config,
            &[],
            Some(state),
        )
    }

    /// Start one of several nodes that share the uid range from `uid_min`
    /// (`uid_count` uids; a cluster's district), named `member` (its cgroup
    /// subtree is its own), with `top_config` (a `[cluster]` table) added.
    pub fn start_member(uid_min: u32, uid_count: u32, member: &str, top_config: &str) -> TestNode {
        Self::start_full_as(uid_min, uid_count, top_config, "", &[], None, Some(member))
    }

    fn start_full(
        uid_min: u32,
        uid_count: u32,
        top_config: &str,
        extra_gears_config: &str,
        wrapper: &[&str],
        state: Option<&Path>,
    ) -> TestNode {
        Self::start_full_as(
            uid_min,
            uid_count,
            top_config,
            extra_gears_config,
            wrapper,
            state,
            None,
        )
    }

    fn start_full_as(
        uid_min: u32,
        uid_count: u32,
        top_config: &str,
        extra_gears_config: &str,
        wrapper: &[&str],
        state: Option<&Path>,
        member: Option<&str>,
    ) -> TestNode {
        let dir = tempfile::Builder::new()
            .prefix("gearhost-node-")
            .tempdir()
            .expect("node dir");
        let state = state.map_or_else(|| dir.path().join("state"), Path::to_path_buf);
        if !top_config.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("open the node's directory to other users");
        }
        let socket = dir.path().join("node.sock");
        let subtree = match member {
            Some(m) => format!("gearhost-test-{uid_min}-{m}"),
            None => format!("gearhost-test-{uid_min}"),
        };
        let config = format!(
            "schema = 1\nstate-dir = \"{state}\"\nsocket = \"{sock}\"\nfrontend = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n{top_config}\n\
             [gears]\nuid-min = {uid_min}\nuid-max = {uid_max}\ncgroup-subtree = \"{subtree}\"\n{extra_gears_config}\n",
            state = state.display(),
            sock = socket.display(),
            uid_max = uid_min + uid_count - 1,
        );
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, config).expect("config");
        let wrapper: Vec<String> = wrapper.iter().map(|w| w.to_string()).collect();
        let child = Self::spawn_node(dir.path(), &wrapper);
        let mut node = TestNode {
            dir,
            socket,
            frontend: "127.0.0.1:0".parse().expect("addr"),
            metrics: "127.0.0.1:0".parse().expect("addr"),
            subtree,
            state,
            child,
            wrapper,
        };
        node.wait_up();
        node
    }

    fn spawn_node(dir: &Path, wrapper: &[String]) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(gear_bin());
                c
            }
            None => Command::new(gear_bin()),
        };
        command
            .args(["node", "run", "--config"])
            .arg(dir.join("node.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node")
    }

    /// Kill the node with SIGKILL (no chance to clean up), then start a new
    /// one on the same state and configuration.
    pub fn kill9_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn_node(self.dir.path(), &self.wrapper);
        self.wait_up();
    }

    /// Stop the node with `signal` (`"TERM"`, `"INT"`, `"KILL"`) and wait until it has
    /// exited; the gears' processes run on. [`TestNode::start_again`] starts a new one.
    pub fn stop_node(&mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        self.wait_stopped(&format!("SIG{signal}"));
    }

    /// Runs `sql` with `psql` inside PostgreSQL gear `gear` (through this
    /// node, which must hold the gear: `exec` does not travel): its output.
    pub fn psql(&self, gear: &str, sql: &str) -> String {
        self.ok(&[
            "exec",
            gear,
            "--",
            "sh",
            "-c",
            &format!("exec psql -X -At -v ON_ERROR_STOP=1 -c \"{sql}\""),
        ])
    }

    /// The cluster node `gear list` through this node says holds `gear`.
    pub fn node_of(&self, gear: &str) -> Option<String> {
        let listed = json(&self.ok(&["list", "--json"]));
        listed
            .as_array()?
            .iter()
            .find(|l| l["name"] == gear)
            .and_then(|l| l["node"].as_str().map(str::to_string))
    }

    /// As if the node's machine died: the node killed (SIGKILL), and with it
    /// everything it leaves running when it stops — its keeper, which holds
    /// its listening sockets, and its gears' processes.
    pub fn kill_machine(&mut self) {
        self.stop_node("KILL");
        if let Ok(mounts) = gearhost_sandbox::cgroup::detect() {
            for root in gearhost_sandbox::cgroup::roots(&mounts) {
                remove_cgroup_tree(&root.join(&self.subtree));
            }
        }
    }

    /// Wait (at most 20 s) until the node process has exited, after `what` stopped it.
    pub fn wait_stopped(&mut self, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node did not stop on {what}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Start a new node on the same state and configuration (after [`TestNode::stop_node`]).
    pub fn start_again(&mut self) {
        self.child = Self::spawn_node(self.dir.path(), &self.wrapper);
        self.wait_up();
    }

    /// Stop the node with SIGTERM (a graceful stop), then start a new one on the same
    /// state and configuration.
    pub fn term_and_restart(&mut self) {
        self.stop_node("TERM");
        self.start_again();
    }

    fn wait_up(&mut self) {
        let node = self;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok((frontend, metrics)) = node.ping() {
                node.frontend = frontend;
                node.metrics = metrics;
                return;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("the node exited with {status}:\n{}", node.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node did not come up:\n{}",
                node.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn ping(&self) -> std::io::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)?;
        s.write_all(b"{\"api\":1,\"op\":\"ping\"}\n")?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        let addr = |field: &str| -> std::io::Result<std::net::SocketAddr> {
            line.split(&format!("\"{field}\":\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .ok_or_else(|| std::io::Error::other(format!("no {field} in {line}")))?
                .parse()
                .map_err(std::io::Error::other)
        };
        Ok((addr("frontend")?, addr("metrics")?))
    }

    /// The node's metrics from its metrics endpoint: `name{labels}` -> value.
    pub fn metrics(&self) -> HashMap<String, f64> {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(self.metrics).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
            .expect("request");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// Run `gear` against this node.
    pub fn gear(&self, args: &[&str]) -> std::process::Output {
        Command::new(gear_bin())
            .args(args)
            .env("GEARHOST_SOCKET", &self.socket)
            .env_remove("GEARHOST_NAMESPACE")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run gear")
    }

    /// Installs the cartridges built from `packages` (guest crates); the
    /// directories they were installed from live as long as what is returned.
    pub fn install_cartridges(&self, packages: &[&str]) -> Vec<tempfile::TempDir> {
        packages
            .iter()
            .map(|p| {
                let dir = cartridge_dir(p);
                self.ok(&["cartridge", "install", dir.path().to_str().expect("utf-8")]);
                dir
            })
            .collect()
    }

    /// Run `gear` and insist that it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.gear(args);
        assert!(
            out.status.success(),
            "gear {args:?} failed ({}):\nstdout: {}\nstderr: {}\nnode log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The node's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// GET `path` from gear `label` (`<gear>-<namespace>`) through the frontend:
    /// (status code, body).
    pub fn http_get(&self, label: &str, path: &str) -> (u16, String) {
        let (code, _, body) = self.http_get_with_headers(label, path);
        (code, body)
    }

    /// GET `path` from gear `label` through the frontend: (status code, the
    /// response's headers with lower-case names, body).
    pub fn http_get_with_headers(
        &self,
        label: &str,
        path: &str,
    ) -> (u16, HashMap<String, String>, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.frontend).expect("connect to the frontend");
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {label}.localhost:{}\r\nConnection: close\r\n\r\n",
            self.frontend.port()
        )
        .expect("request");
        let mut response = Vec::new();
        let _ = s.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let headers: HashMap<String, String> = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        (code, headers, body)
    }

    /// Waits up to `secs` seconds until `gear` is in `state` (`gear status --json`), as after a
    /// node restart, whose resume runs after the node answers.
    pub fn wait_state(&self, gear: &str, state: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let status = json(&self.ok(&["status", gear, "--json"]));
            if status["state"] == state {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let hooks = self.gear(&["logs", gear, "--hooks", "-n", "50"]);
                panic!(
                    "gear {gear} is not {state} after {secs} s: {status}\nits hooks:\n{}\nnode log:\n{}",
                    String::from_utf8_lossy(&hooks.stdout),
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The node process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the node is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The node's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // a graceful stop first (the gears' processes outlive it: they go with their
        // cgroups below)
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // what the gears still run, with their cgroups
        if let Ok(mounts) = gearhost_sandbox::cgroup::detect() {
            let mut gears = std::collections::BTreeSet::new();
            for root in gearhost_sandbox::cgroup::roots(&mounts) {
                for entry in std::fs::read_dir(root.join(&self.subtree))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        gears.insert(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            for gear in gears {
                let _ = gearhost_sandbox::cgroup::remove_gear(&self.subtree, &gear);
            }
        }
        // network namespaces stay bound until unmounted: their pins go with the mount that
        // holds them (one syscall, where a `umount` per gear read the mount table each time)
        let _ = gearhost_sandbox::netns::remove_pins(&self.state_dir().join("netns"));
        if let Ok(mounts) = gearhost_sandbox::cgroup::detect() {
            for root in gearhost_sandbox::cgroup::roots(&mounts) {
                remove_cgroup_tree(&root.join(&self.subtree));
            }
        }
        // image gears' roots stay mounted for the next node; this one is the last
        let roots = self.state_dir().join("roots");
        for root in std::fs::read_dir(&roots).into_iter().flatten().flatten() {
            let _ = gearhost_sandbox::overlay::unmount(&root.path());
        }
        let _ = gearhost_sandbox::overlay::unmount(&roots);
    }
}

/// Kill whatever is left in the cgroup `dir` and below (a gear a test left
/// running, one a node kept running when it stopped), then remove the
/// groups, deepest first, so that test subtrees do not pile up on the machine.
fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if pids.trim().is_empty() {
            break;
        }
        for pid in pids.lines() {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}

/// A loopback port free at the moment of asking (for a listener a test
/// configures before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Parse `text` as JSON, or fail the test showing it.
/// The last `lines` lines of `text`.
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The processes on the machine whose real uid is `uid`, as `name: command
/// line`; zombies are left out (they have ended, and reaping orphans is the
/// machine's init's job).
pub fn processes_of(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let status = Status::from_text(status);
        let field = |name: &str| status.field(name).unwrap_or_default();
        let real = status.ids("Uid").map(|ids| ids.real);
        if real == Some(uid) && !field("State").starts_with('Z') {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{}: {}", field("Name"), cmdline.trim_end()));
        }
    }
    found
}

/// The resident memory of process `pid`, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    Status::of(pid)
        .ok()
        .and_then(|s| s.kib("VmRSS"))
        .unwrap_or(0)
}

/// Runs the shell command `command` on a terminal of its own (script(1)) and returns its exit
/// code and what it wrote there (carriage returns removed). script's stdin stays open until the
/// command ends: at end of file script would type a NUL into the terminal, which a terminal in
/// the gear echoes.
pub fn on_terminal(command: &str, env: &[(&str, &std::ffi::OsStr)]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    let keep_open = child.stdin.take();
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read script's output");
    let status = child.wait().expect("wait for script");
    drop(keep_open);
    (status.code(), text.replace('\r', ""))
}

/// Whether this kernel lets this process use io_uring (what the node's
/// frontend needs to batch its sends).
pub fn io_uring_allowed() -> bool {
    gearhost_sys::sendbatch::SendBatch::new().is_ok()
}

/// Runs `gear` (`command`, up to the `--` before the command in the gear) on a terminal of a
/// terminal emulator (Python's pty module), with a shell in the gear that stays silent until
/// its terminal changes size; the emulator then makes its window 41 rows by 121 columns, and
/// the shell says the size it sees on SIGWINCH and ends once that is 41 by 121. Asserts it did.
/// As the shell prints nothing before, only `gear`'s notice of the change can move the relay.
pub fn assert_terminal_follows_a_resize(command: std::process::Command) {
    terminal_follows(command, false);
}

/// [`assert_terminal_follows_a_resize`] through `ssh` sharing a connection (a `--remote`
/// command): OpenSSH's mux client relays SIGWINCH to its master only once the master has
/// confirmed its session, and the remote command may already be printing by then, so a resize
/// in that moment is lost in ssh itself. As a person would, the emulator resizes again (every
/// 3 s, at most 30 s) until the gear's shell sees the size; every resize after that first
/// moment must reach the gear.
pub fn assert_terminal_follows_a_resize_over_shared_ssh(command: std::process::Command) {
    terminal_follows(command, true);
}

fn terminal_follows(command: std::process::Command, again: bool) {
    let emulator = r#"
import os, pty, select, struct, sys, fcntl, termios, time
again = sys.argv[1] == "again"
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
out = b""
def until(what, seconds):
    global out
    end = time.time() + seconds
    while what not in out and time.time() < end:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            out += chunk
until(b"ready", 30)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 121, 0, 0))
if again:
    end = time.time() + 30
    until(b"size 41 121", 3)
    while b"size 41 121" not in out and time.time() < end:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 121, 0, 0))
        until(b"size 41 121", 3)
until(b"\0the end", 30)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let shell = "trap 's=$(stty size); echo \"size $s\"; [ \"$s\" = \"41 121\" ] && exit 0' WINCH; \
                 echo ready; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 1";
    let gear = command.get_program().to_owned();
    let args: Vec<std::ffi::OsString> = command.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> = command
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut python = std::process::Command::new("python3");
    python
        .args(["-c", emulator])
        .arg(if again { "again" } else { "once" })
        .arg(gear)
        .args(args)
        .args(["sh", "-c", shell])
        .stdin(std::process::Stdio::null());
    for (k, v) in envs {
        match v {
            Some(v) => python.env(k, v),
            None => python.env_remove(k),
        };
    }
    let out = python
        .output()
        .expect("run python3 (the terminal emulator)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("size 41 121"), "{text:?}");
}

/// Asserts that `text`, what a command printed on a terminal, shows it ran on one of its own:
/// `tty` said `/dev/pts/0` (the gear's own devpts) and `ps -o stat=` shows it in the
/// foreground of that terminal.
pub fn assert_on_own_terminal(text: &str) {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.contains(&"/dev/pts/0"), "{text:?}");
    assert!(
        lines.iter().any(|l| l.starts_with('S') && l.contains('+')),
        "in the foreground of its own terminal: {text:?}"
    );
}

/// Node configuration for tests whose builds fetch packages (pip, npm): a
/// `[build]` section whose `egress-allow` lists the addresses the package
/// indexes resolve to on this machine, so a build reaches them through the
/// node's egress proxy even where they are served from a range the proxy
/// refuses by default (a lab that serves them from a documentation range).
/// Public addresses need no listing but do no harm; loopback ones are left
/// out (no setting opens them). Empty when no index resolves. Append it to
/// the `extra_gears_config` of [`TestNode::start`].
pub fn package_index_egress() -> String {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<std::net::IpAddr> = Vec::new();
    for host in ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"] {
        if let Ok(found) = (host, 443).to_socket_addrs() {
            for a in found {
                let ip = a.ip().to_canonical();
                if !ip.is_loopback() && !ip.is_unspecified() && !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
    }
    if addrs.is_empty() {
        return String::new();
    }
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("\n[build]\negress-allow = [{}]\n", list.join(", "))
}
