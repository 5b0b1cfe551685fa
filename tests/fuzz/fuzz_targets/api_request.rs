//! The node API's request decoder (`decode_request`, what the node runs on
//! the bytes a client sent over its socket) on arbitrary bytes: a request
//! is decoded or refused as invalid, and a decoded one encodes back to a
//! line that decodes to the same request.

#![no_main]

use gearhost_api::{ErrorKind, decode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(request) => {
            let mut line = serde_json::to_vec(&request).expect("a request encodes");
            assert!(!line.contains(&b'\n'), "an encoded request is one line");
            line.push(b'\n');
            assert_eq!(decode_request(&line), Ok(request));
        }
        Err(e) => assert_eq!(e.kind, ErrorKind::Invalid),
    }
});
