//! Actor-to-actor sends through a chaos run: the example bank's accounts (`examples/bank/app.py`,
//! the app container of every node) move money by sends while the faults happen; at the end every
//! account must hold exactly what the transfers applied say (a send applied twice or lost shows as
//! a balance off), and every saga must finish. A client retries a transfer with its id only within
//! the event stream's duplicate window (the run's client deadline); a transfer still without an
//! answer then is looked up in its account's log, which says whether it was applied.

use crate::app::App;
use crate::bank::{self, Transfer};
use aether_core::protocol::{ActorRef, ErrorCode, Op, Outcome, Request};
use aether_node::client::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long the accounts' opening deposits may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// How long the accounts may take to settle after the last fault.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// What the transfers showed.
#[derive(Clone, Debug, Default)]
pub struct SendVerdict {
    /// Accounts.
    pub accounts: usize,
    /// Transfers acknowledged (each one send from one account to another).
    pub transfers: usize,
    /// What broke a promise: a transfer without a final answer, an account off its due.
    pub violations: Vec<String>,
}

/// The bank app the nodes call, and the transfers running against it.
pub(super) struct Sends {
    accounts: usize,
    stop: Arc<AtomicBool>,
    lanes: Vec<tokio::task::JoinHandle<Lane>>,
}

/// What one lane of transfers did: those acknowledged, and those whose answer never came (each
/// with its command id).
#[derive(Debug, Default)]
struct Lane {
    done: Vec<Transfer>,
    unknown: Vec<(Transfer, String)>,
}

/// The app container every node of the run is given (`--app-url`).
pub(super) async fn app() -> App {
    App::start("examples/bank/app.py").await
}

/// Opens `accounts` accounts and starts `lanes` transfer loops (none when `accounts` is 0).
pub(super) async fn start(client: &Client, accounts: usize, lanes: u64) -> Result<Sends, String> {
    let stop = Arc::new(AtomicBool::new(false));
    if accounts == 0 {
        return Ok(Sends {
            accounts,
            stop,
            lanes: Vec::new(),
        });
    }
    bank::open(client, accounts, ANSWER_WITHIN).await?;
    let lanes = (0..lanes)
        .map(|lane| tokio::spawn(transfers(client.clone(), accounts, stop.clone(), lane)))
        .collect();
    Ok(Sends {
        accounts,
        stop,
        lanes,
    })
}

/// Stops the transfers and checks every account against the acknowledged ones.
pub(super) async fn finish(
    client: &Client,
    js: &async_nats::jetstream::Context,
    prefix: &str,
    shards: u32,
    sends: Sends,
) -> SendVerdict {
    sends.stop.store(true, Ordering::Relaxed);
    let mut verdict = SendVerdict {
        accounts: sends.accounts,
        ..SendVerdict::default()
    };
    if sends.accounts == 0 {
        return verdict;
    }
    let mut done = Vec::new();
    let mut logs = std::collections::HashMap::new();
    for lane in sends.lanes {
        match lane.await {
            Ok(l) => {
                done.extend(l.done);
                // Unanswered: applied if its account's log records its command id (each log
                // read once).
                for (t, cmd) in l.unknown {
                    if let std::collections::hash_map::Entry::Vacant(e) = logs.entry(t.0) {
                        e.insert(commands(js, prefix, shards, &bank::account(t.0)).await);
                    }
                    if logs.get(&t.0).is_some_and(|log| log.contains_key(&cmd)) {
                        done.push(t);
                    }
                }
            }
            Err(e) => verdict.violations.push(format!("a transfer lane: {e}")),
        }
    }
    verdict.transfers = done.len();
    let expected = bank::expected(sends.accounts, &done);
    if let Err(e) = bank::settle(client, &expected, SETTLE_WITHIN).await {
        verdict.violations.push(e);
        // What the logs say: a command (a client's or a send) recorded twice on an account.
        for i in 0..sends.accounts {
            for id in twice(js, prefix, shards, &bank::account(i)).await {
                verdict
                    .violations
                    .push(format!("{} recorded {id}", bank::account(i)));
            }
        }
    }
    verdict
}

/// Random transfers (seeded by `lane`) between the accounts until `stop`, each sent once with
/// its id (the client retries it within its deadline, inside the duplicate window).
async fn transfers(client: Client, accounts: usize, stop: Arc<AtomicBool>, lane: u64) -> Lane {
    let mut out = Lane::default();
    let mut x = bank::transfer_seed(lane);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (from, to, amount) = bank::next_transfer(&mut x, accounts);
        if from == to {
            continue;
        }
        n += 1;
        let cmd = format!("xfer-{lane}-{n}");
        let command = serde_json::json!({"transfer": {"to": bank::account(to), "amount": amount}});
        let req = Request::new(
            ActorRef::new("account", bank::account(from)),
            Op::Command { command },
            Some(cmd.clone()),
        );
        match client.send(&req).await.map(|r| r.outcome) {
            Ok(Outcome::Ok(_)) => out.done.push((from, to, amount)),
            Ok(Outcome::Error(e)) if e.code == ErrorCode::Rejected => {}
            _ => out.unknown.push(((from, to, amount), cmd)),
        }
    }
    out
}

/// Each command id an actor's log records, and how often (read straight from the event stream).
async fn commands(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    shards: u32,
    id: &str,
) -> std::collections::BTreeMap<String, u32> {
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    let log = crate::timers::records(js, prefix, shards, &ActorRef::new("account", id)).await;
    for cmd in log.into_iter().filter_map(|(r, _)| r.cmd) {
        *seen.entry(cmd).or_default() += 1;
    }
    seen
}

/// Command ids an actor's log records more than once.
async fn twice(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    shards: u32,
    id: &str,
) -> Vec<String> {
    commands(js, prefix, shards, id)
        .await
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, n)| format!("{id} ({n} times)"))
        .collect()
}
