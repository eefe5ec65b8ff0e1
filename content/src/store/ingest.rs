//! Ingests: opening, resuming and healing an in-progress write, checkpoints, and the
//! writer that hashes, writes and commits it.

use super::*;

/// Holds a ref for an open writer; releases it on drop.
pub(super) struct RefGuard {
    pub(super) inner: Arc<Inner>,
    pub(super) key: IngestKey,
    pub(super) offset: Arc<AtomicU64>,
}

impl Drop for RefGuard {
    fn drop(&mut self) {
        self.inner
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// Static facts of an ingest, stored once in its dir.
pub(super) struct IngestMeta {
    pub(super) r#ref: String,
    pub(super) namespace: String,
    pub(super) started_at: SystemTime,
    pub(super) total: u64,
    pub(super) expected: Option<Digest>,
}

pub(super) fn read_small(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    File::open(path)?.take(8192).read_to_string(&mut s)?;
    Ok(s)
}

pub(super) fn read_ingest_meta(dir: &Path) -> Option<IngestMeta> {
    let r = read_small(&dir.join("ref")).ok()?;
    let namespace = read_small(&dir.join("namespace")).ok()?;
    let started: u64 = read_small(&dir.join("startedat"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let total: u64 = read_small(&dir.join("total")).ok()?.trim().parse().ok()?;
    let expected = match read_small(&dir.join("expected")).ok()?.trim() {
        "" => None,
        s => Some(Digest::parse(s).ok()?),
    };
    Some(IngestMeta {
        r#ref: r,
        namespace,
        started_at: from_nanos(started),
        total,
        expected,
    })
}

/// The durable checkpoint of an ingest: offset and digest of `data[..offset]`.
pub(super) fn read_checkpoint(dir: &Path) -> Option<(u64, Digest)> {
    let s = read_small(&dir.join("checkpoint")).ok()?;
    let (off, d) = s.trim().split_once(' ')?;
    Some((off.parse().ok()?, Digest::parse(d).ok()?))
}

pub(super) fn write_checkpoint(dir: &Path, offset: u64, digest: &Digest) -> Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp).map_err(io("create checkpoint", &tmp))?;
    f.write_all(format!("{offset} {digest}\n").as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(io("write checkpoint", &tmp))?;
    let dst = dir.join("checkpoint");
    fs::rename(&tmp, &dst).map_err(io("rename checkpoint", &dst))
}

pub(super) fn sha256_digest(h: &Sha256) -> Digest {
    Digest::from_bytes(Algorithm::Sha256, &h.clone().finalize()).expect("sha256 length")
}

/// Hashes the first `len` bytes of `f` into a fresh hasher; `None` if the file is shorter.
pub(super) fn hash_prefix(f: &File, len: u64) -> std::io::Result<Option<Sha256>> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let want = usize::try_from((len - off).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(None);
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(Some(h))
}

pub(super) fn hash_file_sha512(path: &Path) -> Result<Digest> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_bytes(Algorithm::Sha512, &h.finalize()).expect("sha512 length"))
}

impl Ingester for LocalStore {
    fn ingest_reader(&self, scope: &Scope, r: &str) -> Result<Box<dyn crate::api::ReadAt>> {
        let path = self.ingest_data_path(scope, r)?;
        let f = File::open(&path).map_err(io("open ingest data", &path))?;
        Ok(Box::new(f))
    }

    fn writer(&self, scope: &Scope, opts: WriterOptions) -> Result<Box<dyn Writer>> {
        validate_ref(&opts.r#ref)?;
        self.check_lease(scope)?;
        let ns = ns_str(scope).to_owned();
        let guard = self.lock_ref(&ns, &opts.r#ref)?;

        if let Some(expected) = &opts.expected {
            let in_scope = meta::content_key(&ns, &expected.to_string());
            if self.inner.meta.exists(&in_scope)? {
                self.lease_content(scope, expected)?;
                return Err(Error::already_exists(format!("content {expected}")));
            }
            let on_disk = fs::metadata(self.blob_path(expected)).ok();
            if let Some(md) = on_disk {
                if scope.namespace.is_none() {
                    self.visible(scope, expected, true)?;
                    return Err(Error::already_exists(format!("content {expected}")));
                }
                let share = self.inner.opts.sharing == SharingPolicy::Shared
                    || self.shareable_elsewhere(expected)?;
                if share && (opts.total == 0 || opts.total == md.len()) {
                    return Ok(Box::new(LocalWriter {
                        store: self.clone(),
                        scope: scope.clone(),
                        state: WriterState::Shared {
                            digest: expected.clone(),
                            size: md.len(),
                        },
                        r#ref: opts.r#ref,
                        total: md.len(),
                        expected: Some(expected.clone()),
                        started_at: now(),
                        updated_at: now(),
                        guard,
                    }));
                }
            }
        }
        let (dir, r) = self.open_ingest(scope, &opts)?;
        if let Some(l) = &scope.lease {
            let mut b = WriteBatch::default();
            b.put(meta::resource_key(&ns, l, "ingests", &opts.r#ref), b"");
            self.inner.meta.write(b)?;
        }
        guard.offset.store(r.offset, Ordering::Relaxed);
        let updated = r
            .file
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| now());
        Ok(Box::new(LocalWriter {
            store: self.clone(),
            scope: scope.clone(),
            r#ref: opts.r#ref,
            total: r.meta.total,
            expected: r.meta.expected.clone(),
            started_at: r.meta.started_at,
            updated_at: updated,
            state: WriterState::Ingest(Box::new(r.into_state(dir))),
            guard,
        }))
    }
}

impl LocalStore {
    fn lease_content(&self, scope: &Scope, digest: &Digest) -> Result<()> {
        if let Some(l) = &scope.lease {
            let mut b = WriteBatch::default();
            b.put(
                meta::resource_key(ns_str(scope), l, "content", &digest.to_string()),
                b"",
            );
            self.inner.meta.write(b)?;
        }
        Ok(())
    }

    /// Opens or resumes the ingest dir of `opts.ref`.
    fn open_ingest(&self, scope: &Scope, opts: &WriterOptions) -> Result<(PathBuf, Resumed)> {
        let ns = ns_str(scope);
        let dir = self.inner.ingest_dir(ns, &opts.r#ref);
        if dir.exists() {
            match self.resume(&dir, ns, opts) {
                Ok(Some(r)) => return Ok((dir, r)),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cannot resume ingest, will recreate"),
            }
            fs::remove_dir_all(&dir).map_err(io("remove stale ingest", &dir))?;
        }
        // Build the ingest in a temp dir and rename it into place, so a crash never leaves a
        // half-written ingest behind.
        let tmp = self.inner.ingest.join(format!(
            "{}.tmp-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io("remove temp ingest", &tmp))?;
        }
        fs::create_dir(&tmp).map_err(io("create ingest", &tmp))?;
        let started = now();
        let files: [(&str, String); 5] = [
            ("ref", opts.r#ref.clone()),
            ("namespace", ns.to_owned()),
            ("startedat", to_nanos(started).to_string()),
            ("total", opts.total.to_string()),
            (
                "expected",
                opts.expected
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        ];
        for (name, content) in files {
            let p = tmp.join(name);
            fs::write(&p, content).map_err(io("write ingest file", &p))?;
        }
        let empty = sha256_digest(&Sha256::new());
        write_checkpoint(&tmp, 0, &empty)?;
        let data = tmp.join("data");
        File::create(&data).map_err(io("create ingest data", &data))?;
        fs::rename(&tmp, &dir).map_err(io("rename ingest into place", &dir))?;
        let file = open_data(&dir)?;
        let w = Resumed {
            file,
            hasher: Sha256::new(),
            offset: 0,
            meta: IngestMeta {
                r#ref: opts.r#ref.clone(),
                namespace: ns.to_owned(),
                started_at: started,
                total: opts.total,
                expected: opts.expected.clone(),
            },
        };
        Ok((dir, w))
    }

    /// Resumes an existing ingest; `None` when it must be recreated.
    fn resume(&self, dir: &Path, ns: &str, opts: &WriterOptions) -> Result<Option<Resumed>> {
        let Some(meta) = read_ingest_meta(dir) else {
            warn!(dir = %dir.display(), "ingest metadata unreadable, will recreate");
            return Ok(None);
        };
        if meta.r#ref != opts.r#ref || meta.namespace != ns {
            warn!(dir = %dir.display(), "ingest belongs to another ref, will recreate");
            return Ok(None);
        }
        if opts.total > 0 && meta.total > 0 && opts.total != meta.total {
            warn!(
                stored = meta.total,
                requested = opts.total,
                "ingest total differs, will recreate"
            );
            return Ok(None);
        }
        let file = open_data(dir)?;
        let (mut offset, want) = read_checkpoint(dir).unwrap_or((0, sha256_digest(&Sha256::new())));
        let data = dir.join("data");
        let mut hasher = match hash_prefix(&file, offset).map_err(io("read ingest", &data))? {
            Some(h) if sha256_digest(&h) == want => h,
            _ => {
                warn!(ref_ = %truncate(&opts.r#ref), offset, "ingest data does not match its checkpoint, restarting at 0");
                offset = 0;
                write_checkpoint(dir, 0, &sha256_digest(&Sha256::new()))?;
                Sha256::new()
            }
        };
        let len = file.metadata().map_err(io("stat", &data))?.len();
        if len != offset {
            // Bytes past the checkpoint were never made durable: they may be garbage.
            debug!(len, offset, "dropping unverified ingest tail");
            file.set_len(offset).map_err(io("truncate ingest", &data))?;
        }
        if offset == 0 {
            hasher = Sha256::new();
        }
        let mut meta = meta;
        if meta.total == 0 {
            meta.total = opts.total;
        }
        if meta.expected.is_none() {
            meta.expected = opts.expected.clone();
        }
        Ok(Some(Resumed {
            file,
            hasher,
            offset,
            meta,
        }))
    }
}

pub(super) fn open_data(dir: &Path) -> Result<File> {
    let data = dir.join("data");
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&data)
        .map_err(io("open ingest data", &data))
}

pub(super) struct Resumed {
    file: File,
    hasher: Sha256,
    offset: u64,
    meta: IngestMeta,
}

impl Resumed {
    fn into_state(self, dir: PathBuf) -> IngestState {
        IngestState {
            dir,
            file: self.file,
            hasher: self.hasher,
            offset: self.offset,
            checkpointed: self.offset,
            requested: self.offset,
            kicked: self.offset,
            background: None,
        }
    }
}

pub(super) struct IngestState {
    dir: PathBuf,
    file: File,
    hasher: Sha256,
    offset: u64,
    /// Offset of the last durable checkpoint.
    checkpointed: u64,
    /// Offset of the last checkpoint started (in the background or not).
    requested: u64,
    /// Offset up to which writeback has been started.
    kicked: u64,
    /// A checkpoint running in the background; yields its offset.
    background: Option<std::thread::JoinHandle<Result<u64>>>,
}

pub(super) enum WriterState {
    /// A real ingest on disk.
    Ingest(Box<IngestState>),
    /// A blob another namespace holds, offered at `offset == size` (shared policy).
    Shared { digest: Digest, size: u64 },
    /// Committed (with the blob's digest) or failed beyond repair; writes error.
    Done(Option<Digest>),
}

pub(super) struct LocalWriter {
    store: LocalStore,
    scope: Scope,
    pub(super) r#ref: String,
    total: u64,
    expected: Option<Digest>,
    started_at: SystemTime,
    updated_at: SystemTime,
    state: WriterState,
    guard: RefGuard,
}

impl IngestState {
    /// Makes everything written durable and records it, waiting for both.
    fn checkpoint(&mut self) -> Result<()> {
        self.join_background()?;
        let data = self.dir.join("data");
        self.file.sync_data().map_err(io("fdatasync", &data))?;
        write_checkpoint(&self.dir, self.offset, &sha256_digest(&self.hasher))?;
        self.checkpointed = self.offset;
        self.requested = self.offset;
        Ok(())
    }

    /// Waits for a background checkpoint, if one runs.
    fn join_background(&mut self) -> Result<()> {
        if let Some(h) = self.background.take() {
            let off = h
                .join()
                .map_err(|_| Error::new(ErrorKind::Internal, "checkpoint thread panicked"))??;
            self.checkpointed = self.checkpointed.max(off);
        }
        Ok(())
    }

    /// Starts a checkpoint of the bytes so far on a background thread, so hashing and
    /// copying go on while the disk catches up; at most one runs at a time.
    fn checkpoint_in_background(&mut self) -> Result<()> {
        if self.background.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        self.join_background()?;
        let data = self.dir.join("data");
        let file = self.file.try_clone().map_err(io("dup", &data))?;
        let (dir, offset, digest) = (self.dir.clone(), self.offset, sha256_digest(&self.hasher));
        self.requested = offset;
        self.background = Some(std::thread::spawn(move || {
            file.sync_data().map_err(io("fdatasync", &data))?;
            write_checkpoint(&dir, offset, &digest)?;
            Ok(offset)
        }));
        Ok(())
    }

    /// Starts writeback of what was written since the last kick, without waiting.
    fn kick_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let len = self.offset - self.kicked;
        // SAFETY: sync_file_range only reads the fd and the integer range; a failure is
        // harmless (the final fdatasync does the work).
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                i64::try_from(self.kicked).unwrap_or(0),
                i64::try_from(len).unwrap_or(0),
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.kicked = self.offset;
    }
}

impl LocalWriter {
    /// Turns a shared writer into a real ingest holding a copy of the shared blob, so it
    /// can be appended to or truncated.
    fn materialize(&mut self, copy: bool) -> Result<&mut IngestState> {
        if let WriterState::Shared { digest, .. } = &self.state {
            let digest = digest.clone();
            let opts = WriterOptions {
                r#ref: self.r#ref.clone(),
                total: 0,
                expected: None,
            };
            let (dir, r) = self.store.open_ingest(&self.scope, &opts)?;
            let mut st = r.into_state(dir);
            st.file.set_len(0).map_err(io("truncate ingest", &st.dir))?;
            st.offset = 0;
            st.checkpointed = 0;
            st.requested = 0;
            st.kicked = 0;
            st.hasher = Sha256::new();
            let mut state = WriterState::Ingest(Box::new(st));
            if copy {
                let src = self.store.blob_path(&digest);
                let mut f = File::open(&src).map_err(io("open blob", &src))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(io("read blob", &src))?;
                    if n == 0 {
                        break;
                    }
                    write_into(&mut state, &buf[..n], &self.guard, u64::MAX)?;
                }
            }
            self.expected = None;
            self.state = state;
        }
        match &mut self.state {
            WriterState::Ingest(st) => Ok(st),
            _ => Err(Error::precondition("writer is closed")),
        }
    }
}

pub(super) fn write_into(
    state: &mut WriterState,
    data: &[u8],
    guard: &RefGuard,
    interval: u64,
) -> Result<()> {
    let WriterState::Ingest(st) = state else {
        return Err(Error::precondition("writer is closed"));
    };
    let path = st.dir.join("data");
    let (file, offset, hasher) = (&st.file, st.offset, &mut st.hasher);
    let written = if data.len() >= PARALLEL_WRITE_MIN {
        // Hashing and copying into the page cache each take about as long as the other;
        // on two cores they overlap, reading the same borrowed buffer.
        std::thread::scope(|s| {
            let writer = s.spawn(|| file.write_all_at(data, offset));
            hasher.update(data);
            writer
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")))
        })
    } else {
        hasher.update(data);
        file.write_all_at(data, offset)
    };
    if let Err(e) = written {
        // The hasher has seen bytes that may not be on disk: the ingest must be resumed
        // from its checkpoint, so refuse further use of this writer.
        *state = WriterState::Done(None);
        return Err(Error::io("write ingest data", &path, e));
    }
    let WriterState::Ingest(st) = state else {
        unreachable!("checked above");
    };
    st.offset += data.len() as u64;
    guard.offset.store(st.offset, Ordering::Relaxed);
    if st.offset - st.kicked >= WRITEBACK_CHUNK {
        st.kick_writeback();
    }
    if st.offset - st.requested >= interval {
        st.checkpoint_in_background()?;
    }
    Ok(())
}

impl Writer for LocalWriter {
    fn status(&self) -> Result<Status> {
        let offset = match &self.state {
            WriterState::Ingest(st) => st.offset,
            WriterState::Shared { size, .. } => *size,
            WriterState::Done(_) => return Err(Error::precondition("writer is closed")),
        };
        Ok(Status {
            r#ref: self.r#ref.clone(),
            offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        })
    }

    fn digest(&self) -> Digest {
        match &self.state {
            WriterState::Ingest(st) => sha256_digest(&st.hasher),
            WriterState::Shared { digest, .. } => digest.clone(),
            WriterState::Done(Some(d)) => d.clone(),
            WriterState::Done(None) => sha256_digest(&Sha256::new()),
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.materialize(true)?;
        let interval = self.store.inner.opts.checkpoint_interval;
        write_into(&mut self.state, data, &self.guard, interval)?;
        self.updated_at = now();
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        if size != 0 {
            return Err(Error::invalid(format!(
                "truncate to {size}: only truncation to 0 is supported"
            )));
        }
        let st = self.materialize(false)?;
        // A checkpoint still running for the old bytes must land before the new one.
        st.join_background()?;
        let data = st.dir.join("data");
        st.file.set_len(0).map_err(io("truncate ingest", &data))?;
        st.offset = 0;
        st.checkpointed = 0;
        st.kicked = 0;
        st.hasher = Sha256::new();
        st.checkpoint()?;
        self.guard.offset.store(0, Ordering::Relaxed);
        self.updated_at = now();
        Ok(())
    }

    fn commit(&mut self, size: u64, expected: Option<&Digest>, labels: Labels) -> Result<Digest> {
        validate_labels(&labels)?;
        let store = self.store.clone();
        let inner = &store.inner;
        let ns = ns_str(&self.scope).to_owned();
        let t = to_nanos(now());
        let record = ContentRecord {
            size: 0,
            created_ns: t,
            updated_ns: t,
            labels: meta::labels_to_map(&labels),
        };
        let st = match &mut self.state {
            WriterState::Done(_) => return Err(Error::precondition("writer is closed")),
            WriterState::Shared { digest, size: have } => {
                if size != 0 && size != *have {
                    return Err(Error::precondition(format!(
                        "{:?} failed size validation: {have} != {size}",
                        truncate(&self.r#ref)
                    )));
                }
                if let Some(e) = expected
                    && e != digest
                {
                    return Err(Error::precondition(format!(
                        "{:?} unexpected digest {digest}, expected {e}",
                        truncate(&self.r#ref)
                    )));
                }
                let digest = digest.clone();
                let rec = ContentRecord {
                    size: *have,
                    ..record
                };
                let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
                let key = meta::content_key(&ns, &digest.to_string());
                if inner.meta.exists(&key)? {
                    self.state = WriterState::Done(Some(digest.clone()));
                    return Err(Error::already_exists(format!("content {digest}")));
                }
                let mut b = WriteBatch::default();
                b.put(key, enc(&rec));
                if let Some(l) = &self.scope.lease {
                    b.put(
                        meta::resource_key(&ns, l, "content", &digest.to_string()),
                        b"",
                    );
                }
                inner.meta.write(b)?;
                self.state = WriterState::Done(Some(digest.clone()));
                return Ok(digest);
            }
            WriterState::Ingest(st) => st,
        };
        let data = st.dir.join("data");
        // A checkpoint (fdatasync + digest) rather than a bare fdatasync: should the commit
        // not finish, the whole ingest resumes instead of restarting.
        if st.checkpointed != st.offset {
            st.checkpoint()?;
        } else {
            st.file.sync_data().map_err(io("fdatasync", &data))?;
        }
        if size != 0 && size != st.offset {
            return Err(Error::precondition(format!(
                "unexpected commit size {}, expected {size}",
                st.offset
            )));
        }
        let mut digest = sha256_digest(&st.hasher);
        if let Some(e) = expected {
            if e.algorithm() == Algorithm::Sha512 {
                digest = hash_file_sha512(&data)?;
            }
            if *e != digest {
                return Err(Error::precondition(format!(
                    "unexpected commit digest {digest}, expected {e}"
                )));
            }
        }
        let rec = ContentRecord {
            size: st.offset,
            ..record
        };
        let dkey = digest.to_string();
        let ckey = meta::content_key(&ns, &dkey);
        let blob = inner.blob_path(&digest);
        let dir = st.dir.clone();
        let _shared = inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut batch = WriteBatch::default();
        if let Some(l) = &self.scope.lease {
            batch.put(meta::resource_key(&ns, l, "content", &dkey), b"");
            batch.delete(meta::resource_key(&ns, l, "ingests", &self.r#ref));
        }
        if blob.exists() {
            fs::remove_dir_all(&dir).map_err(io("remove ingest", &dir))?;
            self.state = WriterState::Done(Some(digest.clone()));
            if inner.meta.exists(&ckey)? {
                inner.meta.write(batch)?;
                return Err(Error::already_exists(format!("content {digest}")));
            }
            if self.scope.namespace.is_none() {
                // Adopt it: the client now relies on this blob.
                batch.put(ckey, enc(&rec));
                inner.meta.write(batch)?;
                return Err(Error::already_exists(format!("content {digest}")));
            }
            batch.put(ckey, enc(&rec));
            inner.meta.write(batch)?;
            return Ok(digest);
        }
        let pending = PendingCommit {
            namespace: ns.clone(),
            record: Some(rec.clone()),
            lease: self.scope.lease.clone().unwrap_or_default(),
            r#ref: self.r#ref.clone(),
        };
        let mut pb = WriteBatch::default();
        pb.put(meta::pending_key(&dkey), enc(&pending));
        inner.meta.write(pb)?;
        store.failpoint("commit-before-rename");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o444))
            .map_err(io("chmod", &data))?;
        fs::rename(&data, &blob).map_err(io("rename blob into place", &blob))?;
        fsync_dir(blob.parent().unwrap_or(&inner.blobs))?;
        store.failpoint("commit-after-rename");
        fs::remove_dir_all(&dir).map_err(io("remove ingest", &dir))?;
        batch.put(ckey, enc(&rec));
        batch.delete(meta::pending_key(&dkey));
        inner.meta.write(batch)?;
        store.failpoint("commit-after-record");
        self.state = WriterState::Done(Some(digest.clone()));
        debug!(%digest, size = rec.size, "committed");
        Ok(digest)
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        if let WriterState::Ingest(st) = &mut self.state
            && st.checkpointed != st.offset
        {
            st.checkpoint()?;
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let WriterState::Ingest(st) = &mut self.state
            && st.checkpointed != st.offset
            && let Err(e) = st.checkpoint()
        {
            warn!(error = %e, "checkpoint on drop failed");
        }
    }
}
