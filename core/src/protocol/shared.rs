//! [`SharedJson`]: an actor's state held once and shared by every reply and record that carries it, so
//! a read of a large actor costs a reference count on the shard's worker, not a copy of its state.
//!
//! A state is kept as its JSON text ([`SharedJson::compact`]) while nothing needs it parsed: a
//! counter's `{"value":1}` then takes its 11 bytes, where a parsed `serde_json` object allocates a
//! whole B-tree node (about 630 bytes) for its one key. It is parsed on first use (a decide, an
//! apply) and written as it is into replies and records.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// A JSON value shared by reference count; on the wire exactly the value.
#[derive(Clone, Debug, Default)]
pub struct SharedJson(Arc<Inner>);

/// The text, the parsed value, or both (text parsed by a read of the value).
#[derive(Clone, Debug, Default)]
struct Inner {
    text: Option<Box<RawValue>>,
    value: OnceLock<Value>,
}

impl Inner {
    fn parsed(v: Value) -> Self {
        Self {
            text: None,
            value: OnceLock::from(v),
        }
    }

    fn value(&self) -> &Value {
        self.value.get_or_init(|| parse(self.text.as_deref()))
    }
}

/// The value of a text: every text here was written from a value by `serde_json` or checked by
/// it as JSON, so it parses; a number out of `f64`'s range (valid JSON, never written by a node)
/// reads as `null`.
fn parse(text: Option<&RawValue>) -> Value {
    text.and_then(|t| serde_json::from_str(t.get()).ok())
        .unwrap_or(Value::Null)
}

impl SharedJson {
    /// A state from its JSON text, checked as JSON and not parsed.
    ///
    /// # Errors
    /// When `text` is not one JSON value.
    pub fn from_text(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self::of_text)
    }

    fn of_text(raw: Box<RawValue>) -> Self {
        Self(Arc::new(Inner {
            text: Some(raw),
            value: OnceLock::new(),
        }))
    }

    /// The value to change: copied first only while a reply or record still holds it; the text,
    /// if any, is dropped (it no longer says the value).
    pub fn make_mut(&mut self) -> &mut Value {
        let inner = Arc::make_mut(&mut self.0);
        let v = match inner.value.take() {
            Some(v) => v,
            None => parse(inner.text.as_deref()),
        };
        inner.text = None;
        inner.value = OnceLock::from(v);
        match inner.value.get_mut() {
            Some(v) => v,
            None => unreachable!("set just above"),
        }
    }

    /// Keeps only the JSON text, written now if there is none: what a state no command is
    /// changing takes in memory. Others holding the value keep theirs.
    pub fn compact(&mut self) {
        let text = match (&self.0.text, self.0.value.get()) {
            (Some(_), None) => return,
            (Some(t), Some(_)) => t.clone(),
            (None, v) => match serde_json::value::to_raw_value(v.unwrap_or(&Value::Null)) {
                Ok(t) => t,
                // A value always writes as JSON; kept parsed if it ever did not.
                Err(_) => return,
            },
        };
        *self = Self::of_text(text);
    }

    /// The JSON text, when it is kept as text.
    #[must_use]
    pub fn text(&self) -> Option<&str> {
        self.0.text.as_deref().map(RawValue::get)
    }

    /// Whether both are the one shared value (not only equal values).
    #[must_use]
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The value, copied only if it is still shared.
    #[must_use]
    pub fn into_value(self) -> Value {
        match Arc::try_unwrap(self.0) {
            Ok(inner) => match inner.value.into_inner() {
                Some(v) => v,
                None => parse(inner.text.as_deref()),
            },
            Err(shared) => shared.value().clone(),
        }
    }
}

impl Deref for SharedJson {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.0.value()
    }
}

impl From<Value> for SharedJson {
    fn from(v: Value) -> Self {
        Self(Arc::new(Inner::parsed(v)))
    }
}

impl PartialEq for SharedJson {
    fn eq(&self, other: &Self) -> bool {
        match (self.text(), other.text()) {
            (Some(a), Some(b)) if a == b => true,
            _ => **self == **other,
        }
    }
}

impl PartialEq<Value> for SharedJson {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl Serialize for SharedJson {
    /// The text as it is to a JSON writer (`serde_json`'s writer and value understand it); the
    /// value to any other format (MessagePack).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0.text {
            Some(t) if s.is_human_readable() => t.serialize(s),
            _ => self.0.value().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SharedJson {
    /// Parsed, from any format and inside any container (see [`SharedJson::deserialize_text`]).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::from)
    }
}

impl SharedJson {
    /// Kept as its text when read by `serde_json` (not parsed until used), parsed from any other
    /// format: for `#[serde(deserialize_with)]` on a field read straight by `serde_json` or from
    /// a `Value`, never inside an untagged or flattened container (which buffers the input and
    /// cannot hand over its text).
    ///
    /// # Errors
    /// When the input is not one JSON value.
    pub fn deserialize_text<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Box::<RawValue>::deserialize(d).map(Self::of_text)
        } else {
            Value::deserialize(d).map(Self::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_shared_value_is_the_value_on_the_wire_and_copied_only_when_changed_while_shared() {
        let v = json!({"a": [1, 2, {"b": "c"}]});
        let s = SharedJson::from(v.clone());
        assert_eq!(
            serde_json::to_string(&s).ok(),
            serde_json::to_string(&v).ok()
        );
        let back: SharedJson = serde_json::from_value(v.clone()).expect("decodes");
        assert_eq!(back, v);
        let mut held = s.clone();
        held.make_mut()["a"] = json!(0);
        assert_eq!(s, v, "the other holder keeps the old value");
        assert_eq!(held["a"], json!(0));
        let alone = SharedJson::from(json!(1));
        let at = Arc::as_ptr(&alone.0);
        let mut alone = alone;
        alone.make_mut();
        assert_eq!(Arc::as_ptr(&alone.0), at, "not copied when held once");
    }

    #[test]
    fn a_compact_state_is_its_text_until_used_and_reads_and_writes_as_the_value() {
        let v = json!({"value": 1, "doc": "x\"y", "n": [1.5, null]});
        let mut s = SharedJson::from(v.clone());
        let reply = s.clone();
        s.compact();
        assert!(s.text().is_some() && s.0.value.get().is_none());
        assert_eq!(reply, v, "a reply holding the parsed value keeps it");
        // Written as its text to JSON, as the value to MessagePack, both read back as the value.
        let json = serde_json::to_vec(&s).expect("json");
        assert_eq!(serde_json::from_slice::<Value>(&json).ok(), Some(v.clone()));
        let mp = rmp_serde::to_vec(&s).expect("msgpack");
        assert_eq!(rmp_serde::from_slice::<Value>(&mp).ok(), Some(v.clone()));
        #[derive(Deserialize)]
        struct Held {
            #[serde(deserialize_with = "SharedJson::deserialize_text")]
            state: SharedJson,
        }
        let held = format!(r#"{{"state":{}}}"#, String::from_utf8_lossy(&json));
        let back = serde_json::from_str::<Held>(&held).expect("reads").state;
        assert!(back.text().is_some(), "read from JSON, kept as text");
        let parsed: SharedJson = serde_json::from_slice(&json).expect("reads");
        assert!(
            parsed.text().is_none(),
            "read by its own Deserialize: parsed"
        );
        assert_eq!(parsed, v);
        assert_eq!(back, s);
        assert_eq!(serde_json::to_value(&back).ok(), Some(v.clone()));
        // Used: parsed once and kept beside the text; changed: the text dropped.
        assert_eq!(s["value"], json!(1));
        assert!(s.0.value.get().is_some());
        let mut changed = s.clone();
        changed.make_mut()["value"] = json!(2);
        assert!(changed.text().is_none());
        assert_eq!(s["value"], json!(1), "the shared one unchanged");
        changed.compact();
        assert_eq!(
            changed.text(),
            Some(r#"{"doc":"x\"y","n":[1.5,null],"value":2}"#)
        );
        assert_eq!(changed.clone().into_value()["value"], json!(2));
        assert!(SharedJson::from_text("{".into()).is_err());
        assert_eq!(
            SharedJson::from_text(" [1] ".into())
                .map(SharedJson::into_value)
                .ok(),
            Some(json!([1]))
        );
    }
}
