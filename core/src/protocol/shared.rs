//! [`SharedJson`]: an actor's state held once and shared by every reply and record that carries it, so
//! a read of a large actor costs a reference count on the shard's worker, not a copy of its state.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::ops::Deref;
use std::sync::Arc;

/// A JSON value shared by reference count; on the wire exactly the value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedJson(Arc<Value>);

impl SharedJson {
    /// The value to change: copied first only while a reply or record still holds it.
    pub fn make_mut(&mut self) -> &mut Value {
        Arc::make_mut(&mut self.0)
    }

    /// Whether both are the one shared value (not only equal values).
    #[must_use]
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The value, copied only if it is still shared.
    #[must_use]
    pub fn into_value(self) -> Value {
        Arc::unwrap_or_clone(self.0)
    }
}

impl Deref for SharedJson {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl From<Value> for SharedJson {
    fn from(v: Value) -> Self {
        Self(Arc::new(v))
    }
}

impl PartialEq<Value> for SharedJson {
    fn eq(&self, other: &Value) -> bool {
        *self.0 == *other
    }
}

impl Serialize for SharedJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::from)
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
}
