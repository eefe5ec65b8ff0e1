//! Containers: creating one (its image, its rootfs snapshot, its spec), its record on
//! disk, listing and deleting.

use super::*;

impl Lifecycle {
    /// Creates a container: resolves its image, prepares its snapshot, generates its
    /// spec (the rootfs is mounted meanwhile, to read its `/etc/passwd`) and records it.
    /// Blocking. Nothing is left behind when it fails.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad id, option or image config; `NotFound` if the image
    /// was not pulled (or not unpacked into the snapshotter); `AlreadyExists` for a
    /// taken id; the snapshotter's and the spec's errors.
    pub fn create_container(
        &self,
        ns: &Namespace,
        req: CreateContainer,
    ) -> Result<ContainerRecord> {
        let id = ContainerId::new(&req.id)?;
        let _busy = self.mark_busy(ns.as_str(), id.as_str())?;
        let dir = self.container_dir(ns.as_str(), id.as_str());
        if dir.join("container.json").exists() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container {id} already exists"),
            ));
        }
        strata_proto::ident::validate_labels(&req.labels.clone().into_iter().collect())
            .map_err(|e| Error::invalid("container labels").with_source(e))?;
        let mut opts = RunOptions::new(id.clone(), ns.clone());
        opts.args = req.args;
        opts.env = req.env;
        opts.user = (!req.user.is_empty()).then_some(req.user);
        opts.cwd = (!req.cwd.is_empty()).then_some(req.cwd);
        opts.terminal = req.terminal;
        opts.readonly_rootfs = req.readonly_rootfs;
        opts.network = if req.host_network {
            Network::Host
        } else {
            Network::Private
        };
        opts.mounts = req
            .mounts
            .iter()
            .map(|m| m.parse::<BindMount>())
            .collect::<Result<_>>()?;
        let platform = if req.platform.is_empty() {
            Platform::host()
        } else {
            Platform::parse(&req.platform).map_err(|e| {
                Error::invalid(format!("platform {:?}", req.platform)).with_source(e)
            })?
        };
        let image = self
            .images
            .resolve(ns, &req.image, &platform)
            .with_context(|| format!("image {}", req.image))?;
        let config = ContainerConfig::from_image_config_json(&image.config)?;

        let snapshotter = if req.snapshotter.is_empty() {
            self.opts.default_snapshotter.clone()
        } else {
            req.snapshotter.clone()
        };
        let sn = self.snapshotter(&req.snapshots_address, &snapshotter, ns.as_str())?;
        let key = format!("strata-container/{ns}/{id}");
        let chain = image.chain_id.to_string();
        match sn.stat(&chain) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "image {} is not unpacked into snapshotter {snapshotter} (no snapshot {chain})",
                        image.name
                    ),
                ));
            }
            Err(e) => return Err(e.context(format!("stat snapshot {chain}"))),
        }
        let mut labels = Labels::new();
        labels.insert(CONTAINER_LABEL.into(), format!("{ns}/{id}"));
        // containerd collects an active snapshot no record of its own references.
        labels.insert(
            "containerd.io/gc.root".into(),
            strata_proto::time::to_nanos(SystemTime::now()).to_string(),
        );
        let mounts = match sn.prepare(&key, Some(&chain), labels.clone()) {
            // Left by a daemon that died between the prepare and the record: ours (the
            // label says so, and there is no record), so it is replaced.
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && sn.stat(&key).is_ok_and(|i| {
                        i.labels.get(CONTAINER_LABEL).map(String::as_str)
                            == Some(format!("{ns}/{id}").as_str())
                    }) =>
            {
                warn!(key, "replacing the snapshot of an unrecorded container");
                let _ = strata_snapshotter::mount::unmount_all(&dir.join("rootfs"));
                sn.remove(&key)
                    .with_context(|| format!("remove stale snapshot {key}"))?;
                sn.prepare(&key, Some(&chain), labels)
            }
            other => other,
        }
        .with_context(|| format!("prepare snapshot {key}"))?;
        let made = (|| {
            let rootfs = dir.join("rootfs");
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&rootfs)
                .map_err(|e| io_error(format!("create {}", rootfs.display()), e))?;
            strata_snapshotter::mount::mount_all(&mounts, &rootfs)
                .map_err(|e| e.context("mount rootfs"))?;
            let spec = crate::spec::generate(&config, &rootfs, &opts);
            if let Err(e) = strata_snapshotter::mount::unmount_all(&rootfs) {
                warn!(error = %e, "unmount rootfs after spec generation");
            }
            let spec = spec?;
            let record = ContainerRecord {
                id: id.to_string(),
                namespace: ns.to_string(),
                image: image.name.clone(),
                image_digest: image.manifest.to_string(),
                snapshotter: snapshotter.clone(),
                snapshot_key: key.clone(),
                snapshots_address: req.snapshots_address.clone(),
                spec: serde_json::to_value(&spec).map_err(|e| {
                    Error::new(ErrorKind::Internal, "serialise spec").with_source(e)
                })?,
                labels: req.labels.clone(),
                created_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
            };
            write_atomic(
                &dir.join("container.json"),
                &serde_json::to_vec_pretty(&record).map_err(|e| {
                    Error::new(ErrorKind::Internal, "serialise record").with_source(e)
                })?,
            )?;
            Ok(record)
        })();
        match made {
            Ok(record) => {
                info!(namespace = %ns, id = %id, image = %record.image, "container created");
                self.events.publish(
                    ns.as_str(),
                    events::CONTAINER_CREATE,
                    pb::envelope::Event::Container(pb::ContainerEvent {
                        id: record.id.clone(),
                        image: record.image.clone(),
                    }),
                );
                Ok(record)
            }
            Err(e) => {
                let _ = strata_snapshotter::mount::unmount_all(&dir.join("rootfs"));
                let _ = fs::remove_dir_all(&dir);
                if let Err(r) = sn.remove(&key) {
                    warn!(error = %r, key, "remove snapshot of a failed container create");
                }
                Err(e)
            }
        }
    }

    /// The record of container `id`.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a bad id.
    pub fn get_container(&self, ns: &Namespace, id: &str) -> Result<ContainerRecord> {
        let id = ContainerId::new(id)?;
        read_record(
            &self
                .container_dir(ns.as_str(), id.as_str())
                .join("container.json"),
        )?
        .filter(|r| r.namespace == ns.as_str() && r.id == id.as_str())
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("container {id} not found")))
    }

    /// Every container of `ns`, by id.
    ///
    /// # Errors
    /// `Internal` if the directory cannot be read.
    pub fn list_containers(&self, ns: &Namespace) -> Result<Vec<ContainerRecord>> {
        let mut out: Vec<ContainerRecord> = self
            .all_records()?
            .into_iter()
            .filter(|r| r.namespace == ns.as_str())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub(super) fn all_records(&self) -> Result<Vec<ContainerRecord>> {
        let dir = self.containers_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(format!("read {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            match read_record(&e.path().join("container.json")) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(err) => {
                    warn!(error = %err, dir = %e.path().display(), "unreadable container record")
                }
            }
        }
        Ok(out)
    }

    /// Deletes container `id`: its snapshot and its directory (logs included). Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` while it has a task.
    pub fn delete_container(&self, ns: &Namespace, id: &str) -> Result<()> {
        let record = self.get_container(ns, id)?;
        let _busy = self.mark_busy(ns.as_str(), id)?;
        if self.task(ns.as_str(), id).is_ok() {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("container {id} has a task: delete it first"),
            ));
        }
        let dir = self.container_dir(ns.as_str(), id);
        let rootfs = dir.join("rootfs");
        strata_snapshotter::mount::unmount_all(&rootfs).map_err(|e| e.context("unmount rootfs"))?;
        let sn = self.snapshotter(&record.snapshots_address, &record.snapshotter, ns.as_str())?;
        match sn.remove(&record.snapshot_key) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e.context(format!("remove snapshot {}", record.snapshot_key)));
            }
        }
        // The record goes first: a crash after it leaves an orphan directory, not a
        // container whose snapshot is gone.
        fs::remove_file(dir.join("container.json"))
            .map_err(|e| io_error("remove container record".into(), e))?;
        fs::remove_dir_all(&dir).map_err(|e| io_error(format!("remove {}", dir.display()), e))?;
        info!(namespace = %ns, id, "container deleted");
        self.events.publish(
            ns.as_str(),
            events::CONTAINER_DELETE,
            pb::envelope::Event::Container(pb::ContainerEvent {
                id: id.to_owned(),
                image: record.image,
            }),
        );
        Ok(())
    }
}

pub(super) fn io_error(context: String, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Internal, context).with_source(e)
}

/// Reads a container record; `None` if there is none.
pub(super) fn read_record(path: &Path) -> Result<Option<ContainerRecord>> {
    let body = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("read {}", path.display()), e)),
    };
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        Error::new(
            ErrorKind::DataLoss,
            format!("container record {}", path.display()),
        )
        .with_source(e)
    })
}

/// [`shim::write_atomic`] with this crate's error.
pub(super) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    shim::write_atomic(path, data).map_err(|e| io_error(format!("write {}", path.display()), e))
}
