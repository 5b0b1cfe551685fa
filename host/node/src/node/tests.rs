//! The node's bookkeeping on a state directory of its own, without
//! privileges: what is refused before anything is created, names, and
//! what the refusals say. Gears themselves (which need root for their
//! namespaces and uids) are tested end to end in `gearhost-tests`.

use super::*;
use crate::api::ErrorKind;

/// A node's state directory for a test; as root the node binds its pins directory onto
/// itself there, which goes before the directory does.
struct TestState(tempfile::TempDir);

impl Drop for TestState {
    fn drop(&mut self) {
        let _ = gearhost_sandbox::netns::remove_pins(&self.0.path().join("state").join("netns"));
    }
}

fn node() -> (TestState, Arc<Node>) {
    let dir = tempfile::tempdir().expect("temporary state directory");
    let mut config = NodeConfig::embedded();
    config.state_dir = dir.path().join("state");
    config.domain = "apps.test".into();
    let node = Node::open(config).expect("open the node's state");
    (TestState(dir), node)
}

fn gear(name: &str, namespace: &str) -> GearRef {
    GearRef {
        name: name.into(),
        namespace: namespace.into(),
    }
}

#[test]
fn a_new_state_directory_is_laid_out_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, node) = node();
    for d in [&node.config().state_dir, &node.config().gears_dir()] {
        let mode = std::fs::metadata(d).expect("created").permissions().mode();
        assert_eq!(mode & 0o777, 0o711, "{}", d.display());
    }
    assert!(node.config().cartridges_dir().is_dir());
    assert!(node.list().is_empty());
    assert!(node.cartridge_list().is_empty());
}

#[tokio::test]
async fn bad_names_are_refused_before_anything_is_made() {
    let (_dir, node) = node();
    for (name, namespace) in [
        ("Web", "default"),
        ("web", "-x"),
        ("", "default"),
        ("web", &"n".repeat(33)),
        ("../etc", "default"),
    ] {
        let e = node
            .create(&gear(name, namespace), "python", None, None)
            .await
            .expect_err(name);
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        assert!(e.message.contains("lower-case letters"), "{e}");
    }
    let entries = std::fs::read_dir(node.config().gears_dir())
        .expect("gears directory")
        .count();
    assert_eq!(entries, 0, "nothing was created");
}

#[tokio::test]
async fn a_missing_cartridge_or_gear_names_the_command_that_helps() {
    let (_dir, node) = node();
    let e = node
        .create(&gear("web", "default"), "python", None, None)
        .await
        .expect_err("no cartridge");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("gear cartridge install"), "{e}");
    let e = node.cartridge_remove("python").expect_err("none installed");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("gear cartridge list"), "{e}");
    let e = node.show(&gear("web", "default")).expect_err("no gear");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("gear list"), "{e}");
    let e = node
        .stop(&gear("web", "default"))
        .await
        .expect_err("no gear");
    assert_eq!(e.kind, ErrorKind::NotFound);
    // an archive that is not a cartridge (one file, no manifest)
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, "README", &b"hello"[..])
        .expect("entry");
    let bytes = b.into_inner().expect("archive");
    let (r, mut w) = std::io::pipe().expect("pipe");
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut w, &bytes));
    let e = node
        .cartridge_install("not-a-cartridge", r.into())
        .await
        .expect_err("no manifest");
    writer.join().expect("writer").expect("written");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        std::fs::read_dir(node.config().cartridges_dir())
            .expect("store")
            .next()
            .is_none(),
        "a failed install leaves nothing in the store"
    );
}

#[test]
fn public_names_fit_a_dns_label_and_urls_carry_the_frontend_port() {
    let (_dir, node) = node();
    let long = "a".repeat(32);
    let e = node
        .check_public_name_free(&gear(&long, &long))
        .expect_err("65 characters");
    assert!(e.message.contains("at most 63 characters"), "{e}");
    node.check_public_name_free(&gear("web", "team"))
        .expect("a free, short name");
    let record = GearRecord {
        name: "web".into(),
        namespace: "team".into(),
        ..test_record()
    };
    assert_eq!(node.public_name(&record), "web-team.apps.test");
    node.set_frontend_addr("127.0.0.1:80".parse().expect("address"));
    assert_eq!(node.public_url(&record), "http://web-team.apps.test/");
    node.set_frontend_addr("127.0.0.1:8000".parse().expect("address"));
    assert_eq!(node.public_url(&record), "http://web-team.apps.test:8000/");
}

fn test_record() -> GearRecord {
    GearRecord {
        version: state::RECORD_VERSION,
        id: "0123456789abcdef".into(),
        name: "web".into(),
        namespace: "default".into(),
        cartridge: "python".into(),
        uid: 5000,
        mcs_level: "s0:c0,c1".into(),
        created: 0,
        desired: Desired::Stopped,
        state: GearState::New,
        failure: None,
        cartridge_env: BTreeMap::new(),
        user_env: BTreeMap::new(),
        process_env: BTreeMap::new(),
        deployments: Vec::new(),
        active: None,
        next_deployment: 1,
        links: Vec::new(),
        aliases: Vec::new(),
        disk: None,
        owner: None,
        slot: 0,
        https: state::GearHttps::default(),
    }
}

#[test]
fn a_gear_update_is_saved_before_it_is_seen() {
    let (_dir, node) = node();
    let record = test_record();
    std::fs::create_dir_all(node.config().gears_dir().join(&record.id)).expect("gear dir");
    let g = Gear::new(node.config(), record.clone());
    assert_eq!(g.state(), GearState::New);
    let next = g
        .update(node.config(), |r| {
            r.state = GearState::Running;
            r.desired = Desired::Running;
        })
        .expect("saved");
    assert_eq!(g.state(), GearState::Running, "the lock-free state follows");
    assert_eq!(g.record(), next);
    let (stored, orphans) = state::load_gears(&node.config().gears_dir()).expect("load");
    assert!(orphans.is_empty());
    assert_eq!(stored, vec![next]);
}

#[test]
fn slips_are_suggested_and_strangers_are_not() {
    let names = ["web".to_string(), "worker".into(), "db".into()];
    assert_eq!(did_you_mean("wbe", &names), Some("web"));
    assert_eq!(did_you_mean("workr", &names), Some("worker"));
    assert_eq!(
        did_you_mean("web", &names),
        None,
        "an exact name is no slip"
    );
    assert_eq!(did_you_mean("api", &names), None);
    assert_eq!(did_you_mean("x", &names), None);
}

#[test]
fn ids_are_sixteen_random_hex_digits() {
    let a = gears::new_id();
    let b = gears::new_id();
    assert_eq!(a.len(), 16);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b);
}

#[test]
fn the_table_counts_namespaces_and_indexes_links_by_target() {
    let (_dir, node) = node();
    let make = |id: &str, name: &str, namespace: &str, links: &[&str]| {
        let record = GearRecord {
            id: id.into(),
            name: name.into(),
            namespace: namespace.into(),
            links: links
                .iter()
                .map(|to| state::Link {
                    gear: (*to).into(),
                    port: 5432,
                    created: 0,
                })
                .collect(),
            ..test_record()
        };
        Arc::new(Gear::new(node.config(), record))
    };
    let mut table = table::GearTable::default();
    table.insert("db".into(), make("db", "db", "team", &[]));
    table.insert("app".into(), make("app", "app", "team", &["db"]));
    table.insert("web".into(), make("web", "web", "default", &[]));
    let linked = |t: &table::GearTable, id: &str| -> Vec<String> {
        t.linked_to(id).iter().map(|g| g.record().id).collect()
    };
    assert_eq!(
        linked(&table, "db"),
        ["app"],
        "a link in a loaded record counts"
    );
    assert!(linked(&table, "app").is_empty());
    table.link("web", "db");
    assert_eq!(linked(&table, "db"), ["app", "web"]);
    table.unlink("web", "db");
    assert_eq!(linked(&table, "db"), ["app"]);
    let counts = table.namespace_counts();
    assert_eq!(
        (counts.get("team"), counts.get("default")),
        (Some(&2), Some(&1))
    );
    // a gear that goes takes its links and its count along
    table.remove("app");
    assert!(linked(&table, "db").is_empty());
    assert_eq!(table.namespace_counts().get("team"), Some(&1));
    table.remove("web");
    assert_eq!(table.namespace_counts().get("default"), None);
}
