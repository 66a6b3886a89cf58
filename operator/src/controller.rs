//! The kube-rs Controller: observe (ShardPlan, StatefulSet, pods, NATS, progress reports), decide
//! (`decide.rs`), apply: the status first (server-side apply on the status subresource, only over
//! the version it was decided from), then the plan to the NATS KV bucket, then Kubernetes Events. A
//! plan in the status but not in NATS (a crash or NATS outage between the two writes) is published
//! on the next reconcile, so status always leads.

use crate::decide::{Decision, Held, Note, Observed, decide};
pub use crate::error::{Error, Result};
use crate::membership;
pub use crate::metrics::{Metrics, PlanFigures, Reason};
use aether_core::crd::{ShardPlan, ShardPlanStatus};
use aether_core::protocol::{Names, PlanMessage, decode};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Field manager of the status writes.
pub const MANAGER: &str = "aether-operator";

/// State shared by reconciles.
pub struct Context {
    client: Client,
    recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The NATS connections, each with the reports and node events it heard.
    conns: Conns,
    /// Reconciles asked for by NATS news (a node leaving), outside the Kubernetes watches.
    woken: Mutex<Option<mpsc::UnboundedReceiver<PlanRef>>>,
    /// The controller's cache of every ShardPlan, once it runs: the prefix check reads it rather
    /// than listing every ShardPlan on each reconcile.
    plans: std::sync::OnceLock<kube::runtime::reflector::Store<ShardPlan>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`, reporting Events as `identity`; a NATS connection attempt may take
    /// `connect_within`.
    #[must_use]
    pub fn new(
        client: Client,
        identity: &str,
        metrics: Arc<Metrics>,
        connect_within: Duration,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.to_owned()),
        };
        let (wake, woken) = mpsc::unbounded_channel();
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            conns: Conns::new(metrics.clone(), wake, connect_within),
            metrics,
            woken: Mutex::new(Some(woken)),
            plans: std::sync::OnceLock::new(),
        })
    }

    /// The NATS connection of a ShardPlan (shared by the ShardPlans of one server list, prefix and
    /// credentials), following that prefix's progress reports and node events on that server.
    async fn nats(&self, sp: &ShardPlan, ns: &str) -> Result<Arc<Conn>> {
        let spec = &sp.spec.nats;
        let mut opts = async_nats::ConnectOptions::new();
        let mut credentials = None;
        if let Some(secret) = &spec.credentials_secret {
            let s = Api::<Secret>::namespaced(self.client.clone(), ns)
                .get_opt(secret)
                .await?
                .ok_or_else(|| crate::credentials::not_allowed(secret, ns))?;
            opts = crate::credentials::options(&s)?;
            credentials = Some(format!(
                "{ns}/{secret}@{}",
                s.metadata.resource_version.unwrap_or_default()
            ));
        }
        let opts = opts
            .name(MANAGER)
            .custom_inbox_prefix(Names::new(&spec.subject_prefix).operator_inbox());
        let key = Key {
            servers: conns::servers(&spec.url)?,
            prefix: spec.subject_prefix.clone(),
            credentials,
        };
        let replicas = spec.replicas.max(1) as usize;
        self.conns
            .get(&ObjectRef::from_obj(sp), key, &spec.url, opts, replicas)
            .await
    }
}

/// One reconcile of a ShardPlan; its log lines carry the ShardPlan (one span per reconcile).
#[tracing::instrument(skip_all, fields(shardplan = %format!("{}/{}", sp.namespace().unwrap_or_default(), sp.name_any())))]
pub async fn reconcile(sp: Arc<ShardPlan>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let ns = sp
        .namespace()
        .ok_or_else(|| Error::Invalid("ShardPlan without namespace".into()))?;
    let name = sp.name_any();
    // The cache may not hold this operator's last status write yet; deciding from it would plan from
    // an old status and drop the progress reports of the moves it no longer lists. Read it fresh.
    let key = format!("{ns}/{name}");
    let Some(sp) = Api::<ShardPlan>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?
    else {
        ctx.metrics.plan(&key, None);
        ctx.conns.release(&ObjectRef::new(&name).within(&ns));
        return Ok(Action::await_change());
    };
    let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&sp.spec.stateful_set)
        .await?;
    let pods = match &sts {
        Some(s) => list_pods(&ctx.client, &ns, s).await?,
        None => Vec::new(),
    };
    let prefix = sp.spec.nats.subject_prefix.clone();
    let replicas = sp.spec.nats.replicas.max(1) as usize;
    let (nats, nats_problem, held) = match ctx.nats(&sp, &ns).await {
        Ok(c) => match held_plan(&c.client, &prefix, replicas).await {
            Ok(held) => (Some(c), None, held),
            Err(e) => (None, Some(e.to_string()), None),
        },
        Err(e) => (None, Some(e.to_string()), None),
    };
    let me = format!(
        "{ns}/{name}/{}",
        sp.metadata.uid.clone().unwrap_or_default()
    );
    // The cache only once it holds the whole initial list (a reconcile may run before): else a
    // ShardPlan created earlier with the same prefix could be missed.
    let cached = match ctx.plans.get() {
        Some(store) => {
            let ready = tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready());
            matches!(ready.await, Ok(Ok(()))).then(|| store.state())
        }
        None => None,
    };
    let all: Vec<Arc<ShardPlan>> = match cached {
        Some(all) => all,
        None => Api::<ShardPlan>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect(),
    };
    // The same server is the same however its URL is spelled: the same `host:port` in both lists,
    // or a server both connections reached.
    let servers = conns::servers(&sp.spec.nats.url).unwrap_or_default();
    let identity = nats.as_ref().map(|c| c.identity.clone());
    let same_server = |other: &ShardPlan| {
        conns::servers(&other.spec.nats.url).is_ok_and(|s| !s.is_disjoint(&servers))
            || identity.as_ref().is_some_and(|mine| {
                ctx.conns
                    .identity_of(&ObjectRef::from_obj(other))
                    .is_some_and(|theirs| !theirs.is_disjoint(mine))
            })
    };
    let prefix_taken_by = all
        .into_iter()
        .filter(|other| {
            other.spec.nats.subject_prefix == prefix
                && other.metadata.uid != sp.metadata.uid
                && same_server(other)
        })
        .filter(|other| {
            // The ShardPlan created first keeps the prefix (names break a tie).
            let key = |p: &ShardPlan| {
                (
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                    p.namespace(),
                    p.name_any(),
                )
            };
            key(other) < key(&sp)
        })
        .map(|other| {
            format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            )
        })
        .next();
    // A ShardPlan that may not use the prefix takes nothing the one that may needs.
    let progress = match (&nats, &prefix_taken_by) {
        (Some(c), None) => c.take_progress(),
        _ => Vec::new(),
    };
    let leaving = nats.as_ref().map(|c| c.leaving()).unwrap_or_default();
    let started = Instant::now();
    let observed = Observed {
        generation: sp.metadata.generation,
        spec: &sp.spec,
        status: sp.status.as_ref(),
        replicas: sts
            .as_ref()
            .map(|s| s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)),
        members: membership::members(&pods, &leaving),
        progress: progress.clone(),
        nats_problem,
        held,
        me: me.clone(),
        prefix_taken_by,
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let Decision {
        status,
        publish,
        notes,
        requeue,
    } = decide(&observed);
    ctx.metrics
        .plan_seconds
        .observe(started.elapsed().as_secs_f64());

    // Written only over the version decided from: an operator that read the ShardPlan before it
    // was paused (a leader frozen mid-reconcile, resumed after a standby took over) gets a conflict
    // instead of putting an older status back over the new leader's (an error, counted as
    // `reason="conflict"`; the next reconcile decides from the ShardPlan as it is then).
    let version = sp.metadata.resource_version.clone();
    if let Err(e) = write_status(&ctx.client, &ns, &name, version, &status).await {
        // Nothing was decided for good: hand the reports back for the next attempt.
        if let Some(c) = &nats {
            c.restore(progress);
        }
        // Deleted while this reconcile ran: nothing to write, nothing wrong.
        if let Error::Kube(kube::Error::Api(status)) = &e
            && status.code == 404
        {
            ctx.metrics.plan(&key, None);
            return Ok(Action::await_change());
        }
        return Err(e);
    }
    ctx.metrics.plan(
        &key,
        Some(PlanFigures {
            moving: status.moving,
            nats_unreachable: nats.is_none(),
            degraded: status
                .condition("Degraded")
                .is_some_and(|c| c.status == "True"),
        }),
    );

    if let Some(conn) = nats {
        let msg = publish.or_else(|| {
            status.plan().map(|p| {
                let mut msg = PlanMessage::new(
                    &p,
                    sp.spec.migration.max_concurrent,
                    sp.spec.migration.timeout_seconds,
                );
                msg.owner = Some(me.clone());
                msg
            })
        });
        if let Some(msg) = msg {
            ensure_published(&conn.client, &prefix, replicas, msg).await?;
        }
    }
    for note in notes {
        emit(&ctx, &sp, note).await;
    }
    Ok(Action::requeue(requeue))
}

/// The plan the bucket of `prefix` holds (`None`: none, or not a plan).
async fn held_plan(
    client: &async_nats::Client,
    prefix: &str,
    replicas: usize,
) -> Result<Option<Held>> {
    let js = async_nats::jetstream::new(client.clone());
    let bucket = aether_nats::plans::open_bucket(&js, &Names::new(prefix), replicas)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    Ok(bucket
        .get(Names::PLAN_KEY)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?
        .and_then(|v| decode::<PlanMessage>(&v).ok())
        .map(|p| Held {
            epoch: p.epoch,
            shards: p.shards,
            owner: p.owner,
        }))
}

/// Publishes `msg` (compare-and-set on the bucket's revision), unless the bucket holds it already.
/// A bucket holding a later epoch, or another plan at this one, is an error: the next reconcile
/// reads it and publishes above it.
async fn ensure_published(
    client: &async_nats::Client,
    prefix: &str,
    replicas: usize,
    msg: PlanMessage,
) -> Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let bucket = aether_nats::plans::open_bucket(&js, &Names::new(prefix), replicas)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?;
    let held = bucket
        .get(Names::PLAN_KEY)
        .await
        .map_err(|e| Error::Nats(e.to_string()))?
        .and_then(|v| decode::<PlanMessage>(&v).ok());
    match held {
        // Ours (or, unsigned, written by an operator before plans were signed).
        Some(h) if h.epoch == msg.epoch && (h.owner == msg.owner || h.owner.is_none()) => Ok(()),
        Some(h) if h.epoch >= msg.epoch => Err(Error::Nats(format!(
            "the plan bucket holds epoch {} (from {}), not this ShardPlan's epoch {}",
            h.epoch,
            h.owner.as_deref().unwrap_or("an unsigned writer"),
            msg.epoch
        ))),
        _ => aether_nats::plans::publish(&bucket, &msg)
            .await
            .map(|_| ())
            .map_err(|e| Error::Nats(e.to_string())),
    }
}

async fn list_pods(client: &Client, ns: &str, sts: &StatefulSet) -> Result<Vec<Pod>> {
    let labels = sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let sts_name = sts.name_any();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector.join(",")))
        .await?;
    // Only the StatefulSet's own pods, not others that happen to match its labels.
    Ok(pods
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.kind == "StatefulSet" && o.name == sts_name)
        })
        .collect())
}

/// Writes a ShardPlan's status by server-side apply, only over `resource_version` when given (the
/// version it was decided from; else 409 Conflict and nothing written).
pub async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    resource_version: Option<String>,
    status: &ShardPlanStatus,
) -> Result<()> {
    let api = Api::<ShardPlan>::namespaced(client.clone(), ns);
    // A resourceVersion in an applied object is a precondition: 409 Conflict if it has changed.
    let mut patch = serde_json::json!({
        "apiVersion": ShardPlan::api_version(&()),
        "kind": ShardPlan::kind(&()),
        "status": status,
    });
    if let Some(v) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": v });
    }
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn emit(ctx: &Context, sp: &ShardPlan, note: Note) {
    // kube's Recorder folds events with the same type, reason and action into one series and keeps the
    // first note, so "epoch 2: ..." would show as "epoch 1: ..." with a count. The note as the action
    // keeps distinct messages distinct and still folds repeats, as client-go does (action: max 128 B).
    let mut action = note.message.clone();
    while action.len() > 128 {
        action.pop();
    }
    let ev = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.into(),
        note: Some(note.message),
        action,
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &sp.object_ref(&())).await {
        tracing::warn!(error = %e, "event not recorded");
    }
}

/// Requeue with backoff on errors; the error is logged and counted, never a crash.
pub fn error_policy(sp: Arc<ShardPlan>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&Reason {
            reason: error.reason(),
        })
        .inc();
    tracing::warn!(shardplan = %sp.name_any(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let plans = Api::<ShardPlan>::all(client.clone());
    let controller = Controller::new(plans, watcher::Config::default());
    let store = controller.store();
    let _ = ctx.plans.set(store.clone());
    let woken = ctx.woken.lock().ok().and_then(|mut w| w.take());
    let controller = match woken {
        // Only the ShardPlans of the server and prefix the node event came on.
        Some(rx) => controller.reconcile_on(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        })),
        None => controller,
    };
    let store2 = store.clone();
    controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace();
                let owner = pod
                    .owner_references()
                    .iter()
                    .find(|o| o.kind == "StatefulSet")
                    .map(|o| o.name.clone());
                store
                    .state()
                    .into_iter()
                    .filter(|sp| {
                        sp.namespace() == ns && Some(&sp.spec.stateful_set) == owner.as_ref()
                    })
                    .map(|sp| ObjectRef::from_obj(&*sp))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<StatefulSet>::all(client),
            watcher::Config::default(),
            move |sts: StatefulSet| {
                let (ns, name) = (sts.namespace(), sts.name_any());
                store2
                    .state()
                    .into_iter()
                    .filter(|sp| sp.namespace() == ns && sp.spec.stateful_set == name)
                    .map(|sp| ObjectRef::from_obj(&*sp))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            let ctx = ctx.clone();
            let metrics = ctx.metrics.clone();
            async move {
                match res {
                    // A watch that fails (the API server unreachable, RBAC) makes the operator
                    // not Ready, saying why, until a reconcile runs again.
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        tracing::warn!(error = %e, "watch");
                        metrics.watches(Some(e.to_string()));
                    }
                    // A ShardPlan deleted: its problems go with it.
                    Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                        let ns = obj.namespace.clone().unwrap_or_default();
                        metrics.plan(&format!("{ns}/{}", obj.name), None);
                        ctx.conns.release(&ObjectRef::new(&obj.name).within(&ns));
                    }
                    Err(e) => tracing::debug!(error = %e, "reconcile dispatch"),
                    Ok(_) => metrics.watches(None),
                }
            }
        })
        .await;
}

mod conns;
pub use conns::Reports;
use conns::{Conn, Conns, Key, PlanRef};

#[cfg(test)]
mod tests;
