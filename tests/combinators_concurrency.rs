//! Concurrency control: `map_concurrent`, `map_series`, `retry` with `Backoff`,
//! and structured concurrency with `scope`.
//!
//! Assertions are on counts and order only. Work that must never finish sleeps
//! for an hour: if it were not really cancelled, `EventLoop::run` would not
//! return and the watchdog of [`within`] would fail the test.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::{hour_long_task, ms, within, Counter, DropCounter, Log, HOUR, MARK};
use thenable::{
    delay, map_concurrent, map_series, retry, scope, sleep, spawn, Backoff, Error, EventLoop,
    Promise, Resolver, Scope,
};

/// Resolvers of promises handed out by a mapper, with the item they belong to.
type Handed = Arc<Mutex<Vec<(usize, Resolver<usize>)>>>;

// ---------------------------------------------------------------------------
// map_concurrent
// ---------------------------------------------------------------------------

#[test]
fn map_concurrent_never_exceeds_the_limit_and_keeps_input_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let (running, most) = (Counter::default(), Counter::default());
        let (now, peak) = (running.clone(), most.clone());
        let doubled = map_concurrent(0..20u64, 3, move |n| {
            peak.0.fetch_max(now.bump_and_get(), Ordering::SeqCst);
            let done = now.clone();
            // Later items finish sooner, so completion order differs from input order.
            delay(ms(20 - n), n * 2).map(move |v| {
                done.0.fetch_sub(1, Ordering::SeqCst);
                v
            })
        });
        let values: Vec<u64> = event_loop.block_on(doubled).unwrap();
        assert_eq!(values, (0..20).map(|n| n * 2).collect::<Vec<_>>());
        assert_eq!(most.get(), 3, "the limit was not used, or exceeded");
        assert_eq!(running.get(), 0);
    });
}

#[test]
fn map_concurrent_results_follow_input_order_not_completion_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let resolvers: Handed = Arc::default();
        let started = resolvers.clone();
        let mapped = map_concurrent(0..4, 4, move |n| {
            let (promise, resolver) = Promise::pending();
            started.lock().unwrap().push((n, resolver));
            promise
        });
        let controller = spawn(async move {
            while resolvers.lock().unwrap().len() < 4 {
                sleep(Duration::ZERO).await?;
            }
            // Settle the last first.
            let all: Vec<_> = resolvers.lock().unwrap().drain(..).rev().collect();
            for (n, resolver) in all {
                resolver.resolve(n * 10);
                sleep(Duration::ZERO).await?;
            }
            Ok::<_, Error>(())
        });
        let values = event_loop.block_on(async move {
            controller.await?;
            mapped.await
        });
        assert_eq!(values.unwrap(), [0, 10, 20, 30]);
    });
}

#[test]
fn map_concurrent_first_failure_cancels_in_flight_and_starts_no_more() {
    within(|| {
        let event_loop = EventLoop::new();
        let (started, finished, dropped) =
            (Counter::default(), Counter::default(), Counter::default());
        let (calls, done, gone) = (started.clone(), finished.clone(), dropped.clone());
        let mapped = map_concurrent(0..10, 2, move |n| {
            calls.bump();
            match n {
                0 => hour_long_task(&done, &gone),
                1 => delay(ms(1), ()).then(|()| Err(Error::msg("item 1 failed"))),
                _ => Promise::resolved(n),
            }
        });
        let error = event_loop.block_on(mapped).unwrap_err();
        assert_eq!(error.to_string(), "item 1 failed");
        assert_eq!(started.get(), 2, "items were started after the failure");
        assert_eq!(dropped.get(), 1, "the item in flight was not cancelled");
        event_loop.run().unwrap(); // the hour-long sleep is gone with its task
        assert_eq!(finished.get(), 0);
    });
}

#[test]
fn cancelling_map_concurrent_cancels_in_flight_and_starts_no_more() {
    within(|| {
        let event_loop = EventLoop::new();
        let (started, finished, dropped) =
            (Counter::default(), Counter::default(), Counter::default());
        let (calls, done, gone) = (started.clone(), finished.clone(), dropped.clone());
        let mapped: Promise<Vec<i32>> = map_concurrent(0..10, 3, move |_| {
            calls.bump();
            hour_long_task(&done, &gone)
        });
        event_loop.block_on(sleep(ms(1))).unwrap();
        assert_eq!(started.get(), 3);
        assert!(mapped.cancel());
        event_loop.run().unwrap();
        assert_eq!(
            started.get(),
            3,
            "items were started after the cancellation"
        );
        assert_eq!(dropped.get(), 3, "the items in flight were not cancelled");
        assert_eq!(finished.get(), 0);
    });
}

/// The items in flight are cancelled in input order, on a failure and on the
/// output's cancellation, as `all` cancels its inputs: their `on_cancel` hooks
/// (user code) run in an order that does not change from one run to the next.
#[test]
fn map_concurrent_cancels_the_items_in_flight_in_input_order() {
    within(|| {
        let event_loop = EventLoop::new();
        for fail in [false, true] {
            let log = Log::default();
            let hooks = log.clone();
            let (failing, fail_item) = Promise::<usize>::pending();
            let mut failing = Some(failing);
            let kept: Handed = Arc::default();
            let keep = kept.clone();
            let mapped = map_concurrent(0..16, 16, move |n| {
                if n == 7 {
                    return failing.take().expect("item 7 is mapped once");
                }
                let (promise, resolver) = Promise::pending();
                let hooks = hooks.clone();
                resolver.on_cancel(move || hooks.push(format!("{n}")));
                keep.lock().unwrap().push((n, resolver));
                promise
            });
            event_loop.block_on(sleep(ms(1))).unwrap();
            if fail {
                fail_item.reject(Error::msg("item 7 failed"));
                assert!(event_loop.block_on(mapped).is_err());
            } else {
                assert!(mapped.cancel());
                event_loop.run().unwrap();
            }
            let expected: Vec<String> =
                (0..16).filter(|&n| n != 7).map(|n| n.to_string()).collect();
            assert_eq!(log.entries(), expected, "failed: {fail}");
            drop(kept);
        }
    });
}

#[test]
fn map_concurrent_with_limit_zero_is_an_error_and_calls_nothing() {
    within(|| {
        let event_loop = EventLoop::new();
        let calls = Counter::default();
        let called = calls.clone();
        let mapped = map_concurrent(0..3, 0, move |n| {
            called.bump();
            Promise::<i32>::resolved(n)
        });
        let error = event_loop.block_on(mapped).unwrap_err();
        assert!(
            error.to_string().contains("limit"),
            "unclear error: {error}"
        );
        assert_eq!(calls.get(), 0);
    });
}

#[test]
fn map_concurrent_of_nothing_is_empty() {
    within(|| {
        let event_loop = EventLoop::new();
        let mapped = map_concurrent(Vec::<i32>::new(), 4, Promise::<i32>::resolved);
        assert!(event_loop.block_on(mapped).unwrap().is_empty());
    });
}

#[test]
fn map_concurrent_takes_items_lazily() {
    within(|| {
        let event_loop = EventLoop::new();
        let taken = Counter::default();
        let pulled = taken.clone();
        // An endless iterator: only as many items are taken as the work needs.
        let items = (0..).inspect(move |_| {
            pulled.bump();
        });
        let mapped = map_concurrent(items, 2, |n| {
            if n == 5 {
                Promise::rejected(Error::msg("stop"))
            } else {
                delay(ms(1), n)
            }
        });
        assert_eq!(event_loop.block_on(mapped).unwrap_err().to_string(), "stop");
        assert!(taken.get() <= 7, "took {} items", taken.get());
        event_loop.run().unwrap();
    });
}

#[test]
fn a_panic_in_the_mapper_rejects() {
    within(|| {
        let event_loop = EventLoop::new();
        let mapped = map_concurrent(0..3, 2, |n| {
            if n == 1 {
                panic!("mapper {MARK}");
            }
            Promise::<i32>::resolved(n)
        });
        let error = event_loop.block_on(mapped).unwrap_err();
        assert!(error.is_panic(), "not a panic error: {error:?}");
    });
}

// ---------------------------------------------------------------------------
// map_series
// ---------------------------------------------------------------------------

#[test]
fn map_series_runs_one_at_a_time_in_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        let record = log.clone();
        let mapped = map_series(["a", "b", "c"], move |name| {
            record.push(format!("start {name}"));
            let record = record.clone();
            delay(ms(1), name).map(move |name| {
                record.push(format!("end {name}"));
                name.to_uppercase()
            })
        });
        assert_eq!(event_loop.block_on(mapped).unwrap(), ["A", "B", "C"]);
        assert_eq!(
            log.entries(),
            ["start a", "end a", "start b", "end b", "start c", "end c"]
        );
    });
}

#[test]
fn map_series_stops_at_the_first_failure() {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        let record = log.clone();
        let mapped = map_series(0..5, move |n| {
            record.push(format!("start {n}"));
            if n == 2 {
                Promise::<i32>::rejected(Error::msg("item 2 failed"))
            } else {
                Promise::resolved(n)
            }
        });
        let error = event_loop.block_on(mapped).unwrap_err();
        assert_eq!(error.to_string(), "item 2 failed");
        assert_eq!(log.entries(), ["start 0", "start 1", "start 2"]);
    });
}

// ---------------------------------------------------------------------------
// retry and Backoff
// ---------------------------------------------------------------------------

fn quick_backoff() -> Backoff {
    Backoff::new(ms(1), 2.0, ms(4))
}

/// An operation that fails until attempt `succeed_on`, counting attempts.
fn flaky(attempts: &Counter, succeed_on: usize) -> impl FnMut() -> Promise<usize> {
    let attempts = attempts.clone();
    move || {
        let attempt = attempts.bump_and_get();
        if attempt < succeed_on {
            Promise::rejected(Error::msg(format!("attempt {attempt} failed")))
        } else {
            Promise::resolved(attempt)
        }
    }
}

#[test]
fn retry_succeeds_on_a_later_attempt() {
    within(|| {
        let event_loop = EventLoop::new();
        let attempts = Counter::default();
        let value = retry(5, quick_backoff(), flaky(&attempts, 3));
        assert_eq!(event_loop.block_on(value).unwrap(), 3);
        assert_eq!(attempts.get(), 3, "attempted again after a success");
    });
}

#[test]
fn retry_gives_up_with_the_last_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let attempts = Counter::default();
        let value = retry(4, quick_backoff(), flaky(&attempts, usize::MAX));
        let error = event_loop.block_on(value).unwrap_err();
        assert_eq!(error.to_string(), "attempt 4 failed");
        assert_eq!(attempts.get(), 4);
    });
}

#[test]
fn retry_pauses_grow_between_attempts() {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        let (pauses, tries) = (log.clone(), log.clone());
        let backoff = Backoff::new(ms(1), 2.0, ms(8))
            .into_iter()
            .inspect(move |pause| pauses.push(format!("pause {}ms", pause.as_millis())));
        let attempt = Counter::default();
        let value = retry(6, backoff, move || {
            tries.push(format!("attempt {}", attempt.bump_and_get()));
            Promise::<()>::rejected(Error::msg("down"))
        });
        assert_eq!(event_loop.block_on(value).unwrap_err().to_string(), "down");
        assert_eq!(
            log.entries(),
            [
                "attempt 1",
                "pause 1ms",
                "attempt 2",
                "pause 2ms",
                "attempt 3",
                "pause 4ms",
                "attempt 4",
                "pause 8ms",
                "attempt 5",
                "pause 8ms",
                "attempt 6",
            ]
        );
    });
}

#[test]
fn retry_stops_when_the_pauses_run_out() {
    within(|| {
        let event_loop = EventLoop::new();
        let attempts = Counter::default();
        let value = retry(10, [Duration::ZERO; 2], flaky(&attempts, usize::MAX));
        let error = event_loop.block_on(value).unwrap_err();
        assert_eq!(error.to_string(), "attempt 3 failed");
        assert_eq!(attempts.get(), 3);
    });
}

#[test]
fn retry_with_zero_attempts_is_an_error_and_calls_nothing() {
    within(|| {
        let event_loop = EventLoop::new();
        let attempts = Counter::default();
        let value = retry(0, quick_backoff(), flaky(&attempts, 1));
        let error = event_loop.block_on(value).unwrap_err();
        assert!(
            error.to_string().contains("attempts"),
            "unclear error: {error}"
        );
        assert_eq!(attempts.get(), 0);
    });
}

#[test]
fn cancelling_retry_during_a_pause_stops_it() {
    within(|| {
        let event_loop = EventLoop::new();
        let attempts = Counter::default();
        let value = retry(3, [HOUR; 2], flaky(&attempts, usize::MAX));
        event_loop.block_on(sleep(ms(1))).unwrap();
        assert_eq!(attempts.get(), 1);
        assert!(value.cancel());
        event_loop.run().unwrap(); // the hour-long pause is gone
        assert_eq!(attempts.get(), 1);
    });
}

#[test]
fn cancelling_retry_cancels_the_attempt_in_flight() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let (done, gone) = (finished.clone(), dropped.clone());
        let value = retry(3, quick_backoff(), move || {
            hour_long_task::<Error>(&done, &gone)
        });
        event_loop.block_on(sleep(ms(1))).unwrap();
        assert!(value.cancel());
        event_loop.run().unwrap();
        assert_eq!(dropped.get(), 1, "the attempt's task was not dropped");
        assert_eq!(finished.get(), 0);
    });
}

#[test]
fn backoff_pauses() {
    let backoff = Backoff::new(ms(10), 3.0, ms(100));
    let pauses: Vec<u128> = backoff.into_iter().take(4).map(|d| d.as_millis()).collect();
    assert_eq!(pauses, [10, 30, 90, 100]);
    assert_eq!(backoff.delay_after_attempt(0), ms(10));
    assert_eq!(backoff.delay_after_attempt(u32::MAX), ms(100));
    let shrinking = Backoff::new(ms(100), 0.5, ms(100));
    assert_eq!(shrinking.delay_after_attempt(3), ms(25));
    let nonsense = Backoff::new(ms(7), f64::NAN, ms(100));
    assert_eq!(nonsense.delay_after_attempt(5), ms(7));
    let negative = Backoff::new(ms(7), -2.0, ms(100));
    assert_eq!(negative.delay_after_attempt(5), ms(7));
    let infinite = Backoff::new(ms(7), f64::INFINITY, ms(100));
    assert_eq!(infinite.delay_after_attempt(2), ms(100));
    let zero = Backoff::new(Duration::ZERO, 2.0, ms(100));
    assert_eq!(zero.delay_after_attempt(2000), Duration::ZERO);
    let huge = Backoff::new(Duration::MAX, 2.0, Duration::MAX);
    assert_eq!(huge.delay_after_attempt(3), Duration::MAX);
}

// ---------------------------------------------------------------------------
// scope
// ---------------------------------------------------------------------------

#[test]
fn scope_waits_for_all_its_tasks() {
    within(|| {
        let event_loop = EventLoop::new();
        let finished = Counter::default();
        let (done, at_end) = (finished.clone(), finished.clone());
        let outcome = scope(move |s: Scope| async move {
            for n in 0..3 {
                let done = done.clone();
                // Not awaited by the body: the scope waits for them anyway.
                drop(s.spawn(async move {
                    delay(ms(n + 1), ()).await?;
                    done.bump();
                    Ok(())
                }));
            }
            Ok("body done")
        })
        .map(move |value| (value, at_end.get()));
        let (value, finished_when_settled) = event_loop.block_on(outcome).unwrap();
        assert_eq!(value, "body done");
        assert_eq!(finished_when_settled, 3);
    });
}

#[test]
fn scope_settles_only_after_every_task_finished() {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        let (body_log, end_log) = (log.clone(), log.clone());
        let outcome = scope(move |s: Scope| async move {
            for n in 0..3u64 {
                let log = body_log.clone();
                drop(s.spawn(async move {
                    delay(ms(3 - n), ()).await?;
                    log.push("task done");
                    Ok(())
                }));
            }
            body_log.push("body done");
            Ok(())
        })
        .map(move |()| end_log.push("scope settled"));
        event_loop.block_on(outcome).unwrap();
        let entries = log.entries();
        assert_eq!(entries.first().map(String::as_str), Some("body done"));
        assert_eq!(entries.last().map(String::as_str), Some("scope settled"));
        assert_eq!(entries.iter().filter(|e| *e == "task done").count(), 3);
    });
}

#[test]
fn scope_returns_the_body_value_built_from_its_tasks() {
    within(|| {
        let event_loop = EventLoop::new();
        let outcome = scope(|s: Scope| async move {
            let a: Promise<i32> = s.spawn(async { delay(ms(2), 20).await });
            let b: Promise<i32> = s.spawn(async { Ok(22) });
            Ok(a.await? + b.await?)
        });
        assert_eq!(event_loop.block_on(outcome).unwrap(), 42);
    });
}

#[test]
fn scope_first_failure_cancels_the_siblings_and_is_the_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let (done, gone) = (finished.clone(), dropped.clone());
        let dropped_when_settled = Counter::default();
        let (observed, gone_at_end) = (dropped_when_settled.clone(), dropped.clone());
        let outcome = scope(move |s: Scope| async move {
            for _ in 0..2 {
                let (done, guard) = (done.clone(), DropCounter(gone.clone()));
                drop(s.spawn(async move {
                    let _guard = guard;
                    sleep(HOUR).await?;
                    done.bump();
                    Ok(())
                }));
            }
            drop(s.spawn(async {
                delay(ms(1), ()).await?;
                Err::<(), _>(Error::msg("first failure"))
            }));
            drop(s.spawn(async {
                delay(ms(1), ()).await?;
                sleep(ms(5)).await?;
                Err::<(), _>(Error::msg("second failure"))
            }));
            Ok(())
        })
        .catch(move |error| {
            observed.0.store(gone_at_end.get(), Ordering::SeqCst);
            Err(error)
        });
        let error = event_loop.block_on(outcome).unwrap_err();
        assert_eq!(error.to_string(), "first failure");
        assert_eq!(
            dropped_when_settled.get(),
            2,
            "the scope settled before the siblings' futures were dropped"
        );
        event_loop.run().unwrap(); // no hour-long sleep is left
        assert_eq!(finished.get(), 0);
    });
}

/// Logs its name when dropped.
struct DropLog(String, Log);

impl Drop for DropLog {
    fn drop(&mut self) {
        self.1.push(std::mem::take(&mut self.0));
    }
}

/// A failure, or the scope's promise cancelled, cancels the members in the
/// order they joined, body first (as `all` and `map_concurrent` cancel theirs):
/// their destructors run in the same order on every run. (Kept in a `HashMap`,
/// they were dropped in a different order each time.)
#[test]
fn a_scope_cancels_its_members_in_the_order_they_joined() {
    within(|| {
        let event_loop = EventLoop::new();
        for cancel in [false, true] {
            let log = Log::default();
            let members = log.clone();
            let (fail, failure) = Promise::<()>::pending();
            let outcome = scope(move |s: Scope| async move {
                let _body = DropLog("body".into(), members.clone());
                for n in 0..16 {
                    let guard = DropLog(n.to_string(), members.clone());
                    drop(s.spawn(async move {
                        let _guard = guard;
                        sleep(HOUR).await
                    }));
                }
                fail.await?;
                Ok(())
            });
            event_loop.block_on(sleep(ms(1))).unwrap();
            if cancel {
                assert!(outcome.cancel());
                event_loop.run().unwrap();
            } else {
                failure.reject(Error::msg("the body failed"));
                assert!(event_loop.block_on(outcome).is_err());
            }
            // (A failing body drops its guard as it ends, before the scope
            // hears of the failure: first either way.)
            let mut expected = vec![String::from("body")];
            expected.extend((0..16).map(|n: i32| n.to_string()));
            assert_eq!(log.entries(), expected, "cancelled: {cancel}");
        }
    });
}

#[test]
fn a_failing_body_cancels_the_tasks() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let (done, gone) = (finished.clone(), dropped.clone());
        let outcome: Promise<()> = scope(move |s: Scope| async move {
            drop(s.spawn(async move {
                hour_long_task::<Error>(&done, &gone).await?;
                Ok(())
            }));
            sleep(ms(1)).await?;
            Err(Error::msg("body failed"))
        });
        let error = event_loop.block_on(outcome).unwrap_err();
        assert_eq!(error.to_string(), "body failed");
        assert_eq!(dropped.get(), 1);
        event_loop.run().unwrap();
        assert_eq!(finished.get(), 0);
    });
}

#[test]
fn a_failing_task_cancels_the_body() {
    within(|| {
        let event_loop = EventLoop::new();
        let body_dropped = Counter::default();
        let guard = DropCounter(body_dropped.clone());
        let outcome: Promise<()> = scope(move |s: Scope| async move {
            let _guard = guard;
            drop(s.spawn(async { Err::<(), _>(Error::msg("task failed")) }));
            sleep(HOUR).await?;
            unreachable!("the body is cancelled by the failure");
        });
        let error = event_loop.block_on(outcome).unwrap_err();
        assert_eq!(error.to_string(), "task failed");
        assert_eq!(body_dropped.get(), 1);
        event_loop.run().unwrap();
    });
}

#[test]
fn task_promises_are_cancelled_when_their_task_fails_or_is_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let handles: Arc<Mutex<Vec<Promise<()>>>> = Arc::default();
        let keep = handles.clone();
        let outcome = scope(move |s: Scope| async move {
            let sibling = s.spawn(async {
                sleep(HOUR).await?;
                Ok(())
            });
            let failing = s.spawn(async { Err::<(), _>(Error::msg("boom")) });
            let fine = s.spawn(async { Ok(()) });
            keep.lock().unwrap().extend([sibling, failing, fine]);
            Ok(())
        });
        // The failure belongs to the scope...
        assert_eq!(
            event_loop.block_on(outcome).unwrap_err().to_string(),
            "boom"
        );
        event_loop.run().unwrap();
        // ...and the tasks' own promises are cancelled, not rejected: nobody has to
        // handle them. The one that finished first has its value.
        let handles = std::mem::take(&mut *handles.lock().unwrap());
        let states: Vec<_> = handles
            .iter()
            .map(|h| (h.is_cancelled(), h.is_fulfilled()))
            .collect();
        assert_eq!(states, [(true, false), (true, false), (false, true)]);
    });
}

#[test]
fn a_panicking_task_is_a_failure() {
    within(|| {
        let event_loop = EventLoop::new();
        let outcome: Promise<()> = scope(|s: Scope| async move {
            drop(s.spawn(async {
                panic!("task {MARK}");
                #[allow(unreachable_code)]
                Ok(())
            }));
            sleep(HOUR).await
        });
        let error = event_loop.block_on(outcome).unwrap_err();
        assert!(error.is_panic(), "not a panic error: {error:?}");
        event_loop.run().unwrap();
    });
}

#[test]
fn cancelling_a_scope_cancels_everything_in_it() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let (done, gone) = (finished.clone(), dropped.clone());
        let outcome: Promise<()> = scope(move |s: Scope| async move {
            for _ in 0..3 {
                let (done, gone) = (done.clone(), gone.clone());
                drop(s.spawn(async move {
                    hour_long_task::<Error>(&done, &gone).await?;
                    Ok(())
                }));
            }
            sleep(HOUR).await
        });
        event_loop.block_on(sleep(ms(1))).unwrap();
        assert!(outcome.cancel());
        event_loop.run().unwrap();
        assert_eq!(dropped.get(), 3, "the tasks' futures were not dropped");
        assert_eq!(finished.get(), 0);
        assert!(event_loop.block_on(outcome).unwrap_err().is_cancelled());
    });
}

#[test]
fn cancelling_a_task_promise_only_stops_waiting_for_it() {
    within(|| {
        let event_loop = EventLoop::new();
        let finished = Counter::default();
        let (done, at_end) = (finished.clone(), finished.clone());
        let outcome = scope(move |s: Scope| async move {
            let task = s.spawn(async move {
                delay(ms(2), ()).await?;
                done.bump();
                Ok(())
            });
            assert!(task.cancel());
            Ok(())
        })
        // The task belongs to the scope, which still waits for it.
        .map(move |()| at_end.get());
        assert_eq!(event_loop.block_on(outcome).unwrap(), 1);
    });
}

#[test]
fn a_task_spawned_into_a_finished_scope_never_runs() {
    within(|| {
        let event_loop = EventLoop::new();
        let kept = event_loop
            .block_on(scope(|s: Scope| async move { Ok(s) }))
            .unwrap();
        let ran = Counter::default();
        let flag = ran.clone();
        let late = kept.spawn(async move {
            flag.bump();
            Ok(1)
        });
        assert!(late.is_cancelled());
        event_loop.run().unwrap();
        assert_eq!(ran.get(), 0);
    });
}

#[test]
fn a_task_spawned_after_a_failure_never_runs() {
    within(|| {
        let event_loop = EventLoop::new();
        let (scope_tx, scope_rx) = mpsc::channel();
        let outcome: Promise<()> = scope(move |s: Scope| async move {
            scope_tx.send(s.clone()).unwrap();
            Err(Error::msg("early"))
        });
        assert_eq!(
            event_loop.block_on(outcome).unwrap_err().to_string(),
            "early"
        );
        let kept = scope_rx.recv().unwrap();
        let ran = Counter::default();
        let flag = ran.clone();
        let late = kept.spawn(async move {
            flag.bump();
            Ok(1)
        });
        assert!(late.is_cancelled());
        event_loop.run().unwrap();
        assert_eq!(ran.get(), 0);
    });
}

#[test]
fn tasks_may_spawn_into_their_own_scope() {
    within(|| {
        let event_loop = EventLoop::new();
        let finished = Counter::default();
        let done = finished.clone();
        let outcome = scope(move |s: Scope| async move {
            let nested = s.clone();
            drop(s.spawn(async move {
                let done = done.clone();
                drop(nested.spawn(async move {
                    delay(ms(2), ()).await?;
                    done.bump();
                    Ok(())
                }));
                Ok(())
            }));
            Ok(())
        });
        event_loop.block_on(outcome).unwrap();
        assert_eq!(
            finished.get(),
            1,
            "the scope did not wait for the grandchild"
        );
    });
}

#[test]
fn failures_handled_by_a_scope_are_not_reported_as_unhandled() {
    within(|| {
        let event_loop = EventLoop::new();
        let reports = Log::default();
        let record = reports.clone();
        thenable::set_unhandled_rejection_hook(move |error| record.push(error.to_string()));
        let outcome: Promise<()> = scope(|s: Scope| async move {
            drop(s.spawn(async {
                sleep(HOUR).await?;
                Ok(())
            }));
            drop(s.spawn(async { Err::<(), _>(Error::msg("task failed")) }));
            Ok(())
        });
        assert_eq!(
            event_loop.block_on(outcome).unwrap_err().to_string(),
            "task failed"
        );
        event_loop.run().unwrap();
        assert!(
            reports.entries().is_empty(),
            "reported: {:?}",
            reports.entries()
        );
        // The hook does see a rejection nobody handles.
        drop(Promise::<()>::rejected(Error::msg("nobody listens")));
        event_loop.run().unwrap();
        assert_eq!(reports.entries(), ["nobody listens"]);
    });
}

// ---------------------------------------------------------------------------
// Nothing hangs silently
// ---------------------------------------------------------------------------

/// A promise nothing can ever settle (a task waiting for ever), that keeps
/// nothing alive.
fn stuck() -> Promise<i32> {
    spawn(std::future::pending())
}

#[test]
fn combinators_waiting_on_something_stuck_end_in_a_deadlock_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let mapped = map_concurrent(0..3, 2, |_| stuck());
        let error = event_loop.block_on(mapped).unwrap_err();
        assert!(error.is_deadlock(), "map_concurrent: {error:?}");
        let retried = retry(3, quick_backoff(), stuck);
        let error = event_loop.block_on(retried).unwrap_err();
        assert!(error.is_deadlock(), "retry: {error:?}");
        let scoped = scope(|s: Scope| async move { s.spawn(stuck()).await });
        let error = event_loop.block_on(scoped).unwrap_err();
        assert!(error.is_deadlock(), "scope: {error:?}");
    });
}
