//! Waiting on another loop's work: a loop that runs out of work of its own while
//! it waits on a task, a timer or a resolver of a loop another thread drives is
//! not deadlocked, since that loop may still settle what it waits on. A wait on
//! nothing but its own stuck work still is, however busy the other loop, and so
//! is one the other loop moves onto this loop's stuck work later: the loop looks
//! at such waits again while only they keep it alive.
//!
//! The waits below are registered before the other loop starts (it waits for
//! `go`), so that each test takes the same path every run.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{within, within_for};
use futures::future::join;
use thenable::{
    all, queue_microtask, shield, sleep, spawn_blocking, spawn_local, Error, EventLoop, LoopHandle,
    Promise,
};

/// A loop on a thread of its own: it starts once `go` is sent, and runs until the
/// last handle to it is dropped and its work is done.
struct Worker {
    handle: LoopHandle,
    go: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

fn worker() -> Worker {
    let (handles, handle) = mpsc::channel();
    let (go, start) = mpsc::channel::<()>();
    let thread = thread::spawn(move || {
        let event_loop = EventLoop::new();
        handles.send(event_loop.handle()).unwrap();
        start.recv().unwrap();
        event_loop.run().unwrap();
    });
    Worker {
        handle: handle.recv().unwrap(),
        go,
        thread,
    }
}

impl Worker {
    /// Awaits `promise` on this thread's loop, starting the worker only once the
    /// wait is registered (`join` polls `promise` first).
    fn await_here<T: Send + 'static>(self, promise: Promise<T>) -> Result<T, Error> {
        let Worker { handle, go, thread } = self;
        let start = async move {
            go.send(()).unwrap();
            Ok::<_, Error>(())
        };
        let outcome = EventLoop::new().block_on(async move {
            let (outcome, started) = join(promise, start).await;
            started?;
            outcome
        });
        drop(handle);
        thread.join().unwrap();
        outcome
    }
}

/// A task of the worker that sleeps a little, then fulfils with `value`.
fn slow_task(handle: &LoopHandle, value: u64) -> Promise<u64> {
    handle.spawn(async move {
        sleep(Duration::from_millis(5)).await?;
        Ok::<_, Error>(value)
    })
}

#[test]
fn a_task_another_thread_drives_is_awaited_without_a_deadlock() {
    within(|| {
        let worker = worker();
        let task = slow_task(&worker.handle, 42);
        assert_eq!(worker.await_here(task).unwrap(), 42);
    });
}

#[test]
fn a_chain_on_a_remote_task_is_awaited_without_a_deadlock() {
    within(|| {
        let worker = worker();
        let chain = slow_task(&worker.handle, 20)
            .then(|v| Ok(v + 1))
            .then(|v| Ok(v * 2));
        assert_eq!(worker.await_here(chain).unwrap(), 42);
    });
}

#[test]
fn all_over_remote_tasks_is_awaited_without_a_deadlock() {
    within(|| {
        let worker = worker();
        let tasks = [slow_task(&worker.handle, 1), slow_task(&worker.handle, 2)];
        let sum = all(tasks).map(|values| values.iter().sum::<u64>());
        assert_eq!(worker.await_here(sum).unwrap(), 3);
    });
}

#[test]
fn a_tuple_all_over_remote_tasks_is_awaited_without_a_deadlock() {
    within(|| {
        let worker = worker();
        let both = all((slow_task(&worker.handle, 40), slow_task(&worker.handle, 2)));
        let sum = both.map(|(a, b)| a + b);
        assert_eq!(worker.await_here(sum).unwrap(), 42);
    });
}

/// Runs `make` on the worker's thread, inside its loop, and brings back what it
/// made. The worker is started for this, so the wait that follows is registered
/// while it runs.
fn made_on(worker: &Worker, make: impl FnOnce() -> Promise<u64> + Send + 'static) -> Promise<u64> {
    let (made, receive) = mpsc::channel();
    worker.handle.post(move || made.send(make()).unwrap());
    worker.go.send(()).unwrap();
    receive.recv().unwrap()
}

/// [`Worker::await_here`], for a worker already started.
fn await_started<T: Send + 'static>(worker: Worker, promise: Promise<T>) -> Result<T, Error> {
    let outcome = EventLoop::new().block_on(promise);
    drop(worker.handle);
    worker.thread.join().unwrap();
    outcome
}

#[test]
fn a_chain_whose_root_resolver_belongs_to_a_driven_loop_is_awaited_without_a_deadlock() {
    within(|| {
        let worker = worker();
        let root = made_on(&worker, || {
            let (promise, resolver) = Promise::<u64>::pending();
            drop(spawn_local(async move {
                sleep(Duration::from_millis(5)).await?;
                resolver.resolve(21);
                Ok::<_, Error>(())
            }));
            promise
        });
        let chain = root.then(|v| Ok(v * 2));
        assert_eq!(await_started(worker, chain).unwrap(), 42);
    });
}

#[test]
fn a_sleep_of_another_loop_is_awaited_without_a_deadlock() {
    within(|| {
        let worker = worker();
        let slept = made_on(&worker, || sleep(Duration::from_millis(5)).map(|()| 7));
        assert_eq!(await_started(worker, slept).unwrap(), 7);
    });
}

/// Spawns a task on a new loop of this thread that awaits `promise`, lets the
/// task reach its wait, starts the worker and runs the loop: the task's outcome,
/// if it finished by the time `run` returned.
fn run_with_a_task_awaiting<T: Send + 'static>(
    worker: Worker,
    promise: Promise<T>,
) -> Option<Result<T, Error>> {
    let Worker { handle, go, thread } = worker;
    let event_loop = EventLoop::new();
    let (seen, got) = mpsc::channel();
    event_loop
        .block_on(async {
            drop(spawn_local(async move {
                seen.send(promise.await).unwrap();
                Ok::<_, Error>(())
            }));
            // The task runs from the microtask queue, before this timer fires.
            sleep(Duration::from_millis(1)).await
        })
        .unwrap();
    // The task has polled the promise and waits: start the worker.
    go.send(()).unwrap();
    event_loop.run().unwrap();
    let outcome = got.try_recv().ok();
    drop(handle);
    thread.join().unwrap();
    outcome
}

#[test]
fn run_waits_for_a_task_of_its_own_that_awaits_a_remote_task() {
    within(|| {
        let worker = worker();
        let remote = slow_task(&worker.handle, 5);
        let outcome = run_with_a_task_awaiting(worker, remote);
        let value = outcome.expect("`run` returned before its task finished");
        assert_eq!(value.unwrap(), 5);
    });
}

#[test]
fn a_wait_on_stuck_work_of_its_own_is_a_deadlock_while_another_loop_is_busy() {
    within(|| {
        let Worker { handle, go, thread } = worker();
        go.send(()).unwrap();
        // The worker has work that goes on while this loop is stuck.
        let busy = slow_task(&handle, 1);
        let event_loop = EventLoop::new();
        // A future that keeps no waker: nothing can ever wake the task.
        let stuck = event_loop.block_on(spawn_local(async {
            std::future::pending::<()>().await;
            Ok::<u64, Error>(0)
        }));
        assert!(stuck.unwrap_err().is_deadlock());
        assert_eq!(event_loop.block_on(busy).unwrap(), 1);
        drop(handle);
        thread.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// A wait counted as another loop's when it registered, looked at again later
// ---------------------------------------------------------------------------

/// The safety net of the tests below, whose bug was a hang: fail well before the
/// default limit.
const HANG: Duration = Duration::from_secs(10);

/// How long the worker stays busy in the tests that wait on it for long: long
/// enough for this loop to look at its wait again several times meanwhile (it
/// does so every few milliseconds at first, then less and less often). Never
/// part of an assertion: the outcome is the same however long it really takes.
const LONG: Duration = Duration::from_millis(300);

/// A task of the current loop that never finishes and that nothing can wake: a
/// future that keeps no waker.
fn stuck_task() -> Promise<u64> {
    spawn_local(async {
        std::future::pending::<()>().await;
        Ok::<u64, Error>(0)
    })
}

/// A chain that waits on a task of the worker (so the wait on it counts as the
/// worker's work when it registers), whose handler, run on the worker, makes it
/// follow `then`.
fn moved_onto(handle: &LoopHandle, then: Promise<u64>) -> Promise<u64> {
    slow_task(handle, 1).then(move |_| then)
}

#[test]
fn a_chain_a_remote_handler_moves_onto_stuck_work_of_this_loop_is_a_deadlock() {
    within_for(HANG, || {
        let worker = worker();
        let event_loop = EventLoop::new();
        let chain = moved_onto(&worker.handle, stuck_task());
        let Worker { handle, go, thread } = worker;
        let outcome = event_loop.block_on(async move {
            let start = async move {
                go.send(()).unwrap();
                Ok::<_, Error>(())
            };
            let (outcome, started) = join(chain, start).await;
            started?;
            outcome
        });
        // The worker is still there (this thread holds a handle to it): the wait
        // is on this loop's own stuck work all the same.
        assert!(!handle.is_closed());
        assert!(outcome.unwrap_err().is_deadlock());
        drop(handle);
        thread.join().unwrap();
    });
}

#[test]
fn run_returns_when_a_task_waits_on_a_chain_moved_onto_stuck_work_of_this_loop() {
    within_for(HANG, || {
        let worker = worker();
        // Counted as the worker's work when the task's wait registers.
        let chain = moved_onto(&worker.handle, stuck_task());
        let outcome = run_with_a_task_awaiting(worker, chain);
        assert!(
            outcome.is_none(),
            "the task never finishes, yet it did: {outcome:?}"
        );
    });
}

#[test]
fn a_chain_moved_onto_stuck_work_of_this_loop_by_a_loop_now_gone_is_a_deadlock() {
    within_for(HANG, || {
        let Worker { handle, go, thread } = worker();
        let event_loop = EventLoop::new();
        let chain = moved_onto(&handle, stuck_task());
        // The worker returns from `run` once its task and handler are done, and
        // its loop is dropped with its thread.
        drop(handle);
        let outcome = event_loop.block_on(async move {
            let gone = async move {
                go.send(()).unwrap();
                spawn_blocking(move || {
                    thread.join().unwrap();
                    Ok::<_, Error>(())
                })
                .await
            };
            // The chain is polled first: its wait registers while the worker's
            // task is pending; the worker is gone before this loop runs out of
            // work.
            let (outcome, gone) = join(chain, gone).await;
            gone?;
            outcome
        });
        assert!(outcome.unwrap_err().is_deadlock());
    });
}

#[test]
fn a_long_wait_on_a_busy_remote_loop_is_not_a_deadlock() {
    within_for(HANG, || {
        let worker = worker();
        let remote = worker.handle.clone();
        // Each step keeps the worker busy for a while: a timer of its task, its
        // handler blocking its thread, then another task of its own that the
        // chain is moved onto.
        let chain = worker
            .handle
            .spawn(async {
                sleep(LONG).await?;
                Ok::<u64, Error>(20)
            })
            .then(move |v| {
                thread::sleep(LONG);
                remote.spawn(async move {
                    sleep(LONG).await?;
                    Ok::<u64, Error>(v + 1)
                })
            })
            .map(|v| v * 2);
        assert_eq!(worker.await_here(chain).unwrap(), 42);
    });
}

#[test]
fn run_waits_for_a_task_of_its_own_that_awaits_a_busy_remote_loop_for_long() {
    within_for(HANG, || {
        let worker = worker();
        let remote = worker.handle.spawn(async {
            sleep(LONG).await?;
            Ok::<u64, Error>(5)
        });
        let outcome = run_with_a_task_awaiting(worker, remote.map(|v| v + 1));
        let value = outcome.expect("`run` returned before its task finished");
        assert_eq!(value.unwrap(), 6);
    });
}

/// A task of the worker that fulfils with `value` after [`slow_task`]s do, and
/// leaves the worker busy for [`LONG`] as it does: whatever its promise's
/// settling queues on the worker (a combinator deciding its output) waits behind
/// that.
fn task_leaving_its_loop_busy(handle: &LoopHandle, value: u64) -> Promise<u64> {
    handle.spawn(async move {
        sleep(Duration::from_millis(10)).await?;
        queue_microtask(|| thread::sleep(LONG));
        Ok::<_, Error>(value)
    })
}

#[test]
fn all_whose_output_is_queued_on_a_busy_remote_loop_is_not_a_deadlock() {
    within_for(HANG, || {
        let worker = worker();
        let tasks = [
            task_leaving_its_loop_busy(&worker.handle, 40),
            slow_task(&worker.handle, 2),
        ];
        let sum = all(tasks).map(|values| values.iter().sum::<u64>());
        assert_eq!(worker.await_here(sum).unwrap(), 42);
    });
}

#[test]
fn a_tuple_all_whose_inputs_reported_to_a_busy_remote_loop_is_not_a_deadlock() {
    within_for(HANG, || {
        let worker = worker();
        let both = all((
            task_leaving_its_loop_busy(&worker.handle, 40),
            slow_task(&worker.handle, 2),
        ));
        let sum = both.map(|(a, b)| a + b);
        assert_eq!(worker.await_here(sum).unwrap(), 42);
    });
}

#[test]
fn a_chain_moved_onto_a_promise_the_search_cannot_see_into_still_waits() {
    within_for(HANG, || {
        let worker = worker();
        let remote = worker.handle.clone();
        // A shielded promise is settled by a settler of the library's own, which
        // the search does not enter: it cannot tell whose work that is.
        let chain = slow_task(&worker.handle, 20).then(move |v| {
            shield(remote.spawn(async move {
                sleep(LONG).await?;
                Ok::<u64, Error>(v + 1)
            }))
        });
        assert_eq!(worker.await_here(chain).unwrap(), 21);
    });
}

#[test]
fn a_wait_found_on_remote_work_only_later_still_waits_when_it_moves_out_of_sight() {
    within_for(HANG, || {
        let worker = worker();
        let remote = worker.handle.clone();
        // When the wait registers, the chain's handler is queued here: it counts
        // as this loop's own. The handler makes it follow the worker's work,
        // which this loop finds once it runs out of work; then the worker's
        // handler moves it onto a shielded promise, which the search cannot see
        // into.
        let chain = Promise::<()>::resolved(()).then(move |()| {
            let more = remote.clone();
            slow_task(&remote, 20).then(move |v| {
                shield(more.spawn(async move {
                    sleep(LONG).await?;
                    Ok::<u64, Error>(v + 1)
                }))
            })
        });
        assert_eq!(worker.await_here(chain).unwrap(), 21);
    });
}

#[test]
fn a_task_cancelled_while_it_waits_on_another_loops_work_keeps_nothing_alive() {
    within_for(HANG, || {
        let Worker { handle, go, thread } = worker();
        // Another consumer keeps the chain, and so the task's wait on it, pending
        // after the task is dropped: the worker has not started yet.
        let chain = slow_task(&handle, 5).map(|v| v + 1);
        let kept = chain.clone();
        let event_loop = EventLoop::new();
        let task = event_loop
            .block_on(async move {
                let task = spawn_local(chain);
                // The task runs from the microtask queue, before this timer fires.
                sleep(Duration::from_millis(1)).await?;
                Ok::<_, Error>(task)
            })
            .unwrap();
        assert!(task.cancel());
        // The dropped task's wait, counted as one on the worker's work, keeps
        // this loop alive no more: `run` returns, the worker still not started.
        event_loop.run().unwrap();
        assert!(kept.is_pending());
        go.send(()).unwrap();
        assert_eq!(event_loop.block_on(kept).unwrap(), 6);
        drop(handle);
        thread.join().unwrap();
    });
}
