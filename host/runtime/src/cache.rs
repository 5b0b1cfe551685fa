//! The compiled-component cache: components are compiled once and stored on
//! disk keyed by their content hash and the engine's compatibility hash;
//! later loads deserialize the stored artifact instead of compiling.
//!
//! Every entry is one file: the artifact wasmtime produced, followed by a
//! 20-byte trailer (the artifact's CRC-32, its length and an 8-byte magic).
//! A load checks the trailer before
//! wasmtime sees a byte, so a truncated or corrupted entry is detected,
//! removed and rebuilt instead of being trusted. Entries are written to a
//! temporary file, fsynced and renamed into place, so readers never see a
//! half-written entry.
//!
//! The trailer guards against damage, not against an adversary: whoever can
//! write an entry can write its trailer too, whatever the checksum, so the
//! cache directory's ownership is what keeps entries trustworthy (the node's
//! is root's; `gear`'s standalone cache is its user's). A CRC-32 with the
//! length catches truncation, extension and any burst of up to 32 bits, and
//! other damage but for one chance in 2^32, at a small fraction of the cost
//! of a SHA-256 of the artifact on every load. The key stays a SHA-256 of the
//! wasm: it must not collide for two different components.
//!
//! A hit costs no copy of the artifact: the trailer is checked by streaming
//! the file through a small buffer, and wasmtime then maps the very file that
//! was checked (`/proc/self/fd/N` of the descriptor that was read) instead of
//! copying it into fresh memory. That relies on the invariant above: an entry
//! is never written in place, only renamed into place or removed, so a
//! mapping stays what was verified for as long as it lives.
//!
//! Before any of this, a component file unchanged since it was last hashed is
//! not even read: its hash comes from its stamp (`crate::stamps`).

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The trailer's magic.
const TRAILER_MAGIC: &[u8; 8] = b"GHCWASM2";
/// The magic of the earlier format (a SHA-256 trailer): such entries are
/// rebuilt once.
const EARLIER_MAGIC: &[u8; 8] = b"GHCWASM1";
/// CRC-32 (4 bytes, little-endian), artifact length (8, little-endian), magic.
const TRAILER_LEN: usize = 4 + 8 + 8;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// Deserialized from a valid cache entry.
    Hit,
    /// Not in the cache: compiled and stored.
    Compiled,
    /// The cache entry was corrupt or stale: removed, compiled again, stored.
    Rebuilt,
}

/// Errors of the cache itself (a failed compile is reported by the caller).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory cannot be created or written.
    #[error(
        "cannot use the component cache at {path}: {source}; make the directory writable or point the cache elsewhere"
    )]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A content-addressed, integrity-checked store of compiled components.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

/// A component loaded through the cache.
#[derive(Debug)]
pub struct Cached {
    /// The ready-to-instantiate component.
    pub component: Component,
    /// SHA-256 of the component's wasm bytes, hex.
    pub content_hash: String,
    /// Where it came from.
    pub outcome: CacheOutcome,
    /// Time spent compiling or deserializing.
    pub elapsed: std::time::Duration,
    /// The cache file backing it.
    pub path: PathBuf,
}

/// What [`ComponentCache::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid entry, loaded.
    Hit(Cached),
    /// No entry for this component and engine.
    Missing,
    /// An entry that is corrupt, of an earlier format, or that the engine
    /// refused (said why); it must be rebuilt.
    Stale(String),
}

impl ComponentCache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> ComponentCache {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        ComponentCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SHA-256 of `bytes`, hex.
    pub fn content_hash(bytes: &[u8]) -> String {
        gearhost_sys::hex::encode(&Sha256::digest(bytes))
    }

    fn entry_path(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// SHA-256 of the file at `path`, hex, streamed through a small buffer
    /// (the file is not held in memory), with its first 8 bytes (fewer if the
    /// file is shorter), its length, and its metadata as it was before it was read.
    pub fn hash_file(path: &Path) -> std::io::Result<(String, [u8; 8], u64, std::fs::Metadata)> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let mut hasher = Sha256::new();
        let mut header = [0u8; 8];
        let mut len = 0u64;
        stream(&mut file, u64::MAX, |chunk| {
            if let Ok(at) = usize::try_from(len)
                && at < header.len()
            {
                let n = (header.len() - at).min(chunk.len());
                header[at..at + n].copy_from_slice(&chunk[..n]);
            }
            len += chunk.len() as u64;
            hasher.update(chunk);
        })?;
        Ok((
            gearhost_sys::hex::encode(&hasher.finalize()),
            header,
            len,
            meta,
        ))
    }

    /// The cached component for the wasm whose SHA-256 is `content_hash`, if
    /// the cache holds a valid entry for it. Removes and logs nothing: a
    /// corrupt or refused entry is reported as [`Lookup::Stale`], and
    /// [`ComponentCache::load`] says so and replaces it. `started` is when the
    /// caller began loading.
    pub fn lookup(
        &self,
        engine: &Engine,
        content_hash: &str,
        started: Instant,
    ) -> Result<Lookup, CacheError> {
        let path = self.entry_path(content_hash);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(io(e)),
        };
        match check(&mut file).map_err(io)? {
            Check::Valid => {}
            Check::Corrupt => return Ok(Lookup::Stale("it is corrupt".into())),
            Check::Earlier => {
                return Ok(Lookup::Stale(
                    "it was written in an earlier format of the cache".into(),
                ));
            }
        }
        match deserialize_file(engine, &file, &path) {
            Ok(component) => Ok(Lookup::Hit(Cached {
                component,
                content_hash: content_hash.to_string(),
                outcome: CacheOutcome::Hit,
                elapsed: started.elapsed(),
                path,
            })),
            Err(e) => Ok(Lookup::Stale(format!("the engine refused it: {e}"))),
        }
    }

    /// Load the component for `wasm`: from the cache when a valid entry
    /// exists, otherwise by compiling with `compile` and storing the result.
    pub fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> Result<Result<Cached, wasmtime::Error>, CacheError> {
        let started = Instant::now();
        let content_hash = Self::content_hash(wasm);
        let path = self.entry_path(&content_hash);
        let outcome = match self.lookup(engine, &content_hash, started)? {
            Lookup::Hit(cached) => return Ok(Ok(cached)),
            Lookup::Missing => CacheOutcome::Compiled,
            Lookup::Stale(why) => {
                tracing::warn!(path = %path.display(), "cached component not used ({why}); rebuilding it");
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(CacheError::Io { path, source }),
                }
                CacheOutcome::Rebuilt
            }
        };
        let component = match compile() {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let artifact = match component.serialize() {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        self.store(&path, &artifact)?;
        Ok(Ok(Cached {
            component,
            content_hash,
            outcome,
            elapsed: started.elapsed(),
            path,
        }))
    }

    fn store(&self, path: &Path, artifact: &[u8]) -> Result<(), CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(artifact)?;
            file.write_all(&trailer(artifact))?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io(path))
    }
}

/// Feed the first `limit` bytes of `file` (from its current position) to
/// `each`, chunk by chunk, through one reused buffer.
fn stream(file: &mut File, limit: u64, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut left = limit;
    while left > 0 {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        each(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// The trailer of `artifact`.
fn trailer(artifact: &[u8]) -> [u8; TRAILER_LEN] {
    trailer_of(crc32fast::hash(artifact), artifact.len() as u64)
}

fn trailer_of(crc: u32, len: u64) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out[4..12].copy_from_slice(&len.to_le_bytes());
    out[12..].copy_from_slice(TRAILER_MAGIC);
    out
}

/// What [`check`] found in an entry.
enum Check {
    /// An artifact followed by a valid trailer.
    Valid,
    /// Damaged: truncated, extended, or its bytes changed.
    Corrupt,
    /// Written by an earlier version of this cache (a SHA-256 trailer).
    Earlier,
}

/// Check `file` (read from its start): an artifact followed by a valid
/// trailer, its CRC-32, its length and the magic.
fn check(file: &mut File) -> std::io::Result<Check> {
    let len = file.metadata()?.len();
    let Some(artifact_len) = len.checked_sub(TRAILER_LEN as u64) else {
        return Ok(Check::Corrupt);
    };
    let mut crc = crc32fast::Hasher::new();
    let mut read = 0u64;
    stream(file, artifact_len, |chunk| {
        read += chunk.len() as u64;
        crc.update(chunk);
    })?;
    let mut found = [0u8; TRAILER_LEN];
    if read != artifact_len || file.read_exact(&mut found).is_err() {
        return Ok(Check::Corrupt);
    }
    Ok(if found == trailer_of(crc.finalize(), artifact_len) {
        Check::Valid
    } else if found[TRAILER_LEN - 8..] == *EARLIER_MAGIC {
        Check::Earlier
    } else {
        Check::Corrupt
    })
}

/// Map the verified entry `file` (named `path`) as a component.
fn deserialize_file(engine: &Engine, file: &File, path: &Path) -> wasmtime::Result<Component> {
    // wasmtime opens by name: name the descriptor that was verified, so that
    // what is mapped is that file even if the entry was replaced meanwhile
    use std::os::fd::AsRawFd;
    let own = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let target = if own.exists() { own.as_path() } else { path };
    // The runtime's one unsafe operation (see "Where unsafe code lives" in
    // docs/ARCHITECTURE.md).
    #[allow(unsafe_code)]
    // SAFETY: the file was produced by `Component::serialize` of an engine
    // with the same compatibility hash (it is part of the file name), written
    // by this module into the node's private cache directory, and its trailer
    // (CRC-32 and length) was verified just now through the same descriptor, so it is
    // byte-for-byte what wasmtime wrote (the trailer after the artifact is
    // outside every section wasmtime reads). wasmtime maps it privately; an
    // entry is never modified in place (it is written to a temporary file and
    // renamed, or removed), so the mapping does not change under the engine.
    // wasmtime additionally checks the header, version and engine settings and
    // refuses a mismatch with an error.
    unsafe {
        Component::deserialize_file(engine, target)
    }
}
