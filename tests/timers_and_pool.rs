//! The timer API and the blocking pool as users call them: orders checked against
//! Node.js 20 (the script each test mirrors is quoted above it), cleared timers
//! that must neither fire nor keep a loop alive, ids that outlive their timer,
//! huge delays, timers handled from other threads and other loops, and
//! `spawn_blocking` results whose asking loop is gone or never existed.
//!
//! Nothing here asserts on durations: a timer left behind keeps `run` going for
//! an hour or a century, which [`within`] turns into a failure.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{ms, within, Counter, Log, HOUR};
use thenable::{
    clear_timer, delay, interval, queue_microtask, set_immediate, set_interval, set_timeout, sleep,
    spawn_blocking, Error, EventLoop, Promise,
};

fn pusher(log: &Log, event: &'static str) -> impl FnOnce() + Send + 'static {
    let log = log.clone();
    move || log.push(event)
}

/// Runs `body` on a fresh loop, then the loop until it is idle; returns what was
/// logged (a hang fails through [`within`]).
fn run_logged(body: impl FnOnce(&EventLoop, &Log) + Send + 'static) -> Vec<String> {
    within(|| {
        let event_loop = EventLoop::new();
        let log = Log::default();
        body(&event_loop, &log);
        event_loop.run().unwrap();
        log.entries()
    })
}

// ---------------------------------------------------------------------------
// Order against Node.js
// ---------------------------------------------------------------------------

// let b;
// setTimeout(() => { log('A'); clearTimeout(b); setTimeout(() => log('C'), 0);
//                    Promise.resolve().then(() => log('mA')) }, 5);
// b = setTimeout(() => log('B'), 5);
// setTimeout(() => log('D'), 5);
// => A, mA, D, C
#[test]
fn a_timer_cleared_by_an_earlier_one_of_its_batch_never_fires_and_its_stale_id_clears_nothing() {
    let log = run_logged(|_, log| {
        let b = Rc::new(Cell::new(None));
        let (l, b_in_a) = (log.clone(), b.clone());
        set_timeout(ms(5), move || {
            l.push("A");
            assert!(clear_timer(b_in_a.get().unwrap()));
            // Takes B's freed place, with a new generation.
            set_timeout(Duration::ZERO, pusher(&l, "C"));
            queue_microtask(pusher(&l, "mA"));
        });
        b.set(Some(set_timeout(ms(5), pusher(log, "B"))));
        let (l, b_in_d) = (log.clone(), b.clone());
        set_timeout(ms(5), move || {
            l.push("D");
            // B's id names C's place now: it must not cancel C.
            assert!(!clear_timer(b_in_d.get().unwrap()));
        });
    });
    assert_eq!(log, ["A", "mA", "D", "C"]);
}

// let n = 0; const id = setInterval(() => { n++; log('i' + n);
//   if (n == 1) { clearInterval(id); setTimeout(() => log('t'), 0) } }, 2);
// => i1, t
#[test]
fn an_interval_cleared_in_its_own_callback_fires_once_and_its_place_can_be_reused() {
    let log = run_logged(|_, log| {
        let id = Rc::new(Cell::new(None));
        let (l, me) = (log.clone(), id.clone());
        let mut n = 0;
        id.set(Some(set_interval(ms(2), move || {
            n += 1;
            l.push(format!("i{n}"));
            if n == 1 {
                assert!(clear_timer(me.get().unwrap()));
                // Reuses the interval's place while the interval still runs.
                set_timeout(Duration::ZERO, pusher(&l, "t"));
            }
        })));
    });
    assert_eq!(log, ["i1", "t"]);
}

// let t; const id = setInterval(() => { log('I'); clearTimeout(t) }, 5);
// t = setTimeout(() => log('T'), 5);
// setTimeout(() => { log('X'); clearInterval(id) }, 5);
// => I, X
#[test]
fn an_interval_and_timeouts_of_one_batch_clear_each_other_in_scheduling_order() {
    let log = run_logged(|_, log| {
        let t = Rc::new(Cell::new(None));
        let (l, t_in_i) = (log.clone(), t.clone());
        let id = set_interval(ms(5), move || {
            l.push("I");
            clear_timer(t_in_i.get().unwrap());
        });
        t.set(Some(set_timeout(ms(5), pusher(log, "T"))));
        let l = log.clone();
        set_timeout(ms(5), move || {
            l.push("X");
            assert!(clear_timer(id));
        });
    });
    assert_eq!(log, ["I", "X"]);
}

/// Spins for at least `d` (a callback that takes longer than its period).
fn busy_for(d: Duration) {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        std::hint::spin_loop();
    }
}

// let first = true;
// const id = setInterval(() => {
//   log('I');
//   if (first) { first = false; busy(30); setTimeout(() => log('T'), 5) }
//   else clearInterval(id);
// }, 10);
// => I, I, T
// The period counts from when the run started: the first run ends 30 ms after
// it started, past its next due time (10 ms after the start), so the second run
// is due before `T` (at least 35 ms after the start), whatever the machine's
// speed. Counted from the end of the run, it would be due at 40 ms: after `T`.
#[test]
fn an_interval_that_runs_longer_than_its_period_is_due_again_a_period_after_it_started() {
    let log = run_logged(|_, log| {
        let first = Cell::new(true);
        let me = Rc::new(Cell::new(None));
        let (l, id) = (log.clone(), me.clone());
        me.set(Some(set_interval(ms(10), move || {
            l.push("I");
            if first.replace(false) {
                busy_for(ms(30));
                set_timeout(ms(5), pusher(&l, "T"));
            } else {
                assert!(clear_timer(id.get().unwrap()));
            }
        })));
    });
    assert_eq!(log, ["I", "I", "T"]);
}
// setTimeout(() => { setTimeout(() => log('T0'), 0); setImmediate(() => log('I'));
//                    Promise.resolve().then(() => log('m')) }, 2);
// => m, I, T0
#[test]
fn inside_a_timer_callback_an_immediate_runs_before_a_zero_timeout() {
    let log = run_logged(|_, log| {
        let l = log.clone();
        set_timeout(ms(2), move || {
            set_timeout(Duration::ZERO, pusher(&l, "T0"));
            set_immediate(pusher(&l, "I"));
            queue_microtask(pusher(&l, "m"));
        });
    });
    assert_eq!(log, ["m", "I", "T0"]);
}

// ---------------------------------------------------------------------------
// What a cleared or dropped timer leaves behind
// ---------------------------------------------------------------------------

/// Clears a timer when dropped: an RAII guard a callback may own.
struct ClearOnDrop(thenable::TimerId, Counter);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if clear_timer(self.0) {
            self.1.bump();
        }
    }
}

#[test]
fn an_interval_that_clears_itself_may_own_a_guard_that_clears_another_timer() {
    let (ticks, cleared) = within(|| {
        let event_loop = EventLoop::new();
        let (ticks, cleared) = (Counter::default(), Counter::default());
        let guarded = set_timeout(HOUR, || unreachable!("cleared by the guard"));
        let guard = ClearOnDrop(guarded, cleared.clone());
        let id = Rc::new(Cell::new(None));
        let (me, count) = (id.clone(), ticks.clone());
        id.set(Some(set_interval(ms(1), move || {
            let _owned = &guard;
            count.bump();
            clear_timer(me.get().unwrap());
        })));
        event_loop.run().unwrap();
        (ticks.get(), cleared.get())
    });
    assert_eq!((ticks, cleared), (1, 1));
}

#[test]
fn an_hourly_interval_stream_dropped_on_another_thread_stops_keeping_its_loop_alive() {
    within(|| {
        let event_loop = EventLoop::new();
        let ticks = interval(HOUR);
        thread::spawn(move || drop(ticks)).join().unwrap();
        event_loop.run().unwrap();
    });
}

#[test]
fn an_hourly_interval_stream_dropped_while_another_loop_is_current_stops_keeping_its_own_alive() {
    within(|| {
        let first = EventLoop::new();
        let ticks = interval(HOUR);
        let second = EventLoop::new(); // the ambient loop from now on
        drop(ticks);
        second.run().unwrap();
        first.run().unwrap();
    });
}

#[test]
fn a_century_timer_cleared_from_another_thread_through_a_handle_lets_run_return() {
    let fired = within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let never = fired.clone();
        let id = set_timeout(Duration::MAX, move || never.bump());
        let cleared = Counter::default();
        let (handle, done) = (event_loop.handle(), cleared.clone());
        let poster = thread::spawn(move || {
            // Gives the loop time to go to sleep on the century timer (not needed
            // for the outcome).
            thread::sleep(ms(20));
            handle.post(move || {
                if clear_timer(id) {
                    done.bump();
                }
            });
        });
        event_loop.run().unwrap();
        poster.join().unwrap();
        assert_eq!(cleared.get(), 1, "the timer was cleared on its loop");
        fired.get()
    });
    assert_eq!(fired, 0);
}

#[test]
fn timers_set_from_another_thread_through_a_handle_fire_in_order_on_the_loop() {
    let log = run_logged(|event_loop, log| {
        let (handle, l) = (event_loop.handle(), log.clone());
        let loop_thread = thread::current().id();
        thread::spawn(move || {
            handle.post(move || {
                assert_eq!(thread::current().id(), loop_thread);
                set_timeout(ms(3), pusher(&l, "b"));
                set_timeout(ms(1), pusher(&l, "a"));
                let (l, stale) = (l.clone(), set_timeout(ms(2), || unreachable!()));
                assert!(clear_timer(stale));
                set_timeout(ms(3), pusher(&l, "c"));
            });
        })
        .join()
        .unwrap();
    });
    assert_eq!(log, ["a", "b", "c"]);
}

#[test]
fn a_timer_id_of_another_loop_of_the_thread_is_refused_without_touching_either_loop() {
    let (fired_first, fired_second) = within(|| {
        let first = EventLoop::new();
        let (a, b) = (Counter::default(), Counter::default());
        let fa = a.clone();
        let id = set_timeout(ms(1), move || fa.bump());
        let second = EventLoop::new();
        let fb = b.clone();
        // Likely the same place and generation as `id` in the second loop's table.
        let other = set_timeout(ms(1), move || fb.bump());
        assert!(
            !clear_timer(id),
            "the first loop's id is refused by the second"
        );
        second.run().unwrap();
        drop(second);
        assert!(!clear_timer(other), "the second loop's id, once it is gone");
        first.run().unwrap();
        (a.get(), b.get())
    });
    assert_eq!((fired_first, fired_second), (1, 1));
}

/// Delays that are not whole milliseconds, which the loop's wait (`epoll_wait`
/// counts milliseconds) must round up, never down.
const ODD_DELAYS: [Duration; 4] = [
    Duration::from_micros(300),
    Duration::from_micros(1_500),
    Duration::from_micros(2_700),
    Duration::from_micros(4_999),
];

// Lower bounds only: however late the machine runs them, no timer may run
// before its delay has passed since it was set (an interval's k-th run, k
// periods), nor a `sleep`, `delay` or `timeout` settle before theirs.
#[test]
fn no_timer_fires_before_its_delay_has_passed() {
    let early = within(|| {
        let event_loop = EventLoop::new();
        let early = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let check = |what: &'static str, set: std::time::Instant, delay: Duration| {
            let early = early.clone();
            move || {
                if set.elapsed() < delay {
                    early.lock().unwrap().push(format!("{what} {delay:?}"));
                }
            }
        };
        let (mut waits, mut resolvers) = (Vec::new(), Vec::new());
        for delay in ODD_DELAYS {
            let set = std::time::Instant::now();
            set_timeout(delay, check("set_timeout", set, delay));
            let slept = check("sleep", set, delay);
            waits.push(sleep(delay).map(move |()| slept()));
            let delayed = check("delay", set, delay);
            waits.push(delay_then(delay, delayed));
            let timed_out = check("timeout", set, delay);
            // Its resolver kept, or the promise would break at once.
            let (never, resolver) = Promise::<()>::pending();
            resolvers.push(resolver);
            waits.push(never.timeout(delay).catch(move |e| {
                assert!(e.is_timeout(), "{e:?}");
                timed_out();
                Ok(())
            }));
            let runs = Rc::new(Cell::new(0u32));
            let me = Rc::new(Cell::new(None));
            let (count, id) = (runs.clone(), me.clone());
            let early = early.clone();
            me.set(Some(set_interval(delay, move || {
                count.set(count.get() + 1);
                if set.elapsed() < delay * count.get() {
                    let run = count.get();
                    early
                        .lock()
                        .unwrap()
                        .push(format!("interval run {run} {delay:?}"));
                }
                if count.get() == 3 {
                    assert!(clear_timer(id.get().unwrap()));
                }
            })));
        }
        event_loop.block_on(thenable::all(waits)).unwrap();
        drop(resolvers);
        event_loop.run().unwrap();
        let early = early.lock().unwrap().clone();
        early
    });
    assert!(early.is_empty(), "fired early: {early:?}");
}

/// `delay`'s value handed to `then_run` once it arrives.
fn delay_then(duration: Duration, then_run: impl FnOnce() + Send + 'static) -> Promise<()> {
    delay(duration, ()).map(move |()| then_run())
}

#[test]
fn delays_of_u64_max_milliseconds_neither_panic_nor_fire() {
    within(|| {
        let event_loop = EventLoop::new();
        let huge = Duration::from_millis(u64::MAX);
        let id = set_timeout(huge, || unreachable!());
        let every = set_interval(huge, || unreachable!());
        let slept = sleep(huge);
        let delayed = delay(huge, 1);
        let limited = Promise::<i32>::resolved(7).timeout(huge);
        let ticks = interval(huge);
        assert_eq!(event_loop.block_on(limited).unwrap(), 7);
        assert!(clear_timer(id) && clear_timer(every));
        slept.cancel();
        delayed.cancel();
        drop(ticks);
        event_loop.run().unwrap();
    });
}

// ---------------------------------------------------------------------------
// timeout
// ---------------------------------------------------------------------------

// Promise.race([new Promise(r => setTimeout(r, 5, 'work')),
//               new Promise((_, j) => setTimeout(j, 5, 'timeout'))])  => 'work'
#[test]
fn work_due_at_the_same_deadline_as_its_timeout_wins_when_its_timer_was_set_first() {
    within(|| {
        let event_loop = EventLoop::new();
        let work = delay(ms(5), "work").timeout(ms(5));
        assert_eq!(event_loop.block_on(work).unwrap(), "work");
        // The other way round: the timeout's timer was set first.
        let (pending, resolver) = Promise::<&str>::pending();
        let limited = pending.timeout(ms(5));
        set_timeout(ms(5), move || {
            resolver.resolve("late");
        });
        assert!(event_loop.block_on(limited).unwrap_err().is_timeout());
        event_loop.run().unwrap();
    });
}

#[test]
fn an_hour_long_timeout_of_an_already_rejected_promise_rejects_with_its_reason_and_keeps_nothing() {
    within(|| {
        let event_loop = EventLoop::new();
        let limited = Promise::<i32>::rejected(Error::msg("no")).timeout(HOUR);
        assert_eq!(event_loop.block_on(limited).unwrap_err().to_string(), "no");
        event_loop.run().unwrap();
    });
}

// ---------------------------------------------------------------------------
// spawn_blocking
// ---------------------------------------------------------------------------

#[test]
fn a_blocking_result_whose_loop_was_dropped_can_still_be_awaited_and_the_pool_goes_on() {
    let (first, second) = within(|| {
        let (release, hold) = mpsc::channel::<()>();
        let job = thread::spawn(move || {
            let event_loop = EventLoop::new();
            let job = spawn_blocking(move || {
                hold.recv().unwrap();
                Ok::<_, Error>(5)
            });
            drop(event_loop);
            job
        })
        .join()
        .unwrap();
        release.send(()).unwrap();
        let event_loop = EventLoop::new();
        let first = event_loop.block_on(job);
        let second = event_loop.block_on(spawn_blocking(|| Ok::<_, Error>(6)));
        (first.unwrap(), second.unwrap())
    });
    assert_eq!((first, second), (5, 6));
}

#[test]
fn a_panicking_job_drops_its_result_slot_and_the_pool_serves_more_jobs_than_threads() {
    let results = within(|| {
        let event_loop = EventLoop::new();
        let jobs: Vec<Promise<usize>> = (0..3 * thenable::MAX_BLOCKING_THREADS)
            .map(|i| {
                spawn_blocking(move || {
                    if i % 3 == 0 {
                        std::panic::panic_any(i); // a non-string payload
                    }
                    Ok(i)
                })
            })
            .collect();
        let results: Vec<_> = jobs
            .into_iter()
            .map(|job| match event_loop.block_on(job) {
                Ok(i) => Ok(i),
                Err(e) => Err(e.is_panic()),
            })
            .collect();
        event_loop.run().unwrap();
        results
    });
    for (i, result) in results.into_iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(result, Err(true), "job {i}");
        } else {
            assert_eq!(result, Ok(i), "job {i}");
        }
    }
}

#[test]
fn a_blocking_job_waiting_in_the_queue_behind_a_full_pool_still_lets_timers_run() {
    let order = within(|| {
        let event_loop = EventLoop::new();
        let log = Rc::new(RefCell::new(Vec::new()));
        let (release, hold) = mpsc::channel::<()>();
        let hold = std::sync::Arc::new(std::sync::Mutex::new(hold));
        // Every pool thread busy until the timer fires; one more job queued.
        let busy: Vec<Promise<()>> = (0..thenable::MAX_BLOCKING_THREADS)
            .map(|_| {
                let hold = hold.clone();
                spawn_blocking(move || {
                    hold.lock().unwrap().recv().unwrap();
                    Ok(())
                })
            })
            .collect();
        let queued = spawn_blocking(|| Ok::<_, Error>("queued"));
        let l = log.clone();
        set_timeout(ms(1), move || {
            l.borrow_mut().push("timer");
            for _ in 0..thenable::MAX_BLOCKING_THREADS {
                release.send(()).unwrap();
            }
        });
        let l = log.clone();
        let value = event_loop.block_on(queued).unwrap();
        l.borrow_mut().push(value);
        for job in busy {
            event_loop.block_on(job).unwrap();
        }
        event_loop.run().unwrap();
        let order = log.borrow().clone();
        order
    });
    assert_eq!(order, ["timer", "queued"]);
}
