//! The content metadata database (RocksDB under `<root>/meta/`).
//!
//! ```text
//! schema version 1 (key "v" holds "1"); '/' separates components, which are
//! identifiers or digests and so never contain '/'; '\0' separates the free-form tail
//! of a lease resource key.
//!
//! v                                  -> "1"
//! c/<ns>/<digest>                    -> ContentRecord   (ns "" = the global space)
//! p/<digest>                         -> PendingCommit   (written before a blob is renamed
//!                                                        into place, removed with the record)
//! l/<ns>/<lease>                     -> LeaseRecord
//! r/<ns>/<lease>/<type>\0<id>        -> ""              (lease resources)
//! n/<ns>                             -> NamespaceRecord (namespace labels)
//! i/<ns>/<image name>                -> ImageRecord     (see `images`; names may hold '/')
//! ```
//!
//! Values are protobuf messages (prost), so fields can be added compatibly.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::api::Labels;
use crate::{Error, ErrorKind, Result};

/// The schema version this code reads and writes.
pub(crate) const SCHEMA_VERSION: &str = "1";

/// A blob as recorded in one namespace.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ContentRecord {
    #[prost(uint64, tag = "1")]
    pub(crate) size: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) created_ns: u64,
    #[prost(uint64, tag = "3")]
    pub(crate) updated_ns: u64,
    #[prost(map = "string, string", tag = "4")]
    pub(crate) labels: HashMap<String, String>,
}

/// A commit in flight: what to record once the blob is in place.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PendingCommit {
    #[prost(string, tag = "1")]
    pub(crate) namespace: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) record: Option<ContentRecord>,
    #[prost(string, tag = "3")]
    pub(crate) lease: String,
    #[prost(string, tag = "4")]
    pub(crate) r#ref: String,
}

/// A lease.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaseRecord {
    #[prost(uint64, tag = "1")]
    pub(crate) created_ns: u64,
    #[prost(map = "string, string", tag = "2")]
    pub(crate) labels: HashMap<String, String>,
}

/// Labels of a namespace.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NamespaceRecord {
    #[prost(map = "string, string", tag = "1")]
    pub(crate) labels: HashMap<String, String>,
}

pub(crate) fn content_key(ns: &str, digest: &str) -> Vec<u8> {
    format!("c/{ns}/{digest}").into_bytes()
}
pub(crate) fn content_prefix(ns: &str) -> Vec<u8> {
    format!("c/{ns}/").into_bytes()
}
pub(crate) fn pending_key(digest: &str) -> Vec<u8> {
    format!("p/{digest}").into_bytes()
}
pub(crate) fn lease_key(ns: &str, id: &str) -> Vec<u8> {
    format!("l/{ns}/{id}").into_bytes()
}
pub(crate) fn resource_prefix(ns: &str, id: &str) -> Vec<u8> {
    format!("r/{ns}/{id}/").into_bytes()
}
pub(crate) fn resource_key(ns: &str, id: &str, rtype: &str, rid: &str) -> Vec<u8> {
    let mut k = resource_prefix(ns, id);
    k.extend_from_slice(rtype.as_bytes());
    k.push(0);
    k.extend_from_slice(rid.as_bytes());
    k
}
pub(crate) fn namespace_key(ns: &str) -> Vec<u8> {
    format!("n/{ns}").into_bytes()
}

pub(crate) fn labels_to_map(l: &Labels) -> HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
pub(crate) fn map_to_labels(m: &HashMap<String, String>) -> Labels {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Opens (creating) a RocksDB database whose key `v` holds its schema version: writes
/// `version` into a new database, and refuses one written with another version. Shared by
/// every strata store that keeps metadata in RocksDB.
pub fn open_versioned(path: &Path, version: &str) -> Result<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_keep_log_file_num(4);
    opts.set_max_log_file_size(4 << 20);
    let db = DB::open(&opts, path).map_err(|e| Error::db("open", e))?;
    match db
        .get(b"v")
        .map_err(|e| Error::db("read schema version", e))?
    {
        None => db
            .put(b"v", version)
            .map_err(|e| Error::db("write schema version", e))?,
        Some(v) if v == version.as_bytes() => {}
        Some(v) => {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!(
                    "{} has schema version {:?}, this strata reads {version}",
                    path.display(),
                    String::from_utf8_lossy(&v)
                ),
            ));
        }
    }
    Ok(db)
}

/// The opened database.
pub(crate) struct Meta {
    db: DB,
}

impl Meta {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let db = open_versioned(path, SCHEMA_VERSION)?;
        Ok(Meta { db })
    }

    pub(crate) fn get<M: Message + Default>(&self, key: &[u8], what: &str) -> Result<Option<M>> {
        match self.db.get_pinned(key).map_err(|e| Error::db("get", e))? {
            None => Ok(None),
            Some(v) => M::decode(&*v)
                .map(Some)
                .map_err(|e| Error::corrupt(what, e)),
        }
    }

    pub(crate) fn exists(&self, key: &[u8]) -> Result<bool> {
        Ok(self
            .db
            .get_pinned(key)
            .map_err(|e| Error::db("get", e))?
            .is_some())
    }

    /// Applies a batch durably (fsync of the WAL) before returning.
    pub(crate) fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| Error::db("write", e))
    }

    /// Every key/value under `prefix`, in key order.
    pub(crate) fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| Error::db("iterate", e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// Encodes a message for a batch.
pub(crate) fn enc<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}
