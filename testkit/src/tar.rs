//! A tar stream written header by header, so any name, link, type, owner, mode, device
//! number or PAX record can be written (the `tar` crate's Builder refuses `..`).

/// A tar stream under construction; entries take the owner and mtime last set.
#[derive(Default)]
pub struct Tar {
    /// The bytes written so far.
    pub buf: Vec<u8>,
    /// Modification time of the entries that follow.
    pub mtime: u64,
    /// Owner of the entries that follow.
    pub uid: u64,
    /// Group of the entries that follow.
    pub gid: u64,
}

impl Tar {
    /// An empty stream; entries are owned by root, with mtime 1 600 000 000.
    pub fn new() -> Self {
        Tar {
            mtime: 1_600_000_000,
            ..Default::default()
        }
    }

    /// Owner of the entries that follow.
    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Modification time of the entries that follow.
    pub fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    /// A ustar header with raw name and link bytes (cut at 100 bytes; [`Tar::entry`]
    /// puts longer ones in a PAX record).
    pub fn header(typeflag: u8, name: &[u8], link: &[u8], size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        h.as_old_mut().linkname[..l].copy_from_slice(&link[..l]);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_entry_type(tar::EntryType::new(typeflag));
        h.set_cksum();
        h
    }

    /// Appends a header, with the stream's owner and mtime and its checksum recomputed,
    /// and the padded body.
    pub fn raw(&mut self, mut h: tar::Header, body: &[u8]) -> &mut Self {
        h.set_mtime(self.mtime);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.body(body)
    }

    /// Appends a header exactly as given, and the padded body.
    pub fn raw_exact(&mut self, h: &[u8; 512], body: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(h);
        self.body(body)
    }

    /// Appends `body` padded to a 512-byte block.
    pub fn body(&mut self, body: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(body);
        let pad = (512 - body.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0, pad));
        self
    }

    /// Any entry; names and links over 100 bytes get a PAX header first.
    pub fn entry(
        &mut self,
        typeflag: u8,
        name: &[u8],
        link: &[u8],
        body: &[u8],
        mode: u32,
    ) -> &mut Self {
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        if name.len() > 100 {
            pax.push(("path", name));
        }
        if link.len() > 100 {
            pax.push(("linkpath", link));
        }
        if !pax.is_empty() {
            self.pax(&pax);
        }
        let h = Self::header(typeflag, name, link, body.len() as u64, mode);
        self.raw(h, body)
    }

    /// A regular file, mode 0644.
    pub fn file(&mut self, name: &str, body: &[u8]) -> &mut Self {
        self.entry(b'0', name.as_bytes(), b"", body, 0o644)
    }

    /// A regular file with `mode`.
    pub fn file_mode(&mut self, name: &str, body: &[u8], mode: u32) -> &mut Self {
        self.entry(b'0', name.as_bytes(), b"", body, mode)
    }

    /// A directory, mode 0755.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(b'5', name.as_bytes(), b"", b"", 0o755)
    }

    /// A directory with `mode`.
    pub fn dir_mode(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(b'5', name.as_bytes(), b"", b"", mode)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(b'2', name.as_bytes(), target.as_bytes(), b"", 0o777)
    }

    /// A hard link to `target` (a path in the same layer).
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(b'1', name.as_bytes(), target.as_bytes(), b"", 0o644)
    }

    /// A named pipe.
    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(b'6', name.as_bytes(), b"", b"", mode)
    }

    /// A character (`b'3'`) or block (`b'4'`) device.
    pub fn device(&mut self, typeflag: u8, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(typeflag, name.as_bytes(), b"", 0, 0o600);
        h.set_device_major(major).expect("device major fits");
        h.set_device_minor(minor).expect("device minor fits");
        self.raw(h, b"")
    }

    /// A PAX extended header for the next entry (e.g. `SCHILY.xattr.user.k`).
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k, v));
        }
        let h = Self::header(b'x', b"PaxHeader", b"", body.len() as u64, 0o644);
        self.raw(h, &body)
    }

    /// The end-of-archive marker, padded to a 10 KiB record as GNU tar does.
    pub fn finish(&mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0, 1024));
        while !self.buf.len().is_multiple_of(10240) {
            self.buf.push(0);
        }
        std::mem::take(&mut self.buf)
    }
}

/// One PAX record, `"<len> <key>=<value>\n"`, its length counting itself.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
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
