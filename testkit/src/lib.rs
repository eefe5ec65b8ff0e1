//! Builders shared by strata's test suites, so that each exists once: a tar writer that
//! writes any bytes as names, links, types and PAX records ([`Tar`]); compression
//! ([`gzip`], [`zstd()`]); metadata snapshots of a tree to compare ([`Snapshot`]); and
//! sandboxes with sentinels outside a root that must never change ([`Sandbox`]).
//!
//! A dev-dependency only: nothing here is used by a shipped binary.

#![allow(clippy::missing_panics_doc)]

mod sandbox;
mod tar;
mod tree;

pub use sandbox::{Sandbox, set_mtime};
pub use tar::{Tar, pax_record};
pub use tree::{Node, Snapshot, node, xattr, xattrs};

use sha2::Digest as _;

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `len` bytes that do not compress (xorshift from `seed`; the same seed, the same bytes).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The seed the tests' incompressible data starts from when one will do.
pub const NOISE_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// `data` gzip-compressed at the default level.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// `data` zstd-compressed at level 3.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).expect("zstd into memory")
}

/// Whether this process runs as root (chown, mknod and trusted xattrs need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The peak resident set of this process, in MiB.
pub fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kb / 1024
}

/// Skips a test that needs root, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root (chown, mknod, trusted xattrs)");
            return;
        }
    };
}
