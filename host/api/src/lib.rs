//! The node API: requests the `gear` command sends over the node's unix
//! socket, and the replies. One request per connection, as one JSON line;
//! the node answers with any number of `event` lines (progress, log lines)
//! and then exactly one `ok` or `error` line.
//!
//! `exec` additionally passes the caller's standard input, output and error
//! as file descriptors (SCM_RIGHTS) with the request, so the command in the
//! gear talks to the caller's terminal directly.
//!
//! This crate is the one place these types live (the node, the `gear`
//! command and any other client share it), with [`decode_request`], which
//! turns what the node read from its socket into a [`Request`]. It has no
//! I/O of its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most bytes of one request line.
pub const MAX_REQUEST: usize = 1 << 20;

/// A gear, named the way users name it: `name` in namespace `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GearRef {
    /// Gear name.
    pub name: String,
    /// Namespace (owner).
    pub namespace: String,
}

impl std::fmt::Display for GearRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.name, self.namespace)
    }
}

/// A request to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Is the node there? Answers its version and state directory.
    Ping,
    /// Install (or upgrade) the cartridge in a directory.
    CartridgeInstall {
        /// The cartridge directory, readable by the node.
        dir: PathBuf,
    },
    /// Installed cartridges.
    CartridgeList,
    /// Remove an installed cartridge no gear uses.
    CartridgeRemove {
        /// Cartridge name.
        name: String,
    },
    /// Create a gear.
    Create {
        /// The gear.
        gear: GearRef,
        /// Its cartridge.
        cartridge: String,
    },
    /// All gears.
    List,
    /// One gear in detail.
    Show {
        /// The gear.
        gear: GearRef,
    },
    /// Stop and remove a gear, leaving nothing behind.
    Destroy {
        /// The gear.
        gear: GearRef,
    },
    /// Deploy a source directory: new deployment, build, activate, restart.
    Deploy {
        /// The gear.
        gear: GearRef,
        /// The source directory, readable by the node.
        source: PathBuf,
    },
    /// Run the build hook on the active deployment.
    Build {
        /// The gear.
        gear: GearRef,
    },
    /// Start the gear.
    Start {
        /// The gear.
        gear: GearRef,
    },
    /// Stop the gear.
    Stop {
        /// The gear.
        gear: GearRef,
    },
    /// Stop, then start.
    Restart {
        /// The gear.
        gear: GearRef,
    },
    /// State and processes.
    Status {
        /// The gear.
        gear: GearRef,
    },
    /// Run the cartridge's control hook.
    Control {
        /// The gear.
        gear: GearRef,
        /// Action name.
        action: String,
        /// Arguments.
        args: Vec<String>,
    },
    /// Deployment history.
    Deployments {
        /// The gear.
        gear: GearRef,
    },
    /// Activate an earlier deployment (default: the one before the active one).
    Rollback {
        /// The gear.
        gear: GearRef,
        /// Deployment id.
        id: Option<u32>,
    },
    /// Set user variables.
    EnvSet {
        /// The gear.
        gear: GearRef,
        /// `KEY`, value pairs.
        vars: Vec<(String, String)>,
    },
    /// Remove user variables.
    EnvUnset {
        /// The gear.
        gear: GearRef,
        /// Keys.
        keys: Vec<String>,
    },
    /// The effective environment, by layer.
    EnvList {
        /// The gear.
        gear: GearRef,
    },
    /// The gear's logs.
    Logs {
        /// The gear.
        gear: GearRef,
        /// Last lines to show.
        lines: usize,
        /// Keep streaming new lines.
        follow: bool,
        /// Show hook logs instead of process output.
        hooks: bool,
        /// Show the frontend's access log of the gear's requests instead.
        #[serde(default)]
        access: bool,
    },
    /// Link `gear` to `to`: `to`'s primary endpoint becomes reachable on
    /// `gear`'s own loopback, and `gear` receives what `to`'s cartridge
    /// publishes. Both gears are in the same namespace.
    Link {
        /// The gear that gets access (the app).
        gear: GearRef,
        /// The gear it reaches (the database).
        to: GearRef,
    },
    /// Remove a link made by [`Request::Link`].
    Unlink {
        /// The gear that had access.
        gear: GearRef,
        /// The gear it reached.
        to: GearRef,
    },
    /// Add a host name the frontend routes to the gear.
    AliasAdd {
        /// The gear.
        gear: GearRef,
        /// The host name, e.g. `www.example.com`.
        hostname: String,
    },
    /// Remove an alias.
    AliasRemove {
        /// The gear.
        gear: GearRef,
        /// The host name.
        hostname: String,
    },
    /// The gear's host names.
    AliasList {
        /// The gear.
        gear: GearRef,
    },
    /// Stop a running gear and mark it idle: its next request through the
    /// frontend starts it again.
    Idle {
        /// The gear.
        gear: GearRef,
    },
    /// Start an idle gear now.
    Unidle {
        /// The gear.
        gear: GearRef,
    },
    /// The node's metrics in the Prometheus text format (operators only,
    /// like every request on the socket).
    Metrics,
    /// Run a command in the gear's sandbox with the caller's stdio (passed as fds: stdin,
    /// stdout, stderr, and on a terminal optionally a pipe that gets a byte whenever the
    /// caller's window changes size).
    Exec {
        /// The gear.
        gear: GearRef,
        /// Command and arguments.
        argv: Vec<String>,
    },
}

/// Classes of failure, which the CLI maps to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    Invalid,
    /// The thing named does not exist.
    NotFound,
    /// It exists but cannot do this now (in use, already exists).
    Conflict,
    /// The caller may not do this.
    Denied,
    /// The operation was tried and failed (a hook failed, a start failed).
    Failed,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Class.
    pub kind: ErrorKind,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// One line the node sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// Progress or a log line; more lines follow.
    Event(String),
    /// The request succeeded; its result.
    Ok(serde_json::Value),
    /// The request failed.
    Error(ApiError),
}

/// Decodes the request a client sent: the bytes the node read from its
/// socket, up to and including the first line feed (bytes after it are not
/// looked at; the line may also end where the client closed the
/// connection). A line longer than [`MAX_REQUEST`] bytes, or one that is
/// not a [`Request`] in JSON, is an [`ErrorKind::Invalid`] error that says
/// what to do.
pub fn decode_request(read: &[u8]) -> Result<Request, ApiError> {
    let line = match read.iter().position(|b| *b == b'\n') {
        Some(end) => &read[..end],
        None => read,
    };
    if line.len() > MAX_REQUEST {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            format!(
                "the request is longer than {MAX_REQUEST} bytes; pass large data as files \
                 (a source directory, a cartridge directory) rather than inline"
            ),
        ));
    }
    serde_json::from_slice(line).map_err(|e| {
        ApiError::new(
            ErrorKind::Invalid,
            format!("malformed request: {e}; is gear the same version as the node?"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let gear = GearRef {
            name: "web".into(),
            namespace: "default".into(),
        };
        let request = Request::EnvSet {
            gear: gear.clone(),
            vars: vec![("A".into(), "b\nc".into())],
        };
        let mut line = serde_json::to_vec(&request).expect("encode");
        assert!(!line.contains(&b'\n'), "a value's line feed stays escaped");
        line.extend_from_slice(b"\n{\"op\":\"ping\"}\n");
        assert_eq!(decode_request(&line), Ok(request));
        assert_eq!(decode_request(br#"{"op":"ping"}"#), Ok(Request::Ping));
        assert_eq!(
            decode_request(br#"{"op":"logs","gear":{"name":"a","namespace":"b"},"lines":5,"follow":false,"hooks":false}"#),
            Ok(Request::Logs {
                gear: GearRef {
                    name: "a".into(),
                    namespace: "b".into()
                },
                lines: 5,
                follow: false,
                hooks: false,
                access: false,
            })
        );
    }

    #[test]
    fn bad_requests_are_invalid_and_say_why() {
        for bad in [
            &b""[..],
            b"\n",
            b"{\"op\":\"start\",\"gear\":{\"name\":\"a\",\"namespace\":\"b\"},\"extra\":1}",
            b"{\"op\":\"reboot\"}",
            b"{\"op\":\"start\"}",
            b"[1,2]",
            b"{\"op\":\"rollback\",\"gear\":{\"name\":\"a\",\"namespace\":\"b\"},\"id\":-1}",
            b"\xff\xfe",
        ] {
            let e = decode_request(bad).expect_err(&String::from_utf8_lossy(bad));
            assert_eq!(e.kind, ErrorKind::Invalid);
            assert!(e.message.starts_with("malformed request: "), "{e}");
        }
        let mut huge = b"{\"op\":\"ping\",\"pad\":\"".to_vec();
        huge.resize(MAX_REQUEST + 1, b'x');
        let e = decode_request(&huge).expect_err("too long");
        assert!(e.message.contains("longer than"), "{e}");
        // nesting deeper than the JSON reader's limit is an error, not a crash
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(decode_request(deep.as_bytes()).is_err());
    }
}
