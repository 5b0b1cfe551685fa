//! Test cartridge whose every hook spins forever: the host must stop it at
//! its wall-clock budget without harm to itself or to other hooks.

use std::hint::black_box;

use gearhost_sdk::{Cartridge, Result};

#[derive(Default)]
struct Loop;

/// Spins until the host interrupts the instance.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

impl Cartridge for Loop {
    fn build(&self) -> Result<()> {
        spin()
    }

    fn start(&self) -> Result<()> {
        spin()
    }

    fn stop(&self) -> Result<()> {
        spin()
    }

    fn control(&self, _action: &str, _args: &[String]) -> Result<String> {
        spin()
    }
}

gearhost_sdk::export_cartridge!(Loop);
