//! A real etcd cluster on loopback for the cluster tests: Debian's
//! `etcd-server`, several members with their own data directories and
//! ports, started by the test and killed with it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// One etcd member.
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    child: Option<Child>,
}

/// A running etcd cluster; its members are killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

/// The etcd server program, or a failure that says how to install it.
fn etcd_program() -> PathBuf {
    for path in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(path).is_file() {
            return PathBuf::from(path);
        }
    }
    panic!("etcd is not installed: apt-get install -y etcd-server (scripts/setup does)");
}

impl EtcdCluster {
    /// Starts `count` members on loopback and waits until every one is healthy.
    pub fn start(count: usize) -> EtcdCluster {
        let dir = tempfile::Builder::new()
            .prefix("gearhost-etcd-")
            .tempdir()
            .expect("etcd directory");
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("gearhost-test-{}", std::process::id());
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new(etcd_program())
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                    // short elections: a killed member's place is taken quickly
                    "--heartbeat-interval",
                    "100",
                    "--election-timeout",
                    "1000",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start etcd");
            members.push(Member {
                name,
                client: *client,
                child: Some(child),
            });
        }
        let cluster = EtcdCluster { dir, members };
        for i in 0..count {
            cluster.wait_healthy(i);
        }
        cluster
    }

    /// The client URLs of every member, as `cluster.etcd` lists them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// `etcd = [...]` for a node's `[cluster]` table.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Kills member `i` (SIGKILL: as if its machine died).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The cluster's revision now, as the first live member answers (through
    /// etcd's JSON gateway): every write transaction raises it by one, so the
    /// difference over an operation is the writes it made.
    pub fn revision(&self) -> i64 {
        use std::io::{Read, Write};
        let member = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a live member");
        let body = r#"{"key":"Lw==","limit":1}"#;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", member.client)).expect("etcd");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "POST /v3/kv/range HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("ask etcd");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd answered {text}: {e}"));
        v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {v}"))
    }

    /// The value of `key` (under the test process's prefix, as
    /// [`member_config`] sets it: `gears/<id>`, ...), read with `etcdctl`.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["get", "--print-value-only"])
            .arg(format!("/gearhost-test-{}/{key}", std::process::id()))
            .output()
            .expect("run etcdctl (apt-get install etcd-client; scripts/setup does)");
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !value.is_empty()).then_some(value)
    }

    /// The keys (under the test process's prefix) written or deleted after
    /// revision `after`, in order, as etcd's history has them (`etcdctl
    /// watch --rev`): (`PUT` or `DELETE`, the key without the prefix).
    pub fn changes_since(&self, after: i64) -> Vec<(String, String)> {
        let prefix = format!("/gearhost-test-{}/", std::process::id());
        // the history comes at once; the watch then waits, and is ended
        let out = Command::new("timeout")
            .args(["1.5", "etcdctl"])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["watch", "--prefix", &prefix, "--rev"])
            .arg((after + 1).to_string())
            .output()
            .expect("run etcdctl (apt-get install etcd-client; scripts/setup does)");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let mut changes = Vec::new();
        while let Some(kind) = lines.next() {
            if kind != "PUT" && kind != "DELETE" {
                continue;
            }
            let Some(key) = lines.next() else { break };
            changes.push((
                kind.to_string(),
                key.strip_prefix(&prefix).unwrap_or(key).to_string(),
            ));
        }
        changes
    }

    /// What member `i` logged.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = self.members[i].client;
        loop {
            if health(port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {} did not become healthy within 30 s:\n{}",
                self.members[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the member whose client port is `port` answers `/health` with
/// `"health":"true"`.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.contains("\"health\":\"true\"")
}

/// The `[cluster]` table of node `name` in `etcd`'s cluster: its own peer
/// port, the shared `secret` file, a lease of `ttl_secs` seconds, and a key
/// prefix of this test process's own.
pub fn member_config(
    etcd: &EtcdCluster,
    name: &str,
    secret: &std::path::Path,
    ttl_secs: u64,
) -> String {
    member_config_via(&etcd.endpoints_toml(), name, secret, ttl_secs)
}

/// [`member_config`] with the etcd endpoints given (`["http://..."]`).
pub fn member_config_via(
    endpoints_toml: &str,
    name: &str,
    secret: &std::path::Path,
    ttl_secs: u64,
) -> String {
    format!(
        "[cluster]\netcd = {endpoints_toml}\nnode-name = \"{name}\"\nlisten = \"127.0.0.1:{}\"\nsecret-file = \"{}\"\nlease-ttl = \"{ttl_secs}s\"\nprefix = \"/gearhost-test-{}\"\n",
        free_port(),
        secret.display(),
        std::process::id()
    )
}

/// A cluster secret file in `dir`, readable by its owner alone.
pub fn secret_file(dir: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("cluster.secret");
    std::fs::write(
        &path,
        "c2VjcmV0LXNoYXJlZC1ieS1ldmVyeS1ub2RlLW9mLXRoZS1jbHVzdGVy\n",
    )
    .expect("secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Nodes `names` joined into `etcd`'s cluster, sharing the district of
/// `uids` uids from `uid_min`, with leases of `ttl_secs` seconds; the
/// directory holds their shared secret.
pub fn start_nodes(
    etcd: &EtcdCluster,
    names: &[&str],
    (uid_min, uids): (u32, u32),
    ttl_secs: u64,
) -> (tempfile::TempDir, Vec<crate::TestNode>) {
    let secrets = tempfile::tempdir().expect("dir");
    let secret = secret_file(secrets.path());
    let nodes = names
        .iter()
        .map(|n| {
            crate::TestNode::start_member(
                uid_min,
                uids,
                n,
                &member_config(etcd, n, &secret, ttl_secs),
            )
        })
        .collect();
    (secrets, nodes)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A TCP relay to an etcd member that a test can cut, as a network would:
/// a node given only its address loses etcd when it is cut (its connections
/// are closed and new ones refused) and finds it again when it is mended.
#[derive(Debug)]
pub struct EtcdLink {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl EtcdLink {
    /// A relay to member `i` of `etcd`.
    pub fn to_member(etcd: &EtcdCluster, i: usize) -> EtcdLink {
        use std::sync::atomic::Ordering;
        let target = etcd.members[i].client;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("address").port();
        let link = EtcdLink {
            port,
            cut: Default::default(),
            open: Default::default(),
        };
        let (cut, open) = (link.cut.clone(), link.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        lock(&open).push(s);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        link
    }

    /// `etcd = [...]` for a node's `[cluster]` table, through the relay.
    pub fn endpoints_toml(&self) -> String {
        format!("[\"http://127.0.0.1:{}\"]", self.port)
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in lock(&self.open).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Mends the link: new connections go through again.
    pub fn mend(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
