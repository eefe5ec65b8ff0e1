//! Finding the tasks (and exec'd processes) an earlier daemon left behind.

use super::*;

impl Lifecycle {
    /// Finds the tasks an earlier daemon left: a live shim is taken over (its exit is
    /// watched again); a dead one's task is listed as stopped with the exit it saved (or
    /// 255), to be deleted. Blocking.
    ///
    /// # Errors
    /// `Internal` if the containers directory cannot be read.
    pub fn recover(self: &Arc<Self>) -> Result<usize> {
        let mut found = 0;
        for r in self.all_records()? {
            let dir = self.container_dir(&r.namespace, &r.id);
            let Ok(pid) = fs::read_to_string(dir.join("init.pid")) else {
                continue;
            };
            let Ok(pid) = pid.trim().parse::<u32>() else {
                continue;
            };
            let client = ShimClient::new(&dir);
            let alive = client.alive();
            let task = Arc::new(Task {
                namespace: r.namespace.clone(),
                id: r.id.clone(),
                dir: dir.clone(),
                client,
                init: Process::new(pid, r.terminal()),
                execs: Mutex::default(),
                starting: Mutex::default(),
            });
            if !alive {
                let exit = shim::read_exit(&shim::exit_path(&dir, "")).ok().flatten();
                task.init.exit.send_replace(Some(exit.unwrap_or(Exit {
                    exit_status: 255,
                    exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                })));
            }
            lock(&self.tasks).insert((r.namespace.clone(), r.id.clone()), task.clone());
            if alive {
                self.watch_exit(&task, "");
            }
            self.recover_execs(&task, alive);
            info!(namespace = %r.namespace, id = %r.id, pid, alive, "task recovered");
            found += 1;
        }
        Ok(found)
    }

    /// The processes exec'd into `task` that were not deleted, from the pid files the
    /// shim keeps until then: each gets the exit the shim saved, or is watched again (a
    /// live shim still reaps it), or, with the shim gone and no saved exit, 255.
    pub(super) fn recover_execs(self: &Arc<Self>, task: &Arc<Task>, alive: bool) {
        let Ok(entries) = fs::read_dir(&task.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(exec_id) = name
                .strip_prefix("exec-")
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            if strata_proto::ident::validate_identifier("exec id", exec_id).is_err() {
                continue;
            }
            let Some(pid) = read_small(&e.path()).and_then(|b| {
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
            }) else {
                continue;
            };
            let terminal = read_small(&shim::process_file(&task.dir, exec_id, "json"))
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("terminal").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            let p = Process::new(pid, terminal);
            lock(&task.execs).insert(exec_id.to_owned(), p.clone());
            match shim::read_exit(&shim::exit_path(&task.dir, exec_id))
                .ok()
                .flatten()
            {
                Some(exit) => {
                    p.exit.send_replace(Some(exit));
                }
                None if alive => self.watch_exit(task, exec_id),
                None => {
                    p.exit.send_replace(Some(Exit {
                        exit_status: 255,
                        exited_at_unix_nanos: strata_proto::time::to_nanos(SystemTime::now()),
                    }));
                }
            }
            info!(id = %task.id, exec_id, pid, "exec recovered");
        }
    }
}

/// A file the shim wrote, read whole if it is at most 1 MiB.
pub(super) fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take((1 << 20) + 1)
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() <= 1 << 20).then_some(buf)
}

pub(super) fn remove_exec_files(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("exec-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
