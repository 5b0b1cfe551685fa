//! The frontend's request path on arbitrary bytes: a request head is parsed,
//! checked and written anew for the gear, and its body (the bytes after the
//! head) followed by the chunk scanner when it is chunked.
//!
//! Besides not crashing, what the gear receives must read the way the
//! frontend read the client: the head written for the gear parses as one
//! complete head, passes the same checks, names the same host once and
//! keeps the same framing. The same bytes are also read as a gear's answer
//! head: an interim one (1xx) is written anew for the client, and must
//! parse the same.

#![no_main]

use gearhost_http::head::{
    MAX_HEADERS, RequestHead, ResponseHead, parse_request, parse_request_within, parse_response,
    write_interim_head,
};
use gearhost_http::request::{check_request, host_name, write_request_head};
use gearhost_http::{ChunkScanner, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    request(data);
    response(data);
});

fn request(data: &[u8]) {
    let mut head = RequestHead::default();
    let Ok(true) = parse_request(data, &mut head) else {
        return;
    };
    assert!(head.len <= data.len());
    let Ok(checked) = check_request(data, &head) else {
        return;
    };
    let name = host_name(&data[checked.authority.clone()])
        .expect("a checked request names a host")
        .into_owned();

    let mut gear = Vec::new();
    write_request_head(data, &head, &checked, "192.0.2.1", &mut gear);
    let mut again = RequestHead::default();
    assert_eq!(
        parse_request_within(&gear, &mut again, MAX_HEADERS),
        Ok(true),
        "the gear's head does not parse: {:?}",
        String::from_utf8_lossy(&gear)
    );
    assert_eq!(
        again.len,
        gear.len(),
        "the gear's head is more than one head"
    );
    let rechecked = check_request(&gear, &again).expect("the gear's head passes the checks");
    assert_eq!(rechecked.facts.hosts, 1);
    // the fields the frontend writes appear once, however they are spelt
    // (CGI-style servers read `_` as `-`)
    let own = |field: &str| {
        again
            .headers
            .iter()
            .filter(|(n, _)| {
                let name = &gear[n.clone()];
                name.len() == field.len()
                    && name.iter().zip(field.bytes()).all(|(a, b)| {
                        let a = if *a == b'_' { b'-' } else { *a };
                        a.eq_ignore_ascii_case(&b)
                    })
            })
            .count()
    };
    for field in [
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ] {
        assert_eq!(
            own(field),
            1,
            "{field} in {:?}",
            String::from_utf8_lossy(&gear)
        );
    }
    assert!(own("content-length") + own("transfer-encoding") <= 1);
    assert_eq!(
        host_name(&gear[rechecked.authority.clone()]).as_deref(),
        Some(name.as_str()),
        "the gear sees another host than the one routed on"
    );
    assert_eq!(
        rechecked.framing, checked.framing,
        "the gear frames the body another way"
    );
    assert_eq!(rechecked.upgrade, checked.upgrade);

    if checked.framing == Framing::Chunked {
        let body = &data[head.len..];
        let mut whole = ChunkScanner::default();
        let whole_result = whole.feed(body, |_| {});
        let mut split = ChunkScanner::default();
        let mut used = 0;
        let mut split_result = Ok(0);
        for piece in body.chunks(7) {
            match split.feed(piece, |_| {}) {
                Ok(n) => used += n,
                Err(e) => {
                    split_result = Err(e);
                    break;
                }
            }
            if split.done() {
                break;
            }
        }
        match (whole_result, split_result) {
            (Ok(n), Ok(_)) => {
                assert_eq!(n, used);
                assert_eq!(whole.done(), split.done());
                assert_eq!(whole.data, split.data);
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("the scanner reads the body two ways: {a:?} against {b:?}"),
        }
    }
}

fn response(data: &[u8]) {
    let mut head = ResponseHead::default();
    let Ok(true) = parse_response(data, &mut head) else {
        return;
    };
    // the frontend writes interim answers anew (the final one it writes from
    // its own status code)
    if !(100..200).contains(&head.status) || head.status == 101 {
        return;
    }
    let mut out = Vec::new();
    write_interim_head(data, &head, &mut out);
    let mut again = ResponseHead::default();
    assert_eq!(
        parse_response(&out, &mut again),
        Ok(true),
        "an answer head written anew does not parse: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(again.len, out.len());
    assert_eq!(again.status, head.status);
}
