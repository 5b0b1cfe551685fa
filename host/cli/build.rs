//! Embeds the guest SDK (`sdk/`: its sources, WIT files, README and
//! Cargo.toml) and the workspace manifest into `gear`, so that
//! `gear cartridge new` can write a vendored copy of the SDK into a crate that
//! builds outside this repository. The list of files is made here, from what
//! `sdk/` holds, so a file added to the SDK is vendored without a change to
//! the CLI.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest_dir.join("../..");
    let sdk = root.join("sdk");
    let mut files = Vec::new();
    for top in ["Cargo.toml", "README.md"] {
        files.push(PathBuf::from(top));
    }
    for dir in ["src", "wit"] {
        collect(&sdk, Path::new(dir), &mut files);
        println!("cargo:rerun-if-changed={}", sdk.join(dir).display());
    }
    files.sort();
    let mut out = String::from(
        "/// The SDK's files, relative to its directory, as `gear cartridge new` vendors them.\n\
         pub(crate) const SDK_FILES: &[(&str, &[u8])] = &[\n",
    );
    for rel in &files {
        let abs = sdk.join(rel).canonicalize().expect("an SDK file");
        println!("cargo:rerun-if-changed={}", abs.display());
        let rel = rel.to_str().expect("SDK paths are UTF-8");
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.to_str().expect("SDK paths are UTF-8")
        )
        .expect("writing to a string");
    }
    out.push_str("];\n");
    let workspace = root
        .join("Cargo.toml")
        .canonicalize()
        .expect("the workspace manifest");
    println!("cargo:rerun-if-changed={}", workspace.display());
    writeln!(
        out,
        "/// The workspace manifest: what the SDK's `workspace = true` keys stand for.\n\
         pub(crate) const WORKSPACE_MANIFEST: &str = include_str!({:?});",
        workspace.to_str().expect("UTF-8 path")
    )
    .expect("writing to a string");
    let dest =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("sdk_files.rs");
    std::fs::write(dest, out).expect("writing the SDK file list");
}

/// Every file under `base/rel`, as paths relative to `base`.
fn collect(base: &Path, rel: &Path, files: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(base.join(rel)).expect("an SDK directory");
    for entry in entries {
        let entry = entry.expect("an SDK directory entry");
        let rel = rel.join(entry.file_name());
        let kind = entry.file_type().expect("an SDK file type");
        if kind.is_dir() {
            collect(base, &rel, files);
        } else if kind.is_file() {
            files.push(rel);
        }
    }
}
