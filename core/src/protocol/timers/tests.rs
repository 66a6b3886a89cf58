use super::*;
use proptest::prelude::*;
use serde_json::json;

fn spec(v: Value) -> TimerSpec {
    serde_json::from_value(v).expect("a timer spec")
}

#[test]
fn durations_and_times_read_as_numbers_or_text() {
    assert_eq!(duration_ms(&json!(1500)), Ok(1500));
    assert_eq!(duration_ms(&json!("15m")), Ok(900_000));
    assert_eq!(duration_ms(&json!("1h 30m")), Ok(5_400_000));
    assert_eq!(duration_ms(&json!("500ms")), Ok(500));
    assert!(duration_ms(&json!(-1)).is_err());
    assert!(duration_ms(&json!("soon")).is_err());
    assert_eq!(time_ms(&json!("1970-01-01T00:00:01Z")), Ok(1000));
    assert_eq!(time_ms(&json!(42)), Ok(42));
    assert!(time_ms(&json!("yesterday")).is_err());
}

#[test]
fn a_spec_resolves_against_now_and_bad_ones_say_why() {
    let now = 1_000_000;
    let t = spec(json!({"name": "expire", "after": "15m", "command": {"expire": true}}))
        .resolve(now)
        .expect("valid");
    assert_eq!((t.due, t.every), (now + 900_000, None));
    let t = spec(json!({"name": "tick", "every": "10s"}))
        .resolve(now)
        .expect("valid");
    assert_eq!((t.due, t.every), (now + 10_000, Some(10_000)));
    let t = spec(json!({"name": "at", "at": 5}))
        .resolve(now)
        .expect("a past time is due at once");
    assert_eq!(t.due, 5);
    for (bad, says) in [
        (json!({"name": "", "after": 1}), "timer name"),
        (json!({"name": "a b", "after": 1}), "timer name"),
        (json!({"name": "x".repeat(65), "after": 1}), "timer name"),
        (json!({"name": "p", "every": 999}), "period"),
        (json!({"name": "both", "after": 1, "at": 1}), "both"),
        (json!({"name": "none"}), "one of"),
        (json!({"name": "far", "after": "400days"}), "366 days"),
        (
            json!({"name": "big", "after": 1, "command": "x".repeat(MAX_TIMER_COMMAND_BYTES)}),
            "bytes",
        ),
        (
            json!({"name": "c", "every": "1s", "catchUp": MAX_CATCH_UP + 1}),
            "catchUp",
        ),
    ] {
        let e = spec(bad.clone()).resolve(now).expect_err("refused");
        assert!(e.contains(says), "{bad}: {e}");
    }
    assert!(
        serde_json::from_value::<TimerSpec>(json!({"name": "x", "after": 1, "evry": 1})).is_err()
    );
}

#[test]
fn a_one_shot_timer_fires_once_at_its_due_time() {
    let t = Timer {
        name: "t".into(),
        due: 100,
        every: None,
        command: Value::Null,
        catch_up: 0,
    };
    assert_eq!(t.fire(99), None);
    assert_eq!(
        t.fire(5_000),
        Some(Firing {
            due: 100,
            missed: 0,
            next: None
        })
    );
}

#[test]
fn a_periodic_timer_after_an_outage_fires_once_for_what_it_missed() {
    let t = Timer {
        name: "t".into(),
        due: 1_000,
        every: Some(1_000),
        command: Value::Null,
        catch_up: 0,
    };
    // Due at 1000; by 10500 the ticks 1000..=10000 (ten) came due: one firing, nine skipped.
    assert_eq!(
        t.fire(10_500),
        Some(Firing {
            due: 10_000,
            missed: 9,
            next: Some(11_000)
        })
    );
    let catching = Timer { catch_up: 3, ..t };
    assert_eq!(
        catching.fire(10_500),
        Some(Firing {
            due: 7_000,
            missed: 6,
            next: Some(8_000)
        })
    );
}

#[test]
fn a_firing_and_its_decision_merge_with_the_decision_winning() {
    let t = Timer {
        name: "a".into(),
        due: 10,
        every: Some(1_000),
        command: Value::Null,
        catch_up: 0,
    };
    let f = t.fire(10).expect("due");
    let (set, cancel) = merge(Some((&t, &f)), Vec::new(), Vec::new());
    assert_eq!((set[0].due, cancel.len()), (1_010, 0));
    let (set, cancel) = merge(Some((&t, &f)), Vec::new(), vec!["a".into()]);
    assert_eq!((set.len(), cancel), (0, vec!["a".to_owned()]));
    let one = Timer {
        every: None,
        ..t.clone()
    };
    let f = one.fire(10).expect("due");
    let again = Timer {
        due: 99,
        ..one.clone()
    };
    let (set, cancel) = merge(Some((&one, &f)), vec![again.clone()], Vec::new());
    assert_eq!((set, cancel.len()), (vec![again], 0));
}

fn timer(name: u8, due: u64) -> Timer {
    Timer {
        name: format!("t{name}"),
        due,
        every: None,
        command: Value::Null,
        catch_up: 0,
    }
}

proptest! {
    /// Whatever the period, catch-up and outage: a firing is never early, skips exactly the ticks
    /// it says, and the next tick is after now and on the timer's grid.
    #[test]
    fn firings_are_never_early_and_stay_on_their_grid(
        due in 0u64..1_000_000_000, every in MIN_PERIOD_MS..10_000_000, late in 0u64..1_000_000_000,
        catch_up in 0u32..50,
    ) {
        let t = Timer { name: "p".into(), due, every: Some(every), command: Value::Null, catch_up };
        let now = due + late;
        let f = t.fire(now).expect("due");
        prop_assert!(f.due >= t.due && f.due <= now);
        prop_assert_eq!((f.due - t.due) % every, 0);
        prop_assert_eq!((f.due - t.due) / every, f.missed);
        let next = f.next.expect("periodic");
        prop_assert_eq!(next, f.due + every);
        prop_assert!(next > now || (now - next) / every < u64::from(catch_up));
    }

    /// Applying changes keeps one timer per name, sorted, and the last set of a name wins.
    #[test]
    fn applied_changes_keep_one_timer_per_name(
        steps in proptest::collection::vec((0u8..8, 0u64..100, any::<bool>()), 0..40),
    ) {
        let mut timers = Vec::new();
        let mut model = std::collections::BTreeMap::new();
        for (name, due, cancel) in steps {
            if cancel {
                apply(&mut timers, &[], &[format!("t{name}")]);
                model.remove(&format!("t{name}"));
            } else {
                apply(&mut timers, &[timer(name, due)], &[]);
                model.insert(format!("t{name}"), due);
            }
        }
        let got: Vec<(String, u64)> = timers.iter().map(|t| (t.name.clone(), t.due)).collect();
        let want: Vec<(String, u64)> = model.into_iter().collect();
        prop_assert_eq!(got, want);
    }
}
