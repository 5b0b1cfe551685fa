//! The memory cap of one hook instance, and the markers a trap carries when
//! the call was stopped by the cap, its deadline or a cancel (so the trap is
//! reported as what it is, not as a crash).

use wasmtime::ResourceLimiter;

/// Caps linear memory and tables of one hook instance, and remembers whether
/// the cap was hit so the trap can be reported as what it is.
pub(super) struct MemoryLimiter {
    pub(super) memory_cap: usize,
    pub(super) hit: bool,
}

#[derive(Debug)]
pub(super) struct MemoryCapHit;

impl std::fmt::Display for MemoryCapHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory limit of the hook reached")
    }
}
impl std::error::Error for MemoryCapHit {}

#[derive(Debug)]
pub(super) struct DeadlineHit;

impl std::fmt::Display for DeadlineHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wall-clock budget of the hook exhausted")
    }
}
impl std::error::Error for DeadlineHit {}

#[derive(Debug)]
pub(super) struct CancelHit;

impl std::fmt::Display for CancelHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the hook call was cancelled")
    }
}
impl std::error::Error for CancelHit {}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.hit = true;
            return Err(wasmtime::Error::new(MemoryCapHit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }
    fn tables(&self) -> usize {
        32
    }
    fn memories(&self) -> usize {
        8
    }
}
