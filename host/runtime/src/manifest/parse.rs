//! The manifest as people write it: the `Raw*` structs that mirror the file
//! (`deny_unknown_fields`), reading the TOML into them, and saying serde's
//! errors in the manifest's own terms (field path, line, column, advice).

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{ManifestError, SCHEMA_VERSION};

// ---------------------------------------------------------------------------
// the file as people write it

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawManifest {
    pub(super) schema: Spanned<u32>,
    pub(super) name: Spanned<String>,
    pub(super) version: Spanned<String>,
    pub(super) display_name: Option<Spanned<String>>,
    pub(super) description: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) categories: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) actions: Vec<Spanned<String>>,
    pub(super) hooks: Spanned<String>,
    #[serde(default)]
    pub(super) endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) permissions: RawPermissions,
    #[serde(default)]
    pub(super) deploy: RawDeploy,
    #[serde(default)]
    pub(super) publish: RawPublish,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawDeploy {
    pub(super) required: Option<bool>,
    pub(super) accepts: Option<Spanned<bool>>,
    pub(super) start_beside: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPublish {
    #[serde(default)]
    pub(super) env: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawEndpoint {
    pub(super) name: Spanned<String>,
    pub(super) private_port: Spanned<u16>,
    #[serde(default)]
    pub(super) protocols: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimits {
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) build_timeout: Option<Spanned<String>>,
    pub(super) memory: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPermissions {
    #[serde(default)]
    pub(super) exec: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) spawn: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) build_network: bool,
}
// ---------------------------------------------------------------------------
// resolution

pub(super) struct Ctx<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Ctx<'_> {
    pub(super) fn err<T>(
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

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
/// Byte span of the value of a top-level `key = ...` line, for messages about
/// checks made after parsing.
pub(super) fn find_key_span(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
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

pub(super) fn parse_raw(ctx: &Ctx<'_>) -> Result<RawManifest, ManifestError> {
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
        "required" | "accepts" | "start-beside" => "use `true` or `false`".into(),
        "env" => "use a list of variable names, e.g. [\"DATABASE_URL\"]".into(),
        "timeout" | "build-timeout" => "use a quoted duration such as \"30s\" or \"10m\"".into(),
        "memory" => "use a quoted size such as \"64MiB\" or \"1GiB\"".into(),
        _ => "check the value's type against docs/cartridge-guide.md".into(),
    };
    (message.to_string(), help)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
