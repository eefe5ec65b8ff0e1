//! Leases and garbage collection.
//!
//! **Roots** (what is kept): every record in the global space (a proxied containerd owns
//! those and deletes them itself); records in a named namespace labelled
//! `containerd.io/gc.root`; resources of live leases (`content`, `ingests`). A lease
//! whose `containerd.io/gc.expire` time has passed is deleted first.
//!
//! **References**: a kept record's `containerd.io/gc.ref.content[.<suffix>]` labels name
//! more digests of the same namespace to keep (not followed from a lease labelled
//! `containerd.io/gc.flat`).
//!
//! **Sweep**: named-namespace records not kept are deleted, and a blob file goes with its
//! last record. Ingests of named namespaces that are not leased, not open and not written
//! for [`crate::StoreOptions::ingest_expiry`] are removed. Global-space ingests belong to
//! the proxied client, which aborts them itself.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::time::SystemTime;

use rocksdb::WriteBatch;
use strata_proto::Digest;
use strata_proto::filter::{Adaptor, label_field};
use strata_proto::time::{from_nanos, to_nanos};
use tracing::{debug, info};

use crate::api::{
    Labels, Lease, LeaseManager, Resource, Scope, validate_identifier, validate_labels,
};
use crate::meta::{self, ContentRecord, LeaseRecord, enc};
use crate::store::{LocalStore, ns_str, parse_filters};
use crate::{Error, Result};

/// Label on an object that keeps it (and what it references) from collection.
pub const GC_ROOT: &str = "containerd.io/gc.root";
/// Label prefix naming content referenced by an object.
pub const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Lease label: RFC 3339 time after which the lease is deleted.
pub const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// Lease label: the lease keeps only its direct resources, not what they reference.
pub const GC_FLAT: &str = "containerd.io/gc.flat";

/// What one garbage collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Content records removed from named namespaces.
    pub records: usize,
    /// Blob files removed.
    pub blobs: usize,
    /// Ingests removed.
    pub ingests: usize,
    /// Expired leases removed.
    pub leases: usize,
}

struct LeaseAdaptor<'a>(&'a Lease);
impl Adaptor for LeaseAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("id") if path.len() == 1 => Some(self.0.id.clone()),
            Some("labels") => label_field(path, &self.0.labels),
            _ => None,
        }
    }
}

fn decode_lease(id: String, v: &[u8]) -> Result<Lease> {
    let rec = <LeaseRecord as prost::Message>::decode(v).map_err(|e| Error::corrupt("lease", e))?;
    Ok(Lease {
        id,
        created_at: from_nanos(rec.created_ns),
        labels: meta::map_to_labels(&rec.labels),
    })
}

fn validate_resource(r: &Resource) -> Result<()> {
    if r.id.is_empty() || r.id.len() > crate::api::MAX_REF_LEN || r.id.contains('\0') {
        return Err(Error::invalid(
            "lease resource id is empty, too long or has NUL",
        ));
    }
    let ok = match r.r#type.as_str() {
        "content" => Digest::parse(&r.id).is_ok(),
        "ingests" => crate::api::validate_ref(&r.id).is_ok(),
        t => t
            .strip_prefix("snapshots/")
            .is_some_and(|s| !s.is_empty() && !s.contains('\0')),
    };
    if !ok {
        return Err(Error::invalid(format!(
            "invalid lease resource {:?} of type {:?}",
            crate::api::truncate(&r.id),
            crate::api::truncate(&r.r#type)
        )));
    }
    Ok(())
}

pub use strata_proto::time::parse_rfc3339;

impl LeaseManager for LocalStore {
    fn create_lease(&self, scope: &Scope, id: &str, labels: Labels) -> Result<Lease> {
        validate_identifier("lease id", id)?;
        validate_labels(&labels)?;
        let ns = ns_str(scope);
        let key = meta::lease_key(ns, id);
        let _shared = self.inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        if self.inner.meta.exists(&key)? {
            return Err(Error::already_exists(format!("lease {id:?}")));
        }
        let rec = LeaseRecord {
            created_ns: to_nanos(SystemTime::now()),
            labels: meta::labels_to_map(&labels),
        };
        let mut b = WriteBatch::default();
        b.put(key, enc(&rec));
        self.inner.meta.write(b)?;
        Ok(Lease {
            id: id.to_owned(),
            created_at: from_nanos(rec.created_ns),
            labels,
        })
    }

    fn delete_lease(&self, scope: &Scope, id: &str, sync: bool) -> Result<()> {
        validate_identifier("lease id", id)?;
        let ns = ns_str(scope);
        {
            let _excl = self
                .inner
                .gc_lock
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let key = meta::lease_key(ns, id);
            if !self.inner.meta.exists(&key)? {
                return Err(Error::not_found(format!("lease {id:?}")));
            }
            let mut b = WriteBatch::default();
            b.delete(key);
            for (k, _) in self.inner.meta.scan(&meta::resource_prefix(ns, id))? {
                b.delete(k);
            }
            self.inner.meta.write(b)?;
        }
        if sync {
            self.garbage_collect()?;
        }
        Ok(())
    }

    fn list_leases(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Lease>> {
        let filter = parse_filters(filters)?;
        let prefix = meta::lease_key(ns_str(scope), "");
        let mut out = Vec::new();
        for (k, v) in self.inner.meta.scan(&prefix)? {
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let lease = decode_lease(id, &v)?;
            if filter.matches(&LeaseAdaptor(&lease)) {
                out.push(lease);
            }
        }
        Ok(out)
    }

    fn add_resource(&self, scope: &Scope, id: &str, r: Resource) -> Result<()> {
        validate_identifier("lease id", id)?;
        validate_resource(&r)?;
        let ns = ns_str(scope);
        let _shared = self.inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        if !self.inner.meta.exists(&meta::lease_key(ns, id))? {
            return Err(Error::not_found(format!("lease {id:?}")));
        }
        let mut b = WriteBatch::default();
        b.put(meta::resource_key(ns, id, &r.r#type, &r.id), b"");
        self.inner.meta.write(b)
    }

    fn delete_resource(&self, scope: &Scope, id: &str, r: Resource) -> Result<()> {
        validate_identifier("lease id", id)?;
        validate_resource(&r)?;
        let ns = ns_str(scope);
        if !self.inner.meta.exists(&meta::lease_key(ns, id))? {
            return Err(Error::not_found(format!("lease {id:?}")));
        }
        let mut b = WriteBatch::default();
        b.delete(meta::resource_key(ns, id, &r.r#type, &r.id));
        self.inner.meta.write(b)
    }

    fn list_resources(&self, scope: &Scope, id: &str) -> Result<Vec<Resource>> {
        validate_identifier("lease id", id)?;
        let ns = ns_str(scope);
        if !self.inner.meta.exists(&meta::lease_key(ns, id))? {
            return Err(Error::not_found(format!("lease {id:?}")));
        }
        let prefix = meta::resource_prefix(ns, id);
        let mut out = Vec::new();
        for (k, _) in self.inner.meta.scan(&prefix)? {
            let tail = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some((t, rid)) = tail.split_once('\0') {
                out.push(Resource {
                    id: rid.to_owned(),
                    r#type: t.to_owned(),
                });
            }
        }
        Ok(out)
    }
}

impl LocalStore {
    /// Collects garbage as described in the module docs. Holds the store's exclusive lock
    /// while it runs, so no commit or delete interleaves with it.
    pub fn garbage_collect(&self) -> Result<GcReport> {
        let inner = &self.inner;
        let _excl = inner.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        let mut report = GcReport::default();

        // Expired leases go first, with their resources.
        let mut batch = WriteBatch::default();
        let mut live: Vec<(String, String, bool)> = Vec::new();
        for (k, v) in inner.meta.scan(b"l/")? {
            let tail = String::from_utf8_lossy(&k[2..]).into_owned();
            let Some((ns, id)) = tail.split_once('/') else {
                continue;
            };
            let lease = decode_lease(id.to_owned(), &v)?;
            let expired = lease
                .labels
                .get(GC_EXPIRE)
                .and_then(|t| parse_rfc3339(t))
                .is_some_and(|t| t <= now);
            if expired {
                batch.delete(&k);
                for (rk, _) in inner.meta.scan(&meta::resource_prefix(ns, id))? {
                    batch.delete(rk);
                }
                report.leases += 1;
            } else {
                live.push((
                    ns.to_owned(),
                    id.to_owned(),
                    lease.labels.contains_key(GC_FLAT),
                ));
            }
        }
        inner.meta.write(batch)?;

        // Records of named namespaces, and roots.
        let mut records: HashMap<(String, String), ContentRecord> = HashMap::new();
        let mut keep: HashSet<(String, String)> = HashSet::new();
        let mut queue: VecDeque<(String, String)> = VecDeque::new();
        let mut leased_ingests: HashSet<(String, String)> = HashSet::new();
        for (k, v) in inner.meta.scan(b"c/")? {
            let tail = String::from_utf8_lossy(&k[2..]).into_owned();
            let Some((ns, d)) = tail.split_once('/') else {
                continue;
            };
            if ns.is_empty() {
                continue; // the global space is never collected
            }
            let rec = <ContentRecord as prost::Message>::decode(&*v)
                .map_err(|e| Error::corrupt("content record", e))?;
            let key = (ns.to_owned(), d.to_owned());
            if rec.labels.contains_key(GC_ROOT) {
                queue.push_back(key.clone());
            }
            records.insert(key, rec);
        }
        // Images are roots: their targets, and what those reference, are kept.
        for (ns, digest) in self.image_roots()? {
            queue.push_back((ns, digest));
        }
        for (ns, id, flat) in &live {
            let prefix = meta::resource_prefix(ns, id);
            for (k, _) in inner.meta.scan(&prefix)? {
                let tail = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                match tail.split_once('\0') {
                    Some(("content", d)) => {
                        let key = (ns.clone(), d.to_owned());
                        if *flat {
                            keep.insert(key);
                        } else {
                            queue.push_back(key);
                        }
                    }
                    Some(("ingests", r)) => {
                        leased_ingests.insert((ns.clone(), r.to_owned()));
                    }
                    _ => {}
                }
            }
        }
        while let Some(key) = queue.pop_front() {
            if !keep.insert(key.clone()) {
                continue;
            }
            if let Some(rec) = records.get(&key) {
                for (l, v) in &rec.labels {
                    if l.starts_with(GC_REF_CONTENT) && Digest::parse(v).is_ok() {
                        queue.push_back((key.0.clone(), v.clone()));
                    }
                }
            }
        }

        // Sweep records, then blob files left without any record.
        let mut batch = WriteBatch::default();
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        for key in records.keys() {
            if !keep.contains(key) {
                batch.delete(meta::content_key(&key.0, &key.1));
                dropped.insert(key.1.clone());
                report.records += 1;
            }
        }
        inner.meta.write(batch)?;
        for d in dropped {
            if !inner.has_any_record(&d)?
                && let Ok(digest) = Digest::parse(&d)
                && inner.blob_path(&digest).exists()
            {
                inner.remove_blob_file(&digest)?;
                report.blobs += 1;
            }
        }

        // Expired ingests of named namespaces.
        for (dir, ns, st) in self.all_ingests()? {
            if ns.is_empty()
                || leased_ingests.contains(&(ns.clone(), st.r#ref.clone()))
                || inner.is_open(&ns, &st.r#ref)
            {
                continue;
            }
            let age = now.duration_since(st.updated_at).unwrap_or_default();
            if age >= inner.opts.ingest_expiry {
                debug!(ns, r#ref = %crate::api::truncate(&st.r#ref), "removing expired ingest");
                fs::remove_dir_all(&dir).map_err(|e| Error::io("remove ingest", &dir, e))?;
                report.ingests += 1;
            }
        }
        if report != GcReport::default() {
            info!(?report, "garbage collected");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            86401
        );
        let t = parse_rfc3339("2024-02-29T12:00:00.5+01:00").unwrap();
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_709_204_400);
        assert_eq!(d.subsec_millis(), 500);
        for bad in [
            "",
            "2024-13-01T00:00:00Z",
            "yesterday",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
