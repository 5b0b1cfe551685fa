//! The static table (RFC 7541 Appendix A) and the dynamic table (2.3.2,
//! section 4), which the decoder and the encoder share.

use std::collections::VecDeque;

/// Bytes an entry takes in a table beyond its name and value (4.1).
pub(crate) const ENTRY_OVERHEAD: usize = 32;

/// The static table: index `i` (1 to 61) is `STATIC[i - 1]`.
pub(crate) const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Past the longest name in the static table.
const NAME_LENGTHS: usize = 28;

/// Positions in [`STATIC`] ordered by name length (and by position within
/// a length), and where each length's run begins in that order: a name is
/// compared only with the few of its length.
static BY_LENGTH: ([u8; 61], [u8; NAME_LENGTHS + 1]) = by_length();

const fn by_length() -> ([u8; 61], [u8; NAME_LENGTHS + 1]) {
    let mut order = [0u8; 61];
    let mut start = [0u8; NAME_LENGTHS + 1];
    let mut k = 0;
    let mut len = 0;
    while len < NAME_LENGTHS {
        start[len] = k as u8;
        let mut i = 0;
        while i < STATIC.len() {
            if STATIC[i].0.len() == len {
                order[k] = i as u8;
                k += 1;
            }
            i += 1;
        }
        len += 1;
    }
    start[NAME_LENGTHS] = k as u8;
    // every name was placed: none is NAME_LENGTHS long or longer
    assert!(k == STATIC.len());
    (order, start)
}

/// The first index (1 to 61) of the static table with this name.
pub(crate) fn static_name(name: &[u8]) -> Option<usize> {
    let (order, start) = &BY_LENGTH;
    let len = name.len();
    if len >= NAME_LENGTHS {
        return None;
    }
    let run = &order[usize::from(start[len])..usize::from(start[len + 1])];
    run.iter()
        .map(|i| usize::from(*i))
        .find(|i| STATIC[*i].0 == name)
        .map(|i| i + 1)
}

/// The index of the static table holding exactly (`name`, `value`), given
/// `first`, the first index with that name (entries with one name are
/// adjacent).
pub(crate) fn static_exact(first: usize, name: &[u8], value: &[u8]) -> Option<usize> {
    STATIC[first - 1..]
        .iter()
        .take_while(|(n, _)| *n == name)
        .position(|(_, v)| *v == value)
        .map(|i| first + i)
}

/// One entry of a dynamic table: its name and value in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    data: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    /// An entry holding copies of `name` and `value`.
    pub(crate) fn new(name: &[u8], value: &[u8]) -> Entry {
        let mut data = Vec::with_capacity(name.len() + value.len());
        data.extend_from_slice(name);
        data.extend_from_slice(value);
        Entry {
            data: data.into_boxed_slice(),
            name_len: name.len(),
        }
    }

    /// The field's name.
    pub(crate) fn name(&self) -> &[u8] {
        &self.data[..self.name_len]
    }

    /// The length of the field's name.
    pub(crate) fn name_len(&self) -> usize {
        self.name_len
    }

    /// The field's value.
    pub(crate) fn value(&self) -> &[u8] {
        &self.data[self.name_len..]
    }

    /// The size the entry counts for in its table (4.1).
    pub(crate) fn size(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// A dynamic table: entries newest first, evicted oldest first (4.4).
#[derive(Debug, Clone)]
pub(crate) struct Table {
    entries: VecDeque<Entry>,
    /// The entries' sizes added up.
    size: usize,
    /// The table's maximum size (the latest size update).
    max: usize,
}

impl Table {
    /// An empty table of at most `max` bytes.
    pub(crate) fn new(max: usize) -> Table {
        Table {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    /// The maximum size.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// The entries' sizes added up.
    #[cfg(test)]
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The entry at position `i` (0 is the newest, index 62 of the
    /// combined index space).
    pub(crate) fn get(&self, i: usize) -> Option<&Entry> {
        self.entries.get(i)
    }

    /// The entries, newest first.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Changes the maximum size, evicting entries until the table fits it.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
        self.evict(0);
    }

    /// Evicts the oldest entries until `room` more bytes fit (`room` at
    /// most the maximum).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some(old) = self.entries.pop_back() else {
                break;
            };
            self.size -= old.size();
        }
    }

    /// Adds `entry` as the newest, evicting what it needs room for; an
    /// entry larger than the table empties it and is not added.
    pub(crate) fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// How many entries the table holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_lookups() {
        for (i, (name, value)) in STATIC.iter().enumerate() {
            let first = static_name(name).expect("a static name");
            assert_eq!(STATIC[first - 1].0, *name);
            assert!(first <= i + 1);
            assert!(STATIC[..first - 1].iter().all(|(n, _)| n != name));
            assert_eq!(static_exact(first, name, value), Some(i + 1));
        }
        assert_eq!(static_name(b":status"), Some(8));
        assert_eq!(static_exact(8, b":status", b"404"), Some(13));
        assert_eq!(static_exact(8, b":status", b"302"), None);
        assert_eq!(static_name(b"x-custom"), None);
        assert_eq!(static_name(b"Content-Type"), None);
        assert_eq!(static_name(b""), None);
        assert_eq!(static_name(&[b'a'; 40]), None);
        assert_eq!(static_name(b"set-cookie"), Some(55));
    }

    #[test]
    fn eviction_by_size() {
        let mut t = Table::new(100);
        t.insert(Entry::new(b"a", b"bc")); // 35
        t.insert(Entry::new(b"d", b"ef")); // 35
        assert_eq!((t.size(), t.len()), (70, 2));
        // 70 + 40 > 100: the oldest goes
        t.insert(Entry::new(b"gh", b"ijklmn"));
        assert_eq!(t.size(), 75);
        assert_eq!(t.get(0).map(Entry::name), Some(&b"gh"[..]));
        assert_eq!(t.get(1).map(Entry::value), Some(&b"ef"[..]));
        assert!(t.get(2).is_none());
        t.set_max(45);
        assert_eq!((t.size(), t.len()), (40, 1));
        // larger than the table: empties it
        t.insert(Entry::new(b"long", b"value value"));
        assert_eq!((t.size(), t.len()), (0, 0));
        t.insert(Entry::new(b"fits", b"exactly!!")); // 45
        assert_eq!((t.size(), t.len()), (45, 1));
        t.set_max(0);
        assert_eq!((t.size(), t.len()), (0, 0));
    }
}
