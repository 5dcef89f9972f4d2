//! Time combinators: `timeout`, `timeout_at`, `delay`, `interval`.
//!
//! Nothing here asserts on durations. "No leaked timer" is checked by letting
//! `EventLoop::run` return: a timer left behind would keep it running for a minute
//! or an hour, which the watchdog of [`within`] turns into a failure long before.

mod common;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{hour_long_task, ms, within, Counter, HOUR};
use futures_core::Stream;
use thenable::{delay, interval, sleep, spawn, Error, EventLoop, Interval, Promise};

fn next_tick(ticks: &mut Interval) -> impl std::future::Future<Output = Option<u64>> + '_ {
    poll_fn(move |cx| Pin::new(&mut *ticks).poll_next(cx))
}

// ---------------------------------------------------------------------------
// timeout
// ---------------------------------------------------------------------------

#[test]
fn timeout_rejects_with_a_timeout_error_and_cancels_the_work() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped, handled) =
            (Counter::default(), Counter::default(), Counter::default());
        let seen = handled.clone();
        let work = hour_long_task::<Error>(&finished, &dropped).map(move |v| {
            seen.bump();
            v
        });
        let error = event_loop.block_on(work.timeout(ms(5))).unwrap_err();
        assert!(error.is_timeout(), "not a timeout: {error:?}");
        assert_eq!(dropped.get(), 1, "the task's future was not dropped");
        // The task's hour-long sleep was cancelled with it: nothing is left.
        event_loop.run().unwrap();
        assert_eq!(finished.get(), 0);
        assert_eq!(handled.get(), 0, "a handler of the cancelled work ran");
    });
}

#[test]
fn timeout_passes_the_outcome_through_when_the_work_settles_first() {
    within(|| {
        let event_loop = EventLoop::new();
        let value = sleep(ms(1)).map(|()| 7).timeout(HOUR);
        assert_eq!(event_loop.block_on(value).unwrap(), 7);
        let error = Promise::<i32>::rejected(Error::msg("refused")).timeout(HOUR);
        assert_eq!(
            event_loop.block_on(error).unwrap_err().to_string(),
            "refused"
        );
        // Both timers were removed when the work settled: an hour-long one left
        // behind would keep `run` going.
        event_loop.run().unwrap();
    });
}

#[test]
fn timeout_with_a_custom_error_type() {
    within(|| {
        let event_loop = EventLoop::new();
        let (never, _keep) = Promise::<i32, String>::pending();
        let error = event_loop.block_on(never.timeout(ms(1))).unwrap_err();
        assert_eq!(error, "timed out");
    });
}

#[test]
fn zero_timeout_lets_an_already_settled_promise_win() {
    within(|| {
        let event_loop = EventLoop::new();
        let ready = Promise::<i32>::resolved(3).timeout(Duration::ZERO);
        assert_eq!(event_loop.block_on(ready).unwrap(), 3);
        let pending = sleep(HOUR).timeout(Duration::ZERO);
        assert!(event_loop.block_on(pending).unwrap_err().is_timeout());
        event_loop.run().unwrap();
    });
}

#[test]
fn max_timeout_means_no_limit_and_no_timer() {
    within(|| {
        let event_loop = EventLoop::new();
        // No panic computing the deadline, and the value comes through.
        let value = sleep(ms(1)).map(|()| 1).timeout(Duration::MAX);
        assert_eq!(event_loop.block_on(value).unwrap(), 1);
        // No timer was set: a promise that can never settle is a deadlock, not a
        // wait for ever.
        let stuck = spawn(std::future::pending::<Result<i32, Error>>()).timeout(Duration::MAX);
        assert!(event_loop.block_on(stuck).unwrap_err().is_deadlock());
    });
}

#[test]
fn timeout_at_a_passed_deadline_times_out() {
    within(|| {
        let event_loop = EventLoop::new();
        let passed = Instant::now();
        let late = sleep(HOUR).timeout_at(passed);
        assert!(event_loop.block_on(late).unwrap_err().is_timeout());
        let in_time = sleep(ms(1))
            .map(|()| "ok")
            .timeout_at(Instant::now() + HOUR);
        assert_eq!(event_loop.block_on(in_time).unwrap(), "ok");
        event_loop.run().unwrap();
    });
}

#[test]
fn cancelling_a_timeout_cancels_the_work_and_its_timer() {
    within(|| {
        let event_loop = EventLoop::new();
        let (finished, dropped) = (Counter::default(), Counter::default());
        let limited = hour_long_task::<Error>(&finished, &dropped).timeout(HOUR);
        // Let the task start, so that cancelling has something to stop.
        event_loop.block_on(sleep(ms(1))).unwrap();
        assert!(limited.cancel());
        assert!(limited.is_cancelled());
        event_loop.run().unwrap(); // neither the task's timer nor the limit's is left
        assert_eq!(dropped.get(), 1, "the task's future was not dropped");
        assert_eq!(finished.get(), 0);
        assert!(event_loop.block_on(limited).unwrap_err().is_cancelled());
    });
}

#[test]
fn a_timeout_does_not_cancel_work_that_someone_else_still_awaits() {
    within(|| {
        let event_loop = EventLoop::new();
        let (shared, resolver) = Promise::<i32>::pending();
        let limited = shared.clone().timeout(Duration::ZERO);
        assert!(event_loop.block_on(limited).unwrap_err().is_timeout());
        assert!(
            !shared.is_cancelled(),
            "cancelled although a handle was left"
        );
        assert!(resolver.resolve(5));
        assert_eq!(event_loop.block_on(shared).unwrap(), 5);
    });
}

#[test]
fn the_timeout_of_a_promise_cancelled_elsewhere_is_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let (work, _resolver) = Promise::<i32>::pending();
        let elsewhere = work.clone();
        let limited = work.timeout(HOUR);
        assert!(elsewhere.cancel());
        event_loop.run().unwrap(); // the limit's timer is gone too
        assert!(limited.is_cancelled());
    });
}

#[test]
fn a_timed_out_rejection_is_reported_only_when_nobody_handles_the_result() {
    within(|| {
        let event_loop = EventLoop::new();
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = reports.clone();
        thenable::set_unhandled_rejection_hook(move |error| {
            record.lock().unwrap().push(error.to_string());
        });
        // The work loses and is cancelled: never reported.
        let handled = sleep(HOUR).timeout(ms(1)).catch(|_| Ok(()));
        event_loop.block_on(handled).unwrap();
        // The work rejects first: the rejection reaches the result, consumed here.
        let failed = Promise::<()>::rejected(Error::msg("failed")).timeout(HOUR);
        assert!(event_loop.block_on(failed).is_err());
        event_loop.run().unwrap();
        assert!(reports.lock().unwrap().is_empty());
        // A timeout nobody listens to is reported, like any rejection.
        drop(sleep(HOUR).timeout(ms(1)));
        event_loop.run().unwrap();
        assert_eq!(*reports.lock().unwrap(), ["timed out"]);
    });
}

// ---------------------------------------------------------------------------
// delay
// ---------------------------------------------------------------------------

#[test]
fn delay_fulfils_with_its_value() {
    within(|| {
        let event_loop = EventLoop::new();
        let later = delay(ms(1), "later");
        assert_eq!(event_loop.block_on(later).unwrap(), "later");
    });
}

#[test]
fn cancelling_a_delay_removes_its_timer() {
    within(|| {
        let event_loop = EventLoop::new();
        let handled = Counter::default();
        let seen = handled.clone();
        let value: Promise<i32> = delay(HOUR, 1);
        let after = value.map(move |v| {
            seen.bump();
            v
        });
        assert!(after.cancel());
        event_loop.run().unwrap();
        assert_eq!(handled.get(), 0);
    });
}

#[test]
fn max_delay_stays_pending_until_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let never: Promise<i32> = delay(Duration::MAX, 1);
        event_loop.block_on(sleep(ms(2))).unwrap();
        assert!(never.is_pending());
        assert!(never.cancel());
        event_loop.run().unwrap();
    });
}

// ---------------------------------------------------------------------------
// interval
// ---------------------------------------------------------------------------

#[test]
fn interval_yields_numbered_ticks_and_stops_when_dropped() {
    within(|| {
        let event_loop = EventLoop::new();
        let ticks = event_loop.block_on(async {
            let mut ticks = interval(ms(1));
            let mut seen = Vec::new();
            for _ in 0..5 {
                seen.push(next_tick(&mut ticks).await);
            }
            Ok::<_, Error>(seen)
        });
        assert_eq!(
            ticks.unwrap(),
            [Some(1), Some(2), Some(3), Some(4), Some(5)]
        );
        // The stream was dropped at the end of the block: its timer is gone.
        event_loop.run().unwrap();
    });
}

#[test]
fn a_slow_consumer_gets_every_tick_in_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let ticks = event_loop.block_on(async {
            let mut ticks = interval(ms(1));
            let first = next_tick(&mut ticks).await;
            // Several periods pass while the consumer is busy.
            sleep(ms(10)).await?;
            let mut later = Vec::new();
            for _ in 0..3 {
                later.push(next_tick(&mut ticks).await);
            }
            Ok::<_, Error>((first, later))
        });
        let (first, later) = ticks.unwrap();
        assert_eq!(first, Some(1));
        assert_eq!(later, [Some(2), Some(3), Some(4)], "ticks were skipped");
        event_loop.run().unwrap();
    });
}

#[test]
fn an_interval_dropped_on_another_thread_stops_at_its_next_tick() {
    within(|| {
        let event_loop = EventLoop::new();
        let ticks = interval(ms(1));
        thread::spawn(move || drop(ticks)).join().unwrap();
        event_loop.run().unwrap();
    });
}

#[test]
fn a_zero_period_still_ticks() {
    within(|| {
        let event_loop = EventLoop::new();
        let ticks = event_loop.block_on(async {
            let mut ticks = interval(Duration::ZERO);
            let mut seen = Vec::new();
            for _ in 0..3 {
                seen.push(next_tick(&mut ticks).await);
            }
            Ok::<_, Error>(seen)
        });
        assert_eq!(ticks.unwrap(), [Some(1), Some(2), Some(3)]);
        event_loop.run().unwrap();
    });
}
