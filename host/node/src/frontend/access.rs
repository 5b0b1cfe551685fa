//! Access logs: one line per request in the gear's `access.log`,
//!
//! ```text
//! <time> <client> "<method> <target> <version>" <status> <bytes> <ms>ms "<user agent>"
//! ```
//!
//! built without the formatting machinery (this runs for every request),
//! buffered in memory and written out when the buffer fills and once a
//! second.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearhost_http::head::RequestHead;

use crate::logs::LogFile;
use crate::node::Node;
use gearhost_sys::lock::lock;

/// An access log buffer is written out when it grows past this.
const ACCESS_FLUSH: usize = 64 * 1024;

/// A gear's access log: one line per request, buffered in memory and
/// written out when the buffer fills and once a second. A gear another node
/// of the cluster holds has none here (that node keeps its log).
#[derive(Debug)]
pub struct AccessLog {
    buf: Mutex<Vec<u8>>,
    file: Option<LogFile>,
}

impl AccessLog {
    /// The access log in `path`, rotated at `max_bytes`, keeping `keep` old files.
    pub(super) fn new(path: std::path::PathBuf, max_bytes: u64, keep: usize) -> AccessLog {
        AccessLog {
            buf: Mutex::new(Vec::new()),
            file: Some(LogFile::new(path, max_bytes, keep)),
        }
    }

    /// No access log: lines are dropped.
    pub(super) fn none() -> AccessLog {
        AccessLog {
            buf: Mutex::new(Vec::new()),
            file: None,
        }
    }

    /// Buffer one line (without its newline).
    pub(super) fn record(&self, line: &str) {
        let Some(file) = &self.file else {
            return;
        };
        let full = {
            let mut buf = lock(&self.buf);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            (buf.len() >= ACCESS_FLUSH).then(|| std::mem::take(&mut *buf))
        };
        if let Some(bytes) = full {
            file.write_lines(&bytes);
        }
    }

    /// Write out what is buffered.
    pub fn flush(&self) {
        let bytes = std::mem::take(&mut *lock(&self.buf));
        if let Some(file) = &self.file
            && !bytes.is_empty()
        {
            file.write_lines(&bytes);
        }
    }

    /// The log file's path (empty for none).
    pub fn path(&self) -> std::path::PathBuf {
        self.file.as_ref().map(LogFile::path).unwrap_or_default()
    }

    /// Close the log file (see [`LogFile::close`]).
    pub fn close(&self) {
        if let Some(file) = &self.file {
            file.close();
        }
    }
}

/// Write out every gear's buffered access log lines once a second.
pub async fn flush_access_logs(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for g in node.gears_snapshot() {
            g.front.access.flush();
        }
    }
}

/// The part of a request's line known when it arrives, from the client's
/// bytes: `<client> "<method> <target> <version>"` and then
/// ` "<user agent>"`, which starts at the returned offset (the status, size
/// and time go between the two when the request ends).
pub(super) fn request_part(
    line: &mut String,
    client: &str,
    data: &[u8],
    head: &RequestHead,
    user_agent: Option<std::ops::Range<usize>>,
    http2: bool,
) -> usize {
    line.push_str(client);
    line.push_str(" \"");
    push_escaped(line, &data[head.method.clone()]);
    line.push(' ');
    push_escaped(line, &data[head.target.clone()]);
    line.push_str(if http2 {
        " HTTP/2.0\""
    } else if head.minor == 0 {
        " HTTP/1.0\""
    } else {
        " HTTP/1.1\""
    });
    let split = line.len();
    line.push_str(" \"");
    match user_agent {
        Some(r) => push_escaped(line, &data[r]),
        None => line.push('-'),
    }
    line.push('"');
    split
}

thread_local! {
    /// The access log line being written (one buffer per thread).
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    /// The current second, formatted, and which second it is.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// Write a request's whole line to `log`: `part` is what [`request_part`]
/// made (the user agent starting at `split`), followed by the status, the
/// body bytes sent and the time taken.
pub(super) fn record(
    log: &AccessLog,
    part: &str,
    split: usize,
    status: u16,
    bytes: u64,
    took: Duration,
) {
    let micros = took.as_micros();
    let (request, agent) = part.split_at(split.min(part.len()));
    LINE.with_borrow_mut(|line| {
        line.clear();
        stamp(line);
        line.push(' ');
        line.push_str(request);
        line.push(' ');
        push_number(line, u64::from(status));
        line.push(' ');
        push_number(line, bytes);
        line.push(' ');
        push_number(line, (micros / 1000) as u64);
        line.push('.');
        push_number(line, (micros % 1000 / 100) as u64);
        line.push_str("ms");
        line.push_str(agent);
        log.record(line);
    });
}

/// Append `bytes` for the access log: as they are when they are printable
/// ASCII without quotes or backslashes (nearly always), escaped otherwise.
fn push_escaped(line: &mut String, bytes: &[u8]) {
    if bytes
        .iter()
        .all(|b| (0x20..0x7f).contains(b) && *b != b'"' && *b != b'\\')
    {
        // printable ASCII is UTF-8
        line.push_str(std::str::from_utf8(bytes).unwrap_or_default());
    } else {
        line.extend(String::from_utf8_lossy(bytes).escape_debug());
    }
}

/// Append a number in decimal, without the formatting machinery.
fn push_number(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

/// Append the time now as `logs::timestamp` writes it, formatting the date
/// and time once a second per thread.
fn stamp(out: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.as_secs() || text.is_empty() {
            let full = crate::logs::timestamp();
            *text = full.split('.').next().unwrap_or(&full).to_string();
            *second = now.as_secs();
        }
        out.push_str(text);
    });
    let ms = now.subsec_millis();
    out.push('.');
    if ms < 100 {
        out.push('0');
    }
    if ms < 10 {
        out.push('0');
    }
    push_number(out, u64::from(ms));
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_pieces_are_written_plainly_or_escaped() {
        let mut line = String::new();
        push_escaped(&mut line, b"/a?b=1");
        push_escaped(&mut line, b" \"q\"");
        push_escaped(&mut line, b"\xff");
        assert_eq!(line, "/a?b=1 \\\"q\\\"\u{fffd}");
        let mut n = String::new();
        for v in [0, 7, 10, 12345, u64::MAX] {
            push_number(&mut n, v);
            n.push(',');
        }
        assert_eq!(n, format!("0,7,10,12345,{},", u64::MAX));
    }

    #[test]
    fn a_line_has_time_request_status_size_duration_and_agent() {
        let dir = tempfile::tempdir().expect("test value");
        let log = AccessLog::new(dir.path().join("access.log"), 1 << 20, 1);
        let text = b"GET /p?q=\"1\" HTTP/1.0\r\nHost: a\r\nUser-Agent: t/1\r\n\r\n";
        let mut head = RequestHead::default();
        assert_eq!(
            gearhost_http::head::parse_request(text, &mut head),
            Ok(true)
        );
        let ua = gearhost_http::fields::facts(text, &head.headers).user_agent;
        let mut part = String::new();
        let split = request_part(&mut part, "192.0.2.7", text, &head, ua, false);
        record(&log, &part, split, 201, 12, Duration::from_micros(3_456));
        // nothing reaches the file until a flush
        assert!(
            std::fs::read_to_string(log.path())
                .unwrap_or_default()
                .is_empty()
        );
        log.flush();
        let written = std::fs::read_to_string(log.path()).expect("test value");
        let line = written.strip_suffix('\n').expect("test value");
        let (time, rest) = line.split_once(' ').expect("test value");
        assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
        assert!(time.ends_with('Z') && time.contains('T'), "{time}");
        assert_eq!(
            rest,
            r#"192.0.2.7 "GET /p?q=\"1\" HTTP/1.0" 201 12 3.4ms "t/1""#
        );
    }
}
