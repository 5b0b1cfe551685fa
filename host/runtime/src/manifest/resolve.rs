//! From the file as written to the validated [`Manifest`]: every field
//! checked (names, versions, paths, endpoints, limits, permissions, what is
//! published) and every default filled in.

use std::collections::BTreeSet;
use std::path::{Component as PathComponent, Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::parse::{Ctx, RawEndpoint, RawLimits, RawManifest, RawPublish};
use super::programs::resolve_programs;
use super::values::{
    DEFAULT_BUILD_TIMEOUT, DEFAULT_MEMORY, DEFAULT_TIMEOUT, KNOWN_PROTOCOLS, MAX_MEMORY,
    MAX_TIMEOUT, MIN_MEMORY, check_name, parse_size,
};
use super::{
    Deploy, Endpoint, Limits, Manifest, ManifestError, Permissions, Publish, SCHEMA_VERSION,
};

pub(super) fn resolve(ctx: &Ctx<'_>, raw: RawManifest) -> Result<Manifest, ManifestError> {
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

    if raw.actions.len() > 64 {
        return ctx.err(
            "actions",
            Some(raw.actions[64].span()),
            "more than 64 actions",
            "list the actions the control hook implements, no more",
        );
    }
    let mut actions: Vec<String> = Vec::new();
    for (i, a) in raw.actions.iter().enumerate() {
        if let Err(problem) = check_name(a.get_ref(), 32) {
            return ctx.err(
                format!("actions[{i}]"),
                Some(a.span()),
                format!("invalid action {:?}: {problem}", a.get_ref()),
                "use lower-case words with dashes, e.g. \"status\" or \"reload\"",
            );
        }
        if actions.contains(a.get_ref()) {
            return ctx.err(
                format!("actions[{i}]"),
                Some(a.span()),
                format!("action {:?} is listed twice", a.get_ref()),
                "list each action once",
            );
        }
        actions.push(a.get_ref().clone());
    }

    let hooks = check_hooks_path(ctx, &raw.hooks)?;
    let endpoints = resolve_endpoints(ctx, &raw.endpoints)?;
    let limits = resolve_limits(ctx, &raw.limits)?;
    let permissions = Permissions {
        exec: resolve_programs(ctx, "permissions.exec", &raw.permissions.exec)?,
        spawn: resolve_programs(ctx, "permissions.spawn", &raw.permissions.spawn)?,
        build_network: raw.permissions.build_network,
    };
    let accepts = raw.deploy.accepts.as_ref().is_none_or(|a| *a.get_ref());
    let required = raw.deploy.required.unwrap_or(accepts);
    if required && !accepts {
        let span = raw.deploy.accepts.as_ref().map(|a| a.span());
        return ctx.err(
            "deploy.accepts".to_string(),
            span,
            "a gear that takes no deployments cannot require one to start",
            "set `required = false` beside `accepts = false` in [deploy]",
        );
    }
    let start_beside = raw
        .deploy
        .start_beside
        .as_ref()
        .is_some_and(|b| *b.get_ref());
    if start_beside {
        let span = raw.deploy.start_beside.as_ref().map(|b| b.span());
        if !accepts {
            return ctx.err(
                "deploy.start-beside".to_string(),
                span,
                "a gear that takes no deployments has nothing to start beside itself",
                "remove `start-beside` or `accepts = false` from [deploy]",
            );
        }
        if let Some(ep) = endpoints.iter().find(|e| {
            endpoints
                .iter()
                .any(|o| o.private_port == super::beside_port(e.private_port))
        }) {
            return ctx.err(
                "deploy.start-beside".to_string(),
                span,
                format!(
                    "endpoint {:?} moves to port {} while a new start runs beside the serving \
                     one, and another endpoint declares that port",
                    ep.name,
                    super::beside_port(ep.private_port)
                ),
                format!(
                    "pick endpoint ports that are not {} apart, or remove `start-beside`",
                    super::BESIDE_OFFSET
                ),
            );
        }
    }
    let deploy = Deploy {
        required,
        accepts,
        start_beside,
    };
    let publish = resolve_publish(ctx, &raw.publish, &endpoints)?;

    Ok(Manifest {
        name: name.clone(),
        version,
        display_name,
        description,
        categories,
        actions,
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
                format!(
                    "publish the cartridge's own variables, not {}",
                    crate::sysenv::describe_system_keys()
                ),
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

#[cfg(test)]
mod tests {
    use super::super::values::MIB;
    use super::*;

    const GOOD: &str = r#"
schema = 1
name = "python"
version = "0.3.1"
display-name = "Python 3"
description = "Runs WSGI apps"
categories = ["web", "python"]
actions = ["status", "reload", "tidy"]
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
        assert_eq!(m.actions, ["status", "reload", "tidy"]);
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
        assert!(m.actions.is_empty());
        assert!(!m.permissions.build_network);
        assert!(!m.permissions.exec.allows("sh"));
    }

    #[test]
    fn start_beside_needs_deployments_and_free_beside_ports() {
        let base = "schema = 1\nname = \"x\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n";
        let web = "[[endpoints]]\nname = \"http\"\nprivate-port = 8080\n";
        let ok = format!("{base}{web}[deploy]\nstart-beside = true\n");
        let m = Manifest::parse(&ok, Path::new("c.toml")).expect("valid");
        assert!(m.deploy.start_beside);
        assert_eq!(m.endpoints[0].port_in(0), 8080);
        assert_eq!(m.endpoints[0].port_in(1), 18080);
        assert_eq!(super::super::beside_port(60000), 50000);
        let off = Manifest::parse(&format!("{base}{web}"), Path::new("c.toml")).expect("valid");
        assert!(!off.deploy.start_beside, "off unless asked for");
        let service = format!(
            "{base}{web}[deploy]\naccepts = false\nrequired = false\nstart-beside = true\n"
        );
        let e = Manifest::parse(&service, Path::new("c.toml")).expect_err("no deployments");
        assert!(e.to_string().contains("deploy.start-beside"), "{e}");
        let clash = format!(
            "{base}{web}[[endpoints]]\nname = \"admin\"\nprivate-port = 18080\n\
             [deploy]\nstart-beside = true\n"
        );
        let e = Manifest::parse(&clash, Path::new("c.toml")).expect_err("ports clash");
        assert!(e.to_string().contains("moves to port 18080"), "{e}");
    }

    #[test]
    fn actions_are_names_listed_once() {
        let head = "schema = 1\nname = \"x\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n";
        for (actions, says) in [
            ("[\"status\", \"Reload\"]", "invalid action \"Reload\""),
            ("[\"status\", \"status\"]", "listed twice"),
        ] {
            let text = format!("{head}actions = {actions}\n");
            let e = Manifest::parse(&text, Path::new("c.toml")).expect_err("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(e.field, "actions[1]");
        }
    }

    #[test]
    fn publish_and_deploy_resolve() {
        let text = "schema = 1\nname = \"db\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n\
                    [[endpoints]]\nname = \"pg\"\nprivate-port = 5432\nprotocols = [\"tcp\"]\n\
                    [deploy]\nrequired = false\n\
                    [publish]\nenv = [\"PGUSER\", \"DATABASE_URL\"]\n";
        let m = Manifest::parse(text, Path::new("c.toml")).expect("valid");
        assert!(!m.deploy.required);
        assert!(m.deploy.accepts, "an optional deployment is still taken");
        assert_eq!(m.publish.env, ["PGUSER", "DATABASE_URL"]);
        // a service that takes none: `accepts = false` implies not required
        let service = "schema = 1\nname = \"db\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n\
                       [deploy]\naccepts = false\n";
        let m = Manifest::parse(service, Path::new("c.toml")).expect("valid");
        assert!(!m.deploy.accepts && !m.deploy.required);
        let contradiction = format!("{service}required = true\n");
        let e = Manifest::parse(&contradiction, Path::new("c.toml")).expect_err("refused");
        assert!(e.to_string().contains("cannot require"), "{e}");
        // by default a gear needs a deployment and publishes nothing
        let m = Manifest::parse(
            "schema = 1\nname = \"x\"\nversion = \"1.0.0\"\nhooks = \"h.wasm\"\n",
            Path::new("c.toml"),
        )
        .expect("valid");
        assert!(m.deploy.required);
        assert!(m.deploy.accepts);
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
}
