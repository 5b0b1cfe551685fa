//! Malformed blocks, the header list limit, and encoder to decoder round
//! trips; the examples of RFC 7541 Appendix C are in `tests/rfc.rs`.

use super::*;

mod rfc;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Bytes from hexadecimal digits, blanks ignored (the RFC's dumps).
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ASCII");
            u8::from_str_radix(text, 16).expect("hexadecimal digits")
        })
        .collect()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
    let mut got = Vec::new();
    let decoded = decoder.decode(block, usize::MAX, |n, v| got.push((n.to_vec(), v.to_vec())))?;
    let size: usize = got.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert_eq!(
        decoded,
        Decoded {
            list_size: size,
            oversized: false
        }
    );
    Ok(got)
}

/// The dynamic table's entries, newest first, and its size.
fn table(decoder: &Decoder) -> (Vec<(String, String)>, usize) {
    let t = decoder.table();
    let entries = t
        .entries()
        .map(|e| {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("text");
            (text(e.name()), text(e.value()))
        })
        .collect();
    (entries, t.size())
}

fn entries(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn malformed_blocks_are_refused() {
    use HpackError::*;
    let cases = [
        // a representation cut short
        ("41", Truncated),
        ("40", Truncated),
        ("4001 61", Truncated),
        ("ff", Truncated),
        ("ff80", Truncated),
        ("3f", Truncated),
        // integers over 32 bits, or with more than five continuation bytes
        ("ffff ffff ff7f", IntegerOverflow),
        ("3fe1 ffff ff0f", IntegerOverflow),
        ("ff80 8080 8080 00", IntegerOverflow),
        // indices of 0 or past the tables (61 static entries, none dynamic)
        ("80", BadIndex(0)),
        ("be", BadIndex(62)),
        ("ff00", BadIndex(127)),
        ("7f07 0161", BadIndex(70)),
        ("0f2f 0161", BadIndex(62)),
        ("1f2f 0161", BadIndex(62)),
        // strings longer than the rest of the block
        ("0005 61", StringTooLong),
        ("0485 ff", StringTooLong),
        ("0446 61", StringTooLong),
        // Huffman: EOS, padding of 8 bits, padding of zeros, in a value or a name
        ("0484 ffff ffff", HuffmanEos),
        ("0481 ff", HuffmanPadding),
        ("0481 18", HuffmanPadding),
        ("0081 ff00", HuffmanPadding),
        ("4081 1f81 18", HuffmanPadding),
        // size updates above the maximum, or after a field
        (
            "3fe2 1f",
            TableSizeTooLarge {
                size: 4097,
                max: 4096,
            },
        ),
        (
            "3fe0 ffff ff0f",
            TableSizeTooLarge {
                size: u32::MAX as usize,
                max: 4096,
            },
        ),
        ("8220", MisplacedSizeUpdate),
        ("2082 20", MisplacedSizeUpdate),
        ("0001 6100 3fe1 1f", MisplacedSizeUpdate),
    ];
    for (block, error) in cases {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut called = 0;
        let result = d.decode(&hex(block), usize::MAX, |_, _| called += 1);
        assert_eq!(result, Err(error), "{block}");
        assert!(called <= 1, "{block}");
    }
}

#[test]
fn size_updates_evict_and_only_lead_a_block() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    for block in [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
    ] {
        decode(&mut d, &hex(block)).expect("C.3");
    }
    assert_eq!(table(&d).1, 110);
    // down to 57 (the older entry goes), then a field
    let got = decode(&mut d, &hex("3f1a be")).expect("a size update");
    assert_eq!(got, fields(&[("cache-control", "no-cache")]));
    assert_eq!(table(&d), (entries(&[("cache-control", "no-cache")]), 53));
    assert_eq!(d.table().max(), 57);
    // several updates in a row (0 empties the table), then up to the maximum
    assert_eq!(
        decode(&mut d, &hex("203f e11f 82")),
        Ok(fields(&[(":method", "GET")]))
    );
    assert_eq!(table(&d), (vec![], 0));
    assert_eq!(d.table().max(), 4096);
    // a block of size updates alone
    assert_eq!(decode(&mut d, &hex("3f e11f")), Ok(vec![]));
    assert_eq!(decode(&mut d, &hex("be")), Err(HpackError::BadIndex(62)));
}

#[test]
fn eviction_follows_the_entry_sizes() {
    // an entry larger than the table empties it, and the field still counts
    let mut d = Decoder::new(60);
    assert_eq!(
        decode(&mut d, &hex("4001 6101 62")),
        Ok(fields(&[("a", "b")]))
    );
    assert_eq!(table(&d), (entries(&[("a", "b")]), 34));
    let long = "0123456789012345678901234567";
    let mut block = hex("4001 781c");
    block.extend_from_slice(long.as_bytes());
    assert_eq!(decode(&mut d, &block), Ok(fields(&[("x", long)])));
    assert_eq!(table(&d), (vec![], 0));

    // a new entry named by the entry its insertion evicts (4.4)
    let mut d = Decoder::new(80);
    decode(&mut d, &hex("400a 6375 7374 6f6d 2d6b 6579 0276 31")).expect("custom-key: v1");
    assert_eq!(table(&d).1, 44);
    let got = decode(&mut d, &hex("7e08 7661 6c75 652d 3232")).expect("custom-key: value-22");
    assert_eq!(got, fields(&[("custom-key", "value-22")]));
    assert_eq!(table(&d), (entries(&[("custom-key", "value-22")]), 50));
}

#[test]
fn max_list_stops_the_fields_not_the_table() {
    let block = hex("82 \
         400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572 \
         4003 782d 6105 6865 6c6c 6f \
         84");
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let mut got = Vec::new();
    let decoded = d.decode(&block, 100, |n, v| got.push((n.to_vec(), v.to_vec())));
    // 42 + 55 = 97 fit; x-a: hello (40) crosses 100, and :path / (38) follows
    assert_eq!(
        decoded,
        Ok(Decoded {
            list_size: 175,
            oversized: true
        })
    );
    assert_eq!(
        got,
        fields(&[(":method", "GET"), ("custom-key", "custom-header")])
    );
    // the field past the limit went into the table all the same
    let t = entries(&[("x-a", "hello"), ("custom-key", "custom-header")]);
    assert_eq!(table(&d), (t, 95));
    assert_eq!(
        decode(&mut d, &hex("bebf")),
        Ok(fields(&[("x-a", "hello"), ("custom-key", "custom-header")]))
    );

    // a list exactly at the limit is not over it
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let decoded = d.decode(&block[..block.len() - 12], 97, |_, _| {});
    assert_eq!(
        decoded,
        Ok(Decoded {
            list_size: 97,
            oversized: false
        })
    );

    // a large entry referenced at a byte each
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let mut block = hex("4001 627f b916"); // b: 3000 bytes (127 + 57 + 22 * 128)
    block.extend(std::iter::repeat_n(b'v', 3000));
    block.extend(std::iter::repeat_n(0xbe, 1000));
    let mut calls = 0;
    let decoded = d.decode(&block, 16 * 1024, |_, v| {
        assert_eq!(v.len(), 3000);
        calls += 1;
    });
    assert_eq!(
        decoded,
        Ok(Decoded {
            list_size: 1001 * 3033,
            oversized: true
        })
    );
    assert_eq!(calls, 5);
}

#[test]
fn encoder_choices() {
    let mut e = Encoder::new();
    let mut out = Vec::new();
    // a field found whole in the dynamic table is one byte
    e.field(b"x-a", b"hello", &mut out);
    assert_eq!(out[0], 0x40);
    out.clear();
    e.field(b"x-a", b"hello", &mut out);
    assert_eq!(out, [0xbe]);
    // a new value for a name in the dynamic table names it by index
    out.clear();
    e.field(b"x-a", b"world", &mut out);
    assert_eq!(out[0], 0x40 | 62);
    // a static name wins over a dynamic one
    e.field(b"etag", b"\"1\"", &mut out);
    e.field(b"etag", b"\"2\"", &mut out);
    out.clear();
    e.field(b"etag", b"\"3\"", &mut out);
    assert_eq!(out[0], 0x40 | 34);
    // credentials are never indexed, and never enter the table
    for (name, index) in [
        ("set-cookie", 55),
        ("cookie", 32),
        ("authorization", 23),
        ("proxy-authorization", 49),
    ] {
        for _ in 0..2 {
            out.clear();
            e.field(name.as_bytes(), b"secret", &mut out);
            let mut expected = Vec::new();
            encode_int(&mut expected, 0x10, 4, index);
            assert_eq!(out[..expected.len()], expected, "{name}");
        }
    }
    assert!(e.table().entries().all(|x| x.value() != b"secret"));
    // an entry over a quarter of the table is not indexed
    let size_before = e.table().size();
    let big = vec![b'a'; 1024 - 32 - 3 + 1];
    out.clear();
    e.field(b"x-b", &big, &mut out);
    assert_eq!(out[0], 0x00);
    assert_eq!(e.table().size(), size_before);
    out.clear();
    e.field(b"x-b", &big[1..], &mut out);
    assert_eq!(out[0], 0x40);
    assert_eq!(e.table().size(), size_before + 1024);
    // Huffman only when shorter: binary bytes go raw, text coded
    out.clear();
    e.field(b"x-c", &[0, 1, 2, 3], &mut out);
    assert_eq!(out, [0x40, 0x03, b'x', b'-', b'c', 0x04, 0, 1, 2, 3]);
    out.clear();
    e.field(b"x-d", b"www.example.com", &mut out);
    assert_eq!(out[..6], [0x40, 0x03, b'x', b'-', b'd', 0x80 | 12]);
    // in a table too large to compare every entry, through the hashes
    let mut e = Encoder::new();
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    out.clear();
    for i in 0..30 {
        e.field(format!("x-{i}").as_bytes(), b"v", &mut out);
    }
    decode(&mut d, &out).expect("30 fields");
    out.clear();
    e.field(b"x-3", b"v", &mut out);
    assert_eq!(out, [0x80 | (62 + 26)]);
    e.field(b"x-3", b"w", &mut out);
    assert_eq!(out[1..3], [0x7f, 62 + 26 - 63]);
    e.field(b"x-3", b"w", &mut out);
    assert_eq!(out[out.len() - 1], 0xbe);
    e.check_index();
    let expected = fields(&[("x-3", "v"), ("x-3", "w"), ("x-3", "w")]);
    assert_eq!(decode(&mut d, &out), Ok(expected));
    out.clear();
    // statuses: the static table's, else a literal with name index 8
    out.clear();
    e.status(204, &mut out);
    assert_eq!(out, [0x89]);
    out.clear();
    e.status(103, &mut out);
    assert_eq!(out[0], 0x48);
    out.clear();
    e.status(103, &mut out);
    assert_eq!(out, [0xbe]);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    for status in [0, 7, 99, 1000, 65535] {
        let mut e = Encoder::new();
        out.clear();
        e.status(status, &mut out);
        let text = status.to_string();
        assert_eq!(decode(&mut d, &out), Ok(fields(&[(":status", &text)])));
    }
}

#[test]
fn encoder_signals_table_size_changes() {
    let cases: [(&[usize], &str); 6] = [
        (&[], "88"),
        (&[4096], "88"),
        (&[100_000], "88"),
        (&[256], "3fe1 0188"),
        (&[0, 4096], "203f e11f 88"),
        (&[1000, 0, 256, 300], "203f 8d02 88"),
    ];
    for (sizes, block) in cases {
        let mut e = Encoder::new();
        for size in sizes {
            e.set_max_table_size(*size);
        }
        let mut out = Vec::new();
        e.status(200, &mut out);
        assert_eq!(out, hex(block), "{sizes:?}");
        // signalled once
        out.clear();
        e.status(200, &mut out);
        assert_eq!(out, [0x88]);
    }
    // trailers start a block too
    let mut e = Encoder::new();
    e.set_max_table_size(0);
    let mut out = Vec::new();
    e.begin(&mut out);
    e.field(b"grpc-status", b"0", &mut out);
    assert_eq!(out[..2], [0x20, 0x00]);
    assert_eq!(e.table().size(), 0);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    assert_eq!(decode(&mut d, &out), Ok(fields(&[("grpc-status", "0")])));
    assert_eq!(d.table().max(), 0);
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `min` to `min + spread - 1` bytes drawn from `alphabet`.
    fn bytes(&mut self, min: usize, spread: usize, alphabet: &[u8]) -> Vec<u8> {
        let len = min + self.below(spread);
        (0..len)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

/// A field a response might carry: common ones repeated, new values, text
/// and binary, names static and not, some too large to index or to fit.
fn random_field(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    const NAMES: [&str; 12] = [
        "content-type",
        "date",
        "server",
        "etag",
        "set-cookie",
        "cache-control",
        "vary",
        "x-request-id",
        "content-length",
        "x-custom-header",
        "location",
        "accept-encoding",
    ];
    const VALUES: [&str; 6] = [
        "text/html",
        "gzip, deflate",
        "max-age=3600",
        "",
        "nginx",
        "/",
    ];
    let text: Vec<u8> = (b' '..=b'~').collect();
    let binary: Vec<u8> = (0..=255).collect();
    let name = match rng.below(10) {
        0 => rng.bytes(1, 20, b"abcdefghijklmnopqrstuvwxyz-"),
        1 => rng.bytes(1, 5, &binary),
        _ => NAMES[rng.below(NAMES.len())].as_bytes().to_vec(),
    };
    let value = match rng.below(12) {
        0..=4 => VALUES[rng.below(VALUES.len())].as_bytes().to_vec(),
        5..=7 => rng.bytes(0, 40, &text),
        8 => rng.bytes(0, 40, &binary),
        9 => rng.bytes(990, 40, &text),
        10 => rng.bytes(4000, 200, &text),
        _ => rng.below(100_000).to_string().into_bytes(),
    };
    (name, value)
}

#[test]
fn round_trips_keep_the_tables_in_step() {
    const STATUSES: [u16; 8] = [200, 200, 304, 404, 302, 103, 307, 999];
    const SIZES: [usize; 8] = [0, 1, 64, 256, 1000, 4096, 8192, 65536];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut e = Encoder::new();
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let mut evictions = 0;
    let mut updates = 0;
    for block in 0..400 {
        // now and then the peer's settings change, sometimes twice
        if rng.below(8) == 0 {
            for _ in 0..1 + rng.below(2) {
                e.set_max_table_size(SIZES[rng.below(SIZES.len())]);
            }
        }
        let mut out = Vec::new();
        let status = STATUSES[rng.below(STATUSES.len())];
        e.status(status, &mut out);
        if out[0] & 0xe0 == 0x20 {
            updates += 1;
        }
        let mut sent = vec![(b":status".to_vec(), status.to_string().into_bytes())];
        for _ in 0..rng.below(16) {
            let (name, value) = random_field(&mut rng);
            // an insertion makes the field the newest entry, which it was
            // not before (it would have been found whole)
            let newest =
                |t: &table::Table| t.get(0).map(|x| (x.name().to_vec(), x.value().to_vec()));
            let before = (e.table().entries().count(), newest(e.table()));
            e.field(&name, &value, &mut out);
            let field = Some((name.clone(), value.clone()));
            if newest(e.table()) == field && before.1 != field {
                evictions += before.0 + 1 - e.table().entries().count();
            }
            sent.push((name, value));
        }
        assert_eq!(decode(&mut d, &out), Ok(sent), "block {block}");
        e.check_index();
        let (te, td) = (e.table(), d.table());
        assert_eq!(
            (te.max(), te.size()),
            (td.max(), td.size()),
            "block {block}"
        );
        assert!(te.entries().eq(td.entries()), "block {block}");
        assert!(te.size() <= te.max());
    }
    assert!(
        evictions > 20 && updates > 20,
        "{evictions} evictions, {updates} size updates"
    );
}

#[test]
fn decoder_scratch_stays_bounded() {
    // a Huffman-coded value of n bytes decodes to at most 8n/5 bytes, and
    // the scratch holds one more (a decoding step writes two), however often
    let value = vec![b'0'; 1600];
    let mut coded = Vec::new();
    huffman::encode(&value, &mut coded);
    assert_eq!(coded.len(), 1000);
    let mut block = hex("04ff e906"); // :path, Huffman, 127 + 105 + 6 * 128 bytes
    block.extend_from_slice(&coded);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    for _ in 0..3 {
        assert_eq!(
            decode(&mut d, &block),
            Ok(vec![(b":path".to_vec(), value.clone())])
        );
        assert_eq!(d.scratch_capacity(), (0, 1601));
    }
}
