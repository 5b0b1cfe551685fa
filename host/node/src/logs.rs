//! Gear logs: timestamped lines appended to `app.log` (process output) or
//! `hooks.log` (hook logs), rotated by size (`app.log.1` ... `.N`), and read
//! back by `gear logs`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
            })),
        }
    }

    /// Append one line: `<timestamp> <source> <text>`.
    pub fn line(&self, source: &str, text: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let text = text.trim_end_matches(['\n', '\r']);
        let line = format!("{} {source} {text}\n", timestamp());
        if let Err(e) = inner.append(line.as_bytes()) {
            tracing::warn!(path = %inner.path.display(), error = %e, "cannot write a gear log line");
        }
    }

    /// Append lines that are already formatted (each ending in a newline).
    pub fn write_lines(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inner.append(bytes) {
            tracing::warn!(path = %inner.path.display(), error = %e, "cannot write gear log lines");
        }
    }

    /// The log's path.
    pub fn path(&self) -> PathBuf {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .path
            .clone()
    }
}

impl Inner {
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

/// The last `n` lines of `path` and the offset just past them, for following.
pub fn tail(path: &Path, n: usize) -> std::io::Result<(Vec<String>, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // read at most the last 4 MiB: enough for any sensible `-n`
    let start = len.saturating_sub(4 << 20);
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(start))?;
    let mut lines: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut first = start > 0;
    loop {
        buf.clear();
        if reader.read_line(&mut buf)? == 0 {
            break;
        }
        if first {
            // a partial line at the cut
            first = false;
            continue;
        }
        lines.push(buf.trim_end_matches('\n').to_string());
        if lines.len() > n {
            lines.remove(0);
        }
    }
    Ok((lines, len))
}

/// Lines appended to `path` after `offset`, and the new offset. A file that
/// shrank (rotated) is read from its start.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<String>, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let offset = if len < offset { 0 } else { offset };
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(offset))?;
    let mut lines = Vec::new();
    let mut consumed = offset;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf)?;
        if n == 0 || !buf.ends_with('\n') {
            break;
        }
        consumed += n as u64;
        lines.push(buf.trim_end_matches('\n').to_string());
    }
    Ok((lines, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn timestamps_look_like_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
