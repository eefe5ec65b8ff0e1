//! containerd 1.6 (Debian's, unmodified) driving strata the way Kubernetes does: its CRI
//! plugin, with strata as the proxy snapshotter and the snapshot annotations on
//! (`disable_snapshot_annotations = false`), spoken to by a small CRI client of the
//! test's own (`PullImage` with a sandbox config, `RunPodSandbox`, `CreateContainer`,
//! `StartContainer`), as the kubelet would. `ctr images pull` cannot show lazy pulling in
//! 1.6 (it downloads every layer before unpacking); the CRI's pull unpacks through the
//! remote-snapshot handshake, so an eStargz layer is mounted, not downloaded.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::images;
use common::oci::{Built, Image, Layer, Registry};
use common::{Daemon, StopAll, harness, stderr, stdout};
use serde_json::json;
use strata_proto::cri::v1 as cri;
use strata_proto::cri::v1::image_service_client::ImageServiceClient;
use strata_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// The pod sandbox image: busybox sleeping, as `pause` would.
fn sandbox_image() -> Built {
    Image::new(vec![Layer::new(
        images::busybox_tar(&images::Passwd::Default),
        common::oci::Compression::Gzip,
    )])
    .config(json!({
        "Env": ["PATH=/bin"],
        "Entrypoint": ["/bin/busybox", "sleep", "3600"],
    }))
    .build()
}

/// A pod in the host's network namespace: the CRI plugin calls no CNI plugin for it.
fn pod_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        // A host-network pod keeps the host's name (and UTS namespace), as the kubelet's.
        hostname: String::new(),
        log_directory: logs.to_str().unwrap().into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                }),
            }),
        }),
        ..Default::default()
    }
}

struct Cri {
    /// containerd's log, shown when a call fails.
    log: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    images: ImageServiceClient<Channel>,
    runtime: RuntimeServiceClient<Channel>,
}

impl Cri {
    fn connect(sock: &Path) -> Cri {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ch = rt
            .block_on(strata_proto::transport::connect_unix(sock))
            .unwrap();
        Cri {
            images: ImageServiceClient::new(ch.clone()),
            runtime: RuntimeServiceClient::new(ch),
            log: Default::default(),
            rt,
        }
    }

    /// The last lines of containerd's log (errors and warnings).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("level=error") || l.contains("level=warn"))
            .collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Pulls `image` for a pod, runs `command` in a container of it, waits for it to
    /// exit; returns (exit code, its stdout lines from the CRI log).
    fn run_once(&mut self, pod: &str, image: &str, command: &[&str], logs: &Path) -> (i32, String) {
        let config = pod_config(pod, &logs.join(pod));
        std::fs::create_dir_all(logs.join(pod)).unwrap();
        let spec = cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        };
        self.rt
            .block_on(self.images.pull_image(cri::PullImageRequest {
                image: Some(spec.clone()),
                auth: None,
                sandbox_config: Some(config.clone()),
            }))
            .unwrap_or_else(|e| panic!("PullImage {image}: {e}\n{}", self.log_tail()));
        let sandbox = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        let id = self
            .rt
            .block_on(self.runtime.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "main".into(),
                        attempt: 0,
                    }),
                    image: Some(spec),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    log_path: "main.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(config),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log_tail()))
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.runtime.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log_tail()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            let s = self
                .rt
                .block_on(self.runtime.container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }))
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if s.state == cri::ContainerState::ContainerExited as i32 {
                break s;
            }
            assert!(Instant::now() < deadline, "container never exited: {s:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        // CRI log lines: `<time> <stream> <tag> <line>`.
        let log = std::fs::read_to_string(logs.join(pod).join("main.log")).unwrap_or_default();
        let out: String = log
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, ' ');
                let (_, stream, _, line) = (f.next()?, f.next()?, f.next()?, f.next()?);
                (stream == "stdout").then(|| format!("{line}\n"))
            })
            .collect();
        self.rt
            .block_on(
                self.runtime
                    .remove_container(cri::RemoveContainerRequest { container_id: id }),
            )
            .unwrap();
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            }))
            .unwrap();
        self.rt
            .block_on(
                self.runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: sandbox,
                    }),
            )
            .unwrap();
        (status.exit_code, out)
    }
}

/// Counters of the daemon's lazy layer servers: (layers, bytes fetched).
fn lazy_fetched(root: &Path) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let dir = root.join("snapshots/lazy/snapshots");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(s) = std::fs::read(e.path().join("lazy/stats.json")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        n += 1;
        bytes += v["fetched"].as_u64().unwrap();
    }
    (n, bytes)
}

#[test]
fn the_cri_starts_containers_on_lazy_layers_through_strata() {
    let dir = tempfile::Builder::new()
        .prefix("scri")
        .tempdir_in("/tmp")
        .unwrap();
    let wd = dir.path().to_str().unwrap().to_owned();
    let _cleanup = StopAll(dir.path());
    let hostport = harness(&[], &["start_registry", &wd]);
    let reg = Registry::new(&hostport, &dir.path().join("registry-data"));
    reg.push_image("pause", "1", &sandbox_image());
    let (lazy, estargz) = images::lazy_busybox();
    reg.push_image("lazybox", "1", &lazy);
    reg.push_image("plainbox", "1", &images::busybox());
    // containerd reaches the plain-http registry through hosts.toml, as a node would.
    let hosts = dir.path().join("certs.d").join(&hostport);
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://{hostport}\"\n[host.\"http://{hostport}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();

    // strata serves containerd's "strata" proxy snapshotter with its lazy backend.
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, "[snapshots]\ndefault = \"lazy\"\n").unwrap();
    let d = Daemon::start(dir.path(), &[("STRATA_CONFIG", config.to_str().unwrap())]);
    let sandbox = format!("{hostport}/pause:1");
    let sock = harness(
        &[
            ("STRATA_CRI", "1"),
            ("STRATA_BUILTIN_CONTENT", "1"),
            ("STRATA_CRI_SANDBOX_IMAGE", &sandbox),
        ],
        &["start_containerd", &wd, d.sock.to_str().unwrap()],
    );
    let mut c = Cri::connect(Path::new(&sock));
    c.log = dir.path().join("containerd.log");
    let version =
        c.rt.block_on(c.runtime.version(cri::VersionRequest {
            version: "v1".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "containerd");
    let logs = dir.path().join("pods");

    // The eStargz base is mounted lazily: the container reads it, it is not downloaded.
    let (code, out) = c.run_once(
        "lazy",
        &format!("{hostport}/lazybox:1"),
        &[
            "/bin/sh",
            "-c",
            "cat /etc/motd; /bin/busybox md5sum /bin/busybox",
        ],
        &logs,
    );
    assert_eq!(code, 0, "{out}");
    let host = Command::new("md5sum")
        .arg(images::BUSYBOX)
        .output()
        .unwrap();
    let md5 = stdout(&host).split_whitespace().next().unwrap().to_owned();
    assert_eq!(out, format!("lazy hello\n{md5}  /bin/busybox\n"));
    let (layers, fetched) = lazy_fetched(&d.root);
    assert_eq!(layers, 1, "one lazy layer");
    let blob = lazy.blobs.iter().find(|(dg, _)| *dg == estargz).unwrap();
    assert!(
        fetched < blob.1.len() as u64,
        "{fetched} of {} bytes fetched",
        blob.1.len()
    );
    // containerd's content store never received the eStargz blob; the plain layer it did.
    let ctr = |args: &[&str]| {
        let out = Command::new("ctr")
            .args(["--address", &sock, "-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let content = ctr(&["content", "ls", "-q"]);
    assert!(!content.contains(&estargz), "{content}");
    assert!(content.contains(&lazy.blobs[1].0), "{content}");

    // An image with no eStargz layer goes the same path, on ordinary mounts.
    let (code, out) = c.run_once(
        "plain",
        &format!("{hostport}/plainbox:1"),
        &["/bin/sh", "-c", "echo plain; cat /etc/passwd | head -n 1"],
        &logs,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("plain\n{}\n", images::PASSWD.lines().next().unwrap())
    );
    assert_eq!(
        lazy_fetched(&d.root).0,
        1,
        "the plain image mounted nothing lazily"
    );
    let images_listed = ctr(&["images", "ls", "-q"]);
    assert!(images_listed.contains("plainbox:1"), "{images_listed}");
}
