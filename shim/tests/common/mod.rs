//! Helpers shared by the tests that run the real runc.

#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::process::Command;

/// The static busybox the test rootfs is made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// Why this machine cannot run the tests, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    match Command::new("runc").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("runc is not installed".into()),
    }
    match fs::read(BUSYBOX) {
        Ok(elf) if is_static_elf(&elf) => None,
        Ok(_) => Some(format!(
            "{BUSYBOX} is not statically linked (install busybox-static)"
        )),
        Err(_) => Some(format!("{BUSYBOX} is missing (install busybox-static)")),
    }
}

/// An ELF64 executable without a PT_INTERP program header.
pub fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = usize::try_from(phoff).unwrap() + i * usize::from(phentsize);
        u32_at(at).is_some_and(|typ| typ != 3)
    })
}
