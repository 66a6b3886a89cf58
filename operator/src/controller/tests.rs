//! Unit tests of `controller.rs`.

use super::*;
use aether_core::protocol::{Progress, VERSION};
use aether_core::types::MovePhase;

fn report(epoch: u64, shard: u32, phase: MovePhase, error: Option<String>) -> Progress {
    Progress {
        v: VERSION,
        epoch,
        shard,
        node: "app-0".into(),
        phase,
        actors: 0,
        duration_ms: 0,
        bytes: 0,
        error,
        from: None,
        to: None,
    }
}

#[test]
fn reports_stay_bounded_and_error_texts_short() {
    let mut r = Reports::default();
    r.add(report(1, 7, MovePhase::Transferring, None));
    r.add(report(1, 7, MovePhase::Failed, Some("é".repeat(4_000))));
    let all = r.into_reports();
    assert_eq!(
        all.len(),
        1,
        "the latest report of a move replaces the earlier"
    );
    let e = all[0].error.clone().unwrap_or_default();
    assert!(
        e.len() <= Reports::ERROR_BYTES + 3,
        "cut to {} bytes",
        e.len()
    );
    let mut r = Reports::default();
    for shard in 0..(Reports::LIMIT as u32 + 10) {
        r.add(report(
            u64::from(shard / 65_536) + 1,
            shard % 65_536,
            MovePhase::Done,
            None,
        ));
    }
    r.restore(vec![report(1, 0, MovePhase::Transferring, None)]);
    let all = r.into_reports();
    assert!(all.len() <= Reports::LIMIT + 1);
    assert!(
        all.iter()
            .all(|p| p.phase == MovePhase::Done || p.epoch == 1)
    );
}
