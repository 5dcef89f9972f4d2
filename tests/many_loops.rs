//! Programs with several loops and threads, as an application would write them: a
//! worker loop serving a main loop, loops exchanging results, pool threads
//! settling resolvers, shutdown in either order, promises awaited on a loop or an
//! executor other than the one they were made on.
//!
//! Orders are forced with channels. Where a test must keep another loop busy
//! while this one runs out of work, the other loop waits on a channel with a
//! timeout: the outcome asserted is the same whenever the timeout ends, only the
//! order that used to go wrong is made certain.

mod common;

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::Duration;

use common::{ms, within, within_for, HOUR, MARK};
use futures::future::join;
use thenable::{
    all, sleep, spawn, spawn_blocking, Error, EventLoop, LoopHandle, Promise, Resolver,
};

/// The safety net of tests whose bug was a hang: fail soon rather than after the
/// default 30 s.
const HANG: Duration = Duration::from_secs(10);

/// How long a worker stays busy in the tests that need it busy: long enough for
/// this loop to run out of work first (microseconds), never part of an assertion.
const BUSY: Duration = Duration::from_millis(100);

/// A loop on a thread of its own, started at once; it returns from `run` when the
/// last handle is dropped and its work is done.
fn worker() -> (LoopHandle, thread::JoinHandle<()>) {
    let (handles, handle) = mpsc::channel();
    let thread = thread::spawn(move || {
        let event_loop = EventLoop::new();
        handles.send(event_loop.handle()).unwrap();
        event_loop.run().unwrap();
    });
    (handle.recv().unwrap(), thread)
}

/// A worker whose loop starts only once `go` is sent.
fn held_worker() -> (LoopHandle, mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (handles, handle) = mpsc::channel();
    let (go, start) = mpsc::channel::<()>();
    let thread = thread::spawn(move || {
        let event_loop = EventLoop::new();
        handles.send(event_loop.handle()).unwrap();
        let _ = start.recv();
        event_loop.run().unwrap();
    });
    (handle.recv().unwrap(), go, thread)
}

// ---------------------------------------------------------------------------
// Another loop of this thread cannot run while this one waits
// ---------------------------------------------------------------------------

#[test]
fn a_task_or_sleep_of_another_loop_of_this_thread_is_a_deadlock_not_a_hang() {
    within_for(HANG, || {
        let idle = EventLoop::new();
        let task = spawn(async { Ok::<_, Error>(1) });
        let slept = sleep(ms(1));
        let other = EventLoop::new();
        // `idle` never runs while `other` blocks this thread.
        assert!(other.block_on(task).unwrap_err().is_deadlock());
        assert!(other.block_on(slept).unwrap_err().is_deadlock());
        // `run` does not wait for it either.
        drop(other);
        let task = spawn(async { Ok::<_, Error>(2) });
        let last = EventLoop::new();
        let (seen, got) = mpsc::channel();
        drop(thenable::spawn_local(async move {
            seen.send(task.await).unwrap();
            Ok::<_, Error>(())
        }));
        last.run().unwrap();
        assert!(
            got.try_recv().is_err(),
            "the task of `idle` cannot have run"
        );
        drop(last);
        // Run at last, `idle` settles it.
        idle.run().unwrap();
        drop(idle);
    });
}

#[test]
fn a_handler_queued_on_another_loop_of_this_thread_is_a_deadlock_not_a_hang() {
    within_for(HANG, || {
        let _idle = EventLoop::new();
        // Settled already: the handler is queued at once, on `_idle`.
        let child = Promise::<u64>::resolved(1).then(|v| Ok(v + 1));
        let other = EventLoop::new();
        assert!(other.block_on(child).unwrap_err().is_deadlock());
    });
}

// ---------------------------------------------------------------------------
// False deadlocks: the other loop's work was not visible when the wait registered
// ---------------------------------------------------------------------------

/// A worker, and `parent.then(|v| v + 1)` where `parent` is the worker's and has
/// settled with 20, its handler queued on the worker, which stays busy until
/// `done` is sent (or for [`BUSY`]). Join the worker with [`finish`].
struct QueuedOnBusyWorker {
    child: Promise<u64>,
    done: mpsc::Sender<()>,
    handle: LoopHandle,
    thread: thread::JoinHandle<()>,
}

fn child_queued_on_busy_worker() -> QueuedOnBusyWorker {
    let (handle, thread) = worker();
    let (made, promise) = mpsc::channel();
    let (attached, handler_attached) = mpsc::channel::<()>();
    let (resolved, was_resolved) = mpsc::channel::<()>();
    let (done, main_done) = mpsc::channel::<()>();
    handle.post(move || {
        let (p, r) = Promise::<u64>::pending();
        made.send(p).unwrap();
        handler_attached.recv().unwrap();
        r.resolve(20);
        resolved.send(()).unwrap();
        // Still busy in this job: the handler main attached runs after it.
        let _ = main_done.recv_timeout(BUSY);
    });
    let parent: Promise<u64> = promise.recv().unwrap();
    let child = parent.then(|v| Ok(v + 1));
    attached.send(()).unwrap();
    was_resolved.recv().unwrap();
    QueuedOnBusyWorker {
        child,
        done,
        handle,
        thread,
    }
}

fn finish(done: mpsc::Sender<()>, handle: LoopHandle, thread: thread::JoinHandle<()>) {
    let _ = done.send(());
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn a_chain_whose_parent_settled_on_a_busy_worker_is_not_a_deadlock() {
    within(|| {
        let queued = child_queued_on_busy_worker();
        // The wait registers with the parent settled and its handler queued on the
        // worker, which will run it.
        let outcome = EventLoop::new().block_on(queued.child);
        finish(queued.done, queued.handle, queued.thread);
        assert_eq!(outcome.unwrap(), 21);
    });
}

#[test]
fn run_waits_for_a_task_whose_chain_has_its_handler_queued_on_a_busy_worker() {
    within(|| {
        let QueuedOnBusyWorker {
            child,
            done,
            handle,
            thread,
        } = child_queued_on_busy_worker();
        let event_loop = EventLoop::new();
        let (seen, got) = mpsc::channel();
        // The task's wait registers with the parent settled and its handler
        // queued on the worker; then this loop runs out of work.
        drop(event_loop.block_on(async {
            Ok::<_, Error>(thenable::spawn_local(async move {
                seen.send(child.await).unwrap();
                Ok::<_, Error>(())
            }))
        }));
        event_loop.run().unwrap();
        let outcome = got.try_recv();
        finish(done, handle, thread);
        assert_eq!(
            outcome
                .expect("`run` returned before its task finished")
                .unwrap(),
            21
        );
    });
}

#[test]
fn a_handler_returning_a_remote_task_is_not_a_deadlock() {
    within(|| {
        let (handle, go, thread) = held_worker();
        let remote = handle.clone();
        // When the wait registers, the chain waits on a settled promise; only its
        // handler, later, makes it follow the worker's task.
        let chain = Promise::<()>::resolved(()).then(move |()| {
            let task = remote.spawn(async {
                sleep(ms(5)).await?;
                Ok::<u64, Error>(3)
            });
            go.send(()).unwrap();
            task
        });
        let outcome = EventLoop::new().block_on(chain);
        drop(handle);
        thread.join().unwrap();
        assert_eq!(outcome.unwrap(), 3);
    });
}

#[test]
fn a_resolver_made_to_follow_a_remote_task_before_the_wait_is_not_a_deadlock() {
    within(|| {
        let (handle, go, thread) = held_worker();
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<u64>::pending();
        let remote = handle.spawn(async {
            sleep(ms(5)).await?;
            Ok::<u64, Error>(4)
        });
        // A pool thread hands the request on to the worker.
        thread::spawn(move || assert!(r.resolve_with(remote)))
            .join()
            .unwrap();
        let outcome = event_loop.block_on(async move {
            let (outcome, _) = join(p, async move {
                go.send(()).unwrap();
                Ok::<_, Error>(())
            })
            .await;
            outcome
        });
        drop(handle);
        thread.join().unwrap();
        assert_eq!(outcome.unwrap(), 4);
    });
}

// ---------------------------------------------------------------------------
// Settling on a thread that is going away
// ---------------------------------------------------------------------------

/// Settles its resolver when dropped, as a worker's table of pending requests
/// that answers them when the worker thread ends.
struct SettleOnDrop(Resolver<u64>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        self.0.resolve(5);
    }
}

thread_local! {
    static PENDING_REQUEST: std::cell::RefCell<Option<SettleOnDrop>> =
        const { std::cell::RefCell::new(None) };
}

#[test]
fn a_resolver_settled_by_a_thread_local_destructor_runs_its_handlers_on_its_loop() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, r) = Promise::<u64>::pending();
        let child = p.then(|v| Ok(v + 1));
        thread::spawn(move || {
            PENDING_REQUEST.with(|pending| *pending.borrow_mut() = Some(SettleOnDrop(r)));
            // Touches thenable's per-thread state after the request table, so that
            // at thread exit it is destroyed first (thread locals are destroyed in
            // the reverse order of their first use): the resolver then settles on
            // a thread with no loop state left.
            drop(spawn(async { Ok::<_, Error>(()) }));
        })
        .join()
        .unwrap();
        assert_eq!(event_loop.block_on(child).unwrap(), 6);
    });
}

// ---------------------------------------------------------------------------
// A foreign executor's poll, and work arriving just after it turned the loop
// ---------------------------------------------------------------------------

/// A waker that calls a function the first time it is cloned, which thenable
/// does when it registers the waker of a pending poll: the moment between the
/// loop's turn in the poll and the waker's registration as a foreign poller.
mod hooked_waker {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::task::{RawWaker, RawWakerVTable, Waker};

    pub struct Hook {
        pub fired: AtomicBool,
        pub on_first_clone: Mutex<Option<Box<dyn FnOnce() + Send>>>,
        pub woken: Mutex<mpsc::Sender<()>>,
    }

    unsafe fn clone(data: *const ()) -> RawWaker {
        // SAFETY: `data` comes from `Arc::into_raw` in `waker` (or a clone), and
        // the waker being cloned holds a count.
        let hook = unsafe { &*(data as *const Hook) };
        if !hook.fired.swap(true, Ordering::SeqCst) {
            if let Some(f) = hook.on_first_clone.lock().unwrap().take() {
                f();
            }
        }
        // SAFETY: as above; the new waker owns the count taken here.
        unsafe { Arc::increment_strong_count(data as *const Hook) };
        RawWaker::new(data, &VTABLE)
    }

    unsafe fn wake(data: *const ()) {
        // SAFETY: the waker owns one count, given back by `drop_waker`.
        unsafe {
            wake_by_ref(data);
            drop_waker(data);
        }
    }

    unsafe fn wake_by_ref(data: *const ()) {
        // SAFETY: the waker holds a count.
        let hook = unsafe { &*(data as *const Hook) };
        let _ = hook.woken.lock().unwrap().send(());
    }

    unsafe fn drop_waker(data: *const ()) {
        // SAFETY: each waker owns exactly one count.
        unsafe { drop(Arc::from_raw(data as *const Hook)) };
    }

    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);

    pub fn waker(hook: Arc<Hook>) -> Waker {
        let raw = RawWaker::new(Arc::into_raw(hook) as *const (), &VTABLE);
        // SAFETY: the vtable's functions keep the `Arc` count right.
        unsafe { Waker::from_raw(raw) }
    }
}

#[test]
fn work_posted_just_after_a_foreign_poll_turned_the_loop_wakes_the_poller() {
    within_for(HANG, || {
        let event_loop = EventLoop::new();
        let handle = event_loop.handle();
        let (p, r) = Promise::<u64>::pending();
        let (post, posting) = mpsc::channel::<()>();
        let (posted, was_posted) = mpsc::channel::<()>();
        let poster = thread::spawn(move || {
            posting.recv().unwrap();
            // Settled by a job of the main thread's loop, which only a poll of the
            // promise drives.
            assert!(handle.post(move || {
                r.resolve(7);
            }));
            posted.send(()).unwrap();
        });
        let (woken, wake_ups) = mpsc::channel();
        let hook = Arc::new(hooked_waker::Hook {
            fired: Default::default(),
            on_first_clone: Mutex::new(Some(Box::new(move || {
                post.send(()).unwrap();
                was_posted.recv().unwrap();
            }))),
            woken: Mutex::new(woken),
        });
        let waker = hooked_waker::waker(hook);
        let mut cx = Context::from_waker(&waker);
        let mut p = std::pin::pin!(p);
        assert!(p.as_mut().poll(&mut cx).is_pending());
        poster.join().unwrap();
        let outcome = loop {
            wake_ups.recv().unwrap();
            if let Poll::Ready(outcome) = p.as_mut().poll(&mut cx) {
                break outcome;
            }
        };
        assert_eq!(outcome.unwrap(), 7);
    });
}

#[test]
fn futures_block_on_of_a_chain_on_a_remote_task() {
    within(|| {
        let (handle, thread) = worker();
        let task = handle.spawn(async {
            sleep(ms(2)).await?;
            Ok::<u64, Error>(20)
        });
        let chain = task.then(|v| Ok(v + 1)).map(|v| v * 2);
        assert_eq!(futures::executor::block_on(chain).unwrap(), 42);
        drop(handle);
        thread.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// Applications: requests, exchanges, pools, shutdown
// ---------------------------------------------------------------------------

#[test]
fn a_worker_loop_serves_requests_of_a_main_loop_whose_handlers_run_on_main() {
    within(|| {
        let (worker, thread) = worker();
        let main = EventLoop::new();
        let main_thread = thread::current().id();
        let replies: Vec<Promise<(u64, ThreadId)>> = (0..20u64)
            .map(|i| {
                let (reply, resolver) = Promise::<u64>::pending();
                assert!(worker.post(move || {
                    drop(spawn(async move {
                        sleep(ms(1)).await?;
                        let v = spawn_blocking(move || Ok::<_, Error>(i * 2)).await?;
                        resolver.resolve(v);
                        Ok::<_, Error>(())
                    }));
                }));
                reply.map(|v| (v, thread::current().id()))
            })
            .collect();
        let replies = main.block_on(all(replies)).unwrap();
        let expected: Vec<_> = (0..20).map(|i| (i * 2, main_thread)).collect();
        assert_eq!(replies, expected);
        drop(worker);
        thread.join().unwrap();
    });
}

#[test]
fn two_loops_exchange_results_through_each_others_handles() {
    within(|| {
        let (a, thread_a) = worker();
        let (b, thread_b) = worker();
        let (to_a, to_b) = (a.clone(), b.clone());
        let rally = a.spawn(async move {
            let mut ball = 0u64;
            for _ in 0..50 {
                let back_to_a = to_a.clone();
                ball = to_b
                    .spawn(async move {
                        let v = back_to_a
                            .spawn(async move { Ok::<_, Error>(ball + 1) })
                            .await?;
                        Ok::<_, Error>(v + 1)
                    })
                    .await?;
            }
            Ok::<_, Error>(ball)
        });
        assert_eq!(EventLoop::new().block_on(rally).unwrap(), 100);
        drop((a, b));
        thread_a.join().unwrap();
        thread_b.join().unwrap();
    });
}

#[test]
fn spawn_blocking_in_tasks_of_two_loops_continues_on_each_loops_thread() {
    within(|| {
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                thread::spawn(move || {
                    let event_loop = EventLoop::new();
                    let seen = event_loop.block_on(spawn(async move {
                        let mut seen = Vec::new();
                        for i in 0..10 {
                            let job = spawn_blocking(move || Ok::<_, Error>(t * 100 + i));
                            seen.push(job.map(|v| (v, thread::current().id())).await?);
                        }
                        Ok::<_, Error>(seen)
                    }));
                    (thread::current().id(), seen.unwrap())
                })
            })
            .collect();
        for (t, thread) in (0..).zip(threads) {
            let (loop_thread, seen) = thread.join().unwrap();
            let expected: Vec<_> = (0..10).map(|i| (t * 100 + i, loop_thread)).collect();
            assert_eq!(seen, expected);
        }
    });
}

#[test]
fn panics_in_a_workers_task_and_handler_reach_the_main_loop_as_errors() {
    within(|| {
        let (worker, thread) = worker();
        let task = worker.spawn(async { Ok::<u64, Error>(1) });
        let handler = task.then(|_| -> Result<u64, Error> { panic!("handler {MARK}") });
        let panicking = worker.spawn(async {
            if true {
                panic!("task {MARK}");
            }
            Ok::<u64, Error>(1)
        });
        let main = EventLoop::new();
        let error = main.block_on(handler).unwrap_err();
        assert!(error.is_panic(), "{error:?}");
        let error = main.block_on(panicking).unwrap_err();
        assert!(error.is_panic(), "{error:?}");
        drop(worker);
        thread.join().unwrap();
    });
}

#[test]
fn a_remote_loop_dropped_while_its_task_is_awaited_breaks_the_wait() {
    within(|| {
        let (handles, handle) = mpsc::channel();
        let (spawned, was_spawned) = mpsc::channel::<()>();
        let (quit, must_quit) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let event_loop = EventLoop::new();
            handles.send(event_loop.handle()).unwrap();
            was_spawned.recv().unwrap();
            // Starts the task, which parks on an hour's sleep.
            event_loop.block_on(sleep(ms(1))).unwrap();
            must_quit.recv().unwrap();
        });
        let handle: LoopHandle = handle.recv().unwrap();
        let task = handle.spawn(async {
            sleep(HOUR).await?;
            Ok::<u64, Error>(1)
        });
        let chain = task.then(|v| Ok(v + 1));
        spawned.send(()).unwrap();
        let main = EventLoop::new();
        let outcome = main.block_on(async move {
            let (outcome, _) = join(chain, async move {
                quit.send(()).unwrap();
                Ok::<_, Error>(())
            })
            .await;
            outcome
        });
        thread.join().unwrap();
        assert!(outcome.unwrap_err().is_broken());
        // The handle outlives its loop: posting is refused, spawning breaks.
        assert!(handle.is_closed());
        assert!(!handle.post(|| unreachable!()));
        let late = handle.spawn(async { Ok::<u64, Error>(1) });
        assert!(main.block_on(late).unwrap_err().is_broken());
    });
}

#[test]
fn cancelling_a_remote_sleep_from_another_thread_lets_its_loop_return() {
    within(|| {
        let (handle, thread) = worker();
        let (made, got) = mpsc::channel();
        assert!(handle.post(move || made.send(sleep(HOUR).map(|()| 1u64)).unwrap()));
        let slept: Promise<u64> = got.recv().unwrap();
        drop(handle);
        // The worker's `run` returns only once its timer is gone.
        assert!(slept.cancel());
        thread.join().unwrap();
        assert!(slept.is_cancelled());
    });
}

#[test]
fn a_workers_resolver_dropped_on_another_thread_breaks_and_lets_the_worker_return() {
    within(|| {
        let (worker, thread) = worker();
        let (outcome, got) = mpsc::channel();
        assert!(worker.post(move || {
            let (p, r) = Promise::<u64>::pending();
            thread::spawn(move || drop(r));
            drop(spawn(async move {
                outcome.send(p.await.map_err(|e| e.is_broken())).unwrap();
                Ok::<_, Error>(())
            }));
        }));
        drop(worker);
        thread.join().unwrap();
        assert_eq!(got.recv().unwrap(), Err(true));
    });
}

#[test]
fn a_resolver_outliving_its_loop_does_not_hide_another_loops_deadlock() {
    within_for(HANG, || {
        // A worker thread made a request and ended; the request's resolver is kept
        // (by a pool, say) and may still be settled, but its loop is gone: the
        // reactions it would send there are abandoned, none comes to this loop.
        let (_request, resolver) = thread::spawn(|| {
            let _worker_loop = EventLoop::new();
            Promise::<u64>::pending()
        })
        .join()
        .unwrap();
        let event_loop = EventLoop::new();
        let stuck = event_loop.block_on(thenable::spawn_local(async {
            std::future::pending::<()>().await;
            Ok::<u64, Error>(0)
        }));
        assert!(stuck.unwrap_err().is_deadlock());
        drop(resolver);
    });
}

#[test]
fn a_wait_held_up_by_an_undriven_loops_resolver_is_a_deadlock_once_that_loop_is_dropped() {
    within_for(HANG, || {
        let (drop_loop, must_drop) = mpsc::channel::<()>();
        let (dropped, was_dropped) = mpsc::channel();
        let (done, finish) = mpsc::channel::<()>();
        let (returned, main_returned) = mpsc::channel::<()>();
        let (made, was_made) = mpsc::channel::<()>();
        let holder = thread::spawn(move || {
            let undriven = EventLoop::new();
            let (_request, resolver) = Promise::<u64>::pending();
            made.send(()).unwrap();
            must_drop.recv().unwrap();
            // Dropped once the main loop has found itself held up by it (the main
            // loop does not return before: it waits for exactly this).
            let _ = main_returned.recv_timeout(BUSY);
            // While it lived, its resolver could have sent orphans to any loop.
            drop(undriven);
            dropped.send(()).unwrap();
            finish.recv().unwrap();
            drop(resolver);
        });
        was_made.recv().unwrap();
        let event_loop = EventLoop::new();
        let stuck = event_loop.block_on(async move {
            let stuck = thenable::spawn_local(async {
                std::future::pending::<()>().await;
                Ok::<u64, Error>(0)
            });
            let (stuck, _) = join(stuck, async move {
                drop_loop.send(()).unwrap();
                Ok::<_, Error>(())
            })
            .await;
            stuck
        });
        let _ = returned.send(());
        assert!(stuck.unwrap_err().is_deadlock());
        assert_eq!(was_dropped.recv(), Ok(()));
        done.send(()).unwrap();
        holder.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// A promise whose home was a thread's default loop, gone with its thread
// ---------------------------------------------------------------------------

#[test]
fn a_chain_on_a_blocking_job_asked_for_on_a_thread_that_has_exited_runs_its_handler() {
    within(|| {
        let (finish, finished) = mpsc::channel::<()>();
        // Asked for on a thread that runs no loop: the job's promise belongs to
        // that thread's default loop, gone with the thread before the job ends.
        let job = thread::spawn(move || {
            spawn_blocking(move || {
                finished.recv().unwrap();
                Ok::<_, Error>(21)
            })
        })
        .join()
        .unwrap();
        let doubled = job.map(|v| v * 2);
        finish.send(()).unwrap();
        assert_eq!(EventLoop::new().block_on(doubled).unwrap(), 42);
    });
}

#[test]
fn a_chain_on_a_resolver_of_an_exited_threads_default_loop_runs_its_handler() {
    within(|| {
        let (promise, resolver) = thread::spawn(Promise::<u64>::pending).join().unwrap();
        let here = EventLoop::new();
        let doubled = promise.map(|v| v * 2);
        let settler = thread::spawn(move || resolver.resolve(21));
        assert_eq!(here.block_on(doubled).unwrap(), 42);
        assert!(settler.join().unwrap());
    });
}

// ---------------------------------------------------------------------------
// A promise whose home loop was dropped, settled afterwards
// ---------------------------------------------------------------------------

/// A pending promise made while a loop of its own was current, and that loop
/// dropped: the resolver outlives its home, as one kept by a pool does after the
/// worker loop that asked for it is gone.
fn pending_of_a_dropped_loop() -> (Promise<u64>, Resolver<u64>) {
    let home = EventLoop::new();
    let pending = Promise::<u64>::pending();
    drop(home);
    pending
}

#[test]
fn a_then_attached_after_its_home_loop_was_dropped_gets_the_value_await_gets() {
    within(|| {
        let (promise, resolver) = pending_of_a_dropped_loop();
        let here = EventLoop::new();
        let doubled = promise.clone().map(|v| v * 2);
        let settler = thread::spawn(move || resolver.resolve(21));
        let (awaited, doubled) = here
            .block_on(async move { Ok::<_, Error>(join(promise, doubled).await) })
            .unwrap();
        assert!(settler.join().unwrap());
        assert_eq!(awaited.unwrap(), 21);
        assert_eq!(doubled.unwrap(), 42);
    });
}

#[test]
fn a_then_attached_on_a_running_loop_to_a_promise_of_a_dropped_loop_runs_its_handler() {
    within(|| {
        let (promise, resolver) = pending_of_a_dropped_loop();
        let (worker, thread) = worker();
        let (made, child) = mpsc::channel();
        assert!(worker.post(move || made.send(promise.then(|v| Ok(v + 1))).unwrap()));
        let child: Promise<u64> = child.recv().unwrap();
        // Settled on a thread that runs no loop: the worker, or whichever loop
        // waits next, runs the handler.
        assert!(resolver.resolve(41));
        assert_eq!(EventLoop::new().block_on(child).unwrap(), 42);
        drop(worker);
        thread.join().unwrap();
    });
}

#[test]
fn a_then_attached_before_its_home_loop_was_dropped_runs_once_the_promise_settles() {
    within(|| {
        let home = EventLoop::new();
        let (promise, resolver) = Promise::<u64>::pending();
        // Attached to a pending promise, not queued in the loop: the loop's drop
        // has nothing of it to abandon.
        let ran = common::Counter::default();
        let count = ran.clone();
        let child = promise.then(move |v| {
            count.bump();
            Ok(v + 1)
        });
        drop(home);
        assert_eq!(ran.get(), 0);
        let settler = thread::spawn(move || resolver.resolve(1));
        assert_eq!(EventLoop::new().block_on(child).unwrap(), 2);
        assert!(settler.join().unwrap());
        assert_eq!(ran.get(), 1);
    });
}

/// The order in which a `then` handler and a microtask queued after the promise
/// is resolved run, when the promise is resolved inside a task of a running
/// loop; `pending` makes the promise once that loop exists.
fn order_of_a_resolve_on_the_running_loop(
    pending: fn() -> (Promise<u64>, Resolver<u64>),
) -> Vec<String> {
    let log = common::Log::default();
    let event_loop = EventLoop::new();
    let (promise, resolver) = pending();
    let (handler, microtask) = (log.clone(), log.clone());
    let child = promise.then(move |v| {
        handler.push(format!("then {v}"));
        Ok(v)
    });
    event_loop
        .block_on(async move {
            resolver.resolve(1);
            thenable::queue_microtask(move || microtask.push("microtask"));
            child.await
        })
        .unwrap();
    log.entries()
}

#[test]
fn a_promise_of_a_dropped_loop_resolved_on_a_running_loop_reacts_in_that_loops_order() {
    within(|| {
        let homed_here = order_of_a_resolve_on_the_running_loop(Promise::<u64>::pending);
        assert_eq!(homed_here, ["then 1", "microtask"]);
        let homeless = order_of_a_resolve_on_the_running_loop(pending_of_a_dropped_loop);
        assert_eq!(homeless, homed_here);
    });
}

/// [`order_of_a_resolve_on_the_running_loop`], the promise resolved before the
/// loop runs, between two microtasks queued on it (as in Node.js, the handler
/// runs between them).
fn order_of_a_resolve_before_the_loop_runs(
    pending: fn() -> (Promise<u64>, Resolver<u64>),
) -> Vec<String> {
    let log = common::Log::default();
    let event_loop = EventLoop::new();
    let (promise, resolver) = pending();
    let (handler, before, after) = (log.clone(), log.clone(), log.clone());
    let child = promise.then(move |v| {
        handler.push(format!("then {v}"));
        Ok(v)
    });
    thenable::queue_microtask(move || before.push("before"));
    resolver.resolve(1);
    thenable::queue_microtask(move || after.push("after"));
    event_loop.block_on(child).unwrap();
    log.entries()
}

#[test]
fn a_promise_of_a_dropped_loop_resolved_before_a_loop_runs_reacts_in_that_loops_order() {
    within(|| {
        let homed_here = order_of_a_resolve_before_the_loop_runs(Promise::<u64>::pending);
        assert_eq!(homed_here, ["before", "then 1", "after"]);
        let homeless = order_of_a_resolve_before_the_loop_runs(pending_of_a_dropped_loop);
        assert_eq!(homeless, homed_here);
    });
}
