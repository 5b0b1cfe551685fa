//! The process-wide wasmtime engine, and loading cartridges into it:
//! validation against the contract, compile-once caching, and the cached
//! `InstancePre` each hook call instantiates from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::CartridgePre;
use crate::cache::{CacheError, CacheOutcome, Cached, ComponentCache, Lookup};
use crate::call::HookState;
use crate::manifest::{Manifest, ManifestError};
use crate::watchdog::Watchdog;

/// The contract version this host implements.
pub const CONTRACT_VERSION: semver::Version = semver::Version::new(0, 1, 0);
/// The WIT package of the contract.
pub const CONTRACT_PACKAGE: &str = "gearhost:cartridge";
/// Engine epoch tick: the resolution of hook deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Node-wide settings of the hook runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory of compiled components.
    pub cache_dir: PathBuf,
    /// Ceiling on any `start`/`stop`/`control` budget.
    pub max_timeout: Duration,
    /// Ceiling on any `build` budget.
    pub max_build_timeout: Duration,
    /// Ceiling on any hook's memory, in bytes.
    pub max_memory: u64,
    /// How many hook instances may exist at once (sizes the instance pool).
    pub max_concurrent_hooks: u32,
}

impl RuntimeConfig {
    /// Defaults with the given cache directory: 5 minute / 1 hour budgets,
    /// 1 GiB memory, 64 concurrent hooks.
    pub fn with_cache_dir(cache_dir: PathBuf) -> RuntimeConfig {
        RuntimeConfig {
            cache_dir,
            max_timeout: Duration::from_secs(300),
            max_build_timeout: Duration::from_secs(3600),
            max_memory: 1 << 30,
            max_concurrent_hooks: 64,
        }
    }
}

/// Why a cartridge could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The hooks file cannot be read.
    #[error(
        "cannot read the hooks component {path}: {source}; check that the file exists and is readable"
    )]
    Read {
        /// The hooks file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The hooks file is not a WebAssembly component.
    #[error("{path} is not a usable cartridge component: {problem}; {help}")]
    NotAComponent {
        /// The hooks file.
        path: PathBuf,
        /// What it is instead.
        problem: String,
        /// What to do.
        help: String,
    },
    /// The component speaks another version of the contract, or lacks part of it.
    #[error(
        "{path} does not fit this host's contract {CONTRACT_PACKAGE}@{CONTRACT_VERSION}: {problem}; {help}"
    )]
    Incompatible {
        /// The hooks file.
        path: PathBuf,
        /// What does not fit.
        problem: String,
        /// What to do.
        help: String,
    },
    /// The compile cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// What the runtime learned about a loaded component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// SHA-256 of the wasm bytes.
    pub content_hash: String,
    /// Size of the wasm file.
    pub wasm_bytes: u64,
    /// The contract version the component was built against.
    pub contract_version: String,
    /// Hooks the component exports.
    pub hooks: Vec<String>,
    /// Interfaces the component imports.
    pub imports: Vec<String>,
    /// Cache hit, fresh compile, or rebuild of a corrupt entry.
    pub cache: CacheOutcome,
    /// Time to compile or deserialize.
    #[serde(serialize_with = "crate::call::serialize_duration")]
    pub load_time: Duration,
    /// The cache file.
    pub cache_path: PathBuf,
}

/// The hook runtime: one per process. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    /// All of the host's interfaces, for any component; `None` when each
    /// component is linked against its own imports.
    pub(crate) linker: Option<Linker<HookState>>,
    pub(crate) cache: ComponentCache,
    pub(crate) config: RuntimeConfig,
    pub(crate) watchdog: Arc<Watchdog>,
    /// Whether a hook is polled by the task that calls it instead of on a thread of its own
    /// (a runtime for few calls).
    pub(crate) calls_in_caller: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A cartridge ready to run hooks: its manifest and a pre-linked instance.
#[derive(Clone)]
pub struct Cartridge {
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) pre: CartridgePre<HookState>,
    pub(crate) info: Arc<ComponentInfo>,
}

impl std::fmt::Debug for Cartridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cartridge")
            .field("name", &self.manifest.name)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Cartridge {
    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What was learned while loading the component.
    pub fn info(&self) -> &ComponentInfo {
        &self.info
    }
}

impl Runtime {
    /// Create the engine (pooling allocator, epoch interruption) and start
    /// the epoch ticker thread that enforces deadlines (and, as the hooks'
    /// watchdog, breaks a hook that is due out of a blocking system call).
    pub fn new(config: RuntimeConfig) -> Result<Runtime, LoadError> {
        Runtime::build(config, true)
    }

    /// [`Runtime::new`] for a process that loads a cartridge, runs at most a
    /// few hooks and exits (`gear cartridge call` and `check`): the same
    /// engine settings, deadlines, watchdog and per-call limits, but instances
    /// are allocated when a call needs one instead of from a pool made up
    /// front. For one call the pool's set-up and teardown cost more than the
    /// instance it serves (about 0.2 ms of a 3.5 ms process). A hook's memory
    /// cap and its counts of instances, tables and memories are enforced by
    /// the call's store limiter either way.
    ///
    /// A hook of such a runtime is also polled by the task that calls it, not
    /// handed to a thread of its own, and the runtime starts no epoch ticker:
    /// in a process of its own, each extra thread (its start, its hand-overs,
    /// and the address-space changes it makes costlier) cost a twentieth of
    /// the whole command. Budgets hold as before: a timer signal to the
    /// calling thread, from the deadline on, advances the epoch (so wasm code
    /// traps) and breaks a file operation that waits past it (see
    /// `watchdog::Watchdog::watch_in_caller`). What is given up is only the
    /// node's guarantee that other tasks of the caller's thread run
    /// meanwhile: a hook stuck where no signal reaches holds the caller with
    /// it, and a cancel must come from another thread.
    pub fn for_few_calls(config: RuntimeConfig) -> Result<Runtime, LoadError> {
        Runtime::build(config, false)
    }

    fn build(config: RuntimeConfig, pooled: bool) -> Result<Runtime, LoadError> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = config.max_concurrent_hooks.max(1);
        // a Rust component has one main module plus a few small shims
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .total_stacks(slots)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(config.max_memory as usize);

        let mut wasm = Config::new();
        // No native unwind tables for guest code: wasmtime walks guest frames itself for
        // backtraces and traps, and a host panic is caught before it could unwind through
        // guest frames. Registering the tables with libgcc on every load, and removing them
        // again, was a tenth of a cached load.
        wasm.epoch_interruption(true)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32))
            .native_unwind_info(false)
            .wasm_component_model(true);
        if pooled {
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(|e| LoadError::Engine(e.to_string()))?;

        // one linker for every cartridge of a pooled runtime; each component
        // of a few-call runtime gets its own, of what it imports (crate::linking)
        let linker = if pooled {
            let mut linker = Linker::new(&engine);
            crate::linking::everything(&mut linker)
                .map_err(|e| LoadError::Engine(error_chain(&e)))?;
            Some(linker)
        } else {
            None
        };

        let watchdog = Arc::new(Watchdog::new().map_err(|e| {
            LoadError::Engine(format!(
                "cannot install the signal handler that holds hook budgets: {e}"
            ))
        })?);
        // a runtime for few calls has no ticker: each of its calls is woken at its deadline
        // by a timer signal instead (see `call::driver`)
        if pooled {
            spawn_epoch_ticker(&engine, watchdog.clone()).map_err(|e| {
                LoadError::Engine(format!(
                    "cannot start the thread that enforces hook deadlines: {e}"
                ))
            })?;
        }
        let cache = ComponentCache::new(config.cache_dir.clone(), &engine);
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                config,
                watchdog,
                calls_in_caller: !pooled,
            }),
        })
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The wasmtime engine (for tools that measure it).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Load the cartridge in directory `dir`: validate `cartridge.toml`, then
    /// validate, compile (or fetch from cache) and pre-link its component.
    ///
    /// The component is hashed as it is read, and only read whole when the
    /// cache has no valid entry for it: a cache hit never holds the wasm. A
    /// component file unchanged since it was last hashed is not read at all
    /// (`stamps`).
    pub fn load_dir(&self, dir: &Path) -> Result<Cartridge, LoadError> {
        let manifest = Manifest::load_dir(dir)?;
        let path = manifest.hooks_path(dir);
        let read_error = |source| LoadError::Read {
            path: path.clone(),
            source,
        };
        let started = Instant::now();
        let cache_dir = self.inner.cache.dir();
        let (content_hash, len) = match crate::stamps::known(cache_dir, &path) {
            Some(known) => known,
            None => {
                let (hash, header, len, meta) =
                    ComponentCache::hash_file(&path).map_err(read_error)?;
                let header_len = usize::try_from(len).map_or(header.len(), |l| l.min(header.len()));
                check_component_header(&header[..header_len], &path)?;
                crate::stamps::remember(cache_dir, &meta, &hash);
                (hash, len)
            }
        };
        match self
            .inner
            .cache
            .lookup(&self.inner.engine, &content_hash, started)?
        {
            Lookup::Hit(cached) => self.prepare(manifest, cached, len, &path),
            Lookup::Missing | Lookup::Stale(_) => {
                let wasm = std::fs::read(&path).map_err(read_error)?;
                self.load(manifest, &wasm, &path)
            }
        }
    }

    /// Load a cartridge from a manifest and component bytes; `path` names the
    /// component in messages.
    pub fn load(
        &self,
        manifest: Manifest,
        wasm: &[u8],
        path: &Path,
    ) -> Result<Cartridge, LoadError> {
        check_component_header(wasm, path)?;
        let engine = &self.inner.engine;
        let cached = self
            .inner
            .cache
            .load(engine, wasm, || Component::new(engine, wasm))?
            .map_err(|e| LoadError::NotAComponent {
                path: path.to_path_buf(),
                problem: format!("it does not compile: {}", error_chain(&e)),
                help: "rebuild it with `cargo build --release --target wasm32-wasip2`".into(),
            })?;
        self.prepare(manifest, cached, wasm.len() as u64, path)
    }

    /// Check a loaded component against the contract and pre-link it.
    fn prepare(
        &self,
        manifest: Manifest,
        cached: Cached,
        wasm_bytes: u64,
        path: &Path,
    ) -> Result<Cartridge, LoadError> {
        let engine = &self.inner.engine;
        let (contract_version, hooks, imports) = check_contract(engine, &cached.component, path)?;
        let own_linker;
        let linker = match &self.inner.linker {
            Some(shared) => shared,
            None => {
                let mut linker = Linker::new(engine);
                crate::linking::for_imports(&mut linker, &imports)
                    .map_err(|e| LoadError::Engine(error_chain(&e)))?;
                own_linker = linker;
                &own_linker
            }
        };
        let instance_pre = linker
            .instantiate_pre(&cached.component)
            .map_err(|e| LoadError::Incompatible {
                path: path.to_path_buf(),
                problem: format!("its imports cannot be satisfied: {}", error_chain(&e)),
                help: "a cartridge may import only the gearhost:cartridge/host interface and WASI 0.2; \
                       rebuild it with the gearhost SDK"
                    .into(),
            })?;
        let pre = CartridgePre::new(instance_pre).map_err(|e| LoadError::Incompatible {
            path: path.to_path_buf(),
            problem: format!("its exports do not match the hooks interface: {}", error_chain(&e)),
            help: format!(
                "rebuild it with the gearhost SDK for contract {CONTRACT_VERSION} (gearhost-sdk {}.{})",
                CONTRACT_VERSION.major, CONTRACT_VERSION.minor
            ),
        })?;
        let info = ComponentInfo {
            content_hash: cached.content_hash,
            wasm_bytes,
            contract_version,
            hooks,
            imports,
            cache: cached.outcome,
            load_time: cached.elapsed,
            cache_path: cached.path,
        };
        Ok(Cartridge {
            runtime: self.inner.clone(),
            manifest: Arc::new(manifest),
            pre,
            info: Arc::new(info),
        })
    }
}

/// Tell a core module, a non-wasm file and a component apart before asking
/// the compiler, so the message can say what to do.
fn check_component_header(wasm: &[u8], path: &Path) -> Result<(), LoadError> {
    let fail = |problem: &str, help: &str| {
        Err(LoadError::NotAComponent {
            path: path.to_path_buf(),
            problem: problem.into(),
            help: help.into(),
        })
    };
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return fail(
            "it is not a WebAssembly file",
            "point `hooks` in cartridge.toml at the .wasm file cargo built for wasm32-wasip2",
        );
    }
    match &wasm[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => fail(
            "it is a core WebAssembly module, not a component",
            "build the cartridge for the wasm32-wasip2 target (not wasm32-wasip1 or wasm32-unknown-unknown)",
        ),
        _ => fail(
            "it uses an unknown WebAssembly binary version",
            "rebuild it with the pinned Rust toolchain for wasm32-wasip2",
        ),
    }
}

/// Check the component's imports and exports against the contract by name
/// and version, so a mismatch gets a message that names versions; returns
/// (contract version, exported hooks, imported interfaces).
fn check_contract(
    engine: &Engine,
    component: &Component,
    path: &Path,
) -> Result<(String, Vec<String>, Vec<String>), LoadError> {
    let ty = component.component_type();
    let hooks_prefix = format!("{CONTRACT_PACKAGE}/hooks@");
    let host_prefix = format!("{CONTRACT_PACKAGE}/host@");
    let types_prefix = format!("{CONTRACT_PACKAGE}/types@");
    let incompatible = |problem: String, help: String| {
        Err(LoadError::Incompatible {
            path: path.to_path_buf(),
            problem,
            help,
        })
    };
    let compatible = |v: &semver::Version| {
        v.major == CONTRACT_VERSION.major
            && v.minor == CONTRACT_VERSION.minor
            && (v.major != 0 || v.minor != 0 || v.patch == CONTRACT_VERSION.patch)
    };
    let rebuild_help = |found: &semver::Version| {
        if found > &CONTRACT_VERSION {
            format!(
                "it was built for a newer contract ({found}); upgrade this node, or rebuild the cartridge \
                 with gearhost-sdk {}.{}",
                CONTRACT_VERSION.major, CONTRACT_VERSION.minor
            )
        } else {
            format!(
                "it was built for an older contract ({found}); rebuild the cartridge with gearhost-sdk {}.{}",
                CONTRACT_VERSION.major, CONTRACT_VERSION.minor
            )
        }
    };

    let mut imports = Vec::new();
    for (name, _) in ty.imports(engine) {
        for prefix in [&host_prefix, &types_prefix] {
            if let Some(version) = name.strip_prefix(prefix.as_str()) {
                match semver::Version::parse(version) {
                    Ok(v) if compatible(&v) => {}
                    Ok(v) => {
                        return incompatible(
                            format!("it imports {name}, contract version {v}"),
                            rebuild_help(&v),
                        );
                    }
                    Err(_) => {
                        return incompatible(
                            format!("it imports {name} with an unreadable version"),
                            rebuild_help(&CONTRACT_VERSION),
                        );
                    }
                }
            }
        }
        imports.push(name.to_string());
    }

    let mut found_hooks = None;
    let mut other_versions = Vec::new();
    for (name, item) in ty.exports(engine) {
        if let Some(version) = name.strip_prefix(hooks_prefix.as_str()) {
            match semver::Version::parse(version) {
                Ok(v) if compatible(&v) => found_hooks = Some((v, item)),
                Ok(v) => other_versions.push(v),
                Err(_) => {}
            }
        }
    }
    let Some((version, item)) = found_hooks else {
        if let Some(v) = other_versions.first() {
            return incompatible(
                format!("it exports {hooks_prefix}{v}, contract version {v}"),
                rebuild_help(v),
            );
        }
        return incompatible(
            format!("it does not export the {hooks_prefix}{CONTRACT_VERSION} interface"),
            "a cartridge must implement the hooks; use `gearhost_sdk::export_cartridge!` in the hooks crate".into(),
        );
    };
    let mut hooks = Vec::new();
    if let ComponentItem::ComponentInstance(instance) = item.ty {
        for (export, _) in instance.exports(engine) {
            hooks.push(export.to_string());
        }
    }
    Ok((version.to_string(), hooks, imports))
}

/// Flatten an error and its causes into one line.
pub(crate) fn error_chain(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Advance the engine's epoch every [`EPOCH_TICK`] for as long as the engine
/// lives. Hook deadlines are checked at each tick, and the watchdog
/// interrupts the threads of calls that are due.
fn spawn_epoch_ticker(engine: &Engine, watchdog: Arc<Watchdog>) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("gearhost-epoch".into())
        .spawn(move || {
            let mut next = Instant::now();
            loop {
                next += EPOCH_TICK;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
                watchdog.tick(Instant::now());
            }
        })
        .map(drop)
}
