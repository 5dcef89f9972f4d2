//! Promises/A+ semantics through the public API.
//!
//! Section numbers refer to the Promises/A+ specification (https://promisesaplus.com).
//! `Err` returned from a handler plays the part of `throw`; a returned `Promise`
//! plays the part of a returned thenable (2.3).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{within, Counter, Log};
use thenable::{block_on, set_timeout, Error, EventLoop, Promise};

// ---------------------------------------------------------------------------
// 2.2.4: handlers never run inside the call that attaches them
// ---------------------------------------------------------------------------

#[test]
fn handlers_never_run_inside_then_even_on_settled_promises() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let (c1, c2, c3, c4, c5, c6) = (
        ran.clone(),
        ran.clone(),
        ran.clone(),
        ran.clone(),
        ran.clone(),
        ran.clone(),
    );
    let a = Promise::<i32>::resolved(1).then(move |v| {
        c1.bump();
        Ok(v)
    });
    let b = Promise::<i32>::rejected(Error::msg("x")).catch(move |_| {
        c2.bump();
        Ok(2)
    });
    let c = Promise::<i32>::resolved(3).finally(move || c3.bump());
    let d = Promise::<i32>::rejected(Error::msg("y")).then_or_catch(Ok, move |_| {
        c4.bump();
        Ok(4)
    });
    let e = Promise::<i32>::resolved(5).map(move |v| {
        c5.bump();
        v
    });
    let f = Promise::<i32>::rejected(Error::msg("z")).map_err(move |e| {
        c6.bump();
        e
    });
    assert_eq!(ran.get(), 0, "a handler ran inside the attaching call");
    assert!(a.is_pending() && b.is_pending() && c.is_pending());
    assert!(d.is_pending() && e.is_pending() && f.is_pending());
    assert_eq!(block_on(a).unwrap(), 1);
    assert_eq!(block_on(b).unwrap(), 2);
    assert_eq!(block_on(c).unwrap(), 3);
    assert_eq!(block_on(d).unwrap(), 4);
    assert_eq!(block_on(e).unwrap(), 5);
    assert_eq!(block_on(f).unwrap_err().to_string(), "z");
    assert_eq!(ran.get(), 6);
}

#[test]
fn settling_never_runs_handlers_inside_resolve_or_reject() {
    let event_loop = EventLoop::new();
    let ran = Counter::default();
    let (p, r) = Promise::<i32>::pending();
    let (q, s) = Promise::<i32>::pending();
    let (c1, c2) = (ran.clone(), ran.clone());
    let _a = p.then(move |v| {
        c1.bump();
        Ok(v)
    });
    let _b = q.catch(move |_| {
        c2.bump();
        Ok(0)
    });
    assert!(r.resolve(1));
    assert!(s.reject(Error::msg("no")));
    assert_eq!(ran.get(), 0, "a handler ran inside resolve/reject");
    event_loop.run().unwrap();
    assert_eq!(ran.get(), 2);
}

#[test]
fn resolve_with_never_settles_inside_the_call_even_for_a_settled_source() {
    let event_loop = EventLoop::new();
    let (p, r) = Promise::<i32>::pending();
    assert!(r.resolve_with(Promise::resolved(9)));
    assert!(p.is_pending(), "adoption settled inside resolve_with");
    event_loop.run().unwrap();
    assert!(p.is_fulfilled());
    assert_eq!(block_on(p).unwrap(), 9);
}

// ---------------------------------------------------------------------------
// 2.2.6: handlers run in attach order; fan-out across clones
// ---------------------------------------------------------------------------

#[test]
fn handlers_run_in_attach_order_across_clones_of_a_settled_promise() {
    let event_loop = EventLoop::new();
    let log = Log::default();
    let p = Promise::<i32>::resolved(7);
    let q = p.clone();
    let attach = |promise: Promise<i32>, name: &'static str| {
        let l = log.clone();
        promise.then(move |v| {
            l.push(format!("{name} {v}"));
            Ok(v)
        })
    };
    let a = attach(q.clone(), "a");
    let b = attach(p.clone(), "b");
    let c = attach(q, "c");
    let d = attach(p, "d");
    event_loop.run().unwrap();
    assert_eq!(log.entries(), ["a 7", "b 7", "c 7", "d 7"]);
    for child in [a, b, c, d] {
        assert_eq!(block_on(child).unwrap(), 7);
    }
}

#[test]
fn handlers_run_in_attach_order_across_clones_of_a_pending_promise() {
    let event_loop = EventLoop::new();
    let log = Log::default();
    let (p, r) = Promise::<i32>::pending();
    let mut children = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let l = log.clone();
        let mapped = p.clone().then_or_catch(
            move |v| {
                l.push(format!("{name} {v}"));
                Ok(v * 10)
            },
            Err,
        );
        children.push(mapped);
    }
    drop(p);
    set_timeout(Duration::from_millis(1), move || {
        r.resolve(4);
    });
    event_loop.run().unwrap();
    assert_eq!(log.entries(), ["a 4", "b 4", "c 4", "d 4", "e 4"]);
    for child in children {
        assert_eq!(block_on(child).unwrap(), 40);
    }
}

#[test]
fn every_clone_receives_the_same_rejection() {
    let _event_loop = EventLoop::new();
    let error = Error::msg("shared");
    let (p, r) = Promise::<i32>::pending();
    let clones: Vec<_> = (0..3).map(|_| p.clone().map(|v| v + 1)).collect();
    let direct = p;
    assert!(r.reject(error.clone()));
    for clone in clones {
        assert!(block_on(clone).unwrap_err().same_as(&error));
    }
    assert!(block_on(direct).unwrap_err().same_as(&error));
}

// ---------------------------------------------------------------------------
// 2.1: states; the first settle wins
// ---------------------------------------------------------------------------

#[test]
fn first_settle_wins_resolve_then_reject() {
    let _event_loop = EventLoop::new();
    let (p, r) = Promise::<i32>::pending();
    assert!(!r.is_done());
    assert!(r.resolve(1));
    assert!(r.is_done());
    assert!(
        !r.reject(Error::msg("late")),
        "reject after resolve must fail"
    );
    assert!(!r.resolve(2), "second resolve must fail");
    assert!(!r.resolve_with(Promise::resolved(3)));
    assert!(p.is_fulfilled());
    assert_eq!(block_on(p).unwrap(), 1);
}

#[test]
fn first_settle_wins_reject_then_resolve_through_clones() {
    let _event_loop = EventLoop::new();
    let error = Error::msg("first");
    let (p, r) = Promise::<i32>::pending();
    let r2 = r.clone();
    assert!(r2.reject(error.clone()));
    assert!(r.is_done(), "clones share their state");
    assert!(!r.resolve(5));
    assert!(!r2.reject(Error::msg("second")));
    assert!(p.is_rejected());
    assert!(block_on(p).unwrap_err().same_as(&error));
}

#[test]
fn a_resolver_following_a_promise_cannot_be_settled_again() {
    let event_loop = EventLoop::new();
    let (source, source_resolver) = Promise::<i32>::pending();
    let (p, r) = Promise::<i32>::pending();
    assert!(r.resolve_with(source));
    assert!(r.is_done());
    assert!(!r.resolve(1), "resolve after resolve_with must fail");
    assert!(!r.reject(Error::msg("x")));
    assert!(p.is_pending(), "follows the still pending source");
    set_timeout(Duration::from_millis(1), move || {
        source_resolver.resolve(2);
    });
    event_loop.run().unwrap();
    assert_eq!(block_on(p).unwrap(), 2);
}

#[test]
fn state_transitions_pending_fulfilled_rejected() {
    let event_loop = EventLoop::new();
    let (p, r) = Promise::<i32>::pending();
    assert!(p.is_pending() && !p.is_fulfilled() && !p.is_rejected());
    let child = p.clone().map(|v| v * 2);
    r.resolve(21);
    // The promise itself changes state inside resolve...
    assert!(!p.is_pending() && p.is_fulfilled() && !p.is_rejected());
    // ...a derived one only once its handler has run on the loop.
    assert!(child.is_pending());
    event_loop.run().unwrap();
    assert!(child.is_fulfilled() && !child.is_pending() && !child.is_rejected());
    assert!(p.is_fulfilled(), "still fulfilled after its handlers ran");

    let (q, s) = Promise::<i32>::pending();
    assert!(q.is_pending());
    s.reject(Error::msg("no"));
    assert!(!q.is_pending() && !q.is_fulfilled() && q.is_rejected());

    assert!(Promise::<i32>::resolved(1).is_fulfilled());
    assert!(Promise::<i32>::rejected(Error::msg("x")).is_rejected());
    assert_eq!(block_on(child).unwrap(), 42);
    assert_eq!(block_on(p).unwrap(), 21);
}

// ---------------------------------------------------------------------------
// 2.2.7: pass-through, Err rejects the child
// ---------------------------------------------------------------------------

#[test]
fn rejections_pass_through_then_and_map_unchanged() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let error = Error::msg("original");
    let (c1, c2) = (ran.clone(), ran.clone());
    let p = Promise::<i32>::rejected(error.clone())
        .then(move |v| {
            c1.bump();
            Ok(v + 1)
        })
        .map(move |v| {
            c2.bump();
            v.to_string()
        });
    let got = block_on(p).unwrap_err();
    assert!(got.same_as(&error), "the very same error must come out");
    assert_eq!(ran.get(), 0, "on_fulfilled ran for a rejection");
}

#[test]
fn values_pass_through_catch_and_map_err_unchanged() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let (c1, c2) = (ran.clone(), ran.clone());
    let p = Promise::<String>::resolved("value".to_string())
        .catch(move |_| {
            c1.bump();
            Ok("recovered".to_string())
        })
        .map_err(move |e| {
            c2.bump();
            format!("mapped: {e}")
        });
    assert_eq!(block_on(p).unwrap(), "value");
    assert_eq!(ran.get(), 0, "on_rejected ran for a value");
}

#[test]
fn handler_returning_err_rejects_the_child_and_skips_to_catch() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let error = Error::msg("thrown");
    let thrown = error.clone();
    let skipped = ran.clone();
    let p = Promise::<i32>::resolved(1)
        .then(move |_| Err::<i32, _>(thrown))
        .then(move |v| {
            skipped.bump();
            Ok(v)
        })
        .catch(move |e| {
            assert!(e.same_as(&error), "catch must see the handler's error");
            Ok(-1)
        });
    assert_eq!(block_on(p).unwrap(), -1);
    assert_eq!(ran.get(), 0);
}

#[test]
fn catch_returning_err_stays_rejected_with_the_new_error() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::rejected(Error::msg("first"))
        .catch(|e| Err(Error::msg(format!("wrapped({e})"))));
    assert_eq!(block_on(p).unwrap_err().to_string(), "wrapped(first)");
}

#[test]
fn then_or_catch_runs_exactly_one_handler() {
    let _event_loop = EventLoop::new();
    let log = Log::default();
    let (l1, l2) = (log.clone(), log.clone());
    let ok = Promise::<i32>::resolved(3).then_or_catch(
        move |v| {
            l1.push("fulfilled");
            Ok(v + 1)
        },
        move |_| {
            l2.push("rejected");
            Ok(0)
        },
    );
    assert_eq!(block_on(ok).unwrap(), 4);
    assert_eq!(log.entries(), ["fulfilled"]);

    let log = Log::default();
    let (l1, l2) = (log.clone(), log.clone());
    let err = Promise::<i32>::rejected(Error::msg("e")).then_or_catch(
        move |v| {
            l1.push("fulfilled");
            Ok(v)
        },
        move |e| {
            l2.push(format!("rejected {e}"));
            Ok(-1)
        },
    );
    assert_eq!(block_on(err).unwrap(), -1);
    assert_eq!(log.entries(), ["rejected e"]);
}

#[test]
fn then_or_catch_on_rejected_does_not_see_the_error_of_on_fulfilled() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let c = ran.clone();
    let p = Promise::<i32>::resolved(1).then_or_catch(
        |_| Err::<i32, _>(Error::msg("from on_fulfilled")),
        move |_| {
            c.bump();
            Ok(0)
        },
    );
    assert_eq!(block_on(p).unwrap_err().to_string(), "from on_fulfilled");
    assert_eq!(ran.get(), 0);
}

// ---------------------------------------------------------------------------
// finally, map, map_err
// ---------------------------------------------------------------------------

#[test]
fn finally_runs_on_both_outcomes_and_passes_the_outcome_through() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let c = ran.clone();
    let ok = Promise::<i32>::resolved(8).finally(move || c.bump());
    assert_eq!(block_on(ok).unwrap(), 8);
    assert_eq!(ran.get(), 1);

    let error = Error::msg("kept");
    let c = ran.clone();
    let err = Promise::<i32>::rejected(error.clone()).finally(move || c.bump());
    assert!(block_on(err).unwrap_err().same_as(&error));
    assert_eq!(ran.get(), 2);
}

#[test]
fn panicking_finally_rejects_with_a_panic_error() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::resolved(1).finally(|| panic!("finally exploded"));
    let error = block_on(p).unwrap_err();
    assert!(error.is_panic());
    assert!(error.to_string().contains("finally exploded"), "{error}");
}

#[test]
fn map_and_map_err_transform_only_their_side() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::resolved(6)
        .map(|v| v * 7)
        .map(|v| format!("<{v}>"));
    assert_eq!(block_on(p).unwrap(), "<42>");

    let p: Promise<i32, String> =
        Promise::<i32>::rejected(Error::msg("low")).map_err(|e| format!("high: {e}"));
    assert_eq!(block_on(p).unwrap_err(), "high: low");

    let p: Promise<i32, String> = Promise::<i32>::resolved(1).map_err(|e| format!("never: {e}"));
    assert_eq!(block_on(p).unwrap(), 1);

    let ran = Counter::default();
    let c = ran.clone();
    let p = Promise::<i32>::rejected(Error::msg("e")).map(move |v| {
        c.bump();
        v
    });
    assert_eq!(block_on(p).unwrap_err().to_string(), "e");
    assert_eq!(ran.get(), 0);
}

// ---------------------------------------------------------------------------
// Panics (rule 6)
// ---------------------------------------------------------------------------

#[test]
fn panicking_handler_rejects_with_a_panic_error_and_the_loop_goes_on() {
    let event_loop = EventLoop::new();
    let later = Counter::default();
    let c = later.clone();
    let recovered = Promise::<i32>::resolved(1)
        .then(|_| -> Result<i32, Error> { panic!("boom in handler") })
        .then(move |v| {
            c.bump();
            Ok(v)
        })
        .catch(|e| {
            assert!(e.is_panic(), "{e:?}");
            assert!(e.to_string().contains("boom in handler"), "{e}");
            Ok(99)
        });
    let independent = Promise::<i32>::resolved(2).then(|v| Ok(v * 2));
    let timer_ran = Counter::default();
    let t = timer_ran.clone();
    set_timeout(Duration::from_millis(1), move || t.bump());
    event_loop.run().unwrap();
    assert_eq!(timer_ran.get(), 1, "the loop stopped after a panic");
    assert_eq!(later.get(), 0, "on_fulfilled ran after a panic");
    assert_eq!(event_loop.block_on(recovered).unwrap(), 99);
    assert_eq!(event_loop.block_on(independent).unwrap(), 4);
    // And the loop still works afterwards.
    let after = Promise::<i32>::resolved(5).map(|v| v + 1);
    assert_eq!(event_loop.block_on(after).unwrap(), 6);
}

#[test]
fn panicking_catch_map_and_map_err_reject_with_panic_errors() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::rejected(Error::msg("x"))
        .catch(|_| -> Result<i32, Error> { panic!("catch panicked") });
    let e = block_on(p).unwrap_err();
    assert!(
        e.is_panic() && e.to_string().contains("catch panicked"),
        "{e:?}"
    );

    let p = Promise::<i32>::resolved(1).map(|_| -> i32 { panic!("map panicked") });
    let e = block_on(p).unwrap_err();
    assert!(
        e.is_panic() && e.to_string().contains("map panicked"),
        "{e:?}"
    );

    let p: Promise<i32, Error> = Promise::<i32>::rejected(Error::msg("x"))
        .map_err(|_| -> Error { panic!("map_err panicked") });
    let e = block_on(p).unwrap_err();
    assert!(
        e.is_panic() && e.to_string().contains("map_err panicked"),
        "{e:?}"
    );

    // A user error type receives the panic through `From<Error>`.
    let p: Promise<i32, String> =
        Promise::<i32, String>::resolved(1).then(|_| -> Result<i32, String> { panic!("typed") });
    let e = block_on(p).unwrap_err();
    assert!(e.contains("panicked") && e.contains("typed"), "{e}");
}

// ---------------------------------------------------------------------------
// 2.3: adoption of a returned promise
// ---------------------------------------------------------------------------

#[test]
fn returning_a_fulfilled_promise_adopts_its_value() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::resolved(1).then(|v| Promise::resolved(v + 100));
    assert_eq!(block_on(p).unwrap(), 101);
}

#[test]
fn returning_a_rejected_promise_adopts_its_error() {
    let _event_loop = EventLoop::new();
    let error = Error::msg("inner rejection");
    let inner = error.clone();
    let ran = Counter::default();
    let c = ran.clone();
    let p = Promise::<i32>::resolved(1)
        .then(move |_| Promise::<i32>::rejected(inner))
        .then(move |v| {
            c.bump();
            Ok(v)
        });
    assert!(block_on(p).unwrap_err().same_as(&error));
    assert_eq!(ran.get(), 0);
}

#[test]
fn returning_a_pending_promise_waits_for_it_to_settle() {
    let event_loop = EventLoop::new();
    let (inner, inner_resolver) = Promise::<i32>::pending();
    let inner_resolver = Arc::new(Mutex::new(Some(inner_resolver)));
    let child = Promise::<i32>::resolved(1).then(move |_| inner);
    let watch = child.clone();
    let late = inner_resolver.clone();
    // Settle the inner promise only after several turns of the loop.
    set_timeout(Duration::from_millis(10), move || {
        late.lock().unwrap().take().unwrap().resolve(77);
    });
    let observed_pending = Arc::new(Mutex::new(None));
    let o = observed_pending.clone();
    let w = watch.clone();
    set_timeout(Duration::from_millis(2), move || {
        *o.lock().unwrap() = Some(w.is_pending());
    });
    event_loop.run().unwrap();
    assert_eq!(
        *observed_pending.lock().unwrap(),
        Some(true),
        "the child settled before the promise it follows"
    );
    assert!(inner_resolver.lock().unwrap().is_none());
    assert_eq!(block_on(child).unwrap(), 77);
    assert_eq!(block_on(watch).unwrap(), 77);
}

#[test]
fn returning_a_pending_promise_that_rejects_later_adopts_the_rejection() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::resolved(1).then(|_| {
        Promise::<i32>::new(|r| {
            set_timeout(Duration::from_millis(2), move || {
                r.reject(Error::msg("late rejection"));
            });
        })
    });
    assert_eq!(block_on(p).unwrap_err().to_string(), "late rejection");
}

/// A promise whose handler returns a promise whose handler returns a promise ...
/// `depth` levels deep, each adding one.
fn nested(depth: u32) -> Promise<u32> {
    if depth == 0 {
        Promise::resolved(0)
    } else {
        Promise::<u32>::resolved(depth)
            .then(move |_| nested(depth - 1).then(|v| Promise::<u32>::resolved(v).map(|v| v + 1)))
    }
}

#[test]
fn deeply_nested_promise_returning_promise_flattens() {
    let _event_loop = EventLoop::new();
    assert_eq!(block_on(nested(1)).unwrap(), 1);
    assert_eq!(block_on(nested(500)).unwrap(), 500);
}

#[test]
fn deeply_nested_adoption_propagates_a_rejection_from_the_bottom() {
    fn failing(depth: u32) -> Promise<u32> {
        if depth == 0 {
            Promise::rejected(Error::msg("bottom"))
        } else {
            Promise::<u32>::resolved(depth).then(move |_| failing(depth - 1).map(|v| v + 1))
        }
    }
    let _event_loop = EventLoop::new();
    assert_eq!(block_on(failing(200)).unwrap_err().to_string(), "bottom");
}

#[test]
fn catch_and_then_or_catch_may_return_promises_too() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::rejected(Error::msg("x")).catch(|_| Promise::resolved(5));
    assert_eq!(block_on(p).unwrap(), 5);
    let p = Promise::<i32>::rejected(Error::msg("x"))
        .then_or_catch(Promise::resolved, |_| Promise::resolved(6));
    assert_eq!(block_on(p).unwrap(), 6);
    let p = Promise::<i32>::resolved(1)
        .then_or_catch(|_| Promise::<i32>::rejected(Error::msg("inner")), |_| Ok(0));
    assert_eq!(block_on(p).unwrap_err().to_string(), "inner");
}

// ---------------------------------------------------------------------------
// 2.3.1 and chaining cycles: must reject, never hang
// ---------------------------------------------------------------------------

#[test]
fn resolving_with_own_then_child_rejects_with_deadlock() {
    let error = within(|| {
        let _event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let watch = p.clone();
        assert!(r.resolve_with(p.then(|v| Ok(v + 1))));
        block_on(watch).unwrap_err()
    });
    assert!(error.is_deadlock(), "{error:?}");
}

#[test]
fn resolving_with_itself_rejects_with_deadlock() {
    let error = within(|| {
        let _event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let watch = p.clone();
        assert!(r.resolve_with(p));
        block_on(watch).unwrap_err()
    });
    assert!(error.is_deadlock(), "{error:?}");
}

#[test]
fn resolving_with_itself_rejects_through_the_loop_run() {
    // Same as above, but driven by `run` (no `block_on` deadlock detection to
    // fall back on): the promise itself must reject.
    let (rejected, rejected_with_deadlock) = within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let watch = p.clone();
        assert!(r.resolve_with(p));
        event_loop.run().unwrap();
        let rejected = watch.is_rejected();
        let error = event_loop.block_on(watch).err();
        (rejected, error.map(|e| e.is_deadlock()).unwrap_or(false))
    });
    assert!(rejected, "not rejected after the loop ran");
    assert!(rejected_with_deadlock);
}

#[test]
fn handler_returning_its_own_promise_rejects_with_deadlock() {
    // A+ 2.3.1: `promise2 = p.then(() => promise2)` rejects (with a TypeError in JS).
    let error = within(|| {
        let _event_loop = EventLoop::new();
        let slot: Arc<Mutex<Option<Promise<i32>>>> = Arc::default();
        let s = slot.clone();
        let child = Promise::<i32>::resolved(1).then(move |_| {
            s.lock()
                .unwrap()
                .take()
                .expect("slot filled before the loop")
        });
        *slot.lock().unwrap() = Some(child.clone());
        block_on(child).unwrap_err()
    });
    assert!(error.is_deadlock(), "{error:?}");
}

#[test]
fn two_promises_following_each_other_reject_with_deadlock() {
    let (a_err, b_err) = within(|| {
        let _event_loop = EventLoop::new();
        let (a, ra) = Promise::<i32>::pending();
        let (b, rb) = Promise::<i32>::pending();
        assert!(ra.resolve_with(b.clone()));
        assert!(rb.resolve_with(a.clone()));
        (block_on(a).unwrap_err(), block_on(b).unwrap_err())
    });
    assert!(a_err.is_deadlock(), "{a_err:?}");
    assert!(b_err.is_deadlock(), "{b_err:?}");
}

// ---------------------------------------------------------------------------
// Promise::new and broken promises
// ---------------------------------------------------------------------------

#[test]
fn executor_runs_synchronously() {
    let _event_loop = EventLoop::new();
    let ran = Counter::default();
    let c = ran.clone();
    let p = Promise::<i32>::new(move |r| {
        c.bump();
        r.resolve(3);
    });
    assert_eq!(ran.get(), 1, "the executor did not run inside Promise::new");
    assert!(
        p.is_fulfilled(),
        "resolved inside the executor: settled at once"
    );
    assert_eq!(block_on(p).unwrap(), 3);
}

#[test]
fn panicking_executor_rejects_with_a_panic_error() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::new(|_r| panic!("executor exploded"));
    assert!(p.is_rejected());
    let error = block_on(p).unwrap_err();
    assert!(error.is_panic(), "{error:?}");
    assert!(error.to_string().contains("executor exploded"), "{error}");
}

#[test]
fn executor_panicking_after_resolve_keeps_the_value() {
    // As in JavaScript: a throw after resolve() inside the executor is ignored.
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::new(|r| {
        r.resolve(10);
        panic!("too late to matter");
    });
    assert_eq!(block_on(p).unwrap(), 10);
}

#[test]
fn dropping_every_resolver_breaks_the_promise() {
    let _event_loop = EventLoop::new();
    let (p, r) = Promise::<i32>::pending();
    let r2 = r.clone();
    let child = p.clone().map(|v| v + 1);
    drop(r);
    assert!(p.is_pending(), "a live clone of the resolver remains");
    drop(r2);
    assert!(p.is_rejected(), "no resolver left: must settle at once");
    assert!(block_on(p).unwrap_err().is_broken());
    assert!(block_on(child).unwrap_err().is_broken());
}

#[test]
fn executor_dropping_its_resolver_breaks_the_promise() {
    let _event_loop = EventLoop::new();
    let p = Promise::<i32>::new(drop);
    assert!(block_on(p).unwrap_err().is_broken());
}

#[test]
fn dropping_the_resolver_on_another_thread_breaks_the_promise() {
    let result = within(|| {
        let _event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        std::thread::spawn(move || drop(r)).join().unwrap();
        block_on(p.then(|v| Ok(v + 1)))
    });
    assert!(result.unwrap_err().is_broken());
}
