//! Process plumbing both binaries share: the termination signal, NATS URLs, metric text.

use crate::{Error, Result};

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
pub async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Parses comma-separated NATS server URLs; `setting` names the flag or field in the error.
pub fn nats_urls(urls: &str, setting: &str) -> Result<Vec<async_nats::ServerAddr>> {
    urls.split(',')
        .map(|u| {
            u.trim()
                .parse()
                .map_err(|e| Error::Config(format!("{setting} {u:?}: {e}")))
        })
        .collect()
}

/// Prometheus text exposition of a registry (empty if encoding fails, which it does not for counters,
/// gauges and histograms).
#[must_use]
pub fn render_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
