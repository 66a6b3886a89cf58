//! Process plumbing both binaries share: logs, the termination signal, NATS URLs, metric text.

use crate::{Error, Result};

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`), as JSON lines when asked.
pub fn init_logs(json: bool) {
    // async-nats logs every failed connection attempt as an error; the processes say once why they
    // cannot connect (and /readyz says it), so its connector is quiet unless RUST_LOG names it.
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("async_nats") {
        spec
    } else {
        format!("{spec},async_nats::connector=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats::connector=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

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
