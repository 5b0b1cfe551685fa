//! A real OCI registry for tests: Debian's `docker-registry` on a loopback
//! port, storing in a directory of its own, ended when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// Where it stores, removed with it.
    _root: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    /// A registry that serves anyone.
    pub fn start() -> Registry {
        Registry::start_with("")
    }

    /// A registry whose configuration has `extra` (e.g. an `auth:` section).
    pub fn start_with(extra: &str) -> Registry {
        let root = tempfile::tempdir().expect("registry dir");
        let data = root.path().join("data");
        Registry::start_storing(root, &data, extra)
    }

    /// A registry that stores in `data`, which outlives it (its content can be served again
    /// by another registry).
    pub fn start_in(data: &std::path::Path) -> Registry {
        let root = tempfile::tempdir().expect("registry dir");
        Registry::start_storing(root, data, "")
    }

    fn start_storing(root: tempfile::TempDir, data: &std::path::Path, extra: &str) -> Registry {
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let config = root.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
                data.display()
            ),
        )
        .expect("config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup installs it)");
        wait_for_registry(&addr);
        Registry {
            child,
            _root: root,
            addr,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something answers `/v2/` at `addr` over HTTP (a 401 from a
/// registry that wants credentials counts).
pub fn wait_for_registry(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new("curl")
        .args(["-s", "-o", "/dev/null", &format!("http://{addr}/v2/")])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "no registry answers at {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
