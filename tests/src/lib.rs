//! Test harness: real servers on loopback, started per test and torn down on drop, even when the test
//! fails. A missing binary fails the test with what to run; nothing is skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod app;
pub mod auth;
pub mod bank;
pub mod chaos;
pub mod cluster;
pub mod history;
pub mod k8s;
pub mod kubelet;
pub mod logs;
pub mod measure;
pub mod operator;
pub mod realnode;
pub mod rollout;
pub mod soak;
pub mod stack;
pub mod timers;

/// A free TCP port on loopback for a server a test starts (bound and released).
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), each handed out once
/// per process: a server killed and started again on its port must not find it taken by the local
/// end of some client's connection, which the kernel picks from the ephemeral range (the chaos
/// suite's cluster hit exactly that when ports came from `bind(0)`).
#[must_use]
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000; // up to 31,999
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start each process somewhere else in the range so concurrent test processes rarely meet.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        let port = u16::try_from(LOW + n).unwrap_or_else(|_| unreachable!("below 32,000"));
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on loopback between {LOW} and {}",
        LOW + SPAN - 1
    )
}

/// Waits until `cond` holds, polling every 20 ms, or panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lines of a nats-server log (`-l FILE`) that say it refused something (a permission).
#[must_use]
pub fn nats_violations(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// The nats-server binary: `$AETHER_NATS_SERVER`, else `nats-server` on PATH. Panics (the test fails)
/// when there is none.
#[must_use]
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AETHER_NATS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AETHER_NATS_SERVER={} is not a file: run `make tools`",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!("nats-server not found: run the tests with `make test` (it builds nats-server) or set AETHER_NATS_SERVER")
    })
}

/// A binary of this workspace, built next to the test executable (`make test` builds them first).
#[must_use]
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("odd test path {}", exe.display()));
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the binaries first (`cargo build --release --bins`, which `make test` does)",
        bin.display()
    );
    bin
}

/// A nats-server with JetStream on a free loopback port and its own store directory.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    addr: String,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `--max_payload`).
    #[must_use]
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// Starts a server with extra arguments and environment variables (a configuration file's
    /// `$VARIABLE`s).
    #[must_use]
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", extra, env)
    }

    /// [`NatsServer::start_with_env`] listening on `addr` (e.g. the real node's bridge address,
    /// which its pods reach).
    #[must_use]
    pub fn start_on(addr: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let store = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let mut s = Self {
            child: None,
            addr: addr.to_owned(),
            // Chosen by the server itself on its first start (no race with other tests' servers
            // for a port picked here), then kept across restarts.
            port: 0,
            store,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let ports_dir = self.store.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).unwrap_or_else(|e| panic!("ports dir: {e}"));
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let child = Command::new(nats_server_binary())
            .args(["-a", &self.addr, "-p", &port, "-js", "-sd"])
            .arg(self.store.path())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.store.path().join("stderr.log"))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        let pid = child.id();
        self.child = Some(child);
        let start = Instant::now();
        if self.port == 0 {
            // The server writes the port it listens on once it accepts connections.
            let file = ports_dir.join(format!(
                "{}_{pid}.ports",
                nats_server_binary()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            loop {
                let port = std::fs::read_to_string(&file).ok().and_then(|text| {
                    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                    let url = v["nats"].get(0)?.as_str()?.to_owned();
                    url.rsplit(':').next()?.parse::<u16>().ok()
                });
                if let Some(port) = port {
                    self.port = port;
                    break;
                }
                if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                    let said = std::fs::read_to_string(self.store.path().join("stderr.log"))
                        .unwrap_or_default();
                    panic!("nats-server exited ({status}) before listening: {said}");
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "nats-server wrote no ports file ({})",
                    file.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        while std::net::TcpStream::connect((self.addr.as_str(), self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://<addr>:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.addr, self.port)
    }

    /// The server's process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client connection.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Process {
    /// The child.
    pub child: Child,
}

impl Process {
    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit, at most `timeout`; `None` when it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET over plain HTTP/1.1 to 127.0.0.1: status and body; `None` while nothing listens.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A cluster of nats-servers with JetStream, routed to each other on loopback; each server can be
/// killed (SIGKILL, its store kept) and started again.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<ClusterServer>,
}

#[derive(Debug)]
struct ClusterServer {
    child: Option<Child>,
    port: u16,
    route_port: u16,
    store: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers and waits until JetStream has a meta leader (a stream can be created).
    pub async fn start(n: usize) -> Self {
        let servers = (0..n)
            .map(|_| ClusterServer {
                child: None,
                port: free_port(),
                route_port: free_port(),
                store: tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}")),
            })
            .collect();
        let mut c = Self { servers };
        for i in 0..n {
            c.spawn(i);
        }
        let nc = c.connect().await;
        let js = async_nats::jetstream::new(nc);
        wait_for(
            "a JetStream meta leader",
            Duration::from_secs(30),
            || async { js.query_account().await.is_ok() },
        )
        .await;
        c
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| format!("nats://127.0.0.1:{}", s.route_port))
            .collect();
        let s = &mut self.servers[i];
        // Kept across restarts (appended), removed with the store.
        let log = s.store.path().join("nats-server.log");
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &s.port.to_string(), "-js", "-sd"])
            .arg(s.store.path())
            .args([
                "-n",
                &format!("s{i}"),
                "--cluster_name",
                "aether",
                "--cluster",
                &format!("nats://127.0.0.1:{}", s.route_port),
                "--routes",
                &routes.join(","),
            ])
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display())),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        s.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", s.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nats-server s{i} did not listen on {}; its log:\n{}",
                s.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every server's URL, comma-separated (what `--nats-url` takes).
    #[must_use]
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `i` (SIGKILL), keeping its store.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its port and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// A client connected to any of the servers, reconnecting to the others.
    pub async fn connect(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .urls()
            .split(',')
            .filter_map(|u| u.parse().ok())
            .collect();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(urls)
            .await
            .unwrap_or_else(|e| panic!("connect to the cluster: {e}"))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
