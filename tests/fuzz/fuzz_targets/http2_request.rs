//! An HTTP/2 request's header list, as arbitrary as a client can make it,
//! written as the HTTP/1.1 head the frontend's pipeline reads
//! (`gearhost_http::h2::request`).
//!
//! Whatever the list holds, a head that is written must be the list's
//! own: it parses as one whole head, its request line holds the method
//! and path given, and its fields are exactly the regular fields given (in
//! order, `host` and `cookie` as the writer places them): no field value
//! can end a line and start another, and no field is lost. Where the
//! writer says each part is must be where the parser finds it: the
//! pipeline takes the writer's ranges without parsing the head again.
//!
//! The input is a list of fields, each `name NUL value NUL`; a first byte
//! whose low bit is set ends the stream with the headers.

#![no_main]

use gearhost_http::h2::request::RequestWriter;
use gearhost_http::head::{MAX_HEADERS, RequestHead, parse_request_within};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0);
    let mut fields = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        fields.push((name, value));
    }
    if fields.len() > MAX_HEADERS {
        // more than any head the pipeline reads
        return;
    }
    let mut w = RequestWriter::default();
    let mut out = Vec::new();
    for (name, value) in &fields {
        w.field(name, value, &mut out);
    }
    let Ok(request) = w.finish(first & 1 == 1, &mut out) else {
        return;
    };
    let mut head = RequestHead::default();
    assert_eq!(
        parse_request_within(&out, &mut head, MAX_HEADERS + 8),
        Ok(true),
        "the head does not parse: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(head.len, out.len(), "the head is followed by more");
    // the pipeline takes the writer's word for where each part is
    assert_eq!(w.take_head(Vec::new()), head, "the writer's ranges are not the parser's");
    let pseudo = |n: &[u8]| fields.iter().find(|(name, _)| *name == n).map(|f| f.1);
    let method = pseudo(b":method").expect("a method");
    assert_eq!(&out[head.method.clone()], method);
    if method != b"CONNECT" {
        assert_eq!(&out[head.target.clone()], pseudo(b":path").expect("a path"));
    }
    // the regular fields, in order, with cookies joined at the end
    let regular: Vec<_> = fields
        .iter()
        .filter(|(n, _)| !n.starts_with(b":") && *n != b"host" && *n != b"cookie")
        .collect();
    let written: Vec<_> = head
        .headers
        .iter()
        .map(|(n, v)| (&out[n.clone()], &out[v.clone()]))
        .filter(|(n, _)| *n != b"host" && *n != b"cookie" && *n != b"transfer-encoding")
        .collect();
    assert_eq!(written.len(), regular.len(), "{:?}", String::from_utf8_lossy(&out));
    for ((n, v), (wn, wv)) in regular.iter().zip(&written) {
        assert_eq!((n, v), (wn, wv));
    }
    let chunked = head.headers.iter().any(|(n, _)| &out[n.clone()] == b"transfer-encoding");
    assert_eq!(chunked, request.chunked);
});
