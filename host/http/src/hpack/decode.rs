//! The decoder: header blocks from a peer into fields (RFC 7541 section 3,
//! 6).

use super::table::{ENTRY_OVERHEAD, Entry, STATIC, Table};
use super::{HpackError, decode_int, huffman};

/// What decoding a block found beyond its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// The header list's size as RFC 9113 §6.5.2 counts it (name + value +
    /// 32 per field).
    pub list_size: usize,
    /// The list was larger than `max_list`: from the field that crossed it
    /// on, fields were decoded (the dynamic table stays in step with the
    /// encoder's) but not passed to the callback.
    pub oversized: bool,
}

/// Decodes the header blocks of one connection's peer, keeping the
/// dynamic table they build.
#[derive(Debug, Clone)]
pub struct Decoder {
    table: Table,
    /// The most a size update may set the table to.
    max_table_size: usize,
    /// Scratch for a Huffman-decoded name.
    name_buf: Vec<u8>,
    /// Scratch for a Huffman-decoded value.
    value_buf: Vec<u8>,
}

impl Decoder {
    /// A decoder whose dynamic table may grow to `max_table_size` bytes
    /// (the `SETTINGS_HEADER_TABLE_SIZE` this side advertised).
    ///
    /// The table starts at that size. A peer's encoder starts at
    /// [`DEFAULT_TABLE_SIZE`](super::DEFAULT_TABLE_SIZE) until it has seen
    /// this side's settings, so a size below that is only safe with peers
    /// that wait for them: a decoder table smaller than the encoder's
    /// evicts entries the encoder still refers to (and the block is refused
    /// with [`HpackError::BadIndex`]); a larger one is harmless.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            table: Table::new(max_table_size),
            max_table_size,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Decodes one whole header block (HEADERS plus any CONTINUATION
    /// fragments, joined), calling `field(name, value)` for each field in
    /// order. Any error is a connection error (COMPRESSION_ERROR) for the
    /// caller: the table is then out of step and the decoder must not be
    /// used again.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list: usize,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<Decoded, HpackError> {
        let Decoder {
            table,
            max_table_size,
            name_buf,
            value_buf,
        } = self;
        let mut list = List {
            max: max_list,
            done: Decoded {
                list_size: 0,
                oversized: false,
            },
        };
        let mut pos = 0;
        // whether a field was seen: size updates may only come before
        let mut started = false;
        while let Some(&first) = block.get(pos) {
            match first {
                // 6.1: indexed field
                0x80..=0xff => {
                    let (name, value) = lookup(table, decode_int(block, &mut pos, 7)?)?;
                    if list.count(name, value) {
                        field(name, value);
                    }
                }
                // 6.2.1: literal with incremental indexing
                0x40..=0x7f => {
                    let (name, value) = literal(block, &mut pos, 6, table, name_buf, value_buf)?;
                    if list.count(name, value) {
                        field(name, value);
                    }
                    // copied before the insertion evicts anything, the name
                    // included when it came from an entry that goes (4.4)
                    let entry = Entry::new(name, value);
                    table.insert(entry);
                }
                // 6.3: dynamic table size update
                0x20..=0x3f => {
                    if started {
                        return Err(HpackError::MisplacedSizeUpdate);
                    }
                    let size = decode_int(block, &mut pos, 5)?;
                    if size > *max_table_size {
                        return Err(HpackError::TableSizeTooLarge {
                            size,
                            max: *max_table_size,
                        });
                    }
                    table.set_max(size);
                    continue;
                }
                // 6.2.2, 6.2.3: literal without indexing, never indexed
                0x00..=0x1f => {
                    let (name, value) = literal(block, &mut pos, 4, table, name_buf, value_buf)?;
                    if list.count(name, value) {
                        field(name, value);
                    }
                }
            }
            started = true;
        }
        Ok(list.done)
    }

    /// The dynamic table, for the tests.
    #[cfg(test)]
    pub(super) fn table(&self) -> &Table {
        &self.table
    }

    /// The scratch buffers' capacities (name, value), for the tests.
    #[cfg(test)]
    pub(super) fn scratch_capacity(&self) -> (usize, usize) {
        (self.name_buf.capacity(), self.value_buf.capacity())
    }
}

/// The header list's size so far, against its limit.
struct List {
    max: usize,
    done: Decoded,
}

impl List {
    /// Counts a field: whether it is passed on (the list is still within
    /// its limit).
    fn count(&mut self, name: &[u8], value: &[u8]) -> bool {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.done.list_size = self.done.list_size.saturating_add(size);
        if self.done.list_size > self.max {
            self.done.oversized = true;
        }
        !self.done.oversized
    }
}

/// A literal field's name and value (6.2): the name by index (a `prefix`-bit
/// integer) or as a string after a zero index, then the value.
fn literal<'a>(
    block: &'a [u8],
    pos: &mut usize,
    prefix: u32,
    table: &'a Table,
    name_buf: &'a mut Vec<u8>,
    value_buf: &'a mut Vec<u8>,
) -> Result<(&'a [u8], &'a [u8]), HpackError> {
    let name = match decode_int(block, pos, prefix)? {
        0 => string(block, pos, name_buf)?,
        i => lookup(table, i)?.0,
    };
    Ok((name, string(block, pos, value_buf)?))
}

/// The field at index `i` of the static and dynamic tables (2.3.3).
fn lookup(table: &Table, i: usize) -> Result<(&[u8], &[u8]), HpackError> {
    match i {
        0 => Err(HpackError::BadIndex(0)),
        1..=61 => Ok(STATIC[i - 1]),
        _ => table
            .get(i - 62)
            .map(|e| (e.name(), e.value()))
            .ok_or(HpackError::BadIndex(i)),
    }
}

/// Reads a string literal (5.2) at `pos`, moving `pos` past it: a slice of
/// the block, or of `buf` when it is Huffman-coded.
fn string<'a>(
    block: &'a [u8],
    pos: &mut usize,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], HpackError> {
    let Some(&first) = block.get(*pos) else {
        return Err(HpackError::Truncated);
    };
    let len = decode_int(block, pos, 7)?;
    let Some(bytes) = block.get(*pos..).and_then(|rest| rest.get(..len)) else {
        return Err(HpackError::StringTooLong);
    };
    *pos += len;
    if first & 0x80 == 0 {
        return Ok(bytes);
    }
    buf.clear();
    huffman::decode(bytes, buf)?;
    Ok(buf)
}
