//! Test cartridge that does what cartridges do with a gear's files, on a
//! path given as the control action's argument; the tests make those files
//! hostile (a FIFO, a leased file, a socket, a device, a sparse file of a
//! terabyte, a symlink loop, a huge directory, a very deep tree).
//!
//! Control actions, each with the path as its one argument:
//!
//! - `read`: the whole file into memory (`std::fs::read`, which reserves
//!   the file's size first);
//! - `slurp`: the whole file into memory, 64 KiB at a time, without looking
//!   at its size;
//! - `scan`: the whole file in 64 KiB reads, keeping nothing;
//! - `open-write`: open the file for writing;
//! - `first`: the name of the first entry of a directory;
//! - `count`: how many entries a directory has;
//! - `walk`: the tree below a directory, depth first: its depth and entries.
//!
//! A successful action answers with what it found; an I/O error fails the
//! hook with code `io` and the error's kind and text (e.g.
//! `Interrupted: ...`), so the tests can tell what the host answered.

use std::io::Read;
use std::path::Path;

use gearhost_sdk::{Cartridge, Error, Result};

#[derive(Default)]
struct Files;

fn io(what: &str, path: &str, e: &std::io::Error) -> Error {
    Error::new("io", format!("{:?}: {what} {path}: {e}", e.kind()))
}

/// The deepest level reached and the number of entries seen below `dir`.
fn walk(dir: &Path, depth: usize, stats: &mut (usize, u64)) -> std::io::Result<()> {
    stats.0 = stats.0.max(depth);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        stats.1 += 1;
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), depth + 1, stats)?;
        }
    }
    Ok(())
}

impl Cartridge for Files {
    const ACTIONS: &'static [&'static str] = &[
        "read",
        "slurp",
        "scan",
        "open-write",
        "first",
        "count",
        "walk",
    ];

    fn control(&self, action: &str, args: &[String]) -> Result<String> {
        let path = args
            .first()
            .ok_or_else(|| Error::new("usage", "give the path as the argument"))?;
        match action {
            "read" => {
                let bytes = std::fs::read(path).map_err(|e| io("read", path, &e))?;
                Ok(format!("read {} bytes", bytes.len()))
            }
            "slurp" => {
                let mut file = std::fs::File::open(path).map_err(|e| io("open", path, &e))?;
                let mut kept = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => return Ok(format!("kept {} bytes", kept.len())),
                        Ok(n) => kept.extend_from_slice(&buf[..n]),
                        Err(e) => return Err(io("read", path, &e)),
                    }
                }
            }
            "scan" => {
                let mut file = std::fs::File::open(path).map_err(|e| io("open", path, &e))?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut total: u64 = 0;
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => return Ok(format!("scanned {total} bytes")),
                        Ok(n) => total += n as u64,
                        Err(e) => return Err(io("read", path, &e)),
                    }
                }
            }
            "open-write" => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io("open", path, &e))?;
                Ok("opened".into())
            }
            "first" => {
                let mut entries = std::fs::read_dir(path).map_err(|e| io("list", path, &e))?;
                match entries.next() {
                    Some(Ok(entry)) => Ok(entry.file_name().to_string_lossy().into_owned()),
                    Some(Err(e)) => Err(io("list", path, &e)),
                    None => Ok(String::new()),
                }
            }
            "count" => {
                let mut n: u64 = 0;
                for entry in std::fs::read_dir(path).map_err(|e| io("list", path, &e))? {
                    entry.map_err(|e| io("list", path, &e))?;
                    n += 1;
                }
                Ok(format!("{n} entries"))
            }
            "walk" => {
                let mut stats = (0, 0);
                walk(Path::new(path), 0, &mut stats).map_err(|e| io("walk", path, &e))?;
                Ok(format!("depth {} entries {}", stats.0, stats.1))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Files);
