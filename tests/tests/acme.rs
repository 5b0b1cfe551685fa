//! End to end: an alias gets its certificate from a real ACME server
//! (Debian's `pebble`, with `pebble-challtestsrv` answering its DNS queries
//! with the loopback), validated over HTTP-01 answered by the node's own
//! frontend, and is then served over HTTPS; it is renewed; a renewal whose
//! challenge fails is reported while the certificate it would have replaced
//! stays served; a refused order is shown with its reason and tried again
//! later.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::apps::tree;
use gearhost_tests::{TestNode, cartridge_dir, free_port, privileged};

/// A child process killed when this goes.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Running {
    let log = std::fs::File::create(dir.join(format!("{program}.log"))).expect("log");
    Running(
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // every order is validated anew (no reuse of a valid authorization)
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup installs pebble)")),
    )
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_alias_gets_its_certificate_from_an_acme_server() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let work = tempfile::tempdir().expect("dir");
    let dir = work.path();
    // pebble's own HTTPS certificate, from a CA the node is told to trust
    gearhost_tests::test_ca(dir, "ACME test CA");
    gearhost_tests::test_cert(dir, "pebble", &["127.0.0.1", "localhost"]);
    let (acme_port, management, dns, https) = (free_port(), free_port(), free_port(), free_port());
    let node = TestNode::start_shared(
        86600,
        &format!(
            "[https]\nlisten = \"127.0.0.1:{https}\"\n\
             [acme]\ndirectory = \"https://127.0.0.1:{acme_port}/dir\"\nca = \"{}\"\n\
             renew-before = \"2000days\"\n",
            dir.join("ca.pem").display()
        ),
        "",
    );
    // pebble validates HTTP-01 on the node's plain frontend port
    std::fs::write(
        dir.join("pebble.json"),
        format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}",
                "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "pebble.pem", "privateKey": "pebble.key",
                "httpPort": {}, "tlsPort": {}, "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": ["blocked.example.net"]}}}}"#,
            node.frontend.port(),
            free_port()
        ),
    )
    .expect("pebble config");
    let mut dns_server = run(
        dir,
        "pebble-challtestsrv",
        &[
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    let _pebble = run(
        dir,
        "pebble",
        &[
            "-config",
            "pebble.json",
            "-dnsserver",
            &format!("127.0.0.1:{dns}"),
        ],
    );
    wait_listening(acme_port);

    let _static = {
        let d = cartridge_dir("static-cartridge");
        node.ok(&["cartridge", "install", d.path().to_str().expect("utf-8")]);
        d
    };
    node.ok(&["create", "web", "--cartridge", "static"]);
    let site = tree(&[("index.html", "issued by acme\n")]);
    node.ok(&["deploy", "web", site.path().to_str().expect("utf-8")]);
    let out = node.ok(&["alias", "add", "web", "www.example.org", "--acme"]);
    assert!(out.contains("ordered from the node's ACME server"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = node.ok(&["alias", "list", "web"]);
        if listed.contains("https until") {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate came: {listed}\nnode log:\n{}\npebble:\n{}",
            node.log(),
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(listed.contains("(ACME)"), "{listed}");

    // served over HTTPS, with a chain to pebble's root
    let root = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg(format!("https://127.0.0.1:{management}/roots/0"))
        .output()
        .expect("curl");
    std::fs::write(dir.join("root.pem"), &root.stdout).expect("root");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(dir.join("root.pem"))
        .arg("--resolve")
        .arg(format!("www.example.org:{https}:127.0.0.1"))
        .arg(format!("https://www.example.org:{https}/"))
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "issued by acme",
        "{out:?}"
    );

    // renewed: pebble's certificates live five years, less than the two
    // thousand days this node renews before, so asking again renews it
    let serial = |dir: &Path| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{https} -servername www.example.org \
                 </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ))
            .current_dir(dir)
            .output()
            .expect("s_client");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = serial(dir);
    assert!(first.starts_with("serial="), "{first}");
    node.ok(&["alias", "cert", "web", "www.example.org", "--acme"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while serial(dir) == first {
        assert!(Instant::now() < deadline, "not renewed\n{}", node.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let renewed = serial(dir);
    // a renewal whose challenge fails (the ACME server's DNS is gone) is
    // reported, and the certificate it would have replaced stays served
    let _ = dns_server.0.kill();
    let _ = dns_server.0.wait();
    node.ok(&["alias", "cert", "web", "www.example.org", "--acme"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listed = node.ok(&["alias", "list", "web"]);
        if listed.contains("renewal failed") {
            assert!(listed.contains("next try"), "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failure is not shown: {listed}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(serial(dir), renewed, "the served certificate stays");

    // a name the ACME server refuses: the reason is shown, with when the
    // node tries again
    node.ok(&["alias", "add", "web", "blocked.example.net", "--acme"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = node.ok(&["alias", "list", "web"]);
        let line = listed
            .lines()
            .find(|l| l.starts_with("blocked.example.net"))
            .unwrap_or_default()
            .to_string();
        if line.contains("no certificate yet") {
            assert!(line.contains("next try"), "{line}");
            assert!(line.contains("refused the order"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no failure shown: {listed}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // and the name that has one keeps it
    let listed = node.ok(&["alias", "list", "web"]);
    assert!(listed.contains("www.example.org  https until"), "{listed}");
}
