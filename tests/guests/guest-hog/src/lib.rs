//! Test cartridge whose every hook allocates memory without bound: the host
//! must stop it at its memory cap without harm to itself.

use std::hint::black_box;

use gearhost_sdk::{Cartridge, Result};

#[derive(Default)]
struct Hog;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

/// Allocates 1 MiB chunks forever, writing to every page of each and keeping
/// all of them alive.
fn hog() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for (i, page) in chunk.chunks_mut(PAGE).enumerate() {
            page[0] = i as u8 | 1;
        }
        kept.push(black_box(chunk));
        black_box(&kept);
    }
}

impl Cartridge for Hog {
    fn build(&self) -> Result<()> {
        hog()
    }

    fn start(&self) -> Result<()> {
        hog()
    }

    fn stop(&self) -> Result<()> {
        hog()
    }

    fn control(&self, _action: &str, _args: &[String]) -> Result<String> {
        hog()
    }
}

gearhost_sdk::export_cartridge!(Hog);
