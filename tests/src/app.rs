//! App containers for the app-protocol tests: the Python example (`examples/bank/app.py`) and the
//! fault app (`tests/apps/faulty.py`) as real processes, and a plain HTTP/1.1 client for the app
//! API, as an app in any language would call it.

use crate::{Process, free_port};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Python interpreter: `$AETHER_PYTHON`, else `python3` on PATH. Panics (the test fails) when
/// there is none.
#[must_use]
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AETHER_PYTHON") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("python3"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("python3 not found: install it (.ci/run does) or set AETHER_PYTHON")
        })
}

/// A file of this repository.
#[must_use]
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// An app container: a Python script on a loopback port, killed on drop.
#[derive(Debug)]
pub struct App {
    /// The process.
    pub process: Process,
    /// Its port.
    pub port: u16,
    script: PathBuf,
}

impl App {
    /// Starts `script` (a repository path) on a free port and waits until it accepts connections.
    pub async fn start(script: &str) -> Self {
        Self::start_on(script, free_port()).await
    }

    /// Starts `script` on `port`.
    pub async fn start_on(script: &str, port: u16) -> Self {
        Self::start_args(script, port, &[]).await
    }

    /// Starts `script` on `port` with `extra` arguments.
    pub async fn start_args(script: &str, port: u16, extra: &[&str]) -> Self {
        Self::start_with(&python(), script, port, extra).await
    }

    /// Starts `script` (a repository path) with `program` (an interpreter: Python, Node) on `port`.
    pub async fn start_with(program: &Path, script: &str, port: u16, extra: &[&str]) -> Self {
        let script = repo_file(script);
        let child = Command::new(program)
            .arg(&script)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let app = Self {
            process: Process { child },
            port,
            script,
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not listen on {port}",
                app.script.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        app
    }

    /// Its URL, for `--app-url`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// An HTTP/1.1 exchange on loopback (`Connection: close`): the status and the body.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let (status, _, body) = http_with_head(port, method, path, headers, body).await;
    (status, body)
}

/// An HTTP/1.1 exchange on loopback: the status, the head (status line and headers) and the body.
pub async fn http_with_head(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
        // A `Content-Length` among `headers` replaces the body's own (a body declared larger
        // than what is sent: the server must answer from the head alone).
        let declared = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        if !declared {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(body).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in 30 s"));
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not HTTP: {}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}
