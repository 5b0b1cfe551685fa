//! HPACK (RFC 7541): the header compression of HTTP/2.
//!
//! A header block is a sequence of field representations: an index into
//! the static table (61 common fields, Appendix A) or the dynamic table
//! (fields the peer chose to keep, newest first), or a literal name and
//! value, either of them Huffman-coded. Both ends keep a copy of the
//! dynamic table and must change it identically, so a block that cannot be
//! decoded leaves the connection unusable: every [`HpackError`] is a
//! connection error (`COMPRESSION_ERROR`) for the caller.
//!
//! The [`Decoder`] reads blocks a client on the internet controls:
//!
//! - Fields are passed to a callback as slices of the block (raw strings),
//!   of the static or dynamic table (indexed names and fields), or of two
//!   scratch buffers the decoder keeps for Huffman-decoded names and values:
//!   nothing is allocated per field once those buffers have grown, except
//!   the copy a field inserted in the dynamic table needs.
//! - Every length and index is checked against what it refers to: an
//!   integer over 32 bits (or written with more than five continuation
//!   bytes), an index of 0 or past the tables, a string longer than the
//!   rest of the block, a dynamic table size update above the size this
//!   side allows or after a block's first field, and Huffman codes holding
//!   EOS or badly padded are refused.
//! - Memory is bounded: the dynamic table by its maximum size (its entries
//!   count for their name and value plus 32 bytes), the scratch buffers by
//!   the longest string seen (at most 8/5 of its coded length). A block can
//!   reference a large entry many times at a byte each; the header list's
//!   size, as HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE` counts it, is
//!   returned, and past the caller's limit fields are decoded (the table
//!   must stay in step) but no longer passed on ([`Decoded::oversized`]).
//! - Huffman codes are decoded 12 bits at a time through a table computed
//!   at compile time from the RFC's code table: one step yields the one or
//!   two symbols those bits begin with (see `huffman.rs`).
//!
//! The [`Encoder`] writes the heads of responses, speed first, compression
//! second: a field found whole in the static or dynamic table is one index;
//! otherwise its name is an index where a table has it, and the field is
//! inserted in the dynamic table when it takes at most a quarter of it.
//! Static names are found among the few of the same length; the dynamic
//! table is searched by comparing lengths while it holds a dozen entries
//! or fewer, and through a hash index of its fields and names beyond.
//! Credentials (`set-cookie`, `cookie`, `authorization`,
//! `proxy-authorization`) are never indexed, so that no intermediary ever
//! compresses them (7.1.3). A string is Huffman-coded when that is shorter,
//! its coded length computed before anything is written. The encoder's
//! dynamic table is at most [`DEFAULT_TABLE_SIZE`] bytes, whatever the peer
//! allows: more would cost memory on every connection for little gain.
//!
//! ```
//! use gearhost_http::hpack::{Decoder, Encoder};
//!
//! let mut encoder = Encoder::new();
//! let mut block = Vec::new();
//! encoder.status(200, &mut block);
//! encoder.field(b"content-type", b"text/html", &mut block);
//!
//! let mut decoder = Decoder::new(4096);
//! let mut fields = Vec::new();
//! let decoded = decoder
//!     .decode(&block, 16 * 1024, |name, value| fields.push((name.to_vec(), value.to_vec())))
//!     .expect("a valid block");
//! assert_eq!(fields[0], (b":status".to_vec(), b"200".to_vec()));
//! assert_eq!(fields[1], (b"content-type".to_vec(), b"text/html".to_vec()));
//! assert_eq!(decoded.list_size, 7 + 3 + 32 + 12 + 9 + 32);
//! ```

mod decode;
mod encode;
mod huffman;
mod table;
#[cfg(test)]
mod tests;

pub use decode::{Decoded, Decoder};
pub use encode::Encoder;

/// The dynamic table's size until a peer's `SETTINGS_HEADER_TABLE_SIZE`
/// says otherwise (RFC 9113 6.5.2), and the most the [`Encoder`] uses.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Most continuation bytes of an integer: five carry 35 bits, more than
/// any value up to `u32::MAX` needs.
const MAX_CONTINUATION: u32 = 5;

/// Why a header block cannot be decoded. Any of them leaves the decoder's
/// dynamic table out of step with the peer's: a connection error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field's representation.
    #[error("the header block ends inside a field")]
    Truncated,
    /// An integer does not fit in 32 bits, or is written with more than
    /// five continuation bytes.
    #[error("an integer in the header block is too large")]
    IntegerOverflow,
    /// An index of 0, or past the end of the static and dynamic tables.
    #[error("index {0} is in neither the static nor the dynamic table")]
    BadIndex(usize),
    /// A string literal's length runs past the end of the block.
    #[error("a string literal is longer than the rest of the header block")]
    StringTooLong,
    /// A Huffman-coded string holds the end-of-string symbol.
    #[error("a Huffman-coded string holds the end-of-string symbol")]
    HuffmanEos,
    /// A Huffman-coded string ends with more than 7 bits of padding, or
    /// with padding that is not all ones (an incomplete code).
    #[error("a Huffman-coded string ends with bad padding")]
    HuffmanPadding,
    /// A dynamic table size update above the maximum this side allows.
    #[error("a dynamic table size update to {size} bytes exceeds the {max} allowed")]
    TableSizeTooLarge {
        /// The size asked for.
        size: usize,
        /// The most allowed ([`Decoder::new`]).
        max: usize,
    },
    /// A dynamic table size update after the block's first field.
    #[error("a dynamic table size update after the start of the header block")]
    MisplacedSizeUpdate,
}

/// Reads an integer with an `n`-bit prefix (5.1) at `block[*pos]` (which
/// must exist), moving `pos` past it.
fn decode_int(block: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    let max = ((1u16 << n) - 1) as u8;
    let first = block[*pos] & max;
    *pos += 1;
    if first < max {
        return Ok(usize::from(first));
    }
    let mut value = u64::from(max);
    for i in 0..MAX_CONTINUATION {
        let Some(b) = block.get(*pos) else {
            return Err(HpackError::Truncated);
        };
        *pos += 1;
        value += u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(value)
                .ok()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or(HpackError::IntegerOverflow);
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// Appends `value` as an integer with an `n`-bit prefix, the bits above
/// the prefix in the first byte set to `flags`.
fn encode_int(out: &mut Vec<u8>, flags: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}
