//! A scanner that follows the framing of a chunked body (RFC 9112, 7.1)
//! while the body passes through verbatim, to find where it ends.
//!
//! The body reaches its receiver as it came, so the scanner must read it
//! exactly as any strict receiver would: every line ends with CRLF (a line
//! feed alone, or a carriage return alone, is refused wherever it appears),
//! a chunk size is hexadecimal digits only, extensions and trailer fields
//! hold only the bytes the grammar allows, and what is not data is bounded
//! (sizes of at most 16 digits, [`MAX_EXTENSIONS`] bytes of extensions and
//! [`MAX_TRAILERS`] bytes of trailer fields per body), so a sender cannot
//! pass unbounded bytes that no body limit counts.

/// Most bytes of chunk extensions (with the blanks before them) in one body.
pub const MAX_EXTENSIONS: u64 = 16 * 1024;
/// Most bytes of trailer fields in one body.
pub const MAX_TRAILERS: u64 = 64 * 1024;
/// Most hexadecimal digits of one chunk size (leading zeros included).
const MAX_SIZE_DIGITS: u8 = 16;

/// A chunked body that breaks its framing; says how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadChunk(pub &'static str);

/// Follows the framing of a chunked body: says how many bytes of what it is
/// fed belong to the body, and counts its data bytes.
#[derive(Debug, Default, Clone)]
pub struct ChunkScanner {
    state: State,
    /// Data bytes seen (the payload, without the framing).
    pub data: u64,
    /// The size being read.
    size: u64,
    size_digits: u8,
    /// Extension bytes seen in the whole body.
    extensions: u64,
    /// Trailer bytes seen.
    trailers: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The size's digits.
    #[default]
    Size,
    /// Blanks after the size, before `;` or the line's end.
    SizeBlank,
    /// Extensions, up to the line's end.
    Extension,
    /// The line feed of the size line.
    SizeLf,
    /// This many data bytes to go.
    Data(u64),
    /// The carriage return after a chunk's data.
    DataCr,
    /// The line feed after it.
    DataLf,
    /// A trailer field (or the final empty line) begins.
    TrailerStart,
    /// A trailer field's name.
    TrailerName,
    /// A trailer field's value.
    TrailerValue,
    /// The line feed of a trailer field.
    TrailerLf,
    /// The line feed of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// A byte of a field name (a token).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte a field value or an extension may hold: visible ASCII, blanks and
/// bytes above ASCII (RFC 9110's field-vchar, SP, HTAB, obs-text).
fn is_text(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

impl ChunkScanner {
    /// Whether the body is complete.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    fn extension_byte(&mut self) -> Result<(), BadChunk> {
        self.extensions += 1;
        if self.extensions > MAX_EXTENSIONS {
            return Err(BadChunk("more chunk extensions than a body may carry"));
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), BadChunk> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(BadChunk("trailer fields too large"));
        }
        Ok(())
    }

    /// Feeds `bytes`; returns how many of them belong to the body (all of
    /// them unless it ended inside), calling `data` with each run of payload
    /// bytes.
    pub fn feed(&mut self, bytes: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        if self.size_digits >= MAX_SIZE_DIGITS {
                            return Err(BadChunk("chunk size too large"));
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.size_digits += 1;
                    }
                    None if self.size_digits == 0 => return Err(BadChunk("no chunk size")),
                    None if b == b'\r' => self.state = State::SizeLf,
                    None if b == b';' => {
                        self.extension_byte()?;
                        self.state = State::Extension;
                    }
                    None if b == b' ' || b == b'\t' => {
                        self.extension_byte()?;
                        self.state = State::SizeBlank;
                    }
                    None if b == b'\n' => {
                        return Err(BadChunk("a chunk size line ends without carriage return"));
                    }
                    None => return Err(BadChunk("bad chunk size")),
                },
                State::SizeBlank => match b {
                    b' ' | b'\t' => self.extension_byte()?,
                    b';' => {
                        self.extension_byte()?;
                        self.state = State::Extension;
                    }
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(BadChunk("bad chunk size")),
                },
                State::Extension => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if is_text(b) {
                        self.extension_byte()?;
                    } else {
                        return Err(BadChunk("a control character in a chunk extension"));
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk(
                            "a carriage return without line feed in a chunk size line",
                        ));
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(self.size)
                    };
                    self.size = 0;
                    self.size_digits = 0;
                }
                State::Data(left) => {
                    let n = (bytes.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&bytes[i..i + n]);
                    self.data += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    i += n;
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk("chunk data longer than its size, or without CRLF"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunk data without line feed"));
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else if is_token(b) {
                        self.trailer_byte()?;
                        self.state = State::TrailerName;
                    } else {
                        return Err(BadChunk("a trailer line that is not a field"));
                    }
                }
                State::TrailerName => {
                    self.trailer_byte()?;
                    if b == b':' {
                        self.state = State::TrailerValue;
                    } else if !is_token(b) {
                        return Err(BadChunk("a trailer field with a bad name"));
                    }
                }
                State::TrailerValue => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if is_text(b) {
                        self.trailer_byte()?;
                    } else {
                        return Err(BadChunk(
                            "a control character or bare line feed in a trailer field",
                        ));
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk(
                            "a carriage return without line feed in a trailer field",
                        ));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(BadChunk("chunked body without final line feed"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `parts` one after another: the bytes taken, the payload, and
    /// whether the body ended.
    fn scan(parts: &[&[u8]]) -> (Result<usize, BadChunk>, Vec<u8>, bool) {
        let mut s = ChunkScanner::default();
        let mut payload = Vec::new();
        let mut total = 0;
        for p in parts {
            match s.feed(p, |d| payload.extend_from_slice(d)) {
                Ok(n) => {
                    total += n;
                    if s.done() {
                        break;
                    }
                }
                Err(e) => return (Err(e), payload, false),
            }
        }
        (Ok(total), payload, s.done())
    }

    /// Whether a whole body is refused, fed at once and byte by byte.
    fn refused(body: &[u8]) -> bool {
        let whole = scan(&[body]).0.is_err();
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let split = scan(&bytes).0.is_err();
        assert_eq!(whole, split, "{:?}", String::from_utf8_lossy(body));
        whole
    }

    #[test]
    fn chunked_bodies_are_followed_across_reads() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (used, payload, done) = scan(&[body]);
        assert_eq!(used, Ok(body.len() - "GET / HTTP/1.1\r\n".len()));
        assert_eq!(payload, b"hello world");
        assert!(done);
        // the same, one byte at a time
        let bytes: Vec<&[u8]> = body[..body.len() - 16].chunks(1).collect();
        let (_, payload, done) = scan(&bytes);
        assert_eq!(payload, b"hello world");
        assert!(done);
        // trailers, extensions with blanks and quoted strings, upper-case hex
        for good in [
            &b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B:\r\n\r\n"[..],
            b"3 ;a=\"b c\";d\r\nabc\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n0000\r\n\r\n",
            b"0000000000000003\r\nabc\r\n0\r\n\r\n",
        ] {
            let (used, _, done) = scan(&[good]);
            assert_eq!(used, Ok(good.len()), "{:?}", String::from_utf8_lossy(good));
            assert!(done);
            assert!(!refused(good));
        }
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        assert!(refused(b"zz\r\n"));
        assert!(refused(b"3\r\nabcd\r\n"));
        assert!(refused(b"fffffffffffffffff\r\n"));
        assert!(refused(b"00000000000000003\r\nabc\r\n0\r\n\r\n"));
        assert!(refused(b"3\nabc"));
        let (used, _, done) = scan(&[b"3\r\nab"]);
        assert_eq!(used, Ok(5));
        assert!(!done);
    }

    #[test]
    fn every_line_ends_with_crlf() {
        for bare in [
            // in the trailer section, where the first scanner let it pass
            &b"0\r\nX: y\n\r\n"[..],
            b"0\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            b"0\r\nX: y\r\n\n",
            b"0\r\n\r\r\n",
            b"0\r\nX: y\rZ\r\n\r\n",
            // size lines, extensions, after data
            b"3\nabc\r\n0\r\n\r\n",
            b"3;x\nabc\r\n0\r\n\r\n",
            b"3 \nabc\r\n0\r\n\r\n",
            b"3\rabc\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabc\r0\r\n\r\n",
            b"0\n\r\n",
            b"0\r\n\n",
        ] {
            assert!(refused(bare), "{:?}", String::from_utf8_lossy(bare));
        }
    }

    #[test]
    fn sizes_extensions_and_trailers_follow_the_grammar() {
        for bad in [
            // a size, blanks, and another number: which one is it?
            &b"3 5\r\nabc\r\n0\r\n\r\n"[..],
            b"+3\r\nabc\r\n0\r\n\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"\r\n",
            b"3;a\0b\r\nabc\r\n0\r\n\r\n",
            b"3;a\x7fb\r\nabc\r\n0\r\n\r\n",
            // trailers: folded lines, no name, blanks before the colon, controls
            b"0\r\nX: y\r\n z\r\n\r\n",
            b"0\r\n: y\r\n\r\n",
            b"0\r\nX : y\r\n\r\n",
            b"0\r\nX\r\n\r\n",
            b"0\r\nX: a\0b\r\n\r\n",
        ] {
            assert!(refused(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        // what is not data is bounded
        let mut long_extension = b"1;".to_vec();
        long_extension.extend(std::iter::repeat_n(b'x', MAX_EXTENSIONS as usize));
        long_extension.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(
            scan(&[&long_extension]).0,
            Err(BadChunk("more chunk extensions than a body may carry"))
        );
        let mut many_extensions = Vec::new();
        for _ in 0..2000 {
            many_extensions.extend_from_slice(b"1;abcdefghi\r\na\r\n");
        }
        assert!(scan(&[&many_extensions]).0.is_err());
        let mut long_trailers = b"0\r\n".to_vec();
        for _ in 0..5000 {
            long_trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        assert_eq!(
            scan(&[&long_trailers]).0,
            Err(BadChunk("trailer fields too large"))
        );
    }
}
