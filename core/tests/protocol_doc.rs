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
        NodeEvent, PlanMessage, Progress, Reply, Request, Transfer, TransferAck, decode,
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
            || decode::<NodeEvent>(b).is_ok();
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
