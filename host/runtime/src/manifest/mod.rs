//! The cartridge manifest (`cartridge.toml`): the TOML people write, and the
//! validated, resolved form the rest of Gearhost reads.
//!
//! Parsing is two-staged: private `Raw*` structs mirror the file exactly
//! (`deny_unknown_fields`, a `schema` version), then [`Manifest::parse`]
//! checks every field and resolves defaults. Every mistake becomes a
//! [`ManifestError`] that names the file, the field, the line and what to do
//! about it. The pieces:
//!
//! - this file: the resolved types ([`Manifest`] and its parts), the error,
//!   and loading a cartridge directory;
//! - `parse`: the file as people write it, read into the `Raw*` structs, and
//!   serde's errors said in the manifest's terms;
//! - `resolve`: every field checked and resolved into a [`Manifest`];
//! - `programs`: the program lists of `[permissions]` and how a program is
//!   matched against them;
//! - `values`: names, sizes and the bounds and defaults of hook limits,
//!   which the rest of Gearhost checks the same way.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

mod parse;
mod programs;
mod resolve;
mod values;

pub use programs::ProgramList;
pub use values::{check_name, format_size, parse_size};

use parse::{Ctx, find_key_span, parse_raw};
use resolve::resolve;

/// The manifest schema this host understands.
pub const SCHEMA_VERSION: u32 = 1;
/// File name of the manifest inside a cartridge directory.
pub const MANIFEST_FILE: &str = "cartridge.toml";

/// A validated cartridge manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    /// Cartridge name: `[a-z][a-z0-9-]*`, at most 32 characters.
    pub name: String,
    /// Cartridge version (semver).
    pub version: semver::Version,
    /// Name shown to people; defaults to `name`.
    pub display_name: String,
    /// One-paragraph description; may be empty.
    pub description: String,
    /// Free-form categories such as `web` or `database`.
    pub categories: Vec<String>,
    /// The actions its `control` hook implements, as the manifest lists them
    /// (the same as the SDK's `Cartridge::ACTIONS`), for people and shell
    /// completion; empty when it lists none.
    pub actions: Vec<String>,
    /// The hooks component, relative to the manifest's directory.
    pub hooks: PathBuf,
    /// Network endpoints the cartridge's app listens on inside its gear.
    pub endpoints: Vec<Endpoint>,
    /// Limits for each hook call.
    pub limits: Limits,
    /// What the hooks may ask the host to do.
    pub permissions: Permissions,
    /// How the cartridge's gears relate to deployments.
    pub deploy: Deploy,
    /// What a gear linked to one of this cartridge's gears receives.
    pub publish: Publish,
}

/// How a cartridge's gears relate to deployments (`[deploy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Deploy {
    /// Whether a gear needs a deployment before it can start (`true` for
    /// apps; `false` for services such as databases, which start empty).
    pub required: bool,
    /// Whether its gears take deployments at all (`true` by default;
    /// `false` for a service that runs only what the cartridge brings, such
    /// as a database: `gear deploy` to it is refused).
    pub accepts: bool,
    /// Whether a new deployment (or a restart) of a running gear may start
    /// beside the serving one, on the endpoints' [`Endpoint::beside_port`]s,
    /// and take over once it answers (`start-beside = true`, for stateless
    /// web apps). Otherwise the app restarts in place while the frontend
    /// holds its requests.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub start_beside: bool,
}

/// What a cartridge publishes to gears linked to its gears (`[publish]`).
///
/// `gear link APP DB` lets APP reach DB's primary endpoint on APP's own
/// loopback and gives APP the values of DB's variables listed here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Publish {
    /// Names of the gear's environment variables a linked gear receives
    /// (never system variables such as `GEAR_*` or `PATH`).
    pub env: Vec<String>,
}

/// A network endpoint declared by a cartridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    /// Endpoint name, unique within the cartridge (e.g. `http`).
    pub name: String,
    /// Port the app listens on inside the gear's network namespace.
    pub private_port: u16,
    /// Protocols spoken on the port.
    pub protocols: Vec<String>,
}

/// How far from its declared port an endpoint listens while a new start of
/// the app runs beside the serving one (see [`Deploy::start_beside`]).
pub const BESIDE_OFFSET: u16 = 10_000;

/// The port endpoint port `port` moves to in a start beside the serving
/// app: [`BESIDE_OFFSET`] above it, or below it near the top of the range.
pub fn beside_port(port: u16) -> u16 {
    port.checked_add(BESIDE_OFFSET)
        .unwrap_or_else(|| port - BESIDE_OFFSET)
}

impl Endpoint {
    /// Where this endpoint listens in slot `slot`: the declared port in
    /// slot 0, its [`beside_port`] in slot 1.
    pub fn port_in(&self, slot: u8) -> u16 {
        slot_port(self.private_port, slot)
    }
}

/// Port `port` in slot `slot` (see [`Endpoint::port_in`]).
pub fn slot_port(port: u16, slot: u8) -> u16 {
    if slot == 0 { port } else { beside_port(port) }
}

/// Hook limits from the manifest (the node may lower them further).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Limits {
    /// Wall-clock budget of `start`, `stop` and `control`.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Wall-clock budget of `build`.
    #[serde(with = "humantime_serde_compat")]
    pub build_timeout: Duration,
    /// Linear-memory cap of one hook instance, in bytes.
    pub memory: u64,
}

/// What the hooks may ask the host to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Permissions {
    /// Programs `exec` may run.
    pub exec: ProgramList,
    /// Programs `spawn` may start.
    pub spawn: ProgramList,
    /// Whether programs run by the `build` hook may use the network.
    pub build_network: bool,
}
/// A manifest that could not be read or is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// Dotted path of the offending field (`endpoints[0].private-port`), or
    /// empty when the problem is the file as a whole.
    pub field: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub help: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.problem)?;
        } else {
            write!(f, ": field `{}`: {}", self.field, self.problem)?;
        }
        write!(f, "\n  help: {}", self.help)
    }
}
impl Manifest {
    /// Read and validate `<dir>/cartridge.toml`. The hooks file is checked to
    /// exist inside `dir`.
    pub fn load_dir(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError {
                    path,
                    field: String::new(),
                    location: None,
                    problem: "no cartridge manifest here".into(),
                    help: format!(
                        "a cartridge is a directory with a `{MANIFEST_FILE}` and its hooks component; \
                         check the path, or see docs/cartridge-guide.md to write one"
                    ),
                });
            }
            Err(e) => {
                return Err(ManifestError {
                    path,
                    field: String::new(),
                    location: None,
                    problem: format!("cannot read the manifest: {e}"),
                    help: "make the file readable by the user running gear".into(),
                });
            }
        };
        let manifest = Manifest::parse(&text, &path)?;
        manifest.check_hooks_file(dir, &path, &text)?;
        Ok(manifest)
    }

    /// Parse and validate manifest text; `path` is only used in messages.
    /// Does not look at the file system.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let ctx = Ctx { path, text };
        let raw = parse_raw(&ctx)?;
        resolve(&ctx, raw)
    }

    /// The absolute path of the hooks component, given the package directory.
    pub fn hooks_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.hooks)
    }

    /// The first endpoint, which is where the app is expected to answer.
    pub fn primary_endpoint(&self) -> Option<&Endpoint> {
        self.endpoints.first()
    }

    /// The endpoint the frontend sends HTTP to: the first that speaks HTTP or websockets (a
    /// database's port never gets HTTP).
    pub fn http_endpoint(&self) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| {
            e.protocols
                .iter()
                .any(|p| matches!(p.as_str(), "http" | "websocket"))
        })
    }

    fn check_hooks_file(&self, dir: &Path, path: &Path, text: &str) -> Result<(), ManifestError> {
        let ctx = Ctx { path, text };
        let span = find_key_span(text, "hooks");
        let hooks = self.hooks_path(dir);
        let build_help = format!(
            "build the hooks component (`cargo build --release --target wasm32-wasip2`) \
             and copy the resulting .wasm file to {}",
            hooks.display()
        );
        match std::fs::symlink_metadata(&hooks) {
            Ok(meta) if meta.is_file() => Ok(()),
            Ok(meta) if meta.file_type().is_symlink() => ctx.err(
                "hooks",
                span,
                format!("{} is a symbolic link", hooks.display()),
                "copy the component into the cartridge directory instead of linking to it",
            ),
            Ok(_) => ctx.err(
                "hooks",
                span,
                format!("{} is not a regular file", hooks.display()),
                build_help,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ctx.err(
                "hooks",
                span,
                format!("the hooks component {} does not exist", hooks.display()),
                build_help,
            ),
            Err(e) => ctx.err(
                "hooks",
                span,
                format!("cannot read {}: {e}", hooks.display()),
                "make the file readable by the user running gear",
            ),
        }
    }
}
/// `Duration` as `"30s"` in JSON output.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
