//! Rules 5-7 under stress: panics never take the loop down, nothing hangs silently,
//! promises settle across threads, misuse is answered, and promises interoperate
//! with other executors (tokio, `futures::executor`) in both directions.
//!
//! Every test body runs under [`within`], a safety net that turns a hang into a
//! failure after a generous bound; no test asserts on timing.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::{within, Counter, DropCounter, MARK};
use thenable::{block_on, spawn, Error, EventLoop, Promise};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The short pause another thread takes before settling, so that the loop is
/// really blocked when the settle arrives. Nothing asserts on it.
const PAUSE: Duration = Duration::from_millis(50);

/// Never returns; used so that `async` blocks and handlers panic with a typed value.
fn explode(what: &str) -> i32 {
    panic!("{what} {MARK}")
}

fn assert_panic_error<T: std::fmt::Debug>(result: Result<T, Error>, text: &str) {
    let err = result.expect_err("expected a rejection from a panic");
    assert!(err.is_panic(), "not a panic error: {err:?}");
    assert!(
        err.to_string().contains(text),
        "panic error {err:?} does not mention {text:?}"
    );
}

/// Settles `r` with `value` from another thread, after a pause.
fn resolve_later(r: thenable::Resolver<i32>, value: i32) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(PAUSE);
        assert!(r.resolve(value));
    })
}

/// Checks a promise whose handler panics: it rejects with a panic error, work
/// queued behind it still runs, and the loop is usable afterwards.
fn check_handler_panic(make: impl FnOnce() -> Promise<i32> + Send + 'static, text: &'static str) {
    within(move || {
        let event_loop = EventLoop::new();
        let failed = make();
        // Queued after the panicking handler: must still run.
        let after = Promise::<i32>::resolved(2).then(|v| Ok(v * 10));
        let both = spawn(async move { Ok::<_, Error>((failed.await, after.await)) });
        let (failed, after) = event_loop.block_on(both).unwrap();
        assert_panic_error(failed, text);
        assert_eq!(after.unwrap(), 20);
        // The loop keeps serving new work.
        let again = Promise::<i32>::resolved(3).then(|v| Ok(v + 1));
        assert_eq!(event_loop.block_on(again).unwrap(), 4);
    });
}

// ---------------------------------------------------------------------------
// Panics (rule 6)
// ---------------------------------------------------------------------------

#[test]
fn panicking_then_handler_rejects_with_a_panic_error() {
    check_handler_panic(
        || Promise::<i32>::resolved(1).then(|_| Ok::<i32, Error>(explode("then boom"))),
        "then boom",
    );
}

#[test]
fn panicking_then_handler_with_a_str_payload() {
    check_handler_panic(
        || {
            Promise::<i32>::resolved(1)
                .then(|_| -> Result<i32, Error> { panic!("static boom [expected test panic]") })
        },
        "static boom",
    );
}

#[test]
fn panicking_catch_handler_rejects_with_a_panic_error() {
    check_handler_panic(
        || {
            Promise::<i32>::rejected(Error::msg("first"))
                .catch(|_| Ok::<i32, Error>(explode("catch boom")))
        },
        "catch boom",
    );
}

#[test]
fn panicking_finally_handler_rejects_with_a_panic_error() {
    check_handler_panic(
        || {
            Promise::<i32>::resolved(1).finally(|| {
                explode("finally boom");
            })
        },
        "finally boom",
    );
}

#[test]
fn panicking_spawned_future_rejects_with_a_panic_error() {
    check_handler_panic(|| spawn(async { Ok(explode("task boom")) }), "task boom");
}

#[test]
fn spawned_future_panicking_after_a_suspension_rejects() {
    check_handler_panic(
        || {
            spawn(async {
                thenable::sleep(Duration::from_millis(1)).await?;
                Ok(explode("late task boom"))
            })
        },
        "late task boom",
    );
}

#[test]
fn a_panic_rejection_flows_down_the_chain_and_can_be_caught() {
    within(|| {
        let event_loop = EventLoop::new();
        let skipped = Counter::default();
        let counter = skipped.clone();
        let p = Promise::<i32>::resolved(1)
            .then(|_| Ok::<i32, Error>(explode("mid-chain boom")))
            .then(move |v| {
                counter.bump();
                Ok(v)
            })
            .catch(|e| Ok(if e.is_panic() { -1 } else { -2 }));
        assert_eq!(event_loop.block_on(p).unwrap(), -1);
        assert_eq!(skipped.get(), 0);
    });
}

#[test]
fn panicking_executor_of_promise_new_rejects() {
    within(|| {
        let event_loop = EventLoop::new();
        let p = Promise::<i32>::new(|_resolver| {
            explode("executor boom");
        });
        assert_panic_error(event_loop.block_on(p), "executor boom");
    });
}

/// Which loop-level callback panics in [`check_callback_panic`].
#[derive(Clone, Copy, Debug)]
enum Kind {
    Timeout,
    Immediate,
    Microtask,
}

fn schedule(kind: Kind, f: impl FnOnce() + 'static) {
    match kind {
        Kind::Timeout => {
            thenable::set_timeout(Duration::from_millis(1), f);
        }
        Kind::Immediate => thenable::set_immediate(f),
        Kind::Microtask => thenable::queue_microtask(f),
    }
}

/// A panicking callback of `kind` is reported and skipped: callbacks of every kind
/// queued after it run, in the same `run`, and the loop stays usable.
fn check_callback_panic(kind: Kind) {
    within(move || {
        let event_loop = EventLoop::new();
        let log = Rc::new(RefCell::new(Vec::new()));
        schedule(kind, move || {
            explode(&format!("{kind:?} callback boom"));
        });
        let l = log.clone();
        schedule(kind, move || l.borrow_mut().push("same kind after"));
        let l = log.clone();
        thenable::set_timeout(Duration::from_millis(2), move || {
            l.borrow_mut().push("timeout")
        });
        let l = log.clone();
        thenable::set_immediate(move || l.borrow_mut().push("immediate"));
        let l = log.clone();
        thenable::queue_microtask(move || l.borrow_mut().push("microtask"));
        event_loop.run().unwrap();
        let mut seen = log.borrow().clone();
        seen.sort_unstable();
        assert_eq!(
            seen,
            ["immediate", "microtask", "same kind after", "timeout"],
            "after a panicking {kind:?} callback"
        );
        let p = Promise::<i32>::resolved(1).then(|v| Ok(v + 1));
        assert_eq!(event_loop.block_on(p).unwrap(), 2);
    });
}

#[test]
fn panicking_set_timeout_callback_does_not_stop_the_loop() {
    check_callback_panic(Kind::Timeout);
}

#[test]
fn panicking_set_immediate_callback_does_not_stop_the_loop() {
    check_callback_panic(Kind::Immediate);
}

#[test]
fn panicking_queue_microtask_callback_does_not_stop_the_loop() {
    check_callback_panic(Kind::Microtask);
}

#[test]
fn panicking_interval_callback_keeps_its_timer() {
    within(|| {
        let event_loop = EventLoop::new();
        let ticks = Rc::new(Cell::new(0));
        let id = Rc::new(Cell::new(None));
        let (count, me) = (ticks.clone(), id.clone());
        id.set(Some(thenable::set_interval(
            Duration::from_millis(1),
            move || {
                count.set(count.get() + 1);
                if count.get() == 3 {
                    assert!(thenable::clear_timer(me.get().unwrap()));
                }
                if count.get() == 1 {
                    explode("interval boom");
                }
            },
        )));
        event_loop.run().unwrap();
        assert_eq!(ticks.get(), 3);
    });
}

// ---------------------------------------------------------------------------
// Deadlocks and nesting (rule 5)
// ---------------------------------------------------------------------------

#[test]
fn block_on_a_pending_future_is_a_deadlock_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let err = event_loop
            .block_on(std::future::pending::<Result<(), Error>>())
            .unwrap_err();
        assert!(err.is_deadlock(), "{err:?}");
        // The free function, on this thread's default loop, says the same.
        drop(event_loop);
        let err = block_on(std::future::pending::<Result<(), Error>>()).unwrap_err();
        assert!(err.is_deadlock(), "{err:?}");
    });
}

#[test]
fn block_on_a_task_that_waits_for_ever_is_a_deadlock_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let stuck = spawn(std::future::pending::<Result<i32, Error>>());
        let err = event_loop.block_on(stuck).unwrap_err();
        assert!(err.is_deadlock(), "{err:?}");
    });
}

#[test]
fn two_tasks_awaiting_each_other_are_a_deadlock_error() {
    within(|| {
        let event_loop = EventLoop::new();
        // Each task takes the other's promise out of a slot that is filled after
        // both are spawned (tasks start on the microtask queue, not inline).
        let for_a: Arc<Mutex<Option<Promise<i32>>>> = Arc::default();
        let for_b: Arc<Mutex<Option<Promise<i32>>>> = Arc::default();
        let (slot_a, slot_b) = (for_a.clone(), for_b.clone());
        let a = spawn(async move {
            let other = slot_a.lock().unwrap().take().expect("slot filled");
            Ok(other.await? + 1)
        });
        let b = spawn(async move {
            let other = slot_b.lock().unwrap().take().expect("slot filled");
            Ok(other.await? + 1)
        });
        *for_a.lock().unwrap() = Some(b);
        *for_b.lock().unwrap() = Some(a.clone());
        let err = event_loop.block_on(a).unwrap_err();
        assert!(err.is_deadlock(), "{err:?}");
        // The loop is still usable after reporting the deadlock.
        let p = Promise::<i32>::resolved(1).map(|v| v + 1);
        assert_eq!(event_loop.block_on(p).unwrap(), 2);
    });
}

#[test]
fn a_promise_resolved_with_its_own_then_is_a_chaining_cycle() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let follower = p.clone().then(Ok);
        assert!(r.resolve_with(follower));
        let err = event_loop.block_on(p).unwrap_err();
        assert!(err.is_deadlock(), "{err:?}");
    });
}

#[test]
fn a_chaining_cycle_of_any_length_is_refused_and_freed() {
    within(|| {
        let event_loop = EventLoop::new();
        for links in [0, 63, 64, 65, 1_000, 100_000] {
            let freed = Counter::default();
            let guard = DropCounter(freed.clone());
            let (p, r) = Promise::<i32>::pending();
            let mut tail = p.clone().map(move |v| {
                let _held = &guard;
                v
            });
            for _ in 0..links {
                tail = tail.map(|v| v + 1);
            }
            // `p` follows the end of a chain that starts at `p`.
            assert!(r.resolve_with(tail));
            let err = event_loop.block_on(p).unwrap_err();
            assert!(
                err.is_deadlock() && err.to_string().contains("chaining cycle"),
                "{links} links: {err}"
            );
            event_loop.run().unwrap();
            assert_eq!(freed.get(), 1, "{links} links: the cycle was not freed");
        }
    });
}

#[test]
fn block_on_inside_a_running_loop_is_an_error_not_a_hang() {
    within(|| {
        let event_loop = EventLoop::new();
        // From a then-handler, with the free function.
        let from_handler = Promise::<i32>::resolved(1).then(|_| {
            let nested = block_on(Promise::<i32>::resolved(5));
            Ok(nested.map_err(|e| e.to_string()))
        });
        // From a task, with the free function on something that would need the loop.
        let from_task = spawn(async {
            let nested = block_on(thenable::sleep(Duration::from_millis(1)));
            Ok::<_, Error>(nested.map_err(|e| e.to_string()))
        });
        // From a handler, with another loop's `block_on`.
        let other_loop = Promise::<i32>::resolved(1).then(|_| {
            let other = EventLoop::new();
            let nested = other.block_on(Promise::<i32>::resolved(5));
            Ok(nested.map_err(|e| e.to_string()))
        });
        let from_handler = event_loop.block_on(from_handler).unwrap();
        let from_task = event_loop.block_on(from_task).unwrap();
        let other_loop = event_loop.block_on(other_loop).unwrap();
        for (what, nested) in [
            ("handler", from_handler.map(|_| ())),
            ("task", from_task),
            ("handler, other loop", other_loop.map(|_| ())),
        ] {
            let message = nested.expect_err(what);
            println!("nested block_on from {what}: {message}");
        }
    });
}

#[test]
fn run_inside_run_is_an_error() {
    within(|| {
        let event_loop = Rc::new(EventLoop::new());
        let results: Rc<RefCell<Vec<Result<(), Error>>>> = Rc::default();
        let (me, out) = (event_loop.clone(), results.clone());
        thenable::set_immediate(move || out.borrow_mut().push(me.run()));
        let out = results.clone();
        thenable::queue_microtask(move || {
            let other = EventLoop::new();
            out.borrow_mut().push(other.run());
        });
        event_loop.run().unwrap();
        let results = results.borrow();
        assert_eq!(results.len(), 2);
        for result in results.iter() {
            let err = result.as_ref().expect_err("nested run must fail");
            println!("nested run: {err}");
        }
    });
}

// ---------------------------------------------------------------------------
// Cross-thread settling (rule 7)
// ---------------------------------------------------------------------------

#[test]
fn block_on_is_woken_by_a_resolver_settled_from_another_thread() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let settler = thread::spawn(move || {
            thread::sleep(PAUSE);
            assert!(r.resolve(7));
        });
        assert_eq!(event_loop.block_on(p).unwrap(), 7);
        settler.join().unwrap();
    });
}

#[test]
fn block_on_is_woken_by_a_rejection_from_another_thread() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let settler = thread::spawn(move || {
            thread::sleep(PAUSE);
            assert!(r.reject(Error::msg("remote failure")));
        });
        let err = event_loop.block_on(p).unwrap_err();
        assert_eq!(err.to_string(), "remote failure");
        settler.join().unwrap();
    });
}

#[test]
fn a_then_chain_on_a_remotely_settled_promise_runs_on_the_loop_thread() {
    within(|| {
        let event_loop = EventLoop::new();
        let loop_thread = thread::current().id();
        let seen: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
        let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
        let (p, r) = Promise::<i32>::pending();
        let chain = p
            .then(move |v| {
                s1.lock().unwrap().push(thread::current().id());
                Ok(v + 1)
            })
            .map(move |v| {
                s2.lock().unwrap().push(thread::current().id());
                v * 2
            })
            .then(move |v| {
                s3.lock().unwrap().push(thread::current().id());
                Promise::resolved(v + 1)
            });
        let settler = thread::spawn(move || {
            thread::sleep(PAUSE);
            assert!(r.resolve(1));
        });
        assert_eq!(event_loop.block_on(chain).unwrap(), 5);
        settler.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), [loop_thread; 3]);
    });
}

#[test]
fn run_is_woken_by_a_resolver_settled_from_another_thread() {
    within(|| {
        let event_loop = EventLoop::new();
        let loop_thread = thread::current().id();
        let seen: Arc<Mutex<Vec<(i32, ThreadId)>>> = Arc::default();
        let (p, r) = Promise::<i32>::pending();
        let out = seen.clone();
        let _done = p.then(|v| Ok(v + 1)).map(move |v| {
            out.lock().unwrap().push((v, thread::current().id()));
        });
        let (q, rq) = Promise::<i32>::pending();
        let out = seen.clone();
        let _rejected = q.catch(move |e| {
            assert_eq!(e.to_string(), "remote");
            out.lock().unwrap().push((-1, thread::current().id()));
            Ok(0)
        });
        let settler = thread::spawn(move || {
            thread::sleep(PAUSE);
            assert!(r.resolve(3));
            assert!(rq.reject(Error::msg("remote")));
        });
        // `run` returns once the resolvers are settled (they kept the loop alive)
        // and the handlers they triggered have run.
        event_loop.run().unwrap();
        settler.join().unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable_by_key(|&(v, _)| v);
        assert_eq!(seen, [(-1, loop_thread), (4, loop_thread)]);
    });
}

#[test]
fn a_resolver_dropped_on_another_thread_wakes_block_on_with_broken() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let dropper = thread::spawn(move || {
            thread::sleep(PAUSE);
            drop(r);
        });
        let err = event_loop.block_on(p).unwrap_err();
        assert!(err.is_broken(), "{err:?}");
        dropper.join().unwrap();
    });
}

#[test]
fn loop_handle_post_from_another_thread_runs_on_the_loop_thread() {
    within(|| {
        let event_loop = EventLoop::new();
        let loop_thread = thread::current().id();
        let ran_on: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
        let handle = event_loop.handle();
        let out = ran_on.clone();
        let poster = thread::spawn(move || {
            thread::sleep(PAUSE);
            for _ in 0..3 {
                let out = out.clone();
                assert!(handle.post(move || out.lock().unwrap().push(thread::current().id())));
            }
            // Dropping the last handle lets `run` return.
        });
        event_loop.run().unwrap();
        poster.join().unwrap();
        assert_eq!(*ran_on.lock().unwrap(), [loop_thread; 3]);
    });
}

#[test]
fn loop_handle_spawn_from_another_thread_runs_on_the_loop_thread() {
    within(|| {
        let event_loop = EventLoop::new();
        let loop_thread = thread::current().id();
        let handle = event_loop.handle();
        let spawner = thread::spawn(move || {
            thread::sleep(PAUSE);
            handle.spawn(async {
                thenable::sleep(Duration::from_millis(1)).await?;
                Ok::<_, Error>(thread::current().id())
            })
        });
        event_loop.run().unwrap();
        let p = spawner.join().unwrap();
        assert_eq!(event_loop.block_on(p).unwrap(), loop_thread);
    });
}

#[test]
fn loop_handle_spawn_while_the_loop_is_blocked_in_block_on() {
    within(|| {
        let event_loop = EventLoop::new();
        let loop_thread = thread::current().id();
        let handle = event_loop.handle();
        let (tx, rx) = mpsc::channel();
        let spawner = thread::spawn(move || {
            thread::sleep(PAUSE);
            let p = handle.spawn(async { Ok::<_, Error>(thread::current().id()) });
            tx.send(p).unwrap();
        });
        // The loop waits in block_on on a promise settled by the spawned task.
        let (gate, opener) = Promise::<()>::pending();
        let wait = spawn(async move {
            gate.await?;
            Ok::<_, Error>(())
        });
        let watcher = thread::spawn(move || {
            let p = rx.recv().unwrap();
            let id = futures::executor::block_on(p);
            opener.resolve(());
            id
        });
        event_loop.block_on(wait).unwrap();
        spawner.join().unwrap();
        assert_eq!(watcher.join().unwrap().unwrap(), loop_thread);
    });
}

// ---------------------------------------------------------------------------
// Misuse
// ---------------------------------------------------------------------------

#[test]
fn settling_twice_returns_false_and_keeps_the_first_outcome() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let clone = r.clone();
        assert!(!r.is_done());
        assert!(r.resolve(1));
        assert!(r.is_done() && clone.is_done());
        assert!(!r.resolve(2));
        assert!(!clone.resolve(3));
        assert!(!r.reject(Error::msg("late")));
        assert!(!clone.resolve_with(Promise::resolved(4)));
        assert_eq!(event_loop.block_on(p).unwrap(), 1);

        let (p, r) = Promise::<i32>::pending();
        assert!(r.reject(Error::msg("first")));
        assert!(!r.resolve(2));
        assert_eq!(event_loop.block_on(p).unwrap_err().to_string(), "first");

        let (p, r) = Promise::<i32>::pending();
        assert!(r.resolve_with(Promise::resolved(5)));
        assert!(!r.resolve(6));
        assert!(!r.reject(Error::msg("late")));
        assert_eq!(event_loop.block_on(p).unwrap(), 5);
    });
}

#[test]
fn dropping_every_resolver_breaks_the_promise() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<i32>::pending();
        let clone = r.clone();
        drop(r);
        assert!(p.is_pending(), "one clone is still alive");
        drop(clone);
        let err = event_loop.block_on(p).unwrap_err();
        assert!(err.is_broken(), "{err:?}");

        // Promise::new whose executor drops its resolver.
        let p = Promise::<i32>::new(drop);
        let err = event_loop.block_on(p).unwrap_err();
        assert!(err.is_broken(), "{err:?}");

        // A chain behind a broken promise sees the rejection, handlers skipped.
        let (p, r) = Promise::<i32>::pending();
        let chain = p.then(|_| Ok::<i32, Error>(explode("must not run")));
        drop(r);
        let err = event_loop.block_on(chain).unwrap_err();
        assert!(err.is_broken(), "{err:?}");
    });
}

#[test]
fn dropping_a_loop_abandons_its_work_and_breaks_waiting_promises() {
    within(|| {
        let drops = Counter::default();
        let ran = Counter::default();
        let guard = || DropCounter(drops.clone());
        let mark_ran = |ran: &Counter| ran.bump();
        let event_loop = EventLoop::new();

        // Tasks polled once and parked: one on a future nothing will wake, one on
        // a promise whose resolver the test keeps.
        let (gate, opener) = Promise::<i32>::pending();
        let (g, r) = (guard(), ran.clone());
        let parked_forever = spawn(async move {
            let _g = g;
            std::future::pending::<()>().await;
            mark_ran(&r);
            Ok::<_, Error>(1)
        });
        let (g, r) = (guard(), ran.clone());
        let parked_on_gate = spawn(async move {
            let _g = g;
            let v = gate.await?;
            mark_ran(&r);
            Ok::<_, Error>(v)
        });
        // Runs after both parked tasks were polled (microtasks run in order).
        event_loop
            .block_on(spawn(async { Ok::<_, Error>(()) }))
            .unwrap();
        assert_eq!(drops.get(), 0, "parked tasks are alive");

        // Queued work that never gets to run.
        let (g, r) = (guard(), ran.clone());
        let queued_then = Promise::<i32>::resolved(1).then(move |v| {
            let _g = &g;
            mark_ran(&r);
            Ok(v)
        });
        let r = ran.clone();
        let behind_queued = queued_then.clone().then(move |v| {
            mark_ran(&r);
            Ok(v)
        });
        let (g, r) = (guard(), ran.clone());
        let never_polled = spawn(async move {
            let _g = g;
            mark_ran(&r);
            Ok::<_, Error>(2)
        });
        let (g, r) = (guard(), ran.clone());
        thenable::set_timeout(Duration::from_secs(3600), move || {
            let _g = &g;
            mark_ran(&r);
        });
        let (g, r) = (guard(), ran.clone());
        thenable::set_immediate(move || {
            let _g = &g;
            mark_ran(&r);
        });
        let (g, r) = (guard(), ran.clone());
        thenable::queue_microtask(move || {
            let _g = &g;
            mark_ran(&r);
        });
        let slept = thenable::sleep(Duration::from_secs(3600));
        // Not the loop's work: a handler attached to a promise whose resolver
        // outlives the loop, which runs once the promise settles.
        let (late, late_resolver) = Promise::<i32>::pending();
        let (g, late_ran) = (guard(), Counter::default());
        let r = late_ran.clone();
        let after_late = late.then(move |v| {
            let _g = &g;
            mark_ran(&r);
            Ok(v)
        });

        drop(event_loop);

        let guards = 7;
        assert_eq!(drops.get(), guards, "destructors ran");
        assert_eq!(ran.get(), 0, "no handler ran");
        // Settled after the loop is gone: the reaction is an orphan, run by
        // whoever waits next.
        assert!(late_resolver.resolve(5));
        assert_eq!(futures::executor::block_on(after_late).unwrap(), 5);
        assert_eq!(late_ran.get(), 1);
        assert_eq!(drops.get(), guards + 1, "the late handler was dropped");

        let expect_broken = |what: &str, outcome: Result<i32, Error>| {
            let err = outcome.expect_err(what);
            assert!(err.is_broken(), "{what}: {err:?}");
        };
        expect_broken(
            "parked forever",
            futures::executor::block_on(parked_forever),
        );
        expect_broken(
            "parked on gate",
            futures::executor::block_on(parked_on_gate),
        );
        expect_broken("queued then", futures::executor::block_on(queued_then));
        expect_broken("behind queued", futures::executor::block_on(behind_queued));
        expect_broken("never polled", futures::executor::block_on(never_polled));
        let err = EventLoop::new().block_on(slept).unwrap_err();
        assert!(err.is_broken(), "sleep: {err:?}");
        drop(opener);
        assert_eq!(ran.get(), 0, "still no handler ran");
    });
}

#[test]
fn a_promise_is_awaitable_from_a_thread_without_a_loop() {
    within(|| {
        // futures' executor on a plain thread.
        let (p, r) = Promise::<i32>::pending();
        let waiter = thread::spawn(move || futures::executor::block_on(p));
        thread::sleep(PAUSE);
        assert!(r.resolve(1));
        assert_eq!(waiter.join().unwrap().unwrap(), 1);

        // thenable's block_on on a fresh thread (its default loop), resolver here.
        let (p, r) = Promise::<i32>::pending();
        let waiter = thread::spawn(move || block_on(p));
        thread::sleep(PAUSE);
        assert!(r.resolve(2));
        assert_eq!(waiter.join().unwrap().unwrap(), 2);

        // The resolver moves to a third thread while the waiting thread chains
        // `then` on a promise of its own making.
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let (p, r) = Promise::<i32>::pending();
            tx.send(r).unwrap();
            futures::executor::block_on(p.then(|v| Ok(v * 10)).map(|v| v + 1))
        });
        let r = rx.recv().unwrap();
        let settler = thread::spawn(move || {
            thread::sleep(PAUSE);
            assert!(r.resolve(3));
        });
        settler.join().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 31);
    });
}

/// `thenable::block_on` on another thread, of a chain built here whose resolver
/// is alive (and settled later from a third thread): not a deadlock.
#[test]
fn thenable_block_on_of_a_chain_built_on_another_thread() {
    within(|| {
        let (p, r) = Promise::<i32>::pending();
        let chain = p.then(|v| Ok(v + 1));
        let waiter = thread::spawn(move || block_on(chain));
        let settler = resolve_later(r, 1);
        settler.join().unwrap();
        assert_eq!(waiter.join().unwrap().map_err(|e| e.to_string()), Ok(2));
    });
}

// ---------------------------------------------------------------------------
// Interop with other executors
// ---------------------------------------------------------------------------

/// Handlers due on a thread that runs no loop (its promise settled already, or
/// settled by a resolver made there) run wherever the chain is awaited: in a tokio
/// worker, or on another thread, not in a queue nobody will drive.
#[test]
fn a_chain_built_on_one_thread_completes_when_awaited_on_another() {
    within(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let p = Promise::<i32>::resolved(1).map(|v| v + 41);
            tokio::spawn(p).await.unwrap()
        });
        assert_eq!(got.unwrap(), 42);

        let p = Promise::<i32>::resolved(1).then(|v| Ok(v + 1));
        let got = thread::spawn(move || futures::executor::block_on(p)).join();
        assert_eq!(got.unwrap().unwrap(), 2);

        // Settled by a resolver made here, on this thread, before anyone waits.
        let (p, r) = Promise::<i32>::pending();
        let chain = p.map(|v| v * 10);
        assert!(r.resolve(3));
        let got = thread::spawn(move || futures::executor::block_on(chain)).join();
        assert_eq!(got.unwrap().unwrap(), 30);
    });
}

/// Work queued before a loop existed, or for an older loop of this thread, runs on
/// the loop that is run: waiting on it is not a deadlock.
#[test]
fn work_queued_for_another_loop_of_this_thread_runs_on_the_running_one() {
    within(|| {
        let before = Promise::<i32>::resolved(1).map(|v| v + 1);
        let event_loop = EventLoop::new();
        assert_eq!(event_loop.block_on(before).unwrap(), 2);

        let older = EventLoop::new();
        let (p, r) = Promise::<i32>::pending(); // homed on `older`
        let newer = EventLoop::new();
        thenable::set_timeout(Duration::from_millis(1), move || {
            r.resolve(1);
        });
        assert_eq!(newer.block_on(p.map(|v| v + 1)).unwrap(), 2);
        drop(older);
    });
}

#[test]
fn a_promise_awaited_in_tokio_current_thread() {
    within(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (p, r) = Promise::<i32>::pending();
        let settler = resolve_later(r, 1);
        assert_eq!(rt.block_on(p).unwrap(), 1);
        settler.join().unwrap();

        // With a then-chain (the handlers need this thread's loop to run).
        let (p, r) = Promise::<i32>::pending();
        let chain = p.then(|v| Ok(v + 1)).map(|v| v * 2);
        let settler = resolve_later(r, 1);
        let got = rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            chain.await
        });
        assert_eq!(got.unwrap(), 4);
        settler.join().unwrap();
    });
}

#[test]
fn a_promise_awaited_in_tokio_multi_thread() {
    within(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let (p, r) = Promise::<i32>::pending();
        let settler = resolve_later(r, 1);
        let got = rt.block_on(async move { tokio::spawn(p).await.unwrap() });
        assert_eq!(got.unwrap(), 1);
        settler.join().unwrap();
    });
}

/// A task that builds a then-chain and awaits it, in a tokio multi-thread
/// runtime. Tokio may resume the task on another worker than the one it started
/// on; the chain must complete either way. Repeated, because which worker picks
/// the woken task up is up to tokio.
#[test]
fn a_then_chain_made_inside_a_tokio_worker_completes() {
    within(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        for round in 0..10 {
            let (tx, rx) = mpsc::channel();
            let settler = thread::spawn(move || {
                let r: thenable::Resolver<i32> = rx.recv().unwrap();
                thread::sleep(Duration::from_millis(10));
                assert!(r.resolve(round));
            });
            let got = rt.block_on(async move {
                tokio::spawn(async move {
                    let (p, r) = Promise::<i32>::pending();
                    tx.send(r).unwrap();
                    p.then(|v| Ok(v + 1)).map(|v| v * 2).await
                })
                .await
                .unwrap()
            });
            assert_eq!(got.unwrap(), (round + 1) * 2);
            settler.join().unwrap();
        }
    });
}

/// A then-chain built on one thread (whose loop then never runs again) and
/// awaited in a tokio worker.
#[test]
fn a_then_chain_built_on_one_thread_awaited_in_a_tokio_worker() {
    within(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (p, r) = Promise::<i32>::pending();
        let chain = p.then(|v| Ok(v + 1)).map(|v| v * 2);
        let settler = resolve_later(r, 1);
        let got = rt.block_on(async move { tokio::spawn(chain).await.unwrap() });
        assert_eq!(got.unwrap(), 4);
        settler.join().unwrap();
    });
}

/// The same without tokio: a chain built on this thread, awaited on another
/// thread by `futures::executor::block_on`, settled from a third.
#[test]
fn a_then_chain_built_on_one_thread_awaited_on_another() {
    within(|| {
        let (p, r) = Promise::<i32>::pending();
        let chain = p.then(|v| Ok(v + 1)).map(|v| v * 2);
        let waiter = thread::spawn(move || futures::executor::block_on(chain));
        let settler = resolve_later(r, 1);
        settler.join().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 4);
    });
}

#[test]
fn a_promise_awaited_in_futures_executor() {
    within(|| {
        let (p, r) = Promise::<i32>::pending();
        let settler = resolve_later(r, 1);
        assert_eq!(futures::executor::block_on(p).unwrap(), 1);
        settler.join().unwrap();

        let (p, r) = Promise::<i32>::pending();
        let chain = p.then(|v| Ok(v + 1)).then(|v| Promise::resolved(v * 2));
        let settler = resolve_later(r, 1);
        assert_eq!(futures::executor::block_on(chain).unwrap(), 4);
        settler.join().unwrap();
    });
}

#[test]
fn a_tokio_task_awaited_inside_thenable_block_on_and_spawn() {
    within(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let event_loop = EventLoop::new();

        // Directly in block_on: the tokio JoinHandle holds our waker (a foreign
        // waker), so this is not a deadlock.
        let h = rt.spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        });
        let got = event_loop.block_on(async move { Ok::<_, Error>(h.await.unwrap()) });
        assert_eq!(got.unwrap(), 7);

        // Inside a thenable task, chained with then.
        let h = rt.spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            8
        });
        let p = spawn(async move { Ok::<_, Error>(h.await.unwrap()) }).then(|v| Ok(v * 2));
        assert_eq!(event_loop.block_on(p).unwrap(), 16);

        // Inside a task that nobody block_on's: `run` must not return early.
        let h = rt.spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            9
        });
        let got = Arc::new(AtomicUsize::new(0));
        let out = got.clone();
        let _task = spawn(async move { Ok::<_, Error>(h.await.unwrap()) })
            .map(move |v| out.store(v, Ordering::SeqCst));
        event_loop.run().unwrap();
        assert_eq!(got.load(Ordering::SeqCst), 9);
    });
}

#[test]
fn a_futures_oneshot_awaited_inside_thenable_block_on_and_spawn() {
    use futures::channel::oneshot;
    within(|| {
        let event_loop = EventLoop::new();

        let (tx, rx) = oneshot::channel::<i32>();
        let sender = thread::spawn(move || {
            thread::sleep(PAUSE);
            tx.send(1).unwrap();
        });
        let got = event_loop.block_on(async move { Ok::<_, Error>(rx.await.unwrap()) });
        assert_eq!(got.unwrap(), 1);
        sender.join().unwrap();

        let (tx, rx) = oneshot::channel::<i32>();
        let sender = thread::spawn(move || {
            thread::sleep(PAUSE);
            tx.send(2).unwrap();
        });
        let p = spawn(async move { Ok::<_, Error>(rx.await.unwrap()) })
            .then(|v| Ok(v + 40))
            .map(|v| v.to_string());
        assert_eq!(event_loop.block_on(p).unwrap(), "42");
        sender.join().unwrap();

        // A sender dropped unsent: the task sees Canceled, no false deadlock.
        let (tx, rx) = oneshot::channel::<i32>();
        let sender = thread::spawn(move || {
            thread::sleep(PAUSE);
            drop(tx);
        });
        let p = spawn(async move { Ok::<_, Error>(rx.await.is_err()) });
        assert!(event_loop.block_on(p).unwrap());
        sender.join().unwrap();
    });
}

#[test]
fn spawn_and_then_compose_in_both_directions() {
    within(|| {
        let event_loop = EventLoop::new();
        let p = spawn(async {
            thenable::sleep(Duration::from_millis(1)).await?;
            Ok::<_, Error>(2)
        })
        .then(|v| Ok(v * 10))
        .then(|v| spawn(async move { Ok(v + 1) }));
        let q = spawn(async move {
            let v = p.await?;
            Ok::<_, Error>(v * 2)
        })
        .map(|v| v + 1);
        assert_eq!(event_loop.block_on(q).unwrap(), 43);
    });
}
