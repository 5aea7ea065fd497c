//! A throwaway `nats-server -js` child process: `herald dev`'s embedded default and the test
//! harness's real server. Random port (learned race-free from the server's ports file), temporary
//! store, killed and cleaned up on drop. It can be restarted on the same port and store, which is
//! how tests simulate a NATS outage. [`NatsCluster`]: several such servers joined by routes into
//! one JetStream cluster on loopback, for the failover tests and `herald bench failover`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    pub bin: PathBuf,
    /// `None` picks a free port.
    pub port: Option<u16>,
    /// `None` uses a temporary directory removed on drop.
    pub store_dir: Option<PathBuf>,
    /// A configuration file (`-c`), for what has no flag (operator mode in the auth tests); the
    /// flags above win over it.
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    #[error(
        "nats-server was not found in PATH (looked for `{0}`); install it: `sudo apt-get install nats-server` on Debian/Ubuntu, or pass --nats-url to use a running server"
    )]
    NotFound(String),
    #[error("could not start nats-server: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nats-server exited during start-up ({status}); its log:\n{log}")]
    Exited { status: String, log: String },
    #[error("nats-server did not report its port within {0:?}")]
    NoPort(Duration),
}

pub struct NatsServer {
    child: Child,
    url: String,
    port: u16,
    store_dir: PathBuf,
    bin: PathBuf,
    config: Option<PathBuf>,
    // Holds the store (unless given), the ports file and the log; removed on drop.
    tmp: tempfile::TempDir,
}

/// Finds `name` (a path, or a command looked up in `PATH`).
pub fn find_binary(name: &str) -> Result<PathBuf, NatsdError> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(NatsdError::NotFound(name.to_owned()))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|c| c.is_file())
        .ok_or_else(|| NatsdError::NotFound(name.to_owned()))
}

impl NatsServer {
    /// Starts the server and waits until it listens.
    pub fn start(opts: &NatsServerOptions) -> Result<Self, NatsdError> {
        let tmp = tempfile::Builder::new().prefix("herald-nats-").tempdir()?;
        let store_dir = opts
            .store_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("store"));
        let (child, port) = launch(
            &opts.bin,
            opts.port,
            &store_dir,
            opts.config.as_deref(),
            tmp.path(),
        )?;
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store_dir,
            bin: opts.bin.clone(),
            config: opts.config.clone(),
            tmp,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server cleanly (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return self.kill();
        };
        if kill(Pid::from_raw(pid), Signal::SIGTERM).is_err() {
            return self.kill();
        }
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Starts the server again on the same port and store (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop)).
    pub fn restart(&mut self) -> Result<(), NatsdError> {
        self.kill();
        let (child, _) = launch(
            &self.bin,
            Some(self.port),
            &self.store_dir,
            self.config.as_deref(),
            self.tmp.path(),
        )?;
        self.child = child;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of [`NatsServer`]s on loopback, joined by routes, each killable and
/// restartable on its ports. Node `i` is named `n{i+1}` (`server_name`).
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    // The nodes' configuration files.
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// `n` servers. Client ports are random (from each server's ports file); route ports are
    /// picked free just before the start, since every server must be given the others' routes up
    /// front (nats-server refuses a JetStream cluster without them).
    pub fn start(bin: &Path, n: usize) -> Result<Self, NatsdError> {
        let dir = tempfile::Builder::new()
            .prefix("herald-nats-cluster-")
            .tempdir()?;
        let route_ports = (0..n)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
            })
            .collect::<Result<Vec<u16>, _>>()?;
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(n);
        for (i, port) in route_ports.iter().enumerate() {
            let config = dir.path().join(format!("n{}.conf", i + 1));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{}\ncluster {{\n  name: herald\n  listen: \"127.0.0.1:{port}\"\n  routes: [{routes}]\n}}\n",
                    i + 1
                ),
            )?;
            nodes.push(NatsServer::start(&NatsServerOptions {
                bin: bin.to_owned(),
                port: None,
                store_dir: None,
                config: Some(config),
            })?);
        }
        Ok(NatsCluster { nodes, _dir: dir })
    }

    /// Every node's URL, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node a server name (`n2`) stands for.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        server_name
            .strip_prefix('n')
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| i.checked_sub(1))
            .filter(|i| *i < self.nodes.len())
    }
}

/// Spawns the server and waits for its ports file. Each launch gets its own ports directory, so
/// a restart never reads the previous process's file.
fn launch(
    bin: &Path,
    port: Option<u16>,
    store_dir: &Path,
    config: Option<&Path>,
    tmp: &Path,
) -> Result<(Child, u16), NatsdError> {
    let ports_dir = tmp.join(format!("ports-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&ports_dir)?;
    let log = tmp.join("nats-server.log");
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let mut command = Command::new(bin);
    if let Some(config) = config {
        command.arg("-c").arg(config);
    }
    let mut child = command
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store_dir)
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let limit = Duration::from_secs(15);
    let started = Instant::now();
    loop {
        if let Some(port) = read_port(&ports_dir) {
            return Ok((child, port));
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(NatsdError::Exited {
                status: status.to_string(),
                log,
            });
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NatsdError::NoPort(limit));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|e| e == "ports") {
            let text = std::fs::read_to_string(&path).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let url = v.get("nats")?.get(0)?.as_str()?;
            return url.rsplit(':').next()?.parse().ok();
        }
    }
    None
}
