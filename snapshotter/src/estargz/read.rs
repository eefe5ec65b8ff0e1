//! Reading an eStargz blob through random access: the footer, the TOC (verified against
//! the digest the layer's descriptor names) and single chunks (verified against their
//! TOC digests). Nothing read here is trusted before its digest matches.

use std::io::Read;

use sha2::{Digest as _, Sha256};
use strata_proto::Digest;

use super::footer::{FOOTER_SIZE, parse_footer};
use super::toc::{Chunk, TOC_NAME, TocLimits, Tree};
use crate::remote::{BlobSource, RemoteBlob};
use crate::{Error, Result};

/// `sha256:<hex>` of `data`, as a digest.
pub fn sha256(data: &[u8]) -> Digest {
    Digest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(data))))
        .expect("a sha256 digest is valid")
}

/// Reads exactly `range` of `blob`, refusing a source that answers with another length.
fn read_exact(
    src: &dyn BlobSource,
    blob: &RemoteBlob,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>> {
    let want = range.end - range.start;
    let got = src.read_range(blob, range.clone())?;
    if got.len() as u64 != want {
        return Err(Error::data_loss(format!(
            "blob {} answered {} bytes for range {}..{} ({want} asked)",
            blob.digest,
            got.len(),
            range.start,
            range.end
        )));
    }
    Ok(got)
}

/// The TOC JSON in the TOC member's bytes: one gzip member holding a tar whose first
/// entry is `stargz.index.json`.
pub fn toc_json(member: &[u8], limits: &TocLimits) -> Result<Vec<u8>> {
    let cap = limits.max_json + 1024;
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(member)
        .take(cap + 1)
        .read_to_end(&mut tar)
        .map_err(|e| Error::invalid(format!("eStargz TOC member does not inflate: {e}")))?;
    if tar.len() < 512 {
        return Err(Error::invalid("eStargz TOC member holds no tar header"));
    }
    let mut block = [0u8; 512];
    block.copy_from_slice(&tar[..512]);
    let h = tar::Header::from_byte_slice(&block);
    if h.path_bytes().as_ref() != TOC_NAME.as_bytes() {
        return Err(Error::invalid(format!(
            "eStargz TOC member's first entry is {:?}, not {TOC_NAME}",
            String::from_utf8_lossy(&h.path_bytes())
        )));
    }
    let size = h
        .entry_size()
        .map_err(|e| Error::invalid(format!("eStargz TOC header: {e}")))?;
    if size > limits.max_json {
        return Err(Error::invalid(format!(
            "eStargz TOC of {size} bytes is over the cap of {}",
            limits.max_json
        )));
    }
    let end = 512 + size as usize;
    if tar.len() < end {
        return Err(Error::invalid("eStargz TOC member ends inside the TOC"));
    }
    tar.truncate(end);
    tar.drain(..512);
    Ok(tar)
}

/// Fetches and checks a layer's TOC: the footer names its offset, its JSON must hash to
/// `toc_digest` (the descriptor's `containerd.io/snapshot/stargz/toc.digest`).
pub fn fetch_tree(
    src: &dyn BlobSource,
    blob: &RemoteBlob,
    toc_digest: &Digest,
    limits: &TocLimits,
) -> Result<Tree> {
    fetch_toc(src, blob, toc_digest, limits).map(|(tree, _)| tree)
}

/// [`fetch_tree`], with the verified TOC JSON (to keep for mounting the layer again).
pub fn fetch_toc(
    src: &dyn BlobSource,
    blob: &RemoteBlob,
    toc_digest: &Digest,
    limits: &TocLimits,
) -> Result<(Tree, Vec<u8>)> {
    let (json, toc_offset) = fetch_toc_json(src, blob, limits)?;
    check_toc_digest(&json, blob, toc_digest)?;
    let tree = Tree::from_json(&json, toc_offset, limits)?;
    Ok((tree, json))
}

/// A layer's TOC JSON, not yet verified, and where the TOC starts in the blob.
pub fn fetch_toc_json(
    src: &dyn BlobSource,
    blob: &RemoteBlob,
    limits: &TocLimits,
) -> Result<(Vec<u8>, u64)> {
    if blob.size < FOOTER_SIZE {
        return Err(Error::invalid(format!(
            "blob {} of {} bytes is too small to be eStargz",
            blob.digest, blob.size
        )));
    }
    let footer = read_exact(src, blob, blob.size - FOOTER_SIZE..blob.size)?;
    let toc_offset = parse_footer(&footer, blob.size)?;
    let toc_len = blob.size - FOOTER_SIZE - toc_offset;
    // Deflate never shrinks the cap's worth of JSON below a fraction of its size, so a
    // member past the cap need not be fetched to be refused.
    if toc_len > limits.max_json + (64 << 10) {
        return Err(Error::invalid(format!(
            "eStargz TOC member of {toc_len} bytes is over the cap"
        )));
    }
    let member = read_exact(src, blob, toc_offset..blob.size - FOOTER_SIZE)?;
    Ok((toc_json(&member, limits)?, toc_offset))
}

/// Refuses TOC JSON of `blob` that does not hash to `toc_digest` (the descriptor's
/// `containerd.io/snapshot/stargz/toc.digest`).
pub fn check_toc_digest(json: &[u8], blob: &RemoteBlob, toc_digest: &Digest) -> Result<()> {
    let got = sha256(json);
    if &got != toc_digest {
        return Err(Error::invalid(format!(
            "eStargz TOC of blob {} hashes to {got}, not the {toc_digest} its descriptor names",
            blob.digest
        )));
    }
    Ok(())
}

/// The uncompressed bytes of `chunk` from its member's compressed bytes
/// (`chunk.blob_offset..chunk.blob_end`), verified against its digest.
pub fn decode_chunk(member: &[u8], chunk: &Chunk) -> Result<Vec<u8>> {
    let want = chunk.inner_offset + chunk.size;
    let mut out = Vec::with_capacity(chunk.size as usize);
    let mut dec = flate2::read::GzDecoder::new(member);
    if chunk.inner_offset > 0 {
        std::io::copy(
            &mut (&mut dec).take(chunk.inner_offset),
            &mut std::io::sink(),
        )
        .map_err(|e| Error::data_loss(format!("chunk does not inflate: {e}")))?;
    }
    dec.take(chunk.size)
        .read_to_end(&mut out)
        .map_err(|e| Error::data_loss(format!("chunk does not inflate: {e}")))?;
    if (out.len() as u64) + chunk.inner_offset != want {
        return Err(Error::data_loss(format!(
            "chunk inflates to {} bytes, {} expected",
            out.len(),
            chunk.size
        )));
    }
    let got = sha256(&out);
    if got != chunk.digest {
        return Err(Error::data_loss(format!(
            "chunk hashes to {got}, not the {} its TOC names",
            chunk.digest
        )));
    }
    Ok(out)
}
