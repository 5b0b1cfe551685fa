//! Makes the image the SELinux check VM runs as a gear (tests/selinux-vm): the small web site
//! of the image gear tests (busybox's httpd on port 80), plus a layer with the programs the
//! in-gear checks need that busybox lacks (`chcon`, and `stat` that shows contexts) and the
//! libraries they load, copied from this machine. It is pushed as `vm/site:1` to a registry
//! that stores in the directory given, so that a registry in the VM can serve the same
//! directory.
//!
//! `cargo run -p gearhost-tests --example vm-image -- DIR`

use std::path::{Path, PathBuf};
use std::process::Command;

use gearhost_tests::images::{
    GZIP_LAYER, TAR_LAYER, busybox_site_layer, gzip, layout, push, site_config, site_page_layer,
};
use gearhost_tests::registry::Registry;

/// The programs, and every library `ldd` says they load.
fn with_libraries(programs: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = programs.iter().map(PathBuf::from).collect();
    for program in programs {
        let out = Command::new("ldd").arg(program).output().expect("ldd");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|p| p.starts_with('/'));
            if let Some(path) = path {
                files.push(PathBuf::from(path));
            }
        }
    }
    files.sort();
    files.dedup();
    files
}

/// A layer of `files`: `programs` in `bin/` (on the image's `PATH`) and at their own paths
/// (the checks name `/usr/bin/stat`: a busybox shell prefers its own applets), libraries at
/// their paths (symlinks followed: the image gets the files).
fn tools_layer(programs: &[&str], files: &[PathBuf]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(true);
    for file in files {
        if let Some(name) = file.file_name()
            && programs.iter().any(|p| Path::new(p) == file)
        {
            b.append_path_with_name(file, Path::new("bin").join(name))
                .expect("tar");
        }
        let inner = file.strip_prefix("/").expect("absolute");
        b.append_path_with_name(file, inner).expect("tar");
    }
    gzip(&b.into_inner().expect("tar"))
}

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("the registry directory"));
    std::fs::create_dir_all(&out).expect("registry directory");
    let programs = ["/usr/bin/chcon", "/usr/bin/stat"];
    let tools = with_libraries(&programs);
    let dir = tempfile::tempdir().expect("layout");
    layout(
        dir.path(),
        "1",
        site_config(80),
        &[
            (GZIP_LAYER, busybox_site_layer()),
            (GZIP_LAYER, tools_layer(&programs, &tools)),
            (TAR_LAYER, site_page_layer("1")),
        ],
    );
    let registry = Registry::start_in(Path::new(&out));
    let reference = format!("{}/vm/site:1", registry.addr);
    push(dir.path(), "1", &reference);
    drop(registry);
    println!("vm/site:1 stored in {}", out.display());
}
