//! Cancellation (bluebird's model) and unhandled-rejection reports.
//!
//! No timing assertions: a cancelled hour-long sleep must not keep `run()` alive,
//! which `within` turns into a failure (after a generous safety net) instead of a
//! hang.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::{within, Counter, DropCounter, HOUR};
use thenable::{sleep, spawn, Error, EventLoop, Promise};

#[test]
fn a_cancelled_promise_skips_then_and_catch_but_runs_finally() {
    within(|| {
        let event_loop = EventLoop::new();
        let (ran, finally) = (Counter::default(), Counter::default());
        let (p, _r) = Promise::<i32>::pending();
        let (a, b, c) = (ran.clone(), ran.clone(), finally.clone());
        let child = p
            .clone()
            .then(move |v| {
                a.bump();
                Ok(v)
            })
            .catch(move |e| {
                b.bump();
                Err(e)
            })
            .finally(move || c.bump());
        assert!(p.cancel());
        assert!(p.is_cancelled() && !p.is_rejected() && !p.is_pending());
        assert!(!p.cancel(), "a settled promise cannot be cancelled");
        event_loop.run().unwrap();
        assert_eq!(ran.get(), 0);
        assert_eq!(finally.get(), 1);
        assert!(child.is_cancelled());
        assert!(event_loop.block_on(child).unwrap_err().is_cancelled());
        assert!(event_loop.block_on(p).unwrap_err().is_cancelled());
    });
}

#[test]
fn cancelling_the_only_consumer_of_a_sleep_removes_its_timer() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let bump = fired.clone();
        let tail = sleep(HOUR).map(move |()| bump.bump());
        assert!(tail.cancel());
        event_loop.run().unwrap(); // would take an hour if the timer stayed
        assert_eq!(fired.get(), 0);
    });
}

#[test]
fn a_sleep_cancelled_from_another_thread_removes_its_timer_on_its_loop() {
    within(|| {
        let event_loop = EventLoop::new();
        let long = sleep(HOUR);
        let (sent, arrived) = std::sync::mpsc::channel();
        let canceller = std::thread::spawn(move || {
            let long: Promise<()> = arrived.recv().unwrap();
            long.cancel();
            assert!(long.is_cancelled());
        });
        sent.send(long).unwrap();
        canceller.join().unwrap();
        // The loop was asked to clear the timer: it runs that and goes idle, where
        // an hour-long timer left behind would keep it waiting.
        event_loop.run().unwrap();
        // And once the loop is gone, cancelling another of its sleeps is a no-op.
        let orphan = sleep(HOUR);
        drop(event_loop);
        orphan.cancel();
    });
}

#[test]
fn cancellation_travels_upstream_only_when_every_consumer_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let (root, resolver) = Promise::<i32>::pending();
        let upstream_cancelled = Counter::default();
        let flag = upstream_cancelled.clone();
        resolver.on_cancel(move || flag.bump());
        let a = root.clone().map(|v| v + 1);
        let b = root.map(|v| v + 2);
        a.cancel();
        assert_eq!(upstream_cancelled.get(), 0, "b still wants the value");
        assert!(!resolver.is_done());
        b.cancel();
        assert_eq!(upstream_cancelled.get(), 1);
        assert!(resolver.is_done());
        assert!(!resolver.resolve(1));
        event_loop.run().unwrap(); // the cancelled resolver no longer keeps it alive
    });
}

#[test]
fn a_live_handle_keeps_the_upstream_promise_from_being_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let (root, resolver) = Promise::<i32>::pending();
        let child = root.clone().map(|v| v * 2);
        child.cancel();
        assert!(root.is_pending());
        resolver.resolve(21);
        assert_eq!(event_loop.block_on(root).unwrap(), 21);
    });
}

#[test]
fn cancelling_a_task_drops_its_future_and_cancels_what_it_awaited() {
    within(|| {
        let event_loop = EventLoop::new();
        let (dropped, finished) = (Counter::default(), Counter::default());
        let guard = DropCounter(dropped.clone());
        let done = finished.clone();
        let task = spawn(async move {
            let _guard = guard;
            sleep(HOUR).await?;
            done.bump();
            Ok::<_, Error>(())
        });
        // Let the task start and park on its sleep.
        event_loop
            .block_on(sleep(Duration::from_millis(1)))
            .unwrap();
        assert_eq!(dropped.get(), 0);
        assert!(task.cancel());
        event_loop.run().unwrap(); // the hour-long sleep was cancelled too
        assert_eq!(dropped.get(), 1);
        assert_eq!(finished.get(), 0);
        assert!(event_loop.block_on(task).unwrap_err().is_cancelled());
    });
}

#[test]
fn cancelling_a_task_before_it_ever_ran_drops_its_future() {
    within(|| {
        let event_loop = EventLoop::new();
        let dropped = Counter::default();
        let guard = DropCounter(dropped.clone());
        let task = spawn(async move {
            let _guard = guard;
            Ok::<_, Error>(1)
        });
        task.cancel();
        event_loop.run().unwrap();
        assert_eq!(dropped.get(), 1);
    });
}

#[test]
fn a_cancelled_task_never_takes_another_step_even_if_it_was_queued() {
    within(|| {
        let event_loop = EventLoop::new();
        // Queued to run (a new task is polled from the microtask queue), then
        // cancelled before the loop got to it: its body must not run at all.
        let ran = Counter::default();
        let bump = ran.clone();
        let fresh = spawn(async move {
            bump.bump();
            Ok::<_, Error>(())
        });
        assert!(fresh.cancel());
        // Woken (its wait is over, so it is queued again), then cancelled in the
        // same microtask: the code after its `await` must not run.
        let (gate, opener) = Promise::<()>::pending();
        let after = Counter::default();
        let past_the_gate = after.clone();
        let waiting = spawn(async move {
            gate.await?;
            past_the_gate.bump();
            Ok::<_, Error>(())
        });
        // Queued after the task's first poll, which leaves it waiting on the gate.
        thenable::queue_microtask(move || {
            opener.resolve(());
            assert!(waiting.cancel());
        });
        event_loop.run().unwrap();
        assert_eq!(ran.get(), 0, "the fresh task ran after it was cancelled");
        assert_eq!(after.get(), 0, "the woken task ran past its await");
    });
}

#[test]
fn cancellation_reaches_a_promise_returned_by_a_handler() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Counter::default();
        let bump = fired.clone();
        let outer =
            Promise::<()>::resolved(()).then(move |()| sleep(HOUR).map(move |()| bump.bump()));
        // Let the handler run and the adoption attach.
        event_loop
            .block_on(sleep(Duration::from_millis(1)))
            .unwrap();
        assert!(outer.is_pending());
        outer.cancel();
        event_loop.run().unwrap();
        assert_eq!(fired.get(), 0);
    });
}

#[test]
fn cancelling_the_tail_of_a_million_links_reaches_the_root_without_overflow() {
    within(|| {
        let event_loop = EventLoop::new();
        let (root, resolver) = Promise::<u64>::pending();
        let cancelled = Counter::default();
        let flag = cancelled.clone();
        resolver.on_cancel(move || flag.bump());
        let mut tail = root;
        for _ in 0..1_000_000 {
            tail = tail.then(|v| Ok(v + 1));
        }
        tail.cancel();
        assert_eq!(cancelled.get(), 1);
        event_loop.run().unwrap();
    });
}

#[test]
fn on_cancel_registered_after_cancellation_runs_at_once() {
    let (p, r) = Promise::<i32>::pending();
    p.cancel();
    let ran = Counter::default();
    let bump = ran.clone();
    r.on_cancel(move || bump.bump());
    assert_eq!(ran.get(), 1);
}

#[test]
fn an_unhandled_rejection_is_reported_once_and_a_handled_one_not_at_all() {
    within(|| {
        let event_loop = EventLoop::new();
        let seen = Rc::new(RefCell::new(Vec::<String>::new()));
        let log = seen.clone();
        thenable::set_unhandled_rejection_hook(move |e| log.borrow_mut().push(e.to_string()));
        // Rejected inside a drain with nobody attached: reported.
        let lost = Promise::<i32>::resolved(1).then(|_| Err::<i32, _>(Error::msg("lost")));
        // Rejected, then handled later in the same drain: not reported.
        let (p, r) = Promise::<i32>::pending();
        thenable::queue_microtask(move || {
            r.reject(Error::msg("late but handled"));
        });
        thenable::queue_microtask(move || {
            drop(p.catch(|_| Ok(0)));
        });
        // Cancelled: never reported.
        let (c, _rc) = Promise::<i32>::pending();
        c.cancel();
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), ["lost"]);
        drop(lost);
        thenable::reset_unhandled_rejection_hook();
    });
}

#[test]
fn awaiting_a_rejection_counts_as_handling_it() {
    within(|| {
        let event_loop = EventLoop::new();
        let seen = Rc::new(RefCell::new(0));
        let count = seen.clone();
        thenable::set_unhandled_rejection_hook(move |_| *count.borrow_mut() += 1);
        let rejected = Promise::<i32>::rejected(Error::msg("x"));
        assert!(event_loop.block_on(rejected).is_err());
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), 0);
        thenable::reset_unhandled_rejection_hook();
    });
}

#[test]
fn a_combinator_rejected_because_its_input_was_cancelled_is_not_reported() {
    within(|| {
        let event_loop = EventLoop::new();
        let seen = Rc::new(RefCell::new(Vec::<String>::new()));
        let log = seen.clone();
        thenable::set_unhandled_rejection_hook(move |e| log.borrow_mut().push(e.to_string()));
        let (input, _r) = Promise::<i32>::pending();
        let (other, _r2) = Promise::<i32>::pending();
        let gathered = thenable::all([input.clone(), other]);
        input.cancel();
        let shielded = thenable::shield(input);
        event_loop.run().unwrap();
        assert!(gathered.is_rejected() && shielded.is_rejected());
        assert!(seen.borrow().is_empty(), "reported: {:?}", seen.borrow());
        // A real rejection of the same kind of promise is still reported.
        let gathered = thenable::all([Promise::<i32>::rejected(Error::msg("real"))]);
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), ["real"]);
        drop(gathered);
        thenable::reset_unhandled_rejection_hook();
    });
}

#[test]
fn timers_of_any_length_are_clamped_not_a_panic() {
    within(|| {
        let event_loop = EventLoop::new();
        let fired = Rc::new(Cell::new(false));
        let flag = fired.clone();
        let once = thenable::set_timeout(Duration::MAX, move || flag.set(true));
        let every = thenable::set_interval(Duration::MAX, || unreachable!());
        let nap = thenable::sleep(Duration::MAX);
        assert!(nap.cancel());
        thenable::clear_timer(once);
        thenable::clear_timer(every);
        // Nothing is left: run returns at once instead of waiting a century.
        event_loop.run().unwrap();
        assert!(!fired.get());
    });
}

#[test]
fn finally_with_on_a_cancelled_promise_runs_its_callback_and_stays_cancelled() {
    within(|| {
        let event_loop = EventLoop::new();
        let ran = Counter::default();
        let (p, _r) = Promise::<i32>::pending();
        let c = ran.clone();
        let child = p.clone().finally_with(move || {
            c.bump();
            // Not waited for: the child is cancelled, and takes no outcome.
            Promise::<()>::pending().0
        });
        assert!(p.cancel());
        event_loop.run().unwrap();
        assert_eq!(ran.get(), 1);
        assert!(child.is_cancelled());
    });
}
