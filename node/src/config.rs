//! Node settings: flags with environment fallbacks. The pod's name comes from the downward API
//! (`POD_NAME`); the ShardPlan a node serves is named by its subject prefix alone. A missing or
//! invalid setting stops the process with one line.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The aether node sidecar and its command-line client.
#[derive(Debug, Parser)]
#[command(name = "aether-node", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Run(NodeConfig),
    /// Send one request to an actor and print the reply.
    Send(SendArgs),
    /// Run a bounded load and print what was acknowledged.
    Load(LoadArgs),
}

/// How to reach NATS.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user (with --nats-password).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS nkey seed.
    #[arg(long, env = "NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// NATS .creds file.
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_creds_data")]
    pub nats_creds: Option<PathBuf>,
    /// A NATS .creds file's content (the chart passes a Secret's `creds` key so).
    #[arg(long, env = "NATS_CREDS_DATA", hide_env_values = true)]
    pub nats_creds_data: Option<String>,
    /// CA certificate (PEM) for TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, env = "NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Subject prefix of the ShardPlan (`spec.nats.subjectPrefix`).
    #[arg(long, env = "AETHER_SUBJECT_PREFIX", default_value = "aether", value_parser = parse_prefix)]
    pub prefix: String,
}

/// Sidecar settings.
#[derive(Debug, Clone, Args)]
pub struct NodeConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// This pod's name (downward API).
    #[arg(long, env = "POD_NAME", value_parser = parse_pod)]
    pub pod_name: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "AETHER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Replicas of the event stream, the plan bucket and the progress stream when this node
    /// creates them (NATS cluster).
    #[arg(long, env = "AETHER_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Seconds an actor may stay idle before it is passivated (dropped from memory).
    #[arg(long, env = "AETHER_PASSIVATE_AFTER", default_value = "300", value_parser = parse_secs)]
    pub passivate_after: Duration,
    /// Longest a draining node waits for its shards to move away before it exits.
    #[arg(long, env = "AETHER_DRAIN_TIMEOUT", default_value = "60", value_parser = parse_secs)]
    pub drain_timeout: Duration,
    /// Largest request accepted, bytes.
    #[arg(long, env = "AETHER_MAX_REQUEST_BYTES", default_value_t = 256 * 1024)]
    pub max_request_bytes: usize,
    /// Largest actor state, bytes of JSON: a command whose resulting state would be larger is
    /// refused (`tooLarge`) and nothing is appended, so every reply, snapshot record and transfer
    /// chunk fits NATS's default 1 MiB payload.
    #[arg(long, env = "AETHER_MAX_STATE_BYTES", default_value_t = 256 * 1024)]
    pub max_state_bytes: usize,
    /// Bytes per second of large replies (over 64 KiB: a big actor's state) the node sends at
    /// most, one at a time on its second connection, so a hot big actor leaves the node's and the
    /// NATS server's time to its neighbours.
    #[arg(long, env = "AETHER_LARGE_REPLY_RATE", default_value_t = 200_000_000)]
    pub large_reply_rate: u64,
    /// Most requests in flight on this node; beyond it a request is answered `unavailable` at once.
    #[arg(long, env = "AETHER_MAX_INFLIGHT", default_value_t = 10_000)]
    pub max_inflight: usize,
    /// Most actors held in memory by the node; beyond it the least recently used idle ones are
    /// passivated (they reload from the log when used again).
    #[arg(long, env = "AETHER_MAX_ACTORS", default_value_t = 100_000)]
    pub max_actors: usize,
    /// Purge each actor's records before its latest snapshot once a record carries one: the log
    /// keeps the last snapshot and what follows (the full history is gone).
    #[arg(long, env = "AETHER_COMPACT_EVENTS")]
    pub compact_events: bool,
    /// Most requests queued behind a moving shard before callers are told to retry.
    #[arg(long, env = "AETHER_QUEUE_LIMIT", default_value_t = 10_000)]
    pub queue_limit: usize,
    /// URL of the app container that hosts the application's kinds (`http://127.0.0.1:8000`);
    /// without it the node hosts the built-in kinds only.
    #[arg(long, env = "AETHER_APP_URL")]
    pub app_url: Option<String>,
    /// Longest a call to the app may take, milliseconds; a slower call answers `unavailable`.
    #[arg(long = "app-timeout-ms", env = "AETHER_APP_TIMEOUT_MS", default_value = "2000", value_parser = parse_millis)]
    pub app_timeout: Duration,
    /// Address of the app API (`/v1/actors/{kind}/{id}`); loopback only: the app in the same
    /// pod calls its actors through it. `off` turns it off.
    #[arg(long, env = "AETHER_API_ADDR", default_value = "127.0.0.1:3500", value_parser = parse_api_addr)]
    pub api_addr: ApiAddr,
    /// Log as JSON lines.
    #[arg(long, env = "AETHER_LOG_JSON")]
    pub log_json: bool,
}

/// Where the app API listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAddr(pub Option<SocketAddr>);

fn parse_api_addr(s: &str) -> Result<ApiAddr, String> {
    if s == "off" {
        return Ok(ApiAddr(None));
    }
    let addr: SocketAddr = s
        .parse()
        .map_err(|e| format!("host:port or off expected: {e}"))?;
    Ok(ApiAddr(Some(addr)))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("at least 1 millisecond".into()),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(e) => Err(format!("milliseconds expected: {e}")),
    }
}

/// `send` arguments.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Actor kind (counter, doc).
    #[arg(long, default_value = "counter")]
    pub kind: String,
    /// Actor id.
    #[arg(long)]
    pub id: String,
    /// Command as JSON; without it the actor's state is read.
    #[arg(long)]
    pub command: Option<String>,
    /// Command id, for idempotent retries.
    #[arg(long)]
    pub command_id: Option<String>,
}

/// `load` arguments.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Number of counter actors.
    #[arg(long, default_value_t = 100)]
    pub actors: usize,
    /// Total commands.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Commands in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Stop after this many seconds even if not all commands were sent.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
}

fn parse_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must match [A-Za-z0-9_-]{1,64}".to_owned())
    }
}

fn parse_pod(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok && !s.contains('.') {
        Ok(s.to_owned())
    } else {
        Err("must be a pod name: lowercase letters, digits and '-' (it becomes a NATS subject token)".to_owned())
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds expected: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = ["aether-node", "run"];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let err = parse(&["--pod-name", "App.0"]).expect_err("invalid pod");
        assert!(err.to_string().contains("pod name"), "{err}");
        let err = parse(&["--pod-name", "app-0", "--prefix", "a.b"]).expect_err("invalid prefix");
        assert!(err.to_string().contains("[A-Za-z0-9_-]"), "{err}");
        let ok = parse(&["--pod-name", "app-0"]);
        assert!(ok.is_ok());
    }
}
