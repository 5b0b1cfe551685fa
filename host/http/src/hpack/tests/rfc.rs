//! The examples of RFC 7541 Appendix C: integers, single fields, requests
//! and responses on one connection (the table checked after each block),
//! and the encoder's bytes where its choices are the examples' choices.

use super::*;

#[test]
fn c1_integers() {
    // C.1.1: 10 on a 5-bit prefix; C.1.2: 1337 on 5 bits; C.1.3: 42 on 8
    let cases: [(u32, usize, &[u8]); 3] = [
        (5, 10, &[0x0a]),
        (5, 1337, &[0x1f, 0x9a, 0x0a]),
        (8, 42, &[0x2a]),
    ];
    for (n, value, bytes) in cases {
        let mut out = Vec::new();
        encode_int(&mut out, 0, n, value);
        assert_eq!(out, bytes);
        let mut pos = 0;
        assert_eq!(decode_int(bytes, &mut pos, n), Ok(value));
        assert_eq!(pos, bytes.len());
    }
    // the bits above the prefix are not the integer's
    let mut pos = 0;
    assert_eq!(decode_int(&[0xea], &mut pos, 5), Ok(10));
    // the largest value, and every prefix, both ways
    for n in 4..=8 {
        for value in [
            0,
            1,
            (1 << n) - 2,
            (1 << n) - 1,
            1 << n,
            127,
            128,
            16383,
            16384,
            1 << 28,
        ] {
            let mut out = vec![];
            encode_int(&mut out, 0, n, value);
            let mut pos = 0;
            assert_eq!(
                decode_int(&out, &mut pos, n),
                Ok(value),
                "{value} on {n} bits"
            );
            assert_eq!(pos, out.len());
        }
        let mut out = vec![];
        encode_int(&mut out, 0, n, u32::MAX as usize);
        assert_eq!(decode_int(&out, &mut 0, n), Ok(u32::MAX as usize));
    }
}

/// A block, the field it holds, and the table after it and its size.
type Single = (
    &'static str,
    (&'static str, &'static str),
    &'static [(&'static str, &'static str)],
    usize,
);

#[test]
fn c2_single_fields() {
    let cases: [Single; 4] = [
        // C.2.1: literal with indexing, new name
        (
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            ("custom-key", "custom-header"),
            &[("custom-key", "custom-header")],
            55,
        ),
        // C.2.2: literal without indexing, indexed name
        (
            "040c 2f73 616d 706c 652f 7061 7468",
            (":path", "/sample/path"),
            &[],
            0,
        ),
        // C.2.3: literal never indexed
        (
            "1008 7061 7373 776f 7264 0673 6563 7265 74",
            ("password", "secret"),
            &[],
            0,
        ),
        // C.2.4: indexed
        ("82", (":method", "GET"), &[], 0),
    ];
    for (block, field, table_after, size) in cases {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decode(&mut d, &hex(block)), Ok(fields(&[field])));
        assert_eq!(table(&d), (entries(table_after), size));
    }
}

/// Three requests on one connection (C.3 without Huffman, C.4 with), and
/// the table after each.
fn requests(blocks: [&str; 3]) {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let first = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(decode(&mut d, &hex(blocks[0])), Ok(fields(&first)));
    assert_eq!(
        table(&d),
        (entries(&[(":authority", "www.example.com")]), 57)
    );

    let mut second = first.to_vec();
    second.push(("cache-control", "no-cache"));
    assert_eq!(decode(&mut d, &hex(blocks[1])), Ok(fields(&second)));
    let t = [
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(table(&d), (entries(&t), 110));

    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    assert_eq!(decode(&mut d, &hex(blocks[2])), Ok(fields(&third)));
    let t = [
        ("custom-key", "custom-value"),
        ("cache-control", "no-cache"),
        (":authority", "www.example.com"),
    ];
    assert_eq!(table(&d), (entries(&t), 164));
}

const C3: [&str; 3] = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
];

const C4: [&str; 3] = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
];

#[test]
fn c3_requests_without_huffman() {
    requests(C3);
}

#[test]
fn c4_requests_with_huffman() {
    requests(C4);
}

/// Three responses on one connection with a table of 256 bytes (C.5
/// without Huffman, C.6 with), and the table after each: entries are
/// evicted.
fn responses(blocks: [&str; 3]) {
    let mut d = Decoder::new(256);
    let first = [
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ];
    assert_eq!(decode(&mut d, &hex(blocks[0])), Ok(fields(&first)));
    let t = [
        ("location", "https://www.example.com"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("cache-control", "private"),
        (":status", "302"),
    ];
    assert_eq!(table(&d), (entries(&t), 222));

    let mut second = first;
    second[0].1 = "307";
    assert_eq!(decode(&mut d, &hex(blocks[1])), Ok(fields(&second)));
    let t = [
        (":status", "307"),
        ("location", "https://www.example.com"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("cache-control", "private"),
    ];
    assert_eq!(table(&d), (entries(&t), 222));

    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    let third = [
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        ("set-cookie", cookie),
    ];
    assert_eq!(decode(&mut d, &hex(blocks[2])), Ok(fields(&third)));
    let t = [
        ("set-cookie", cookie),
        ("content-encoding", "gzip"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
    ];
    assert_eq!(table(&d), (entries(&t), 215));
}

const C5: [&str; 3] = [
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
     2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
     6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
     54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
     5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
     3d31",
];

const C6: [&str; 3] = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
     2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
     77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
     9587 3160 65c0 03ed 4ee5 b106 3d50 07",
];

#[test]
fn c5_responses_without_huffman() {
    responses(C5);
}

#[test]
fn c6_responses_with_huffman() {
    responses(C6);
}

/// The encoder makes the choices the RFC's examples make where its rules
/// agree with them: all of C.4, and C.6 but for a string that Huffman
/// coding does not make shorter and the `set-cookie` it never indexes (with
/// its table of 4096 bytes nothing is evicted, and the indices happen to be
/// the same).
#[test]
fn encoder_writes_the_rfc_examples() {
    let mut e = Encoder::new();
    let requests = [
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ][..],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
    ];
    for (list, expected) in requests.iter().zip(C4) {
        let mut out = Vec::new();
        e.begin(&mut out);
        for (n, v) in *list {
            e.field(n.as_bytes(), v.as_bytes(), &mut out);
        }
        assert_eq!(out, hex(expected));
    }

    let mut e = Encoder::new();
    let date = |s| format!("Mon, 21 Oct 2013 20:13:{s} GMT");
    let mut out = Vec::new();
    // "307" Huffman-coded is no shorter (17 bits), so it goes raw as in C.5
    for (status, expected) in [(302, C6[0]), (307, C5[1])] {
        out.clear();
        e.status(status, &mut out);
        e.field(b"cache-control", b"private", &mut out);
        e.field(b"date", date(21).as_bytes(), &mut out);
        e.field(b"location", b"https://www.example.com", &mut out);
        assert_eq!(out, hex(expected));
    }
    out.clear();
    e.status(200, &mut out);
    e.field(b"cache-control", b"private", &mut out);
    e.field(b"date", date(22).as_bytes(), &mut out);
    e.field(b"location", b"https://www.example.com", &mut out);
    e.field(b"content-encoding", b"gzip", &mut out);
    let c6_3 = hex(C6[2]);
    assert_eq!(out, c6_3[..out.len()]);
    // set-cookie: never indexed (0001), static name 55 on 4 bits (15 + 40),
    // the same Huffman-coded value as the RFC's
    let value_at = out.len() + 1;
    e.field(
        b"set-cookie",
        b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        &mut out,
    );
    assert_eq!(out[value_at - 1..value_at + 1], [0x1f, 0x28]);
    assert_eq!(out[value_at + 1..], c6_3[value_at..]);
}
