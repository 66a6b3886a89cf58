//! The test vectors in docs/PROTOCOL.md are what the code computes, so other languages can trust them.

use aether_core::hash::{actor_hash, shard_of};
use aether_core::protocol::encode_id;

#[test]
fn documented_vectors_match_the_code() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let mut checked = 0;
    for line in doc.lines().filter(|l| l.starts_with("| \"")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 5, "row {line}");
        let id = match cells[0].split_once(" × ") {
            Some((rep, count)) => {
                let rep: String = serde_json::from_str(rep).expect("quoted repeat unit");
                rep.repeat(count.parse().expect("repeat count"))
            }
            None => serde_json::from_str(cells[0]).expect("quoted id"),
        };
        let hash = u64::from_str_radix(cells[1].trim_matches('`'), 16).expect("hex hash");
        assert_eq!(actor_hash(&id), hash, "hash of {id:?}");
        assert_eq!(
            shard_of(&id, 1024).to_string(),
            cells[2],
            "shard of {id:?} in 1024"
        );
        assert_eq!(
            shard_of(&id, 65536).to_string(),
            cells[3],
            "shard of {id:?} in 65536"
        );
        let token = encode_id(&id);
        match cells[4].strip_suffix('…') {
            Some(prefix) => assert!(token.starts_with(prefix), "token of {id:?}"),
            None => assert_eq!(token, cells[4], "token of {id:?}"),
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} vectors found in docs/PROTOCOL.md"
    );
}

#[test]
fn documented_messages_decode() {
    use aether_core::protocol::{
        Held, NodeEvent, PlanMessage, Progress, Reply, Request, Transfer, TransferAck, decode,
    };
    let doc = include_str!("../../docs/PROTOCOL.md");
    let mut checked = 0;
    for line in doc.lines().filter(|l| l.starts_with("{\"v\":1")) {
        let b = line.as_bytes();
        let fits = decode::<Request>(b).is_ok()
            || decode::<Reply>(b).is_ok()
            || decode::<PlanMessage>(b).is_ok()
            || decode::<Transfer>(b).is_ok()
            || decode::<TransferAck>(b).is_ok()
            || decode::<Progress>(b).is_ok()
            || decode::<NodeEvent>(b).is_ok()
            || decode::<Held>(b).is_ok();
        assert!(fits, "docs/PROTOCOL.md example is no message: {line}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} examples found");
}

#[test]
fn documented_binary_transfer_matches_the_encoder() {
    use aether_core::protocol::{Transfer, decode, decode_transfer, encode_transfer};
    let doc = include_str!("../../docs/PROTOCOL.md");
    let start = doc
        .find("```hex\n")
        .expect("docs/PROTOCOL.md has a hex example")
        + 7;
    let len = doc[start..].find("```").expect("hex block ends");
    let hex: String = doc[start..start + len].split_whitespace().collect();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let json = doc
        .lines()
        .find(|l| l.starts_with("{\"v\":1,\"epoch\":4,\"shard\":17,\"from\""))
        .expect("the JSON transfer example");
    let transfer: Transfer = decode(json.as_bytes()).expect("JSON example decodes");
    assert_eq!(encode_transfer(&transfer).expect("encodes"), bytes);
    assert_eq!(decode_transfer(&bytes).expect("binary decodes"), transfer);
}

/// The app protocol's examples are what the code reads and writes.
#[test]
fn documented_app_protocol_examples_match_the_code() {
    use aether_core::protocol::ActorRef;
    use aether_core::protocol::app::{
        ApplyAnswer, ApplyCall, DecideAnswer, DecideCall, Decision, KindsAnswer, send_id,
    };
    let line = doc_line;
    let kinds: KindsAnswer = serde_json::from_value(line("{\"kinds\":")).expect("kinds");
    assert_eq!(kinds.check().expect("valid")[0].snapshot_every, Some(8));

    let call = line("{\"kind\":\"account\",\"id\":\"alice\",\"version\"");
    let written = DecideCall {
        kind: call["kind"].as_str().expect("kind"),
        id: call["id"].as_str().expect("id"),
        version: call["version"].as_u64().expect("version"),
        state: &call["state"],
        command: &call["command"],
        command_id: call["commandId"].as_str(),
    };
    assert_eq!(serde_json::to_value(&written).expect("encodes"), call);

    let accept: DecideAnswer = serde_json::from_value(line("{\"events\":")).expect("answer");
    assert!(matches!(accept.check(), Ok(Decision::Accept { send, .. }) if send.len() == 1));
    let reject: DecideAnswer = serde_json::from_value(line("{\"rejected\":")).expect("answer");
    assert!(matches!(reject.check(), Ok(Decision::Reject(_))));

    let apply = line("{\"kind\":\"account\",\"id\":\"alice\",\"state\"");
    let events = apply["events"].as_array().expect("events").clone();
    let written = ApplyCall {
        kind: "account",
        id: "alice",
        state: &apply["state"],
        events: &events,
    };
    assert_eq!(serde_json::to_value(&written).expect("encodes"), apply);
    let answer: ApplyAnswer =
        serde_json::from_value(serde_json::json!({"state": {"balance": 70}})).expect("answer");
    assert!(answer.check().is_ok());

    // The reply example: the id of alice's record 2's first send, and an outcome as in "Reply".
    let reply = line("{\"$reply\":");
    assert_eq!(
        reply["$reply"]["id"],
        send_id(&ActorRef::new("account", "alice"), 2, 0)
    );
    let outcome = serde_json::json!({"v": 1, "ok": reply["$reply"]["outcome"]["ok"]});
    assert!(serde_json::from_value::<aether_core::protocol::Reply>(outcome).is_ok());
}

/// The Timers section's examples: the decide answer that sets and cancels timers is what the code
/// reads, and the firing's decide call (its `$timer` command and command id) what it writes.
#[test]
fn documented_timer_examples_match_the_code() {
    use aether_core::protocol::ActorRef;
    use aether_core::protocol::app::{DecideAnswer, Decision};
    use aether_core::timers::{self, Timer, firing_command, time_ms, timer_id};
    use serde_json::Value;
    let line = doc_line;
    let answer: DecideAnswer =
        serde_json::from_value(line("{\"events\":[{\"reserved\"")).expect("answer");
    let Ok(Decision::Accept { timers, cancel, .. }) = answer.check() else {
        panic!("the example is accepted");
    };
    let (specs, cancel) = timers::parse(timers, cancel).expect("valid timers");
    let now = time_ms(&Value::from("2026-12-05T00:00:00Z")).expect("a time");
    let (set, cancel) = timers::changes(&[], None, &specs, cancel, now).expect("within the limits");
    assert_eq!(cancel, ["reminder"]);
    assert_eq!((set[0].due, set[0].every), (now + 900_000, None));
    assert_eq!(set[1].every, Some(86_400_000));
    assert_eq!(set[1].catch_up, 3);

    let call = line("{\"kind\":\"order\"");
    let fired = &call["command"]["$timer"];
    let due = fired["due"].as_u64().expect("due");
    let timer = Timer {
        name: "expire".into(),
        due,
        every: None,
        command: fired["command"].clone(),
        catch_up: 0,
    };
    let firing = timer.fire(due).expect("due");
    assert_eq!(call["command"], firing_command(&timer, &firing));
    assert_eq!(
        call["commandId"],
        timer_id(&ActorRef::new("order", "o-17"), "expire", due)
    );
}

/// The JSON of the first line of docs/PROTOCOL.md that starts with `prefix`.
fn doc_line(prefix: &str) -> serde_json::Value {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let l = doc
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no line starting {prefix}"));
    serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))
}
