use super::*;
use aether_core::protocol::{TransferWriter, decode_transfer};

fn actor(id: &str, seq: u64) -> (ActorRef, Box<Actor>) {
    let kind = Registry::builtin()
        .get("counter")
        .cloned()
        .expect("built-in counter");
    let a = Actor {
        kind,
        marker: None,
        snapshot: Snapshot::initial(serde_json::json!({ "value": seq })),
        version: seq,
        seq,
        base: 0,
        last_used: Instant::now(),
        forgotten: None,
    };
    (ActorRef::new("counter", id), Box::new(a))
}

fn sent(lent: &mut Lent) -> Vec<(String, u64, bool)> {
    let mut w = TransferWriter::new(1, 1, 0, "app-0", 0, 4096).expect("writer");
    assert!(
        lent.fill(&mut w, usize::MAX, usize::MAX),
        "all in one chunk"
    );
    let t = decode_transfer(&w.finish(true, false)).expect("decodes");
    t.actors
        .into_iter()
        .map(|a| (a.actor.id, a.seq, a.state.0.is_empty()))
        .collect()
}

/// After a copy round the pause sends drops first (copied actors not held any more), then the
/// actors whose sequence moved on or that were not copied; the rest stay lent, unsent.
#[test]
fn the_pause_after_a_copy_sends_only_what_changed_and_drops_what_went() {
    let copy = Lent {
        actors: vec![actor("same", 3), actor("written", 4), actor("gone", 7)],
        ..Lent::default()
    };
    let mut lent = Lent {
        actors: vec![actor("written", 5), actor("same", 3), actor("new", 1)],
        ..Lent::default()
    };
    assert_eq!(lent.changed_since(copy.sequences()), (2, 1));
    let mut got = sent(&mut lent);
    got[1..].sort();
    assert_eq!(
        got,
        vec![
            ("gone".to_owned(), 0, true),
            ("new".to_owned(), 1, false),
            ("written".to_owned(), 5, false),
        ]
    );
    assert_eq!(
        lent.len(),
        3,
        "every actor stays lent, to go back on a rollback"
    );
    // Without a copy round, all of them go.
    let mut all = Lent {
        actors: vec![actor("a", 1), actor("b", 2)],
        ..Lent::default()
    };
    assert_eq!(sent(&mut all).len(), 2);
}
