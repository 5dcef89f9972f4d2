//! Unhandled-rejection reports with a user error type: a rejection the library
//! made out of a cancellation (a combinator whose input was cancelled elsewhere)
//! is cancellation travelling on, and stays unreported however far it is passed
//! on, exactly as with `E = Error`; a user's own rejection is still reported once.
//!
//! The hook is per thread, and each test runs on a fresh thread (`within`), so
//! the tests cannot see each other's reports.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::within;
use common::HOUR;
use thenable::{
    all, any_with, as_completed, map_concurrent, race, reset_unhandled_rejection_hook, retry,
    set_unhandled_rejection_hook, shield, sleep, Error, EventLoop, Promise,
};

/// A user error type, as an application defines one: the library's failures
/// arrive through `From<Error>`, which is all the library knows of it.
#[derive(Debug, Clone)]
enum MyErr {
    Lib(Error),
    Mine(&'static str),
}

impl From<Error> for MyErr {
    fn from(error: Error) -> Self {
        MyErr::Lib(error)
    }
}

/// Runs `body` on a fresh thread with a loop and a counting hook, then the loop;
/// the number of unhandled rejections reported meanwhile. What `body` returns
/// (resolvers) lives until the loop is done: a resolver dropped earlier would
/// break its promise, a rejection of its own.
fn reports<Keep>(body: impl FnOnce(&EventLoop) -> Keep + Send + 'static) -> usize {
    within(|| {
        let event_loop = EventLoop::new();
        let count = Rc::new(Cell::new(0));
        let counter = count.clone();
        set_unhandled_rejection_hook(move |_| counter.set(counter.get() + 1));
        let keep = body(&event_loop);
        event_loop.run().unwrap();
        drop(keep);
        reset_unhandled_rejection_hook();
        count.get()
    })
}

/// A pending promise, a clone of it for a combinator to consume, and the
/// resolver (kept, so that only the cancellation settles it).
type Input = (
    Promise<i32, MyErr>,
    Promise<i32, MyErr>,
    thenable::Resolver<i32, MyErr>,
);

fn input() -> Input {
    let (promise, resolver) = Promise::pending();
    (promise.clone(), promise, resolver)
}

// ---------------------------------------------------------------------------
// (a) A combinator rejected because an input was cancelled elsewhere
// ---------------------------------------------------------------------------

#[test]
fn all_rejected_by_a_cancelled_input_is_not_reported() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let (other, _other_resolver) = Promise::<i32, MyErr>::pending();
        let output = all([consumed, other]);
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
        assert!(
            output.is_rejected(),
            "the input's cancellation rejects `all`"
        );
        drop(output);
    });
    assert_eq!(seen, 0);
}

#[test]
fn race_rejected_by_a_cancelled_input_is_not_reported() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let (other, _other_resolver) = Promise::<i32, MyErr>::pending();
        let output = race([consumed, other]);
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
        assert!(output.is_rejected());
        drop(output);
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_tuple_all_rejected_by_a_cancelled_input_is_not_reported() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let (other, _other_resolver) = Promise::<&str, MyErr>::pending();
        let output = all((consumed, other));
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
        assert!(output.is_rejected());
        drop(output);
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_shield_of_a_cancelled_promise_is_not_reported() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let output = shield(consumed);
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
        assert!(output.is_rejected());
        drop(output);
    });
    assert_eq!(seen, 0);
}

#[test]
fn as_completed_promises_of_a_cancelled_input_are_not_reported() {
    let seen = reports(|event_loop| {
        // One request made before the outcome arrived, one after (served from
        // the outcomes kept for later requests).
        let (early, cancel_early, _early_resolver) = input();
        let (late, cancel_late, _late_resolver) = input();
        let mut completed = as_completed([early, late]);
        let waiting = completed.next_promise().unwrap();
        assert!(cancel_early.cancel() && cancel_late.cancel());
        event_loop.run().unwrap();
        let served_later = completed.next_promise().unwrap();
        event_loop.run().unwrap();
        assert!(waiting.is_rejected() && served_later.is_rejected());
        drop((waiting, served_later, completed));
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_cancelled_input_reaching_an_output_dropped_at_once_is_not_reported() {
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let (other, other_resolver) = Promise::<Vec<i32>, MyErr>::pending();
        drop(race([all([consumed]), other]));
        cancelled.cancel();
        other_resolver
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_timeout_of_a_quiet_rejection_is_not_reported() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let limited = all([consumed]).timeout(HOUR);
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
        assert!(limited.is_rejected(), "the `all` it limits rejected");
        // Passed on further, still quiet.
        drop(limited.map(|values| values.len()));
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_timeout_of_a_cancelled_promise_is_cancelled_not_reported() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let limited = consumed.timeout(HOUR);
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
        assert!(limited.is_cancelled());
        drop(limited);
    });
    assert_eq!(seen, 0);
}

/// One item's promise (the items are the promises themselves, mapped to
/// themselves) cancelled elsewhere, or rejected quietly because its own input
/// was: the combinator passes cancellation on.
#[test]
fn a_map_concurrent_whose_item_was_cancelled_elsewhere_is_not_reported() {
    for started_first in [false, true] {
        let seen = reports(move |event_loop| {
            let (consumed, cancelled, _resolver) = input();
            let (other, _other_resolver) = Promise::<i32, MyErr>::pending();
            let output = map_concurrent([consumed, other], 2, |item| item);
            if started_first {
                // Timers run after microtasks: by then the items are started.
                event_loop.block_on(sleep(Duration::ZERO)).unwrap();
                assert!(output.is_pending());
            }
            assert!(cancelled.cancel());
            event_loop.run().unwrap();
            assert!(output.is_rejected());
            drop(output.map(|values| values.len()));
        });
        assert_eq!(seen, 0, "started before the cancellation: {started_first}");
    }
}

#[test]
fn a_map_concurrent_whose_item_rejected_quietly_is_not_reported() {
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let (other, other_resolver) = Promise::<i32, MyErr>::pending();
        drop(map_concurrent([all([consumed]), all([other])], 2, |item| {
            item
        }));
        cancelled.cancel();
        other_resolver
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_retry_whose_last_attempt_was_cancelled_elsewhere_is_not_reported() {
    // One attempt, or three, each getting the promise cancelled elsewhere (a
    // clone of it), or rejected quietly because its input was.
    for attempts in [1, 3] {
        let seen = reports(move |_| {
            let (consumed, cancelled, _resolver) = input();
            assert!(cancelled.cancel());
            drop(retry(attempts, [Duration::ZERO; 2], move || {
                consumed.clone()
            }));
            let (consumed, cancelled, resolver) = input();
            drop(retry(attempts, [Duration::ZERO; 2], move || {
                all([consumed.clone()])
            }));
            assert!(cancelled.cancel());
            resolver
        });
        assert_eq!(seen, 0, "{attempts} attempts");
    }
}

#[test]
fn with_error_a_map_concurrent_or_retry_of_a_cancelled_promise_is_not_reported() {
    let seen = reports(|_| {
        let (promise, resolver) = Promise::<i32>::pending();
        let mapped = map_concurrent([promise.clone()], 1, |item| item);
        let attempt = promise.clone();
        let retried = retry(2, [Duration::ZERO], move || attempt.clone());
        let limited = all([promise.clone()]).timeout(HOUR);
        promise.cancel();
        drop((mapped, retried, limited));
        resolver
    });
    assert_eq!(seen, 0);
}

#[test]
fn what_a_task_passes_on_quietly_is_still_the_reason_handlers_see() {
    within(|| {
        let event_loop = EventLoop::new();
        let (promise, _resolver) = Promise::<i32, MyErr>::pending();
        let mapped = map_concurrent([promise.clone()], 1, |item| item);
        let attempt = promise.clone();
        let retried = retry(1, [], move || attempt.clone());
        let limited = all([promise.clone()]).timeout(HOUR);
        promise.cancel();
        let cancelled = |outcome: Result<_, MyErr>| matches!(outcome, Err(MyErr::Lib(error)) if error.is_cancelled());
        assert!(cancelled(event_loop.block_on(mapped).map(drop)));
        assert!(cancelled(event_loop.block_on(retried).map(drop)));
        assert!(cancelled(event_loop.block_on(limited).map(drop)));
    });
}

// ---------------------------------------------------------------------------
// (b) The same rejection passed on along a chain
// ---------------------------------------------------------------------------

#[test]
fn a_then_chain_passing_it_on_is_not_reported() {
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let (other, other_resolver) = Promise::<i32, MyErr>::pending();
        let tail = all([consumed, other])
            .then(|values| Ok(values.len()))
            .map(|count| count + 1)
            .finally(|| {})
            .then(|count| Promise::resolved(count * 2));
        cancelled.cancel();
        drop(tail);
        other_resolver
    });
    assert_eq!(seen, 0);
}

#[test]
fn adopting_it_passes_it_on_unreported() {
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let (following, resolver) = Promise::<i32, MyErr>::pending();
        resolver.resolve_with(race([consumed]));
        let (consumed_again, cancelled_again, _resolver_again) = input();
        let returned = Promise::<(), MyErr>::resolved(()).then(move |()| all([consumed_again]));
        cancelled.cancel();
        cancelled_again.cancel();
        drop((following.map(|v| v + 1), returned));
    });
    assert_eq!(seen, 0);
}

#[test]
fn every_clone_passes_it_on_unreported_also_when_chained_after_it_settled() {
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let output = all([consumed]);
        // Two consumers before it settles (each gets its copy), one after.
        let first = output.clone().map(|values| values.len());
        let second = output.clone().then(|values| Ok(values.len()));
        cancelled.cancel();
        event_loop.run().unwrap();
        assert!(output.is_rejected());
        let late = output.map(|values| values.len());
        drop((first, second, late));
    });
    assert_eq!(seen, 0);
}

// ---------------------------------------------------------------------------
// (c) The user's own rejections are still reported, once each
// ---------------------------------------------------------------------------

#[test]
fn a_user_rejection_through_a_combinator_and_a_chain_is_reported_once() {
    let seen = reports(|_| {
        let (other, other_resolver) = Promise::<i32, MyErr>::pending();
        let rejected = Promise::rejected(MyErr::Mine("real"));
        drop(
            all([rejected, other])
                .then(|values| Ok(values.len()))
                .map(|n| n + 1),
        );
        other_resolver
    });
    assert_eq!(seen, 1);
}

#[test]
fn a_user_rejection_through_timeout_map_concurrent_or_retry_is_reported_once_each() {
    let seen = reports(|_| {
        drop(Promise::<i32, MyErr>::rejected(MyErr::Mine("limited")).timeout(HOUR));
        drop(map_concurrent([MyErr::Mine("mapped")], 1, |reason| {
            Promise::<i32, MyErr>::rejected(reason)
        }));
        drop(retry(1, [], || {
            Promise::<i32, MyErr>::rejected(MyErr::Mine("retried"))
        }));
    });
    assert_eq!(seen, 3);
}

#[test]
fn a_cancelled_promise_before_a_genuine_rejection_does_not_silence_it() {
    // `map_concurrent`: a quiet item and a genuine failure that settles first;
    // `retry`: a cancelled first attempt, then a genuine failure; and a timeout
    // that fires: each output is a rejection of its own, reported.
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        drop(map_concurrent(
            [
                Promise::rejected(MyErr::Mine("first")),
                all([consumed]).map(|values| values[0]),
            ],
            2,
            |item| item,
        ));
        assert!(cancelled.cancel());
        let (consumed, cancelled, _resolver) = input();
        assert!(cancelled.cancel());
        let mut first = Some(consumed);
        drop(retry(2, [Duration::ZERO], move || {
            first
                .take()
                .unwrap_or_else(|| Promise::rejected(MyErr::Mine("last")))
        }));
        drop(sleep(HOUR).map_err(MyErr::from).timeout(Duration::ZERO));
    });
    assert_eq!(seen, 3);
}

#[test]
fn a_user_rejection_left_alone_is_reported_once() {
    let seen = reports(|_| drop(Promise::<i32, MyErr>::rejected(MyErr::Mine("lost"))));
    assert_eq!(seen, 1);
}

/// An error type whose `clone` panics once it holds a library error: a copy of a
/// quiet rejection then fails.
#[derive(Debug)]
struct CloneFails(Option<Error>);

impl From<Error> for CloneFails {
    fn from(error: Error) -> Self {
        CloneFails(Some(error))
    }
}

impl Clone for CloneFails {
    fn clone(&self) -> Self {
        assert!(self.0.is_none(), "a clone that fails {}", common::MARK);
        CloneFails(None)
    }
}

#[test]
fn a_failed_copy_of_a_quiet_rejection_is_a_failure_of_its_own_and_reported() {
    let seen = reports(|_| {
        let (promise, _resolver) = Promise::<i32, CloneFails>::pending();
        let output = all([promise.clone()]);
        // The first consumer gets a copy (whose clone panics), the last the
        // rejection itself.
        let copied = output.clone().map(|values| values.len());
        let moved = output.map(|values| values.len());
        promise.cancel();
        drop((copied, moved));
    });
    assert_eq!(seen, 1);
}

#[test]
fn a_handler_rejecting_after_it_saw_a_cancelled_input_is_reported_once() {
    // The handler ran: what it rejects with is its own rejection, whatever it saw.
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let rethrown = all([consumed]).catch(|_| Err::<Vec<i32>, _>(MyErr::Mine("rethrown")));
        cancelled.cancel();
        drop(rethrown.map(|values| values.len()));
    });
    assert_eq!(seen, 1);
}

#[test]
fn an_any_whose_inputs_were_all_cancelled_is_reported_as_with_error() {
    // `any` rejects with what `combine` makes of the reasons, not with one of
    // them: that is the user's reason (with `E = Error`, an aggregate, which is
    // reported too).
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let output = any_with([consumed], |_| MyErr::Mine("all failed"));
        cancelled.cancel();
        drop(output);
    });
    assert_eq!(seen, 1);
    let seen_with_error = reports(|_| {
        let (promise, _resolver) = Promise::<i32>::pending();
        let output = thenable::any([promise.clone()]);
        promise.cancel();
        drop(output);
    });
    assert_eq!(seen_with_error, 1);
}

#[test]
fn with_error_a_cancelled_input_passed_on_is_still_not_reported() {
    let seen = reports(|_| {
        let (promise, _resolver) = Promise::<i32>::pending();
        let (other, other_resolver) = Promise::<i32>::pending();
        let tail = all([promise.clone(), other]).then(|values| Ok(values.len()));
        let shielded = shield(promise.clone()).map(|v| v + 1);
        promise.cancel();
        drop((tail, shielded));
        other_resolver
    });
    assert_eq!(seen, 0);
}

#[test]
fn handlers_see_a_quiet_rejection_as_any_other() {
    within(|| {
        let event_loop = EventLoop::new();
        let reason = |reason: MyErr| match reason {
            MyErr::Lib(error) if error.is_cancelled() => Ok("cancelled"),
            MyErr::Lib(_) => Ok("another library error"),
            MyErr::Mine(text) => Ok(text),
        };
        let (consumed, cancelled, _resolver) = input();
        let passed_on = all([consumed]).map(|_| "fulfilled").catch(reason);
        cancelled.cancel();
        assert_eq!(event_loop.block_on(passed_on).unwrap(), "cancelled");
        let own = all([Promise::<i32, _>::rejected(MyErr::Mine("mine"))]);
        assert_eq!(
            event_loop
                .block_on(own.map(|_| "fulfilled").catch(reason))
                .unwrap(),
            "mine"
        );
    });
}

#[test]
fn a_then_child_of_a_cancelled_promise_is_cancelled_not_reported() {
    let seen = reports(|_| {
        let (consumed, cancelled, _resolver) = input();
        let child = consumed.then(|v| Ok::<_, MyErr>(v + 1));
        cancelled.cancel();
        drop(child);
    });
    assert_eq!(seen, 0);
}

// ---------------------------------------------------------------------------
// (d) A rejection a combinator took in that can reach nobody is reported, once
// ---------------------------------------------------------------------------

#[test]
fn a_shield_cancelled_before_its_input_rejects_reports_the_rejection_once() {
    let seen = reports(|event_loop| {
        let (inner, resolver) = Promise::<i32, MyErr>::pending();
        let outer = shield(inner);
        assert!(outer.cancel());
        assert!(resolver.reject(MyErr::Mine("after the shield was cancelled")));
        event_loop.run().unwrap();
        drop(outer);
    });
    assert_eq!(seen, 1);
}

#[test]
fn a_shield_that_lost_a_race_reports_its_input_rejecting_later_once() {
    let seen = reports(|event_loop| {
        let (inner, resolver) = Promise::<i32, MyErr>::pending();
        let winner = race([shield(inner), Promise::resolved(1)]);
        assert_eq!(event_loop.block_on(winner).unwrap(), 1);
        assert!(resolver.reject(MyErr::Mine("the loser's input")));
    });
    assert_eq!(seen, 1);
}

#[test]
fn a_cancelled_shield_whose_input_is_cancelled_or_rejects_quietly_reports_nothing() {
    let seen = reports(|event_loop| {
        let (inner, _resolver) = Promise::<i32, MyErr>::pending();
        let outer = shield(inner.clone());
        assert!(outer.cancel());
        assert!(inner.cancel());
        // Quiet: `all` rejected by an input cancelled elsewhere.
        let (consumed, cancelled, _input_resolver) = input();
        let outer = shield(all([consumed]));
        assert!(outer.cancel());
        assert!(cancelled.cancel());
        event_loop.run().unwrap();
    });
    assert_eq!(seen, 0);
}

#[test]
fn a_shield_handing_its_input_rejection_out_does_not_report_it() {
    let seen = reports(|event_loop| {
        let (inner, resolver) = Promise::<i32, MyErr>::pending();
        let outer = shield(inner);
        assert!(resolver.reject(MyErr::Mine("seen")));
        assert!(matches!(
            event_loop.block_on(outer),
            Err(MyErr::Mine("seen"))
        ));
    });
    assert_eq!(seen, 0);
}

#[test]
fn an_as_completed_dropped_with_a_rejection_not_handed_out_reports_it_once() {
    let seen = reports(|event_loop| {
        let mut completed = as_completed([
            Promise::resolved(1),
            Promise::rejected(MyErr::Mine("arrived, never asked for")),
            Promise::resolved(3),
        ]);
        event_loop.run().unwrap();
        let first = completed.next_promise().unwrap();
        assert_eq!(event_loop.block_on(first).unwrap(), 1);
        drop(completed);
    });
    assert_eq!(seen, 1);
}

#[test]
fn an_as_completed_dropped_with_a_request_waiting_hands_the_rejection_out_unreported() {
    // After the drop, the waiting request still gets the next outcome: handed
    // out, it is the request's to report, not the combinator's.
    let seen = reports(|event_loop| {
        let (first, first_resolver) = Promise::<i32, MyErr>::pending();
        let (second, _second_resolver) = Promise::<i32, MyErr>::pending();
        let mut completed = as_completed([first, second]);
        let request = completed.next_promise().unwrap();
        drop(completed);
        assert!(first_resolver.reject(MyErr::Mine("handed out after the drop")));
        assert!(matches!(
            event_loop.block_on(request),
            Err(MyErr::Mine("handed out after the drop"))
        ));
    });
    assert_eq!(seen, 0);
}

#[test]
fn an_as_completed_dropped_with_quiet_cancelled_or_handed_out_rejections_reports_nothing() {
    use futures::Stream;
    let seen = reports(|event_loop| {
        let (consumed, cancelled, _resolver) = input();
        let (quietly, cancel_quietly, _quiet_resolver) = input();
        let (handed, handed_resolver) = Promise::<i32, MyErr>::pending();
        let mut completed = as_completed([handed, consumed, all([quietly]).map(|v| v[0])]);
        let request = completed.next_promise().unwrap();
        assert!(handed_resolver.reject(MyErr::Mine("handed out")));
        assert!(matches!(
            event_loop.block_on(request),
            Err(MyErr::Mine("handed out"))
        ));
        assert!(cancelled.cancel() && cancel_quietly.cancel());
        event_loop.run().unwrap();
        assert_eq!(
            completed.size_hint().0,
            2,
            "both arrived, neither handed out"
        );
        drop(completed);
    });
    assert_eq!(seen, 0);
}
