//! The unpacking rules, each broken by an archive made here.

use super::*;

const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 100,
};

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h
}

/// Write a name straight into the header (the tar crate's own setters
/// refuse `..` and absolute paths, which a hostile client would not use).
fn raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) {
    let mut h = header(tar::EntryType::Regular, body.len() as u64);
    raw_name(&mut h, name);
    h.set_cksum();
    b.append(&h, body).expect("append");
}

fn special(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str) {
    let mut h = header(kind, 0);
    raw_name(&mut h, name);
    let l = &mut h.as_old_mut().linkname;
    l[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, std::io::empty()).expect("append");
}

fn finish(b: tar::Builder<Vec<u8>>) -> Vec<u8> {
    b.into_inner().expect("archive")
}

/// Unpack into `<tmp>/target`, and list what exists in `<tmp>` besides
/// the target afterwards (must stay empty: nothing outside).
fn run(bytes: &[u8], limits: Limits) -> (Result<Unpacked, UnpackError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let got = unpack(bytes, &tmp.path().join("target"), limits, None);
    let outside: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "target")
        .collect();
    assert!(
        outside.is_empty(),
        "created outside the target: {outside:?}"
    );
    (got, tmp)
}

fn refused(bytes: &[u8], limits: Limits, entry: &str, rule: &str) {
    let (got, _tmp) = run(bytes, limits);
    let e = got.expect_err("refused");
    let text = e.to_string();
    assert!(text.contains(entry), "names {entry}: {text}");
    assert!(text.contains(rule), "says {rule}: {text}");
}

#[test]
fn a_plain_tree_is_unpacked_with_its_links_as_links() {
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "static/", tar::EntryType::Directory, "");
    file(&mut b, "static/site.css", b"body{}");
    file(&mut b, "./app/main.py", b"print(1)");
    special(&mut b, "host-etc", tar::EntryType::Symlink, "/etc");
    special(&mut b, "main.py", tar::EntryType::Symlink, "app/main.py");
    let (got, tmp) = run(&finish(b), LIMITS);
    let done = got.expect("unpacked");
    assert_eq!(done.entries, 5);
    assert_eq!(done.bytes, 14);
    let t = tmp.path().join("target");
    assert_eq!(
        std::fs::read(t.join("static/site.css")).expect("file"),
        b"body{}"
    );
    assert_eq!(
        std::fs::read(t.join("main.py")).expect("via link"),
        b"print(1)"
    );
    let link = std::fs::read_link(t.join("host-etc")).expect("a link");
    assert_eq!(link, Path::new("/etc"));
}

#[test]
fn a_path_with_dot_dot_is_refused() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "../x", b"escaped");
    refused(&finish(b), LIMITS, "../x", "`..`");
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a/../../x", b"escaped");
    refused(&finish(b), LIMITS, "a/../../x", "`..`");
}

#[test]
fn an_absolute_path_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let victim = dir.path().join("victim");
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, victim.to_str().expect("utf-8"), b"escaped");
    refused(&finish(b), LIMITS, "victim", "not absolute");
    assert!(!victim.exists());
}

#[test]
fn nothing_is_unpacked_through_a_symlink_the_archive_made() {
    let outside = tempfile::tempdir().expect("temporary directory");
    let mut b = tar::Builder::new(Vec::new());
    special(
        &mut b,
        "a",
        tar::EntryType::Symlink,
        outside.path().to_str().expect("utf-8"),
    );
    file(&mut b, "a/passwd", b"root::0:0::/:/bin/sh");
    refused(&finish(b), LIMITS, "a/passwd", "through a symlink");
    assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);
    // the same with a directory entry, and with /etc itself
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "a", tar::EntryType::Symlink, "/etc");
    special(&mut b, "a/sub/", tar::EntryType::Directory, "");
    refused(&finish(b), LIMITS, "a/sub", "through a symlink");
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "a", tar::EntryType::Symlink, "/etc");
    file(&mut b, "a", b"over the link");
    refused(&finish(b), LIMITS, "a", "names it twice");
}

#[test]
fn devices_fifos_and_hard_links_are_refused() {
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "null", tar::EntryType::Char, "");
    refused(&finish(b), LIMITS, "null", "device nodes are not unpacked");
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "disk", tar::EntryType::Block, "");
    refused(&finish(b), LIMITS, "disk", "device nodes are not unpacked");
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "pipe", tar::EntryType::Fifo, "");
    refused(&finish(b), LIMITS, "pipe", "FIFOs are not unpacked");
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "shadow", tar::EntryType::Link, "/etc/shadow");
    refused(&finish(b), LIMITS, "shadow", "hard links are not unpacked");
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "one", b"1");
    special(&mut b, "two", tar::EntryType::Link, "one");
    refused(&finish(b), LIMITS, "two", "hard links are not unpacked");
}

#[test]
fn the_size_and_entry_limits_hold() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "small", &[1; 1000]);
    file(&mut b, "big", &[2; 1000]);
    let small = Limits {
        max_bytes: 1500,
        max_entries: 100,
    };
    refused(&finish(b), small, "big", "gears.max-deploy-size");
    // a header that claims far more than is sent is refused before any write
    let mut h = header(tar::EntryType::Regular, 0);
    raw_name(&mut h, "huge");
    h.set_size(1 << 40);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4096]);
    refused(&bytes, LIMITS, "huge", "gears.max-deploy-size");
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..=LIMITS.max_entries {
        file(&mut b, &format!("f{i}"), b"");
    }
    refused(&finish(b), LIMITS, "f100", "more than 100 entries");
}

#[test]
fn an_oversized_long_name_is_not_read_into_memory() {
    // a GNU long-name record of 8 MiB: more framing than any entry needs
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    raw_name(&mut h, "././@LongLink");
    h.set_size(8 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.resize(bytes.len() + (8 << 20) + 1024, b'a');
    let (got, _tmp) = run(&bytes, LIMITS);
    let e = got.expect_err("refused");
    assert!(e.to_string().contains("oversized header"), "{e}");
}

#[test]
fn an_archive_cut_short_is_refused() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a", b"complete");
    let mut bytes = finish(b);
    bytes.truncate(1024); // the header and data, no end marker
    let (got, _tmp) = run(&bytes, LIMITS);
    let e = got.expect_err("refused");
    assert!(e.to_string().contains("end marker"), "{e}");
    // inside a file's data
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a", &[7; 4000]);
    let mut bytes = finish(b);
    bytes.truncate(2048);
    let (got, _tmp) = run(&bytes, LIMITS);
    assert!(got.is_err());
}

#[test]
fn a_silent_sender_is_given_up_on() {
    let (r, _w) = std::io::pipe().expect("pipe");
    let mut reader = PatientReader::new(OwnedFd::from(r), Duration::from_millis(100));
    let e = reader.read(&mut [0; 16]).expect_err("timed out");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}
