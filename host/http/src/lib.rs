//! The wire formats of Gearhost's frontend (HTTP/1.1, and HTTP/2's frames
//! and header compression), as pure functions over byte buffers: no
//! sockets, no runtime, no allocation per header.
//!
//! Everything here reads bytes that a client on the internet or a gear
//! controls, so every rule is strict and every input has one reading:
//!
//! - [`head`]: request and response heads parsed in place (`httparse`) into
//!   ranges of the caller's buffer; a request head must end its lines with
//!   CRLF.
//! - [`fields`]: what a head's header fields say about framing and the
//!   connection, and which fields belong to the connection rather than the
//!   message (hop-by-hop).
//! - [`request`]: the checks a request passes before it is routed (one
//!   `Host`, a known target form, one framing), the host name it is routed
//!   on, and the head a gear receives, written so that the gear sees the
//!   host and framing the frontend acted on and nothing else.
//! - [`chunked`]: a scanner that follows chunked framing byte by byte while
//!   the body passes through verbatim.
//! - [`h2`]: HTTP/2 frame heads and control frames, and
//!   ([`h2::request`]) a request's header list written as the HTTP/1.1 head
//!   the pipeline reads, checked as RFC 9113 asks.
//! - [`hpack`]: HTTP/2 header compression (RFC 7541).
//!
//! The node's frontend (`gearhost-node`) does the I/O around these; the fuzz
//! targets in `tests/fuzz` drive them directly.
//!
//! ```
//! use gearhost_http::head::{RequestHead, parse_request};
//! use gearhost_http::request::{check_request, host_name};
//!
//! let data = b"GET /a HTTP/1.1\r\nHost: Web-Default.localhost:8000\r\n\r\n";
//! let mut head = RequestHead::default();
//! assert!(parse_request(data, &mut head).expect("a valid head"));
//! let checked = check_request(data, &head).expect("a request to pass on");
//! let name = host_name(&data[checked.authority.clone()]).expect("a host name");
//! assert_eq!(name, "web-default.localhost");
//! ```

pub mod chunked;
pub mod fields;
pub mod h2;
pub mod head;
pub mod hpack;
pub mod request;

pub use chunked::{BadChunk, ChunkScanner};
pub use fields::{Facts, Framing};
pub use head::{ParseError, RequestHead, ResponseHead};
pub use request::{BadRequest, Checked, Target};
