//! One module per subcommand.

pub mod alias;
pub mod cartridge_call;
pub mod cartridge_check;
pub mod cartridge_new;
pub mod cartridge_push;
pub mod cartridge_store;
pub mod complete;
pub mod completions;
pub mod control;
pub mod create;
pub mod deploy;
pub mod deployments;
pub mod destroy;
pub mod env;
pub mod exec;
pub mod https;
pub mod idle;
pub mod image;
pub mod keys;
pub mod lifecycle;
pub mod link;
pub mod list;
pub mod logs;
pub mod moves;
pub mod node_check;
pub mod node_events;
pub mod node_list;
pub mod node_metrics;
pub mod node_restart;
pub mod node_run;
pub mod node_stop;
pub mod restore;
pub mod sandbox_run;
pub mod snapshot;
pub mod ssh;
pub mod tenancy;

use std::path::Path;

use gearhost_runtime::{Cartridge, LoadError, Runtime, RuntimeConfig};

use crate::Failure;

/// Build a runtime with the standalone cache and load the cartridge in `dir`,
/// mapping load errors to the exit-code classes.
pub(crate) fn load_cartridge(
    dir: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Runtime, Cartridge), Failure> {
    let cache = cache_dir.map_or_else(crate::default_cache_dir, Path::to_path_buf);
    let config = RuntimeConfig {
        max_concurrent_hooks: 4,
        ..RuntimeConfig::with_cache_dir(cache)
    };
    // one process, one call: no instance pool (see Runtime::for_few_calls)
    let runtime = Runtime::for_few_calls(config).map_err(|e| Failure::Environment(e.into()))?;
    let cartridge = runtime.load_dir(dir).map_err(|e| match e {
        LoadError::Cache(_) | LoadError::Engine(_) => Failure::Environment(e.into()),
        _ => Failure::Invalid(e.into()),
    })?;
    Ok((runtime, cartridge))
}
