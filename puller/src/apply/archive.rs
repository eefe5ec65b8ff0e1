//! The tar stream reader: frames headers and bodies, merges PAX / GNU long-name
//! extension headers into the entry they describe, hashes every byte read (the diff_id),
//! and enforces the size and count limits.
//!
//! The `tar` crate parses header fields here, but the framing is our own: its
//! `Entries` iterator reads PAX and GNU long-name bodies into memory with no bound, and
//! splits PAX records on newlines, which breaks binary xattr values (a
//! `security.capability` holding `CAP_DAC_OVERRIDE | CAP_FOWNER` contains `\n`).
//! Records are read by their length prefix, as POSIX specifies.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};
use strata_proto::{Algorithm, Digest};

use crate::decompress::read_error;
use crate::{ApplyError, ApplyResult, EntryName, Limit, Limits};

const BLOCK: u64 = 512;
const CHUNK: usize = 128 * 1024;

/// A point in time as tar carries it: seconds since the epoch and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timestamp {
    pub(crate) sec: i64,
    pub(crate) nsec: u32,
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Char,
    Block,
    Fifo,
}

/// One tar entry, its extension headers merged in. Its body (for files) is read with
/// [`TarReader::copy_body`]; whatever is left is skipped by the next
/// [`TarReader::next_entry`].
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub(crate) kind: Kind,
    pub(crate) path: Vec<u8>,
    pub(crate) link: Vec<u8>,
    pub(crate) size: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) mtime: Timestamp,
    pub(crate) atime: Option<Timestamp>,
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Timestamp>,
    atime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse: bool,
}

/// Reads a tar stream block by block.
pub(crate) struct TarReader<'l, R> {
    inner: R,
    limits: &'l Limits,
    /// `None` when the caller hashes the stream itself (on another thread).
    hasher: Option<Sha256>,
    /// Bytes consumed from `inner`.
    pos: u64,
    /// Body bytes of the current entry not yet consumed.
    body_left: u64,
    /// Padding after the current entry's body.
    pad_left: u64,
    entries: u64,
    buf: Vec<u8>,
}

impl<'l, R: Read> TarReader<'l, R> {
    /// Leaves hashing to the caller: [`finish`](Self::finish) then returns the digest of
    /// nothing, and the caller's digest of the whole stream is the diff_id.
    pub(crate) fn without_hash(mut self) -> Self {
        self.hasher = None;
        self
    }

    pub(crate) fn new(inner: R, limits: &'l Limits) -> Self {
        TarReader {
            inner,
            limits,
            hasher: Some(Sha256::new()),
            pos: 0,
            body_left: 0,
            pad_left: 0,
            entries: 0,
            buf: vec![0; CHUNK],
        }
    }

    /// One read from the stream, hashed and counted against the total limit.
    fn read_some(&mut self, buf: &mut [u8]) -> ApplyResult<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    if let Some(h) = &mut self.hasher {
                        h.update(&buf[..n]);
                    }
                    self.pos += n as u64;
                    if self.pos > self.limits.max_total_bytes {
                        return Err(ApplyError::LimitExceeded {
                            what: Limit::TotalBytes,
                            limit: self.limits.max_total_bytes,
                            at: None,
                        });
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e, self.limits)),
            }
        }
    }

    /// Fills `buf`; `Ok(false)` at a clean end of stream before the first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> ApplyResult<bool> {
        let start = self.pos;
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_some(&mut buf[n..])?;
            if k == 0 {
                if n == 0 {
                    return Ok(false);
                }
                return Err(self.truncated(start));
            }
            n += k;
        }
        Ok(true)
    }

    fn truncated(&self, offset: u64) -> ApplyError {
        ApplyError::Malformed {
            offset,
            reason: "truncated stream".into(),
        }
    }

    /// Consumes `n` bytes.
    fn skip(&mut self, mut n: u64) -> ApplyResult<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| {
            while n > 0 {
                let want = n.min(buf.len() as u64) as usize;
                let k = self.read_some(&mut buf[..want])?;
                if k == 0 {
                    return Err(self.truncated(self.pos));
                }
                n -= k as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        res
    }

    /// Reads an extension header's body (already checked against the size limit) and
    /// its padding.
    fn read_body(&mut self, size: u64) -> ApplyResult<Vec<u8>> {
        let mut v = vec![0; size as usize];
        if !self.read_full(&mut v)? && size > 0 {
            return Err(self.truncated(self.pos));
        }
        self.skip(padding(size))?;
        Ok(v)
    }

    /// Writes the current entry's body to `w`. The outer error is a failure of the
    /// stream, the inner one a failure of `w`.
    pub(crate) fn copy_body(&mut self, w: &mut impl Write) -> ApplyResult<io::Result<()>> {
        let mut buf = std::mem::take(&mut self.buf);
        let res = (|| {
            while self.body_left > 0 {
                let want = self.body_left.min(buf.len() as u64) as usize;
                let k = self.read_some(&mut buf[..want])?;
                if k == 0 {
                    return Err(self.truncated(self.pos));
                }
                self.body_left -= k as u64;
                if let Err(e) = w.write_all(&buf[..k]) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        })();
        self.buf = buf;
        res
    }

    /// The next entry, or `None` at the end-of-archive marker (or a clean end of the
    /// stream at a header boundary, as Go's archive/tar accepts).
    pub(crate) fn next_entry(&mut self) -> ApplyResult<Option<RawEntry>> {
        self.skip(self.body_left + self.pad_left)?;
        self.body_left = 0;
        self.pad_left = 0;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut block = [0u8; BLOCK as usize];
        loop {
            let offset = self.pos;
            let pending = pax.is_some() || long_name.is_some() || long_link.is_some();
            let malformed = |reason: &str| ApplyError::Malformed {
                offset,
                reason: reason.to_owned(),
            };
            if !self.read_full(&mut block)? || block.iter().all(|b| *b == 0) {
                if pending {
                    return Err(malformed("extension header without an entry"));
                }
                return Ok(None);
            }
            check_checksum(&block).map_err(&malformed)?;
            let header = tar::Header::from_byte_slice(&block);
            let typeflag = block[156];
            let header_size = header
                .entry_size()
                .map_err(|_| malformed("invalid size field"))?;

            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    if header_size > self.limits.max_header_size {
                        return Err(ApplyError::LimitExceeded {
                            what: Limit::HeaderSize,
                            limit: self.limits.max_header_size,
                            at: Some(EntryName::new(&header.path_bytes())),
                        });
                    }
                    let body = self.read_body(header_size)?;
                    match typeflag {
                        b'x' => {
                            if pax.is_some() {
                                return Err(malformed("two PAX headers for one entry"));
                            }
                            pax = Some(parse_pax(&body).map_err(&malformed)?);
                        }
                        b'g' => tracing::debug!("ignoring a PAX global header"),
                        b'L' => {
                            if long_name.is_some() {
                                return Err(malformed("two long names for one entry"));
                            }
                            long_name = Some(cut_at_nul(body));
                        }
                        _ => {
                            if long_link.is_some() {
                                return Err(malformed("two long link names for one entry"));
                            }
                            long_link = Some(cut_at_nul(body));
                        }
                    }
                    continue;
                }
                _ => {}
            }

            self.entries += 1;
            let pax = pax.unwrap_or_default();
            let path = pax
                .path
                .or(long_name)
                .unwrap_or_else(|| header.path_bytes().into_owned());
            if self.entries > self.limits.max_entries {
                return Err(ApplyError::LimitExceeded {
                    what: Limit::Entries,
                    limit: self.limits.max_entries,
                    at: Some(EntryName::new(&path)),
                });
            }
            let link = pax
                .linkpath
                .or(long_link)
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned()))
                .unwrap_or_default();
            let refused = |reason: &str| ApplyError::refused(&path, reason);
            if pax.sparse {
                return Err(refused("sparse files are not supported"));
            }
            let kind = match typeflag {
                b'0' | b'7' => Kind::File,
                // Pre-POSIX tar: a regular file named with a trailing slash is a directory.
                0 if path.ends_with(b"/") => Kind::Dir,
                0 => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                b'S' => return Err(refused("sparse files are not supported")),
                other => {
                    return Err(refused(&format!(
                        "unsupported entry type {:?}",
                        char::from(other).escape_default().to_string()
                    )));
                }
            };
            let size = pax.size.unwrap_or(header_size);
            // As Go's archive/tar (and so containerd): entries that are only a header
            // have no body, whatever their size field says.
            self.body_left = if kind == Kind::File { size } else { 0 };
            self.pad_left = padding(self.body_left);

            let field = |name: &str| malformed(&format!("invalid {name} field"));
            let mtime = match pax.mtime {
                Some(t) => t,
                None => Timestamp {
                    sec: i64::try_from(header.mtime().map_err(|_| field("mtime"))?)
                        .map_err(|_| field("mtime"))?,
                    nsec: 0,
                },
            };
            let (dev_major, dev_minor) = if matches!(kind, Kind::Char | Kind::Block) {
                (
                    header
                        .device_major()
                        .map_err(|_| field("device major"))?
                        .unwrap_or(0),
                    header
                        .device_minor()
                        .map_err(|_| field("device minor"))?
                        .unwrap_or(0),
                )
            } else {
                (0, 0)
            };
            return Ok(Some(RawEntry {
                kind,
                size: self.body_left,
                mode: header.mode().map_err(|_| field("mode"))?,
                uid: match pax.uid {
                    Some(u) => u,
                    None => header.uid().map_err(|_| field("uid"))?,
                },
                gid: match pax.gid {
                    Some(g) => g,
                    None => header.gid().map_err(|_| field("gid"))?,
                },
                mtime,
                atime: pax.atime,
                dev_major,
                dev_minor,
                xattrs: pax.xattrs,
                path,
                link,
            }));
        }
    }

    /// Reads the rest of the stream (after the end-of-archive marker) into the hash and
    /// returns the diff_id and the number of uncompressed bytes.
    pub(crate) fn finish(mut self) -> ApplyResult<(Digest, u64)> {
        let mut buf = std::mem::take(&mut self.buf);
        while self.read_some(&mut buf)? > 0 {}
        let hash = self.hasher.take().unwrap_or_default().finalize();
        let digest = Digest::from_bytes(Algorithm::Sha256, &hash).expect("a sha256 is 32 bytes");
        Ok((digest, self.pos))
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

fn cut_at_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|b| *b == 0) {
        v.truncate(i);
    }
    v
}

/// Verifies a header's checksum: the byte sum with the checksum field as spaces.
/// Historic tars summed signed bytes; both are accepted, as GNU tar does.
fn check_checksum(block: &[u8; BLOCK as usize]) -> ApplyResult<(), &'static str> {
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return Err("invalid checksum field");
    }
    let stored = u64::from_str_radix(std::str::from_utf8(&digits).expect("octal digits"), 8)
        .map_err(|_| "invalid checksum field")?;
    let mut unsigned: u64 = 8 * u64::from(b' ');
    let mut signed: i64 = 8 * i64::from(b' ');
    for (i, b) in block.iter().enumerate() {
        if !(148..156).contains(&i) {
            unsigned += u64::from(*b);
            signed += i64::from(*b as i8);
        }
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err("header checksum mismatch")
    }
}

/// Parses PAX records, `"<len> <key>=<value>\n"` where `len` counts the whole record.
fn parse_pax(body: &[u8]) -> ApplyResult<Pax, &'static str> {
    let mut pax = Pax::default();
    let mut rest = body;
    while !rest.is_empty() {
        // A NUL-padded tail ends the records (some writers pad).
        if rest.iter().all(|b| *b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or("malformed PAX record")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("malformed PAX record length")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("malformed PAX record length");
        }
        let record = &rest[sp + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("malformed PAX record")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(parse_decimal(value).ok_or("invalid PAX size")?),
            b"uid" => pax.uid = Some(parse_decimal(value).ok_or("invalid PAX uid")?),
            b"gid" => pax.gid = Some(parse_decimal(value).ok_or("invalid PAX gid")?),
            b"mtime" => pax.mtime = Some(parse_time(value).ok_or("invalid PAX mtime")?),
            b"atime" => pax.atime = Some(parse_time(value).ok_or("invalid PAX atime")?),
            _ if key.starts_with(b"SCHILY.xattr.") => {
                pax.xattrs
                    .push((key[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
            }
            _ if key.starts_with(b"GNU.sparse.") => pax.sparse = true,
            _ => {}
        }
    }
    Ok(pax)
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Parses a PAX time, `[-]seconds[.fraction]`, to nanosecond precision (extra digits are
/// truncated, as GNU tar does).
fn parse_time(v: &[u8]) -> Option<Timestamp> {
    let (neg, v) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    let (int, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &[][..]),
    };
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sec = i64::try_from(parse_decimal(int)?).ok()?;
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Some(if !neg {
        Timestamp { sec, nsec }
    } else if nsec == 0 {
        Timestamp { sec: -sec, nsec: 0 }
    } else {
        Timestamp {
            sec: -sec - 1,
            nsec: 1_000_000_000 - nsec,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
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

    #[test]
    fn pax_values_may_hold_newlines() {
        let cap = [1u8, 0, 0, 2, 0x0a, 0, 0, 0, 0, b'\n', 0, 0];
        let mut body = record("SCHILY.xattr.security.capability", &cap);
        body.extend(record("path", b"a/b"));
        body.extend(record("mtime", b"1700000000.123456789123"));
        let pax = parse_pax(&body).unwrap();
        assert_eq!(
            pax.xattrs,
            vec![(b"security.capability".to_vec(), cap.to_vec())]
        );
        assert_eq!(pax.path.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(
            pax.mtime,
            Some(Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789
            })
        );
    }

    #[test]
    fn pax_rejects_bad_lengths() {
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"3 p\n").is_err());
        assert!(parse_pax(b"x path=x\n").is_err());
    }

    #[test]
    fn times() {
        assert_eq!(
            parse_time(b"-1.5"),
            Some(Timestamp {
                sec: -2,
                nsec: 500_000_000
            })
        );
        assert_eq!(parse_time(b"12"), Some(Timestamp { sec: 12, nsec: 0 }));
        assert_eq!(parse_time(b"1.x"), None);
        assert_eq!(parse_time(b""), None);
    }
}
