//! The HPACK decoder (`gearhost_http::hpack`) on arbitrary header blocks,
//! several in a row through one decoder as on one connection, and the
//! encoder on what they hold.
//!
//! Besides not crashing (and stopping at the first error, as a connection
//! would), the fields passed on are within the header list limit given,
//! the list size counts them all when the limit was not crossed, and the
//! fields re-encoded by an `Encoder` (whose table size changes between
//! blocks when the input asks) decode through a fresh `Decoder` to the
//! same fields, block after block: the encoder's table stays in step.
//!
//! The input is a byte of settings, then blocks, each a length byte and
//! that many bytes (the last block takes what is left). The settings'
//! bits 0-1 choose the decoder's table size, bits 2-3 the header list
//! limit, bit 4 a new table size for the encoder before each block.

#![no_main]

use gearhost_http::hpack::{DEFAULT_TABLE_SIZE, Decoder, Encoder};
use libfuzzer_sys::fuzz_target;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fuzz_target!(|input: &[u8]| {
    let Some((&settings, mut rest)) = input.split_first() else {
        return;
    };
    let table_size = [DEFAULT_TABLE_SIZE, 256, 0, 65536][usize::from(settings & 3)];
    let max_list = [usize::MAX, 16 * 1024, 256, 0][usize::from(settings >> 2 & 3)];
    let resize = settings & 0x10 != 0;

    let mut decoder = Decoder::new(table_size);
    let mut encoder = Encoder::new();
    let mut check = Decoder::new(DEFAULT_TABLE_SIZE);
    while let Some((&len, after)) = rest.split_first() {
        let (block, next) = after.split_at(usize::from(len).min(after.len()));
        rest = next;

        let mut fields = Fields::new();
        let Ok(decoded) = decoder.decode(block, max_list, |n, v| {
            fields.push((n.to_vec(), v.to_vec()))
        }) else {
            // a connection error: the decoder is not used again
            return;
        };
        let passed: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert!(passed <= max_list, "fields past the limit were passed on");
        if decoded.oversized {
            assert!(decoded.list_size > max_list);
        } else {
            assert_eq!(decoded.list_size, passed);
        }

        if resize {
            encoder.set_max_table_size(block.len() * 64);
        }
        let encoded = encode(&mut encoder, &fields);
        let mut again = Fields::new();
        let result = check.decode(&encoded, usize::MAX, |n, v| {
            again.push((n.to_vec(), v.to_vec()))
        });
        assert!(result.is_ok(), "the encoder's block is refused: {result:?}");
        assert_eq!(again, fields, "the encoder's block decodes to other fields");
    }
});

/// Encodes `fields` as a block, starting it with `Encoder::status` when the
/// first is a `:status` that it writes the same.
fn encode(encoder: &mut Encoder, fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = &fields[..];
    let status = fields.first().and_then(|(n, v)| {
        let digits = v.len() == 3 && v.iter().all(u8::is_ascii_digit) && v[0] != b'0';
        (n == b":status" && digits).then(|| {
            v.iter()
                .fold(0u16, |code, d| code * 10 + u16::from(d - b'0'))
        })
    });
    match status {
        Some(code) => {
            encoder.status(code, &mut out);
            rest = &fields[1..];
        }
        None => encoder.begin(&mut out),
    }
    for (name, value) in rest {
        encoder.field(name, value, &mut out);
    }
    out
}
