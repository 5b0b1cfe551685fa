//! `gear cartridge new NAME [--dir PATH]`: write a new cartridge crate that
//! builds anywhere, outside this repository: a `Cargo.toml` with explicit
//! keys and a `[workspace]` of its own, a working `cartridge.toml`, hooks in
//! `src/lib.rs` with unit tests, and the guest SDK vendored under
//! `vendor/gearhost-sdk` (its sources embedded in `gear` at build time, its
//! workspace keys resolved).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use toml::{Table, Value};

use crate::{CmdResult, Failure};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

/// Where the SDK goes inside the new crate.
const VENDOR_DIR: &str = "vendor/gearhost-sdk";

/// Arguments of `gear cartridge new`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cartridge's name (and its crate's): lower-case letters, digits and
    /// single dashes, starting with a letter, at most 32 characters.
    pub name: String,
    /// The directory to create (default: ./NAME). It must not exist yet.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    if let Err(problem) = gearhost_runtime::manifest::check_name(&args.name, 32) {
        return Err(Failure::Invalid(anyhow!(
            "invalid cartridge name {:?}: {problem}; use 1-32 lower-case letters, digits and \
             single dashes, starting with a letter, e.g. \"my-site\"",
            args.name
        )));
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let files = crate_files(&args.name).map_err(Failure::Failed)?;
    write_new_dir(&dir, &files)?;
    let crate_file = args.name.replace('-', "_");
    println!("created cartridge {} in {}", args.name, dir.display());
    println!();
    println!("  cd {}", dir.display());
    println!("  cargo build --target wasm32-wasip2 --release");
    println!("  cp target/wasm32-wasip2/release/{crate_file}.wasm hooks.wasm");
    println!("  gear cartridge check .");
    println!("  gear cartridge call . start");
    Ok(())
}

/// Every file of the new crate, by path relative to its directory.
fn crate_files(name: &str) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let sdk_version = env!("CARGO_PKG_VERSION");
    let rust_version = env!("CARGO_PKG_RUST_VERSION");
    let fill = |template: &str| {
        template
            .replace("@NAME@", name)
            .replace("@CRATE@", &name.replace('-', "_"))
            .replace("@SDK_VERSION@", sdk_version)
            .replace("@RUST_VERSION@", rust_version)
            .into_bytes()
    };
    let mut files = vec![
        (
            PathBuf::from("Cargo.toml"),
            fill(include_str!("Cargo.toml.tmpl")),
        ),
        (
            PathBuf::from("cartridge.toml"),
            fill(include_str!("cartridge.toml.tmpl")),
        ),
        (
            PathBuf::from("src/lib.rs"),
            fill(include_str!("lib.rs.tmpl")),
        ),
        (
            PathBuf::from("README.md"),
            fill(include_str!("README.md.tmpl")),
        ),
        (
            PathBuf::from(".cargo/config.toml"),
            fill(include_str!("cargo-config.toml.tmpl")),
        ),
        (
            PathBuf::from(".gitignore"),
            fill(include_str!("gitignore.tmpl")),
        ),
    ];
    for (path, bytes) in SDK_FILES {
        let contents = if *path == "Cargo.toml" {
            let text = std::str::from_utf8(bytes).context("the SDK's Cargo.toml is not UTF-8")?;
            standalone_manifest(text, WORKSPACE_MANIFEST)?.into_bytes()
        } else {
            bytes.to_vec()
        };
        files.push((Path::new(VENDOR_DIR).join(path), contents));
    }
    Ok(files)
}

/// Create `dir` (refusing one that exists) and write `files` into it; on a
/// failure, remove what was written.
fn write_new_dir(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> CmdResult {
    if std::fs::symlink_metadata(dir).is_ok() {
        return Err(Failure::Invalid(anyhow!(
            "{} already exists; gear cartridge new writes a new directory and never overwrites \
             one: choose another NAME or --dir",
            dir.display()
        )));
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))
            .map_err(Failure::Environment)?;
    }
    // create_dir, not create_dir_all: it fails if the directory appeared meanwhile
    std::fs::create_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::Invalid(anyhow!(
                "{} already exists; choose another NAME or --dir",
                dir.display()
            ))
        } else {
            Failure::Environment(anyhow!("cannot create {}: {e}", dir.display()))
        }
    })?;
    let written = files.iter().try_for_each(|(path, contents)| {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(dir);
        return Err(Failure::Environment(anyhow!(
            "cannot write the new cartridge into {}: {e}",
            dir.display()
        )));
    }
    Ok(())
}

/// A workspace member's manifest made standalone: every `key.workspace =
/// true` of `[package]` and of the dependency tables replaced by the
/// workspace's value (a dependency's own `features` and `optional` kept), and
/// `[lints]` dropped (the workspace's lints are its own developers' business,
/// not a vendored copy's).
fn standalone_manifest(member: &str, workspace: &str) -> anyhow::Result<String> {
    let mut member: Table = toml::from_str(member).context("the SDK's Cargo.toml")?;
    let workspace: Table = toml::from_str(workspace).context("the workspace's Cargo.toml")?;
    let ws = workspace
        .get("workspace")
        .and_then(Value::as_table)
        .ok_or_else(|| anyhow!("the workspace manifest has no [workspace]"))?;
    let empty = Table::new();
    let ws_package = ws
        .get("package")
        .and_then(Value::as_table)
        .unwrap_or(&empty);
    let ws_deps = ws
        .get("dependencies")
        .and_then(Value::as_table)
        .unwrap_or(&empty);

    if let Some(package) = member.get_mut("package").and_then(Value::as_table_mut) {
        for (key, value) in package.iter_mut() {
            if inherits(value) {
                *value = ws_package.get(key).cloned().ok_or_else(|| {
                    anyhow!("package.{key} is inherited but the workspace has none")
                })?;
            }
        }
    }
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = member.get_mut(table).and_then(Value::as_table_mut) else {
            continue;
        };
        for (name, dep) in deps.iter_mut() {
            if !inherits(dep) {
                continue;
            }
            let mut resolved = match ws_deps.get(name) {
                Some(Value::String(version)) => {
                    Table::from_iter([("version".to_string(), Value::String(version.clone()))])
                }
                Some(Value::Table(t)) => t.clone(),
                _ => bail!("{table}.{name} is inherited but the workspace does not list it"),
            };
            if resolved.contains_key("path") || resolved.contains_key("git") {
                bail!(
                    "{table}.{name} comes from a path or git repository, not a registry: it cannot be vendored"
                );
            }
            let own = dep.as_table().cloned().unwrap_or_default();
            if let Some(Value::Array(extra)) = own.get("features") {
                let features = resolved
                    .entry("features")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = features {
                    for f in extra {
                        if !list.contains(f) {
                            list.push(f.clone());
                        }
                    }
                }
            }
            if let Some(optional) = own.get("optional") {
                resolved.insert("optional".into(), optional.clone());
            }
            *dep = Value::Table(resolved);
        }
    }
    member.remove("lints");
    // [package] first, as people write it; the rest in order
    let mut text = String::new();
    let package = member.remove("package");
    for (key, value) in package
        .map(|p| ("package".to_string(), p))
        .into_iter()
        .chain(member)
    {
        let section = Table::from_iter([(key, value)]);
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&toml::to_string(&section).context("writing the vendored SDK's Cargo.toml")?);
    }
    Ok(format!(
        "# The Gearhost guest SDK, vendored by `gear cartridge new` from gear {}, with the\n\
         # keys it inherited from the Gearhost workspace written out.\n\n{text}",
        env!("CARGO_PKG_VERSION")
    ))
}

/// Whether a manifest value is `{ workspace = true, ... }`.
fn inherits(value: &Value) -> bool {
    value
        .as_table()
        .and_then(|t| t.get("workspace"))
        .and_then(Value::as_bool)
        == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_sdk_inherits_nothing() {
        let (_, sdk) = SDK_FILES
            .iter()
            .find(|(p, _)| *p == "Cargo.toml")
            .expect("the SDK's Cargo.toml is embedded");
        let text =
            standalone_manifest(std::str::from_utf8(sdk).expect("UTF-8"), WORKSPACE_MANIFEST)
                .expect("resolves");
        let manifest: Table = toml::from_str(&text).expect("valid TOML");
        let package = manifest["package"].as_table().expect("[package]");
        assert_eq!(package["name"].as_str(), Some("gearhost-sdk"));
        assert_eq!(package["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
        assert!(package["edition"].as_str().is_some());
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains("workspace")),
            "{text}"
        );
        assert!(!manifest.contains_key("lints"));
        let wit_bindgen = manifest["dependencies"]["wit-bindgen"]
            .as_table()
            .expect("wit-bindgen as a table");
        assert!(wit_bindgen["version"].as_str().is_some(), "{text}");
    }

    #[test]
    fn a_dependencys_own_keys_are_kept_over_the_workspaces() {
        let member = "[package]\nname = \"m\"\nversion.workspace = true\n\
                      [dependencies]\nserde = { workspace = true, features = [\"rc\"], optional = true }\n\
                      plain = \"1\"\n[lints]\nworkspace = true\n";
        let workspace = "[workspace.package]\nversion = \"2.0.0\"\n\
                         [workspace.dependencies]\nserde = { version = \"1\", features = [\"derive\"] }\n";
        let text = standalone_manifest(member, workspace).expect("resolves");
        let m: Table = toml::from_str(&text).expect("TOML");
        assert_eq!(m["package"]["version"].as_str(), Some("2.0.0"));
        let serde = m["dependencies"]["serde"].as_table().expect("table");
        assert_eq!(serde["version"].as_str(), Some("1"));
        let features: Vec<_> = serde["features"]
            .as_array()
            .expect("features")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(features, ["derive", "rc"]);
        assert_eq!(serde["optional"].as_bool(), Some(true));
        assert_eq!(m["dependencies"]["plain"].as_str(), Some("1"));
        let internal = "[workspace.dependencies]\nserde = { path = \"../serde\" }\n";
        assert!(standalone_manifest(member, internal).is_err());
    }

    #[test]
    fn the_new_crate_is_complete_and_named() {
        let files = crate_files("my-site").expect("files");
        let find = |p: &str| {
            files
                .iter()
                .find(|(path, _)| path == Path::new(p))
                .map(|(_, c)| String::from_utf8(c.clone()).expect("UTF-8"))
                .unwrap_or_else(|| panic!("{p} is missing"))
        };
        let cargo: Table = toml::from_str(&find("Cargo.toml")).expect("Cargo.toml");
        assert_eq!(cargo["package"]["name"].as_str(), Some("my-site"));
        assert!(cargo.contains_key("workspace"), "a workspace of its own");
        assert_eq!(
            cargo["dependencies"]["gearhost-sdk"]["path"].as_str(),
            Some(VENDOR_DIR)
        );
        let manifest =
            gearhost_runtime::Manifest::parse(&find("cartridge.toml"), Path::new("cartridge.toml"))
                .expect("the manifest is valid");
        assert_eq!(manifest.name, "my-site");
        assert!(manifest.permissions.spawn.allows("python3"));
        assert!(find("src/lib.rs").contains("export_cartridge!(App)"));
        assert!(find("README.md").contains("release/my_site.wasm"));
        assert!(
            !find("src/lib.rs").contains('@'),
            "a placeholder left unfilled"
        );
        assert!(files.iter().any(|(p, _)| p.ends_with("wit/cartridge.wit")));
        assert!(
            files
                .iter()
                .any(|(p, _)| p.ends_with("src/lib.rs") && p.starts_with(VENDOR_DIR))
        );
    }

    #[test]
    fn an_existing_directory_is_never_overwritten() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("taken");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("keep"), "mine").expect("write");
        let err = write_new_dir(&dir, &[(PathBuf::from("keep"), b"theirs".to_vec())])
            .expect_err("refused");
        assert!(matches!(err, Failure::Invalid(_)), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep")).expect("read"),
            "mine"
        );
    }
}
