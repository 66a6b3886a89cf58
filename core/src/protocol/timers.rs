//! Timers: an actor schedules a command to itself by returning it from decide, in the same record
//! as its events, so a schedule is as durable and as fenced as the state. Pure: the node passes the
//! wall clock in (milliseconds since the Unix epoch) and stores what this decides.
//!
//! A timer has a name (one schedule per name and actor: setting it again replaces it), a due time,
//! an optional period and the command it delivers. When it fires, the actor gets the command
//! `{"$timer": {"name", "due", "missed", "command"}}` with the command id
//! `$timer-{h}-{due}-{name}` ([`timer_id`]), so a firing is applied once however often it is
//! delivered. A periodic timer that missed ticks (nobody served its shard, the app was down) fires
//! once for them, `missed` counting the ticks skipped, unless it asks to catch up on up to
//! `catchUp` of them one by one. See docs/PROTOCOL.md "Timers".

use super::ActorRef;
use super::messages::{MAX_COMMAND_DEPTH, json_depth};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, UNIX_EPOCH};

/// The command key under which an actor gets a timer's firing.
pub const TIMER_KEY: &str = "$timer";
/// How every timer firing's command id starts ([`timer_id`]).
pub const TIMER_ID_PREFIX: &str = "$timer-";
/// Most timers one actor holds.
pub const MAX_TIMERS: usize = 64;
/// Longest timer name, in bytes (`[A-Za-z0-9_.:-]`).
pub const MAX_TIMER_NAME_BYTES: usize = 64;
/// Shortest period of a periodic timer.
pub const MIN_PERIOD_MS: u64 = 1_000;
/// Longest time from now to a timer's first due time (and longest period): 366 days.
pub const MAX_DELAY_MS: u64 = 366 * 24 * 3_600_000;
/// Largest command a timer carries (JSON bytes).
pub const MAX_TIMER_COMMAND_BYTES: usize = 16 * 1024;
/// Most missed ticks a periodic timer may ask to fire one by one (`catchUp`).
pub const MAX_CATCH_UP: u32 = 1_000;

/// A timer as decide returns it: a name, when (`after` a delay, `at` a time, or only `every`: one
/// period from now), an optional period, the command it delivers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimerSpec {
    /// The timer's name within its actor.
    pub name: String,
    /// Delay from now: milliseconds, or a duration such as `"15m"`, `"1h 30m"`, `"500ms"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Due time: milliseconds since the Unix epoch, or RFC 3339 (`"2026-12-24T18:00:00Z"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Value>,
    /// Period: milliseconds or a duration, at least [`MIN_PERIOD_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Value>,
    /// The command the firing delivers (inside `$timer`).
    #[serde(default)]
    pub command: Value,
    /// Missed ticks a periodic timer fires one by one before it coalesces the rest (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<u32>,
}

/// A timer as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    /// The timer's name within its actor.
    pub name: String,
    /// Next due time, milliseconds since the Unix epoch.
    pub due: u64,
    /// Period in milliseconds; `None` for a one-shot timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// The command the firing delivers.
    #[serde(default)]
    pub command: Value,
    /// Missed ticks fired one by one before the rest coalesce.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub catch_up: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One firing of a timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing {
    /// The tick fired (its due time).
    pub due: u64,
    /// Ticks skipped before it (coalesced into this firing).
    pub missed: u64,
    /// The timer's next due time; `None`: a one-shot timer, gone once fired.
    pub next: Option<u64>,
}

/// Checks a timer name: 1 to [`MAX_TIMER_NAME_BYTES`] bytes of `[A-Za-z0-9_.:-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TIMER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "timer name {name:?} must be 1 to {MAX_TIMER_NAME_BYTES} bytes of [A-Za-z0-9_.:-]"
        ))
    }
}

/// Milliseconds of a duration: a non-negative integer of milliseconds, or a string such as
/// `"15m"`, `"10s"`, `"1h 30m"`, `"500ms"`, `"2days"`.
pub fn duration_ms(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a whole number of milliseconds")),
        Value::String(s) => humantime::parse_duration(s)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|e| format!("{s:?} is not a duration ({e})")),
        other => Err(format!("{other} is not a duration")),
    }
}

/// Milliseconds since the Unix epoch of a time: an integer of milliseconds, or RFC 3339.
pub fn time_ms(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not milliseconds since the Unix epoch")),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e})"))
            .and_then(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map_err(|_| format!("{s:?} is before 1970"))
            })
            .map(|d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        other => Err(format!("{other} is not a time")),
    }
}

impl TimerSpec {
    /// The timer this spec sets at `now`, or what is wrong with it: a bad name, neither or both of
    /// `after` and `at`, a period under [`MIN_PERIOD_MS`], a due time more than [`MAX_DELAY_MS`]
    /// ahead, a command too large or nested too deep, a `catchUp` over [`MAX_CATCH_UP`].
    pub fn resolve(&self, now: u64) -> Result<Timer, String> {
        check_name(&self.name)?;
        let what = |e: String| format!("timer {:?}: {e}", self.name);
        let every = self
            .every
            .as_ref()
            .map(duration_ms)
            .transpose()
            .map_err(what)?;
        if let Some(p) = every
            && !(MIN_PERIOD_MS..=MAX_DELAY_MS).contains(&p)
        {
            return Err(what(format!(
                "a period of {p} ms is outside {MIN_PERIOD_MS}..={MAX_DELAY_MS} ms"
            )));
        }
        let due = match (&self.after, &self.at, every) {
            (Some(_), Some(_), _) => return Err(what("both after and at".into())),
            (Some(after), None, _) => now.saturating_add(duration_ms(after).map_err(what)?),
            (None, Some(at), _) => time_ms(at).map_err(what)?,
            (None, None, Some(p)) => now.saturating_add(p),
            (None, None, None) => {
                return Err(what("one of after, at or every is needed".into()));
            }
        };
        if due.saturating_sub(now) > MAX_DELAY_MS {
            return Err(what(format!(
                "due more than {MAX_DELAY_MS} ms (366 days) from now"
            )));
        }
        if json_depth(&self.command) > MAX_COMMAND_DEPTH {
            return Err(what(format!(
                "the command nests deeper than {MAX_COMMAND_DEPTH}"
            )));
        }
        let size = serde_json::to_vec(&self.command).map_or(usize::MAX, |b| b.len());
        if size > MAX_TIMER_COMMAND_BYTES {
            return Err(what(format!(
                "a command of {size} bytes, over {MAX_TIMER_COMMAND_BYTES}"
            )));
        }
        let catch_up = self.catch_up.unwrap_or(0);
        if catch_up > MAX_CATCH_UP {
            return Err(what(format!("catchUp {catch_up} is over {MAX_CATCH_UP}")));
        }
        Ok(Timer {
            name: self.name.clone(),
            due,
            every,
            command: self.command.clone(),
            catch_up,
        })
    }
}

impl Timer {
    /// The firing of this timer at `now`; `None` before its due time. A periodic timer fires the
    /// oldest tick it may still catch up on (all but `catch_up` of the missed ones are skipped and
    /// counted in `missed`); its next due time is the tick after the one fired.
    #[must_use]
    pub fn fire(&self, now: u64) -> Option<Firing> {
        if now < self.due {
            return None;
        }
        let Some(p) = self.every.filter(|&p| p > 0) else {
            return Some(Firing {
                due: self.due,
                missed: 0,
                next: None,
            });
        };
        // Ticks due by now, the first one included.
        let ticks = (now - self.due) / p + 1;
        let skipped = (ticks - 1).saturating_sub(u64::from(self.catch_up));
        let due = self.due + skipped * p;
        Some(Firing {
            due,
            missed: skipped,
            next: Some(due.saturating_add(p)),
        })
    }
}

/// The command id of a timer's firing: `$timer-{h}-{due}-{name}`, `h` the XXH3-64 of `kind/id` in
/// 16 hex digits. The same wherever and however often it fires, so the actor applies it once.
#[must_use]
pub fn timer_id(actor: &ActorRef, name: &str, due: u64) -> String {
    let who = crate::hash::actor_hash(&format!("{}/{}", actor.kind, actor.id));
    format!("{TIMER_ID_PREFIX}{who:016x}-{due}-{name}")
}

/// The command a firing delivers: `{"$timer": {"name", "due", "missed", "command"}}`.
#[must_use]
pub fn firing_command(timer: &Timer, firing: &Firing) -> Value {
    serde_json::json!({ TIMER_KEY: {
        "name": timer.name,
        "due": firing.due,
        "missed": firing.missed,
        "command": timer.command,
    }})
}

/// True for an internal firing request: `{"$timer": {}}`, with no `due` yet (the worker fills in
/// the rest from the actor's earliest due timer).
#[must_use]
pub fn is_firing_request(command: &Value) -> bool {
    command
        .get(TIMER_KEY)
        .is_some_and(|t| t.is_object() && t.get("due").is_none())
}

/// What a record changes of an actor's timers: `cancel` removes, then `set` replaces by name.
/// Kept sorted by name.
pub fn apply(timers: &mut Vec<Timer>, set: &[Timer], cancel: &[String]) {
    if !cancel.is_empty() {
        timers.retain(|t| !cancel.contains(&t.name));
    }
    for t in set {
        match timers.binary_search_by(|x| x.name.cmp(&t.name)) {
            Ok(i) => timers[i] = t.clone(),
            Err(i) => timers.insert(i, t.clone()),
        }
    }
}

/// The changes a firing and its decision make together: the firing's own (a periodic timer's next
/// tick, a one-shot timer gone) first, the decision's after (its `set` and `cancel` win).
#[must_use]
pub fn merge(
    fired: Option<(&Timer, &Firing)>,
    set: Vec<Timer>,
    cancel: Vec<String>,
) -> (Vec<Timer>, Vec<String>) {
    let mut out_set: Vec<Timer> = Vec::new();
    let mut out_cancel: Vec<String> = Vec::new();
    if let Some((t, f)) = fired {
        match f.next {
            Some(next) => out_set.push(Timer {
                due: next,
                ..t.clone()
            }),
            None => out_cancel.push(t.name.clone()),
        }
    }
    for name in cancel {
        out_set.retain(|t| t.name != name);
        if !out_cancel.contains(&name) {
            out_cancel.push(name);
        }
    }
    for t in set {
        out_cancel.retain(|n| *n != t.name);
        out_set.retain(|x| x.name != t.name);
        out_set.push(t);
    }
    (out_set, out_cancel)
}

/// The timers and cancels of an app's decide answer (`null` or lists), or what is wrong with them.
pub fn parse(timers: Value, cancel: Value) -> Result<(Vec<TimerSpec>, Vec<String>), String> {
    let timers: Vec<TimerSpec> = match timers {
        Value::Null => Vec::new(),
        v @ Value::Array(_) => serde_json::from_value(v).map_err(|e| {
            format!("timers is not a list of {{name, after|at|every, command, catchUp}}: {e}")
        })?,
        _ => return Err("timers is not a list".into()),
    };
    let cancel: Vec<String> = match cancel {
        Value::Null => Vec::new(),
        v @ Value::Array(_) => serde_json::from_value(v)
            .map_err(|e| format!("cancel is not a list of timer names: {e}"))?,
        _ => return Err("cancel is not a list".into()),
    };
    if timers.len() > MAX_TIMERS || cancel.len() > MAX_TIMERS {
        return Err(format!(
            "{} timers and {} cancels in one decision, more than {MAX_TIMERS}",
            timers.len(),
            cancel.len()
        ));
    }
    for name in &cancel {
        check_name(name)?;
    }
    Ok((timers, cancel))
}

/// The timer changes a record makes: a firing's own and the decision's (`specs` resolved at `now`,
/// `cancel`), or why they are refused (a bad spec, or more than [`MAX_TIMERS`] timers on the
/// actor afterwards, `current` being its timers before).
pub fn changes(
    current: &[Timer],
    fired: Option<(&Timer, &Firing)>,
    specs: &[TimerSpec],
    cancel: Vec<String>,
    now: u64,
) -> Result<(Vec<Timer>, Vec<String>), String> {
    let set = specs
        .iter()
        .map(|s| s.resolve(now))
        .collect::<Result<Vec<_>, _>>()?;
    let (set, cancel) = merge(fired, set, cancel);
    let mut after = current.to_vec();
    apply(&mut after, &set, &cancel);
    if after.len() > MAX_TIMERS {
        return Err(format!(
            "the actor would hold {} timers, more than {MAX_TIMERS}",
            after.len()
        ));
    }
    Ok((set, cancel))
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
#[must_use]
pub fn epoch_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
