//! The test kubelet's containers: each a process it starts, restarts and stops as a kubelet
//! would (SIGTERM, the grace period, SIGKILL).

use super::*;

/// One container: the resolved command and its process.
pub(super) struct Proc {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) program: Option<PathBuf>,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) probe: Option<(u16, String)>,
    pub(super) child: Option<Child>,
    pub(super) exited_at: Option<Instant>,
    pub(super) restarts: u32,
    /// Why a kubelet would not start it (`CreateContainerConfigError`).
    pub(super) refused: Option<String>,
}

impl Proc {
    /// Starts the process, or restarts it after it exited (after a short back-off).
    pub(super) fn keep_running(&mut self, dir: &std::path::Path, pod: &str) {
        let Some(program) = self.program.clone() else {
            return;
        };
        if self.refused.is_some() {
            return;
        }
        if let Some(c) = self.child.as_mut() {
            match c.try_wait() {
                Ok(None) => return,
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    self.exited_at = Some(Instant::now());
                    self.restarts += 1;
                }
            }
        }
        if self
            .exited_at
            .is_some_and(|t| t.elapsed() < RESTART_BACKOFF)
        {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{pod}-{}.log", self.name)));
        let mut cmd = Command::new(&program);
        cmd.args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        match log {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(std::process::Stdio::null()),
        };
        match cmd.spawn() {
            Ok(child) => self.child = Some(child),
            Err(e) => {
                eprintln!("kubelet: cannot start {}: {e}", program.display());
                self.exited_at = Some(Instant::now());
            }
        }
    }

    pub(super) fn running(&self) -> bool {
        self.refused.is_none() && (self.program.is_none() || self.child.is_some())
    }

    pub(super) async fn ready(&mut self, ip: &str) -> bool {
        if !self.running() {
            return false;
        }
        match (&self.probe, &self.program) {
            (Some((port, path)), Some(_)) => http_ok(ip, *port, path).await,
            _ => true,
        }
    }
}

/// SIGTERM to every process, SIGKILL to those still running after `grace`. Returns the containers
/// that died of SIGTERM's default action (no handler), after waiting out `grace` for them as a
/// kubelet would for a PID 1 that ignores the signal.
pub(super) async fn stop_all(procs: &mut [Proc], grace: Duration) -> Vec<String> {
    use std::os::unix::process::ExitStatusExt;
    for p in procs.iter_mut() {
        if let Some(pid) = p.child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    let deadline = Instant::now() + grace;
    let mut ignored = Vec::new();
    for p in procs.iter_mut() {
        if let Some(mut c) = p.child.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.wait()).await {
                Err(_) => {
                    let _ = c.kill().await;
                }
                Ok(Ok(status)) if status.signal() == Some(15) => ignored.push(p.name.clone()),
                Ok(_) => {}
            }
        }
    }
    if !ignored.is_empty() {
        tokio::time::sleep_until(deadline.into()).await;
    }
    ignored
}
