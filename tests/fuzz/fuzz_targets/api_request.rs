//! The node API's request decoder (`decode_request`, what the node runs on
//! the bytes a client sent over its socket) on arbitrary bytes: a request
//! is decoded or refused as invalid, and a decoded one encodes back to a
//! line that decodes to the same request.

#![no_main]

use gearhost_api::{ErrorKind, decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(request) => {
            let line = encode_request(&request);
            let feeds = line.iter().filter(|b| **b == b'\n').count();
            assert!(feeds == 1 && line.ends_with(b"\n"), "an encoded request is one line");
            assert_eq!(decode_request(&line), Ok(request));
        }
        Err(e) => assert_eq!(e.kind, ErrorKind::Invalid),
    }
});
