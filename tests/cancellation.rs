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

// A user's `on_cancel` callback that panics runs wherever the cancellation
// travels: here inside `race`'s job cancelling its losers. Unwound, it left
// `block_on` with the panic, skipped the resolver's other callback, and left the
// hour-long loser running (`run` waited an hour).
#[test]
fn a_panicking_on_cancel_callback_neither_unwinds_nor_stops_the_cancellation() {
    within(|| {
        let event_loop = EventLoop::new();
        let (fired, after) = (Counter::default(), Counter::default());
        let (hooked, resolver) = Promise::<i32>::pending();
        resolver.on_cancel(|| panic!("an on_cancel callback {}", common::MARK));
        let bump = after.clone();
        resolver.on_cancel(move || bump.bump());
        let bump = fired.clone();
        let hour_long = sleep(HOUR).map(move |()| {
            bump.bump();
            0
        });
        let winner = thenable::race([hooked, hour_long, Promise::resolved(1)]);
        assert_eq!(event_loop.block_on(winner).unwrap(), 1);
        assert_eq!(after.get(), 1, "the resolver's other callback ran");
        assert!(resolver.is_done());
        event_loop.run().unwrap(); // would take an hour if the sleep were left
        assert_eq!(fired.get(), 0);

        // Cancelled directly, the same: `cancel` returns instead of unwinding.
        let (p, r) = Promise::<i32>::pending();
        r.on_cancel(|| panic!("a direct one {}", common::MARK));
        let bump = after.clone();
        r.on_cancel(move || bump.bump());
        assert!(p.cancel());
        assert_eq!(after.get(), 2);
        // Registered once cancelled, it runs at once, contained too.
        r.on_cancel(|| panic!("a late one {}", common::MARK));
    });
}

// An `on_cancel` callback that can no longer run is let go as its promise
// settles, not kept as long as the promise (or a resolver clone) is: a settled
// promise may be kept for long (a cache's), and the callback may hold what
// stops the work (a channel's sender, which keeps a worker waiting).
#[test]
fn on_cancel_callbacks_are_released_once_the_promise_settles_otherwise() {
    within(|| {
        let event_loop = EventLoop::new();
        let (ran, released) = (Counter::default(), Counter::default());
        let hooked = |resolver: &thenable::Resolver<i32>| {
            let (bump, guard) = (ran.clone(), DropCounter(released.clone()));
            resolver.on_cancel(move || {
                let _guard = guard;
                bump.bump();
            });
        };
        let (fulfilled, resolver) = Promise::<i32>::pending();
        hooked(&resolver);
        resolver.resolve(1);
        assert_eq!(released.get(), 1, "fulfilled: the callback is let go");
        let (rejected, resolver2) = Promise::<i32>::pending();
        hooked(&resolver2);
        resolver2.reject(Error::msg("no"));
        assert_eq!(released.get(), 2, "rejected");
        let (broken, resolver3) = Promise::<i32>::pending();
        hooked(&resolver3);
        drop(resolver3);
        assert_eq!(released.get(), 3, "broken");
        // Following another promise, it may still be cancelled: kept until the
        // followed promise settles it.
        let (followed, source) = Promise::<i32>::pending();
        let (follower, resolver4) = Promise::<i32>::pending();
        hooked(&resolver4);
        resolver4.resolve_with(followed);
        // (The two rejections are reported meanwhile, as nobody handles them.)
        thenable::set_unhandled_rejection_hook(|_| {});
        event_loop
            .block_on(sleep(Duration::from_millis(1)))
            .unwrap();
        thenable::reset_unhandled_rejection_hook();
        assert_eq!(released.get(), 3, "following: still wanted");
        source.resolve(2);
        event_loop.run().unwrap();
        assert!(follower.is_fulfilled());
        assert_eq!(released.get(), 4, "settled by the followed promise");
        assert_eq!(ran.get(), 0);
        // Kept alive all along, with their resolvers.
        assert!(fulfilled.is_fulfilled() && rejected.is_rejected() && broken.is_rejected());
        assert!(!fulfilled.cancel() && !follower.cancel());
        assert_eq!(ran.get(), 0);
        drop((resolver, resolver2, resolver4));
    });
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

// With `E = Box<dyn std::error::Error + Send + Sync>` (which the library's
// failures convert into), the report named the type ("a rejection of type
// alloc::boxed::Box<dyn ...>") instead of giving the message; and a task
// passing a cancellation on with `?` was reported, where with `E = Error` it is
// not. The same for `std::io::Error`, whose report already had the message.
#[test]
fn rejections_of_boxed_and_io_errors_are_reported_with_their_message() {
    type Boxed = Box<dyn std::error::Error + Send + Sync>;
    within(|| {
        let event_loop = EventLoop::new();
        let seen = Rc::new(RefCell::new(Vec::<String>::new()));
        let log = seen.clone();
        thenable::set_unhandled_rejection_hook(move |e| log.borrow_mut().push(e.to_string()));
        drop(Promise::<i32, Boxed>::rejected("disk on fire".into()));
        drop(Promise::<i32, Boxed>::rejected(
            Error::msg("from an Error").into(),
        ));
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        drop(Promise::<i32, std::io::Error>::rejected(io));
        // Cancellation travelling on through a user's task (its `await` gives
        // `E::from(Error::cancelled())`, which `?` returns): not reported.
        let (input, _r) = Promise::<i32>::pending();
        let boxed = input.clone().map_err(Boxed::from);
        let io = input.clone().map_err(std::io::Error::from);
        let passed_boxed = spawn(async move { Ok::<i32, Boxed>(boxed.await? + 1) });
        let passed_io = spawn(async move { Ok::<i32, std::io::Error>(io.await? + 1) });
        event_loop
            .block_on(sleep(Duration::from_millis(1)))
            .unwrap();
        assert!(input.cancel());
        event_loop.run().unwrap();
        assert!(passed_boxed.is_rejected() && passed_io.is_rejected());
        drop((passed_boxed, passed_io));
        event_loop.run().unwrap();
        assert_eq!(
            *seen.borrow(),
            ["disk on fire", "from an Error", "no such file"]
        );
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
