//! Actor behaviours: how a command becomes events and how events fold into state. Pure functions; the
//! host (`host.rs`) persists the events in JetStream before it applies them.
//!
//! Built-in kinds: `counter` (an integer), `doc` (a JSON key-value document) and `list` (appends), so the sidecar is
//! useful and testable on its own. Another kind is one more [`Behaviour`] in the [`Registry`]
//! (in-process, for a node embedded as a library), or a kind of the app container ([`Kind::App`]),
//! whose decide and apply are HTTP calls (`app.rs`).

use crate::app::AppClient;
use aether_core::protocol::app::{DEFAULT_SNAPSHOT_EVERY, KindInfo};
use aether_core::timers::{TIMER_KEY, TimerSpec};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// What a kind of actor does.
pub trait Behaviour: Send + Sync + 'static {
    /// Kind name, `[a-z0-9-]{1,32}`.
    fn kind(&self) -> &'static str;
    /// State of an actor with no events.
    fn initial(&self) -> Value;
    /// The events a command produces against `state`, or why it is refused. Must not change anything.
    fn decide(&self, state: &Value, command: &Value) -> Result<Vec<Value>, String>;
    /// Folds one event into the state.
    fn apply(&self, state: &mut Value, event: &Value);

    /// The events, and the timers set and cancelled, a command produces against `state`. By
    /// default every kind takes `{"schedule": {"name", "after"|"at"|"every", "command"}}` and
    /// `{"cancelTimer": name}` (no events, a timer set or cancelled), and a timer's firing
    /// `{"$timer": {"command": c, ...}}` is decided as `c`; any other command goes to `decide`.
    fn decide_with_timers(&self, state: &Value, command: &Value) -> Result<Decided, String> {
        if let Some(spec) = command.get("schedule") {
            let spec: TimerSpec = serde_json::from_value(spec.clone()).map_err(|e| {
                format!("schedule takes a timer {{name, after|at|every, command}}: {e}")
            })?;
            return Ok(Decided {
                timers: vec![spec],
                ..Decided::default()
            });
        }
        if let Some(name) = command.get("cancelTimer") {
            let name = name.as_str().ok_or("cancelTimer takes a timer name")?;
            return Ok(Decided {
                cancel: vec![name.to_owned()],
                ..Decided::default()
            });
        }
        let command = command
            .get(TIMER_KEY)
            .and_then(|t| t.get("command"))
            .unwrap_or(command);
        Ok(Decided {
            events: self.decide(state, command)?,
            ..Decided::default()
        })
    }
}

/// What an in-process kind decides: events, and timers set or cancelled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decided {
    /// The events to append.
    pub events: Vec<Value>,
    /// Timers to set (a name set again replaces its timer).
    pub timers: Vec<TimerSpec>,
    /// Names of timers to cancel.
    pub cancel: Vec<String>,
}

/// `counter`: state `{"value": n}`; commands `{"add": n}` and `{"set": n}`.
#[derive(Debug, Default)]
pub struct Counter;

impl Behaviour for Counter {
    fn kind(&self) -> &'static str {
        "counter"
    }

    fn initial(&self) -> Value {
        json!({"value": 0})
    }

    fn decide(&self, state: &Value, command: &Value) -> Result<Vec<Value>, String> {
        let current = state["value"].as_i64().unwrap_or(0);
        if let Some(n) = command.get("add") {
            let n = n.as_i64().ok_or("add takes an integer")?;
            current.checked_add(n).ok_or("counter would overflow")?;
            Ok(vec![json!({"added": n})])
        } else if let Some(n) = command.get("set") {
            let n = n.as_i64().ok_or("set takes an integer")?;
            Ok(vec![json!({"set": n})])
        } else {
            Err(r#"unknown counter command: expected {"add": n} or {"set": n}"#.to_owned())
        }
    }

    fn apply(&self, state: &mut Value, event: &Value) {
        let current = state["value"].as_i64().unwrap_or(0);
        let next = if let Some(n) = event.get("added").and_then(Value::as_i64) {
            current.saturating_add(n)
        } else if let Some(n) = event.get("set").and_then(Value::as_i64) {
            n
        } else {
            current
        };
        state["value"] = next.into();
    }
}

/// `doc`: state is a JSON object; commands `{"put": {"key": k, "value": v}}` and `{"delete": k}`.
#[derive(Debug, Default)]
pub struct Document;

impl Behaviour for Document {
    fn kind(&self) -> &'static str {
        "doc"
    }

    fn initial(&self) -> Value {
        Value::Object(Map::new())
    }

    fn decide(&self, _state: &Value, command: &Value) -> Result<Vec<Value>, String> {
        if let Some(put) = command.get("put") {
            let key = put
                .get("key")
                .and_then(Value::as_str)
                .ok_or("put needs a string key")?;
            let value = put.get("value").cloned().unwrap_or(Value::Null);
            Ok(vec![json!({"put": {"key": key, "value": value}})])
        } else if let Some(key) = command.get("delete") {
            let key = key.as_str().ok_or("delete takes a string key")?;
            Ok(vec![json!({"deleted": key})])
        } else {
            Err(
                r#"unknown doc command: expected {"put": {"key", "value"}} or {"delete": key}"#
                    .to_owned(),
            )
        }
    }

    fn apply(&self, state: &mut Value, event: &Value) {
        let Some(map) = state.as_object_mut() else {
            return;
        };
        if let Some(put) = event.get("put") {
            if let Some(key) = put.get("key").and_then(Value::as_str) {
                map.insert(
                    key.to_owned(),
                    put.get("value").cloned().unwrap_or(Value::Null),
                );
            }
        } else if let Some(key) = event.get("deleted").and_then(Value::as_str) {
            map.remove(key);
        }
    }
}

/// `list`: state `{"items": [...]}`; command `{"append": v}` (any JSON value) adds `v` at the end.
/// Every command is visible in the state, in order: the chaos suite checks histories with it.
#[derive(Debug, Default)]
pub struct List;

impl Behaviour for List {
    fn kind(&self) -> &'static str {
        "list"
    }

    fn initial(&self) -> Value {
        json!({"items": []})
    }

    fn decide(&self, _state: &Value, command: &Value) -> Result<Vec<Value>, String> {
        match command.get("append") {
            Some(v) => Ok(vec![json!({"appended": v})]),
            None => Err(r#"unknown list command: expected {"append": v}"#.to_owned()),
        }
    }

    fn apply(&self, state: &mut Value, event: &Value) {
        let Some(v) = event.get("appended") else {
            return;
        };
        if !state["items"].is_array() {
            state["items"] = json!([]);
        }
        if let Some(items) = state["items"].as_array_mut() {
            items.push(v.clone());
        }
    }
}

/// A kind of actor: in-process, or the app container's.
#[derive(Clone)]
pub enum Kind {
    /// A [`Behaviour`] in this process.
    Local(Arc<dyn Behaviour>),
    /// A kind the app container hosts.
    App(Arc<AppKind>),
}

/// A kind of the app container.
#[derive(Debug)]
pub struct AppKind {
    /// What the app said about it.
    pub info: KindInfo,
    /// The app.
    pub app: Arc<AppClient>,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Kind {
    /// The kind's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Local(b) => b.kind(),
            Self::App(a) => &a.info.name,
        }
    }

    /// State of an actor with no events.
    #[must_use]
    pub fn initial(&self) -> Value {
        match self {
            Self::Local(b) => b.initial(),
            Self::App(a) => a.info.initial.clone(),
        }
    }

    /// A record carries the whole state every this many records.
    #[must_use]
    pub fn snapshot_every(&self) -> u64 {
        match self {
            Self::Local(_) => DEFAULT_SNAPSHOT_EVERY,
            Self::App(a) => a
                .info
                .snapshot_every
                .unwrap_or(DEFAULT_SNAPSHOT_EVERY)
                .max(1),
        }
    }
}

/// The kinds a node hosts.
#[derive(Clone)]
pub struct Registry {
    kinds: HashMap<String, Kind>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// The built-in kinds.
    #[must_use]
    pub fn builtin() -> Self {
        let mut r = Self {
            kinds: HashMap::new(),
        };
        r.register(Arc::new(Counter));
        r.register(Arc::new(Document));
        r.register(Arc::new(List));
        r
    }

    /// Adds an in-process kind.
    pub fn register(&mut self, behaviour: Arc<dyn Behaviour>) {
        self.kinds
            .insert(behaviour.kind().to_owned(), Kind::Local(behaviour));
    }

    /// Adds the app container's kinds; one named like a built-in replaces it.
    pub fn register_app(&mut self, app: &Arc<AppClient>, kinds: Vec<KindInfo>) {
        for info in kinds {
            let name = info.name.clone();
            let kind = AppKind {
                info,
                app: app.clone(),
            };
            self.kinds.insert(name, Kind::App(Arc::new(kind)));
        }
    }

    /// The app container, when a kind is the app's.
    #[must_use]
    pub fn app(&self) -> Option<Arc<AppClient>> {
        self.kinds.values().find_map(|k| match k {
            Kind::App(a) => Some(a.app.clone()),
            Kind::Local(_) => None,
        })
    }

    /// A kind by name.
    #[must_use]
    pub fn get(&self, kind: &str) -> Option<&Kind> {
        self.kinds.get(kind)
    }

    /// The kinds hosted, sorted.
    #[must_use]
    pub fn kinds(&self) -> Vec<&str> {
        let mut k: Vec<_> = self.kinds.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(b: &dyn Behaviour, commands: &[Value]) -> Value {
        let mut state = b.initial();
        for c in commands {
            for e in b.decide(&state, c).expect("accepted") {
                b.apply(&mut state, &e);
            }
        }
        state
    }

    #[test]
    fn counter_folds() {
        let s = run(
            &Counter,
            &[
                json!({"add": 2}),
                json!({"add": 5}),
                json!({"set": 1}),
                json!({"add": -3}),
            ],
        );
        assert_eq!(s, json!({"value": -2}));
        assert!(
            Counter
                .decide(&json!({"value": i64::MAX}), &json!({"add": 1}))
                .is_err()
        );
        assert!(
            Counter
                .decide(&json!({"value": 0}), &json!({"mul": 2}))
                .is_err()
        );
    }

    #[test]
    fn list_appends_in_order() {
        let s = run(
            &List,
            &[
                json!({"append": "a"}),
                json!({"append": 2}),
                json!({"append": "a"}),
            ],
        );
        assert_eq!(s, json!({"items": ["a", 2, "a"]}));
        assert!(
            List.decide(&json!({"items": []}), &json!({"push": 1}))
                .is_err()
        );
    }

    #[test]
    fn document_folds() {
        let s = run(
            &Document,
            &[
                json!({"put": {"key": "a", "value": 1}}),
                json!({"put": {"key": "b", "value": [1, 2]}}),
                json!({"delete": "a"}),
            ],
        );
        assert_eq!(s, json!({"b": [1, 2]}));
        assert!(
            Document
                .decide(&json!({}), &json!({"put": {"value": 1}}))
                .is_err()
        );
    }
}
