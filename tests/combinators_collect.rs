//! Collection combinators (`all`, `all_settled`, `race`, `any`, `join`),
//! `as_completed` and `shield`: results in input order (or completion order for
//! `as_completed`), fail-fast, and cancellation of what is no longer wanted.
//!
//! No timing assertions. Orders come from timers of different lengths or from
//! resolvers settled in a chosen order. That cancelled work really stopped is shown
//! by a counter its handler would bump staying unchanged, by a `Resolver::on_cancel`
//! hook having run, and by `run()` returning although an hour-long timer was among
//! the inputs (`within` turns a hang into a failure, after a generous safety net).

mod common;

use std::thread;

use common::{after, fail_after, ms, within, Counter, Log, HOUR, MARK};
use futures::StreamExt;
use thenable::{
    all, all_settled, any, any_with, as_completed, join, race, set_unhandled_rejection_hook,
    shield, sleep, spawn, AsCompleted, Error, EventLoop, Join, Promise, Resolver,
};

/// A pending promise whose `Resolver::on_cancel` hook bumps `cancelled`: its root
/// was cancelled. Keep the resolver (dropping it would break the promise).
fn watched<T: Send + 'static>(cancelled: &Counter) -> (Promise<T>, Resolver<T>) {
    let (promise, resolver) = Promise::pending();
    let cancelled = cancelled.clone();
    resolver.on_cancel(move || cancelled.bump());
    (promise, resolver)
}

// ---------------------------------------------------------------------------
// all
// ---------------------------------------------------------------------------

#[test]
fn all_gives_values_in_input_order_when_timers_fire_out_of_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let p = all([
            after(ms(30), "a", &fired),
            after(ms(1), "b", &fired),
            after(ms(15), "c", &fired),
        ]);
        assert_eq!(event_loop.block_on(p).unwrap(), ["a", "b", "c"]);
        assert_eq!(fired.get(), 3);
    });
}

#[test]
fn all_gives_values_in_input_order_when_resolvers_settle_in_reverse() {
    within(|| {
        let event_loop = EventLoop::new();
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..5).map(|_| Promise::<usize>::pending()).unzip();
        let log = Log::default();
        let sink = log.clone();
        let p = Promise::all(promises).map(move |values| {
            sink.push(format!("{values:?}"));
            values
        });
        for (i, resolver) in resolvers.iter().enumerate().rev() {
            resolver.resolve(i * 10);
        }
        assert_eq!(event_loop.block_on(p).unwrap(), [0, 10, 20, 30, 40]);
        assert_eq!(log.entries(), ["[0, 10, 20, 30, 40]"]);
    });
}

#[test]
fn all_of_nothing_fulfils_with_an_empty_vec() {
    within(|| {
        let event_loop = EventLoop::new();
        let none: Vec<Promise<u8>> = Vec::new();
        let p = all(none);
        assert!(p.is_fulfilled());
        assert!(event_loop.block_on(p).unwrap().is_empty());
    });
}

#[test]
fn all_rejects_with_the_first_error_while_others_are_still_pending() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired) = (Counter::default(), Counter::default());
        let (never, resolver) = watched::<&str>(&cancelled);
        let p = all([
            after(HOUR, "late", &fired),
            fail_after(ms(20), "second"),
            fail_after(ms(1), "first"),
            never,
        ]);
        let error = event_loop.block_on(p).unwrap_err();
        assert_eq!(error.to_string(), "first");
        // The losers were cancelled up to their roots: the hour-long timer is gone
        // (otherwise run() would not return), the resolver's hook ran...
        event_loop.run().unwrap();
        assert_eq!(fired.get(), 0, "a cancelled timer's handler ran");
        assert_eq!(cancelled.get(), 1);
        assert!(!resolver.resolve("too late"));
    });
}

#[test]
fn all_leaves_an_input_running_when_someone_else_still_consumes_it() {
    within(|| {
        let event_loop = EventLoop::new();
        let (shared, resolver) = Promise::<i32>::pending();
        let mine = shared.clone();
        let p = all([shared, Promise::rejected(Error::msg("no"))]);
        assert_eq!(event_loop.block_on(p).unwrap_err().to_string(), "no");
        assert!(
            mine.is_pending(),
            "a promise with a live consumer was cancelled"
        );
        assert!(resolver.resolve(5));
        assert_eq!(event_loop.block_on(mine).unwrap(), 5);
    });
}

#[test]
fn cancelling_the_output_of_all_cancels_its_inputs() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired) = (Counter::default(), Counter::default());
        let (never, _resolver) = watched::<u8>(&cancelled);
        let p = all([after(HOUR, 1, &fired), never]);
        assert!(p.cancel());
        event_loop.run().unwrap();
        assert_eq!((fired.get(), cancelled.get()), (0, 1));
        assert!(event_loop.block_on(p).unwrap_err().is_cancelled());
    });
}

#[test]
fn cancelling_a_chain_that_adopted_all_cancels_its_inputs() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let inputs = fired.clone();
        let chain = Promise::<()>::resolved(())
            .then(move |()| all([after(HOUR, (), &inputs)]))
            .map(|_| ());
        event_loop.block_on(sleep(ms(5))).unwrap(); // the handler ran: all(...) is adopted
        assert!(chain.cancel());
        event_loop.run().unwrap();
        assert_eq!(fired.get(), 0);
    });
}

#[test]
fn cancelling_a_task_awaiting_all_cancels_its_inputs() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let inputs = fired.clone();
        let task = spawn(async move {
            all([after(HOUR, (), &inputs)]).await?;
            Ok::<_, Error>(())
        });
        event_loop.block_on(sleep(ms(5))).unwrap(); // the task is awaiting all(...)
        assert!(task.cancel());
        event_loop.run().unwrap();
        assert_eq!(fired.get(), 0);
    });
}

#[test]
fn an_input_cancelled_elsewhere_rejects_all_as_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let (input, _resolver) = Promise::<i32>::pending();
        let handle = input.clone();
        let p = all([input, Promise::resolved(1)]);
        assert!(handle.cancel());
        assert!(event_loop.block_on(p).unwrap_err().is_cancelled());
    });
}

#[test]
fn all_works_with_inputs_settled_from_other_threads() {
    within(|| {
        let event_loop = EventLoop::new();
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..8).map(|_| Promise::<usize>::pending()).unzip();
        let p = all(promises);
        let settlers: Vec<_> = resolvers
            .into_iter()
            .enumerate()
            .map(|(i, resolver)| thread::spawn(move || resolver.resolve(i)))
            .collect();
        assert_eq!(event_loop.block_on(p).unwrap(), (0..8).collect::<Vec<_>>());
        for settler in settlers {
            assert!(settler.join().unwrap());
        }
    });
}

// ---------------------------------------------------------------------------
// all_settled
// ---------------------------------------------------------------------------

#[test]
fn all_settled_never_rejects_and_keeps_input_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let (cancel_me, _resolver) = Promise::<&str>::pending();
        let handle = cancel_me.clone();
        let p = all_settled([
            fail_after(ms(20), "slow failure"),
            after(ms(1), "fast", &fired),
            cancel_me,
            fail_after(ms(5), "quick failure"),
            after(ms(10), "medium", &fired),
        ]);
        handle.cancel();
        let outcomes = event_loop.block_on(p).unwrap();
        assert_eq!(outcomes.len(), 5);
        assert_eq!(
            outcomes[0].as_ref().unwrap_err().to_string(),
            "slow failure"
        );
        assert_eq!(outcomes[1].as_ref().unwrap(), &"fast");
        assert!(outcomes[2].as_ref().unwrap_err().is_cancelled());
        assert_eq!(
            outcomes[3].as_ref().unwrap_err().to_string(),
            "quick failure"
        );
        assert_eq!(outcomes[4].as_ref().unwrap(), &"medium");
    });
}

#[test]
fn all_settled_of_nothing_fulfils_with_an_empty_vec() {
    within(|| {
        let event_loop = EventLoop::new();
        let p = Promise::<(), String>::all_settled(Vec::new());
        assert!(event_loop.block_on(p).unwrap().is_empty());
    });
}

// ---------------------------------------------------------------------------
// race
// ---------------------------------------------------------------------------

#[test]
fn race_takes_the_first_to_settle_and_cancels_the_losers() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired, won) = (Counter::default(), Counter::default(), Counter::default());
        let (never, _resolver) = watched::<&str>(&cancelled);
        let p = race([
            after(HOUR, "slow", &fired),
            never,
            after(ms(1), "fast", &won),
        ]);
        assert_eq!(event_loop.block_on(p).unwrap(), "fast");
        // The hour-long loser's timer was removed: run() returns, its handler never ran.
        event_loop.run().unwrap();
        assert_eq!((fired.get(), won.get(), cancelled.get()), (0, 1, 1));
    });
}

#[test]
fn race_drops_the_future_of_a_losing_task() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let guard = DropCounter(dropped.clone());
        let counter = finished.clone();
        let task = spawn(async move {
            let _guard = guard;
            sleep(HOUR).await?;
            counter.bump();
            Ok::<_, Error>("task")
        });
        let p = race([task, sleep(ms(1)).map(|()| "timer")]);
        assert_eq!(event_loop.block_on(p).unwrap(), "timer");
        event_loop.run().unwrap();
        assert_eq!((finished.get(), dropped.get()), (0, 1));
    });
}

/// Bumps its counter when dropped.
struct DropCounter(Counter);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.bump();
    }
}

#[test]
fn race_settles_with_a_rejection_that_comes_first() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let p = Promise::race([after(ms(30), 1, &fired), fail_after(ms(1), "first")]);
        assert_eq!(event_loop.block_on(p).unwrap_err().to_string(), "first");
        event_loop.run().unwrap();
        assert_eq!(fired.get(), 0);
    });
}

#[test]
fn race_of_nothing_stays_pending_without_keeping_the_loop_alive() {
    within(|| {
        let event_loop = EventLoop::new();
        let none: Vec<Promise<u8>> = Vec::new();
        let never = race(none);
        event_loop.run().unwrap(); // returns: nothing waits on it
        assert!(
            never.is_pending(),
            "JavaScript's Promise.race([]) never settles"
        );
        assert!(event_loop.block_on(never).unwrap_err().is_deadlock());
    });
}

// ---------------------------------------------------------------------------
// Common to all of them
// ---------------------------------------------------------------------------

#[test]
fn rejections_are_handled_by_the_combinator_and_reported_only_on_an_ignored_output() {
    within(|| {
        let event_loop = EventLoop::new();
        let reports = Log::default();
        let sink = reports.clone();
        set_unhandled_rejection_hook(move |e: &Error| sink.push(e.to_string()));
        let handled = all([
            fail_after::<u8>(ms(1), "all"),
            fail_after(ms(2), "all's loser"),
        ])
        .catch(|_| Ok(Vec::new()));
        let settled = all_settled([fail_after::<u8>(ms(1), "settled")]);
        let mut completed = as_completed([fail_after::<u8>(ms(1), "completed")]);
        let streamed = completed.next_promise().unwrap().catch(|_| Ok(0));
        let _ignored = race([
            fail_after::<u8>(ms(3), "nobody listens"),
            fail_after(ms(4), "race's loser"),
        ]);
        event_loop.run().unwrap();
        assert_eq!(reports.entries(), ["nobody listens"]);
        assert!(event_loop.block_on(handled).unwrap().is_empty());
        assert!(event_loop.block_on(settled).unwrap()[0].is_err());
        assert_eq!(event_loop.block_on(streamed).unwrap(), 0);
    });
}

#[test]
fn waiting_on_a_combinator_of_stuck_work_is_a_deadlock_not_a_hang() {
    within(|| {
        let event_loop = EventLoop::new();
        let stuck = || spawn(std::future::pending::<Result<u8, Error>>());
        let error = event_loop.block_on(all([stuck(), stuck()])).unwrap_err();
        assert!(error.is_deadlock(), "{error}");
        let error = event_loop.block_on(race([stuck()])).unwrap_err();
        assert!(error.is_deadlock(), "{error}");
        let error = event_loop.block_on(shield(stuck())).unwrap_err();
        assert!(error.is_deadlock(), "{error}");
    });
}

// ---------------------------------------------------------------------------
// any
// ---------------------------------------------------------------------------

#[test]
fn any_takes_the_first_fulfilment_after_earlier_rejections() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired, won) = (Counter::default(), Counter::default(), Counter::default());
        let (never, _resolver) = watched::<&str>(&cancelled);
        let p = any([
            fail_after(ms(1), "down"),
            after(HOUR, "slow", &fired),
            after(ms(10), "ok", &won),
            never,
        ]);
        assert_eq!(event_loop.block_on(p).unwrap(), "ok");
        event_loop.run().unwrap();
        assert_eq!((fired.get(), won.get(), cancelled.get()), (0, 1, 1));
    });
}

#[test]
fn any_aggregates_every_reason_in_input_order_when_all_reject() {
    within(|| {
        let event_loop = EventLoop::new();
        let reasons = [Error::msg("a"), Error::msg("b"), Error::msg("c")];
        let p = any([
            sleep(ms(20)).then({
                let e = reasons[0].clone();
                move |()| Err::<u8, _>(e)
            }),
            Promise::rejected(reasons[1].clone()),
            sleep(ms(5)).then({
                let e = reasons[2].clone();
                move |()| Err(e)
            }),
        ]);
        let error = event_loop.block_on(p).unwrap_err();
        assert!(error.is_aggregate());
        assert_eq!(error.errors().len(), 3);
        for (got, expected) in error.errors().iter().zip(&reasons) {
            assert!(got.same_as(expected), "{got} is not {expected}");
        }
    });
}

#[test]
fn any_of_nothing_rejects_with_an_empty_aggregate() {
    within(|| {
        let event_loop = EventLoop::new();
        let none: Vec<Promise<u8>> = Vec::new();
        let error = event_loop.block_on(any(none)).unwrap_err();
        assert!(error.is_aggregate());
        assert!(error.errors().is_empty());
    });
}

#[test]
fn any_with_combines_reasons_of_another_error_type() {
    within(|| {
        let event_loop = EventLoop::new();
        let p = any_with(
            [
                sleep(ms(10))
                    .map_err(String::from)
                    .then(|()| Err::<u8, _>("x".to_string())),
                Promise::rejected("y".to_string()),
            ],
            |reasons| reasons.join(","),
        );
        assert_eq!(event_loop.block_on(p).unwrap_err(), "x,y");
        let none: Vec<Promise<u8, String>> = Vec::new();
        let empty = any_with(none, |reasons| format!("{} reasons", reasons.len()));
        assert_eq!(event_loop.block_on(empty).unwrap_err(), "0 reasons");
    });
}

#[test]
fn a_panicking_combine_rejects_any_with_a_panic_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let p = any_with([Promise::<u8>::rejected(Error::msg("x"))], |_| {
            std::panic::panic_any("combine failed")
        });
        let error = event_loop.block_on(p).unwrap_err();
        assert!(error.is_panic(), "{error}");
        assert!(error.to_string().contains("combine failed"));
    });
}

/// On an empty input `combine` runs at once, inside `any_with`: its panic must
/// still become the output's rejection, as on inputs that all rejected, not
/// unwind into the caller (which only built a promise).
#[test]
fn a_panicking_combine_on_an_empty_input_rejects_instead_of_unwinding() {
    within(|| {
        let event_loop = EventLoop::new();
        let none: Vec<Promise<u8>> = Vec::new();
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            any_with(none, |_| {
                std::panic::panic_any(format!("combine failed {MARK}"))
            })
        }));
        let p = built.expect("the panic unwound out of any_with");
        assert!(p.is_rejected());
        let error = event_loop.block_on(p).unwrap_err();
        assert!(error.is_panic(), "{error}");
        assert!(error.to_string().contains("combine failed"));
    });
}

#[test]
fn any_with_io_errors_wraps_them_in_an_aggregate() {
    within(|| {
        let event_loop = EventLoop::new();
        use std::io::{Error as IoError, ErrorKind};
        let p = any([Promise::<u8, IoError>::rejected(IoError::from(
            ErrorKind::NotFound,
        ))]);
        let error = event_loop.block_on(p).unwrap_err();
        let inner = error.get_ref().unwrap().to_string();
        assert_eq!(inner, "1 error: entity not found");
    });
}

// ---------------------------------------------------------------------------
// join (tuples)
// ---------------------------------------------------------------------------

#[test]
fn join_two_promises_of_different_types_in_input_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let slow_number = after(ms(20), 42_u64, &fired);
        let fast_text = after(ms(1), String::from("text"), &fired);
        let p = join((slow_number, fast_text));
        assert_eq!(event_loop.block_on(p).unwrap(), (42, "text".to_string()));
    });
}

#[test]
fn join_twelve_promises_of_different_types() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let p = Promise::join((
            after(ms(12), 1_u8, &fired),
            after(ms(11), 2_u16, &fired),
            after(ms(10), 3_u32, &fired),
            after(ms(9), 4_u64, &fired),
            after(ms(8), 5_i8, &fired),
            after(ms(7), 6_i16, &fired),
            after(ms(6), 7_i32, &fired),
            after(ms(5), 8_i64, &fired),
            after(ms(4), 'n', &fired),
            after(ms(3), "ten", &fired),
            after(ms(2), String::from("eleven"), &fired),
            after(ms(1), vec![12], &fired),
        ));
        let values = event_loop.block_on(p).unwrap();
        assert_eq!(
            values,
            (
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                'n',
                "ten",
                "eleven".to_string(),
                vec![12]
            )
        );
        assert_eq!(fired.get(), 12);
    });
}

#[test]
fn join_fails_fast_and_cancels_the_rest() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired) = (Counter::default(), Counter::default());
        let (never, _resolver) = watched::<bool>(&cancelled);
        let p = (
            after(HOUR, 1_u8, &fired),
            fail_after::<&str>(ms(1), "no"),
            never,
        )
            .join();
        assert_eq!(event_loop.block_on(p).unwrap_err().to_string(), "no");
        event_loop.run().unwrap();
        assert_eq!((fired.get(), cancelled.get()), (0, 1));
    });
}

// ---------------------------------------------------------------------------
// as_completed
// ---------------------------------------------------------------------------

#[test]
fn as_completed_streams_outcomes_in_completion_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let mut outcomes = as_completed([
            after(ms(30), "slow", &fired),
            fail_after(ms(15), "medium failure"),
            after(ms(1), "fast", &fired),
        ]);
        let seen = event_loop
            .block_on(async move {
                let mut seen = Vec::new();
                while let Some(outcome) = outcomes.next().await {
                    seen.push(outcome.map_or_else(|e| e.to_string(), String::from));
                }
                Ok::<_, Error>(seen)
            })
            .unwrap();
        assert_eq!(seen, ["fast", "medium failure", "slow"]);
    });
}

#[test]
fn as_completed_follows_the_order_resolvers_settle_in() {
    within(|| {
        let event_loop = EventLoop::new();
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..4).map(|_| Promise::<usize>::pending()).unzip();
        let outcomes = as_completed(promises);
        for i in [2, 0, 3, 1] {
            resolvers[i].resolve(i);
        }
        let seen = event_loop
            .block_on(async move {
                let values = outcomes.map(Result::unwrap).collect::<Vec<_>>().await;
                Ok::<_, Error>(values)
            })
            .unwrap();
        assert_eq!(seen, [2, 0, 3, 1]);
    });
}

/// Logs each outcome as it arrives by chaining `then`s, no async.
fn drain(mut rest: AsCompleted<&'static str>, log: Log) -> Promise<()> {
    match rest.next_promise() {
        None => {
            log.push("end");
            Promise::resolved(())
        }
        Some(next) => next.then(move |value| {
            log.push(value);
            drain(rest, log)
        }),
    }
}

#[test]
fn as_completed_hands_out_promises_in_completion_order_for_then_chains() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let outcomes = as_completed([
            after(ms(20), "c", &fired),
            after(ms(1), "a", &fired),
            after(ms(10), "b", &fired),
        ]);
        let log = Log::default();
        event_loop.block_on(drain(outcomes, log.clone())).unwrap();
        assert_eq!(log.entries(), ["a", "b", "c", "end"]);
    });
}

#[test]
fn promises_handed_out_early_get_the_earliest_outcomes() {
    within(|| {
        let event_loop = EventLoop::new();
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| Promise::<usize>::pending()).unzip();
        let mut outcomes = as_completed(promises);
        let first = outcomes.next_promise().unwrap();
        let second = outcomes.next_promise().unwrap();
        let third = outcomes.next_promise().unwrap();
        assert!(outcomes.next_promise().is_none());
        for i in [1, 2, 0] {
            resolvers[i].resolve(i);
        }
        let firsts = join((first, second, third));
        assert_eq!(event_loop.block_on(firsts).unwrap(), (1, 2, 0));
    });
}

#[test]
fn a_cancelled_handed_out_promise_gives_its_outcome_to_the_next_request() {
    within(|| {
        let event_loop = EventLoop::new();
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..2).map(|_| Promise::<usize>::pending()).unzip();
        let mut outcomes = as_completed(promises);
        let given_up = outcomes.next_promise().unwrap();
        assert!(given_up.cancel());
        resolvers[1].resolve(1);
        resolvers[0].resolve(0);
        let seen = event_loop
            .block_on(async move {
                Ok::<_, Error>(outcomes.map(Result::unwrap).collect::<Vec<_>>().await)
            })
            .unwrap();
        assert_eq!(seen, [1, 0]);
    });
}

#[test]
fn dropping_as_completed_cancels_what_is_still_pending() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired, first) =
            (Counter::default(), Counter::default(), Counter::default());
        let (never, _resolver) = watched::<&str>(&cancelled);
        let mut outcomes = as_completed([
            after(HOUR, "slow", &fired),
            never,
            after(ms(1), "fast", &first),
        ]);
        let fastest = event_loop
            .block_on(async move {
                let fastest = outcomes.next().await.unwrap()?;
                drop(outcomes);
                Ok::<_, Error>(fastest)
            })
            .unwrap();
        assert_eq!(fastest, "fast");
        event_loop.run().unwrap();
        assert_eq!((fired.get(), first.get(), cancelled.get()), (0, 1, 1));
    });
}

#[test]
fn dropping_as_completed_waits_for_promises_already_handed_out() {
    within(|| {
        let event_loop = EventLoop::new();
        let (cancelled, fired) = (Counter::default(), Counter::default());
        let (never, _resolver) = watched::<&str>(&cancelled);
        let mut outcomes = as_completed([after(ms(5), "handed out", &fired), never]);
        let promised = outcomes.next_promise().unwrap();
        drop(outcomes);
        assert_eq!(
            cancelled.get(),
            0,
            "cancelled before the handed-out promise had its outcome"
        );
        assert_eq!(event_loop.block_on(promised).unwrap(), "handed out");
        assert_eq!(cancelled.get(), 1);
    });
}

#[test]
fn as_completed_of_nothing_ends_at_once() {
    within(|| {
        let event_loop = EventLoop::new();
        let mut outcomes = as_completed(Vec::<Promise<u8>>::new());
        assert!(outcomes.next_promise().is_none());
        let next = event_loop
            .block_on(async move { Ok::<_, Error>(outcomes.next().await.is_none()) })
            .unwrap();
        assert!(next);
    });
}

// ---------------------------------------------------------------------------
// shield
// ---------------------------------------------------------------------------

#[test]
fn shield_keeps_the_inner_promise_alive_when_the_outer_is_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let (fired, cancelled) = (Counter::default(), Counter::default());
        let (inner, resolver) = watched::<u8>(&cancelled);
        let inner = inner.then({
            let fired = fired.clone();
            move |v| {
                fired.bump();
                Ok(v)
            }
        });
        let outer = shield(inner);
        assert!(outer.cancel());
        assert!(outer.is_cancelled());
        assert!(resolver.resolve(7), "the inner root was cancelled");
        event_loop.run().unwrap();
        assert_eq!((fired.get(), cancelled.get()), (1, 0));
    });
}

#[test]
fn a_shielded_race_loser_finishes_while_an_unshielded_one_is_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let (shielded, unshielded, winner) =
            (Counter::default(), Counter::default(), Counter::default());
        let p = race([
            after(ms(20), "shielded", &shielded).shield(),
            after(ms(20), "unshielded", &unshielded),
            after(ms(1), "winner", &winner),
        ]);
        assert_eq!(event_loop.block_on(p).unwrap(), "winner");
        event_loop.run().unwrap();
        assert_eq!((shielded.get(), unshielded.get(), winner.get()), (1, 0, 1));
    });
}

#[test]
fn a_shielded_promise_follows_its_input() {
    within(|| {
        let event_loop = EventLoop::new();
        let ok = shield(Promise::<i32>::resolved(1));
        let failed = shield(Promise::<i32>::rejected(Error::msg("inner")));
        assert_eq!(event_loop.block_on(ok).unwrap(), 1);
        assert_eq!(
            event_loop.block_on(failed).unwrap_err().to_string(),
            "inner"
        );
    });
}
