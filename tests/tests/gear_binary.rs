//! What the `gear` binary links: every start of `gear` pays for the size of
//! what it links (relocations, page faults), so the registry client (HTTP,
//! TLS) lives in `gearhost-registry` beside it, and `gear` has no regular
//! expression engine. Panic locations name each crate's source files, so a
//! crate whose code is linked leaves its path in the binary's read-only data
//! (`.rodata`; the debug line tables of a debug build name more, and are not
//! loaded). And `gear` is a static PIE (scripts/rustc-wrapper): no dynamic
//! loader and no shared library at start, still loaded at a random address.

use std::path::Path;

/// Source paths that only a linked registry client or regex engine leaves.
const KEPT_OUT: [&str; 5] = [
    "/oci-client-",
    "/reqwest-",
    "/rustls-0.",
    "/hyper-1.",
    "/regex-syntax-",
];

/// Little-endian reads from an ELF64 file (x86-64, aarch64); `None` past its end, or for a
/// file that is not ELF64 little-endian at all.
struct Elf<'a>(&'a [u8]);

impl<'a> Elf<'a> {
    fn new(file: &'a [u8]) -> Option<Elf<'a>> {
        (file.get(..6)? == b"\x7fELF\x02\x01").then_some(Elf(file))
    }

    fn u16_at(&self, at: usize) -> Option<usize> {
        Some(u16::from_le_bytes(self.0.get(at..at + 2)?.try_into().ok()?).into())
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.0.get(at..at + 4)?.try_into().ok()?))
    }

    fn u64_at(&self, at: usize) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(self.0.get(at..at + 8)?.try_into().ok()?)).ok()
    }
}

/// The contents of the ELF64 section `wanted` of `file`.
fn section<'a>(file: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let elf = Elf::new(file)?;
    let (shoff, entsize) = (elf.u64_at(0x28)?, elf.u16_at(0x3a)?);
    let (count, names_index) = (elf.u16_at(0x3c)?, elf.u16_at(0x3e)?);
    let header = |i: usize| shoff + i * entsize;
    let names_at = elf.u64_at(header(names_index) + 24)?;
    (0..count).find_map(|i| {
        let name_at = names_at + usize::try_from(elf.u32_at(header(i))?).ok()?;
        let name = file.get(name_at..name_at + wanted.len() + 1)?;
        if name[..wanted.len()] != *wanted.as_bytes() || name[wanted.len()] != 0 {
            return None;
        }
        let (offset, size) = (elf.u64_at(header(i) + 24)?, elf.u64_at(header(i) + 32)?);
        file.get(offset..offset + size)
    })
}

/// The ELF64 file type and the type of every program header of `file`.
fn program_headers(file: &[u8]) -> Option<(usize, Vec<u32>)> {
    let elf = Elf::new(file)?;
    let (phoff, entsize, count) = (elf.u64_at(0x20)?, elf.u16_at(0x36)?, elf.u16_at(0x38)?);
    let types = (0..count)
        .map(|i| elf.u32_at(phoff + i * entsize))
        .collect::<Option<Vec<u32>>>()?;
    Some((elf.u16_at(0x10)?, types))
}

fn crates_named_in(binary: &Path) -> Vec<&'static str> {
    let file =
        std::fs::read(binary).unwrap_or_else(|e| panic!("cannot read {}: {e}", binary.display()));
    let bytes = section(&file, ".rodata")
        .unwrap_or_else(|| panic!("{} has no .rodata section", binary.display()));
    KEPT_OUT
        .into_iter()
        .filter(|needle| {
            bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
        .collect()
}

#[test]
fn gear_links_no_registry_client_and_its_helper_does() {
    let gear = gearhost_tests::gear_bin();
    assert_eq!(
        crates_named_in(&gear),
        Vec::<&str>::new(),
        "{} links code that belongs in gearhost-registry",
        gear.display()
    );
    // the same scan finds the client where it is meant to be
    let helper = gear.with_file_name("gearhost-registry");
    let found = crates_named_in(&helper);
    assert!(
        found.contains(&"/oci-client-") && found.contains(&"/rustls-0."),
        "{} should link the registry client, found only {found:?}",
        helper.display()
    );
}

#[test]
fn gear_is_a_static_position_independent_executable() {
    const ET_DYN: usize = 3;
    const PT_INTERP: u32 = 3;
    let gear = gearhost_tests::gear_bin();
    let file =
        std::fs::read(&gear).unwrap_or_else(|e| panic!("cannot read {}: {e}", gear.display()));
    let (kind, headers) = program_headers(&file)
        .unwrap_or_else(|| panic!("{} is not a 64-bit little-endian ELF file", gear.display()));
    // position-independent: the kernel loads it at a random address
    assert_eq!(
        kind,
        ET_DYN,
        "{} is not position-independent",
        gear.display()
    );
    assert!(
        !headers.contains(&PT_INTERP),
        "{} names a dynamic loader: it was not linked through scripts/rustc-wrapper \
         (.cargo/config.toml; a RUSTC_WRAPPER in the environment replaces it)",
        gear.display()
    );
    // a control: the same reading finds the dynamic loader of the registry client beside it,
    // which is linked as usual
    let helper =
        std::fs::read(gear.with_file_name("gearhost-registry")).expect("read gearhost-registry");
    let (_, headers) = program_headers(&helper).expect("gearhost-registry is ELF");
    assert!(
        headers.contains(&PT_INTERP),
        "gearhost-registry should be dynamically linked"
    );
}
