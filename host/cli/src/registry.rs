//! Registry work, done by `gearhost-registry`, a helper program beside `gear`.
//!
//! The OCI registry client (HTTP, TLS, certificate checks, reference parsing)
//! is most of what `gear` would otherwise link without using it: every start
//! of `gear` paid for it in relocations and page faults, whatever the command
//! (`gear --version` 1.66–1.87 → 1.55 ms with it gone). So `gear` links none of it,
//! and the few commands that speak to a registry themselves (`cartridge push`,
//! and the credential lookup of `cartridge install oci://`, `image pull` and
//! `deploy --image`) run the helper with one request as JSON on its standard
//! input; it answers with one JSON reply on its standard output.
//!
//! [`serve`] is the helper's side; [`credentials`] and [`publish`] are
//! `gear`'s. The helper is found as `GEARHOST_REGISTRY` names it, else beside
//! `gear` (installed with it), else on `PATH`, as `gear` finds the node.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::anyhow;
use gearhost_api::ops::RegistryCredentials;
use serde::{Deserialize, Serialize};

use crate::Failure;

/// The helper's file name.
pub const HELPER: &str = "gearhost-registry";

/// What `gear` asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The credentials the caller keeps for the registry `reference` names.
    Credentials {
        /// An OCI reference (`oci://` allowed).
        reference: String,
        /// A Docker config file named by the caller (else Docker's usual places).
        auth_file: Option<PathBuf>,
    },
    /// Publish a checked cartridge.
    Push(Push),
}

/// What [`Request::Push`] publishes, and where.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Where: `registry/namespace/name:version`.
    pub reference: String,
    /// The cartridge's version, which the tag must be.
    pub version: String,
    /// Plain HTTP (a registry on loopback only).
    pub insecure: bool,
    /// A Docker config file named by the caller.
    pub auth_file: Option<PathBuf>,
    /// `cartridge.toml`.
    pub manifest: PathBuf,
    /// The hooks component.
    pub wasm: PathBuf,
    /// What the component imports and exports.
    pub component: gearhost_oci::Component,
}

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Reply {
    /// For [`Request::Credentials`]: none means anonymous.
    Credentials {
        /// The user and password found, if any.
        credentials: Option<RegistryCredentials>,
    },
    /// For [`Request::Push`].
    Pushed {
        /// The manifest's digest (`sha256:...`).
        digest: String,
        /// `registry/repository@digest`, which pins what was pushed.
        pinned: String,
    },
    /// Refused or failed; `kind` is how `gear` reports it.
    Refused {
        /// What kind of failure (its exit status).
        kind: Kind,
        /// The message, as `gear` prints it.
        message: String,
    },
}

/// How a refusal is reported (the exit statuses of [`Failure`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Bad input (exit 3).
    Invalid,
    /// Something missing around the command (exit 4).
    Environment,
    /// The operation failed (exit 1).
    Failed,
}

impl Reply {
    fn refused(kind: Kind, message: impl std::fmt::Display) -> Reply {
        Reply::Refused {
            kind,
            message: message.to_string(),
        }
    }
}

/// The credentials for the registry `reference` names: from `auth_file`, else
/// from the caller's Docker config (none: anonymous).
pub fn credentials(
    reference: &str,
    auth_file: Option<&Path>,
) -> Result<Option<RegistryCredentials>, Failure> {
    match ask(&Request::Credentials {
        reference: reference.to_string(),
        auth_file: auth_file.map(Path::to_path_buf),
    })? {
        Reply::Credentials { credentials } => Ok(credentials),
        other => Err(unexpected(&other)),
    }
}

/// Publish `job`: the manifest's digest and the `registry/repository@digest`
/// that pins it.
pub fn publish(job: Push) -> Result<(String, String), Failure> {
    match ask(&Request::Push(job))? {
        Reply::Pushed { digest, pinned } => Ok((digest, pinned)),
        other => Err(unexpected(&other)),
    }
}

/// Run the helper with `request` and read its reply; a refusal comes back as
/// the [`Failure`] it names.
fn ask(request: &Request) -> Result<Reply, Failure> {
    let helper = find_helper()?;
    let mut child = Command::new(&helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Failure::Environment(anyhow!(
                "cannot run {}: {e}; it is installed beside gear (or set GEARHOST_REGISTRY to it)",
                helper.display()
            ))
        })?;
    let body = serde_json::to_vec(request).map_err(|e| Failure::Failed(e.into()))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&body))
        .unwrap_or(Ok(()));
    let mut out = Vec::new();
    let read = child
        .stdout
        .take()
        .map(|mut stdout| stdout.read_to_end(&mut out))
        .unwrap_or(Ok(0));
    let status = child.wait().map_err(|e| Failure::Environment(e.into()))?;
    let broken = |why: String| {
        Failure::Failed(anyhow!(
            "{} ended without an answer ({why}, {status})",
            helper.display()
        ))
    };
    if let Err(e) = written.and(read) {
        return Err(broken(e.to_string()));
    }
    let reply: Reply = serde_json::from_slice(&out).map_err(|e| broken(e.to_string()))?;
    match reply {
        Reply::Refused { kind, message } => Err(match kind {
            Kind::Invalid => Failure::Invalid(anyhow!(message)),
            Kind::Environment => Failure::Environment(anyhow!(message)),
            Kind::Failed => Failure::Failed(anyhow!(message)),
        }),
        reply => Ok(reply),
    }
}

fn unexpected(reply: &Reply) -> Failure {
    Failure::Failed(anyhow!("{HELPER} answered out of turn: {reply:?}"))
}

/// `GEARHOST_REGISTRY`, else the helper beside this program (or on `PATH`).
fn find_helper() -> Result<PathBuf, Failure> {
    crate::find_program(HELPER, "GEARHOST_REGISTRY").ok_or_else(|| {
        Failure::Environment(anyhow!(
            "{HELPER} is not installed beside gear nor on PATH: the registry commands need it \
             (install it with gear), or set GEARHOST_REGISTRY to it"
        ))
    })
}

/// The helper's side: one request from standard input, one reply on standard
/// output (exit 0 when the reply was written, whatever it says).
pub fn serve() -> ExitCode {
    gearhost_sys::program::init_tracing(0);
    let mut input = Vec::new();
    let reply = match std::io::stdin().read_to_end(&mut input) {
        Err(e) => Reply::refused(Kind::Failed, format!("cannot read the request: {e}")),
        Ok(_) => match serde_json::from_slice::<Request>(&input) {
            Err(e) => Reply::refused(
                Kind::Invalid,
                format!("{HELPER} is run by gear, not by hand (its request: {e})"),
            ),
            Ok(request) => answer(request),
        },
    };
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut out, &reply).map_err(std::io::Error::from);
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{HELPER}: cannot answer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn answer(request: Request) -> Reply {
    match request {
        Request::Credentials {
            reference,
            auth_file,
        } => match lookup(&reference, auth_file.as_deref()) {
            Ok(credentials) => Reply::Credentials { credentials },
            Err(refused) => refused,
        },
        Request::Push(job) => push(&job).unwrap_or_else(|refused| refused),
    }
}

fn lookup(reference: &str, auth_file: Option<&Path>) -> Result<Option<RegistryCredentials>, Reply> {
    let parsed =
        gearhost_oci::parse_reference(reference).map_err(|e| Reply::refused(Kind::Invalid, e))?;
    let found = gearhost_oci::credentials_for(parsed.registry(), auth_file)
        .map_err(|e| Reply::refused(Kind::Environment, e))?;
    Ok(found.map(|c| RegistryCredentials {
        username: c.username,
        password: c.password,
    }))
}

fn push(job: &Push) -> Result<Reply, Reply> {
    let invalid = |e: String| Reply::refused(Kind::Invalid, e);
    let reference =
        gearhost_oci::parse_reference(&job.reference).map_err(|e| invalid(e.to_string()))?;
    let version = &job.version;
    match reference.tag() {
        Some(tag) if tag == version => {}
        Some(tag) => {
            return Err(invalid(format!(
                "the tag {tag} is not the cartridge's version {version} (cartridge.toml); push it as {}/{}:{version}",
                reference.registry(),
                reference.repository()
            )));
        }
        None => {
            return Err(invalid(format!(
                "push names a tag, the cartridge's version: {}/{}:{version}",
                reference.registry(),
                reference.repository()
            )));
        }
    }
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            Reply::refused(
                Kind::Environment,
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let publication = gearhost_oci::Publication {
        manifest: read(&job.manifest)?,
        wasm: read(&job.wasm)?,
        component: job.component.clone(),
    };
    let credentials = gearhost_oci::credentials_for(reference.registry(), job.auth_file.as_deref())
        .map_err(|e| Reply::refused(Kind::Environment, e))?;
    let target = gearhost_oci::Target::new(&job.reference, job.insecure, credentials)
        .map_err(|e| invalid(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Reply::refused(Kind::Environment, format!("cannot start: {e}")))?;
    let digest = runtime
        .block_on(gearhost_oci::push(&target, &publication))
        .map_err(|e| Reply::refused(Kind::Failed, format!("cannot push {}: {e}", job.reference)))?;
    let pinned = format!(
        "{}/{}@{digest}",
        reference.registry(),
        reference.repository()
    );
    Ok(Reply::Pushed { digest, pinned })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_keep_their_shape() {
        let request = Request::Credentials {
            reference: "oci://localhost:5000/a/b:1".into(),
            auth_file: None,
        };
        let text = serde_json::to_string(&request).expect("request");
        assert_eq!(
            text,
            r#"{"op":"credentials","reference":"oci://localhost:5000/a/b:1","auth_file":null}"#
        );
        let push = Request::Push(Push {
            reference: "localhost:5000/a/b:1".into(),
            version: "1".into(),
            insecure: true,
            auth_file: Some(PathBuf::from("/auth.json")),
            manifest: PathBuf::from("/c/cartridge.toml"),
            wasm: PathBuf::from("/c/hooks.wasm"),
            component: gearhost_oci::Component::default(),
        });
        let text = serde_json::to_string(&push).expect("push");
        assert!(text.starts_with(r#"{"op":"push","reference":"#), "{text}");
        let back: Request = serde_json::from_str(&text).expect("read back");
        assert_eq!(format!("{back:?}"), format!("{push:?}"));
        let reply: Reply =
            serde_json::from_str(r#"{"reply":"refused","kind":"invalid","message":"no"}"#)
                .expect("reply");
        assert!(matches!(
            reply,
            Reply::Refused {
                kind: Kind::Invalid,
                ..
            }
        ));
    }

    #[test]
    fn a_bad_reference_is_refused_as_invalid_input() {
        let reply = answer(Request::Credentials {
            reference: "no-registry-here".into(),
            auth_file: None,
        });
        match reply {
            Reply::Refused {
                kind: Kind::Invalid,
                message,
            } => assert!(message.contains("names no registry"), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_tag_other_than_the_version_is_refused_before_any_file_is_read() {
        let reply = answer(Request::Push(Push {
            reference: "localhost:5000/carts/hello:9.9.9".into(),
            version: "0.1.0".into(),
            insecure: true,
            auth_file: None,
            manifest: PathBuf::from("/nonexistent/cartridge.toml"),
            wasm: PathBuf::from("/nonexistent/hooks.wasm"),
            component: gearhost_oci::Component::default(),
        }));
        match reply {
            Reply::Refused {
                kind: Kind::Invalid,
                message,
            } => assert!(
                message.contains("the tag 9.9.9 is not the cartridge's version 0.1.0"),
                "{message}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
