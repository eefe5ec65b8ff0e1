//! Writing eStargz: a tar stream rewritten as a concatenation of gzip members, one per
//! file payload chunk, with its TOC and footer. Any gzip reader still sees the same tar
//! (plus `stargz.index.json` and a landmark file); a lazy reader finds every chunk from
//! the TOC.
//!
//! The input is spooled to a temp file first, so prioritized files can go before the
//! `.prefetch.landmark` whatever their place in the input, with metadata only in memory.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};
use strata_proto::Digest;

use super::footer::footer;
use super::read::sha256;
use super::toc::{
    LANDMARK_CONTENT, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME, TocEntry, TocJson,
    toc_time,
};
use crate::{Error, Result};

/// How to write the blob.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Uncompressed bytes per chunk (each its own gzip member); 0 means 4 MiB.
    pub chunk_size: u64,
    /// Paths (as in the layer, without a leading `/`) to put first, before the
    /// `.prefetch.landmark`, in this order.
    pub prefetch: Vec<String>,
    /// gzip level, 0-9.
    pub level: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_size: 4 << 20,
            prefetch: Vec::new(),
            level: 6,
        }
    }
}

/// What was written: the values for the layer's descriptor and config.
#[derive(Clone, Debug)]
pub struct Written {
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// sha256 of the uncompressed tar: the layer's diff_id.
    pub diff_id: Digest,
    /// Size of the uncompressed tar (`io.containers.estargz.uncompressed-size`).
    pub uncompressed_size: u64,
    /// sha256 of the TOC JSON (`containerd.io/snapshot/stargz/toc.digest`).
    pub toc_digest: Digest,
}

/// One input entry, its payload in the spool file.
struct Spooled {
    name: Vec<u8>,
    link: Vec<u8>,
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    uname: String,
    gname: String,
    mtime: u64,
    dev: (u32, u32),
    xattrs: BTreeMap<String, Vec<u8>>,
    size: u64,
    spool_at: u64,
}

/// Cleans an input name; `None` for the root, an error for `..`.
fn clean(raw: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(Error::invalid(format!(
                    "layer entry {:?} names a path outside the layer",
                    String::from_utf8_lossy(raw)
                )));
            }
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join(&b'/')))
}

fn spool(input: impl Read, file: &mut File) -> Result<Vec<Spooled>> {
    let mut ar = tar::Archive::new(input);
    let mut out = Vec::new();
    let mut at = 0u64;
    let entries = ar
        .entries()
        .map_err(|e| Error::invalid(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::invalid(format!("bad tar entry: {e}")))?;
        let kind = entry.header().entry_type().as_byte();
        let kind = match kind {
            b'\0' | b'7' => b'0',
            b'0' | b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => kind,
            // Extension headers the tar crate has not folded in (GNU sparse and such).
            other => {
                return Err(Error::invalid(format!(
                    "tar entry type {:?} cannot be converted",
                    other as char
                )));
            }
        };
        let raw_name = entry.path_bytes().into_owned();
        let Some(name) = clean(&raw_name)? else {
            continue;
        };
        if matches!(
            name.as_slice(),
            b"stargz.index.json" | b".prefetch.landmark" | b".no.prefetch.landmark"
        ) {
            // An eStargz layer converted again: its metadata is made afresh.
            continue;
        }
        let link = match entry.link_name_bytes() {
            Some(l) if kind == b'1' => clean(&l)?.unwrap_or_default(),
            Some(l) => l.into_owned(),
            None => Vec::new(),
        };
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| Error::invalid(format!("bad PAX header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| Error::invalid(format!("bad PAX record: {e}")))?;
                if let Some(k) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    let k = String::from_utf8(k.to_vec())
                        .map_err(|_| Error::invalid("xattr name is not UTF-8"))?;
                    xattrs.insert(k, ext.value_bytes().to_vec());
                }
            }
        }
        let h = entry.header();
        let num = |r: std::io::Result<u64>, what: &str| {
            r.map_err(|e| Error::invalid(format!("tar header {what}: {e}")))
        };
        let mode = num(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let uid = num(h.uid(), "uid")?;
        let gid = num(h.gid(), "gid")?;
        let mtime = num(h.mtime(), "mtime")?;
        let uname = h.username().ok().flatten().unwrap_or("").to_owned();
        let gname = h.groupname().ok().flatten().unwrap_or("").to_owned();
        let dev = (
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
        );
        let size = if kind == b'0' {
            std::io::copy(&mut entry, file).map_err(|e| Error::io_op("spool layer", e))?
        } else {
            0
        };
        out.push(Spooled {
            name,
            link,
            kind,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime,
            dev,
            xattrs,
            size,
            spool_at: at,
        });
        at += size;
    }
    Ok(out)
}

/// The order entries are written in: prioritized files (each after the directories
/// above it) first, then the rest in input order. Returns the order and how many are
/// prioritized.
fn order(entries: &[Spooled], prefetch: &[String]) -> (Vec<usize>, usize) {
    let by_name: BTreeMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_slice(), i))
        .collect();
    let mut first = Vec::new();
    let mut taken = HashSet::new();
    for p in prefetch {
        let Ok(Some(name)) = clean(p.as_bytes()) else {
            continue;
        };
        let Some(&i) = by_name.get(name.as_slice()) else {
            continue;
        };
        if entries[i].kind != b'0' || taken.contains(&i) {
            continue;
        }
        let mut dirs = Vec::new();
        let mut cut = name.as_slice();
        while let Some(pos) = cut.iter().rposition(|b| *b == b'/') {
            cut = &cut[..pos];
            if let Some(&d) = by_name.get(cut) {
                dirs.push(d);
            }
        }
        for d in dirs.into_iter().rev() {
            if taken.insert(d) {
                first.push(d);
            }
        }
        taken.insert(i);
        first.push(i);
    }
    let n = first.len();
    first.extend((0..entries.len()).filter(|i| !taken.contains(i)));
    (first, n)
}

/// Counts and hashes what reaches the output.
struct Out<W> {
    inner: W,
    written: u64,
    hash: Sha256,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.inner
            .write_all(b)
            .map_err(|e| Error::io_op("write eStargz blob", e))?;
        self.written += b.len() as u64;
        self.hash.update(b);
        Ok(())
    }
}

/// The gzip member being written and the uncompressed stream's hash.
struct Members<W> {
    out: Out<W>,
    member: flate2::write::GzEncoder<Vec<u8>>,
    member_start: u64,
    member_len: u64,
    level: flate2::Compression,
    diff: Sha256,
    uncompressed: u64,
}

impl<W: Write> Members<W> {
    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.member
            .write_all(b)
            .map_err(|e| Error::io_op("compress", e))?;
        self.member_len += b.len() as u64;
        self.diff.update(b);
        self.uncompressed += b.len() as u64;
        Ok(())
    }

    /// Ends the current member (unless it is still empty) and returns the offset the
    /// next one starts at.
    fn cut(&mut self) -> Result<u64> {
        if self.member_len > 0 {
            let m = std::mem::replace(
                &mut self.member,
                flate2::write::GzEncoder::new(Vec::new(), self.level),
            );
            let bytes = m.finish().map_err(|e| Error::io_op("compress", e))?;
            self.out.put(&bytes)?;
            self.member_start = self.out.written;
            self.member_len = 0;
        }
        Ok(self.member_start)
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let pad = (512 - len % 512) % 512;
        self.write(&vec![0u8; pad as usize])
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The tar header block(s) of one entry: a PAX header first when the name, the link
/// or an id does not fit ustar, or there are xattrs.
fn headers(e: &Spooled) -> Result<Vec<u8>> {
    const USTAR_MAX_ID: u64 = 0o7777777;
    let mut name = e.name.clone();
    if e.kind == b'5' {
        name.push(b'/');
    }
    let mut pax = Vec::new();
    if name.len() > 100 {
        pax.extend(pax_record("path", &name));
    }
    if e.link.len() > 100 {
        pax.extend(pax_record("linkpath", &e.link));
    }
    if e.uid > USTAR_MAX_ID {
        pax.extend(pax_record("uid", e.uid.to_string().as_bytes()));
    }
    if e.gid > USTAR_MAX_ID {
        pax.extend(pax_record("gid", e.gid.to_string().as_bytes()));
    }
    for (k, v) in &e.xattrs {
        pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
    }
    let mut out = Vec::new();
    let ustar = |kind: u8, name: &[u8], link: &[u8], size: u64| -> Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(e.mode);
        h.set_uid(e.uid.min(USTAR_MAX_ID));
        h.set_gid(e.gid.min(USTAR_MAX_ID));
        h.set_mtime(e.mtime);
        h.set_size(size);
        // Names that do not fit the 32-byte fields are dropped; ids decide.
        let _ = h.set_username(&e.uname);
        let _ = h.set_groupname(&e.gname);
        if matches!(kind, b'3' | b'4') {
            h.set_device_major(e.dev.0)
                .map_err(|err| Error::invalid(format!("device number: {err}")))?;
            h.set_device_minor(e.dev.1)
                .map_err(|err| Error::invalid(format!("device number: {err}")))?;
        }
        h.set_cksum();
        Ok(h)
    };
    if !pax.is_empty() {
        let h = ustar(b'x', b"PaxHeader", b"", pax.len() as u64)?;
        out.extend_from_slice(h.as_bytes());
        let len = pax.len();
        out.extend(pax);
        out.extend(std::iter::repeat_n(0, (512 - len % 512) % 512));
    }
    let h = ustar(e.kind, &name, &e.link, e.size)?;
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

fn toc_entry(e: &Spooled) -> TocEntry {
    use base64::Engine as _;
    let kind = match e.kind {
        b'0' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        _ => "fifo",
    };
    TocEntry {
        name: String::from_utf8_lossy(&e.name).into_owned(),
        kind: kind.to_owned(),
        size: e.size,
        modtime: toc_time(e.mtime as i64),
        link_name: String::from_utf8_lossy(&e.link).into_owned(),
        mode: u64::from(e.mode),
        uid: e.uid,
        gid: e.gid,
        user_name: e.uname.clone(),
        group_name: e.gname.clone(),
        dev_major: u64::from(e.dev.0),
        dev_minor: u64::from(e.dev.1),
        xattrs: e
            .xattrs
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn landmark(name: &str) -> Spooled {
    Spooled {
        name: name.as_bytes().to_vec(),
        link: Vec::new(),
        kind: b'0',
        mode: 0o644,
        uid: 0,
        gid: 0,
        uname: String::new(),
        gname: String::new(),
        mtime: 0,
        dev: (0, 0),
        xattrs: BTreeMap::new(),
        size: 1,
        spool_at: u64::MAX,
    }
}

/// Rewrites the uncompressed tar `input` as an eStargz blob into `out`.
pub fn write_estargz(input: impl Read, out: impl Write, opts: &WriteOptions) -> Result<Written> {
    // TOC names must be UTF-8 (JSON strings): a layer whose names are not cannot be
    // served lazily, so it is refused here rather than renamed.
    let mut spool_file = tempfile::tempfile().map_err(|e| Error::io_op("spool file", e))?;
    let entries = spool(input, &mut spool_file)?;
    if let Some(e) = entries
        .iter()
        .find(|e| std::str::from_utf8(&e.name).is_err() || std::str::from_utf8(&e.link).is_err())
    {
        return Err(Error::invalid(format!(
            "layer entry {:?} is not UTF-8, which a TOC cannot name",
            String::from_utf8_lossy(&e.name)
        )));
    }
    let (order, prioritized) = order(&entries, &opts.prefetch);
    let chunk_size = if opts.chunk_size == 0 {
        4 << 20
    } else {
        opts.chunk_size
    };
    let level = flate2::Compression::new(opts.level.min(9));
    let mut m = Members {
        out: Out {
            inner: out,
            written: 0,
            hash: Sha256::new(),
        },
        member: flate2::write::GzEncoder::new(Vec::new(), level),
        member_start: 0,
        member_len: 0,
        level,
        diff: Sha256::new(),
        uncompressed: 0,
    };
    let mut toc = TocJson {
        version: 1,
        entries: Vec::new(),
    };
    let mut buf = vec![0u8; chunk_size.min(8 << 20) as usize];
    let mut write_entry = |m: &mut Members<_>, toc: &mut TocJson, e: &Spooled| -> Result<()> {
        m.write(&headers(e)?)?;
        let mut te = toc_entry(e);
        if e.kind != b'0' {
            toc.entries.push(te);
            return Ok(());
        }
        if e.size == 0 {
            te.digest = sha256(b"").to_string();
            toc.entries.push(te);
            return Ok(());
        }
        let mut file_hash = Sha256::new();
        let mut chunks = Vec::new();
        let mut done = 0u64;
        while done < e.size {
            let len = chunk_size.min(e.size - done);
            let offset = m.cut()?;
            let mut chunk_hash = Sha256::new();
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                if e.spool_at == u64::MAX {
                    buf[..n].fill(LANDMARK_CONTENT);
                } else {
                    spool_file
                        .seek(SeekFrom::Start(e.spool_at + done + (len - left)))
                        .and_then(|_| spool_file.read_exact(&mut buf[..n]))
                        .map_err(|err| Error::io_op("read spool file", err))?;
                }
                chunk_hash.update(&buf[..n]);
                file_hash.update(&buf[..n]);
                m.write(&buf[..n])?;
                left -= n as u64;
            }
            let chunk_digest =
                Digest::parse(&format!("sha256:{}", hex::encode(chunk_hash.finalize())))
                    .expect("a sha256 digest is valid");
            chunks.push((offset, done, len, chunk_digest));
            done += len;
        }
        m.pad(e.size)?;
        let chunked = chunks.len() > 1;
        let file_digest = format!("sha256:{}", hex::encode(file_hash.finalize()));
        for (i, (offset, chunk_offset, len, digest)) in chunks.into_iter().enumerate() {
            let mut c = if i == 0 {
                std::mem::take(&mut te)
            } else {
                TocEntry {
                    name: String::from_utf8_lossy(&e.name).into_owned(),
                    kind: "chunk".into(),
                    ..Default::default()
                }
            };
            if i == 0 {
                c.digest = file_digest.clone();
            }
            c.offset = offset;
            c.chunk_offset = chunk_offset;
            c.chunk_size = if chunked { len } else { 0 };
            c.chunk_digest = digest.to_string();
            toc.entries.push(c);
        }
        Ok(())
    };
    if prioritized == 0 {
        write_entry(&mut m, &mut toc, &landmark(NO_PREFETCH_LANDMARK))?;
    }
    for (n, &i) in order.iter().enumerate() {
        if n == prioritized && prioritized > 0 {
            write_entry(&mut m, &mut toc, &landmark(PREFETCH_LANDMARK))?;
        }
        write_entry(&mut m, &mut toc, &entries[i])?;
    }
    if prioritized > 0 && prioritized == order.len() {
        write_entry(&mut m, &mut toc, &landmark(PREFETCH_LANDMARK))?;
    }
    let json = serde_json::to_vec(&toc).map_err(|e| Error::internal("encode TOC", e))?;
    let toc_digest = sha256(&json);
    let toc_offset = m.cut()?;
    let toc_header = Spooled {
        size: json.len() as u64,
        ..landmark(TOC_NAME)
    };
    m.write(&headers(&toc_header)?)?;
    m.write(&json)?;
    m.pad(json.len() as u64)?;
    m.write(&[0u8; 1024])?;
    m.cut()?;
    m.out.put(&footer(toc_offset))?;
    m.out
        .inner
        .flush()
        .map_err(|e| Error::io_op("write eStargz blob", e))?;
    let hex_of = |h: Sha256| {
        Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))
            .expect("a sha256 digest is valid")
    };
    Ok(Written {
        digest: hex_of(m.out.hash),
        size: m.out.written,
        diff_id: hex_of(m.diff),
        uncompressed_size: m.uncompressed,
        toc_digest,
    })
}
