//! Property tests of the wire protocol: round trips, and no input makes the decoder panic.

use aether_core::Error;
use aether_core::crd::MovePhase;
use aether_core::protocol::{
    ActorRef, ActorReply, ActorSnapshot, Bytes, ErrorCode, ErrorReply, NodeEvent, NodeEventKind,
    Op, PlanMessage, Progress, Reply, Request, TRANSFER_MAGIC, Transfer, TransferAck, VERSION,
    decode, decode_id, decode_transfer, encode, encode_id, encode_transfer,
};
use proptest::prelude::*;

fn actor() -> impl Strategy<Value = ActorRef> {
    ("[a-z0-9-]{1,32}", any::<String>()).prop_map(|(kind, id)| ActorRef { kind, id })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (
        prop::sample::select(vec![
            ErrorCode::Malformed,
            ErrorCode::Redirect,
            ErrorCode::Unavailable,
            ErrorCode::StaleEpoch,
            ErrorCode::Rejected,
        ]),
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(code, message, owner, epoch, retry_after_ms)| ErrorReply {
            code,
            message,
            owner,
            epoch,
            retry_after_ms,
        })
}

proptest! {
    #[test]
    fn requests_round_trip(actor in actor(), cmd in proptest::option::of(json_value()), id in proptest::option::of(any::<String>()), hops in any::<u8>(), epoch in any::<u64>()) {
        let op = match cmd { Some(command) => Op::Command { command }, None => Op::Read };
        let msg = Request { v: VERSION, id, actor, op, hops, epoch, delivered: None, timeout_ms: None, deadline: None, trace: None };
        let back: Request = decode(&encode(&msg).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn replies_round_trip(state in json_value(), version in any::<u64>(), err in error_reply(), ok in any::<bool>()) {
        let msg = if ok {
            Reply::ok(ActorReply { version, state: state.into(), node: "app-0".into(), reply: None, timers: Vec::new() })
        } else {
            Reply::error(err)
        };
        let back: Reply = decode(&encode(&msg).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn transfers_round_trip(actors in prop::collection::vec((actor(), any::<u64>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..64)), 0..8), epoch in any::<u64>(), attempt in any::<u64>(), shard in any::<u32>(), chunk in any::<u32>(), last in any::<bool>(), copy in any::<bool>(), err in proptest::option::of(error_reply())) {
        let msg = Transfer {
            v: VERSION, epoch, attempt, shard, from: "app-1".into(), chunk, last, commit: !last,
            actors: actors.into_iter().map(|(actor, version, seq, state)| ActorSnapshot { actor, version, seq, state: Bytes(state) }).collect(),
            copy,
        };
        let back: Transfer = decode(&encode(&msg).expect("encodes")).expect("decodes");
        prop_assert_eq!(&back, &msg);
        // The binary form carries the same message, and the one decoder reads both forms.
        let binary = encode_transfer(&msg).expect("encodes");
        prop_assert_eq!(binary[0], TRANSFER_MAGIC);
        prop_assert_eq!(&decode_transfer(&binary).expect("decodes"), &msg);
        prop_assert_eq!(&decode_transfer(&encode(&msg).expect("encodes")).expect("decodes"), &msg);
        let ack = TransferAck { v: VERSION, epoch, shard, chunk, error: err };
        let back: TransferAck = decode(&encode(&ack).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, ack);
    }

    #[test]
    fn reports_round_trip(epoch in any::<u64>(), shard in any::<u32>(), actors in any::<u32>(), duration_ms in any::<u64>(), bytes in any::<u64>(), error in proptest::option::of(any::<String>()), from in proptest::option::of(any::<String>()), to in proptest::option::of(any::<String>())) {
        let msg = Progress { v: VERSION, epoch, shard, node: "app-2".into(), phase: MovePhase::Failed, actors, duration_ms, bytes, error, from, to };
        let back: Progress = decode(&encode(&msg).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, msg);
        let ev = NodeEvent { v: VERSION, node: "app-2".into(), event: NodeEventKind::Leaving };
        let back: NodeEvent = decode(&encode(&ev).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, ev);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Request>(&bytes);
        let _ = decode::<Reply>(&bytes);
        let _ = decode::<Transfer>(&bytes);
        let _ = decode_transfer(&bytes);
        let mut binary = vec![TRANSFER_MAGIC];
        binary.extend_from_slice(&bytes);
        let _ = decode_transfer(&binary);
        let _ = decode::<TransferAck>(&bytes);
        let _ = decode::<Progress>(&bytes);
        let _ = decode::<PlanMessage>(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(actor in actor(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = encode(&Request::new(actor, Op::Read, None)).expect("encodes");
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        match decode::<Request>(&bytes) {
            Ok(_) | Err(Error::Malformed(_) | Error::UnsupportedVersion { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }

    #[test]
    fn mutated_binary_transfers_never_panic(actors in prop::collection::vec((actor(), prop::collection::vec(any::<u8>(), 0..32)), 0..4), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let msg = Transfer {
            v: VERSION, epoch: 7, attempt: 9, shard: 3, from: "app-1".into(), chunk: 0, last: true, commit: false,
            actors: actors.into_iter().map(|(actor, state)| ActorSnapshot { actor, version: 1, seq: 2, state: Bytes(state) }).collect(),
            copy: false,
        };
        let mut bytes = encode_transfer(&msg).expect("encodes");
        for (i, b) in flips {
            let at = i.index(bytes.len() - 1) + 1;
            bytes[at] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        match decode_transfer(&bytes) {
            Ok(_) | Err(Error::Malformed(_) | Error::UnsupportedVersion { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind {other:?}"),
        }
    }

    #[test]
    fn actor_ids_survive_subject_encoding(id in any::<String>()) {
        let token = encode_id(&id);
        prop_assert!(!token.is_empty());
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='));
        prop_assert_eq!(decode_id(&token).expect("decodes"), id);
    }
}

#[test]
fn another_version_is_a_typed_error() {
    let future = br#"{"v":2,"whatever":"shape"}"#;
    assert_eq!(
        decode::<Request>(future).expect_err("refused"),
        Error::UnsupportedVersion {
            got: 2,
            supported: VERSION
        }
    );
    let same_shape_wrong_version = br#"{"v":9,"actor":{"kind":"counter","id":"a"},"op":"read"}"#;
    assert!(matches!(
        decode::<Request>(same_shape_wrong_version),
        Err(Error::UnsupportedVersion { got: 9, .. })
    ));
    assert!(matches!(
        decode::<Request>(b"not json"),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        decode_transfer(&[TRANSFER_MAGIC, 2, 0]),
        Err(Error::UnsupportedVersion { got: 2, .. })
    ));
    let reply = ErrorReply::from_decode(&Error::UnsupportedVersion {
        got: 9,
        supported: 1,
    });
    assert_eq!(reply.code, ErrorCode::UnsupportedVersion);
}
