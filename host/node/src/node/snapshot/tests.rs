//! The snapshot format read back, and the writer over a gear directory with what it cannot carry.

use super::*;

fn meta() -> Meta {
    Meta {
        format: FORMAT,
        name: "web".into(),
        namespace: "team".into(),
        cartridge: "static".into(),
        cartridge_version: "0.1.0".into(),
        uid: 5001,
        mcs_level: "s0:c1,c2".into(),
        taken: 1_800_000_000,
        gear_created: 1_700_000_000,
        was_running: true,
        user_env: BTreeMap::from([("GREETING".into(), "hi".into())]),
        cartridge_env: BTreeMap::new(),
        aliases: vec!["www.example.com".into()],
        https: GearHttps::default(),
        disk: None,
        active: Some(2),
        next_deployment: 3,
        deployments: vec![Deployment {
            id: 2,
            created: 1_750_000_000,
            source: "/src".into(),
            state: DeploymentState::Ready,
            error: None,
            image: None,
            port: None,
        }],
    }
}

#[test]
fn a_description_reads_back_and_other_formats_are_named() {
    let bytes = serde_json::to_vec(&meta()).expect("json");
    assert_eq!(Meta::parse(&bytes), Ok(meta()));
    let mut other: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    other["format"] = 2.into();
    let e = Meta::parse(&serde_json::to_vec(&other).expect("json")).expect_err("format 2");
    assert!(
        e.contains("is of format 2") && e.contains("reads format 1"),
        "{e}"
    );
    let mut unknown: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    unknown["planted"] = true.into();
    let e = Meta::parse(&serde_json::to_vec(&unknown).expect("json")).expect_err("member");
    assert!(e.contains("planted"), "{e}");
    let e = Meta::parse(b"not json").expect_err("not json");
    assert!(e.contains("not an archive of `gear snapshot`"), "{e}");
}

#[test]
fn a_description_must_hold_together() {
    let mut m = meta();
    m.active = Some(7);
    assert!(
        m.check()
            .expect_err("active")
            .contains("deployment 7 active")
    );
    let mut m = meta();
    m.next_deployment = 2;
    assert!(m.check().expect_err("next").contains("past its next one"));
    let mut m = meta();
    m.deployments.push(m.deployments[0].clone());
    assert!(m.check().expect_err("twice").contains("twice"));
}

/// A gear directory with one deployment and data holding a nested file,
/// a symlink out, a FIFO and a socket.
fn gear_dir() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("gear");
    let p = root.path();
    std::fs::create_dir_all(p.join("deployments/2")).expect("mkdir");
    std::fs::write(p.join("deployments/2/index.html"), "two\n").expect("write");
    std::fs::create_dir_all(p.join("home/app-root/data/a/b")).expect("mkdir");
    std::fs::write(p.join("home/app-root/data/a/b/c.txt"), "deep\n").expect("write");
    std::os::unix::fs::symlink("/etc", p.join("home/app-root/data/etc")).expect("link");
    nix::unistd::mkfifo(
        &p.join("home/app-root/data/pipe"),
        Mode::from_bits_truncate(0o600),
    )
    .expect("fifo");
    let _socket = std::os::unix::net::UnixListener::bind(p.join("home/app-root/data/app.sock"))
        .expect("socket");
    root
}

fn write_to_vec(root: &Path, m: &Meta) -> (Result<Written, String>, Vec<u8>) {
    let (read, write) = std::io::pipe().expect("pipe");
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut read = read;
        read.read_to_end(&mut bytes).expect("read");
        bytes
    });
    let written = write_archive(OwnedFd::from(write), root, m);
    (written, reader.join().expect("reader"))
}

#[test]
fn the_archive_holds_the_description_first_and_leaves_out_what_it_cannot_carry() {
    let root = gear_dir();
    let (written, bytes) = write_to_vec(root.path(), &meta());
    let written = written.expect("written");
    assert_eq!(written.bytes, bytes.len() as u64);
    let mut skipped = written.skipped.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "home/app-root/data/app.sock: a socket, which a snapshot does not carry",
            "home/app-root/data/pipe: a FIFO, which a snapshot does not carry",
        ]
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut names = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        if name == "home/app-root/data/etc" {
            assert_eq!(
                entry.link_name().expect("link").as_deref(),
                Some(Path::new("/etc")),
                "a link is carried as a link"
            );
        }
        if name == META {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).expect("read");
            assert_eq!(Meta::parse(&text), Ok(meta()));
        }
        names.push(name);
    }
    assert_eq!(
        names,
        [
            META,
            "deployments",
            "deployments/2",
            "deployments/2/index.html",
            "home",
            "home/app-root",
            "home/app-root/data",
            "home/app-root/data/a",
            "home/app-root/data/a/b",
            "home/app-root/data/a/b/c.txt",
            "home/app-root/data/etc",
        ]
    );
    assert_eq!(written.entries, names.len() as u64);
}

#[test]
fn a_data_directory_swapped_for_a_link_is_not_followed() {
    let root = gear_dir();
    let data = root.path().join("home/app-root/data");
    std::fs::rename(&data, root.path().join("home/app-root/moved")).expect("move");
    std::os::unix::fs::symlink("/etc", &data).expect("link");
    let (written, _) = write_to_vec(root.path(), &meta());
    let e = written.expect_err("refused");
    assert!(
        e.contains("the gear's data directory") && e.contains("not a directory"),
        "{e}"
    );
}
