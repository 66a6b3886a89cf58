//! Actor behaviours: how a command becomes events and how events fold into state. Pure functions; the
//! host (`host.rs`) persists the events in JetStream before it applies them.
//!
//! Built-in kinds: `counter` (an integer) and `doc` (a JSON key-value document), so the sidecar is
//! useful and testable on its own. Another kind is one more [`Behaviour`] in the [`Registry`].

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

/// The kinds a node hosts.
#[derive(Clone)]
pub struct Registry {
    kinds: HashMap<&'static str, Arc<dyn Behaviour>>,
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
        r
    }

    /// Adds a kind.
    pub fn register(&mut self, behaviour: Arc<dyn Behaviour>) {
        self.kinds.insert(behaviour.kind(), behaviour);
    }

    /// The behaviour of a kind.
    #[must_use]
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Behaviour>> {
        self.kinds.get(kind)
    }

    /// The kinds hosted, sorted.
    #[must_use]
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self.kinds.keys().copied().collect();
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
