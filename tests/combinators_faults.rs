//! The combinators under stress: inputs cancelled by someone else,
//! cancellation from other threads, inputs shared with other consumers, user code
//! that panics, and huge inputs. Each test states the behaviour the documentation
//! promises (docs/combinators.md, docs/design.md "Cancellation") and checks it with
//! counts and orders only; a hang is turned into a failure by the watchdog of
//! [`within_for`].

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{
    after, hour_long_task, ms, on_small_stack, within, within_for, Counter, Log, HOUR, MARK,
};
use futures::StreamExt;
use thenable::{
    all, all_settled, any, as_completed, join, map_concurrent, queue_microtask, race, retry, scope,
    sleep, Error, EventLoop, Promise, Resolver, Scope,
};

/// Long enough for a passing body (milliseconds), short enough that a hang fails
/// the test quickly.
const HANG: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// map_concurrent
// ---------------------------------------------------------------------------

/// An item's promise cancelled by someone else (a clone of it kept elsewhere) must
/// settle the result, as an input cancelled elsewhere does for `all`: counted as a
/// rejection for which `is_cancelled()` holds. It must not leave the result pending
/// for ever (nor turn into a deadlock report).
#[test]
fn map_concurrent_settles_when_an_items_promise_is_cancelled_elsewhere() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (item, _resolver) = Promise::<i32>::pending();
        let elsewhere = item.clone();
        let mut handed = Some(item);
        let mapped = map_concurrent(0..2, 2, move |n| match n {
            0 => handed.take().expect("item 0 is taken once"),
            _ => Promise::resolved(n),
        });
        // Let the task start both items.
        event_loop.block_on(sleep(ms(1))).unwrap();
        assert!(elsewhere.cancel());
        let error = event_loop.block_on(mapped).unwrap_err();
        assert!(error.is_cancelled(), "not a cancellation: {error:?}");
    });
}

// ---------------------------------------------------------------------------
// retry
// ---------------------------------------------------------------------------

/// Cancelling a retry withdraws it from the attempt in flight; an attempt's promise
/// that something else also consumes keeps running for that consumer ("An input
/// that has another consumer keeps running for that one").
#[test]
fn cancelling_retry_leaves_a_shared_attempt_to_its_other_consumer() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (shared, resolver) = Promise::<i32>::pending();
        let attempt = shared.clone();
        let retried = retry(3, [Duration::ZERO], move || attempt.clone());
        let other = shared.map(|v| v * 10);
        event_loop.block_on(sleep(ms(1))).unwrap(); // the first attempt is in flight
        assert!(retried.cancel());
        assert!(
            !other.is_cancelled(),
            "the other consumer of the attempt was cancelled"
        );
        assert!(resolver.resolve(4), "the shared attempt was cancelled");
        assert_eq!(event_loop.block_on(other).unwrap(), 40);
    });
}

// ---------------------------------------------------------------------------
// timeout
// ---------------------------------------------------------------------------

/// A timeout cancelled from another thread (a `Promise` is `Send`) removes its
/// timer on its loop, as a `sleep` cancelled from another thread does: `run()`
/// must not wait for the limit.
#[test]
fn a_timeout_cancelled_from_another_thread_removes_its_timer() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let limited = after(HOUR, 1, &fired).timeout(HOUR / 2);
        let canceller = thread::spawn(move || {
            assert!(limited.cancel());
        });
        canceller.join().unwrap();
        event_loop.run().unwrap(); // would wait half an hour for the limit's timer
        assert_eq!(fired.get(), 0);
    });
}

/// Work whose resolver belongs to another thread's loop settles there, and so do
/// the timeout's handlers that see it: the timeout's timer, on this thread's loop,
/// must still be removed, or `run()` waits for the limit.
#[test]
fn a_timeout_whose_work_settles_on_another_loop_removes_its_timer() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (sent, received) = std::sync::mpsc::channel();
        let worker = thread::spawn(move || {
            let worker_loop = EventLoop::new();
            let (work, resolver) = Promise::<u64>::pending();
            let (go, start) = Promise::<()>::pending();
            sent.send((work, start)).unwrap();
            // Resolved on this thread's loop: the reactions to `work` run here.
            worker_loop
                .block_on(go.map(move |()| {
                    resolver.resolve(5);
                }))
                .unwrap();
        });
        let (work, start) = received.recv().unwrap();
        let limited = work.timeout(HOUR / 2);
        start.resolve(());
        assert_eq!(event_loop.block_on(limited).unwrap(), 5);
        worker.join().unwrap();
        event_loop.run().unwrap(); // would wait half an hour for the limit's timer
    });
}

// ---------------------------------------------------------------------------
// Order against Node.js 20
// ---------------------------------------------------------------------------

/// A handler of any value type that logs `event`.
fn step<V>(log: &Log, event: &'static str) -> impl FnOnce(V) -> Result<(), Error> + Send + 'static {
    let log = log.clone();
    move |_| {
        log.push(event);
        Ok(())
    }
}

/// A handler of any value type that logs what `describe` makes of the value.
fn logs<V>(
    log: &Log,
    describe: impl FnOnce(V) -> String + Send + 'static,
) -> impl FnOnce(V) -> Result<(), Error> + Send + 'static {
    let log = log.clone();
    move |value| {
        log.push(describe(value));
        Ok(())
    }
}

/// Every iterator combinator at once, over shared inputs that settle (one
/// rejecting) between microtasks, one of them from inside a microtask. Checked
/// against Node.js 20:
///
/// ```js
/// const log = [];
/// let ra, rb, rc;
/// const a = new Promise((res, rej) => { ra = [res, rej]; });
/// const b = new Promise((res, rej) => { rb = [res, rej]; });
/// const c = new Promise((res, rej) => { rc = [res, rej]; });
/// Promise.all([a, b, c]).then(() => log.push('all'), (e) => log.push('all rejected ' + e));
/// Promise.any([b, a, c]).then((v) => log.push('any ' + v), (e) => log.push('any rejected'));
/// Promise.race([c, b]).then((v) => log.push('race ' + v), (e) => log.push('race rejected ' + e));
/// Promise.allSettled([c, a]).then((r) => log.push('allSettled ' + r.map(x => x.status).join(',')));
/// // The tuple `join` in Rust:
/// Promise.all([a, b, c]).then(() => log.push('join'), (e) => log.push('join rejected ' + e));
/// Promise.any([b, Promise.reject('e0')]).then((v) => log.push('any2 ' + v),
///     (e) => log.push('any2 rejected ' + e.errors.join(',')));
/// b.catch(() => log.push('b.catch'));
/// rb[1]('e1');
/// queueMicrotask(() => log.push('m1'));
/// ra[0](1);
/// c.then(() => log.push('c.then'));
/// queueMicrotask(() => { log.push('m2'); rc[0](3); });
/// ```
///
/// node: `["b.catch","m1","m2","all rejected e1","race rejected e1",
/// "join rejected e1","any2 rejected e1,e0","any 1","c.then",
/// "allSettled fulfilled,fulfilled"]`
#[test]
fn combinators_over_shared_inputs_settle_in_the_order_node_does() {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        let (a, ra) = Promise::<u64>::pending();
        let (b, rb) = Promise::<u64>::pending();
        let (c, rc) = Promise::<u64>::pending();
        let rejected = |event: &'static str| logs(&log, move |e| format!("{event} rejected {e}"));
        let _all = all([a.clone(), b.clone(), c.clone()])
            .then_or_catch(step(&log, "all"), rejected("all"));
        let _any = any([b.clone(), a.clone(), c.clone()]).then_or_catch(
            logs(&log, |v| format!("any {v}")),
            step(&log, "any rejected"),
        );
        let _race = race([c.clone(), b.clone()])
            .then_or_catch(logs(&log, |v| format!("race {v}")), rejected("race"));
        let _settled = all_settled([c.clone(), a.clone()]).then(logs(
            &log,
            |outcomes: Vec<Result<u64, Error>>| {
                let statuses: Vec<&str> = outcomes
                    .iter()
                    .map(|o| if o.is_ok() { "fulfilled" } else { "rejected" })
                    .collect();
                format!("allSettled {}", statuses.join(","))
            },
        ));
        let _join = join((a.clone(), b.clone(), c.clone()))
            .then_or_catch(step(&log, "join"), rejected("join"));
        let _any2 = any([b.clone(), Promise::rejected(Error::msg("e0"))]).then_or_catch(
            logs(&log, |v| format!("any2 {v}")),
            logs(&log, |e: Error| {
                let reasons: Vec<String> = e.errors().iter().map(Error::to_string).collect();
                format!("any2 rejected {}", reasons.join(","))
            }),
        );
        let _b = b.then_or_catch(|_| Ok(()), step(&log, "b.catch"));
        rb.reject(Error::msg("e1"));
        let m1 = log.clone();
        queue_microtask(move || m1.push("m1"));
        ra.resolve(1);
        let _c = c.then(step(&log, "c.then"));
        let m2 = log.clone();
        queue_microtask(move || {
            m2.push("m2");
            rc.resolve(3);
        });
        event_loop.run().unwrap();
        assert_eq!(
            log.entries(),
            [
                "b.catch",
                "m1",
                "m2",
                "all rejected e1",
                "race rejected e1",
                "join rejected e1",
                "any2 rejected e1,e0",
                "any 1",
                "c.then",
                "allSettled fulfilled,fulfilled",
            ]
        );
    });
}

/// Inputs settled already, and empty inputs, against the tick at which Node.js 20
/// settles the same calls:
///
/// ```js
/// const log = [];
/// Promise.all([Promise.resolve(1), Promise.resolve(2)]).then(() => log.push('all'));
/// Promise.race([Promise.reject('x'), Promise.resolve(2)]).then(() => {}, () => log.push('race'));
/// Promise.any([Promise.reject('x'), Promise.resolve(3)]).then(() => log.push('any'));
/// Promise.allSettled([Promise.resolve(1)]).then(() => log.push('allSettled'));
/// Promise.any([]).catch(() => log.push('any[]'));
/// Promise.all([]).then(() => log.push('all[]'));
/// Promise.allSettled([]).then(() => log.push('allSettled[]'));
/// Promise.race([Promise.resolve(1)]).then(() => log.push('race1'));
/// Promise.resolve().then(() => log.push('p1')).then(() => log.push('p2')).then(() => log.push('p3'));
/// ```
///
/// node: `["any[]","all[]","allSettled[]","p1","all","race","any","allSettled",
/// "race1","p2","p3"]`
#[test]
fn settled_and_empty_inputs_settle_at_the_tick_node_does() {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        let none = Vec::<Promise<u64>>::new;
        let _all = all([Promise::<u64>::resolved(1), Promise::resolved(2)]).then(step(&log, "all"));
        let _race = race([
            Promise::<u64>::rejected(Error::msg("x")),
            Promise::resolved(2),
        ])
        .then_or_catch(|_| Ok(()), step(&log, "race"));
        let _any = any([
            Promise::<u64>::rejected(Error::msg("x")),
            Promise::resolved(3),
        ])
        .then(step(&log, "any"));
        let _settled = all_settled([Promise::<u64>::resolved(1)]).then(step(&log, "allSettled"));
        let _any_none = any(none()).then_or_catch(|_| Ok(()), step(&log, "any[]"));
        let _all_none = all(none()).then(step(&log, "all[]"));
        let _settled_none = all_settled(none()).then(step(&log, "allSettled[]"));
        let _race1 = race([Promise::<u64>::resolved(1)]).then(step(&log, "race1"));
        let _chain = Promise::<()>::resolved(())
            .then(step(&log, "p1"))
            .then(step(&log, "p2"))
            .then(step(&log, "p3"));
        event_loop.run().unwrap();
        assert_eq!(
            log.entries(),
            [
                "any[]",
                "all[]",
                "allSettled[]",
                "p1",
                "all",
                "race",
                "any",
                "allSettled",
                "race1",
                "p2",
                "p3",
            ]
        );
    });
}

// ---------------------------------------------------------------------------
// User code that panics
// ---------------------------------------------------------------------------

/// A value whose drop panics, once among all its clones, if armed: the fuse is
/// shared, so that a drop during the unwinding does not panic again (an abort).
#[derive(Clone, Debug)]
struct Bomb(Option<Arc<AtomicBool>>);

impl Bomb {
    fn armed() -> Bomb {
        Bomb(Some(Arc::new(AtomicBool::new(true))))
    }

    fn is_armed(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|fuse| fuse.load(Ordering::SeqCst))
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if let Some(fuse) = &self.0 {
            if fuse.swap(false, Ordering::SeqCst) && !thread::panicking() {
                panic!("a value's drop {MARK}");
            }
        }
    }
}

/// A race decided already drops the outcome of a loser that settles before the
/// losers are let go. If that drop (user code) panics, the loser's other consumers
/// must still get its outcome: the loser must not be left half-settled.
#[test]
fn a_panicking_drop_of_a_losers_late_value_leaves_its_other_consumers_served() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (winner, wins) = Promise::<Bomb>::pending();
        let (loser, resolver) = Promise::<Bomb>::pending();
        let other = loser.clone();
        let raced = race([winner, loser]);
        wins.resolve(Bomb(None));
        // Decided: the race's copy of the loser's value is dropped as it arrives.
        let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            resolver.resolve(Bomb::armed())
        }));
        assert!(!event_loop.block_on(raced).unwrap().is_armed());
        assert!(
            !other.is_pending(),
            "the loser is still pending after it was resolved (resolve: {:?})",
            settled.map_err(|_| "panicked")
        );
        assert!(event_loop.block_on(other).is_ok());
    });
}

/// `join` decided by a rejection cancels the links of the other inputs. One link
/// may already hold its input's value, queued (that input settled in the same
/// round): cancelling it drops the value. If that drop panics, the links after it
/// must still be cancelled, or the work behind them (an hour-long timer here)
/// keeps the loop alive.
#[test]
fn a_panicking_drop_during_joins_fail_fast_still_cancels_the_rest() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let (failing, fails) = Promise::<u8>::pending();
        let (holding, holds) = Promise::<Bomb>::pending();
        let joined = join((failing, holding, after(HOUR, (), &fired)));
        fails.reject(Error::msg("refused"));
        holds.resolve(Bomb::armed());
        let error = event_loop.block_on(joined).unwrap_err();
        assert_eq!(error.to_string(), "refused");
        event_loop.run().unwrap(); // the hour-long input must have been cancelled
        assert_eq!(fired.get(), 0);
    });
}

/// A mapper that panics ends `map_concurrent` with a panic error, and the work
/// already in flight is cancelled (not left running for an hour).
#[test]
fn a_panicking_mapper_cancels_the_work_in_flight() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let inputs = fired.clone();
        let mapped = map_concurrent(0..3, 3, move |n| {
            if n == 2 {
                panic!("mapper {MARK}");
            }
            after(HOUR, n, &inputs)
        });
        let error = event_loop.block_on(mapped).unwrap_err();
        assert!(error.is_panic(), "not a panic error: {error:?}");
        event_loop.run().unwrap(); // the two hour-long items are gone
        assert_eq!(fired.get(), 0);
    });
}

/// A panic in `attempt`, or in the backoff iterator (both user code), ends the
/// retries with a panic error; no further attempt is made.
#[test]
fn a_panic_in_an_attempt_or_in_the_backoff_ends_retry() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let calls = Counter::default();
        let counter = calls.clone();
        let panicking_attempt = retry(5, [Duration::ZERO; 4], move || {
            if counter.bump_and_get() == 2 {
                panic!("attempt {MARK}");
            }
            Promise::<()>::rejected(Error::msg("down"))
        });
        let error = event_loop.block_on(panicking_attempt).unwrap_err();
        assert!(error.is_panic(), "not a panic error: {error:?}");
        assert_eq!(calls.get(), 2);

        let tries = Counter::default();
        let counter = tries.clone();
        let pauses = (0..).map(|n: u32| {
            if n == 1 {
                panic!("backoff {MARK}");
            }
            Duration::ZERO
        });
        let panicking_backoff = retry(5, pauses, move || {
            counter.bump();
            Promise::<()>::rejected(Error::msg("down"))
        });
        let error = event_loop.block_on(panicking_backoff).unwrap_err();
        assert!(error.is_panic(), "not a panic error: {error:?}");
        assert_eq!(tries.get(), 2);
        event_loop.run().unwrap();
    });
}

// ---------------------------------------------------------------------------
// Huge inputs, on a small stack
// ---------------------------------------------------------------------------

/// 100,000 inputs, or 100,000 levels.
const HUGE: usize = 100_000;

#[test]
fn every_collection_combinator_takes_a_hundred_thousand_inputs() {
    on_small_stack(|| {
        let event_loop = EventLoop::new();
        let (promises, resolvers): (Vec<Promise<usize>>, Vec<_>) =
            (0..HUGE).map(|_| Promise::pending()).unzip();
        let copies: Vec<Promise<usize>> = promises.iter().map(Promise::clone).collect();
        let everything = all(promises);
        let outcomes = all_settled(copies);
        // Settled in reverse: the values still come back in input order.
        for (i, resolver) in resolvers.iter().enumerate().rev() {
            resolver.resolve(i);
        }
        let values = event_loop.block_on(everything).unwrap();
        assert!(values.iter().copied().eq(0..HUGE));
        let outcomes = event_loop.block_on(outcomes).unwrap();
        assert!(outcomes.into_iter().map(Result::unwrap).eq(0..HUGE));

        // `as_completed`, drained as a stream: each outcome once.
        let (promises, resolvers): (Vec<Promise<usize>>, Vec<_>) =
            (0..HUGE).map(|_| Promise::pending()).unzip();
        let mut completed = as_completed(promises);
        for (i, resolver) in resolvers.iter().enumerate().rev() {
            resolver.resolve(i);
        }
        let order = event_loop
            .block_on(async move {
                let mut order = Vec::with_capacity(HUGE);
                while let Some(outcome) = completed.next().await {
                    order.push(outcome?);
                }
                Ok::<_, Error>(order)
            })
            .unwrap();
        assert!(
            order.into_iter().eq((0..HUGE).rev()),
            "not in completion order"
        );

        // `any` of rejections only: every reason, in input order.
        let reasons = (0..HUGE).map(|i| Promise::<u8>::rejected(Error::msg(i)));
        let error = event_loop.block_on(any(reasons)).unwrap_err();
        assert_eq!(error.errors().len(), HUGE);
        assert_eq!(error.errors()[HUGE - 1].to_string(), (HUGE - 1).to_string());
    });
}

/// A race decided by its last input cancels 99,999 hour-long losers, and an `all`
/// whose output is cancelled releases 100,000 of them: `run()` then returns.
#[test]
fn a_hundred_thousand_losers_are_cancelled_on_small_stack() {
    on_small_stack(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let mut racers: Vec<Promise<usize>> =
            (0..HUGE - 1).map(|i| after(HOUR, i, &fired)).collect();
        racers.push(Promise::resolved(HUGE));
        assert_eq!(event_loop.block_on(race(racers)).unwrap(), HUGE);
        let pending = all((0..HUGE).map(|i| after(HOUR, i, &fired)));
        assert!(pending.cancel());
        let mut completed = as_completed((0..HUGE).map(|i| after(HOUR, i, &fired)));
        let next = completed.next_promise().unwrap();
        drop(completed);
        assert!(next.cancel()); // nothing waits any more
        event_loop.run().unwrap();
        assert_eq!(fired.get(), 0);
    });
}

/// Combinators nested 100,000 deep settle, and cancel, level by level from the
/// queue, not by recursion.
#[test]
fn combinators_nested_a_hundred_thousand_deep_settle_and_cancel() {
    on_small_stack(|| {
        let event_loop = EventLoop::new();
        let (leaf, resolver) = Promise::<usize>::pending();
        let mut nested = leaf;
        for level in 0..HUGE {
            nested = match level % 3 {
                0 => race([nested]),
                1 => any([nested]),
                _ => all([nested]).map(|mut values| values.pop().unwrap()),
            };
        }
        resolver.resolve(7);
        assert_eq!(event_loop.block_on(nested).unwrap(), 7);

        let cancelled = Counter::default();
        let (leaf, resolver) = Promise::<usize>::pending();
        let flag = cancelled.clone();
        resolver.on_cancel(move || flag.bump());
        let mut nested = leaf;
        for _ in 0..HUGE {
            nested = race([nested]);
        }
        assert!(nested.cancel());
        assert_eq!(
            cancelled.get(),
            1,
            "the cancellation did not reach the leaf"
        );
        event_loop.run().unwrap();
    });
}

/// 100,000 items through `map_concurrent`, a few at a time, each already
/// fulfilled: one task, no recursion per item.
#[test]
fn map_concurrent_takes_a_hundred_thousand_items() {
    on_small_stack(|| {
        let event_loop = EventLoop::new();
        let doubled = map_concurrent(0..HUGE, 7, |n| Promise::<usize>::resolved(n * 2));
        let values = event_loop.block_on(doubled).unwrap();
        assert!(values.into_iter().eq((0..HUGE).map(|n| n * 2)));
    });
}

// ---------------------------------------------------------------------------
// Cancellation racing settlement on other threads
// ---------------------------------------------------------------------------

const ROUNDS: u64 = 40;

/// `n` pending promises and their resolvers.
fn pending(n: usize) -> (Vec<Promise<u64>>, Vec<Resolver<u64>>) {
    (0..n).map(|_| Promise::<u64>::pending()).unzip()
}

/// Resolves `resolvers[i]` with `i`, on a thread of its own.
fn resolve_elsewhere(resolvers: Vec<Resolver<u64>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for (i, resolver) in (0..).zip(&resolvers) {
            resolver.resolve(i);
        }
    })
}

/// The outputs of `all`, `all_settled`, `any` and a tuple `join`, cancelled on one
/// thread while their inputs settle on others: each output ends settled one way or
/// the other (never pending), with the right values if it was not cancelled, and
/// the loop has nothing left to wait for.
#[test]
fn outputs_cancelled_on_one_thread_while_inputs_settle_on_others() {
    within(|| {
        for round in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (everything, first) = pending(64);
            let (settling, second) = pending(64);
            let (anyone, third) = pending(8);
            let (pair, fourth) = pending(2);
            let mut pair = pair.into_iter();
            let outputs = (
                all(everything),
                all_settled(settling),
                any(anyone),
                join((pair.next().unwrap(), pair.next().unwrap())),
            );
            let threads = [first, second, third, fourth].map(resolve_elsewhere);
            let cancelled = thread::spawn(move || {
                let (a, b, c, d) = outputs;
                // Each may have settled already (its inputs were quick): then it
                // is not cancelled, which is what the checks below allow for.
                let _ = (a.cancel(), b.cancel(), c.cancel(), d.cancel());
                (a, b, c, d)
            });
            let (a, b, c, d) = cancelled.join().unwrap();
            for thread in threads {
                thread.join().unwrap();
            }
            event_loop.run().unwrap();
            assert!(!a.is_pending() && !b.is_pending() && !c.is_pending() && !d.is_pending());
            if !a.is_cancelled() {
                assert_eq!(event_loop.block_on(a).unwrap(), (0..64).collect::<Vec<_>>());
            }
            if !b.is_cancelled() {
                let outcomes = event_loop.block_on(b).unwrap();
                assert!(
                    outcomes.into_iter().map(Result::unwrap).eq(0..64),
                    "round {round}"
                );
            }
            if !c.is_cancelled() {
                assert!(event_loop.block_on(c).unwrap() < 8);
            }
            if !d.is_cancelled() {
                assert_eq!(event_loop.block_on(d).unwrap(), (0, 1));
            }
        }
    });
}

/// `as_completed` over inputs settled on other threads, consumed as a stream: each
/// outcome comes out exactly once.
#[test]
fn as_completed_hands_out_each_outcome_once_when_inputs_settle_elsewhere() {
    within(|| {
        for round in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (promises, resolvers) = pending(200);
            let mut completed = as_completed(promises);
            let halves: Vec<Vec<Resolver<u64>>> =
                resolvers.chunks(100).map(<[_]>::to_vec).collect();
            let threads: Vec<_> = halves
                .into_iter()
                .enumerate()
                .map(|(half, resolvers)| {
                    thread::spawn(move || {
                        for (i, resolver) in resolvers.iter().enumerate() {
                            resolver.resolve((half * 100 + i) as u64);
                        }
                    })
                })
                .collect();
            let mut seen = event_loop
                .block_on(async move {
                    let mut seen = Vec::new();
                    while let Some(outcome) = completed.next().await {
                        seen.push(outcome?);
                    }
                    Ok::<_, Error>(seen)
                })
                .unwrap();
            for thread in threads {
                thread.join().unwrap();
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..200).collect::<Vec<_>>(), "round {round}");
        }
    });
}

/// A timeout whose work is settled from another thread at about the moment the
/// limit expires: the result is the value or the timeout, never both or neither,
/// and no timer is left behind.
#[test]
fn a_timeout_racing_a_settlement_from_another_thread_settles_once() {
    within(|| {
        for _ in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (work, resolver) = Promise::<u64>::pending();
            let limited = work.timeout(ms(1));
            let settling = thread::spawn(move || {
                thread::sleep(ms(1));
                resolver.resolve(5);
            });
            match event_loop.block_on(limited) {
                Ok(value) => assert_eq!(value, 5),
                Err(error) => assert!(error.is_timeout(), "{error:?}"),
            }
            settling.join().unwrap();
            event_loop.run().unwrap();
        }
    });
}

/// The results of `scope`, `map_concurrent` and `retry` (each a task of the loop),
/// cancelled from another thread: the hour-long work behind them is dropped on its
/// loop, and `run()` returns.
#[test]
fn task_based_combinators_cancelled_from_another_thread_release_their_work() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let (done, gone) = (finished.clone(), dropped.clone());
        let scoped: Promise<()> = scope(move |s: Scope| async move {
            for _ in 0..3 {
                let (done, gone) = (done.clone(), gone.clone());
                drop(s.spawn(async move {
                    hour_long_task::<Error>(&done, &gone).await?;
                    Ok(())
                }));
            }
            sleep(HOUR).await
        });
        let (done, gone) = (finished.clone(), dropped.clone());
        let mapped = map_concurrent(0..10, 2, move |_| hour_long_task::<Error>(&done, &gone));
        let (done, gone) = (finished.clone(), dropped.clone());
        let retried = retry(3, [Duration::ZERO; 2], move || {
            hour_long_task::<Error>(&done, &gone)
        });
        event_loop.block_on(sleep(ms(1))).unwrap(); // everything is running
        let canceller = thread::spawn(move || {
            assert!(scoped.cancel());
            assert!(mapped.cancel());
            assert!(retried.cancel());
        });
        canceller.join().unwrap();
        event_loop.run().unwrap();
        assert_eq!(
            dropped.get(),
            3 + 2 + 1,
            "not every task's future was dropped"
        );
        assert_eq!(finished.get(), 0);
    });
}

/// A promise that adopts a combinator of itself can never settle (JavaScript
/// leaves it pending too; a combinator is not searched for chaining cycles).
/// Nothing is left to settle it, so waiting on it ends in a deadlock error, not a
/// hang.
#[test]
fn a_promise_adopting_a_combinator_of_itself_is_an_error_not_a_hang() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (p, resolver) = Promise::<Vec<u64>>::pending();
        let looped = all([p.clone().map(|v| v.len() as u64)]);
        resolver.resolve_with(looped);
        drop(resolver);
        let error = event_loop.block_on(p).unwrap_err();
        assert!(error.is_deadlock(), "{error:?}");
    });
}

/// `all` failing fast drops the values that arrived before the rejection. If one
/// of those drops panics, the output still rejects with the first rejection (the
/// panic is the value's, reported as the loop reports panics), not a panic error
/// that hides why `all` failed.
#[test]
fn a_panicking_drop_of_an_earlier_value_does_not_hide_alls_rejection() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let failing = sleep(ms(1)).then(|()| Err::<Bomb, _>(Error::msg("refused")));
        let everything = all([Promise::resolved(Bomb::armed()), failing]);
        let error = event_loop.block_on(everything).unwrap_err();
        // (Not printing the error: a panic's text carries the quieting mark.)
        assert!(
            !error.is_panic(),
            "the rejection was replaced by a panic error"
        );
        assert_eq!(error.to_string(), "refused");
    });
}
