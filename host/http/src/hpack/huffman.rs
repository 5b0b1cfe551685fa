//! The Huffman code of HPACK (RFC 7541, 5.2 and Appendix B): string
//! literals coded with it, and their coded length.
//!
//! The code is the RFC's table, kept as data ([`CODES`]); every table the
//! decoder uses is computed from it at compile time:
//!
//! - [`STEPS`], indexed by the next 12 bits of a string, says which symbols
//!   those bits begin with: one or two whole symbols (every code is at least
//!   5 bits long, so two fit when the first two codes take 12 bits or less),
//!   or none when the first code is longer than 12 bits. The symbols a
//!   header holds (letters, digits, most punctuation) have codes of 5 to 8
//!   bits, so most steps decode two of them.
//! - [`LONG`], every code left-justified in 32 bits, in ascending order: the
//!   codes tile the 32-bit space (the code is complete and prefix-free), so
//!   the code a window of 32 bits begins with is the last one that is not
//!   above it, found by binary search. This serves the codes of 13 to 30 bits
//!   (bytes that rarely appear in a header).
//!
//! Bits are read eight bytes at a time into an accumulator, most
//! significant first, and decoded while it holds at least 30 (the longest
//! code), so a code read there is always whole. The string's last bits are
//! decoded one symbol at a time with what follows them read as ones, which
//! is what padding (the start of the end-of-string symbol, EOS) must be: a
//! code that runs past the end is then padding, valid if it is at most 7
//! bits of ones.
//!
//! Decoding appends to a buffer grown once per string to the most it can
//! hold (8 symbols per 5 bytes, the shortest code being 5 bits); a step
//! writes both its symbol slots and counts the ones it decoded, which
//! spares a branch per step.

use super::HpackError;

/// The code and its length in bits of each symbol: the bytes 0 to 255, then
/// EOS (256), as RFC 7541 Appendix B lists them (codes aligned to the least
/// significant bit).
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    // 0-7
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    // 8-15
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    // 16-23
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    // 24-31
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    // 32: ' ' ! " # $ % & '
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    // 40: ( ) * + , - . /
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    // 48: 0 1 2 3 4 5 6 7
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    // 56: 8 9 : ; < = > ?
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    // 64: @ A B C D E F G
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    // 72: H I J K L M N O
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    // 80: P Q R S T U V W
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    // 88: X Y Z [ \ ] ^ _
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    // 96: ` a b c d e f g
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    // 104: h i j k l m n o
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    // 112: p q r s t u v w
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    // 120: x y z { | } ~ DEL
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    // 128-135
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    // 136-143
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    // 144-151
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    // 152-159
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    // 160-167
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    // 168-175
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    // 176-183
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    // 184-191
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    // 192-199
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    // 200-207
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    // 208-215
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    // 216-223
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    // 224-231
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    // 232-239
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    // 240-247
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    // 248-255
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    // 256: EOS
    (0x3fffffff, 30),
];

/// The symbol EOS, which no string may hold.
const EOS: u16 = 256;

/// Bits the decoder looks at in one step of [`STEPS`].
const PEEK: u32 = 12;

/// What the next [`PEEK`] bits of a string begin with.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// The symbols decoded: `count` of them, the others 0.
    sym: [u8; 2],
    /// How many symbols those bits begin with: 1 or 2, or 0 when the first
    /// code is longer than [`PEEK`].
    count: u8,
    /// Bits of the symbols decoded.
    bits: u8,
}

/// The decoder's steps, indexed by the next [`PEEK`] bits.
static STEPS: [Step; 1 << PEEK] = steps();

/// Every code left-justified in 32 bits, its symbol and its length, in
/// ascending order of code.
static LONG: [(u32, u16, u8); 257] = long_codes();

/// For each [`PEEK`]-bit index, the symbol whose code it begins with and
/// that code's length, or length 0 when that code is longer than [`PEEK`].
const fn first_symbols() -> [(u8, u8); 1 << PEEK] {
    let mut table = [(0u8, 0u8); 1 << PEEK];
    let mut sym = 0;
    // EOS (30 bits) never fits
    while sym < 256 {
        let (code, len) = CODES[sym];
        if len as u32 <= PEEK {
            let shift = PEEK - len as u32;
            let mut i = (code << shift) as usize;
            while i < ((code + 1) << shift) as usize {
                table[i] = (sym as u8, len);
                i += 1;
            }
        }
        sym += 1;
    }
    table
}

const fn steps() -> [Step; 1 << PEEK] {
    let first = first_symbols();
    let mut table = [Step {
        sym: [0, 0],
        count: 0,
        bits: 0,
    }; 1 << PEEK];
    let mut i = 0;
    while i < 1 << PEEK {
        let (a, a_len) = first[i];
        if a_len != 0 {
            // the bits after the first code, zeros shifted in below them
            let (b, b_len) = first[(i << a_len) & ((1 << PEEK) - 1)];
            table[i] = if b_len != 0 && (a_len + b_len) as u32 <= PEEK {
                Step {
                    sym: [a, b],
                    count: 2,
                    bits: a_len + b_len,
                }
            } else {
                Step {
                    sym: [a, 0],
                    count: 1,
                    bits: a_len,
                }
            };
        }
        i += 1;
    }
    table
}

const fn long_codes() -> [(u32, u16, u8); 257] {
    let mut table = [(0u32, 0u16, 0u8); 257];
    let mut sym = 0;
    while sym < 257 {
        let (code, len) = CODES[sym];
        table[sym] = (code << (32 - len as u32), sym as u16, len);
        sym += 1;
    }
    // insertion sort by code
    let mut i = 1;
    while i < 257 {
        let mut j = i;
        while j > 0 && table[j - 1].0 > table[j].0 {
            let t = table[j - 1];
            table[j - 1] = table[j];
            table[j] = t;
            j -= 1;
        }
        i += 1;
    }
    table
}

/// The symbol (EOS included) whose code `window` begins with, and that
/// code's length.
fn long_code(window: u32) -> (u16, u32) {
    // the first code is all zeros, so one is never above the window
    let i = LONG.partition_point(|c| c.0 <= window).saturating_sub(1);
    (LONG[i].1, u32::from(LONG[i].2))
}

/// Length in bytes of `s` Huffman-coded (padding included).
pub(crate) fn encoded_len(s: &[u8]) -> usize {
    let bits: usize = s
        .iter()
        .map(|b| usize::from(CODES[usize::from(*b)].1))
        .sum();
    bits.div_ceil(8)
}

/// Appends `s` Huffman-coded to `out`, padded with ones to a whole byte.
pub(crate) fn encode(s: &[u8], out: &mut Vec<u8>) {
    // bits waiting to be written, in the low `n` bits of `acc` (at most 31
    // between symbols, so a 30-bit code always fits)
    let mut acc: u64 = 0;
    let mut n: u32 = 0;
    for b in s {
        let (code, len) = CODES[usize::from(*b)];
        acc = acc << len | u64::from(code);
        n += u32::from(len);
        if n >= 32 {
            n -= 32;
            out.extend_from_slice(&((acc >> n) as u32).to_be_bytes());
        }
    }
    let pad = (8 - n % 8) % 8;
    acc = acc << pad | ((1 << pad) - 1);
    n += pad;
    while n > 0 {
        n -= 8;
        out.push((acc >> n) as u8);
    }
}

/// Decodes the Huffman-coded string `src`, appending its bytes to `out`
/// (at most `src.len() * 8 / 5` of them). Refuses a string that holds EOS,
/// or that ends with more than 7 bits of padding or with padding that is
/// not all ones (an incomplete code).
pub(crate) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    // room for the most symbols the string can hold (codes of 5 bits at
    // least), and one more byte: a step writes both its symbol slots
    let start = out.len();
    out.resize(start + src.len() * 8 / 5 + 1, 0);
    let buf = &mut out[start..];
    let mut o = 0;
    // the next bits, most significant first: `nbits` of them are the
    // string's; the bits below may hold the string's next bits or zeros
    let mut acc: u64 = 0;
    let mut nbits: u32 = 0;
    let mut pos = 0;
    let end = loop {
        // at least 30 bits, the longest code: every code read here is whole
        if nbits < 30 {
            refill(src, &mut pos, &mut acc, &mut nbits);
            if nbits < 30 {
                break tail(acc, nbits, buf, o);
            }
        }
        let step = STEPS[(acc >> (64 - PEEK)) as usize];
        if step.count != 0 {
            buf[o] = step.sym[0];
            buf[o + 1] = step.sym[1];
            o += usize::from(step.count);
            acc <<= step.bits;
            nbits -= u32::from(step.bits);
        } else {
            let (sym, len) = long_code((acc >> 32) as u32);
            if sym == EOS {
                break Err(HpackError::HuffmanEos);
            }
            buf[o] = sym as u8;
            o += 1;
            acc <<= len;
            nbits -= len;
        }
    };
    out.truncate(start + *end.as_ref().unwrap_or(&0));
    end.map(|_| ())
}

/// Decodes the last `nbits` bits of a string (fewer than 30) one symbol at a
/// time, into `buf` from `o` on; returns where the string's bytes end.
fn tail(mut acc: u64, mut nbits: u32, buf: &mut [u8], mut o: usize) -> Result<usize, HpackError> {
    while nbits > 0 {
        // past the string's end read ones, as padding would continue
        let window = acc | (u64::MAX >> nbits);
        let step = STEPS[(window >> (64 - PEEK)) as usize];
        let (sym, len) = if step.count != 0 {
            let sym = step.sym[0];
            (u16::from(sym), u32::from(CODES[usize::from(sym)].1))
        } else {
            long_code((window >> 32) as u32)
        };
        if len > nbits {
            // a code cut short: padding, valid if at most 7 bits of ones
            if nbits <= 7 && acc >> (64 - nbits) == (1 << nbits) - 1 {
                break;
            }
            return Err(HpackError::HuffmanPadding);
        }
        if sym == EOS {
            return Err(HpackError::HuffmanEos);
        }
        buf[o] = sym as u8;
        o += 1;
        acc <<= len;
        nbits -= len;
    }
    Ok(o)
}

/// Reads more of `src` into the accumulator: at least 56 bits of it while
/// that many remain, else all that remain.
fn refill(src: &[u8], pos: &mut usize, acc: &mut u64, nbits: &mut u32) {
    if let Some(Ok(word)) = src.get(*pos..*pos + 8).map(<[u8; 8]>::try_from) {
        // the whole word goes in; the bytes counted are those that fit
        // whole, the rest is read again (the same bits) by the next refill
        *acc |= u64::from_be_bytes(word) >> *nbits;
        let bytes = (63 - *nbits) / 8;
        *pos += bytes as usize;
        *nbits += bytes * 8;
    } else {
        while *nbits < 56 {
            let Some(b) = src.get(*pos) else { break };
            *acc |= u64::from(*b) << (56 - *nbits);
            *nbits += 8;
            *pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes of Appendix B as typed in [`CODES`] are a canonical
    /// Huffman code: sorted by length then symbol, each code is the one
    /// before plus one, shifted to its length. A typing error in a code or
    /// a length breaks that (or the tests of whole strings).
    #[test]
    fn the_code_table_is_canonical_and_complete() {
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (CODES[s].1, s));
        let mut next: u64 = 0;
        let mut len = CODES[order[0]].1;
        for &s in &order {
            let (code, l) = CODES[s];
            next <<= l - len;
            len = l;
            assert_eq!(u64::from(code), next, "code of symbol {s}");
            next += 1;
        }
        // every 30-bit string starts with exactly one code (Kraft sum 1)
        assert_eq!(next, 1 << 30);
        assert_eq!(len, 30);
        assert_eq!(CODES[256], (0x3fff_ffff, 30));
        assert!(
            CODES
                .iter()
                .all(|&(code, len)| (5..=30).contains(&len) && code < 1 << len)
        );
    }

    #[test]
    fn every_byte_decodes_alone_and_in_context() {
        for b in 0..=255u8 {
            for s in [vec![b], vec![b; 9], vec![b'a', b, b'/', b, b, b'~']] {
                let mut coded = Vec::new();
                encode(&s, &mut coded);
                assert_eq!(coded.len(), encoded_len(&s));
                let mut back = Vec::new();
                assert_eq!(decode(&coded, &mut back), Ok(()), "{s:?}");
                assert_eq!(back, s);
            }
        }
        let all: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut coded = Vec::new();
        encode(&all, &mut coded);
        let mut back = Vec::new();
        assert_eq!(decode(&coded, &mut back), Ok(()));
        assert_eq!(back, all);
    }

    #[test]
    fn rfc_strings() {
        // RFC 7541 C.4.1, C.4.2, C.6.1
        let cases: [(&[u8], &[u8]); 4] = [
            (
                b"www.example.com",
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
            ),
            (b"no-cache", &[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]),
            (b"302", &[0x64, 0x02]),
            (b"private", &[0xae, 0xc3, 0x77, 0x1a, 0x4b]),
        ];
        for (plain, coded) in cases {
            let mut out = Vec::new();
            encode(plain, &mut out);
            assert_eq!(out, coded);
            assert_eq!(encoded_len(plain), coded.len());
            out.clear();
            assert_eq!(decode(coded, &mut out), Ok(()));
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn padding_and_eos_are_checked() {
        let mut out = Vec::new();
        // 'a' is 00011: three bits of ones pad it
        assert_eq!(decode(&[0x1f], &mut out), Ok(()));
        assert_eq!(out, b"a");
        // padding of zeros, or partly zeros
        assert_eq!(decode(&[0x18], &mut out), Err(HpackError::HuffmanPadding));
        assert_eq!(decode(&[0x1b], &mut out), Err(HpackError::HuffmanPadding));
        // eight bits of ones, alone or after a symbol: padding too long
        assert_eq!(decode(&[0xff], &mut out), Err(HpackError::HuffmanPadding));
        assert_eq!(
            decode(&[0x1f, 0xff], &mut out),
            Err(HpackError::HuffmanPadding)
        );
        // a long code cut short by the end
        assert_eq!(
            decode(&[0xff, 0xfe], &mut out),
            Err(HpackError::HuffmanPadding)
        );
        // EOS (30 ones), alone, after a symbol, or before more
        assert_eq!(decode(&[0xff; 4], &mut out), Err(HpackError::HuffmanEos));
        let mut eos_after_a = Vec::new();
        encode(b"a", &mut eos_after_a); // 00011111
        eos_after_a.extend_from_slice(&[0xff, 0xff, 0xff, 0xe0 | 0x1f]);
        assert_eq!(decode(&eos_after_a, &mut out), Err(HpackError::HuffmanEos));
        let mut long = vec![0x1f; 20];
        long.extend_from_slice(&[0xff; 8]);
        assert_eq!(decode(&long, &mut out), Err(HpackError::HuffmanEos));
        // the empty string
        out.clear();
        assert_eq!(decode(&[], &mut out), Ok(()));
        assert!(out.is_empty());
    }
}
