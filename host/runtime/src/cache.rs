//! The compiled-component cache: components are compiled once and stored on
//! disk keyed by their content hash and the engine's compatibility hash;
//! later loads deserialize the stored artifact instead of compiling.
//!
//! Every entry is one file: the artifact wasmtime produced, followed by a
//! 40-byte trailer (the artifact's SHA-256 and an 8-byte magic). A load checks
//! the trailer before wasmtime sees a byte, so a truncated or corrupted entry
//! is detected, removed and rebuilt instead of being trusted. Entries are
//! written to a temporary file, fsynced and renamed into place, so readers
//! never see a half-written entry.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const TRAILER_MAGIC: &[u8; 8] = b"GHCWASM1";
const TRAILER_LEN: usize = 32 + 8;

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
        let mut outcome = CacheOutcome::Compiled;
        match std::fs::read(&path) {
            Ok(bytes) => match self.verified_artifact(&bytes) {
                Some(artifact) => match deserialize(engine, artifact) {
                    Ok(component) => {
                        return Ok(Ok(Cached {
                            component,
                            content_hash,
                            outcome: CacheOutcome::Hit,
                            elapsed: started.elapsed(),
                            path,
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cached component refused by the engine; rebuilding it");
                        outcome = CacheOutcome::Rebuilt;
                    }
                },
                None => {
                    tracing::warn!(path = %path.display(), "cached component is corrupt; rebuilding it");
                    outcome = CacheOutcome::Rebuilt;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CacheError::Io { path, source }),
        }
        if outcome == CacheOutcome::Rebuilt {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CacheError::Io { path, source }),
            }
        }
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

    fn verified_artifact<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        if bytes.len() < TRAILER_LEN {
            return None;
        }
        let (artifact, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        let (sum, magic) = trailer.split_at(32);
        if magic != TRAILER_MAGIC || Sha256::digest(artifact).as_slice() != sum {
            return None;
        }
        Some(artifact)
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
            file.write_all(&Sha256::digest(artifact))?;
            file.write_all(TRAILER_MAGIC)?;
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

fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // The runtime's one unsafe operation (see "Where unsafe code lives" in
    // docs/ARCHITECTURE.md).
    #[allow(unsafe_code)]
    // SAFETY: `artifact` was produced by `Component::serialize` of an engine
    // with the same compatibility hash (it is part of the file name), written
    // by this module into the node's private cache directory, and its SHA-256
    // trailer was verified just now, so it is byte-for-byte what wasmtime
    // wrote. wasmtime additionally checks the header, version and engine
    // settings and refuses a mismatch with an error.
    unsafe {
        Component::deserialize(engine, artifact)
    }
}
