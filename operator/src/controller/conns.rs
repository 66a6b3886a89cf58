//! The operator's NATS connections: one per server list, subject prefix and credentials, shared by
//! the ShardPlans that use it. Each follows its prefix's progress reports and node events on its own
//! server and hands them only to those ShardPlans (a ShardPlan on another server with the same
//! prefix never sees them). A connection is made outside any lock another ShardPlan waits on, and
//! closed once no ShardPlan uses it (deleted, or moved to other credentials or servers).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use aether_core::crd::ShardPlan;
use aether_core::protocol::{Names, NodeEvent, NodeEventKind, Progress, decode};
use futures::StreamExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A ShardPlan, as the connections know it.
pub type PlanRef = ObjectRef<ShardPlan>;

/// The servers a `spec.nats.url` names, each as `host:port` (host lower-cased, the port explicit,
/// without scheme or user), sorted: two spellings of one list are one.
pub fn servers(url: &str) -> Result<BTreeSet<String>> {
    let addrs = aether_nats::process::nats_urls(url, "spec.nats.url")
        .map_err(|e| Error::Nats(e.to_string()))?;
    Ok(addrs
        .iter()
        .map(|a| {
            let host = a.host().trim_end_matches('.').to_ascii_lowercase();
            format!("{host}:{}", a.port())
        })
        .collect())
}

/// What a connection is for: its servers, prefix and credentials (the Secret and its version).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// [`servers`] of the URL.
    pub servers: BTreeSet<String>,
    /// The subject prefix.
    pub prefix: String,
    /// `namespace/secret@resourceVersion`, when the ShardPlan names one.
    pub credentials: Option<String>,
}

/// What a connection heard for its ShardPlans since their last reconcile.
#[derive(Debug, Default)]
struct Heard {
    reports: Reports,
    /// Pods whose node announced it is leaving (until it announces `up`).
    leaving: BTreeSet<String>,
}

/// One connection and what it follows.
#[derive(Debug)]
pub struct Conn {
    /// The client.
    pub client: async_nats::Client,
    /// Who the server is: its id, and for a cluster its members' client URLs. Two connections
    /// whose identities share an entry reach the same servers, however their URLs are spelled.
    pub identity: BTreeSet<String>,
    heard: Arc<Mutex<Heard>>,
    users: Arc<Mutex<HashSet<PlanRef>>>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Conn {
    /// Follows the progress stream and the node events of `prefix` on `client`, waking the users.
    async fn start(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
        metrics: Arc<Metrics>,
        wake: mpsc::UnboundedSender<PlanRef>,
    ) -> Result<Self> {
        let info = client.server_info();
        let mut identity: BTreeSet<String> = info
            .connect_urls
            .iter()
            .filter_map(|u| servers(u).ok())
            .flatten()
            .map(|s| format!("url {s}"))
            .collect();
        identity.insert(format!("server {}", info.server_id));
        let names = Names::new(prefix);
        let heard = Arc::new(Mutex::new(Heard::default()));
        let users: Arc<Mutex<HashSet<PlanRef>>> = Arc::new(Mutex::new(HashSet::new()));
        // Reports are stored in the progress stream: read from its start (the latest report of
        // each move), so none sent while this operator was down or not leading is lost.
        let js = async_nats::jetstream::new(client.clone());
        let stream = aether_nats::progress::open_stream(&js, &names, replicas)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let mut events = client
            .subscribe(names.node_events())
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let sink = heard.clone();
        let reports = tokio::spawn(async move {
            loop {
                match aether_nats::progress::follow(&stream).await {
                    Ok((mut messages, _)) => {
                        while let Some(m) = messages.next().await {
                            let Ok(m) = m else { continue };
                            let Ok(report) = decode::<Progress>(&m.payload) else {
                                metrics.malformed_reports.inc();
                                continue;
                            };
                            if let Ok(mut h) = sink.lock() {
                                h.reports.add(report);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "progress stream"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (sink, woken) = (heard.clone(), users.clone());
        let node_events = tokio::spawn(async move {
            while let Some(m) = events.next().await {
                let Ok(ev) = decode::<NodeEvent>(&m.payload) else {
                    continue;
                };
                let changed = sink.lock().is_ok_and(|mut h| match ev.event {
                    NodeEventKind::Leaving => h.leaving.insert(ev.node),
                    NodeEventKind::Up => h.leaving.remove(&ev.node),
                });
                // Planned out at once, not when the pod goes NotReady or is deleted; and back in
                // as soon as it is up again. Only the ShardPlans of this server and prefix.
                if changed && let Ok(users) = woken.lock() {
                    for u in users.iter() {
                        let _ = wake.send(u.clone());
                    }
                }
            }
        });
        Ok(Self {
            client,
            identity,
            heard,
            users,
            tasks: vec![reports.abort_handle(), node_events.abort_handle()],
        })
    }

    /// Pods whose node said it is leaving.
    #[must_use]
    pub fn leaving(&self) -> BTreeSet<String> {
        self.heard
            .lock()
            .map(|h| h.leaving.clone())
            .unwrap_or_default()
    }

    /// The reports heard since the last call.
    #[must_use]
    pub fn take_progress(&self) -> Vec<Progress> {
        self.heard
            .lock()
            .map(|mut h| std::mem::take(&mut h.reports).into_reports())
            .unwrap_or_default()
    }

    /// Puts back reports a failed reconcile took.
    pub fn restore(&self, reports: Vec<Progress>) {
        if let Ok(mut h) = self.heard.lock() {
            h.reports.restore(reports);
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

/// Every connection, by [`Key`], and which one each ShardPlan uses.
#[derive(Debug)]
pub struct Conns {
    slots: Mutex<HashMap<Key, Slot>>,
    used: Mutex<HashMap<PlanRef, (Key, BTreeSet<String>)>>,
    metrics: Arc<Metrics>,
    wake: mpsc::UnboundedSender<PlanRef>,
    /// How long a connection attempt may take.
    connect_within: Duration,
}

impl Conns {
    /// No connection yet; node events wake ShardPlans through `wake`.
    #[must_use]
    pub fn new(
        metrics: Arc<Metrics>,
        wake: mpsc::UnboundedSender<PlanRef>,
        connect_within: Duration,
    ) -> Self {
        Self {
            connect_within,
            slots: Mutex::new(HashMap::new()),
            used: Mutex::new(HashMap::new()),
            metrics,
            wake,
        }
    }

    /// The connection of `key` for `plan`, made with `options` if there is none; waits only for
    /// another attempt on the same key. `plan` stops using any connection it used before.
    pub async fn get(
        &self,
        plan: &PlanRef,
        key: Key,
        url: &str,
        options: async_nats::ConnectOptions,
        replicas: usize,
    ) -> Result<Arc<Conn>> {
        let slot = self
            .slots
            .lock()
            .map_err(|_| Error::Nats("connections poisoned".into()))?
            .entry(key.clone())
            .or_default()
            .clone();
        let conn = {
            let mut held = slot.lock().await;
            match held.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let addrs = aether_nats::process::nats_urls(url, "spec.nats.url")
                        .map_err(|e| Error::Nats(e.to_string()))?;
                    let within = self.connect_within;
                    let options = options.connection_timeout(within);
                    let client = tokio::time::timeout(within, options.connect(addrs))
                        .await
                        .map_err(|_| {
                            Error::Nats(format!("cannot connect to {url} within {within:?}"))
                        })?
                        .map_err(|e| Error::Nats(format!("cannot connect to {url}: {e}")))?;
                    let c = Arc::new(
                        Conn::start(
                            client,
                            &key.prefix,
                            replicas,
                            self.metrics.clone(),
                            self.wake.clone(),
                        )
                        .await?,
                    );
                    *held = Some(c.clone());
                    c
                }
            }
        };
        if let Ok(mut users) = conn.users.lock() {
            users.insert(plan.clone());
        }
        let before = self
            .used
            .lock()
            .ok()
            .and_then(|mut u| u.insert(plan.clone(), (key.clone(), conn.identity.clone())));
        if let Some((old, _)) = before
            && old != key
        {
            self.leave(plan, &old);
        }
        Ok(conn)
    }

    /// `plan` is gone: the connection it used is closed unless another ShardPlan uses it.
    pub fn release(&self, plan: &PlanRef) {
        let before = self.used.lock().ok().and_then(|mut u| u.remove(plan));
        if let Some((key, _)) = before {
            self.leave(plan, &key);
        }
    }

    /// The identity of the server `plan` reached when it last connected.
    #[must_use]
    pub fn identity_of(&self, plan: &PlanRef) -> Option<BTreeSet<String>> {
        self.used
            .lock()
            .ok()
            .and_then(|u| u.get(plan).map(|(_, id)| id.clone()))
    }

    fn leave(&self, plan: &PlanRef, key: &Key) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let unused = slots.get(key).is_some_and(|slot| match slot.try_lock() {
            Ok(held) => held.as_ref().is_none_or(|c| {
                c.users.lock().is_ok_and(|mut users| {
                    users.remove(plan);
                    users.is_empty()
                })
            }),
            // Someone is connecting on it right now: it is about to be used.
            Err(_) => false,
        });
        if unused {
            // Dropped here; the client closes once the last reconcile holding it is done.
            slots.remove(key);
        }
    }
}

/// Progress reports between two reconciles: the latest per (epoch, shard), which is all a decision
/// reads (a move reports Transferring, then Done or Failed), so they stay bounded however many
/// arrive; beyond [`Reports::LIMIT`] moves the oldest epochs go first. Error texts are cut to
/// [`Reports::ERROR_BYTES`] so a report can never make the status too large to write.
#[derive(Debug, Default)]
pub struct Reports(std::collections::BTreeMap<(u64, u32), Progress>);

impl Reports {
    /// Moves remembered at most (two plans of 65,536 shards).
    pub const LIMIT: usize = 2 * 65_536;
    /// Longest error text kept from a report.
    pub const ERROR_BYTES: usize = 1024;

    /// Adds a report; it replaces an earlier one of the same move.
    pub fn add(&mut self, mut p: Progress) {
        if let Some(e) = &mut p.error
            && e.len() > Self::ERROR_BYTES
        {
            *e = aether_core::protocol::app::cut(std::mem::take(e), Self::ERROR_BYTES);
            e.push_str("...");
        }
        self.0.insert((p.epoch, p.shard), p);
        while self.0.len() > Self::LIMIT {
            self.0.pop_first();
        }
    }

    /// Puts back reports a failed reconcile took, unless a newer one of the same move came since.
    pub fn restore(&mut self, reports: Vec<Progress>) {
        for p in reports {
            self.0.entry((p.epoch, p.shard)).or_insert(p);
        }
    }

    /// The reports, oldest epoch first.
    #[must_use]
    pub fn into_reports(self) -> Vec<Progress> {
        self.0.into_values().collect()
    }
}
