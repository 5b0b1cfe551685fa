//! The chunk scanner on arbitrary bodies, fed whole, one byte at a time and
//! in pieces cut where the input's first bytes say: however a body arrives
//! from the network, the scanner must read it the same way (where it ends,
//! its payload, whether it is refused), and never take more than it is given.

#![no_main]

use gearhost_http::ChunkScanner;
use libfuzzer_sys::fuzz_target;

/// Feeds `pieces` in turn: the bytes taken, the payload, whether the body
/// ended, and whether it was refused.
fn scan<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (usize, Vec<u8>, bool, bool) {
    let mut s = ChunkScanner::default();
    let mut payload = Vec::new();
    let mut used = 0;
    for piece in pieces {
        match s.feed(piece, |d| payload.extend_from_slice(d)) {
            Ok(n) => {
                assert!(n <= piece.len());
                used += n;
                if s.done() {
                    // a finished body takes nothing more
                    assert_eq!(s.feed(b"0\r\n\r\n", |_| {}), Ok(0));
                    break;
                }
                assert_eq!(n, piece.len(), "an unfinished body takes all it is fed");
            }
            Err(_) => return (used, payload, false, true),
        }
    }
    assert_eq!(s.data as usize, payload.len());
    (used, payload, s.done(), false)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, body)) = input.split_first() else {
        return;
    };
    let whole = scan(std::iter::once(body));
    let bytes = scan(body.chunks(1));
    let step = usize::from(cut).max(1);
    let pieces = scan(body.chunks(step));
    if whole.3 {
        assert!(bytes.3 && pieces.3, "refused whole but not in pieces");
    } else {
        assert_eq!(whole, bytes, "read differently one byte at a time");
        assert_eq!(whole, pieces, "read differently in pieces of {step}");
        assert!(whole.1.len() <= whole.0);
    }
});
