//! Just enough ELF reading to tell a static executable from a dynamically linked one.

use anyhow::{Context as _, bail, ensure};

/// `PT_INTERP`: the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;

/// The program interpreter (dynamic loader) a 64-bit little-endian ELF executable asks for, or `None` for
/// a static executable (static-pie included).
pub fn interpreter(elf: &[u8]) -> anyhow::Result<Option<String>> {
    ensure!(elf.get(..4) == Some(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let phoff = usize::try_from(u64_at(elf, 0x20)?)?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        if u32_at(elf, header)? != PT_INTERP {
            continue;
        }
        let offset = usize::try_from(u64_at(elf, header + 8)?)?;
        let size = usize::try_from(u64_at(elf, header + 32)?)?;
        let Some(bytes) = elf.get(offset..offset + size) else {
            bail!("PT_INTERP points past the end of the file");
        };
        let path = bytes.split(|b| *b == 0).next().unwrap_or_default();
        return Ok(Some(String::from_utf8_lossy(path).into_owned()));
    }
    Ok(None)
}

fn bytes_at<const N: usize>(elf: &[u8], offset: usize) -> anyhow::Result<[u8; N]> {
    elf.get(offset..offset + N)
        .and_then(|b| b.try_into().ok())
        .context("ELF file truncated")
}

fn u16_at(elf: &[u8], offset: usize) -> anyhow::Result<u16> {
    Ok(u16::from_le_bytes(bytes_at(elf, offset)?))
}

fn u32_at(elf: &[u8], offset: usize) -> anyhow::Result<u32> {
    Ok(u32::from_le_bytes(bytes_at(elf, offset)?))
}

fn u64_at(elf: &[u8], offset: usize) -> anyhow::Result<u64> {
    Ok(u64::from_le_bytes(bytes_at(elf, offset)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_programs_are_dynamic_and_garbage_is_refused() {
        // The test binary itself is built for the host's gnu target: dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = interpreter(&me).unwrap().unwrap();
        assert!(interp.contains("ld-linux"), "{interp}");
        assert!(interpreter(b"#!/bin/sh\n").is_err());
        assert!(interpreter(b"\x7fELF\x02\x01").is_err());
    }
}
