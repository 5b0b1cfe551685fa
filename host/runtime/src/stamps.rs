//! Known content hashes of component files: a load whose component file is unchanged since
//! it was last hashed takes the hash from here instead of reading and hashing the file.
//!
//! A stamp is a small file in the cache directory, `stamps/<device>-<inode>` (hex), holding
//! the component file's size, modification and status-change times and its SHA-256. It is
//! believed only while all three still match the file. Writing a file always moves its
//! status-change time (ctime), which no unprivileged program can set; but the times have the
//! file system's granularity (a timer tick on Linux), so a file changed twice within one tick
//! could look unchanged. A stamp is therefore only written for a file that has not changed
//! for [`SETTLED`]: a later change falls in a later tick, and no longer matches. (Git's index
//! guards against the same "racy" timestamps the same way.)
//!
//! Stamps live in the cache directory, which is trusted as its compiled entries are (its
//! owner could write those directly). A stamp that cannot be read or parsed is ignored, and
//! one is written to a temporary file and renamed, so a reader never sees half of one.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a file must have been left unchanged before its hash is stamped.
pub(crate) const SETTLED: Duration = Duration::from_secs(1);

/// The first word of a stamp (its format).
const FORMAT: &str = "gearhost-stamp-1";

/// What a stamp compares: size, mtime and ctime (seconds and nanoseconds).
fn identity(meta: &Metadata) -> String {
    format!(
        "{} {}.{:09} {}.{:09}",
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

fn stamp_path(cache_dir: &Path, meta: &Metadata) -> PathBuf {
    cache_dir
        .join("stamps")
        .join(format!("{:x}-{:x}", meta.dev(), meta.ino()))
}

/// The SHA-256 (hex) and length of the file at `path` as last stamped, if the file has not
/// changed since.
pub(crate) fn known(cache_dir: &Path, path: &Path) -> Option<(String, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(stamp_path(cache_dir, &meta)).ok()?;
    let (format, rest) = text.strip_suffix('\n')?.split_once(' ')?;
    let (stamped, hash) = rest.rsplit_once(' ')?;
    let valid_hash = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    (format == FORMAT && valid_hash && stamped == identity(&meta))
        .then(|| (hash.to_ascii_lowercase(), meta.len()))
}

/// Stamps `hash` for the file whose metadata, taken before it was read, is `meta` — unless it
/// changed within the last [`SETTLED`] (or its times are in the future). Best effort: a stamp
/// that cannot be written only means the next load hashes the file again.
pub(crate) fn remember(cache_dir: &Path, meta: &Metadata, hash: &str) {
    let changed = SystemTime::UNIX_EPOCH
        .checked_add(Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(u64::MAX),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        ))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let settled = SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age >= SETTLED);
    if !settled || !meta.is_file() {
        return;
    }
    let path = stamp_path(cache_dir, meta);
    let written = (|| {
        let dir = cache_dir.join("stamps");
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("stamp"),
            std::process::id()
        ));
        let text = format!("{FORMAT} {} {hash}\n", identity(meta));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    })();
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), error = %e, "component hash not stamped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settled_file_is_known_until_it_changes() {
        let cache = tempfile::tempdir().expect("temporary directory");
        let files = tempfile::tempdir().expect("temporary directory");
        let wasm = files.path().join("hooks.wasm");
        std::fs::write(&wasm, b"\0asm first").expect("write");
        let hash = "ab".repeat(32);
        // just written: not stamped (a change within the same tick could go unseen)
        remember(
            cache.path(),
            &std::fs::metadata(&wasm).expect("stat"),
            &hash,
        );
        assert_eq!(known(cache.path(), &wasm), None);

        std::thread::sleep(SETTLED + Duration::from_millis(50));
        let meta = std::fs::metadata(&wasm).expect("stat");
        remember(cache.path(), &meta, &hash);
        assert_eq!(known(cache.path(), &wasm), Some((hash.clone(), 10)));

        // the same size and modification time, new content: the status-change time moved
        std::fs::write(&wasm, b"\0asm other").expect("write");
        let mtime = meta.modified().expect("mtime");
        std::fs::File::options()
            .write(true)
            .open(&wasm)
            .expect("open")
            .set_modified(mtime)
            .expect("set the modification time");
        assert_eq!(
            std::fs::metadata(&wasm)
                .expect("stat")
                .modified()
                .expect("mtime"),
            mtime
        );
        assert_eq!(known(cache.path(), &wasm), None);
    }

    #[test]
    fn a_damaged_or_foreign_stamp_is_ignored() {
        let cache = tempfile::tempdir().expect("temporary directory");
        let files = tempfile::tempdir().expect("temporary directory");
        let wasm = files.path().join("hooks.wasm");
        std::fs::write(&wasm, b"\0asm").expect("write");
        let meta = std::fs::metadata(&wasm).expect("stat");
        let path = stamp_path(cache.path(), &meta);
        std::fs::create_dir_all(cache.path().join("stamps")).expect("mkdir");
        let good = format!("{FORMAT} {} {}\n", identity(&meta), "cd".repeat(32));
        for bad in [
            String::new(),
            good.trim_end().to_string(),
            good.replace(FORMAT, "gearhost-stamp-0"),
            good.replace(&"cd".repeat(32), "not-a-hash"),
            good.replace(&"cd".repeat(32), &"cd".repeat(31)),
        ] {
            std::fs::write(&path, &bad).expect("write");
            assert_eq!(known(cache.path(), &wasm), None, "{bad:?}");
        }
        std::fs::write(&path, &good).expect("write");
        assert_eq!(known(cache.path(), &wasm), Some(("cd".repeat(32), 4)));
        // a directory is never known
        assert_eq!(known(cache.path(), files.path()), None);
    }
}
