//! Gear logs: timestamped lines appended to `app.log` (process output) or
//! `hooks.log` (hook logs), rotated by size (`app.log.1` ... `.N`), and read
//! back by `gear logs`.
//!
//! Everything in a gear's log came from the gear, so it is read and written
//! within bounds: a line is at most [`MAX_LINE`] bytes (a longer one is cut
//! and the cut marked), control characters are written as visible escapes
//! (an operator's terminal never receives a gear's escape sequences), and a
//! process's output is taken at most at [`OUTPUT_RATE`] bytes a second
//! beyond a burst, so a gear that writes without pause waits on its own full
//! pipe instead of making the node copy for it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest log line kept, in bytes of text; the rest of a longer line is
/// dropped and the cut says how much.
pub const MAX_LINE: usize = 16 * 1024;

/// How fast one output stream of a gear process is read once its burst
/// ([`OUTPUT_BURST`]) is spent, in bytes a second.
pub const OUTPUT_RATE: u64 = 4 << 20;

/// How much one output stream may write at once before [`OUTPUT_RATE`] applies.
pub const OUTPUT_BURST: u64 = 16 << 20;

/// The most `gear logs` reads of a log file for one answer.
const READ_WINDOW: u64 = 4 << 20;

/// One rotating log file, shared by everything that writes to it.
#[derive(Debug, Clone)]
pub struct LogFile {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// Writes that failed since the last one that did not (a gear whose
    /// disk quota is full cannot have its log written either).
    dropped: u64,
    /// Where each line also goes while an operation's caller watches the
    /// log (its progress), see [`LogFile::watch`].
    tee: Option<crate::node::Progress>,
}

/// A caller watching a log's lines; they stop going to it when this drops.
#[derive(Debug)]
pub struct LogWatch {
    log: LogFile,
}

impl Drop for LogWatch {
    fn drop(&mut self) {
        gearhost_sys::lock::lock(&self.log.inner).tee = None;
    }
}

/// An RFC 3339 UTC timestamp with milliseconds.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let millis = now.subsec_millis();
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mon = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mon <= 2);
    format!("{y:04}-{mon:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

impl LogFile {
    /// A log at `path`, rotated at `max_bytes`, keeping `keep` old files.
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> LogFile {
        LogFile {
            inner: Arc::new(Mutex::new(Inner {
                path,
                file: None,
                size: 0,
                max_bytes: max_bytes.max(4096),
                keep,
                dropped: 0,
                tee: None,
            })),
        }
    }

    /// Append one line: `<timestamp> <source> <text>`, with `text` cut at
    /// [`MAX_LINE`] bytes and its control characters escaped.
    pub fn line(&self, source: &str, text: &str) {
        let text = text.trim_end_matches(['\n', '\r']);
        let text = printable(text, MAX_LINE);
        let line = format!("{} {source} {text}\n", timestamp());
        let mut inner = gearhost_sys::lock::lock(&self.inner);
        inner.write(line.as_bytes());
        if let Some(tee) = &inner.tee {
            // bounded: a full queue drops the line (it is in the file)
            let _ = tee.send(format!("{source} {text}"));
        }
    }

    /// Send every line written from now on to `progress` as well, until the
    /// returned guard drops (one watcher at a time: the operation holding
    /// the gear's lock).
    pub fn watch(&self, progress: &crate::node::Progress) -> LogWatch {
        gearhost_sys::lock::lock(&self.inner).tee = Some(progress.clone());
        LogWatch { log: self.clone() }
    }

    /// Append lines that are already formatted (each ending in a newline).
    pub fn write_lines(&self, bytes: &[u8]) {
        gearhost_sys::lock::lock(&self.inner).write(bytes);
    }

    /// Close the file (the next write opens it again): a gear being
    /// destroyed holds no open file in its directories, so nothing keeps
    /// what btrfs counts for its quota alive.
    pub fn close(&self) {
        gearhost_sys::lock::lock(&self.inner).file = None;
    }

    /// The log's path.
    pub fn path(&self) -> PathBuf {
        gearhost_sys::lock::lock(&self.inner).path.clone()
    }
}

impl Inner {
    /// Appends `bytes`; a failure drops them and is counted, never fatal: the
    /// node says so once when the log stops taking writes, and the log says
    /// how much it lost once it takes them again.
    fn write(&mut self, bytes: &[u8]) {
        if self.dropped > 0 {
            let note = format!(
                "{} node [{} log write(s) dropped: the log could not be written, e.g. the gear's disk quota was full]\n",
                timestamp(),
                self.dropped
            );
            if self.append(note.as_bytes()).is_err() {
                self.dropped += 1;
                return;
            }
            tracing::info!(path = %self.path.display(), dropped = self.dropped, "a gear log takes writes again");
            self.dropped = 0;
        }
        if let Err(e) = self.append(bytes) {
            if self.dropped == 0 {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write a gear log; its lines are dropped and counted until it can");
            }
            self.dropped += 1;
            // reopen on the next write: the size kept may no longer be the file's
            self.file = None;
        }
    }

    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(f) => Ok(f),
            None => Err(std::io::Error::other("log file closed")),
        }
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let file = self.open()?;
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let name = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(name(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(name(n), name(n + 1));
            }
            let _ = std::fs::rename(&self.path, name(1));
        }
        self.size = 0;
        Ok(())
    }
}

/// `text` cut at `max` bytes (on a character boundary, the cut marked) with
/// every control character but the tab written as a visible escape (`\u{1b}`),
/// so it can go to a terminal as it is.
pub fn printable(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let clean = |c: char| !c.is_control() || c == '\t';
    if text.len() <= max && text.chars().all(clean) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max) + 48);
    let mut used = 0;
    for (i, c) in text.char_indices() {
        if out.len() >= max {
            used = i;
            break;
        }
        used = i + c.len_utf8();
        if clean(c) {
            out.push(c);
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "{}", c.escape_unicode());
        }
    }
    if used < text.len() {
        use std::fmt::Write as _;
        let _ = write!(out, " [line cut: {} more bytes]", text.len() - used);
    }
    std::borrow::Cow::Owned(out)
}

/// Copies the output of a gear process from `reader` to `emit`, a line at a
/// time, within the bounds in the module's documentation: no more than
/// [`MAX_LINE`] bytes of a line are held (the rest is counted and dropped),
/// invalid UTF-8 is replaced, and beyond [`OUTPUT_BURST`] bytes the stream is
/// read at [`OUTPUT_RATE`]. Ends at end of file or on a read error.
pub async fn copy_lines<R: AsyncRead + Unpin>(reader: R, emit: impl FnMut(&str)) {
    copy_lines_at(reader, emit, OUTPUT_RATE, OUTPUT_BURST).await;
}

/// [`copy_lines`] with the rate and burst given.
async fn copy_lines_at<R: AsyncRead + Unpin>(
    mut reader: R,
    mut emit: impl FnMut(&str),
    rate: u64,
    burst: u64,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut dropped: u64 = 0;
    let mut flush = |line: &mut Vec<u8>, dropped: &mut u64| {
        let text = String::from_utf8_lossy(line);
        if *dropped > 0 {
            emit(&format!("{text} [line cut: {dropped} more bytes]"));
        } else {
            emit(&text);
        }
        line.clear();
        *dropped = 0;
    };
    let (rate, burst) = (rate as f64, burst as f64);
    let mut budget = burst;
    let mut last = tokio::time::Instant::now();
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let (part, ended) = match rest.iter().position(|b| *b == b'\n') {
                Some(pos) => (&rest[..pos], Some(pos + 1)),
                None => (rest, None),
            };
            let room = MAX_LINE.saturating_sub(line.len()).min(part.len());
            line.extend_from_slice(&part[..room]);
            dropped += (part.len() - room) as u64;
            match ended {
                Some(next) => {
                    flush(&mut line, &mut dropped);
                    rest = &rest[next..];
                }
                None => rest = &[],
            }
        }
        // the rate: a token bucket refilled at `rate` up to `burst`
        let now = tokio::time::Instant::now();
        budget = (budget + now.duration_since(last).as_secs_f64() * rate).min(burst) - n as f64;
        last = now;
        if budget < 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(-budget / rate)).await;
        }
    }
    if !line.is_empty() || dropped > 0 {
        flush(&mut line, &mut dropped);
    }
}

/// Opens a log for reading (a missing one reads as empty) and its length.
fn open_log(path: &Path) -> std::io::Result<Option<(File, u64)>> {
    match File::open(path) {
        Ok(f) => {
            let len = f.metadata()?.len();
            Ok(Some((f, len)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `file` from `start`, at most [`READ_WINDOW`] bytes.
fn read_window(mut file: File, start: u64) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(READ_WINDOW).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The text of one stored line, made printable (logs written before lines
/// were escaped, or a file changed behind the node's back, are read safely).
fn stored_line(bytes: &[u8]) -> String {
    printable(&String::from_utf8_lossy(bytes), MAX_LINE + 256).into_owned()
}

/// The last `n` lines of `path` and the offset just past them, for following.
pub fn tail(path: &Path, n: usize) -> std::io::Result<(Vec<String>, u64)> {
    let Some((file, len)) = open_log(path)? else {
        return Ok((Vec::new(), 0));
    };
    // read at most the last window: enough for any sensible `-n`
    let start = len.saturating_sub(READ_WINDOW);
    let bytes = read_window(file, start)?;
    // what follows the last newline is a line still being written: following
    // starts at it
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let mut parts: Vec<&[u8]> = bytes[..end].split(|b| *b == b'\n').collect();
    parts.pop();
    if start > 0 && !parts.is_empty() {
        // a partial line at the cut
        parts.remove(0);
    }
    let first = parts.len().saturating_sub(n);
    let lines = parts[first..].iter().map(|l| stored_line(l)).collect();
    Ok((lines, start + end as u64))
}

/// Lines appended to `path` after `offset` (at most a window's worth; the
/// rest comes with the next call), and the new offset. A file that shrank
/// (rotated) is read from its start.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<String>, u64)> {
    let Some((file, len)) = open_log(path)? else {
        return Ok((Vec::new(), 0));
    };
    let offset = if len < offset { 0 } else { offset };
    let bytes = read_window(file, offset)?;
    let mut lines = Vec::new();
    let mut consumed = offset;
    let mut rest = &bytes[..];
    while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
        lines.push(stored_line(&rest[..pos]));
        consumed += pos as u64 + 1;
        rest = &rest[pos + 1..];
    }
    Ok((lines, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_gets_each_line_while_it_watches_and_a_full_queue_drops() {
        let dir = tempfile::tempdir().expect("dir");
        let log = LogFile::new(dir.path().join("hooks.log"), 1 << 20, 2);
        log.line("build[node]", "before");
        let (progress, mut rx) = crate::node::Progress::channel();
        let watch = log.watch(&progress);
        log.line("build[make:stdout]", "compiling\u{1b}[31m");
        assert_eq!(
            rx.try_recv().expect("a line"),
            "build[make:stdout] compiling\\u{1b}[31m",
            "the watcher gets the line as the file has it"
        );
        for i in 0..crate::node::PROGRESS_QUEUE + 3 {
            log.line("build[yes:stdout]", &format!("line {i}"));
        }
        drop(watch);
        log.line("build[node]", "after");
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, crate::node::PROGRESS_QUEUE);
        let dropped = progress.dropped();
        assert_eq!(dropped.load(std::sync::atomic::Ordering::Relaxed), 3);
        let (all, _) = tail(&dir.path().join("hooks.log"), 10_000).expect("tail");
        assert_eq!(
            all.len(),
            crate::node::PROGRESS_QUEUE + 6,
            "the file has them all"
        );
    }

    #[test]
    fn logs_rotate_by_size_and_keep_n_files() {
        let dir = tempfile::tempdir().expect("dir");
        let log = LogFile::new(dir.path().join("app.log"), 4096, 2);
        for i in 0..400 {
            log.line(
                "web",
                &format!("line number {i:04} with some padding to fill"),
            );
        }
        assert!(dir.path().join("app.log").exists());
        assert!(dir.path().join("app.log.1").exists());
        assert!(dir.path().join("app.log.2").exists());
        assert!(!dir.path().join("app.log.3").exists());
        for f in ["app.log", "app.log.1", "app.log.2"] {
            assert!(std::fs::metadata(dir.path().join(f)).expect("meta").len() <= 4096);
        }
        let (last, _) = tail(&dir.path().join("app.log"), 2).expect("tail");
        assert_eq!(last.len(), 2);
        assert!(
            last[1].ends_with("line number 0399 with some padding to fill"),
            "{last:?}"
        );
        assert!(last[1].contains(" web "));
    }

    #[test]
    fn a_log_that_cannot_be_written_drops_and_counts_its_lines() {
        let dir = tempfile::tempdir().expect("dir");
        // a directory that is not there yet stands in for a full disk
        let logs = dir.path().join("logs");
        let log = LogFile::new(logs.join("app.log"), 1 << 20, 1);
        log.line("web", "lost one");
        log.write_lines(b"lost two\n");
        std::fs::create_dir(&logs).expect("logs");
        log.line("web", "kept");
        let text = std::fs::read_to_string(logs.join("app.log")).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("node [2 log write(s) dropped: the log could not be written, e.g. the gear's disk quota was full]"),
            "{text}"
        );
        assert!(lines[1].ends_with("web kept"), "{text}");
        assert!(!text.contains("lost"), "{text}");
        log.line("web", "again");
        let text = std::fs::read_to_string(logs.join("app.log")).expect("log");
        assert_eq!(text.lines().count(), 3, "the count is said once: {text}");
    }

    #[test]
    fn printable_escapes_control_characters_and_cuts_long_text() {
        assert_eq!(printable("plain\ttext", 100), "plain\ttext");
        let escaped = printable("a\x1b[2Jb\x07c\rd", 100);
        assert!(!escaped.chars().any(|c| c.is_control()), "{escaped}");
        assert_eq!(escaped, "a\\u{1b}[2Jb\\u{7}c\\u{d}d");
        let long = "é".repeat(100);
        let cut = printable(&long, 21);
        assert!(cut.starts_with(&"é".repeat(11)), "{cut}");
        assert!(cut.ends_with(" [line cut: 178 more bytes]"), "{cut}");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    fn run_copy(input: Vec<u8>) -> Vec<String> {
        let rt = runtime();
        let mut lines = Vec::new();
        rt.block_on(copy_lines(&input[..], |l| lines.push(l.to_string())));
        lines
    }

    #[test]
    fn output_lines_are_cut_and_never_held_whole() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE + 7));
        input.extend(b"\nafter\n\xff\xfe tail without newline");
        let lines = run_copy(input);
        assert_eq!(
            lines.len(),
            4,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "short");
        assert_eq!(
            lines[1],
            format!(
                "{} [line cut: {} more bytes]",
                "x".repeat(MAX_LINE),
                2 * MAX_LINE + 7
            )
        );
        assert_eq!(lines[2], "after");
        assert_eq!(lines[3], "\u{fffd}\u{fffd} tail without newline");
    }

    #[test]
    fn output_beyond_the_burst_is_read_at_the_rate() {
        // 256 KiB beyond a 64 KiB burst at 1 MiB/s cannot take less than a
        // quarter of a second (the reader is an in-memory slice: without the
        // rate it takes microseconds)
        let (rate, burst) = (1 << 20, 64 << 10);
        let input = vec![b'y'; 320 << 10];
        let took = runtime().block_on(async {
            let started = std::time::Instant::now();
            copy_lines_at(&input[..], |_| {}, rate, burst).await;
            started.elapsed()
        });
        assert!(took >= Duration::from_millis(240), "{took:?}");
    }

    #[test]
    fn reading_a_log_back_is_bounded_and_printable() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("app.log");
        // a log written behind the node's back: one huge line, escapes, a partial line
        let mut bytes = vec![b'z'; (READ_WINDOW + 10) as usize];
        bytes.extend(b"\nline \x1b]0;owned\x07\npartial");
        std::fs::write(&path, &bytes).expect("write");
        let (lines, offset) = tail(&path, 10).expect("tail");
        assert_eq!(lines, vec!["line \\u{1b}]0;owned\\u{7}".to_string()]);
        assert_eq!(offset, bytes.len() as u64 - "partial".len() as u64);
        let (more, next) = read_from(&path, offset).expect("read");
        assert!(more.is_empty() && next == offset, "{more:?}");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b" done\n"))
            .expect("append");
        let (more, _) = read_from(&path, offset).expect("read");
        assert_eq!(more, vec!["partial done".to_string()]);
    }

    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
