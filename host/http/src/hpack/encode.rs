//! The encoder: response heads into header blocks (RFC 7541 section 6).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::table::{ENTRY_OVERHEAD, Entry, Table, static_exact, static_name};
use super::{DEFAULT_TABLE_SIZE, encode_int, huffman};

/// Encodes the header blocks this side sends on one connection, keeping
/// the dynamic table the peer's decoder builds from them.
#[derive(Debug, Clone)]
pub struct Encoder {
    table: Table,
    /// Where the table's fields and names are.
    index: Index,
    /// The table size the peer allows, capped at [`DEFAULT_TABLE_SIZE`]:
    /// what the table is set to at the start of the next block.
    size: usize,
    /// The smallest size since the last block (signalled first, 4.2).
    low: usize,
    /// Whether `size` changed since the last block (a size update is due).
    pending: bool,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder::new()
    }
}

impl Encoder {
    /// An encoder for a peer whose table is [`DEFAULT_TABLE_SIZE`].
    pub fn new() -> Encoder {
        Encoder {
            table: Table::new(DEFAULT_TABLE_SIZE),
            index: Index::default(),
            size: DEFAULT_TABLE_SIZE,
            low: DEFAULT_TABLE_SIZE,
            pending: false,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the encoder uses
    /// min(size, DEFAULT_TABLE_SIZE), and when that changes it emits a
    /// dynamic table size update at the start of the next block (RFC 7541
    /// §4.2, §6.3). Call it between blocks; when the size goes down and up
    /// again before a block, the block signals the smallest first.
    pub fn set_max_table_size(&mut self, size: usize) {
        let size = size.min(DEFAULT_TABLE_SIZE);
        if self.pending {
            self.low = self.low.min(size);
        } else if size != self.table.max() {
            self.low = size;
            self.pending = true;
        }
        self.size = size;
    }

    /// Starts a block without `:status` (trailers): emits a pending size
    /// update. [`status`](Encoder::status) does this itself.
    pub fn begin(&mut self, out: &mut Vec<u8>) {
        if !self.pending {
            return;
        }
        if self.low < self.size {
            encode_int(out, 0x20, 5, self.low);
            self.table.set_max(self.low);
            self.index.evicted(self.table.len());
        }
        encode_int(out, 0x20, 5, self.size);
        self.table.set_max(self.size);
        self.index.evicted(self.table.len());
        self.low = self.size;
        self.pending = false;
    }

    /// Starts a block with `:status` (every response block starts with it,
    /// informational ones too): emits a pending size update first. Codes
    /// 200, 204, 206, 304, 400, 404, 500 are the static table's indexed
    /// entries; others a literal with the static name index (indexed, so
    /// that the next answer with that code is one byte).
    pub fn status(&mut self, status: u16, out: &mut Vec<u8>) {
        self.begin(out);
        let index = match status {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index != 0 {
            out.push(0x80 | index);
            return;
        }
        let mut digits = [0u8; 5];
        let mut start = digits.len();
        let mut rest = status;
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.field(b":status", &digits[start..], out);
    }

    /// Appends one regular field (`name` already lowercase, checked by the
    /// caller).
    ///
    /// The field is an index when a table holds it whole; credentials are
    /// never indexed; a field of at most a quarter of the table is inserted
    /// in it; the name is an index when a table holds it, the static
    /// table's first.
    pub fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let named = static_name(name);
        if matches!(
            name,
            b"set-cookie" | b"cookie" | b"authorization" | b"proxy-authorization"
        ) {
            // all four are in the static table
            literal(out, 0x10, 4, named, name, value);
            return;
        }
        if let Some(i) = named.and_then(|first| static_exact(first, name, value)) {
            encode_int(out, 0x80, 7, i);
            return;
        }
        let named = match self.index.find(&self.table, name, value) {
            Found::Field(i) => {
                encode_int(out, 0x80, 7, 62 + i);
                return;
            }
            Found::Name(i) => named.or(Some(62 + i)),
            Found::Nothing => named,
        };
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size <= self.table.max() / 4 {
            literal(out, 0x40, 6, named, name, value);
            self.table.insert(Entry::new(name, value));
            self.index.evicted(self.table.len() - 1);
            self.index.inserted(name, value);
        } else {
            literal(out, 0x00, 4, named, name, value);
        }
    }

    /// The dynamic table, for the tests.
    #[cfg(test)]
    pub(super) fn table(&self) -> &Table {
        &self.table
    }

    /// Checks that the index finds every entry of the table where it is,
    /// through the hashes as well as by comparing, for the tests.
    #[cfg(test)]
    pub(super) fn check_index(&self) {
        assert_eq!(self.index.entries.len(), self.table.len());
        for (p, e) in self.table.entries().enumerate() {
            let newest = self.table.entries().position(|x| x == e);
            assert_eq!(newest, Some(p), "fields in the table are unique");
            let found = self.index.find(&self.table, e.name(), e.value());
            assert_eq!(found, Found::Field(p));
            let hashes = Hashes::of(e.name(), e.value());
            let at = |map: &Map, key| map.get(&key).and_then(|s| self.index.position(*s));
            assert_eq!(at(&self.index.fields, hashes.field), Some(p));
            let named = self.table.entries().position(|x| x.name() == e.name());
            assert_eq!(at(&self.index.names, hashes.name), named);
        }
        assert!(self.index.fields.len() <= self.table.len());
        assert!(self.index.names.len() <= self.table.len());
    }
}

/// Appends a literal field: the first byte's `flags` and an `n`-bit prefix
/// holding the name's index, or 0 and the name as a string; then the value.
fn literal(out: &mut Vec<u8>, flags: u8, n: u32, index: Option<usize>, name: &[u8], value: &[u8]) {
    match index {
        Some(i) => encode_int(out, flags, n, i),
        None => {
            out.push(flags);
            string(out, name);
        }
    }
    string(out, value);
}

/// Appends a string literal, Huffman-coded when that is shorter.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    let coded = huffman::encoded_len(s);
    if coded < s.len() {
        encode_int(out, 0x80, 7, coded);
        huffman::encode(s, out);
    } else {
        encode_int(out, 0x00, 7, s.len());
        out.extend_from_slice(s);
    }
}

/// The hashes of a field and of its name.
#[derive(Debug, Clone, Copy)]
struct Hashes {
    field: u64,
    name: u64,
}

impl Hashes {
    fn of(name: &[u8], value: &[u8]) -> Hashes {
        let name = hash(0, name);
        Hashes {
            field: hash(name, value),
            name,
        }
    }
}

/// A hash of `bytes` (8 at a time) continuing `seed`; not meant to resist
/// chosen collisions, which cost only a missed match: the maps it keys
/// hold at most two keys per table entry.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut h = seed;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = mix(h, u64::from_le_bytes(w));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = mix(h, u64::from_le_bytes(last) ^ (bytes.len() as u64) << 59);
    // the maps index their buckets by the low bits: fold the high ones in
    h ^ h >> 32
}

/// A [`Hasher`] for keys that are hashes already.
#[derive(Debug, Default)]
struct Unmixed(u64);

impl Hasher for Unmixed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash(self.0, bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, u64, BuildHasherDefault<Unmixed>>;

/// Most entries a table may hold for [`Index::find`] to compare them all
/// rather than hash: below that, comparing lengths is cheaper.
const SCAN: usize = 12;

/// Where the dynamic table holds a field or a name, so that finding one
/// costs two hash lookups however full the table is. Entries are known by
/// the number of their insertion (`serial`), which does not change as
/// newer ones push them down the table: the one at position `p` is
/// `next - 1 - p`.
#[derive(Debug, Default, Clone)]
struct Index {
    /// The newest entry with each field's hash.
    fields: Map,
    /// The newest entry with each name's hash.
    names: Map,
    /// The hashes of the table's entries, newest first.
    entries: VecDeque<Hashes>,
    /// The serial of the next entry.
    next: u64,
}

/// What [`Index::find`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// The position of an entry with the name and the value.
    Field(usize),
    /// The position of an entry with the name only.
    Name(usize),
    /// Nothing.
    Nothing,
}

impl Index {
    /// The table position of the entry `serial`, if it is still there.
    fn position(&self, serial: u64) -> Option<usize> {
        let p = usize::try_from(self.next - 1 - serial).ok()?;
        (p < self.entries.len()).then_some(p)
    }

    /// The newest entry of `table` holding (`name`, `value`), else the
    /// newest with `name`: in a small table by comparing lengths then
    /// bytes, in a larger one through the hashes (which only point: the
    /// bytes decide).
    fn find(&self, table: &Table, name: &[u8], value: &[u8]) -> Found {
        if table.len() <= SCAN {
            let mut found = Found::Nothing;
            for (p, e) in table.entries().enumerate() {
                if e.name_len() != name.len() || e.name() != name {
                    continue;
                }
                if e.value() == value {
                    return Found::Field(p);
                }
                if found == Found::Nothing {
                    found = Found::Name(p);
                }
            }
            return found;
        }
        let hashes = Hashes::of(name, value);
        let at = |map: &Map, key| {
            let p = self.position(*map.get(&key)?)?;
            table.get(p).map(|e| (p, e))
        };
        if let Some((p, e)) = at(&self.fields, hashes.field)
            && e.name() == name
            && e.value() == value
        {
            return Found::Field(p);
        }
        match at(&self.names, hashes.name) {
            Some((p, e)) if e.name() == name => Found::Name(p),
            _ => Found::Nothing,
        }
    }

    /// Forgets the entries past the first `kept` (the table evicted them).
    fn evicted(&mut self, kept: usize) {
        while self.entries.len() > kept {
            let serial = self.next - self.entries.len() as u64;
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            if self.fields.get(&old.field) == Some(&serial) {
                self.fields.remove(&old.field);
            }
            if self.names.get(&old.name) == Some(&serial) {
                self.names.remove(&old.name);
            }
        }
    }

    /// Records the entry just added to the table.
    fn inserted(&mut self, name: &[u8], value: &[u8]) {
        let hashes = Hashes::of(name, value);
        self.fields.insert(hashes.field, self.next);
        self.names.insert(hashes.name, self.next);
        self.entries.push_front(hashes);
        self.next += 1;
    }
}
