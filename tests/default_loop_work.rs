//! Tasks and timers made on a thread that runs no loop: they are queued on that
//! thread's default loop, which runs only while something there waits on a
//! thenable promise. Awaited on another thread while their own thread never
//! runs that loop, the loop that waits takes them over (a `spawn`'s future is
//! `Send`; a sleep is a deadline); once their thread is gone, they are broken.
//! Either way the wait ends.
//!
//! The thread that makes the work parks (or ends) before the other one waits,
//! so that only the waiting thread can run it: each test takes the same path
//! every run.

mod common;

use std::sync::mpsc;
use std::thread;

use common::{ms, within, Counter, DropCounter, Log, HOUR};
use thenable::{race, sleep, spawn, Error, EventLoop, Promise};

/// What [`made_on_a_parked_thread`] hands back: the thread stays parked, running
/// no loop, until [`Parked::release`] (or the drop) lets it end.
struct Parked {
    release: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Parked {
    /// Lets the thread end (its default loop is dropped then), and waits for it.
    fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.end();
    }
}

/// Runs `make` on a thread of its own, where no loop runs, hands what it made to
/// the caller, and keeps the thread parked (running no loop) meanwhile.
fn made_on_a_parked_thread<P: Send + 'static>(
    make: impl FnOnce() -> P + Send + 'static,
) -> (P, Parked) {
    let (made, receive) = mpsc::channel();
    let (release, parked) = mpsc::channel::<()>();
    let thread = thread::spawn(move || {
        made.send(make()).unwrap();
        let _ = parked.recv();
    });
    let parked = Parked {
        release: Some(release),
        thread: Some(thread),
    };
    (receive.recv().unwrap(), parked)
}

/// Runs `make` on a thread of its own, where no loop runs, and lets the thread
/// end (dropping its default loop) before handing back what it made.
fn made_on_a_thread_that_ended<P: Send + 'static>(make: impl FnOnce() -> P + Send + 'static) -> P {
    thread::spawn(make).join().unwrap()
}

#[test]
fn a_task_spawned_where_no_loop_runs_is_run_by_the_loop_that_awaits_it() {
    within(|| {
        let (task, parked) =
            made_on_a_parked_thread(|| spawn(async { Ok::<_, Error>(thread::current().id()) }));
        let ran_on = thenable::block_on(task).unwrap();
        assert_eq!(ran_on, thread::current().id(), "run by the waiting loop");
        parked.release();
    });
}

#[test]
fn a_task_spawned_where_no_loop_runs_is_run_when_a_task_awaits_a_chain_on_it() {
    within(|| {
        let (chained, parked) = made_on_a_parked_thread(|| {
            let task = spawn(async {
                sleep(ms(1)).await?;
                Ok::<_, Error>(20)
            });
            task.then(|n| Ok(n + 1)).map(|n| n * 2)
        });
        let event_loop = EventLoop::new();
        // A task's wait, not `block_on`'s own.
        let waiter = event_loop.handle().spawn(async move {
            let n = chained.await?;
            Ok::<_, Error>(n)
        });
        assert_eq!(event_loop.block_on(waiter).unwrap(), 42);
        parked.release();
    });
}

#[test]
fn a_sleep_made_where_no_loop_runs_fires_for_the_loop_that_awaits_it() {
    within(|| {
        let (slept, parked) = made_on_a_parked_thread(|| sleep(ms(5)));
        thenable::block_on(slept).unwrap();
        parked.release();
    });
}

#[test]
fn another_executor_runs_a_task_and_a_sleep_made_where_no_loop_runs() {
    within(|| {
        let (made, parked) = made_on_a_parked_thread(|| {
            let task = spawn(async { Ok::<_, Error>(7) });
            (task, sleep(ms(5)))
        });
        let (task, slept) = made;
        assert_eq!(futures::executor::block_on(task).unwrap(), 7);
        futures::executor::block_on(slept).unwrap();
        parked.release();
    });
}

#[test]
fn work_made_where_no_loop_runs_breaks_when_its_thread_ends_unawaited() {
    within(|| {
        let (task, slept) = made_on_a_thread_that_ended(|| {
            let task = spawn(async { Ok::<_, Error>(1) });
            (task, sleep(ms(5)))
        });
        assert!(thenable::block_on(task).unwrap_err().is_broken());
        assert!(thenable::block_on(slept).unwrap_err().is_broken());
    });
}

#[test]
fn a_claimed_sleep_that_is_cancelled_keeps_no_loop_alive() {
    within(|| {
        let (go_on, wait) = mpsc::channel::<()>();
        let (outcome, told) = mpsc::channel();
        let (hour, maker) = {
            let (hour, receive) = mpsc::channel();
            let maker = thread::spawn(move || {
                hour.send(sleep(HOUR)).unwrap();
                wait.recv().unwrap();
                // The hour's timer was this loop's: taken over and cancelled
                // elsewhere, it no longer keeps the loop alive.
                let stuck = thenable::block_on(std::future::pending::<Result<(), Error>>());
                outcome.send(stuck.unwrap_err().is_deadlock()).unwrap();
            });
            (receive.recv().unwrap(), maker)
        };
        // The race cancels the hour, which this loop took over by waiting on it.
        let first = thenable::block_on(race([hour, sleep(ms(5)).map(|()| ())]));
        first.unwrap();
        go_on.send(()).unwrap();
        assert!(told.recv().unwrap(), "the maker's loop was idle");
        maker.join().unwrap();
    });
}

#[test]
fn on_its_own_thread_a_task_spawned_before_the_loop_runs_keeps_its_place() {
    within(|| {
        let log = Log::default();
        let task_log = log.clone();
        let task = spawn(async move {
            task_log.push("task");
            Ok::<_, Error>(())
        });
        let micro_log = log.clone();
        thenable::queue_microtask(move || micro_log.push("microtask"));
        let p = Promise::<()>::resolved(());
        thenable::block_on(async move {
            task.await?;
            p.await
        })
        .unwrap();
        assert_eq!(log.entries(), ["task", "microtask"]);
    });
}

#[test]
fn a_task_taken_over_that_gets_stuck_is_the_waiting_loop_s_deadlock() {
    within(|| {
        let (task, parked) = made_on_a_parked_thread(|| {
            spawn(async {
                // Nothing holds a waker: nothing can ever wake the task.
                std::future::pending::<()>().await;
                Ok::<_, Error>(())
            })
        });
        let stuck = thenable::block_on(task);
        assert!(stuck.unwrap_err().is_deadlock());
        parked.release();
    });
}

#[test]
fn a_loop_made_after_the_sleep_takes_it_over_from_the_default_loop() {
    within(|| {
        // Made for this thread's default loop, which cannot run while the new
        // loop waits on this thread.
        let slept = sleep(ms(2));
        let task = spawn(async { Ok::<_, Error>(5) });
        let event_loop = EventLoop::new();
        event_loop.block_on(slept).unwrap();
        assert_eq!(event_loop.block_on(task).unwrap(), 5);
    });
}

#[test]
fn a_stale_start_does_not_take_a_later_task_made_at_the_same_address() {
    within(|| {
        // Each round: a task taken over by another thread's loop and freed here,
        // then a task made here (where the allocator likely reuses the freed
        // node's address) after a microtask: it must keep its place behind it.
        for _ in 0..20 {
            let first = spawn(async { Ok::<_, Error>(1) });
            let kept = first.clone();
            let taker = thread::spawn(move || thenable::block_on(first).unwrap());
            assert_eq!(taker.join().unwrap(), 1);
            // The first task's node is freed here, on this thread; its start is
            // still queued on this thread's default loop.
            drop(kept);
            let log = Log::default();
            let micro_log = log.clone();
            thenable::queue_microtask(move || micro_log.push("microtask"));
            let task_log = log.clone();
            let second = spawn(async move {
                task_log.push("task");
                Ok::<_, Error>(2)
            });
            assert_eq!(thenable::block_on(second).unwrap(), 2);
            assert_eq!(log.entries(), ["microtask", "task"]);
        }
    });
}

#[test]
fn a_task_polled_once_by_another_thread_s_executor_still_runs_on_its_own_thread() {
    within(|| {
        let task = spawn(async { Ok::<_, Error>(3) });
        // Another thread looks once, and gives the promise back.
        let task = thread::spawn(move || {
            let mut task = task;
            assert!(futures::FutureExt::now_or_never(&mut task).is_none());
            task
        })
        .join()
        .unwrap();
        assert_eq!(thenable::block_on(task).unwrap(), 3);
    });
}

#[test]
fn a_loop_takes_over_a_task_beside_a_sleep_made_where_no_loop_runs() {
    within(|| {
        for sleep_first in [false, true] {
            let (first, parked) = made_on_a_parked_thread(move || task_or_hour(sleep_first));
            assert_eq!(thenable::block_on(first).unwrap(), 1);
            parked.release();
        }
    });
}

#[test]
fn another_executor_takes_over_a_task_beside_a_sleep_made_where_no_loop_runs() {
    within(|| {
        for sleep_first in [false, true] {
            let (first, parked) = made_on_a_parked_thread(move || task_or_hour(sleep_first));
            assert_eq!(futures::executor::block_on(first).unwrap(), 1);
            parked.release();
        }
    });
}

/// A race of a task that settles at once and an hour's sleep, in either order.
fn task_or_hour(sleep_first: bool) -> Promise<i32> {
    let task = spawn(async { Ok::<_, Error>(1) });
    let hour = sleep(HOUR).map(|()| 0);
    if sleep_first {
        race([hour, task])
    } else {
        race([task, hour])
    }
}

#[test]
fn cancelling_a_task_spawned_where_no_loop_runs_drops_its_future_at_once() {
    within(|| {
        let dropped = Counter::default();
        let guard = DropCounter(dropped.clone());
        let task = spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, Error>(())
        });
        assert!(task.cancel());
        assert_eq!(dropped.get(), 1, "dropped by the cancel, on its own thread");

        // Made on a thread that stays parked, cancelled here.
        let elsewhere = Counter::default();
        let guard = DropCounter(elsewhere.clone());
        let (task, parked) = made_on_a_parked_thread(move || {
            spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, Error>(())
            })
        });
        assert!(task.cancel());
        assert_eq!(
            elsewhere.get(),
            1,
            "dropped by the cancel, on another thread"
        );
        assert!(thenable::block_on(task).unwrap_err().is_cancelled());
        parked.release();
    });
}
