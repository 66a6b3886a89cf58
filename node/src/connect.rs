//! The node's NATS connections: credentials, TLS, the nodes' inbox prefix, and waiting (saying why
//! in the node's health) while NATS is unreachable.

use crate::error::{Error, Result};
use crate::health::Health;
use crate::metrics::Metrics;
use aether_core::protocol::Names;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connects to NATS with the configured credentials and TLS. With `node` (a node process: its
/// health), as a node: with the nodes' inbox prefix ([`Names::node_inbox`]), trying again every
/// second until it is connected, saying why it is not in one log line per distinct reason and in
/// `health` (so /readyz gives the reason: a wrong CA, password or URL). Without (the CLI, a client),
/// the first failure is the error.
pub async fn connect(
    args: &crate::config::NatsArgs,
    name: &str,
    node: Option<&Health>,
    metrics: Option<&Metrics>,
) -> Result<async_nats::Client> {
    let urls = aether_nats::process::nats_urls(&args.nats_url, "--nats-url")?;
    let inbox = node.map(|_| Names::new(args.prefix.clone()).node_inbox());
    let mut said = std::collections::BTreeSet::new();
    loop {
        let e = match options(args, name, inbox.clone(), metrics)
            .await?
            .connect(urls.clone())
            .await
        {
            Ok(client) => {
                if let Some(m) = metrics {
                    m.nats_connected.set(1);
                }
                if let (Some(health), false) = (node, said.is_empty()) {
                    health.set(Some(format!(
                        "connected to NATS at {}; opening the streams",
                        args.nats_url
                    )));
                }
                return Ok(client);
            }
            Err(e) => e,
        };
        let why = format!("cannot connect to NATS at {}: {e}", args.nats_url);
        let Some(health) = node else {
            return Err(Error::Nats(why));
        };
        // With several servers the reasons can alternate: each is said once.
        if said.insert(why.clone()) {
            tracing::error!("{why}");
        }
        health.set(Some(why));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Connects once as `kubectl aether`, with its own inbox prefix ([`Names::inspect_inbox`]).
pub async fn connect_inspector(args: &crate::config::NatsArgs) -> Result<async_nats::Client> {
    let urls = aether_nats::process::nats_urls(&args.nats_url, "--nats-url")?;
    let inbox = Names::new(args.prefix.clone()).inspect_inbox();
    options(args, "kubectl-aether", Some(inbox), None)
        .await?
        .connect(urls)
        .await
        .map_err(|e| Error::Nats(format!("cannot connect to NATS at {}: {e}", args.nats_url)))
}

/// The connection options of `args`: credentials, TLS, reconnecting for ever once connected.
async fn options(
    args: &crate::config::NatsArgs,
    name: &str,
    inbox: Option<String>,
    metrics: Option<&Metrics>,
) -> Result<async_nats::ConnectOptions> {
    // The reason a reconnect fails is said once, until the connection is back.
    let said = Arc::new(Mutex::new(String::new()));
    let gauges = metrics.map(|m| (m.nats_connected.clone(), m.nats_disconnects.clone()));
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        // What the server refuses once connected (a permission the node's NATS user lacks) is
        // said in the log; the request or append it concerned fails on its own.
        .event_callback(move |event| {
            let said = said.clone();
            let gauges = gauges.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(e) => tracing::error!("NATS server: {e}"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS: disconnected");
                        if let Some((up, downs)) = &gauges {
                            up.set(0);
                            downs.inc();
                        }
                    }
                    async_nats::Event::Connected => {
                        if let Some((up, _)) = &gauges {
                            up.set(1);
                        }
                        if let Ok(mut s) = said.lock() {
                            s.clear();
                        }
                    }
                    async_nats::Event::ClientError(e) => {
                        let e = e.to_string();
                        if let Ok(mut s) = said.lock()
                            && *s != e
                        {
                            tracing::warn!("NATS: {e}");
                            *s = e;
                        }
                    }
                    _ => {}
                }
            }
        });
    if let Some(inbox) = inbox {
        opts = opts.custom_inbox_prefix(inbox);
    }
    // A value from a Secret made from a file may end with a line end: not part of it.
    let value = |v: &String| v.trim_end_matches(['\r', '\n']).to_owned();
    if let (Some(user), Some(pass)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(value(user), value(pass));
    }
    if let Some(token) = &args.nats_token {
        opts = opts.token(value(token));
    }
    if let Some(seed) = &args.nats_nkey {
        opts = opts.nkey(value(seed));
    }
    if let Some(path) = &args.nats_creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| Error::Config(format!("--nats-creds {}: {e}", path.display())))?;
    }
    if let Some(creds) = &args.nats_creds_data {
        opts = opts
            .credentials(creds)
            .map_err(|e| Error::Config(format!("--nats-creds-data: {e}")))?;
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(opts)
}
