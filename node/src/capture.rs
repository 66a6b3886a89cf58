//! An actor's state inside a migration transfer: `{state, recent, base}` as MessagePack, a map with
//! field names (so a field can be added later). MessagePack copies strings as they are where JSON
//! escapes and unescapes them byte by byte: writing and reading a 1 KB document costs about half.
//!
//! Nodes of an earlier version wrote this as JSON. A state whose first byte is `{` is read as JSON
//! (a MessagePack map starts with 0x80-0x8f, 0xde or 0xdf), so a mixed-version cluster still moves
//! actors with their state.

use crate::error::{Error, Result};
use crate::store::{Inbound, Outgoing, Snapshot};
use aether_core::protocol::SharedJson;
use aether_core::timers::Timer;
use serde_json::Value;

/// What is written, borrowed from the live actor (no copy).
#[derive(serde::Serialize)]
struct CapturedRef<'a> {
    /// The state, when the actor holds it parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a Value>,
    /// The state's JSON text, when the actor holds it as text: copied as it is, and kept as
    /// text by the destination (a node of an earlier version, which reads only `state`, replays
    /// the actor's log instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    state_json: Option<&'a str>,
    recent: &'a [String],
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    recent_at: &'a [u64],
    /// Sequence of the actor's last snapshot record.
    base: u64,
    /// Undelivered sends.
    #[serde(skip_serializing_if = "<[Outgoing]>::is_empty")]
    outbox: &'a [Outgoing],
    /// Applied sends not released yet.
    #[serde(skip_serializing_if = "<[Inbound]>::is_empty")]
    inbox: &'a [Inbound],
    /// Timers.
    #[serde(skip_serializing_if = "<[Timer]>::is_empty")]
    timers: &'a [Timer],
}

/// What is read back.
#[derive(serde::Deserialize)]
struct Captured {
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    state_json: Option<String>,
    #[serde(default)]
    recent: Vec<String>,
    #[serde(default)]
    recent_at: Vec<u64>,
    #[serde(default)]
    base: u64,
    #[serde(default)]
    outbox: Vec<Outgoing>,
    #[serde(default)]
    inbox: Vec<Inbound>,
    #[serde(default)]
    timers: Vec<Timer>,
}

/// Appends an actor's captured state to `out`.
///
/// # Errors
/// When the state cannot be written (a map key that is not a string cannot come from JSON, so in
/// practice never); `out` may then hold part of it, and the caller drops the actor's entry.
pub fn write(out: &mut Vec<u8>, snapshot: &Snapshot, base: u64) -> Result<()> {
    let text = snapshot.state.text();
    let captured = CapturedRef {
        state: text.is_none().then(|| &*snapshot.state),
        state_json: text,
        recent: &snapshot.recent,
        recent_at: &snapshot.recent_at,
        base,
        outbox: &snapshot.outbox,
        inbox: &snapshot.inbox,
        timers: &snapshot.timers,
    };
    rmp_serde::encode::write_named(out, &captured)
        .map_err(|e| Error::Corrupt(format!("actor state not capturable: {e}")))
}

/// Reads a captured state (MessagePack, or JSON from an older node): the snapshot and its base.
///
/// # Errors
/// [`Error::Corrupt`] when the bytes are neither.
pub fn read(bytes: &[u8]) -> Result<(Snapshot, u64)> {
    let captured: Captured = if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("captured state (JSON): {e}")))?
    } else {
        rmp_serde::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("captured state (MessagePack): {e}")))?
    };
    let Captured {
        state,
        state_json,
        recent,
        recent_at,
        base,
        outbox,
        inbox,
        timers,
    } = captured;
    // A `null` state reads as no `state` field.
    let state = match state_json {
        Some(text) => SharedJson::from_text(text)
            .map_err(|e| Error::Corrupt(format!("captured state's JSON: {e}")))?,
        None => state.unwrap_or(Value::Null).into(),
    };
    Ok((
        Snapshot {
            state,
            recent,
            recent_at,
            outbox,
            inbox,
            timers,
        },
        base,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,12}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn every_state_reads_back_as_written(
            state in value(),
            recent in prop::collection::vec(".{0,20}", 0..5),
            base in any::<u64>(),
            as_text in any::<bool>(),
        ) {
            let mut snapshot = Snapshot { recent, ..Snapshot::initial(state) };
            if as_text {
                snapshot.state.compact();
            }
            let mut out = vec![0xAE];
            write(&mut out, &snapshot, base).expect("writable");
            prop_assert_ne!(out[1], b'{');
            prop_assert_eq!(read(&out[1..]).expect("readable"), (snapshot, base));
        }

        #[test]
        fn random_bytes_are_an_error_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = read(&bytes);
        }
    }

    #[test]
    fn a_json_state_from_an_older_node_is_read() {
        let old = br#"{"state":{"data":"v"},"recent":["c-1"],"base":7}"#;
        let (snapshot, base) = read(old).expect("json");
        assert_eq!(snapshot.state, json!({"data": "v"}));
        assert_eq!(snapshot.recent, vec!["c-1".to_owned()]);
        assert_eq!(base, 7);
    }

    #[test]
    fn a_string_is_stored_as_is_not_escaped() {
        let snapshot = Snapshot {
            state: json!({"data": "a\"b\\c\n"}).into(),
            recent: vec!["c-1".into()],
            recent_at: vec![7],
            outbox: vec![Outgoing {
                id: "$send-1".into(),
                actor: aether_core::protocol::ActorRef::new("account", "b"),
                command: json!({"deposit": 1}),
                delivered: true,
                trace: None,
            }],
            inbox: vec![crate::store::Inbound {
                id: "$send-2".into(),
                reply: Some(json!({"ok": true})),
            }],
            timers: vec![aether_core::timers::Timer {
                name: "expire".into(),
                due: 1_800_000_000_000,
                every: Some(60_000),
                command: json!({"expire": true}),
                catch_up: 2,
            }],
        };
        let mut out = Vec::new();
        write(&mut out, &snapshot, 0).expect("writable");
        assert_eq!(
            read(&out).expect("reads back"),
            (snapshot.clone(), 0),
            "the outbox, the inbox and the timers move too"
        );
        let raw = b"a\"b\\c\n";
        assert!(out.windows(raw.len()).any(|w| w == raw), "{out:?}");
        assert!(matches!(
            read(&out[..out.len() - 1]),
            Err(Error::Corrupt(_))
        ));
    }
}
