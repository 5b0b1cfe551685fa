//! The node API: what clients send over the node's unix socket and what the
//! node answers, typed. The node, the `gear` command and every other client
//! (a remote transport, another node of a cluster) share this crate; it has
//! no I/O of its own and no dependency on the node.
//!
//! # The wire
//!
//! One request per connection: one JSON line, an [`ops`] operation tagged by
//! `op`, with the API version the client speaks in `api`
//! ([`encode_request`], [`decode_request`]). The node answers with any number
//! of [`Event`] lines and then exactly one answer line ([`Reply`]): `ok` with
//! the operation's typed answer ([`Op::Reply`], see [`reply`]), or `error`
//! with an [`ApiError`].
//!
//! The reply *frame* (`event` / `ok` / `error`, the error's `kind` and
//! `message`) is the same in every API version, so a client of any version
//! can read the error a node of another version sends: a request whose `api`
//! differs from the node's [`API_VERSION`] is refused with a message that
//! says which side to upgrade. What is inside `ok` and the operations may
//! change only with a new API version. Golden files in `tests/golden/` pin
//! the encoding of every request and answer.
//!
//! `exec` additionally passes the caller's standard input, output and error
//! as file descriptors (SCM_RIGHTS) with the request, so the command in the
//! gear talks to the caller's terminal directly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod ops;
pub mod reply;

pub use ops::Request;

/// The version of the node API this crate describes. It changes whenever an
/// operation or an answer changes in a way an older peer would misread.
pub const API_VERSION: u32 = 1;

/// The request field in which the node's ssh endpoint names the user it acts
/// for (the key's owner). The node takes it only from the endpoint's own
/// login account, and refuses it from anyone else.
pub const AS_USER: &str = "as-user";

/// Where a node listens unless its configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/gearhost/node.sock";

/// Most bytes of one request line.
pub const MAX_REQUEST: usize = 1 << 20;

/// The release of Gearhost this crate belongs to.
const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// A gear, named the way users name it: `name` in namespace `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// An operation: its fields are the request, [`Op::Reply`] is what the node
/// answers when it succeeds.
pub trait Op: Into<Request> {
    /// The answer.
    type Reply: Serialize + DeserializeOwned;
    /// The operation's name on the wire.
    const NAME: &'static str;
}

/// Something the node reports while it works on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// Progress of the operation (a build's output, a step done), for people.
    Progress(String),
    /// A line of a log the caller asked for (`logs`).
    Line(String),
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

/// An error answer.
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

/// One line the node sends back: the frame every API version shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// Progress or a log line; more lines follow.
    Event(Event),
    /// The request succeeded; the operation's answer ([`Op::Reply`]).
    Ok(serde_json::Value),
    /// The request failed.
    Error(ApiError),
}

impl Reply {
    /// The success line for operation `O`'s answer.
    pub fn answer<O: Op>(answer: &O::Reply) -> Reply {
        match serde_json::to_value(answer) {
            Ok(value) => Reply::Ok(value),
            Err(e) => Reply::Error(ApiError::new(
                ErrorKind::Failed,
                format!("the node could not encode its answer to {}: {e}", O::NAME),
            )),
        }
    }

    /// The line as sent: JSON and a line feed.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            // a reply is built from strings and numbers only; should that
            // ever fail, the client still gets a well-formed error line
            let error = Reply::Error(ApiError::new(ErrorKind::Failed, e.to_string()));
            serde_json::to_vec(&error).unwrap_or_default()
        });
        line.push(b'\n');
        line
    }

    /// Reads one line a node sent.
    pub fn decode(line: &str) -> Result<Reply, ApiError> {
        serde_json::from_str(line).map_err(|e| {
            ApiError::new(
                ErrorKind::Failed,
                format!(
                    "the node sent a line this client cannot read ({e}); \
                     is the node a Gearhost node of a version that speaks API {API_VERSION}?"
                ),
            )
        })
    }
}

/// Reads operation `O`'s answer out of an `ok` line's value.
pub fn decode_answer<O: Op>(value: serde_json::Value) -> Result<O::Reply, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorKind::Failed,
            format!(
                "the node's answer to {} does not have the shape API {API_VERSION} gives it ({e}); \
                 are the client and the node the same release (`gear --version`, `gearhost-node --version`)?",
                O::NAME
            ),
        )
    })
}

/// The request line for `request`: JSON with the API version, and a line feed.
pub fn encode_request(request: &Request) -> Vec<u8> {
    encode_request_as(request, None)
}

/// [`encode_request`], sent by the node's ssh endpoint for user `as_user`
/// (see [`AS_USER`]).
pub fn encode_request_as(request: &Request, as_user: Option<&str>) -> Vec<u8> {
    let mut value = serde_json::to_value(request).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("api".into(), API_VERSION.into());
        if let Some(user) = as_user {
            map.insert(AS_USER.into(), user.into());
        }
    }
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    line
}

/// Decodes the request a client sent: the bytes the node read from its
/// socket, up to and including the first line feed (bytes after it are not
/// looked at; the line may also end where the client closed the
/// connection). A line longer than [`MAX_REQUEST`] bytes, one of another API
/// version, or one that is not a [`Request`] in JSON, is an
/// [`ErrorKind::Invalid`] error that says what to do.
pub fn decode_request(read: &[u8]) -> Result<Request, ApiError> {
    decode_request_as(read).map(|(request, _)| request)
}

/// [`decode_request`], with the user the sender says it acts for
/// ([`AS_USER`]), if it says so.
pub fn decode_request_as(read: &[u8]) -> Result<(Request, Option<String>), ApiError> {
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
    let malformed = |e: &dyn std::fmt::Display| {
        ApiError::new(
            ErrorKind::Invalid,
            format!("malformed request: {e}; is the client the same version as the node?"),
        )
    };
    let mut value: serde_json::Value = serde_json::from_slice(line).map_err(|e| malformed(&e))?;
    let Some(fields) = value.as_object_mut() else {
        return Err(malformed(&"a request is a JSON object"));
    };
    let spoken = match fields.remove("api") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| malformed(&format!("`api` is {v}, not a version number")))?,
        ),
    };
    if spoken != Some(u64::from(API_VERSION)) {
        return Err(version_mismatch(spoken));
    }
    let as_user = match fields.remove(AS_USER) {
        None => None,
        Some(serde_json::Value::String(user)) => Some(user),
        Some(v) => return Err(malformed(&format!("`{AS_USER}` is {v}, not a user name"))),
    };
    Request::deserialize(value)
        .map(|request| (request, as_user))
        .map_err(|e| malformed(&e))
}

/// The error for a client that speaks another API version than this node.
fn version_mismatch(spoken: Option<u64>) -> ApiError {
    let node = format!("this node (Gearhost {RELEASE}) speaks node API {API_VERSION}");
    let message = match spoken {
        None => format!(
            "{node}, and the client sent no API version, which only clients from before \
             versioned APIs do: use the `gear` of the node's release"
        ),
        Some(v) if v < u64::from(API_VERSION) => format!(
            "the client speaks node API {v}, older than {node}: upgrade the client \
             (`gear`) to the node's release"
        ),
        Some(v) => format!(
            "the client speaks node API {v}, newer than {node}: upgrade the node, or use \
             the `gear` of the node's release"
        ),
    };
    ApiError::new(ErrorKind::Invalid, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{EnvSet, Logs, Ping, Start};

    fn gear() -> GearRef {
        GearRef {
            name: "web".into(),
            namespace: "default".into(),
        }
    }

    #[test]
    fn the_user_the_ssh_endpoint_acts_for_travels_beside_the_operation() {
        let request: Request = Ping {}.into();
        let line = encode_request_as(&request, Some("ada"));
        let text = String::from_utf8(line.clone()).expect("utf-8");
        assert!(text.contains(r#""as-user":"ada""#), "{text}");
        assert_eq!(
            decode_request_as(&line),
            Ok((request.clone(), Some("ada".to_string())))
        );
        assert_eq!(
            decode_request_as(&encode_request(&request)),
            Ok((request, None))
        );
        let e = decode_request_as(br#"{"api":1,"op":"ping","as-user":7}"#).expect_err("a number");
        assert_eq!(e.kind, ErrorKind::Invalid);
    }

    #[test]
    fn requests_are_one_json_line_with_the_api_version() {
        let request: Request = EnvSet {
            gear: gear(),
            vars: vec![("A".into(), "b\nc".into())],
        }
        .into();
        let mut line = encode_request(&request);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        assert!(line.ends_with(b"\n"));
        let text = String::from_utf8(line.clone()).expect("utf-8");
        assert!(text.contains(r#""api":1"#), "{text}");
        assert!(text.contains(r#""op":"env-set""#), "{text}");
        line.extend_from_slice(b"{\"api\":1,\"op\":\"ping\"}\n");
        assert_eq!(decode_request(&line), Ok(request));
        assert_eq!(
            decode_request(br#"{"op":"ping","api":1}"#),
            Ok(Request::Ping(Ping {}))
        );
        assert_eq!(
            decode_request(
                br#"{"api":1,"op":"logs","gear":{"name":"a","namespace":"b"},"lines":5,"follow":false,"hooks":false}"#
            ),
            Ok(Request::Logs(Logs {
                gear: GearRef {
                    name: "a".into(),
                    namespace: "b".into()
                },
                lines: 5,
                follow: false,
                hooks: false,
                access: false,
            }))
        );
    }

    #[test]
    fn bad_requests_are_invalid_and_say_why() {
        for bad in [
            &b""[..],
            b"\n",
            b"{\"api\":1,\"op\":\"start\",\"gear\":{\"name\":\"a\",\"namespace\":\"b\"},\"extra\":1}",
            b"{\"api\":1,\"op\":\"start\",\"gear\":{\"name\":\"a\",\"namespace\":\"b\",\"x\":0}}",
            // an operation without fields refuses unknown ones too
            b"{\"api\":1,\"op\":\"ping\",\"extra\":1}",
            b"{\"api\":1,\"op\":\"reboot\"}",
            b"{\"api\":1,\"op\":\"start\"}",
            b"{\"api\":\"one\",\"op\":\"ping\"}",
            b"[1,2]",
            b"{\"api\":1,\"op\":\"rollback\",\"gear\":{\"name\":\"a\",\"namespace\":\"b\"},\"id\":-1}",
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

    #[test]
    fn another_api_version_is_told_which_side_to_upgrade() {
        let unversioned = decode_request(br#"{"op":"ping"}"#).expect_err("no version");
        assert_eq!(unversioned.kind, ErrorKind::Invalid);
        assert!(
            unversioned.message.contains("sent no API version"),
            "{unversioned}"
        );
        let older = decode_request(br#"{"api":0,"op":"ping"}"#).expect_err("older");
        assert!(older.message.contains("upgrade the client"), "{older}");
        let newer = format!(r#"{{"api":{},"op":"ping"}}"#, API_VERSION + 1);
        let newer = decode_request(newer.as_bytes()).expect_err("newer");
        assert!(newer.message.contains("upgrade the node"), "{newer}");
        // whatever the version, the refusal is a frame every client reads
        let line = Reply::Error(newer).encode();
        let text = std::str::from_utf8(&line).expect("utf-8");
        assert!(
            text.starts_with(r#"{"error":{"kind":"invalid","message":"#),
            "{text}"
        );
    }

    #[test]
    fn answers_are_typed_by_their_operation() {
        let view = reply::NodeInfo {
            version: "1.2.3".into(),
            api: API_VERSION,
            state_dir: "/var/lib/gearhost".into(),
            domain: "apps.test".into(),
            frontend: None,
            metrics: None,
        };
        let Reply::Ok(value) = Reply::answer::<Ping>(&view) else {
            panic!("an answer encodes");
        };
        assert_eq!(decode_answer::<Ping>(value.clone()), Ok(view));
        // the same value is not the answer to another operation
        let e = decode_answer::<Start>(value).expect_err("not a gear view");
        assert_eq!(e.kind, ErrorKind::Failed);
        assert!(e.message.contains("answer to start"), "{e}");
        // frames round-trip, events included
        for frame in [
            Reply::Event(Event::Progress("building".into())),
            Reply::Event(Event::Line("GET / 200".into())),
            Reply::Ok(serde_json::Value::Null),
            Reply::Error(ApiError::new(ErrorKind::NotFound, "no gear")),
        ] {
            let line = frame.encode();
            let text = std::str::from_utf8(&line).expect("utf-8");
            assert_eq!(Reply::decode(text.trim_end()), Ok(frame));
        }
        assert_eq!(
            Reply::decode("{\"shout\":1}").map_err(|e| e.kind),
            Err(ErrorKind::Failed)
        );
    }
}
