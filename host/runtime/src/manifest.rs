//! The cartridge manifest (`cartridge.toml`): the TOML people write, and the
//! validated, resolved form the rest of Gearhost reads.
//!
//! Parsing is two-staged (house rule 3): [`RawManifest`]-like private structs
//! mirror the file exactly (`deny_unknown_fields`, a `schema` version), then
//! [`Manifest::from_str`] checks every field and resolves defaults. Every
//! mistake becomes a [`ManifestError`] that names the file, the field, the
//! line and what to do about it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The manifest schema this host understands.
pub const SCHEMA_VERSION: u32 = 1;
/// File name of the manifest inside a cartridge directory.
pub const MANIFEST_FILE: &str = "cartridge.toml";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_MEMORY: u64 = 128 * MIB;
const MIN_MEMORY: u64 = 2 * MIB;
const MAX_MEMORY: u64 = 4 * GIB;
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const KNOWN_PROTOCOLS: &[&str] = &["http", "https", "websocket", "tcp", "udp"];

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

/// A list of program patterns: bare names (looked up in the gear's PATH) or
/// absolute paths, where `*` matches within one path segment and a lone `*`
/// matches every program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProgramList(Vec<String>);

impl ProgramList {
    /// The patterns, as written.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    /// Whether `program` (as a hook asked for it) is allowed.
    ///
    /// A bare name only matches bare-name patterns and an absolute path only
    /// matches absolute patterns, so `python3` in the list never lets a hook
    /// run `/gear/app/python3`. Paths containing `.` or `..` segments never
    /// match.
    pub fn allows(&self, program: &str) -> bool {
        if program.is_empty() || program.contains('\0') {
            return false;
        }
        let absolute = program.starts_with('/');
        if absolute && !is_normal_absolute(program) {
            return false;
        }
        if !absolute && program.contains('/') {
            return false;
        }
        self.0.iter().any(|pattern| {
            pattern == "*"
                || (pattern.starts_with('/') == absolute && glob_path_matches(pattern, program))
        })
    }
}

fn is_normal_absolute(path: &str) -> bool {
    path.len() > 1
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// `*` matches any run of characters other than `/`.
fn glob_path_matches(pattern: &str, candidate: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let cand: Vec<&str> = candidate.split('/').collect();
    pat.len() == cand.len() && pat.iter().zip(&cand).all(|(p, c)| glob_segment(p, c))
}

fn glob_segment(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    if !text.starts_with(head) {
        return false;
    }
    let text = &text[head.len()..];
    (0..=text.len())
        .filter(|i| text.is_char_boundary(*i))
        .any(|i| glob_segment(rest, &text[i..]))
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

// ---------------------------------------------------------------------------
// the file as people write it

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    schema: Spanned<u32>,
    name: Spanned<String>,
    version: Spanned<String>,
    display_name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    #[serde(default)]
    categories: Vec<Spanned<String>>,
    hooks: Spanned<String>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    permissions: RawPermissions,
    #[serde(default)]
    deploy: RawDeploy,
    #[serde(default)]
    publish: RawPublish,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDeploy {
    required: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPublish {
    #[serde(default)]
    env: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEndpoint {
    name: Spanned<String>,
    private_port: Spanned<u16>,
    #[serde(default)]
    protocols: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    timeout: Option<Spanned<String>>,
    build_timeout: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPermissions {
    #[serde(default)]
    exec: Vec<Spanned<String>>,
    #[serde(default)]
    spawn: Vec<Spanned<String>>,
    #[serde(default)]
    build_network: bool,
}

// ---------------------------------------------------------------------------
// resolution

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        field: impl Into<String>,
        span: Option<std::ops::Range<usize>>,
        problem: impl Into<String>,
        help: impl Into<String>,
    ) -> Result<T, ManifestError> {
        Err(ManifestError {
            path: self.path.to_path_buf(),
            field: field.into(),
            location: span.map(|s| line_col(self.text, s.start)),
            problem: problem.into(),
            help: help.into(),
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
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

/// Byte span of the value of a top-level `key = ...` line, for messages about
/// checks made after parsing.
fn find_key_span(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            return None;
        }
        if let Some(rest) = trimmed.strip_prefix(key)
            && let Some(eq) = rest.trim_start().strip_prefix('=')
        {
            let value_start = offset + line.len() - eq.trim_start().len();
            return Some(value_start..value_start + eq.trim().len());
        }
        offset += line.len();
    }
    None
}

fn parse_raw(ctx: &Ctx<'_>) -> Result<RawManifest, ManifestError> {
    let de = match toml::Deserializer::parse(ctx.text) {
        Ok(de) => de,
        Err(e) => {
            return ctx.err(
                "",
                e.span(),
                format!("not valid TOML: {}", first_line(e.message())),
                "fix the syntax at the position shown (strings need quotes, tables need [brackets])",
            );
        }
    };
    match serde_path_to_error::deserialize::<_, RawManifest>(de) {
        Ok(raw) => Ok(raw),
        Err(e) => {
            let field = path_to_field(e.path());
            let inner = e.into_inner();
            let message = first_line(inner.message()).to_string();
            let (problem, help) = explain_serde_error(&field, &message);
            ctx.err(field, inner.span(), problem, help)
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

fn path_to_field(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    // `Spanned` wraps values in an internal map; drop its private key names
    out.split('.')
        .filter(|s| !s.starts_with("$__"))
        .collect::<Vec<_>>()
        .join(".")
}

fn explain_serde_error(field: &str, message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let expected = rest
            .split_once("expected ")
            .map(|(_, e)| e.trim_start_matches("one of ").to_string())
            .unwrap_or_default();
        let help = if expected.is_empty() {
            "remove it".to_string()
        } else {
            format!("remove it, or use one of the known fields: {expected}")
        };
        return (format!("unknown field `{name}`"), help);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let help = match name {
            "schema" => format!("add `schema = {SCHEMA_VERSION}` at the top of the file"),
            "name" => "add `name = \"...\"`: lower-case letters, digits and dashes".into(),
            "version" => "add `version = \"0.1.0\"` (semantic versioning)".into(),
            "hooks" => "add `hooks = \"hooks.wasm\"`: the path of the hooks component".into(),
            "private-port" => "add `private-port = 8080`: the port the app listens on".into(),
            other => format!("add the `{other}` field"),
        };
        return (format!("missing field `{name}`"), help);
    }
    let help = match field.rsplit('.').next().unwrap_or(field) {
        f if f.starts_with("private-port") => "use a port number between 1 and 65535".to_string(),
        "schema" => format!("use `schema = {SCHEMA_VERSION}`"),
        "build-network" => "use `true` or `false`".into(),
        "exec" | "spawn" => "use a list of program names or paths, e.g. [\"python3\"]".into(),
        "required" => "use `true` or `false`".into(),
        "env" => "use a list of variable names, e.g. [\"DATABASE_URL\"]".into(),
        "timeout" | "build-timeout" => "use a quoted duration such as \"30s\" or \"10m\"".into(),
        "memory" => "use a quoted size such as \"64MiB\" or \"1GiB\"".into(),
        _ => "check the value's type against docs/cartridge-guide.md".into(),
    };
    (message.to_string(), help)
}

fn resolve(ctx: &Ctx<'_>, raw: RawManifest) -> Result<Manifest, ManifestError> {
    if *raw.schema.get_ref() != SCHEMA_VERSION {
        return ctx.err(
            "schema",
            Some(raw.schema.span()),
            format!(
                "unsupported schema version {}; this gear understands schema {SCHEMA_VERSION}",
                raw.schema.get_ref()
            ),
            format!(
                "set `schema = {SCHEMA_VERSION}` and check the fields against docs/cartridge-guide.md, \
                 or upgrade gear"
            ),
        );
    }

    let name = raw.name.get_ref();
    if let Err(problem) = check_name(name, 32) {
        return ctx.err(
            "name",
            Some(raw.name.span()),
            format!("invalid cartridge name {name:?}: {problem}"),
            "use 1-32 lower-case letters, digits and single dashes, starting with a letter, e.g. \"python\"",
        );
    }

    let version = match semver::Version::parse(raw.version.get_ref()) {
        Ok(v) => v,
        Err(e) => {
            return ctx.err(
                "version",
                Some(raw.version.span()),
                format!("invalid version {:?}: {e}", raw.version.get_ref()),
                "use a semantic version such as \"1.2.0\"",
            );
        }
    };

    let display_name = match &raw.display_name {
        Some(d) if d.get_ref().trim().is_empty() || d.get_ref().chars().count() > 64 => {
            return ctx.err(
                "display-name",
                Some(d.span()),
                "display name must be 1-64 characters",
                "shorten it, or remove the field to use the cartridge name",
            );
        }
        Some(d) => d.get_ref().clone(),
        None => name.clone(),
    };

    let description = match &raw.description {
        Some(d) if d.get_ref().chars().count() > 1024 => {
            return ctx.err(
                "description",
                Some(d.span()),
                "description is longer than 1024 characters",
                "keep it to a paragraph; put details in the cartridge's README",
            );
        }
        Some(d) => d.get_ref().clone(),
        None => String::new(),
    };

    if raw.categories.len() > 16 {
        return ctx.err(
            "categories",
            Some(raw.categories[16].span()),
            "more than 16 categories",
            "keep the few that describe the cartridge best",
        );
    }
    let mut categories = Vec::new();
    for (i, c) in raw.categories.iter().enumerate() {
        if let Err(problem) = check_name(c.get_ref(), 32) {
            return ctx.err(
                format!("categories[{i}]"),
                Some(c.span()),
                format!("invalid category {:?}: {problem}", c.get_ref()),
                "use lower-case words with dashes, e.g. \"web\" or \"database\"",
            );
        }
        categories.push(c.get_ref().clone());
    }

    let hooks = check_hooks_path(ctx, &raw.hooks)?;
    let endpoints = resolve_endpoints(ctx, &raw.endpoints)?;
    let limits = resolve_limits(ctx, &raw.limits)?;
    let permissions = Permissions {
        exec: resolve_programs(ctx, "permissions.exec", &raw.permissions.exec)?,
        spawn: resolve_programs(ctx, "permissions.spawn", &raw.permissions.spawn)?,
        build_network: raw.permissions.build_network,
    };
    let deploy = Deploy {
        required: raw.deploy.required.unwrap_or(true),
    };
    let publish = resolve_publish(ctx, &raw.publish, &endpoints)?;

    Ok(Manifest {
        name: name.clone(),
        version,
        display_name,
        description,
        categories,
        hooks,
        endpoints,
        limits,
        permissions,
        deploy,
        publish,
    })
}

fn resolve_publish(
    ctx: &Ctx<'_>,
    raw: &RawPublish,
    endpoints: &[Endpoint],
) -> Result<Publish, ManifestError> {
    let mut seen = BTreeSet::new();
    let mut env = Vec::new();
    for (i, entry) in raw.env.iter().enumerate() {
        let field = format!("publish.env[{i}]");
        let key = entry.get_ref();
        if crate::host::check_env_key(key).is_err() {
            return ctx.err(
                field,
                Some(entry.span()),
                format!("{key:?} is not an environment variable name"),
                "use letters, digits and `_`, not starting with a digit, e.g. \"DATABASE_URL\"",
            );
        }
        if crate::host::is_system_env_key(key) {
            return ctx.err(
                field,
                Some(entry.span()),
                format!("{key} is set by the node in every gear and cannot be published"),
                "publish the cartridge's own variables, not GEAR_*, PATH, HOME, USER, LOGNAME or HOSTNAME",
            );
        }
        if !seen.insert(key.clone()) {
            return ctx.err(
                field,
                Some(entry.span()),
                format!("{key} is listed twice"),
                "list every variable once",
            );
        }
        env.push(key.clone());
    }
    if !env.is_empty() && endpoints.is_empty() {
        return ctx.err(
            "publish.env",
            raw.env.first().map(|e| e.span()),
            "variables are published to linked gears, but there is no endpoint to link to",
            "declare the endpoint linked gears connect to under [[endpoints]], or remove [publish]",
        );
    }
    Ok(Publish { env })
}

/// Check a name made of lower-case letters, digits and single dashes.
/// Returns what is wrong, for messages.
pub fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > max {
        return Err(format!("it is longer than {max} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("it must start with a lower-case letter".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("{bad:?} is not allowed"));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err("dashes must separate words".into());
    }
    Ok(())
}

fn check_hooks_path(ctx: &Ctx<'_>, hooks: &Spanned<String>) -> Result<PathBuf, ManifestError> {
    let value = hooks.get_ref();
    let path = Path::new(value);
    let problem = if value.is_empty() {
        Some("the hooks path is empty")
    } else if path.is_absolute() {
        Some("the hooks path is absolute")
    } else if path
        .components()
        .any(|c| !matches!(c, PathComponent::Normal(_)))
    {
        Some("the hooks path leaves the cartridge directory or contains `.`")
    } else if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
        Some("the hooks file must end in .wasm")
    } else {
        None
    };
    match problem {
        Some(problem) => ctx.err(
            "hooks",
            Some(hooks.span()),
            format!("{problem}: {value:?}"),
            "give a path inside the cartridge directory, relative to cartridge.toml, e.g. \"hooks.wasm\"",
        ),
        None => Ok(path.to_path_buf()),
    }
}

fn resolve_endpoints(ctx: &Ctx<'_>, raw: &[RawEndpoint]) -> Result<Vec<Endpoint>, ManifestError> {
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut out = Vec::new();
    for (i, ep) in raw.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let name = ep.name.get_ref();
        if let Err(problem) = check_name(name, 32) {
            return ctx.err(
                format!("{field}.name"),
                Some(ep.name.span()),
                format!("invalid endpoint name {name:?}: {problem}"),
                "use a short lower-case name such as \"http\"",
            );
        }
        if !names.insert(name.clone()) {
            return ctx.err(
                format!("{field}.name"),
                Some(ep.name.span()),
                format!("endpoint {name:?} is declared twice"),
                "give every endpoint its own name",
            );
        }
        let port = *ep.private_port.get_ref();
        if port == 0 {
            return ctx.err(
                format!("{field}.private-port"),
                Some(ep.private_port.span()),
                "port 0 is not a port",
                "use a port number between 1 and 65535, e.g. 8080",
            );
        }
        if !ports.insert(port) {
            return ctx.err(
                format!("{field}.private-port"),
                Some(ep.private_port.span()),
                format!("port {port} is used by two endpoints"),
                "give every endpoint its own port",
            );
        }
        let protocols = match &ep.protocols {
            None => vec!["http".to_string()],
            Some(list) if list.get_ref().is_empty() => {
                return ctx.err(
                    format!("{field}.protocols"),
                    Some(list.span()),
                    "the protocol list is empty",
                    format!(
                        "list at least one of {}, or remove the field for [\"http\"]",
                        KNOWN_PROTOCOLS.join(", ")
                    ),
                );
            }
            Some(list) => {
                let mut protocols = Vec::new();
                for (j, p) in list.get_ref().iter().enumerate() {
                    if !KNOWN_PROTOCOLS.contains(&p.get_ref().as_str()) {
                        return ctx.err(
                            format!("{field}.protocols[{j}]"),
                            Some(p.span()),
                            format!("unknown protocol {:?}", p.get_ref()),
                            format!("use one of {}", KNOWN_PROTOCOLS.join(", ")),
                        );
                    }
                    protocols.push(p.get_ref().clone());
                }
                protocols
            }
        };
        out.push(Endpoint {
            name: name.clone(),
            private_port: port,
            protocols,
        });
    }
    Ok(out)
}

fn resolve_limits(ctx: &Ctx<'_>, raw: &RawLimits) -> Result<Limits, ManifestError> {
    let duration = |field: &str,
                    value: &Option<Spanned<String>>,
                    default: Duration|
     -> Result<Duration, ManifestError> {
        let Some(value) = value else {
            return Ok(default);
        };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() => ctx.err(
                format!("limits.{field}"),
                Some(value.span()),
                "a zero budget would stop every hook at once",
                "use a positive duration such as \"30s\"",
            ),
            Ok(d) if d > MAX_TIMEOUT => ctx.err(
                format!("limits.{field}"),
                Some(value.span()),
                format!("{} is longer than a day", value.get_ref()),
                "use a duration of at most \"24h\"",
            ),
            Ok(d) => Ok(d),
            Err(e) => ctx.err(
                format!("limits.{field}"),
                Some(value.span()),
                format!("invalid duration {:?}: {e}", value.get_ref()),
                "use a duration such as \"500ms\", \"30s\" or \"10m\"",
            ),
        }
    };
    let timeout = duration("timeout", &raw.timeout, DEFAULT_TIMEOUT)?;
    let build_timeout = duration("build-timeout", &raw.build_timeout, DEFAULT_BUILD_TIMEOUT)?;
    let memory = match &raw.memory {
        None => DEFAULT_MEMORY,
        Some(value) => match parse_size(value.get_ref()) {
            Some(bytes) if (MIN_MEMORY..=MAX_MEMORY).contains(&bytes) => bytes,
            Some(_) => {
                return ctx.err(
                    "limits.memory",
                    Some(value.span()),
                    format!("{} is outside 2MiB..4GiB", value.get_ref()),
                    "use a size between \"2MiB\" and \"4GiB\"",
                );
            }
            None => {
                return ctx.err(
                    "limits.memory",
                    Some(value.span()),
                    format!("invalid size {:?}", value.get_ref()),
                    "use a size such as \"64MiB\" or \"1GiB\" (units: B, KiB, MiB, GiB)",
                );
            }
        },
    };
    Ok(Limits {
        timeout,
        build_timeout,
        memory,
    })
}

/// Parse a byte size such as `64MiB`, `1 GiB`, `512KiB` or `4096`.
/// Decimal units (`MB`) are read as their binary counterparts' decimal
/// values (`1MB` = 1,000,000 bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1024,
        "MiB" | "M" => MIB,
        "GiB" | "G" => GIB,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Format a byte count the way manifests write it.
pub fn format_size(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

fn resolve_programs(
    ctx: &Ctx<'_>,
    field: &str,
    raw: &[Spanned<String>],
) -> Result<ProgramList, ManifestError> {
    let mut out = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let value = entry.get_ref();
        let problem = if value.is_empty() {
            Some("an empty program name".to_string())
        } else if value == "*" {
            None
        } else if value.starts_with('/') {
            (!is_normal_absolute(value)).then(|| {
                format!(
                    "{value:?} is not a clean absolute path (no `.`, `..`, `//` or trailing `/`)"
                )
            })
        } else if value.contains('/') {
            Some(format!(
                "{value:?} is a relative path; hooks cannot be allowed to run programs by relative path"
            ))
        } else {
            value
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "._+-*".contains(*c)))
                .map(|c| format!("{value:?} contains {c:?}"))
        };
        if let Some(problem) = problem {
            return ctx.err(
                format!("{field}[{i}]"),
                Some(entry.span()),
                problem,
                "list bare program names (looked up in the gear's PATH, e.g. \"python3\") or \
                 absolute paths (e.g. \"/usr/bin/python3\"); `*` matches within one path segment",
            );
        }
        out.push(value.clone());
    }
    Ok(ProgramList(out))
}

/// `Duration` as `"30s"` in JSON output.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema = 1
name = "python"
version = "0.3.1"
display-name = "Python 3"
description = "Runs WSGI apps"
categories = ["web", "python"]
hooks = "hooks.wasm"

[[endpoints]]
name = "http"
private-port = 8080
protocols = ["http", "websocket"]

[limits]
timeout = "20s"
build-timeout = "5m"
memory = "96MiB"

[permissions]
exec = ["python3", "/usr/bin/pip*"]
spawn = ["python3"]
build-network = true
"#;

    #[test]
    fn a_full_manifest_resolves() {
        let m = Manifest::parse(GOOD, Path::new("cartridge.toml")).expect("valid");
        assert_eq!(m.name, "python");
        assert_eq!(m.version, semver::Version::new(0, 3, 1));
        assert_eq!(m.display_name, "Python 3");
        assert_eq!(m.categories, ["web", "python"]);
        assert_eq!(m.endpoints[0].private_port, 8080);
        assert_eq!(m.endpoints[0].protocols, ["http", "websocket"]);
        assert_eq!(m.limits.timeout, Duration::from_secs(20));
        assert_eq!(m.limits.build_timeout, Duration::from_secs(300));
        assert_eq!(m.limits.memory, 96 * MIB);
        assert!(m.permissions.build_network);
        assert!(m.permissions.exec.allows("python3"));
        assert!(m.permissions.exec.allows("/usr/bin/pip3"));
        assert!(!m.permissions.exec.allows("/usr/bin/python3"));
    }

    #[test]
    fn defaults_fill_in() {
        let m = Manifest::parse(
            "schema = 1\nname = \"x\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n",
            Path::new("c.toml"),
        )
        .expect("valid");
        assert_eq!(m.display_name, "x");
        assert_eq!(m.limits.timeout, DEFAULT_TIMEOUT);
        assert_eq!(m.limits.build_timeout, DEFAULT_BUILD_TIMEOUT);
        assert_eq!(m.limits.memory, DEFAULT_MEMORY);
        assert!(m.endpoints.is_empty());
        assert!(!m.permissions.build_network);
        assert!(!m.permissions.exec.allows("sh"));
    }

    #[test]
    fn publish_and_deploy_resolve() {
        let text = "schema = 1\nname = \"db\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n\
                    [[endpoints]]\nname = \"pg\"\nprivate-port = 5432\nprotocols = [\"tcp\"]\n\
                    [deploy]\nrequired = false\n\
                    [publish]\nenv = [\"PGUSER\", \"DATABASE_URL\"]\n";
        let m = Manifest::parse(text, Path::new("c.toml")).expect("valid");
        assert!(!m.deploy.required);
        assert_eq!(m.publish.env, ["PGUSER", "DATABASE_URL"]);
        // by default a gear needs a deployment and publishes nothing
        let m = Manifest::parse(
            "schema = 1\nname = \"x\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n",
            Path::new("c.toml"),
        )
        .expect("valid");
        assert!(m.deploy.required);
        assert!(m.publish.env.is_empty());
        for (bad, problem) in [
            ("[\"GEAR_ID\"]", "set by the node"),
            ("[\"PATH\"]", "set by the node"),
            ("[\"A\", \"A\"]", "listed twice"),
            ("[\"1X\"]", "not an environment variable name"),
        ] {
            let text = format!(
                "schema = 1\nname = \"db\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n\
                 [[endpoints]]\nname = \"pg\"\nprivate-port = 5432\n[publish]\nenv = {bad}\n"
            );
            let e = Manifest::parse(&text, Path::new("c.toml")).expect_err(bad);
            assert!(e.problem.contains(problem), "{bad}: {e}");
            assert!(e.field.starts_with("publish.env"), "{e}");
        }
    }

    #[test]
    fn program_patterns_do_not_cross_kinds() {
        let list = ProgramList(vec![
            "python3".into(),
            "/usr/lib/postgresql/*/bin/pg_ctl".into(),
        ]);
        assert!(list.allows("python3"));
        assert!(!list.allows("/gear/app/python3"));
        assert!(!list.allows("./python3"));
        assert!(!list.allows("bin/python3"));
        assert!(list.allows("/usr/lib/postgresql/15/bin/pg_ctl"));
        assert!(!list.allows("/usr/lib/postgresql/15/x/bin/pg_ctl"));
        assert!(!list.allows("/usr/lib/postgresql/../../../bin/pg_ctl"));
        assert!(!list.allows(""));
        let any = ProgramList(vec!["*".into()]);
        assert!(any.allows("anything"));
        assert!(any.allows("/usr/bin/x"));
        assert!(!any.allows("/usr/../bin/x"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Some(64 * MIB));
        assert_eq!(parse_size("1 GiB"), Some(GIB));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
        assert_eq!(format_size(96 * MIB), "96MiB");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("python", 32).is_ok());
        assert!(check_name("my-app2", 32).is_ok());
        for bad in [
            "",
            "Python",
            "1app",
            "a_b",
            "a-",
            "a--b",
            "../x",
            &"a".repeat(33),
        ] {
            assert!(check_name(bad, 32).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
