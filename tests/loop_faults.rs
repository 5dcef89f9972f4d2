//! Adversarial checks of tasks and the event loop: a missed deadlock across
//! loops, panics in destructors the loop runs, and wakes that come late or from
//! other threads (depth on a small stack is in `depth.rs`; waits on another
//! loop's work are in `remote_loops.rs` and `many_loops.rs`).

mod common;

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::time::Duration;

use common::{child, within, within_for, Counter, DropCounter, HOUR, MARK};
use thenable::{set_immediate, set_timeout, sleep, spawn, Error, EventLoop, Promise};

/// Long enough for a test whose bug is a hang to show it, and far longer than any
/// passing body takes.
const HANG: Duration = Duration::from_secs(10);

/// How long a helper thread lets the thread under test reach its wait before it
/// settles what that thread waits for. Only an ordering aid: a correct library
/// passes whatever the delay.
const HEAD_START: Duration = Duration::from_millis(300);

/// Panics when dropped, with [`MARK`] so the test output stays quiet.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("{MARK} a destructor run by the loop");
        }
    }
}

// ---------------------------------------------------------------------------
// Missed deadlocks: nothing can settle it any more, yet `block_on` waits
// ---------------------------------------------------------------------------

#[test]
fn block_on_reports_a_deadlock_once_an_idle_loops_resolver_is_released_by_that_loop() {
    within_for(HANG, || {
        let (parked, park) = mpsc::channel::<()>();
        // Another thread's loop, not driven yet, with an unsettled resolver: it
        // might settle something this thread waits on, so `block_on` waits.
        let other = thread::spawn(move || {
            let event_loop = EventLoop::new();
            let (_p, r) = Promise::<i32>::pending();
            drop(parked);
            thread::sleep(HEAD_START);
            // Driven now, it releases the resolver: from then on nothing can ever
            // wake the future below.
            event_loop
                .block_on(async move {
                    sleep(Duration::from_millis(1)).await?;
                    drop(r);
                    Ok::<_, Error>(())
                })
                .unwrap();
        });
        assert!(park.recv().is_err(), "the other loop made its resolver");
        let here = EventLoop::new();
        let stuck = here.block_on(std::future::pending::<Result<(), Error>>());
        other.join().unwrap();
        assert!(stuck.unwrap_err().is_deadlock());
    });
}

// ---------------------------------------------------------------------------
// Wakers held outside thenable: while held they may wake the task any time, so
// the loop waits; dropped without a wake, they leave a wait nothing can end
// ---------------------------------------------------------------------------

/// What another thread does with the waker a [`HandOver`] future gave it.
#[derive(Clone, Copy)]
enum Then {
    /// Drops it without waking it.
    Drop,
    /// Wakes it.
    Wake,
}

/// A future that hands its first poll's waker to a thread, which keeps it for
/// `hold` and then drops or wakes it; ready at the first poll after that (the
/// thread's wake). `gone` hears when the thread is about to let the waker go.
struct HandOver {
    hold: Duration,
    then: Then,
    gone: Option<mpsc::Sender<()>>,
    polls: usize,
}

impl HandOver {
    fn new(hold: Duration, then: Then) -> (HandOver, mpsc::Receiver<()>) {
        let (gone, let_go) = mpsc::channel();
        let future = HandOver {
            hold,
            then,
            gone: Some(gone),
            polls: 0,
        };
        (future, let_go)
    }
}

impl Future for HandOver {
    type Output = Result<usize, Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Self::Output> {
        self.polls += 1;
        let Some(gone) = self.gone.take() else {
            return Poll::Ready(Ok(self.polls));
        };
        let (waker, hold, then) = (cx.waker().clone(), self.hold, self.then);
        thread::spawn(move || {
            thread::sleep(hold);
            // Told first: once the waker is let go, the loop may end the wait
            // before this thread takes another step.
            let _ = gone.send(());
            match then {
                Then::Drop => drop(waker),
                Then::Wake => waker.wake(),
            }
        });
        Poll::Pending
    }
}

/// Long enough that a loop waiting on a held waker looks again several times
/// (its first looks come 10 ms apart, doubling to 1 s) before the late wake: an
/// ordering aid only, as [`HEAD_START`] is.
const LATE: Duration = Duration::from_millis(1500);

#[test]
fn block_on_reports_a_deadlock_once_its_futures_foreign_waker_is_dropped_unwoken() {
    within_for(HANG, || {
        let (future, let_go) = HandOver::new(HEAD_START, Then::Drop);
        let stuck = EventLoop::new().block_on(future);
        assert!(stuck.unwrap_err().is_deadlock());
        // Told only once the thread let the waker go: not while it held it.
        assert!(
            let_go.try_recv().is_ok(),
            "a deadlock while the waker was held"
        );
    });
}

#[test]
fn block_on_a_task_whose_foreign_waker_is_dropped_unwoken_reports_a_deadlock() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (future, let_go) = HandOver::new(HEAD_START, Then::Drop);
        let stuck = event_loop.block_on(spawn(future));
        assert!(stuck.unwrap_err().is_deadlock());
        assert!(
            let_go.try_recv().is_ok(),
            "a deadlock while the waker was held"
        );
    });
}

#[test]
fn run_returns_once_a_tasks_foreign_waker_is_dropped_unwoken() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (future, let_go) = HandOver::new(HEAD_START, Then::Drop);
        let task = spawn(future);
        event_loop.run().unwrap();
        assert!(
            let_go.try_recv().is_ok(),
            "`run` returned while the waker was held"
        );
        // The task is still there, waiting for ever: nothing broke it.
        assert!(event_loop.block_on(task).unwrap_err().is_deadlock());
    });
}

#[test]
fn a_foreign_waker_held_for_a_while_and_then_woken_completes_block_on() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (own, own_let_go) = HandOver::new(LATE, Then::Wake);
        assert_eq!(event_loop.block_on(own).unwrap(), 2);
        assert!(own_let_go.try_recv().is_ok());
        let (tasks, task_let_go) = HandOver::new(LATE, Then::Wake);
        assert_eq!(event_loop.block_on(spawn(tasks)).unwrap(), 2);
        assert!(task_let_go.try_recv().is_ok());
    });
}

#[test]
fn run_waits_for_a_tasks_foreign_waker_held_for_a_while_and_then_woken() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (future, let_go) = HandOver::new(LATE, Then::Wake);
        // The other waker is dropped early: the one still held keeps `run` going.
        let (early, early_let_go) = HandOver::new(Duration::ZERO, Then::Drop);
        let finished = Counter::default();
        let count = finished.clone();
        drop(spawn(async move {
            let polls = future.await?;
            count.bump();
            Ok::<_, Error>(polls)
        }));
        let forgotten = spawn(early);
        event_loop.run().unwrap();
        assert_eq!(finished.get(), 1, "`run` returned before the late wake");
        assert!(let_go.try_recv().is_ok());
        assert!(early_let_go.try_recv().is_ok());
        assert!(event_loop.block_on(forgotten).unwrap_err().is_deadlock());
    });
}

// ---------------------------------------------------------------------------
// Panics in destructors the loop runs (rule 6)
// ---------------------------------------------------------------------------

#[test]
fn a_task_that_cancels_itself_and_panics_in_its_drop_does_not_unwind_out_of_run() {
    within(|| {
        let event_loop = EventLoop::new();
        let me: Arc<Mutex<Option<Promise<i32>>>> = Arc::default();
        let slot = me.clone();
        let dropped = Counter::default();
        let guard = DropCounter(dropped.clone());
        let task = spawn(async move {
            let _guard = guard;
            let _bomb = PanicOnDrop;
            let me = slot
                .lock()
                .unwrap()
                .take()
                .expect("stored before the first poll");
            assert!(me.cancel());
            // Pending: the loop finds the task cancelled and drops its future.
            sleep(HOUR).await?;
            Ok::<_, Error>(1)
        });
        *me.lock().unwrap() = Some(task);
        let later = spawn(async { Ok::<_, Error>(7) });
        let run = catch_unwind(AssertUnwindSafe(|| event_loop.run()));
        assert!(
            matches!(run, Ok(Ok(()))),
            "a destructor's panic unwound out of `run`"
        );
        assert_eq!(dropped.get(), 1);
        assert_eq!(event_loop.block_on(later).unwrap(), 7);
    });
}

/// Ready at once with `Ok(1)`, and panics when dropped.
struct ReadyThenPanicOnDrop(PanicOnDrop);

impl Future for ReadyThenPanicOnDrop {
    type Output = Result<i32, Error>;

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(1))
    }
}

#[test]
fn a_handler_whose_promises_loop_is_gone_runs_late_and_its_panicking_drop_is_contained() {
    // Abandoned, the handler's destructor used to panic before its child settled,
    // and awaiting the child hung.
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (promise, resolver) = Promise::<u32>::pending();
        let bomb = PanicOnDrop;
        let child = promise.then(move |v| {
            let _keep = &bomb;
            Ok(v)
        });
        let handle = event_loop.handle();
        drop(event_loop);
        // The reaction is no work of the loop that is gone: settled after it, it
        // is an orphan, and `resolve` only queues it.
        let resolved = thread::spawn(move || resolver.resolve(1)).join();
        assert!(matches!(resolved, Ok(true)), "`resolve` unwound");
        // The handler runs where the child is awaited; its destructor's panic
        // rejects the child instead of unwinding into that loop.
        let error = EventLoop::new().block_on(child).unwrap_err();
        assert!(error.is_panic(), "{error:?}");
        // Work sent to the loop that is gone is abandoned where it is sent: a
        // task's future whose destructor panics must not unwind into `spawn`.
        let spawned = thread::spawn(move || {
            let bomb = PanicOnDrop;
            handle.spawn(async move {
                let _keep = &bomb;
                Ok::<u32, Error>(1)
            })
        })
        .join();
        let task = spawned.expect("`spawn` unwound");
        assert!(EventLoop::new().block_on(task).unwrap_err().is_broken());
    });
}

#[test]
fn a_task_future_that_panics_when_dropped_after_finishing_rejects_with_a_panic_error() {
    within(|| {
        let event_loop = EventLoop::new();
        let task = spawn(ReadyThenPanicOnDrop(PanicOnDrop));
        let err = event_loop.block_on(task).unwrap_err();
        // Rule 6: the promise says it was a panic (a broken promise says nothing).
        assert!(err.is_panic(), "{err:?}");
    });
}

#[test]
fn a_panicking_destructor_while_a_loop_is_dropped_leaves_the_thread_usable() {
    within(|| {
        let event_loop = EventLoop::new();
        let bomb = PanicOnDrop;
        let _task = spawn(async move {
            let _bomb = bomb;
            sleep(HOUR).await?;
            Ok::<_, Error>(())
        });
        // Whether or not the panic is contained, the thread must go on working.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(event_loop)));
        let next = EventLoop::new();
        let outcome = next.block_on(Promise::<i32>::resolved(1).map(|v| v + 1));
        assert_eq!(
            outcome.unwrap(),
            2,
            "reactions on this thread are now abandoned"
        );
        let task = spawn(async { Ok::<_, Error>(3) });
        assert_eq!(next.block_on(task).unwrap(), 3);
    });
}

#[test]
fn a_panicking_destructor_of_a_task_future_does_not_unwind_out_of_dropping_the_loop() {
    within(|| {
        let event_loop = EventLoop::new();
        let bomb = PanicOnDrop;
        let dropped = Counter::default();
        let guard = DropCounter(dropped.clone());
        let task = spawn(async move {
            let _bomb = bomb;
            sleep(HOUR).await?;
            Ok::<_, Error>(())
        });
        let other = spawn(async move {
            let _guard = guard;
            sleep(HOUR).await?;
            Ok::<_, Error>(())
        });
        let dropping = catch_unwind(AssertUnwindSafe(move || drop(event_loop)));
        assert!(
            dropping.is_ok(),
            "a task's destructor panicked out of the loop's drop"
        );
        assert_eq!(dropped.get(), 1, "the other task's future was not dropped");
        let next = EventLoop::new();
        assert!(next.block_on(task).unwrap_err().is_broken());
        assert!(next.block_on(other).unwrap_err().is_broken());
    });
}

#[test]
fn after_a_cancelled_tasks_destructor_panicked_dropping_a_handle_still_cancels_nothing() {
    within(|| {
        let event_loop = EventLoop::new();
        let bomb = PanicOnDrop;
        let doomed = spawn(async move {
            let _bomb = bomb;
            sleep(HOUR).await?;
            Ok::<_, Error>(())
        });
        // Cancelled on its own thread: the future is dropped inside `cancel`,
        // whose caller the panic must not reach.
        assert!(doomed.cancel());
        // A dropped `spawn` handle leaves the task running (design: Cancellation).
        let finished = Counter::default();
        let count = finished.clone();
        drop(spawn(async move {
            sleep(Duration::from_millis(1)).await?;
            count.bump();
            Ok::<_, Error>(())
        }));
        event_loop.run().unwrap();
        assert_eq!(finished.get(), 1, "dropping the handle cancelled the task");
    });
}

// ---------------------------------------------------------------------------
// Handlers whose captures panic when dropped unused (rule 6, rule 5)
// ---------------------------------------------------------------------------

/// A child whose handler holds a [`PanicOnDrop`] it never gets to run with: the
/// parent's outcome is the kind that handler does not take.
type UnusedHandler = fn(PanicOnDrop) -> Promise<i32>;

/// Every combinator with a handler that an outcome can leave unused.
fn unused_handlers() -> Vec<(&'static str, UnusedHandler)> {
    fn offline() -> Promise<i32> {
        Promise::rejected(Error::msg("offline"))
    }
    vec![
        ("then on a rejection", |bomb| {
            offline().then(move |v| {
                let _keep = &bomb;
                Ok(v)
            })
        }),
        ("map on a rejection", |bomb| {
            offline().map(move |v| {
                let _keep = &bomb;
                v
            })
        }),
        ("catch on a value", |bomb| {
            Promise::resolved(1).catch(move |e| {
                let _keep = &bomb;
                Err(e)
            })
        }),
        ("map_err on a value", |bomb| {
            Promise::resolved(1).map_err(move |e| {
                let _keep = &bomb;
                e
            })
        }),
        ("then_or_catch on a value", |bomb| {
            Promise::resolved(1).then_or_catch(Ok, move |e| {
                let _keep = &bomb;
                Err(e)
            })
        }),
        ("then_or_catch on a rejection", |bomb| {
            offline().then_or_catch(
                move |v| {
                    let _keep = &bomb;
                    Ok(v)
                },
                Err,
            )
        }),
    ]
}

#[test]
fn a_handler_left_unused_whose_captures_panic_when_dropped_rejects_its_child_with_the_panic() {
    // Dropped outside the guard that a handler's own body runs in, the panic used
    // to unwind out of `block_on`, leaving the child pending.
    within_for(HANG, || {
        for (case, make) in unused_handlers() {
            let event_loop = EventLoop::new();
            let child = make(PanicOnDrop);
            let outcome = catch_unwind(AssertUnwindSafe(|| event_loop.block_on(child)));
            let Ok(outcome) = outcome else {
                panic!("{case}: the drop's panic unwound out of `block_on`");
            };
            // As a handler whose body panics (or whose captures panic as it
            // returns) rejects its child: the parent's outcome is lost.
            let error = outcome.expect_err(case);
            assert!(error.is_panic(), "{case}: {error:?}");
            let next = Promise::<i32>::resolved(2).map(|v| v + 1);
            assert_eq!(event_loop.block_on(next).unwrap(), 3, "{case}");
        }
    });
}

#[test]
fn a_cancelled_handler_whose_captures_panic_when_dropped_stays_cancelled() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let (parent, _resolver) = Promise::<i32>::pending();
        let bomb = PanicOnDrop;
        let child = parent.then(move |v| {
            let _keep = &bomb;
            Ok(v)
        });
        // Cancelling queues the link to see the cancellation, which drops the
        // handler unrun; cancelling the parent in turn lets its resolver go.
        assert!(child.cancel());
        let run = catch_unwind(AssertUnwindSafe(|| event_loop.run()));
        assert!(
            matches!(run, Ok(Ok(()))),
            "the drop's panic unwound out of `run`"
        );
        assert!(child.is_cancelled());
        assert!(event_loop.block_on(child).unwrap_err().is_cancelled());
    });
}

#[test]
fn handlers_whose_captures_panic_when_dropped_with_their_loop_leave_their_children_broken() {
    // Abandoned with the loop, the handler is dropped before the child settles:
    // its panic used to leave the child pending, and awaiting it hung.
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        // Each queued when the loop goes (their parents are settled already).
        let mut children: Vec<(&str, Promise<i32>)> = unused_handlers()
            .into_iter()
            .map(|(case, make)| (case, make(PanicOnDrop)))
            .collect();
        let bomb = PanicOnDrop;
        children.push((
            "then on a value",
            Promise::resolved(1).then(move |v| {
                let _keep = &bomb;
                Ok(v)
            }),
        ));
        // A fan-out settled after its handlers were attached: its reactions are
        // queued as one job.
        let (shared, resolver) = Promise::<i32>::pending();
        for case in ["a fan-out's first", "a fan-out's second"] {
            let bomb = PanicOnDrop;
            children.push((
                case,
                shared.clone().then(move |v| {
                    let _keep = &bomb;
                    Ok(v)
                }),
            ));
        }
        drop(shared);
        assert!(resolver.resolve(1));
        children.push(("a plain map", Promise::resolved(1).map(|v| v + 1)));
        let dropping = catch_unwind(AssertUnwindSafe(move || drop(event_loop)));
        assert!(
            dropping.is_ok(),
            "a handler's drop panicked out of the loop's drop"
        );
        let next = EventLoop::new();
        for (case, child) in children {
            let error = next.block_on(child).expect_err(case);
            assert!(error.is_broken(), "{case}: {error:?}");
        }
    });
}

#[test]
fn a_value_that_panics_when_dropped_with_its_loop_leaves_the_work_queued_after_it_broken() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        // Queued first: the resolver's promise follows one holding the value,
        // which the loop's drop frees.
        let (followed, resolver) = Promise::<PanicOnDrop>::pending();
        assert!(resolver.resolve_with(Promise::resolved(PanicOnDrop)));
        let after = Promise::<i32>::resolved(1).map(|v| v + 1);
        let dropping = catch_unwind(AssertUnwindSafe(move || drop(event_loop)));
        assert!(
            dropping.is_ok(),
            "a value's drop panicked out of the loop's drop"
        );
        let next = EventLoop::new();
        assert!(next.block_on(after).unwrap_err().is_broken());
        let followed = next.block_on(followed).err().expect("`followed` is broken");
        assert!(followed.is_broken(), "{followed:?}");
    });
}

/// Drops a loop holding a pending callback (set by `queue`) whose captures panic
/// when dropped, a sleep and a task: the drop must not unwind, and the sleep and
/// the task must be broken, not left pending for ever.
fn drop_a_loop_with_a_panicking_callback(queue: fn(PanicOnDrop)) {
    within_for(HANG, move || {
        let event_loop = EventLoop::new();
        queue(PanicOnDrop);
        let slept = sleep(HOUR);
        let task = spawn(async {
            sleep(HOUR).await?;
            Ok::<_, Error>(())
        });
        let dropping = catch_unwind(AssertUnwindSafe(move || drop(event_loop)));
        assert!(
            dropping.is_ok(),
            "a callback's drop panicked out of the loop's drop"
        );
        let next = EventLoop::new();
        let slept = next.block_on(slept).unwrap_err();
        assert!(slept.is_broken(), "{slept:?}");
        assert!(next.block_on(task).unwrap_err().is_broken());
    });
}

#[test]
fn a_pending_timer_whose_callback_panics_when_dropped_with_its_loop_leaves_the_rest_broken() {
    drop_a_loop_with_a_panicking_callback(|bomb| {
        set_timeout(HOUR, move || drop(bomb));
    });
}

#[test]
fn a_queued_immediate_that_panics_when_dropped_with_its_loop_leaves_the_rest_broken() {
    drop_a_loop_with_a_panicking_callback(|bomb| set_immediate(move || drop(bomb)));
}

// ---------------------------------------------------------------------------
// Wakers held elsewhere, woken late
// ---------------------------------------------------------------------------

#[test]
fn a_task_waker_woken_and_dropped_on_another_thread_after_its_loop_is_gone() {
    within(|| {
        let stash: Arc<Mutex<Option<Waker>>> = Arc::default();
        let event_loop = EventLoop::new();
        let dropped = Counter::default();
        let guard = DropCounter(dropped.clone());
        let keep = stash.clone();
        let task = spawn(async move {
            let _guard = guard;
            std::future::poll_fn(|cx| {
                *keep.lock().unwrap() = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
            .await;
            Ok::<_, Error>(())
        });
        // Run one turn: the task stores its waker and waits; `run` does not
        // return while a waker held elsewhere is alive, so poll the promise
        // from here instead, which drives the loop until nothing is ready.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut task = task;
        assert!(Future::poll(std::pin::Pin::new(&mut task), &mut cx).is_pending());
        assert!(
            stash.lock().unwrap().is_some(),
            "the task ran and stored its waker"
        );
        drop(event_loop);
        assert_eq!(dropped.get(), 1);
        let late = thread::spawn(move || {
            let waker = stash.lock().unwrap().take().unwrap();
            waker.wake_by_ref();
            waker.wake();
        });
        late.join().unwrap();
        let next = EventLoop::new();
        assert!(next.block_on(task).unwrap_err().is_broken());
    });
}

#[test]
fn a_promise_whose_tokio_waiter_is_gone_settles_from_another_thread_and_is_still_awaitable() {
    within(|| {
        let (p, r) = Promise::<i32>::pending();
        let shared = Arc::new(Mutex::new(Some(p)));
        let in_tokio = shared.clone();
        // A tokio task polls the promise once (thenable keeps tokio's waker), then
        // the runtime shuts down with the task still waiting.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let waiting = tokio::spawn(async move {
                let mut p = in_tokio.lock().unwrap().take().unwrap();
                std::future::poll_fn(|cx| {
                    assert!(Future::poll(std::pin::Pin::new(&mut p), cx).is_pending());
                    Poll::Ready(())
                })
                .await;
                *in_tokio.lock().unwrap() = Some(p);
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            drop(waiting);
        });
        drop(runtime);
        // The late settle wakes a waker whose runtime is gone.
        thread::spawn(move || assert!(r.resolve(5))).join().unwrap();
        let p = shared
            .lock()
            .unwrap()
            .take()
            .expect("the tokio task put it back");
        assert_eq!(EventLoop::new().block_on(p).unwrap(), 5);
    });
}

/// Sends on a channel each time it is woken.
struct SendsOnWake(Mutex<mpsc::Sender<()>>);

impl std::task::Wake for SendsOnWake {
    fn wake(self: Arc<Self>) {
        let _ = self.0.lock().unwrap().send(());
    }
}

#[test]
fn a_promise_polled_again_and_again_by_another_executor_keeps_one_wake_up_per_deadline() {
    within(|| {
        // A timer of this thread's loop, which nobody runs: each pending poll
        // from another executor asks the timer thread to wake it at the
        // deadline (a `select!` in a tokio loop polls the same promise at every
        // iteration).
        let _far = sleep(HOUR);
        let (mut waiting, _resolver) = Promise::<i32>::pending();
        let (woken, wakes) = mpsc::channel();
        let wake = Arc::new(SendsOnWake(Mutex::new(woken)));
        let waker = Waker::from(wake.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        for _ in 0..1_000 {
            assert!(Future::poll(std::pin::Pin::new(&mut waiting), &mut cx).is_pending());
        }
        // Ours, the `Waker`'s, the promise's, the timer thread's one wake-up
        // for the deadline, and the loops' list of pollers to wake.
        let held = Arc::strong_count(&wake);
        assert!(held <= 5, "1,000 polls left {held} references to the waker");
        // A nearer deadline is still woken for.
        let near = sleep(Duration::from_millis(20));
        while near.is_pending() {
            assert!(Future::poll(std::pin::Pin::new(&mut waiting), &mut cx).is_pending());
            if near.is_pending() {
                wakes.recv().unwrap();
            }
        }
        assert!(near.is_fulfilled());
    });
}

// ---------------------------------------------------------------------------
// Panics only a report can tell of (run in a child, whose standard error is read)
// ---------------------------------------------------------------------------

#[test]
fn a_finally_callback_that_panics_on_a_cancelled_promise_is_reported() {
    // Its child is cancelled and takes no rejection: the report on standard
    // error is all there is of the panic (it was lost without a word).
    let output = child::command("finally-panics-on-cancel").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child failed: {stderr}");
    assert!(
        stderr.contains("thenable: a finally callback panicked: the callback's panic"),
        "standard error: {stderr}"
    );
}

fn finally_panics_on_a_cancelled_promise() {
    let event_loop = EventLoop::new();
    let (p, _r) = Promise::<i32>::pending();
    let after = p.clone().finally(|| panic!("the callback's panic"));
    assert!(p.cancel());
    event_loop.run().unwrap();
    assert!(after.is_cancelled());
}

/// Runs a `block_on` when dropped, as a guard that flushes before it goes might,
/// and keeps what it returned.
struct BlocksOnWhenDropped(Arc<Mutex<Option<Result<i32, String>>>>);

impl Drop for BlocksOnWhenDropped {
    fn drop(&mut self) {
        let outcome = thenable::block_on(async {
            // A task, a timer, and a reaction: each wakes whoever waits on it
            // through the queues of the loop the `block_on` runs.
            let slept = spawn(async {
                sleep(Duration::from_millis(1)).await?;
                Ok::<_, Error>(3)
            });
            Promise::<i32>::resolved(slept.await?).map(|v| v + 1).await
        });
        *self.0.lock().unwrap() = Some(outcome.map_err(|e| e.to_string()));
    }
}

#[test]
fn a_block_on_in_a_destructor_run_by_a_loop_s_drop_completes() {
    within_for(HANG, || {
        let outcome = Arc::new(Mutex::new(None));
        let event_loop = EventLoop::new();
        let guard = BlocksOnWhenDropped(outcome.clone());
        // A task that never finishes: the loop's drop drops its future, and the
        // guard with it. The reactions of the `block_on` that runs then must not
        // be abandoned with the loop being dropped (it waited for ever).
        drop(spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Error>(())
        }));
        event_loop.run().unwrap();
        drop(event_loop);
        assert_eq!(*outcome.lock().unwrap(), Some(Ok(4)));
    });
}

/// Runs its closure when dropped.
struct SpawnsWhenDropped<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for SpawnsWhenDropped<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[test]
fn a_block_on_in_a_destructor_run_by_the_default_loop_s_drop_at_thread_exit_completes() {
    within_for(HANG, || {
        let outcome = Arc::new(Mutex::new(None));
        let guard = BlocksOnWhenDropped(outcome.clone());
        // And one that spawns first, then waits for the task.
        let spawned = Arc::new(Mutex::new(None));
        let kept = spawned.clone();
        let spawns = SpawnsWhenDropped(Some(move || {
            let task = spawn(async { Ok::<_, Error>(5) });
            *kept.lock().unwrap() = Some(thenable::block_on(task).map_err(|e| e.to_string()));
        }));
        thread::spawn(move || {
            // Tasks of this thread's default loop, which nobody runs again: the
            // loop's drop at the thread's end drops the guards, after the
            // thread-local that held the loop is gone.
            for guard in [Box::new(guard) as Box<dyn Send>, Box::new(spawns)] {
                drop(spawn(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok::<_, Error>(())
                }));
            }
        })
        .join()
        .unwrap();
        assert_eq!(*outcome.lock().unwrap(), Some(Ok(4)));
        assert_eq!(*spawned.lock().unwrap(), Some(Ok(5)));
    });
}

// ---------------------------------------------------------------------------
// Dropping a loop breaks what it held, not other loops' handlers
// ---------------------------------------------------------------------------

/// A promise of this thread's loop whose `catch` turns a broken promise into
/// -1, and its resolver.
fn caught_if_broken() -> (Promise<i32>, thenable::Resolver<i32>) {
    let (p, r) = Promise::<i32>::pending();
    (p.catch(|e| Ok(if e.is_broken() { -1 } else { 0 })), r)
}

#[test]
fn a_resolver_dropped_with_another_thread_s_loop_runs_this_loop_s_handler() {
    within(|| {
        let event_loop = EventLoop::new();
        let (caught, resolver) = caught_if_broken();
        thread::spawn(move || {
            let other = EventLoop::new();
            // A task of that loop holds the resolver when the loop goes.
            drop(spawn(async move {
                let _resolver = resolver;
                std::future::pending::<()>().await;
                Ok::<_, Error>(())
            }));
            other.block_on(sleep(Duration::ZERO)).unwrap();
            drop(other);
        })
        .join()
        .unwrap();
        // The promise broke, and its handler is this loop's to run: the
        // `catch` runs, and takes the broken promise in.
        assert_eq!(event_loop.block_on(caught).unwrap(), -1);
    });
}

#[test]
fn a_resolver_in_a_task_spawned_through_the_handle_of_a_dropped_loop_runs_this_loop_s_handler() {
    within(|| {
        let event_loop = EventLoop::new();
        let gone = EventLoop::new();
        let handle = gone.handle();
        drop(gone);
        let (caught, resolver) = caught_if_broken();
        let refused = handle.spawn(async move {
            let _resolver = resolver;
            Ok::<_, Error>(())
        });
        assert!(event_loop.block_on(refused).unwrap_err().is_broken());
        assert_eq!(event_loop.block_on(caught).unwrap(), -1);
    });
}

// ---------------------------------------------------------------------------
// The unhandled-rejection hook
// ---------------------------------------------------------------------------

#[test]
fn an_unhandled_rejection_hook_that_panics_is_contained_and_sees_every_rejection() {
    within(|| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thenable::set_unhandled_rejection_hook(move |e: &Error| {
            log.lock().unwrap().push(e.to_string());
            panic!("{MARK} the hook");
        });
        let lost = |what: &'static str| Promise::<i32>::rejected(Error::msg(what)).map(|v| v);
        // Both rejections are found unhandled at the end of the same drain: the
        // first report's panic must neither leave `run` nor skip the second.
        let event_loop = EventLoop::new();
        let (_a, _b) = (lost("a"), lost("b"));
        let run = catch_unwind(AssertUnwindSafe(|| event_loop.run()));
        assert!(
            matches!(run, Ok(Ok(()))),
            "the hook's panic unwound out of `run`"
        );
        // `block_on` finishes its future, as if the hook had not panicked.
        let blocked = catch_unwind(AssertUnwindSafe(|| {
            event_loop.block_on(async move {
                drop(lost("c"));
                sleep(Duration::from_millis(1)).await?;
                Ok::<_, Error>(7)
            })
        }));
        thenable::reset_unhandled_rejection_hook();
        let blocked = blocked.expect("the hook's panic unwound out of `block_on`");
        assert_eq!(blocked.unwrap(), 7);
        assert_eq!(*seen.lock().unwrap(), ["a", "b", "c"]);
    });
}

#[test]
fn child_process_entry_point() {
    let Some(mode) = child::mode() else {
        return;
    };
    match mode.as_str() {
        "finally-panics-on-cancel" => finally_panics_on_a_cancelled_promise(),
        other => panic!("unknown child mode {other}"),
    }
}
