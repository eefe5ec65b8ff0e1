//! The eStargz table of contents: its JSON form ([`TocJson`], what the writer emits and
//! the reader parses) and the checked tree a lazy mount serves ([`Tree`]).
//!
//! A TOC comes from the registry, so it is hostile until checked. [`Tree::from_json`]
//! refuses, with a clear error, what a full unpack could not reproduce exactly or what
//! would make a read touch the wrong bytes: paths with `..`, duplicate names, chunks
//! that do not tile their file, data offsets out of blob order or past the TOC, hard
//! links to nothing, sizes past the caps. A refused TOC is never half-used: the caller
//! unpacks that layer in full instead.
//!
//! The tree is the layer as overlayfs sees a lower directory, exactly as the puller's
//! full unpack in overlay mode makes it: `.wh.<name>` becomes a whiteout (character
//! device 0:0) unless this layer itself wrote `<name>`, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory, overlayfs xattrs carried by the layer
//! are dropped. The eStargz metadata files at the root (`stargz.index.json` and the
//! landmarks) are hidden, as stargz-snapshotter hides them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use strata_proto::Digest;

use crate::{Error, Result};

/// Name of the TOC's tar entry.
pub const TOC_NAME: &str = "stargz.index.json";
/// Landmark after the prioritized files: everything before it is fetched at mount.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark of a layer with no prioritized files.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// Content of a landmark file.
pub const LANDMARK_CONTENT: u8 = 0x0f;

/// Caps on what a TOC may ask of the daemon.
#[derive(Clone, Copy, Debug)]
pub struct TocLimits {
    /// Bytes of TOC JSON.
    pub max_json: u64,
    /// Entries, chunks included.
    pub max_entries: usize,
    /// Uncompressed bytes of one chunk (what one read decompresses into memory).
    pub max_chunk: u64,
    /// Bytes of one file.
    pub max_file: u64,
}

impl Default for TocLimits {
    fn default() -> Self {
        TocLimits {
            max_json: 256 << 20,
            max_entries: 4 << 20,
            max_chunk: 64 << 20,
            max_file: 1 << 40,
        }
    }
}

/// The TOC as JSON: `{"version": 1, "entries": [...]}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TocJson {
    /// Must be 1.
    pub version: i64,
    /// Every tar entry but the TOC itself, chunks included, in blob order.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One TOC entry. Zero values are omitted, as the reference writer does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    /// Path as stored in the tar.
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed size of a regular file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// RFC 3339 modification time (whole seconds).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    /// Target of a symlink or hard link.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Permission bits (a producer may add file-type bits; `kind` decides the type).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: u64,
    /// Owner.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: u64,
    /// Group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: u64,
    /// Owner's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Group's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    /// Device major number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_major: u64,
    /// Device minor number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_minor: u64,
    /// Extended attributes, values in standard base64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// Digest of the whole file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Offset in the blob of the gzip member holding this payload.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: u64,
    /// Offset of the payload inside the member's uncompressed bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_offset: u64,
    /// Offset of this chunk in the file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_offset: u64,
    /// Size of this chunk (0: to the end of the file).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: u64,
    /// Digest of this chunk's uncompressed bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
}

/// The type of a tree node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A character device (whiteouts too).
    Char,
    /// A block device.
    Block,
    /// A named pipe.
    Fifo,
}

/// One piece of a file's content and where its compressed bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the file.
    pub file_offset: u64,
    /// Uncompressed size.
    pub size: u64,
    /// Offset in the blob of the gzip member holding it.
    pub blob_offset: u64,
    /// End of that member's compressed bytes (exclusive).
    pub blob_end: u64,
    /// Uncompressed bytes of the member before this chunk.
    pub inner_offset: u64,
    /// Digest of the chunk's uncompressed bytes.
    pub digest: Digest,
}

/// One inode of the tree. Its number is its index in [`Tree::nodes`] plus one.
#[derive(Clone, Debug)]
pub struct Node {
    /// The type.
    pub kind: NodeKind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Size of a file, length of a symlink's target.
    pub size: u64,
    /// Device (major, minor).
    pub rdev: (u32, u32),
    /// A symlink's target.
    pub link: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A directory's entries, by name.
    pub children: BTreeMap<Vec<u8>, u32>,
    /// A directory's parent (the root is its own).
    pub parent: u32,
    /// A file's chunks, tiling `0..size` in order.
    pub chunks: Vec<Chunk>,
    /// Hard links to this node (subdirectories add one each to a directory).
    pub nlink: u32,
}

impl Node {
    fn new(kind: NodeKind, mode: u32, parent: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
            link: Vec::new(),
            xattrs: Vec::new(),
            children: BTreeMap::new(),
            parent,
            chunks: Vec::new(),
            nlink: 1,
        }
    }
}

/// A checked TOC: the layer's tree, ready to serve.
#[derive(Clone, Debug)]
pub struct Tree {
    /// The inodes; the root is inode 1 (`nodes[0]`).
    pub nodes: Vec<Node>,
    /// The compressed range fetched at mount time: everything before the
    /// `.prefetch.landmark` payload, when the layer has one.
    pub prefetch: Option<u64>,
    /// Where the TOC member starts (the end of the data).
    pub toc_offset: u64,
}

/// Inode number of the root.
pub const ROOT: u32 = 1;

const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

fn bad(name: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid(format!("eStargz TOC entry {name:?}: {why}"))
}

/// Splits a TOC name into components: `.` and empty ones dropped, `..` refused.
fn components(name: &str) -> Result<Vec<&[u8]>> {
    if name.contains('\0') {
        return Err(bad(name, "NUL in the name"));
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad(name, "names a path outside the layer (`..`)")),
            c => {
                if c.len() > 255 {
                    return Err(bad(name, "a name component over 255 bytes"));
                }
                out.push(c.as_bytes());
            }
        }
    }
    Ok(out)
}

fn digest(name: &str, what: &str, s: &str) -> Result<Digest> {
    Digest::parse(s).map_err(|e| bad(name, format!("{what} {s:?}: {e}")))
}

fn mtime(name: &str, s: &str) -> Result<i64> {
    if s.is_empty() {
        return Ok(0);
    }
    let t = strata_proto::time::parse_rfc3339(s).ok_or_else(|| bad(name, "bad modtime"))?;
    Ok(match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

fn id32(name: &str, what: &str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| bad(name, format!("{what} {v} out of range")))
}

fn decode_xattrs(e: &RawEntry<'_>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for (k, v) in &e.xattrs {
        if k.is_empty() || k.len() > 255 || k.contains('\0') || !k.contains('.') {
            return Err(bad(&e.name, format!("bad xattr name {k:?}")));
        }
        // Overlayfs xattrs in a layer would forge whiteouts; the full unpack drops them.
        if k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.") {
            continue;
        }
        let v = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|err| bad(&e.name, format!("xattr {k:?} is not base64: {err}")))?;
        if v.len() > 65536 {
            return Err(bad(&e.name, format!("xattr {k:?} over 64 KiB")));
        }
        out.push((k.as_bytes().to_vec(), v));
    }
    Ok(out)
}

/// A data entry in blob order, for computing each chunk's compressed extent.
struct DataRef {
    node: u32,
    chunk: usize,
}

impl Tree {
    /// Parses and checks TOC JSON for a blob whose TOC member starts at `toc_offset`.
    /// Entries are checked as they are parsed, borrowing their strings from `json`: a big
    /// layer's TOC is never held twice.
    pub fn from_json(json: &[u8], toc_offset: u64, limits: &TocLimits) -> Result<Tree> {
        if json.len() as u64 > limits.max_json {
            return Err(Error::invalid(format!(
                "eStargz TOC of {} bytes is over the cap of {}",
                json.len(),
                limits.max_json
            )));
        }
        let mut feeder = Feeder::new(toc_offset, limits);
        let mut de = serde_json::Deserializer::from_slice(json);
        let parsed = serde::de::DeserializeSeed::deserialize(TocSeed(&mut feeder), &mut de)
            .and_then(|version| de.end().map(|()| version));
        if let Some(e) = feeder.failed.take() {
            return Err(e);
        }
        let version =
            parsed.map_err(|e| Error::invalid(format!("eStargz TOC is not valid JSON: {e}")))?;
        let version =
            version.ok_or_else(|| Error::invalid("eStargz TOC is not valid JSON: no version"))?;
        feeder.finish(version)
    }

    /// Checks a parsed TOC; see the module docs for what is refused.
    pub fn from_toc(toc: &TocJson, toc_offset: u64, limits: &TocLimits) -> Result<Tree> {
        let mut feeder = Feeder::new(toc_offset, limits);
        for e in &toc.entries {
            feeder.push(&e.raw())?;
        }
        feeder.finish(toc.version)
    }

    /// The node of inode `ino`.
    pub fn node(&self, ino: u64) -> Option<&Node> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Option<u32> {
        self.node(dir)?.children.get(name).copied()
    }

    /// The inode at `path` (components separated by `/`), if any.
    pub fn resolve(&self, path: &str) -> Option<u32> {
        let mut ino = ROOT;
        for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            ino = self.lookup(u64::from(ino), c.as_bytes())?;
        }
        Some(ino)
    }

    /// Total bytes of file content (each hard-linked file once).
    pub fn content_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::File)
            .map(|n| n.size)
            .sum()
    }
}

/// A TOC entry as parsed, its strings borrowed from the JSON where they need no
/// unescaping; what [`Builder`] reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    size: u64,
    #[serde(default, borrow)]
    modtime: Cow<'a, str>,
    #[serde(default, borrow)]
    link_name: Cow<'a, str>,
    #[serde(default)]
    mode: u64,
    #[serde(default)]
    uid: u64,
    #[serde(default)]
    gid: u64,
    #[serde(default)]
    dev_major: u64,
    #[serde(default)]
    dev_minor: u64,
    #[serde(default, borrow)]
    xattrs: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    inner_offset: u64,
    #[serde(default)]
    chunk_offset: u64,
    #[serde(default)]
    chunk_size: u64,
    #[serde(default, borrow)]
    chunk_digest: Cow<'a, str>,
}

impl TocEntry {
    fn raw(&self) -> RawEntry<'_> {
        RawEntry {
            name: Cow::Borrowed(&self.name),
            kind: Cow::Borrowed(&self.kind),
            size: self.size,
            modtime: Cow::Borrowed(&self.modtime),
            link_name: Cow::Borrowed(&self.link_name),
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            dev_major: self.dev_major,
            dev_minor: self.dev_minor,
            xattrs: self
                .xattrs
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
                .collect(),
            offset: self.offset,
            inner_offset: self.inner_offset,
            chunk_offset: self.chunk_offset,
            chunk_size: self.chunk_size,
            chunk_digest: Cow::Borrowed(&self.chunk_digest),
        }
    }
}

/// Entries in TOC order into a [`Builder`]; the first refusal is kept for the caller.
struct Feeder<'l> {
    b: Builder,
    limits: &'l TocLimits,
    last_file: Option<u32>,
    entries: usize,
    failed: Option<Error>,
}

impl<'l> Feeder<'l> {
    fn new(toc_offset: u64, limits: &'l TocLimits) -> Self {
        let mut b = Builder {
            tree: Tree {
                nodes: vec![Node::new(NodeKind::Dir, 0o755, ROOT)],
                prefetch: None,
                toc_offset,
            },
            data: Vec::new(),
            whiteouts: BTreeMap::new(),
            explicit: std::collections::HashSet::new(),
            hidden: Vec::new(),
            last_parent: None,
        };
        b.tree.nodes[0].nlink = 2;
        Feeder {
            b,
            limits,
            last_file: None,
            entries: 0,
            failed: None,
        }
    }

    fn push(&mut self, e: &RawEntry<'_>) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::invalid(format!(
                "eStargz TOC is over the cap of {} entries",
                self.limits.max_entries
            )));
        }
        if e.kind == "chunk" {
            let node = self
                .last_file
                .ok_or_else(|| bad(&e.name, "a chunk with no file before it"))?;
            return self.b.chunk(node, e, self.limits);
        }
        if let Some(prev) = self.last_file.take() {
            self.b.finish_file(prev)?;
        }
        self.last_file = self.b.entry(e, self.limits)?;
        Ok(())
    }

    fn finish(mut self, version: i64) -> Result<Tree> {
        if version != 1 {
            return Err(Error::invalid(format!(
                "eStargz TOC version {version} (only 1 is known)"
            )));
        }
        if let Some(prev) = self.last_file.take() {
            self.b.finish_file(prev)?;
        }
        self.b.extents()?;
        self.b.apply_whiteouts()?;
        Ok(self.b.tree)
    }
}

/// The TOC object, its entries fed one by one; yields the version it names.
struct TocSeed<'f, 'l>(&'f mut Feeder<'l>);

impl<'de> serde::de::DeserializeSeed<'de> for TocSeed<'_, '_> {
    type Value = Option<i64>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TocSeed<'_, '_> {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a TOC object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut m: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut version = None;
        while let Some(k) = m.next_key::<Cow<'de, str>>()? {
            match &*k {
                "version" => version = Some(m.next_value::<i64>()?),
                "entries" => m.next_value_seed(EntriesSeed(&mut *self.0))?,
                _ => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

/// The `entries` array, each entry checked as soon as it is parsed.
struct EntriesSeed<'f, 'l>(&'f mut Feeder<'l>);

impl<'de> serde::de::DeserializeSeed<'de> for EntriesSeed<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EntriesSeed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of TOC entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        while let Some(e) = seq.next_element::<RawEntry<'de>>()? {
            if let Err(err) = self.0.push(&e) {
                self.0.failed = Some(err);
                return Err(serde::de::Error::custom("entry refused"));
            }
        }
        Ok(())
    }
}

struct Builder {
    tree: Tree,
    data: Vec<DataRef>,
    /// Whiteout names per directory, applied once the whole layer is known: a
    /// whiteout for a name this layer writes itself does not hide it.
    whiteouts: BTreeMap<u32, Vec<Vec<u8>>>,
    /// Directories that have their own entry (a second one is a duplicate).
    explicit: std::collections::HashSet<u32>,
    /// Members of the files the tree hides (landmarks): where the data before them ends.
    hidden: Vec<u64>,
    /// The last entry's parent directory as named, and its inode.
    last_parent: Option<(String, u32)>,
}

impl Builder {
    fn node_mut(&mut self, ino: u32) -> &mut Node {
        &mut self.tree.nodes[ino as usize - 1]
    }

    /// The directory `parts`, made (mode 0755, as a reader synthesises them) where the
    /// TOC has no entry for it.
    fn dir(&mut self, name: &str, parts: &[&[u8]]) -> Result<u32> {
        let mut ino = ROOT;
        for p in parts {
            let cur = &self.tree.nodes[ino as usize - 1];
            ino = match cur.children.get(*p) {
                Some(&child) => {
                    if self.tree.nodes[child as usize - 1].kind != NodeKind::Dir {
                        return Err(bad(name, "a parent is not a directory"));
                    }
                    child
                }
                None => self.add(ino, p, Node::new(NodeKind::Dir, 0o755, ino))?,
            };
        }
        Ok(ino)
    }

    fn add(&mut self, parent: u32, name: &[u8], mut node: Node) -> Result<u32> {
        let ino = u32::try_from(self.tree.nodes.len() + 1)
            .map_err(|_| Error::invalid("eStargz TOC has too many entries"))?;
        node.parent = parent;
        if node.kind == NodeKind::Dir {
            node.nlink = 2;
            self.node_mut(parent).nlink += 1;
        }
        self.tree.nodes.push(node);
        self.node_mut(parent).children.insert(name.to_vec(), ino);
        Ok(ino)
    }

    /// One non-chunk entry; returns the file node when it is a regular file.
    fn entry(&mut self, e: &RawEntry<'_>, limits: &TocLimits) -> Result<Option<u32>> {
        let parts = components(&e.name)?;
        let Some((last, dirs)) = parts.split_last() else {
            // The root itself.
            if e.kind != "dir" {
                return Err(bad(&e.name, "the root is not a directory"));
            }
            if !self.explicit.insert(ROOT) {
                return Err(bad(&e.name, "duplicate entry"));
            }
            self.set_meta(ROOT, e)?;
            return Ok(None);
        };
        // Entries come in tar order: most share the previous entry's parent directory.
        let raw_parent =
            (!e.name.ends_with('/')).then(|| e.name.rsplit_once('/').map_or("", |(p, _)| p));
        let parent = match (&self.last_parent, raw_parent) {
            (Some((p, ino)), Some(rp)) if p == rp => *ino,
            _ => {
                let ino = self.dir(&e.name, dirs)?;
                if let Some(rp) = raw_parent {
                    self.last_parent = Some((rp.to_owned(), ino));
                }
                ino
            }
        };
        if parent == ROOT
            && dirs.is_empty()
            && matches!(
                *last,
                b"stargz.index.json" | b".prefetch.landmark" | b".no.prefetch.landmark"
            )
        {
            if *last == PREFETCH_LANDMARK.as_bytes() {
                self.tree.prefetch = Some(e.offset);
            }
            if e.offset > 0 {
                if e.offset >= self.tree.toc_offset {
                    return Err(bad(&e.name, "offset past the blob's data"));
                }
                self.hidden.push(e.offset);
            }
            return Ok(None);
        }
        if let Some(target) = last.strip_prefix(b".wh.") {
            if target == b".wh..opq" {
                self.whiteouts.entry(parent).or_default().push(Vec::new());
            } else if target.starts_with(b".wh.") {
                // AUFS metadata: meaningless, as the full unpack ignores it.
            } else if target.is_empty() {
                return Err(bad(&e.name, "whiteout names no file"));
            } else {
                self.whiteouts
                    .entry(parent)
                    .or_default()
                    .push(target.to_vec());
            }
            return Ok(None);
        }
        let existing = self.tree.nodes[parent as usize - 1]
            .children
            .get(*last)
            .copied();
        if e.kind == "dir" {
            if let Some(ino) = existing {
                // A directory the TOC named a child of before its own entry.
                if self.tree.nodes[ino as usize - 1].kind != NodeKind::Dir
                    || !self.explicit.insert(ino)
                {
                    return Err(bad(&e.name, "duplicate entry"));
                }
                self.set_meta(ino, e)?;
                return Ok(None);
            }
            let ino = self.add(parent, last, Node::new(NodeKind::Dir, 0o755, parent))?;
            self.explicit.insert(ino);
            self.set_meta(ino, e)?;
            return Ok(None);
        }
        if existing.is_some() {
            return Err(bad(&e.name, "duplicate entry"));
        }
        let kind = match &*e.kind {
            "reg" => NodeKind::File,
            "symlink" => NodeKind::Symlink,
            "char" => NodeKind::Char,
            "block" => NodeKind::Block,
            "fifo" => NodeKind::Fifo,
            "hardlink" => {
                let target = components(&e.link_name)?;
                let mut ino = ROOT;
                for c in &target {
                    ino = self.tree.nodes[ino as usize - 1]
                        .children
                        .get(*c)
                        .copied()
                        .ok_or_else(|| bad(&e.name, "hard link to a file not in the layer"))?;
                }
                if self.tree.nodes[ino as usize - 1].kind == NodeKind::Dir {
                    return Err(bad(&e.name, "hard link to a directory"));
                }
                self.node_mut(ino).nlink += 1;
                self.node_mut(parent).children.insert(last.to_vec(), ino);
                return Ok(None);
            }
            other => return Err(bad(&e.name, format!("unknown type {other:?}"))),
        };
        let ino = self.add(parent, last, Node::new(kind, 0, parent))?;
        self.set_meta(ino, e)?;
        match kind {
            NodeKind::Symlink => {
                if e.link_name.is_empty() {
                    return Err(bad(&e.name, "symlink with no target"));
                }
                let n = self.node_mut(ino);
                n.link = e.link_name.as_bytes().to_vec();
                n.size = n.link.len() as u64;
            }
            NodeKind::Char | NodeKind::Block => {
                let rdev = (
                    id32(&e.name, "devMajor", e.dev_major)?,
                    id32(&e.name, "devMinor", e.dev_minor)?,
                );
                self.node_mut(ino).rdev = rdev;
            }
            NodeKind::File => {
                if e.size > limits.max_file {
                    return Err(bad(&e.name, format!("size {} over the cap", e.size)));
                }
                self.node_mut(ino).size = e.size;
                if e.size > 0 {
                    if e.chunk_offset != 0 {
                        return Err(bad(&e.name, "first chunk does not start at 0"));
                    }
                    self.chunk(ino, e, limits)?;
                }
                return Ok(Some(ino));
            }
            _ => {}
        }
        Ok(None)
    }

    fn set_meta(&mut self, ino: u32, e: &RawEntry<'_>) -> Result<()> {
        let mtime = mtime(&e.name, &e.modtime)?;
        let uid = id32(&e.name, "uid", e.uid)?;
        let gid = id32(&e.name, "gid", e.gid)?;
        let xattrs = decode_xattrs(e)?;
        let n = self.node_mut(ino);
        n.mode = (e.mode & 0o7777) as u32;
        n.uid = uid;
        n.gid = gid;
        n.mtime = mtime;
        n.xattrs = xattrs;
        Ok(())
    }

    fn chunk(&mut self, ino: u32, e: &RawEntry<'_>, limits: &TocLimits) -> Result<()> {
        let name = &e.name;
        let n = &self.tree.nodes[ino as usize - 1];
        let expected = n.chunks.last().map_or(0, |c| c.file_offset + c.size);
        if e.chunk_offset != expected {
            return Err(bad(
                name,
                format!(
                    "chunk at {} where {expected} was due (overlapping or missing chunks)",
                    e.chunk_offset
                ),
            ));
        }
        if e.chunk_offset >= n.size {
            return Err(bad(name, "chunk past the end of its file"));
        }
        let size = if e.chunk_size == 0 {
            n.size - e.chunk_offset
        } else {
            e.chunk_size
        };
        if size > n.size - e.chunk_offset {
            return Err(bad(name, "chunk past the end of its file"));
        }
        if size > limits.max_chunk {
            return Err(bad(name, format!("chunk of {size} bytes over the cap")));
        }
        if e.offset >= self.tree.toc_offset {
            return Err(bad(name, "chunk offset past the blob's data"));
        }
        let digest = digest(name, "chunkDigest", &e.chunk_digest)?;
        let chunk = self.node_mut(ino).chunks.len();
        self.node_mut(ino).chunks.push(Chunk {
            file_offset: e.chunk_offset,
            size,
            blob_offset: e.offset,
            blob_end: 0,
            inner_offset: e.inner_offset,
            digest,
        });
        self.data.push(DataRef { node: ino, chunk });
        Ok(())
    }

    fn finish_file(&mut self, ino: u32) -> Result<()> {
        let n = &self.tree.nodes[ino as usize - 1];
        let covered = n.chunks.last().map_or(0, |c| c.file_offset + c.size);
        if covered != n.size {
            return Err(Error::invalid(format!(
                "eStargz TOC: a file's chunks cover {covered} of its {} bytes",
                n.size
            )));
        }
        Ok(())
    }

    /// Gives each chunk its compressed extent: from its member's offset to the next
    /// member's. Members must come in blob order; chunks sharing a member must come in
    /// the order of their inner offsets.
    fn extents(&mut self) -> Result<()> {
        let mut prev: Option<(u64, u64)> = None;
        for d in &self.data {
            let c = &self.tree.nodes[d.node as usize - 1].chunks[d.chunk];
            let key = (c.blob_offset, c.inner_offset);
            if let Some(p) = prev
                && key <= p
            {
                return Err(Error::invalid(format!(
                    "eStargz TOC: data at offset {}+{} is out of blob order (overlapping entries)",
                    key.0, key.1
                )));
            }
            if c.inner_offset > 0 && prev.is_none_or(|p| p.0 != c.blob_offset) {
                return Err(Error::invalid(format!(
                    "eStargz TOC: inner offset {} in a member no earlier entry starts",
                    c.inner_offset
                )));
            }
            prev = Some(key);
        }
        // Each member ends where the next one starts (hidden files' members count).
        let mut starts: Vec<u64> = self
            .data
            .iter()
            .map(|d| self.tree.nodes[d.node as usize - 1].chunks[d.chunk].blob_offset)
            .chain(self.hidden.iter().copied())
            .collect();
        starts.sort_unstable();
        starts.dedup();
        for d in &self.data {
            let c = &mut self.tree.nodes[d.node as usize - 1].chunks[d.chunk];
            let next = starts.partition_point(|s| *s <= c.blob_offset);
            c.blob_end = starts.get(next).copied().unwrap_or(self.tree.toc_offset);
        }
        Ok(())
    }

    fn apply_whiteouts(&mut self) -> Result<()> {
        let whiteouts = std::mem::take(&mut self.whiteouts);
        for (dir, names) in whiteouts {
            for name in names {
                if name.is_empty() {
                    self.set_opaque(dir);
                    continue;
                }
                match self.tree.nodes[dir as usize - 1]
                    .children
                    .get(&name)
                    .copied()
                {
                    // This layer wrote a directory there: hide the lower one's content.
                    Some(ino) if self.tree.nodes[ino as usize - 1].kind == NodeKind::Dir => {
                        self.set_opaque(ino);
                    }
                    // This layer wrote a file there; it already hides the lower one.
                    Some(_) => {}
                    None => {
                        let mut n = Node::new(NodeKind::Char, 0, dir);
                        n.rdev = (0, 0);
                        self.add(dir, &name, n)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn set_opaque(&mut self, dir: u32) {
        let n = self.node_mut(dir);
        if !n.xattrs.iter().any(|(k, _)| k == OPAQUE_XATTR) {
            n.xattrs.push((OPAQUE_XATTR.to_vec(), b"y".to_vec()));
            n.xattrs.sort();
        }
    }
}

/// `t` as the whole-second RFC 3339 a TOC carries.
pub fn toc_time(secs: i64) -> String {
    if secs <= 0 {
        return String::new();
    }
    strata_proto::time::format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}
