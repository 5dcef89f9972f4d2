//! Waiting on another loop's work: a loop that runs out of work of its own while
//! it waits on a task, a timer or a resolver of a loop another thread drives is
//! not deadlocked, since that loop may still settle what it waits on. A wait on
//! nothing but its own stuck work still is, however busy the other loop.
//!
//! The waits below are registered before the other loop starts (it waits for
//! `go`), so that each test takes the same path every run.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::within;
use futures::future::join;
use thenable::{all, sleep, spawn_local, Error, EventLoop, LoopHandle, Promise};

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

#[test]
fn run_waits_for_a_task_of_its_own_that_awaits_a_remote_task() {
    within(|| {
        let Worker { handle, go, thread } = worker();
        let remote = slow_task(&handle, 5);
        let event_loop = EventLoop::new();
        let (seen, got) = mpsc::channel();
        event_loop
            .block_on(async {
                drop(spawn_local(async move {
                    let value = remote.await?;
                    seen.send(value).unwrap();
                    Ok::<_, Error>(())
                }));
                // The task runs from the microtask queue, before this timer fires.
                sleep(Duration::from_millis(1)).await
            })
            .unwrap();
        // The task has polled the remote promise and waits: start the worker.
        go.send(()).unwrap();
        event_loop.run().unwrap();
        assert_eq!(
            got.try_recv(),
            Ok(5),
            "`run` returned before its task finished"
        );
        drop(handle);
        thread.join().unwrap();
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
