//! What the test kubelet judges about a pod: its containers' user, its probes, its status.

use super::*;

/// Why a kubelet refuses to run `c` as root-or-unknown under `runAsNonRoot`: the container's
/// settings over the pod's. Every image's user counts as non-numeric here (see the module doc).
pub(super) fn non_root_refusal(pod: &Pod, c: &Container) -> Option<String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    let user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    match (non_root, user) {
        (false, _) => None,
        (true, Some(0)) => Some("container's runAsUser breaks non-root policy".into()),
        (true, Some(_)) => None,
        (true, None) => Some(format!(
            "container has runAsNonRoot and image has non-numeric user ({}), cannot verify user is non-root",
            c.image.as_deref().unwrap_or_default()
        )),
    }
}

/// GET `path` on `ip:port`; true on a 2xx or 3xx answer within a second, as the kubelet's probe.
pub(super) async fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

pub(super) fn pod_status(
    procs: &[Proc],
    ip: &str,
    ready: bool,
    started: &serde_json::Value,
) -> serde_json::Value {
    let r = if ready { "True" } else { "False" };
    let containers: Vec<serde_json::Value> = procs
        .iter()
        .map(|p| {
            let state = if let Some(why) = &p.refused {
                json!({"waiting": {"reason": "CreateContainerConfigError", "message": why}})
            } else if p.running() {
                json!({"running": {"startedAt": started}})
            } else {
                json!({"waiting": {"reason": "CrashLoopBackOff"}})
            };
            json!({"name": p.name, "image": p.image, "imageID": "", "ready": p.running() && ready,
                   "started": p.running(), "restartCount": p.restarts, "state": state})
        })
        .collect();
    json!({"status": {
        "phase": "Running", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": started,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": r, "lastTransitionTime": now()},
            {"type": "Ready", "status": r, "lastTransitionTime": now()}
        ],
        "containerStatuses": containers
    }})
}

pub(super) fn pod_key(pod: &Pod) -> Option<String> {
    Some(format!(
        "{}/{}",
        pod.metadata.namespace.as_deref()?,
        pod.metadata.name.as_deref()?
    ))
}
