//! Tasks: a container's init and execs run under its shim, their exits watched and
//! published.

use super::*;

/// One process of a task (the init, or an exec): its pid and, once known, its exit.
#[derive(Debug)]
pub struct Process {
    /// Its pid on the host.
    pub pid: u32,
    /// Whether it has a terminal.
    pub terminal: bool,
    pub(super) exit: watch::Sender<Option<Exit>>,
}

impl Process {
    pub(super) fn new(pid: u32, terminal: bool) -> Arc<Process> {
        Arc::new(Process {
            pid,
            terminal,
            exit: watch::channel(None).0,
        })
    }

    /// Its exit, if it has exited.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits until it has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`.
                unreachable!("process exit channel closed while borrowed");
            }
        }
    }

    /// Watches its exit.
    pub fn subscribe(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }
}

/// A task: a container's shim and its processes.
#[derive(Debug)]
pub struct Task {
    /// The namespace.
    pub namespace: String,
    /// The container id.
    pub id: String,
    /// The container's directory (the bundle and the shim's state).
    pub dir: PathBuf,
    /// The shim.
    pub client: ShimClient,
    /// The container's init.
    pub init: Arc<Process>,
    pub(super) execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Held while the init starts, so that its exit is never published before its start.
    pub(super) starting: Mutex<()>,
}

impl Task {
    /// The process `exec_id` names (empty = the init).
    ///
    /// # Errors
    /// `NotFound` for an unknown exec id.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("container {}: no process {exec_id:?}", self.id),
            )
        })
    }

    /// The log file of process `exec_id`.
    pub fn log_path(&self, exec_id: &str) -> PathBuf {
        log_path(&self.dir, exec_id)
    }
}

/// The output log of a process in a container directory (empty exec id = the init).
pub fn log_path(dir: &Path, exec_id: &str) -> PathBuf {
    shim::log_path(dir, exec_id)
}

impl Lifecycle {
    /// The task of container `id`.
    ///
    /// # Errors
    /// `NotFound` if it has none.
    pub fn task(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        lock(&self.tasks)
            .get(&(ns.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("container {id} has no task")))
    }

    /// Every task of `ns`.
    pub fn tasks(&self, ns: &str) -> Vec<Arc<Task>> {
        let mut out: Vec<Arc<Task>> = lock(&self.tasks)
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, t)| t.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The state of a task (asks its shim unless the init has exited). Blocking.
    pub fn task_state(&self, t: &Task) -> TaskState {
        let exit = t.init.exit();
        let status = match exit {
            Some(_) => "stopped".to_owned(),
            None => match t.client.state("") {
                Ok(s) => s.status,
                Err(_) => "unknown".to_owned(),
            },
        };
        TaskState {
            id: t.id.clone(),
            pid: t.init.pid,
            status,
            exit,
            terminal: t.init.terminal,
        }
    }

    /// Creates container `id`'s task: mounts its rootfs, writes its bundle and starts a
    /// shim, which creates the container with runc. The process does not run until
    /// [`start`](Self::start). Blocking.
    ///
    /// # Errors
    /// `NotFound` for no such container; `AlreadyExists` if it has a task; the
    /// snapshotter's, the mount's and runc's errors (nothing stays mounted).
    pub fn create_task(
        self: &Arc<Self>,
        ns: &Namespace,
        id: &str,
        size: Option<(u16, u16)>,
    ) -> Result<Arc<Task>> {
        let record = self.get_container(ns, id)?;
        let _busy = self.mark_busy(ns.as_str(), id)?;
        if self.task(ns.as_str(), id).is_ok() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container {id} already has a task"),
            ));
        }
        let dir = self.container_dir(ns.as_str(), id);
        // The last run's output and status give way to this one's.
        for name in ["init.log", "init.exit", "init.pid", "shim.log", "runc.log"] {
            let _ = fs::remove_file(dir.join(name));
        }
        remove_exec_files(&dir);
        let rootfs = dir.join("rootfs");
        let sn = self.snapshotter(&record.snapshots_address, &record.snapshotter, ns.as_str())?;
        let mounts = sn
            .mounts(&record.snapshot_key)
            .with_context(|| format!("mounts of snapshot {}", record.snapshot_key))?;
        // A daemon that died mid-delete may have left the rootfs mounted: never stack.
        strata_snapshotter::mount::unmount_all(&rootfs)
            .map_err(|e| e.context("unmount a stale rootfs"))?;
        strata_snapshotter::mount::mount_all(&mounts, &rootfs)
            .map_err(|e| e.context("mount rootfs"))?;
        let spawned = (|| {
            write_atomic(
                &dir.join("config.json"),
                &serde_json::to_vec(&record.spec).map_err(|e| {
                    Error::new(ErrorKind::Internal, "serialise spec").with_source(e)
                })?,
            )?;
            let terminal = record.terminal().then(|| size.unwrap_or((80, 24)));
            shim::spawn(&SpawnOptions {
                shim_binary: self.opts.shim_binary.clone(),
                id: ContainerId::new(id)?,
                namespace: ns.to_string(),
                state_dir: dir.clone(),
                runc_binary: self.opts.runc_binary.clone(),
                runc_root: self.runc(ns.as_str()).root,
                terminal,
            })
        })();
        let (client, pid) = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let Err(u) = strata_snapshotter::mount::unmount_all(&rootfs) {
                    warn!(error = %u, "unmount rootfs of a failed task create");
                }
                return Err(e);
            }
        };
        let task = Arc::new(Task {
            namespace: ns.to_string(),
            id: id.to_owned(),
            dir,
            client,
            init: Process::new(pid.as_raw() as u32, record.terminal()),
            execs: Mutex::default(),
            starting: Mutex::default(),
        });
        lock(&self.tasks).insert((ns.to_string(), id.to_owned()), task.clone());
        self.watch_exit(&task, "");
        self.publish_task(&task, "", events::TASK_CREATE, None);
        info!(namespace = %ns, id, pid = task.init.pid, "task created");
        Ok(task)
    }

    pub(super) fn publish_task(&self, t: &Task, exec_id: &str, topic: &str, exit: Option<Exit>) {
        let pid = t.process(exec_id).map(|p| p.pid).unwrap_or(0);
        self.events.publish(
            &t.namespace,
            topic,
            pb::envelope::Event::Task(pb::TaskEvent {
                container_id: t.id.clone(),
                exec_id: exec_id.to_owned(),
                pid,
                exit_status: exit.map(|e| e.exit_status).unwrap_or(0),
                exited_at: exit.map(|e| {
                    strata_proto::time::to_timestamp(strata_proto::time::from_nanos(
                        e.exited_at_unix_nanos,
                    ))
                }),
            }),
        );
    }

    /// Has a thread wait for process `exec_id` of `t` to exit and record it. When the
    /// shim is gone, the exit it saved on disk is used, or 255 (containerd's "unknown").
    pub(super) fn watch_exit(self: &Arc<Self>, t: &Arc<Task>, exec_id: &str) {
        let (me, t, exec_id) = (self.clone(), t.clone(), exec_id.to_owned());
        std::thread::Builder::new()
            .name("task-wait".into())
            .spawn(move || {
                let exit = match t.client.wait(&exec_id) {
                    Ok(e) => e,
                    Err(err) => {
                        let saved = shim::exit_path(&t.dir, &exec_id);
                        match shim::read_exit(&saved) {
                            Ok(Some(e)) => e,
                            _ => {
                                warn!(id = %t.id, exec_id, error = %err, "shim gone without an exit status: reporting 255");
                                let e = Exit {
                                    exit_status: 255,
                                    exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                                };
                                if let Ok(b) = serde_json::to_vec(&e) {
                                    let _ = write_atomic(&saved, &b);
                                }
                                e
                            }
                        }
                    }
                };
                let _started = exec_id.is_empty().then(|| lock(&t.starting));
                if let Ok(p) = t.process(&exec_id) {
                    p.exit.send_replace(Some(exit));
                }
                me.publish_task(&t, &exec_id, events::TASK_EXIT, Some(exit));
            })
            .expect("spawn a thread");
    }

    /// Starts the task's init. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` if it is not `created`.
    pub fn start(&self, ns: &str, id: &str) -> Result<Arc<Task>> {
        let t = self.task(ns, id)?;
        let _starting = lock(&t.starting);
        t.client.start()?;
        self.publish_task(&t, "", events::TASK_START, None);
        drop(_starting);
        Ok(t)
    }

    /// Sends `signal` to process `exec_id` (or, with `all`, every process). Blocking.
    ///
    /// # Errors
    /// `NotFound` (also for a process that has exited); `InvalidArgument` for signal 0
    /// or over 64.
    pub fn kill(&self, ns: &str, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        if signal == 0 || signal > 64 {
            return Err(Error::invalid(format!("signal {signal} is not 1..=64")));
        }
        let t = self.task(ns, id)?;
        let p = t.process(exec_id)?;
        if p.exit().is_some() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("container {id}: process already finished"),
            ));
        }
        t.client.kill(exec_id, signal as i32, all)
    }

    /// Pauses or resumes the task. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` in the wrong state.
    pub fn pause(&self, ns: &str, id: &str, pause: bool) -> Result<()> {
        let t = self.task(ns, id)?;
        if pause {
            t.client.pause()?;
            self.publish_task(&t, "", events::TASK_PAUSED, None);
        } else {
            t.client.resume()?;
            self.publish_task(&t, "", events::TASK_RESUMED, None);
        }
        Ok(())
    }

    /// Execs a process into the running task. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `InvalidArgument` for a bad exec id, empty args or a bad user;
    /// `AlreadyExists` for a taken exec id; `FailedPrecondition` if it does not run.
    pub fn exec(
        self: &Arc<Self>,
        ns: &Namespace,
        id: &str,
        p: &ExecProcess,
    ) -> Result<Arc<Process>> {
        strata_proto::ident::validate_identifier("exec id", &p.exec_id)
            .map_err(|e| Error::invalid("invalid exec id").with_source(e))?;
        if p.args.is_empty() {
            return Err(Error::invalid("exec: empty command line"));
        }
        let record = self.get_container(ns, id)?;
        let t = self.task(ns.as_str(), id)?;
        if lock(&t.execs).contains_key(&p.exec_id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container {id}: exec id {} is taken", p.exec_id),
            ));
        }
        let mut process = record
            .spec
            .get("process")
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "container spec has no process"))?;
        process["args"] = serde_json::json!(p.args);
        if !p.env.is_empty() {
            let mut env: Vec<String> = process["env"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for kv in &p.env {
                let Some((k, _)) = kv.split_once('=') else {
                    return Err(Error::invalid(format!("env entry {kv:?} is not KEY=value")));
                };
                env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
                env.push(kv.clone());
            }
            process["env"] = serde_json::json!(env);
        }
        if !p.cwd.is_empty() {
            if !p.cwd.starts_with('/') {
                return Err(Error::invalid(format!(
                    "working directory {:?} is not absolute",
                    p.cwd
                )));
            }
            process["cwd"] = serde_json::json!(p.cwd);
        }
        if !p.user.is_empty() {
            let u = crate::user::resolve(&t.dir.join("rootfs"), &p.user)?;
            process["user"] = serde_json::json!({
                "uid": u.uid, "gid": u.gid, "additionalGids": u.additional_gids,
            });
        }
        process["terminal"] = serde_json::json!(p.terminal.is_some());
        match p.terminal {
            Some((w, h)) => {
                process["consoleSize"] = serde_json::json!({"width": w, "height": h});
            }
            None => {
                if let Some(o) = process.as_object_mut() {
                    o.remove("consoleSize");
                }
            }
        }
        let pid = t.client.exec(&p.exec_id, &process, p.terminal.is_some())?;
        let proc = Process::new(pid, p.terminal.is_some());
        lock(&t.execs).insert(p.exec_id.clone(), proc.clone());
        self.watch_exit(&t, &p.exec_id);
        self.publish_task(&t, &p.exec_id, events::TASK_EXEC_ADDED, None);
        Ok(proc)
    }

    /// Deletes process `exec_id` once it has exited; for the init, the whole task: the
    /// shim deletes runc's container and exits, and the rootfs is unmounted. The init's
    /// log and exit status stay until the container is deleted. Blocking.
    ///
    /// # Errors
    /// `NotFound`; `FailedPrecondition` while it runs.
    pub fn delete_task(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let t = self.task(ns, id)?;
        if !exec_id.is_empty() {
            let p = t.process(exec_id)?;
            let exit = p.exit().ok_or_else(|| {
                Error::new(
                    ErrorKind::FailedPrecondition,
                    format!("container {id}: process {exec_id} is still running"),
                )
            })?;
            let _ = t.client.delete(exec_id);
            lock(&t.execs).remove(exec_id);
            return Ok(exit);
        }
        let _busy = self.mark_busy(ns, id)?;
        let exit = match t.client.delete("") {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                // The shim is gone: runc's container may remain.
                let rid = ContainerId::new(id)?;
                if let Err(e) = self.runc(ns).delete(&rid, true) {
                    warn!(error = %e, id, "runc delete --force after the shim died");
                }
                t.init.exit().unwrap_or(Exit {
                    exit_status: 255,
                    exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                })
            }
            Err(e) => return Err(e),
        };
        // The exit the shim reported on delete is final even if our watcher has not
        // heard it yet.
        if t.init.exit().is_none() {
            t.init.exit.send_replace(Some(exit));
        }
        strata_snapshotter::mount::unmount_all(&t.dir.join("rootfs"))
            .map_err(|e| e.context("unmount rootfs"))?;
        for name in ["shim.sock", "shim.pid", "init.pid", "config.json"] {
            let _ = fs::remove_file(t.dir.join(name));
        }
        remove_exec_files(&t.dir);
        lock(&self.tasks).remove(&(ns.to_owned(), id.to_owned()));
        self.publish_task(&t, "", events::TASK_DELETE, Some(exit));
        info!(
            namespace = ns,
            id,
            exit_status = exit.exit_status,
            "task deleted"
        );
        Ok(exit)
    }

    /// The exit saved for container `id`'s last task (its init), if any.
    pub fn last_exit(&self, ns: &str, id: &str) -> Option<Exit> {
        shim::read_exit(&shim::exit_path(&self.container_dir(ns, id), ""))
            .ok()
            .flatten()
    }
}
