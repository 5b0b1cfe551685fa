//! Test cartridge whose every hook panics a few calls deep, so the trap the
//! host reports carries a backtrace with this crate's frames in it.

use std::hint::black_box;

use gearhost_sdk::{Cartridge, Result};

#[derive(Default)]
struct Panic;

#[inline(never)]
fn panic_now(hook: &str) -> ! {
    panic!("deliberate panic in {hook}")
}

#[inline(never)]
fn middle(hook: &str) -> ! {
    panic_now(black_box(hook))
}

#[inline(never)]
fn outer(hook: &str) -> ! {
    middle(black_box(hook))
}

impl Cartridge for Panic {
    fn build(&self) -> Result<()> {
        outer("build")
    }

    fn start(&self) -> Result<()> {
        outer("start")
    }

    fn stop(&self) -> Result<()> {
        outer("stop")
    }

    fn control(&self, _action: &str, _args: &[String]) -> Result<String> {
        outer("control")
    }
}

gearhost_sdk::export_cartridge!(Panic);
