//! The bank workload of the end-to-end test and `make demo`: accounts of the example app
//! (`examples/bank/app.py`) opened with a deposit, random transfers between them, holds that are
//! captured at once or left for their timer to release, and the check that every account holds
//! exactly what the acknowledged operations say.

use aether_core::protocol::{ActorRef, ErrorCode, Op, Outcome, Request};
use aether_node::client::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Each account's opening deposit.
pub const OPENING: i64 = 100;

/// A transfer the bank acknowledged: (from, to, amount).
pub type Transfer = (usize, usize, i64);

/// A hold the bank acknowledged: (account, amount, captured). One not captured is released by its
/// timer (the example's holds live 300 ms to 1.5 s).
pub type Hold = (usize, i64, bool);

/// The id of account `i`.
#[must_use]
pub fn account(i: usize) -> String {
    format!("bank-{i}")
}

/// Sends `command` to account `id` with command id `cmd` until a final answer: `Ok(true)` when
/// acknowledged, `Ok(false)` when refused (`rejected`). A command whose outcome stays unknown is
/// sent again with the same id, so it is applied once whatever happened to the earlier attempts.
pub async fn command(
    client: &Client,
    id: usize,
    command: serde_json::Value,
    cmd: String,
    timeout: Duration,
) -> Result<bool, String> {
    let req = Request::new(
        ActorRef::new("account", account(id)),
        Op::Command { command },
        Some(cmd),
    );
    let deadline = Instant::now() + timeout;
    loop {
        match client.send(&req).await {
            Ok(r) => {
                return match r.outcome {
                    Outcome::Ok(_) => Ok(true),
                    Outcome::Error(e) if e.code == ErrorCode::Rejected => Ok(false),
                    Outcome::Error(e) => Err(format!("{req:?}: {e:?}")),
                };
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("no final answer for {req:?}: {e}"));
            }
            Err(_) => {}
        }
    }
}

/// Opens `accounts` accounts with [`OPENING`] each.
pub async fn open(client: &Client, accounts: usize, timeout: Duration) -> Result<(), String> {
    for i in 0..accounts {
        let json = serde_json::json!({"deposit": OPENING});
        if !command(client, i, json, format!("open-{i}"), timeout).await? {
            return Err(format!("account {i} refused its opening deposit"));
        }
    }
    Ok(())
}

/// The next random transfer (from, to, amount) between `accounts` accounts, from the generator
/// state `x` (seed it with [`transfer_seed`]); `from == to` when this draw moves nothing.
pub fn next_transfer(x: &mut u64, accounts: usize) -> Transfer {
    *x = aether_core::hash::mix64(*x);
    let accounts = accounts as u64;
    let (from, to) = ((*x % accounts) as usize, ((*x >> 20) % accounts) as usize);
    (from, to, 1 + ((*x >> 40) % 20) as i64)
}

/// The generator state of transfer lane `lane`.
#[must_use]
pub fn transfer_seed(lane: u64) -> u64 {
    0x5eed_0000 + lane
}

/// Random transfers (seeded by `lane`) between the accounts until `stop`; the acknowledged ones.
pub fn transfers(
    client: Client,
    accounts: usize,
    stop: Arc<AtomicBool>,
    lane: u64,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Vec<Transfer>, String>> {
    transfers_timed(client, accounts, stop, lane, timeout, |_| {})
}

/// [`transfers`], telling `took` how long each transfer took to its final answer.
pub fn transfers_timed(
    client: Client,
    accounts: usize,
    stop: Arc<AtomicBool>,
    lane: u64,
    timeout: Duration,
    mut took: impl FnMut(Duration) + Send + 'static,
) -> tokio::task::JoinHandle<Result<Vec<Transfer>, String>> {
    tokio::spawn(async move {
        let mut done = Vec::new();
        let mut x = transfer_seed(lane);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let (from, to, amount) = next_transfer(&mut x, accounts);
            if from == to {
                continue;
            }
            n += 1;
            let json = serde_json::json!({"transfer": {"to": account(to), "amount": amount}});
            let started = Instant::now();
            if command(&client, from, json, format!("xfer-{lane}-{n}"), timeout).await? {
                done.push((from, to, amount));
            }
            took(started.elapsed());
        }
        Ok(done)
    })
}

/// Random holds (seeded by `lane`) until `stop`: every other one captured at once, the rest left
/// for their timers to release; the acknowledged ones and how each ended.
pub fn holds(
    client: Client,
    accounts: usize,
    stop: Arc<AtomicBool>,
    lane: u64,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Vec<Hold>, String>> {
    tokio::spawn(async move {
        let mut done = Vec::new();
        let mut x = 0x401d_0000 + lane;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            x = aether_core::hash::mix64(x);
            let at = (x % accounts as u64) as usize;
            let amount = 1 + ((x >> 20) % 5) as i64;
            let ttl = format!("{}ms", 300 + (x >> 40) % 1200);
            n += 1;
            let id = format!("hold-{lane}-{n}");
            let json = serde_json::json!({"hold": {"id": id, "amount": amount, "ttl": ttl}});
            if !command(&client, at, json, id.clone(), timeout).await? {
                continue;
            }
            // A capture refused means its hold was released first (its timer fired).
            let captured = n.is_multiple_of(2)
                && command(
                    &client,
                    at,
                    serde_json::json!({"capture": id}),
                    format!("capture-{lane}-{n}"),
                    timeout,
                )
                .await?;
            done.push((at, amount, captured));
        }
        Ok(done)
    })
}

/// What each account must hold after `transfers`.
#[must_use]
pub fn expected(accounts: usize, transfers: &[Transfer]) -> Vec<i64> {
    expected_with(accounts, transfers, &[])
}

/// What each account must hold after `transfers` and `holds` (a captured hold's money is paid
/// out; a hold not captured comes back once its timer fires).
#[must_use]
pub fn expected_with(accounts: usize, transfers: &[Transfer], holds: &[Hold]) -> Vec<i64> {
    let mut e = vec![OPENING; accounts];
    for &(from, to, amount) in transfers {
        e[from] -= amount;
        e[to] += amount;
    }
    for &(at, amount, captured) in holds {
        if captured {
            e[at] -= amount;
        }
    }
    e
}

/// Reads every account until each holds what `expected` says and has no hold left (deposits still
/// in a sender's outbox are sent when the sender is loaded, which a read does; holds are released
/// by their timers without any read), or says which differ.
pub async fn settle(client: &Client, expected: &[i64], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut off = Vec::new();
        for (i, want) in expected.iter().enumerate() {
            let r = client
                .read("account", &account(i))
                .await
                .map_err(|e| format!("read {}: {e}", account(i)))?;
            let have = match r.outcome {
                // An account with a hold still open holds less than its due: not settled yet.
                Outcome::Ok(ok) if ok.state.get("holds").is_some() => i64::MIN,
                Outcome::Ok(ok) => ok.state["balance"].as_i64().unwrap_or(i64::MIN),
                Outcome::Error(e) => return Err(format!("read {}: {e:?}", account(i))),
            };
            if have != *want {
                off.push((account(i), have, *want));
            }
        }
        if off.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            off.truncate(5);
            return Err(format!(
                "accounts (id, balance, expected) differ from the acknowledged operations: {off:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
