//! `strata run`, `ps`, `exec`, `kill`, `rm`, `logs` and `events`: containers and tasks
//! through the daemon's `strata.v1` Containers, Tasks and Events services.

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use strata_proto::strata::v1 as pb;
use strata_proto::strata::v1::containers_client::ContainersClient;
use strata_proto::strata::v1::events_client::EventsClient;
use strata_proto::strata::v1::images_client::ImagesClient;
use strata_proto::strata::v1::tasks_client::TasksClient;
use tonic::transport::Channel;

use crate::cli::{Client, rpc};

/// The process ended with this status: `strata` exits with it, printing nothing.
#[derive(Debug)]
pub(crate) struct ExitWith(pub(crate) u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

fn exit_code(status: u32) -> u8 {
    u8::try_from(status).unwrap_or(255)
}

fn containers(c: &Client) -> ContainersClient<Channel> {
    ContainersClient::new(c.channel())
}

fn tasks(c: &Client) -> TasksClient<Channel> {
    TasksClient::new(c.channel())
}

/// `strata run [flags] REF [CMD ARGS...]`.
#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Delete the container (and its snapshot) when it exits.
    #[arg(long)]
    rm: bool,
    /// Give the process a terminal and attach this one to it.
    #[arg(short = 't', long)]
    tty: bool,
    /// Start it and print its id; do not wait.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Container id (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Environment entries KEY=value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// User: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    cwd: Option<String>,
    /// Bind mounts src:dst[:ro|rw] (repeatable).
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// Mount the rootfs read-only.
    #[arg(long)]
    read_only: bool,
    /// Share the host's network namespace.
    #[arg(long)]
    net_host: bool,
    /// Snapshotter for the rootfs ("" = the daemon's default).
    #[arg(long, env = "STRATA_SNAPSHOTTER", default_value = "")]
    snapshotter: String,
    /// Start before the layers are downloaded: eStargz layers are mounted lazily (the
    /// `lazy` snapshotter), the others unpacked.
    #[arg(long)]
    lazy: bool,
    /// A snapshots.v1 socket to take the rootfs from (e.g. containerd's).
    #[arg(long)]
    snapshots_address: Option<String>,
    /// Platform (os/arch[/variant]).
    #[arg(long, default_value = "")]
    platform: String,
    /// Pull over plain http when the image is missing.
    #[arg(long)]
    plain_http: bool,
    /// Label k=v of the container record (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The image.
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn terminal_size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` into the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

/// Puts stdin's terminal in raw mode until dropped.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode(None);
        }
        // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a terminal; `t` is a valid termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return RawMode(None);
        }
        let saved = t;
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: as above.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

impl RunArgs {
    pub(crate) async fn run(mut self, c: &Client) -> anyhow::Result<()> {
        if self.rm && self.detach {
            bail!("--rm and --detach cannot be used together");
        }
        self.snapshotter = crate::cli::lazy_snapshotter(self.lazy, &self.snapshotter)?;
        let mut labels = std::collections::HashMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow!("label {l:?} is not k=v"))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        let req = pb::CreateContainerRequest {
            id: self.name.clone().unwrap_or_default(),
            image: self.image.clone(),
            snapshotter: self.snapshotter.clone(),
            snapshots_address: self.snapshots_address.clone().unwrap_or_default(),
            labels,
            args: self.args.clone(),
            env: self.env.clone(),
            user: self.user.clone().unwrap_or_default(),
            cwd: self.cwd.clone().unwrap_or_default(),
            terminal: self.tty,
            readonly_rootfs: self.read_only,
            mounts: self.mounts.clone(),
            host_network: self.net_host,
            platform: self.platform.clone(),
        };
        let container = match containers(c).create(c.req(req.clone())).await {
            Ok(r) => r.into_inner(),
            // Not pulled, or not unpacked into this snapshotter (the daemon's message
            // then starts with "image"; a missing user is NotFound too): pull, then again.
            Err(s)
                if s.code() == tonic::Code::NotFound
                    && s.message().starts_with("image ")
                    && self.snapshots_address.is_none() =>
            {
                self.pull(c).await?;
                containers(c)
                    .create(c.req(req))
                    .await
                    .map_err(|s| rpc("create container", &s))?
                    .into_inner()
            }
            Err(s) => return Err(rpc("create container", &s)),
        };
        let id = container.id;
        let status = self.run_task(c, &id).await;
        if self.rm
            && let Err(s) = containers(c)
                .delete(c.req(pb::DeleteContainerRequest { id: id.clone() }))
                .await
        {
            eprintln!("error: remove container {id}: {}", s.message());
        }
        match status? {
            None => Ok(()),
            Some(0) => Ok(()),
            Some(code) => Err(ExitWith(code).into()),
        }
    }

    async fn pull(&self, c: &Client) -> anyhow::Result<()> {
        let mut stream = ImagesClient::new(c.channel())
            .pull(c.req(pb::PullRequest {
                reference: self.image.clone(),
                plain_http: self.plain_http,
                platform: self.platform.clone(),
                snapshotter: self.snapshotter.clone(),
                ..Default::default()
            }))
            .await
            .map_err(|s| rpc(&format!("pull {}", self.image), &s))?
            .into_inner();
        let mut last = None;
        while let Some(p) = stream
            .message()
            .await
            .map_err(|s| rpc(&format!("pull {}", self.image), &s))?
        {
            last = Some(p);
        }
        match last {
            Some(p) if p.stage == "done" => {
                eprintln!("{}: pulled {}", p.name, p.digest);
                Ok(())
            }
            _ => bail!("pull {}: did not finish", self.image),
        }
    }

    /// Creates, starts and (unless detached) waits for the task; returns its exit.
    async fn run_task(&self, c: &Client, id: &str) -> anyhow::Result<Option<u8>> {
        let (width, height) = if self.tty {
            terminal_size().unwrap_or((80, 24))
        } else {
            (0, 0)
        };
        let created = tasks(c)
            .create(c.req(pb::CreateTaskRequest {
                container_id: id.to_owned(),
                width,
                height,
            }))
            .await;
        if let Err(s) = created {
            return Err(rpc(&format!("create task of {id}"), &s));
        }
        let started = tasks(c)
            .start(c.req(pb::TaskRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await;
        if let Err(s) = started {
            let _ = tasks(c)
                .delete(c.req(pb::TaskRequest {
                    container_id: id.to_owned(),
                    exec_id: String::new(),
                }))
                .await;
            return Err(rpc(&format!("start {id}"), &s));
        }
        if self.detach {
            println!("{id}");
            return Ok(None);
        }
        let raw = self.tty.then(RawMode::enter);
        let proxy = if self.tty {
            spawn_stdin(c, id, "");
            None
        } else {
            Some(proxy_signals(c, id))
        };
        let code = follow_and_wait(c, id, "").await;
        drop(raw);
        if let Some(p) = proxy {
            p.abort();
        }
        let code = code?;
        let deleted = tasks(c)
            .delete(c.req(pb::TaskRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }))
            .await;
        if let Err(s) = deleted {
            eprintln!("error: delete task of {id}: {}", s.message());
        }
        Ok(Some(code))
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to `strata run` to
/// the container's init, as `ctr run` does (with a terminal, ^C reaches it through the
/// terminal instead).
fn proxy_signals(c: &Client, id: &str) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (c, id) = (c.clone(), id.to_owned());
    tokio::spawn(async move {
        let kinds = [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ];
        let mut streams = Vec::new();
        for k in kinds {
            if let Ok(s) = signal(SignalKind::from_raw(k)) {
                streams.push((k, s));
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<i32>(8);
        for (k, mut s) in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(k).await.is_err() {
                        return;
                    }
                }
            });
        }
        while let Some(k) = rx.recv().await {
            let _ = tasks(&c)
                .kill(c.req(pb::KillRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                    signal: k as u32,
                    all: false,
                }))
                .await;
        }
    })
}

/// Copies stdin to the process's terminal until stdin ends.
fn spawn_stdin(c: &Client, id: &str, exec_id: &str) {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AttachChunk>(16);
    let first = pb::AttachChunk {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        data: Vec::new(),
    };
    let _ = tx.try_send(first);
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let chunk = pb::AttachChunk {
                        data: buf[..n].to_vec(),
                        ..Default::default()
                    };
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut api = tasks(c);
    let req = c.req(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::spawn(async move {
        let _ = api.attach(req).await;
    });
}

/// Prints the process's output as it comes and returns its exit status once it has
/// exited and all of its output is printed.
async fn follow_and_wait(c: &Client, id: &str, exec_id: &str) -> anyhow::Result<u8> {
    let req = pb::LogsRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        follow: true,
    };
    let mut logs = tasks(c)
        .logs(c.req(req))
        .await
        .map_err(|s| rpc(&format!("output of {id}"), &s))?
        .into_inner();
    let printer = tokio::spawn(async move {
        while let Some(chunk) = logs.message().await? {
            print_chunk(&chunk);
        }
        Ok::<_, tonic::Status>(())
    });
    let exit = tasks(c)
        .wait(c.req(pb::TaskRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        }))
        .await
        .map_err(|s| rpc(&format!("wait for {id}"), &s))?
        .into_inner();
    // The log stream ends once the process has exited and its output is all sent.
    match printer.await {
        Ok(Ok(())) => {}
        Ok(Err(s)) => eprintln!("error: output of {id}: {}", s.message()),
        Err(e) => eprintln!("error: output of {id}: {e}"),
    }
    Ok(exit_code(exit.exit_status))
}

fn print_chunk(chunk: &pb::LogChunk) {
    if chunk.stream == 2 {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&chunk.data);
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&chunk.data);
        let _ = o.flush();
    }
}

/// `strata exec [-t] ID CMD [ARGS...]`.
#[derive(Args, Debug)]
pub(crate) struct ExecArgs {
    /// Give the process a terminal and attach this one to it.
    #[arg(short = 't', long)]
    tty: bool,
    /// Start it and print its exec id; do not wait.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Exec id (default: generated).
    #[arg(long)]
    exec_id: Option<String>,
    /// Environment entries KEY=value (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// User: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory.
    #[arg(short = 'w', long)]
    cwd: Option<String>,
    /// The container.
    id: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl ExecArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let exec_id = self
            .exec_id
            .clone()
            .unwrap_or_else(|| format!("exec-{}-{}", std::process::id(), now_nanos() % 1_000_000));
        let (width, height) = if self.tty {
            terminal_size().unwrap_or((80, 24))
        } else {
            (0, 0)
        };
        tasks(c)
            .exec(c.req(pb::ExecRequest {
                container_id: self.id.clone(),
                exec_id: exec_id.clone(),
                args: self.args.clone(),
                env: self.env.clone(),
                cwd: self.cwd.clone().unwrap_or_default(),
                user: self.user.clone().unwrap_or_default(),
                terminal: self.tty,
                width,
                height,
            }))
            .await
            .map_err(|s| rpc(&format!("exec in {}", self.id), &s))?;
        if self.detach {
            println!("{exec_id}");
            return Ok(());
        }
        let raw = self.tty.then(RawMode::enter);
        if self.tty {
            spawn_stdin(c, &self.id, &exec_id);
        }
        let code = follow_and_wait(c, &self.id, &exec_id).await?;
        drop(raw);
        let _ = tasks(c)
            .delete(c.req(pb::TaskRequest {
                container_id: self.id.clone(),
                exec_id,
            }))
            .await;
        if code != 0 {
            return Err(ExitWith(code).into());
        }
        Ok(())
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `strata ps`.
#[derive(Args, Debug)]
pub(crate) struct PsArgs {
    /// Only ids.
    #[arg(short, long)]
    quiet: bool,
}

impl PsArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let list = containers(c)
            .list(c.req(pb::ListContainersRequest::default()))
            .await
            .map_err(|s| rpc("list containers", &s))?
            .into_inner()
            .containers;
        let ts = tasks(c)
            .list(c.req(pb::ListTasksRequest::default()))
            .await
            .map_err(|s| rpc("list tasks", &s))?
            .into_inner()
            .tasks;
        if self.quiet {
            for ct in &list {
                println!("{}", ct.id);
            }
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{:<24} {:<40} {:<8} {:<16} SNAPSHOTTER",
            "CONTAINER", "IMAGE", "PID", "STATUS"
        )?;
        for ct in &list {
            let (pid, status) = match ts.iter().find(|t| t.container_id == ct.id) {
                Some(t) if t.status == "stopped" => {
                    (t.pid.to_string(), format!("exited ({})", t.exit_status))
                }
                Some(t) => (t.pid.to_string(), t.status.clone()),
                // No task: a wait answers with the last one's exit, if it ran.
                None => match tasks(c)
                    .wait(c.req(pb::TaskRequest {
                        container_id: ct.id.clone(),
                        exec_id: String::new(),
                    }))
                    .await
                {
                    Ok(e) => (
                        "-".to_owned(),
                        format!("exited ({})", e.into_inner().exit_status),
                    ),
                    Err(_) => ("-".to_owned(), "created".to_owned()),
                },
            };
            writeln!(
                out,
                "{:<24} {:<40} {:<8} {:<16} {}",
                ct.id, ct.image, pid, status, ct.snapshotter
            )?;
        }
        Ok(())
    }
}

/// `strata kill [--signal S] ID`.
#[derive(Args, Debug)]
pub(crate) struct KillArgs {
    /// Signal: a number or a name (TERM, SIGKILL, ...).
    #[arg(short, long, default_value = "SIGTERM")]
    signal: String,
    /// Every process of the container, not only its init.
    #[arg(short, long)]
    all: bool,
    /// An exec'd process instead of the init.
    #[arg(long, default_value = "")]
    exec_id: String,
    /// The container.
    id: String,
}

/// A signal number from a number or a name with or without `SIG`.
pub(crate) fn parse_signal(s: &str) -> anyhow::Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("signal {n} is not 1..=64");
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as u32)
        .map_err(|_| anyhow!("unknown signal {s:?}"))
}

impl KillArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let signal = parse_signal(&self.signal)?;
        tasks(c)
            .kill(c.req(pb::KillRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id,
                signal,
                all: self.all,
            }))
            .await
            .map_err(|s| rpc(&format!("kill {}", self.id), &s))?;
        Ok(())
    }
}

/// `strata pause ID` / `strata resume ID`.
#[derive(Args, Debug)]
pub(crate) struct PauseArgs {
    /// The container.
    id: String,
}

impl PauseArgs {
    pub(crate) async fn run(self, c: &Client, pause: bool) -> anyhow::Result<()> {
        let req = c.req(pb::TaskRequest {
            container_id: self.id.clone(),
            exec_id: String::new(),
        });
        let r = if pause {
            tasks(c).pause(req).await
        } else {
            tasks(c).resume(req).await
        };
        let what = if pause { "pause" } else { "resume" };
        r.map_err(|s| rpc(&format!("{what} {}", self.id), &s))?;
        Ok(())
    }
}

/// `strata rm [-f] ID...`.
#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    /// Kill a running task first.
    #[arg(short, long)]
    force: bool,
    /// Containers.
    #[arg(required = true)]
    ids: Vec<String>,
}

impl RmArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let mut failed = 0;
        for id in &self.ids {
            if let Err(e) = self.rm(c, id).await {
                eprintln!("error: {e:#}");
                failed += 1;
            } else {
                println!("{id}");
            }
        }
        if failed > 0 {
            bail!("{failed} of {} containers not removed", self.ids.len());
        }
        Ok(())
    }

    async fn rm(&self, c: &Client, id: &str) -> anyhow::Result<()> {
        let task_req = || pb::TaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        match tasks(c).get(c.req(task_req())).await {
            Ok(t) => {
                let t = t.into_inner();
                if t.status != "stopped" && t.status != "created" {
                    if !self.force {
                        bail!("container {id} is {}: stop it or use --force", t.status);
                    }
                    let _ = tasks(c)
                        .kill(c.req(pb::KillRequest {
                            container_id: id.to_owned(),
                            exec_id: String::new(),
                            signal: 9,
                            all: true,
                        }))
                        .await;
                    tasks(c)
                        .wait(c.req(task_req()))
                        .await
                        .map_err(|s| rpc(&format!("wait for {id}"), &s))?;
                }
                tasks(c)
                    .delete(c.req(task_req()))
                    .await
                    .map_err(|s| rpc(&format!("delete task of {id}"), &s))?;
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(rpc(&format!("task of {id}"), &s)),
        }
        containers(c)
            .delete(c.req(pb::DeleteContainerRequest { id: id.to_owned() }))
            .await
            .map_err(|s| rpc(&format!("remove {id}"), &s))?;
        Ok(())
    }
}

/// `strata logs [-f] ID`.
#[derive(Args, Debug)]
pub(crate) struct LogsArgs {
    /// Keep printing until the process exits.
    #[arg(short, long)]
    follow: bool,
    /// An exec'd process instead of the init.
    #[arg(long, default_value = "")]
    exec_id: String,
    /// The container.
    id: String,
}

impl LogsArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let mut logs = tasks(c)
            .logs(c.req(pb::LogsRequest {
                container_id: self.id.clone(),
                exec_id: self.exec_id,
                follow: self.follow,
            }))
            .await
            .map_err(|s| rpc(&format!("logs of {}", self.id), &s))?
            .into_inner();
        while let Some(chunk) = logs
            .message()
            .await
            .map_err(|s| rpc(&format!("logs of {}", self.id), &s))?
        {
            print_chunk(&chunk);
        }
        Ok(())
    }
}

/// `strata events [FILTER...]`.
#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// containerd filters over topic and namespace, e.g. 'topic~="^/tasks/"'.
    filters: Vec<String>,
}

impl EventsArgs {
    pub(crate) async fn run(self, c: &Client) -> anyhow::Result<()> {
        let mut stream = EventsClient::new(c.channel())
            .subscribe(c.req(pb::SubscribeRequest {
                filters: self.filters,
            }))
            .await
            .map_err(|s| rpc("subscribe to events", &s))?
            .into_inner();
        while let Some(e) = stream.message().await.map_err(|s| rpc("events", &s))? {
            let when = e
                .timestamp
                .as_ref()
                .map(|t| format!("{}.{:09}", t.seconds, t.nanos))
                .unwrap_or_default();
            let detail = match &e.event {
                Some(pb::envelope::Event::Task(t)) => format!(
                    "container_id={} exec_id={} pid={} exit_status={}",
                    t.container_id, t.exec_id, t.pid, t.exit_status
                ),
                Some(pb::envelope::Event::Container(ct)) => {
                    format!("id={} image={}", ct.id, ct.image)
                }
                Some(pb::envelope::Event::Image(i)) => {
                    format!("name={} digest={}", i.name, i.digest)
                }
                Some(pb::envelope::Event::Snapshot(s)) => format!(
                    "snapshotter={} key={} name={}",
                    s.snapshotter, s.key, s.name
                ),
                None => String::new(),
            };
            println!("{when} {} {} {detail}", e.namespace, e.topic);
            std::io::stdout().flush().context("write events")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), 10);
        for bad in ["0", "65", "-1", "NOPE", "", "SIG"] {
            assert!(parse_signal(bad).is_err(), "{bad:?}");
        }
    }
}
