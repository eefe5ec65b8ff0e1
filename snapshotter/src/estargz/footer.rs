//! The 51-byte footer that ends an eStargz blob: an empty gzip member whose header's
//! extra field carries the TOC's offset (`S`,`G`, 22 bytes: `%016x` + `STARGZ`).

use crate::{Error, Result};

/// Size of the footer.
pub const FOOTER_SIZE: u64 = 51;

const MAGIC: &[u8; 6] = b"STARGZ";

/// The footer for a TOC member starting at `toc_offset`.
pub fn footer(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut f = [0u8; FOOTER_SIZE as usize];
    // gzip header: ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL=0 OS=unknown XLEN=26.
    f[..12].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0]);
    // Extra subfield 'S','G' of 22 bytes.
    f[12..16].copy_from_slice(&[b'S', b'G', 22, 0]);
    f[16..32].copy_from_slice(format!("{toc_offset:016x}").as_bytes());
    f[32..38].copy_from_slice(MAGIC);
    // An empty stored final block, then CRC32 = 0 and ISIZE = 0 of the empty payload.
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// The TOC offset a footer names, checked to lie before the footer itself in a blob of
/// `blob_size` bytes.
pub fn parse_footer(f: &[u8], blob_size: u64) -> Result<u64> {
    let bad = |why: &str| Error::invalid(format!("not an eStargz footer: {why}"));
    if f.len() != FOOTER_SIZE as usize {
        return Err(bad("wrong length"));
    }
    if f[..4] != [0x1f, 0x8b, 0x08, 0x04] {
        return Err(bad("not a gzip member with an extra field"));
    }
    if f[10..12] != [26, 0] || f[12..16] != [b'S', b'G', 22, 0] {
        return Err(bad("no 'SG' extra subfield of 22 bytes"));
    }
    if &f[32..38] != MAGIC {
        return Err(bad("no STARGZ magic"));
    }
    // The rest must be the empty member the writer makes, so the footer inflates to
    // nothing for a plain gzip reader.
    if f[38..] != [0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0] {
        return Err(bad("the footer member is not empty"));
    }
    let hex = std::str::from_utf8(&f[16..32]).map_err(|_| bad("offset is not hex"))?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("offset is not hex"));
    }
    let off = u64::from_str_radix(hex, 16).map_err(|_| bad("offset is not hex"))?;
    if blob_size < FOOTER_SIZE || off >= blob_size - FOOTER_SIZE {
        return Err(Error::invalid(format!(
            "eStargz footer names TOC offset {off}, past the blob ({blob_size} bytes)"
        )));
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn footer_round_trips_and_is_an_empty_gzip_member() {
        let f = footer(0x1234_5678);
        assert_eq!(parse_footer(&f, 0x2000_0000).unwrap(), 0x1234_5678);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(&f[16..38], b"0000000012345678STARGZ");
    }

    #[test]
    fn hostile_footers_are_refused() {
        let good = footer(100);
        assert!(parse_footer(&good[..50], 1000).is_err());
        for (i, b) in [(0, 0u8), (3, 0), (12, b'X'), (14, 21), (32, b'X'), (40, 1)] {
            let mut f = good;
            f[i] = b;
            assert!(parse_footer(&f, 1000).is_err(), "byte {i} = {b}");
        }
        let mut f = good;
        f[16] = b'g';
        assert!(parse_footer(&f, 1000).is_err());
        // An offset at or past the footer.
        assert!(parse_footer(&footer(949), 1000).is_err());
        assert!(parse_footer(&footer(u64::MAX), 1000).is_err());
        assert!(parse_footer(&footer(0), 10).is_err());
        assert_eq!(parse_footer(&footer(948), 1000).unwrap(), 948);
    }
}
