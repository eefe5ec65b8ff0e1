//! The metadata store every snapshotter backend shares: ids, kinds, parent chains, labels,
//! times and usage, in RocksDB, one synced write batch per operation. Backends own only
//! directories, named by snapshot id.
//!
//! ```text
//! schema version 1 (key "v" holds "1")
//!
//! v                       -> "1"
//! seq                     -> last id handed out (u64, big endian); ids are never reused
//! k/<key>                 -> SnapshotRecord   (key: an active/view key or a committed name)
//! i/<id: 16 hex digits>   -> <key>            (every id in use, for cleanup)
//! p/<parent>\0<child>     -> ""               (children of a committed snapshot)
//! t/<target>\0<name>      -> ""               (committed snapshots labelled
//!                                              containerd.io/snapshot.ref=<target>)
//! x/targets               -> "1"              (the t/ index is complete)
//! ```
//!
//! The `t/` index serves the remote-snapshot handshake ([`MetaStore::targets`]) without a
//! scan. A store written before the index existed has no `x/targets`; [`MetaStore::open`]
//! builds the index once, in one batch with the marker, so the schema stays version 1.
//!
//! Keys are opaque (containerd sends `<ns>/<seq>/<key>`) but may not be empty, contain NUL
//! or exceed 4 KiB. Read-check-write sequences run under one mutex, so each operation is
//! atomic with respect to the others; reads (`stat`, `walk`) take no lock, and `walk` calls
//! back only after its scan, so a callback may call back into the store.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use prost::Message;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use strata_proto::filter::{Adaptor, Filter, label_field};
use strata_proto::time::{from_nanos, to_nanos};

use crate::api::{Info, Kind, Labels, Usage};
use crate::{Error, ErrorKind, Result};

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: &str = "1";
/// Longest snapshot key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 4096;

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotRecord {
    #[prost(uint64, tag = "1")]
    id: u64,
    /// 1 view, 2 active, 3 committed (as containerd's `Kind`).
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(string, tag = "3")]
    parent: String,
    #[prost(uint64, tag = "4")]
    created_ns: u64,
    #[prost(uint64, tag = "5")]
    updated_ns: u64,
    #[prost(map = "string, string", tag = "6")]
    labels: HashMap<String, String>,
    #[prost(int64, tag = "7")]
    size: i64,
    #[prost(int64, tag = "8")]
    inodes: i64,
}

fn kind_to_i32(k: Kind) -> i32 {
    match k {
        Kind::View => 1,
        Kind::Active => 2,
        Kind::Committed => 3,
    }
}

fn kind_from_i32(v: i32) -> Result<Kind> {
    match v {
        1 => Ok(Kind::View),
        2 => Ok(Kind::Active),
        3 => Ok(Kind::Committed),
        _ => Err(Error::new(
            ErrorKind::DataLoss,
            format!("stored snapshot kind {v} is unknown"),
        )),
    }
}

/// What a backend needs to know about a snapshot to build its mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The snapshot's id (names its directory).
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Ids of its committed ancestors, nearest first.
    pub parent_ids: Vec<u64>,
}

fn key_k(key: &str) -> Vec<u8> {
    let mut k = b"k/".to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn key_i(id: u64) -> Vec<u8> {
    format!("i/{id:016x}").into_bytes()
}

fn key_p(parent: &str, child: &str) -> Vec<u8> {
    let mut k = b"p/".to_vec();
    k.extend_from_slice(parent.as_bytes());
    k.push(0);
    k.extend_from_slice(child.as_bytes());
    k
}

/// Committed snapshots carrying this label are indexed under `t/`.
pub use crate::remote::SNAPSHOT_REF_LABEL;

fn key_t(target: &str, name: &str) -> Vec<u8> {
    let mut k = b"t/".to_vec();
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

const TARGETS_MARKER: &[u8] = b"x/targets";

fn target_of(r: &SnapshotRecord) -> Option<&str> {
    if r.kind != kind_to_i32(Kind::Committed) {
        return None;
    }
    r.labels
        .get(SNAPSHOT_REF_LABEL)
        .map(String::as_str)
        .filter(|t| !t.is_empty())
}

fn validate_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("snapshot {what} must not be empty"),
        ));
    }
    if key.len() > MAX_KEY_LEN || key.contains('\0') {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("snapshot {what} is longer than {MAX_KEY_LEN} bytes or contains NUL"),
        ));
    }
    Ok(())
}

fn validate_labels(labels: &Labels) -> Result<()> {
    strata_proto::ident::validate_labels(labels).map_err(|e| e.context("invalid snapshot labels"))
}

fn to_info(name: String, r: &SnapshotRecord) -> Result<Info> {
    Ok(Info {
        name,
        parent: (!r.parent.is_empty()).then(|| r.parent.clone()),
        kind: kind_from_i32(r.kind)?,
        created_at: from_nanos(r.created_ns),
        updated_at: from_nanos(r.updated_ns),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

struct InfoAdaptor<'a>(&'a Info);

impl Adaptor for InfoAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("name") if path.len() == 1 => Some(self.0.name.clone()),
            Some("parent") if path.len() == 1 => Some(self.0.parent.clone().unwrap_or_default()),
            Some("kind") if path.len() == 1 => Some(self.0.kind.as_str().to_owned()),
            Some("labels") => label_field(path, &self.0.labels),
            _ => None,
        }
    }
}

/// The snapshot metadata store of one backend.
pub struct MetaStore {
    db: DB,
    write: Mutex<()>,
}

impl MetaStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = strata_content::open_versioned_db(path, SCHEMA_VERSION)
            .map_err(|e| e.context("open snapshot metadata"))?;
        let store = MetaStore {
            db,
            write: Mutex::new(()),
        };
        store.build_target_index()?;
        Ok(store)
    }

    /// Builds the `t/` index of a store that predates it (see the module docs).
    fn build_target_index(&self) -> Result<()> {
        let done = self
            .db
            .get_pinned(TARGETS_MARKER)
            .map_err(|e| Error::db("read index marker", e))?
            .is_some();
        if done {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.each_record(&mut |name, r| {
            if let Some(t) = target_of(r) {
                batch.put(key_t(t, &name), b"");
            }
            Ok(())
        })?;
        batch.put(TARGETS_MARKER, b"1");
        self.commit_batch(batch)
    }

    /// Calls `f` with every snapshot record and its key, in key order.
    fn each_record(&self, f: &mut dyn FnMut(String, &SnapshotRecord) -> Result<()>) -> Result<()> {
        for item in self
            .db
            .iterator(IteratorMode::From(b"k/", Direction::Forward))
        {
            let (k, v) = item.map_err(|e| Error::db("iterate", e))?;
            if !k.starts_with(b"k/") {
                break;
            }
            let r = SnapshotRecord::decode(&*v).map_err(|e| Error::corrupt("snapshot", e))?;
            f(String::from_utf8_lossy(&k[2..]).into_owned(), &r)?;
        }
        Ok(())
    }

    /// Committed snapshots labelled `containerd.io/snapshot.ref=<target>`, from the index.
    pub fn targets(&self, target: &str) -> Result<Vec<Info>> {
        let prefix = key_t(target, "");
        let mut names = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, _) = item.map_err(|e| Error::db("iterate", e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            names.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        let mut out = Vec::new();
        for name in names {
            // An entry whose snapshot went away between the scan and the read is skipped.
            if let Some(r) = self.record(&name)?
                && target_of(&r) == Some(target)
            {
                out.push(to_info(name, &r)?);
            }
        }
        Ok(out)
    }

    fn record(&self, key: &str) -> Result<Option<SnapshotRecord>> {
        match self
            .db
            .get_pinned(key_k(key))
            .map_err(|e| Error::db("get", e))?
        {
            None => Ok(None),
            Some(v) => SnapshotRecord::decode(&*v)
                .map(Some)
                .map_err(|e| Error::corrupt("snapshot", e)),
        }
    }

    fn must(&self, key: &str) -> Result<SnapshotRecord> {
        self.record(key)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("snapshot {key:?} does not exist"),
            )
        })
    }

    fn commit_batch(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| Error::db("write", e))
    }

    fn next_id(&self, batch: &mut WriteBatch) -> Result<u64> {
        let last = match self.db.get(b"seq").map_err(|e| Error::db("read seq", e))? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::DataLoss,
                    "stored id sequence is malformed",
                ));
            }
            None => 0,
        };
        let id = last + 1;
        batch.put(b"seq", id.to_be_bytes());
        Ok(id)
    }

    fn parent_ids(&self, mut parent: String) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        while !parent.is_empty() {
            let r = self.must(&parent)?;
            ids.push(r.id);
            parent = r.parent;
        }
        Ok(ids)
    }

    /// Creates an active snapshot or view on `parent` (which must be committed).
    pub fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: &Labels,
    ) -> Result<Snapshot> {
        validate_key("key", key)?;
        validate_labels(labels)?;
        if kind == Kind::Committed {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "snapshots are created active or as views",
            ));
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if self.record(key)?.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("snapshot {key:?} already exists"),
            ));
        }
        let parent = parent.filter(|p| !p.is_empty()).unwrap_or_default();
        if !parent.is_empty() {
            let p = self.record(parent)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("parent snapshot {parent:?} does not exist"),
                )
            })?;
            if kind_from_i32(p.kind)? != Kind::Committed {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("parent {parent:?} is not a committed snapshot"),
                ));
            }
        }
        let mut batch = WriteBatch::default();
        let id = self.next_id(&mut batch)?;
        let now = to_nanos(SystemTime::now());
        let rec = SnapshotRecord {
            id,
            kind: kind_to_i32(kind),
            parent: parent.to_owned(),
            created_ns: now,
            updated_ns: now,
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            size: 0,
            inodes: 0,
        };
        batch.put(key_k(key), rec.encode_to_vec());
        batch.put(key_i(id), key.as_bytes());
        if !parent.is_empty() {
            batch.put(key_p(parent, key), b"");
        }
        let parent_ids = self.parent_ids(parent.to_owned())?;
        self.commit_batch(batch)?;
        Ok(Snapshot {
            id,
            kind,
            parent_ids,
        })
    }

    /// What a backend needs to mount `key`.
    pub fn get(&self, key: &str) -> Result<Snapshot> {
        let r = self.must(key)?;
        Ok(Snapshot {
            id: r.id,
            kind: kind_from_i32(r.kind)?,
            parent_ids: self.parent_ids(r.parent)?,
        })
    }

    /// Commits the active snapshot `key` as `name` with `labels` and its measured usage;
    /// returns its id (kept, so the backend's directory stays valid).
    pub fn commit(&self, key: &str, name: &str, labels: &Labels, usage: Usage) -> Result<u64> {
        self.commit_onto(key, name, None, labels, usage)
    }

    /// [`MetaStore::commit`], re-parenting the snapshot onto `rebase` (a committed
    /// snapshot) when given. Only a snapshot prepared without a parent, or on that same
    /// parent, can be rebased: its layer must not depend on another parent's contents.
    pub fn commit_onto(
        &self,
        key: &str,
        name: &str,
        rebase: Option<&str>,
        labels: &Labels,
        usage: Usage,
    ) -> Result<u64> {
        validate_key("name", name)?;
        validate_labels(labels)?;
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.must(key)?;
        if kind_from_i32(r.kind)? != Kind::Active {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("snapshot {key:?} is not active"),
            ));
        }
        if self.record(name)?.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("snapshot {name:?} already exists"),
            ));
        }
        let parent = match rebase.filter(|p| !p.is_empty()) {
            None => r.parent.clone(),
            Some(p) => {
                if !r.parent.is_empty() && r.parent != p {
                    return Err(Error::new(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "snapshot {key:?} was prepared on {:?}: it cannot be rebased onto {p:?}",
                            r.parent
                        ),
                    ));
                }
                let pr = self.record(p)?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("parent snapshot {p:?} does not exist"),
                    )
                })?;
                if kind_from_i32(pr.kind)? != Kind::Committed {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("parent {p:?} is not a committed snapshot"),
                    ));
                }
                p.to_owned()
            }
        };
        let now = to_nanos(SystemTime::now());
        let rec = SnapshotRecord {
            kind: kind_to_i32(Kind::Committed),
            parent: parent.clone(),
            created_ns: now,
            updated_ns: now,
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            size: usage.size,
            inodes: usage.inodes,
            ..r.clone()
        };
        let mut batch = WriteBatch::default();
        batch.delete(key_k(key));
        batch.put(key_k(name), rec.encode_to_vec());
        batch.put(key_i(r.id), name.as_bytes());
        if !r.parent.is_empty() {
            batch.delete(key_p(&r.parent, key));
        }
        if !parent.is_empty() {
            batch.put(key_p(&parent, name), b"");
        }
        if let Some(t) = target_of(&rec) {
            batch.put(key_t(t, name), b"");
        }
        self.commit_batch(batch)?;
        Ok(r.id)
    }

    /// Removes a snapshot without children; returns its id and kind.
    pub fn remove(&self, key: &str) -> Result<(u64, Kind)> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.must(key)?;
        // "p/<key>\0" prefixes every child entry of `key`.
        if self.has_prefix(&key_p(key, ""))? {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("cannot remove snapshot {key:?}: it has children"),
            ));
        }
        let mut batch = WriteBatch::default();
        batch.delete(key_k(key));
        batch.delete(key_i(r.id));
        if !r.parent.is_empty() {
            batch.delete(key_p(&r.parent, key));
        }
        if let Some(t) = target_of(&r) {
            batch.delete(key_t(t, key));
        }
        self.commit_batch(batch)?;
        Ok((r.id, kind_from_i32(r.kind)?))
    }

    fn has_prefix(&self, prefix: &[u8]) -> Result<bool> {
        let mut it = self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward));
        match it.next() {
            Some(Ok((k, _))) => Ok(k.starts_with(prefix)),
            Some(Err(e)) => Err(Error::db("iterate", e)),
            None => Ok(false),
        }
    }

    /// Metadata of `key`.
    pub fn stat(&self, key: &str) -> Result<Info> {
        to_info(key.to_owned(), &self.must(key)?)
    }

    /// Usage recorded at commit (zero for active snapshots and views).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let r = self.must(key)?;
        Ok(Usage {
            size: r.size,
            inodes: r.inodes,
        })
    }

    /// Updates labels with containerd's field-mask semantics.
    pub fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.must(&info.name)?;
        let mut labels: BTreeMap<String, String> = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if fieldpaths.is_empty() {
            labels = info.labels.clone();
        } else {
            for p in fieldpaths {
                if p == "labels" {
                    labels = info.labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.").filter(|k| !k.is_empty()) {
                    match info.labels.get(k) {
                        Some(v) => labels.insert(k.to_owned(), v.clone()),
                        None => labels.remove(k),
                    };
                } else {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("cannot update {p:?} field on snapshot {:?}", info.name),
                    ));
                }
            }
        }
        labels.retain(|_, v| !v.is_empty());
        validate_labels(&labels)?;
        let mut batch = WriteBatch::default();
        if let Some(t) = target_of(&r) {
            batch.delete(key_t(t, &info.name));
        }
        r.labels = labels.into_iter().collect();
        r.updated_ns = to_nanos(SystemTime::now()).max(r.updated_ns + 1);
        if let Some(t) = target_of(&r) {
            batch.put(key_t(t, &info.name), b"");
        }
        batch.put(key_k(&info.name), r.encode_to_vec());
        self.commit_batch(batch)?;
        to_info(info.name.clone(), &r)
    }

    /// Every snapshot matching `filters`. The scan completes before `f` is first called.
    pub fn walk(&self, filters: &[String], f: &mut dyn FnMut(Info) -> Result<()>) -> Result<()> {
        let filter = Filter::parse_all(filters)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, "parse filters").with_source(e))?;
        let mut infos = Vec::new();
        self.each_record(&mut |name, r| {
            let info = to_info(name, r)?;
            if filter.matches(&InfoAdaptor(&info)) {
                infos.push(info);
            }
            Ok(())
        })?;
        for i in infos {
            f(i)?;
        }
        Ok(())
    }

    /// Every id in use, with its key (for cleanup of unreferenced directories).
    pub fn ids(&self) -> Result<HashMap<u64, String>> {
        let mut out = HashMap::new();
        for item in self
            .db
            .iterator(IteratorMode::From(b"i/", Direction::Forward))
        {
            let (k, v) = item.map_err(|e| Error::db("iterate", e))?;
            if !k.starts_with(b"i/") {
                break;
            }
            let id = std::str::from_utf8(&k[2..])
                .ok()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::new(ErrorKind::DataLoss, "stored snapshot id is malformed")
                })?;
            out.insert(id, String::from_utf8_lossy(&v).into_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let d = tempfile::tempdir().unwrap();
        let m = MetaStore::open(&d.path().join("meta")).unwrap();
        (d, m)
    }

    fn kind_of(r: Result<impl Sized>) -> ErrorKind {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.kind(),
        }
    }

    fn targets(m: &MetaStore, t: &str) -> Vec<String> {
        m.targets(t).unwrap().into_iter().map(|i| i.name).collect()
    }

    #[test]
    fn target_index_follows_commit_update_and_remove() {
        let (_d, m) = store();
        let mut l = Labels::new();
        l.insert(SNAPSHOT_REF_LABEL.into(), "sha256:aa".into());
        // An active snapshot carrying the label is not a target yet.
        m.create("a", None, Kind::Active, &l).unwrap();
        assert!(targets(&m, "sha256:aa").is_empty());
        m.commit("a", "ns/1/sha256:aa", &l, Usage::default())
            .unwrap();
        assert_eq!(targets(&m, "sha256:aa"), ["ns/1/sha256:aa"]);
        // A target that is a prefix of another is not confused with it.
        assert!(targets(&m, "sha256:a").is_empty());
        // Relabelling moves the entry; removing the label drops it.
        let mut info = m.stat("ns/1/sha256:aa").unwrap();
        info.labels
            .insert(SNAPSHOT_REF_LABEL.into(), "sha256:bb".into());
        m.update(&info, &[format!("labels.{SNAPSHOT_REF_LABEL}")])
            .unwrap();
        assert!(targets(&m, "sha256:aa").is_empty());
        assert_eq!(targets(&m, "sha256:bb"), ["ns/1/sha256:aa"]);
        info.labels.remove(SNAPSHOT_REF_LABEL);
        m.update(&info, &[format!("labels.{SNAPSHOT_REF_LABEL}")])
            .unwrap();
        assert!(targets(&m, "sha256:bb").is_empty());
        info.labels
            .insert(SNAPSHOT_REF_LABEL.into(), "sha256:cc".into());
        m.update(&info, &["labels".to_owned()]).unwrap();
        assert_eq!(targets(&m, "sha256:cc"), ["ns/1/sha256:aa"]);
        m.remove("ns/1/sha256:aa").unwrap();
        assert!(targets(&m, "sha256:cc").is_empty());
    }

    #[test]
    fn target_index_is_built_for_a_store_that_predates_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("meta");
        {
            let m = MetaStore::open(&path).unwrap();
            let mut l = Labels::new();
            l.insert(SNAPSHOT_REF_LABEL.into(), "sha256:aa".into());
            m.create("a", None, Kind::Active, &l).unwrap();
            m.commit("a", "x/sha256:aa", &l, Usage::default()).unwrap();
            // What a store written before the index looks like: no t/ keys, no marker.
            let mut b = WriteBatch::default();
            b.delete(key_t("sha256:aa", "x/sha256:aa"));
            b.delete(TARGETS_MARKER);
            m.commit_batch(b).unwrap();
            assert!(targets(&m, "sha256:aa").is_empty());
        }
        let m = MetaStore::open(&path).unwrap();
        assert_eq!(targets(&m, "sha256:aa"), ["x/sha256:aa"]);
    }

    #[test]
    fn lifecycle_and_ids_never_reused() {
        let (_d, m) = store();
        let l = Labels::new();
        let a = m.create("a", None, Kind::Active, &l).unwrap();
        assert_eq!(a.parent_ids, Vec::<u64>::new());
        let id = m
            .commit(
                "a",
                "base",
                &l,
                Usage {
                    size: 10,
                    inodes: 2,
                },
            )
            .unwrap();
        assert_eq!(id, a.id);
        assert_eq!(kind_of(m.stat("a")), ErrorKind::NotFound);
        assert_eq!(m.stat("base").unwrap().kind, Kind::Committed);
        assert_eq!(
            m.usage("base").unwrap(),
            Usage {
                size: 10,
                inodes: 2
            }
        );
        let b = m.create("b", Some("base"), Kind::Active, &l).unwrap();
        m.commit("b", "top", &l, Usage::default()).unwrap();
        let v = m.create("v", Some("top"), Kind::View, &l).unwrap();
        assert_eq!(v.parent_ids, vec![b.id, a.id]);
        assert_eq!(m.stat("top").unwrap().parent.as_deref(), Some("base"));
        assert_eq!(kind_of(m.remove("base")), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(m.remove("top")), ErrorKind::FailedPrecondition);
        m.remove("v").unwrap();
        m.remove("top").unwrap();
        m.remove("base").unwrap();
        let again = m.create("a", None, Kind::Active, &l).unwrap();
        assert!(again.id > v.id, "ids are never reused");
        assert_eq!(
            m.ids().unwrap(),
            HashMap::from([(again.id, "a".to_owned())])
        );
    }

    #[test]
    fn errors_change_nothing() {
        let (_d, m) = store();
        let l = Labels::new();
        m.create("act", None, Kind::Active, &l).unwrap();
        assert_eq!(
            kind_of(m.create("act", None, Kind::View, &l)),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind_of(m.create("x", Some("missing"), Kind::Active, &l)),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of(m.create("x", Some("act"), Kind::Active, &l)),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind_of(m.create("", None, Kind::Active, &l)),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind_of(m.create("nul\0", None, Kind::Active, &l)),
            ErrorKind::InvalidArgument
        );
        let big = Labels::from([("k".to_owned(), "v".repeat(4096))]);
        assert_eq!(
            kind_of(m.create("x", None, Kind::Active, &big)),
            ErrorKind::InvalidArgument
        );
        m.create("view", None, Kind::View, &l).unwrap();
        assert_eq!(
            kind_of(m.commit("view", "c", &l, Usage::default())),
            ErrorKind::FailedPrecondition
        );
        m.commit("act", "c", &l, Usage::default()).unwrap();
        m.create("act2", None, Kind::Active, &l).unwrap();
        assert_eq!(
            kind_of(m.commit("act2", "c", &l, Usage::default())),
            ErrorKind::AlreadyExists
        );
        let mut names = Vec::new();
        m.walk(&[], &mut |i| {
            names.push(i.name);
            Ok(())
        })
        .unwrap();
        assert_eq!(names, vec!["act2", "c", "view"]);
    }

    #[test]
    fn update_semantics() {
        let (_d, m) = store();
        let l = Labels::from([("l1".into(), "v1".into()), ("l2".into(), "v2".into())]);
        m.create("a", None, Kind::Active, &l).unwrap();
        let before = m.stat("a").unwrap();
        let mut info = before.clone();
        info.labels = Labels::from([("l1".into(), "new".into()), ("l4".into(), "x".into())]);
        info.parent = Some("ignored".into());
        let u = m
            .update(&info, &["labels.l1".into(), "labels.l2".into()])
            .unwrap();
        assert_eq!(u.labels, Labels::from([("l1".into(), "new".into())]));
        assert_eq!(u.parent, None);
        assert_eq!(u.created_at, before.created_at);
        assert!(u.updated_at > before.updated_at);
        for bad in ["parent", "name", "kind", "created_at"] {
            assert_eq!(
                kind_of(m.update(&info, &[bad.into()])),
                ErrorKind::InvalidArgument
            );
        }
        assert_eq!(
            m.stat("a").unwrap().labels,
            u.labels,
            "failed updates changed nothing"
        );
        let all = m.update(&info, &[]).unwrap();
        assert_eq!(all.labels, info.labels);
    }

    #[test]
    fn walk_filters_and_reentrancy() {
        let (_d, m) = store();
        let root = Labels::from([("containerd.io/gc.root".into(), "x".into())]);
        m.create("p-a", None, Kind::Active, &Labels::new()).unwrap();
        m.commit("p-a", "p", &Labels::new(), Usage::default())
            .unwrap();
        m.create("a", Some("p"), Kind::Active, &root).unwrap();
        m.create(
            "v",
            Some("p"),
            Kind::View,
            &Labels::from([("l".into(), "2".into())]),
        )
        .unwrap();
        let names = |f: &[&str]| {
            let f: Vec<String> = f.iter().map(|s| (*s).to_owned()).collect();
            let mut v = Vec::new();
            m.walk(&f, &mut |i| {
                // Stat inside a walk must not deadlock.
                m.stat(&i.name)?;
                v.push(i.name);
                Ok(())
            })
            .unwrap();
            v
        };
        assert_eq!(names(&["kind==active"]), vec!["a"]);
        assert_eq!(names(&["kind==committed"]), vec!["p"]);
        assert_eq!(names(&["parent==p"]), vec!["a", "v"]);
        assert_eq!(names(&[r#"parent!="""#]), vec!["a", "v"]);
        assert_eq!(names(&[r#"labels."containerd.io/gc.root"==x"#]), vec!["a"]);
        assert_eq!(names(&["labels.l==2", "name==p"]), vec!["p", "v"]);
        assert_eq!(names(&["labels.l"]), vec!["v"]);
        assert!(m.walk(&["kind==".into()], &mut |_| Ok(())).is_err());
    }
}
