//! Managing what is stored: ingest statuses and aborts, blob info, labels, listing and
//! deletion.

use super::*;

pub(super) struct StatusAdaptor<'a>(&'a Status);
impl Adaptor for StatusAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "ref" => Some(self.0.r#ref.clone()),
            _ => None,
        }
    }
}

pub(crate) struct InfoAdaptor<'a>(pub(crate) &'a Info);
impl Adaptor for InfoAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str) {
            Some("digest") if path.len() == 1 => Some(self.0.digest.to_string()),
            Some("size") if path.len() == 1 => Some(self.0.size.to_string()),
            Some("labels") => label_field(path, &self.0.labels),
            _ => None,
        }
    }
}

pub(crate) fn parse_filters(filters: &[String]) -> Result<Filter> {
    Filter::parse_all(filters).map_err(|e| Error::invalid("parse filters").with_source(e))
}

impl LocalStore {
    /// Status of the ingest in `dir`, if it belongs to `ns`.
    fn ingest_status(&self, dir: &Path, ns: &str) -> Option<Status> {
        let meta = read_ingest_meta(dir)?;
        if meta.namespace != ns {
            return None;
        }
        let live = self
            .inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_owned(), meta.r#ref.clone()))
            .map(|o| o.load(Ordering::Relaxed));
        let data_md = fs::metadata(dir.join("data")).ok();
        let offset = live
            .or_else(|| read_checkpoint(dir).map(|(o, _)| o))
            .unwrap_or(0);
        let updated = data_md
            .and_then(|m| m.modified().ok())
            .unwrap_or(meta.started_at);
        Some(Status {
            r#ref: meta.r#ref,
            offset,
            total: meta.total,
            expected: meta.expected,
            started_at: meta.started_at,
            updated_at: updated,
        })
    }

    /// Every ingest dir with its namespace and status.
    pub(crate) fn all_ingests(&self) -> Result<Vec<(PathBuf, String, Status)>> {
        let mut out = Vec::new();
        let root = &self.inner.ingest;
        for e in fs::read_dir(root).map_err(io("read directory", root))? {
            let e = e.map_err(io("read directory", root))?;
            let p = e.path();
            if p.to_string_lossy().contains(".tmp-") {
                continue;
            }
            if let Some(m) = read_ingest_meta(&p) {
                let ns = m.namespace.clone();
                if let Some(s) = self.ingest_status(&p, &ns) {
                    out.push((p, ns, s));
                }
            }
        }
        Ok(out)
    }
}

impl IngestManager for LocalStore {
    fn status(&self, scope: &Scope, r: &str) -> Result<Status> {
        validate_ref(r)?;
        let ns = ns_str(scope);
        let dir = self.inner.ingest_dir(ns, r);
        self.ingest_status(&dir, ns)
            .filter(|s| s.r#ref == r)
            .ok_or_else(|| Error::not_found(format!("ingest {:?}", truncate(r))))
    }

    fn list_statuses(&self, scope: &Scope, filters: &[String]) -> Result<Vec<Status>> {
        let filter = parse_filters(filters)?;
        let ns = ns_str(scope);
        let mut out: Vec<Status> = self
            .all_ingests()?
            .into_iter()
            .filter(|(_, n, s)| n == ns && filter.matches(&StatusAdaptor(s)))
            .map(|(_, _, s)| s)
            .collect();
        out.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
        Ok(out)
    }

    fn abort(&self, scope: &Scope, r: &str) -> Result<()> {
        validate_ref(r)?;
        let ns = ns_str(scope);
        // Holding the ref while removing keeps a writer from opening it concurrently.
        let _guard = self.lock_ref(ns, r)?;
        let dir = self.inner.ingest_dir(ns, r);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found(format!("ingest {:?}", truncate(r))))
            }
            Err(e) => Err(Error::io("remove ingest", &dir, e)),
        }
    }
}

pub(super) fn blob_digests(blobs: &Path) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let d = blobs.join(alg.as_str());
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", &d, e)),
        };
        for e in rd {
            let e = e.map_err(io("read directory", &d))?;
            let name = e.file_name();
            if let Ok(dg) = Digest::parse(&format!("{alg}:{}", name.to_string_lossy())) {
                out.push(dg);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl LocalStore {
    /// Digests of every blob file on disk.
    pub(crate) fn blob_digests(&self) -> Result<Vec<Digest>> {
        blob_digests(&self.inner.blobs)
    }
}

impl Manager for LocalStore {
    fn update(
        &self,
        scope: &Scope,
        digest: &Digest,
        labels: Labels,
        fieldpaths: &[String],
    ) -> Result<Info> {
        let _shared = self.inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut rec = self.visible(scope, digest, false)?;
        let mut cur = meta::map_to_labels(&rec.labels);
        if fieldpaths.is_empty() {
            cur = labels;
        } else {
            for p in fieldpaths {
                if p == "labels" {
                    cur = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k) {
                        Some(v) => cur.insert(k.to_owned(), v.clone()),
                        None => cur.remove(k),
                    };
                } else {
                    return Err(Error::invalid(format!(
                        "cannot update {:?} field on content info {digest}",
                        truncate(p)
                    )));
                }
            }
        }
        cur.retain(|_, v| !v.is_empty());
        validate_labels(&cur)?;
        rec.labels = meta::labels_to_map(&cur);
        rec.updated_ns = to_nanos(now()).max(rec.updated_ns + 1);
        let mut b = WriteBatch::default();
        b.put(
            meta::content_key(ns_str(scope), &digest.to_string()),
            enc(&rec),
        );
        self.inner.meta.write(b)?;
        Ok(to_info(digest.clone(), &rec))
    }

    fn walk(
        &self,
        scope: &Scope,
        filters: &[String],
        f: &mut dyn FnMut(Info) -> Result<()>,
    ) -> Result<()> {
        let filter = parse_filters(filters)?;
        let mut infos = Vec::new();
        if scope.namespace.is_some() {
            let prefix = meta::content_prefix(ns_str(scope));
            for (k, v) in self.inner.meta.scan(&prefix)? {
                let Ok(d) = Digest::parse(&String::from_utf8_lossy(&k[prefix.len()..])) else {
                    continue;
                };
                let rec = <ContentRecord as prost::Message>::decode(&*v)
                    .map_err(|e| Error::corrupt("content record", e))?;
                infos.push(to_info(d, &rec));
            }
        } else {
            for d in self.blob_digests()? {
                match self.visible(scope, &d, false) {
                    Ok(rec) => infos.push(to_info(d, &rec)),
                    Err(e) if e.is(ErrorKind::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for info in infos {
            if filter.matches(&InfoAdaptor(&info)) {
                f(info)?;
            }
        }
        Ok(())
    }

    fn delete(&self, scope: &Scope, digest: &Digest) -> Result<()> {
        let inner = &self.inner;
        let _excl = inner.gc_lock.write().unwrap_or_else(|e| e.into_inner());
        let ns = ns_str(scope);
        let key = meta::content_key(ns, &digest.to_string());
        let recorded = inner.meta.exists(&key)?;
        if !recorded && (scope.namespace.is_some() || !inner.blob_path(digest).exists()) {
            return Err(Error::not_found(format!("content {digest}")));
        }
        if recorded {
            let mut b = WriteBatch::default();
            b.delete(&key);
            inner.meta.write(b)?;
        }
        if !inner.has_any_record(&digest.to_string())? {
            inner.remove_blob_file(digest)?;
        }
        Ok(())
    }
}
