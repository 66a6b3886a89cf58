//! The shard map: which member bucket owns each shard. It travels in every plan (NATS KV) and in
//! `ShardPlan.status`, so it is packed: two bytes per shard, little-endian, base64 in JSON. 65,536 shards
//! take 175 KiB of JSON, well under the API server's object limit and NATS's default 1 MiB payload.
//! Lookups are one array index: O(1) and allocation-free on the routing hot path.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// The bucket value of a shard that has no owner (no members yet).
pub const UNASSIGNED: u16 = u16::MAX;

/// A list of u16 that serialises as base64 of its little-endian bytes.
#[derive(Clone, PartialEq, Eq, Default, Debug, Hash)]
pub struct PackedU16(pub Vec<u16>);

impl PackedU16 {
    /// Encodes into the base64 text used on the wire.
    #[must_use]
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(self.0.len() * 2);
        for v in &self.0 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        STANDARD.encode(bytes)
    }

    /// Decodes the base64 text; `Err` says what is wrong with it.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| format!("not base64: {e}"))?;
        if bytes.len() % 2 != 0 {
            return Err(format!("odd byte length {}", bytes.len()));
        }
        Ok(Self(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ))
    }
}

impl Serialize for PackedU16 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PackedU16 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(d)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for PackedU16 {
    fn schema_name() -> Cow<'static, str> {
        "PackedU16".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "base64 of little-endian u16 values"
        })
    }
}

/// Shard -> bucket table of one plan. Index = shard number.
#[derive(Clone, PartialEq, Eq, Default, Debug, Serialize, Deserialize, JsonSchema, Hash)]
#[serde(transparent)]
pub struct ShardMap(pub PackedU16);

impl ShardMap {
    /// A map of `shards` shards, all unassigned.
    #[must_use]
    pub fn unassigned(shards: u32) -> Self {
        Self(PackedU16(vec![UNASSIGNED; shards as usize]))
    }

    /// Number of shards.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.0.len()
    }

    /// True when the map has no shards.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.0.is_empty()
    }

    /// The owning bucket of `shard`, or `None` when unassigned or out of range.
    #[inline]
    #[must_use]
    pub fn bucket(&self, shard: u32) -> Option<u16> {
        match self.0.0.get(shard as usize) {
            Some(&b) if b != UNASSIGNED => Some(b),
            _ => None,
        }
    }

    /// Raw buckets, one per shard.
    #[must_use]
    pub fn buckets(&self) -> &[u16] {
        &self.0.0
    }

    /// Sets the bucket of a shard (no-op when out of range).
    pub fn set(&mut self, shard: u32, bucket: u16) {
        if let Some(slot) = self.0.0.get_mut(shard as usize) {
            *slot = bucket;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_errors() {
        let p = PackedU16(vec![0, 1, 513, UNASSIGNED]);
        assert_eq!(PackedU16::from_base64(&p.to_base64()), Ok(p));
        assert!(PackedU16::from_base64("!!").is_err());
        assert!(PackedU16::from_base64("AA==").is_err(), "odd length");
    }

    #[test]
    fn largest_map_fits_in_a_nats_message() {
        let m = ShardMap(PackedU16(vec![7; crate::hash::MAX_SHARDS as usize]));
        let json = serde_json::to_string(&m).expect("serialises");
        assert!(json.len() < 200 * 1024, "{} bytes", json.len());
    }
}
