//! `spawn_blocking` jobs that wait in a loop (`block_on` inside the job): with
//! every pool thread waiting on more pool work, the work they wait for still
//! runs; a job waiting on something else still completes; and jobs that do not
//! wait in a loop still run at most `MAX_BLOCKING_THREADS` at once.
//!
//! A test binary of its own, because its tests fill the process-wide pool; they
//! take turns (see [`exclusive`]) for the same reason. No timing assertions:
//! every wait has a generous safety net, and every count is of events that a
//! correct pool makes happen in one order only.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
use std::time::Duration;

use common::within;
use thenable::{spawn_blocking, Error, Promise, Resolver, MAX_BLOCKING_THREADS};

const SAFETY_NET: Duration = Duration::from_secs(30);

/// One test at a time: each needs every pool thread for itself. A test that
/// failed leaves the lock poisoned, which does not matter to the others.
fn exclusive() -> MutexGuard<'static, ()> {
    static POOL: Mutex<()> = Mutex::new(());
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A job that waits, in `block_on`, on a job `depth` levels further down, which
/// gives `value`; each level adds one.
fn nested(depth: usize, value: usize) -> Promise<usize> {
    spawn_blocking(move || {
        if depth == 0 {
            return Ok(value);
        }
        thenable::block_on(nested(depth - 1, value)).map(|below| below + 1)
    })
}

/// `MAX_BLOCKING_THREADS` jobs, every one on a pool thread before any of them
/// goes on with `then_do` (so that every pool thread waits at once); their
/// results, awaited on this thread.
fn on_every_pool_thread(then_do: fn(usize) -> Result<usize, Error>) -> Vec<usize> {
    let all_running = Arc::new(Barrier::new(MAX_BLOCKING_THREADS));
    let jobs: Vec<Promise<usize>> = (0..MAX_BLOCKING_THREADS)
        .map(|i| {
            let all_running = all_running.clone();
            spawn_blocking(move || {
                all_running.wait();
                then_do(i)
            })
        })
        .collect();
    thenable::block_on(thenable::all(jobs)).unwrap()
}

#[test]
fn every_pool_thread_waiting_on_a_pool_job_completes() {
    let _turn = exclusive();
    let results = within(|| {
        on_every_pool_thread(|i| thenable::block_on(spawn_blocking(move || Ok::<_, Error>(i * 10))))
    });
    let expected: Vec<usize> = (0..MAX_BLOCKING_THREADS).map(|i| i * 10).collect();
    assert_eq!(results, expected);
}

#[test]
fn every_pool_thread_waiting_on_jobs_nested_three_deep_completes() {
    let _turn = exclusive();
    let results = within(|| on_every_pool_thread(|i| thenable::block_on(nested(3, i * 10))));
    // Each of the three levels that waits adds one.
    let expected: Vec<usize> = (0..MAX_BLOCKING_THREADS).map(|i| i * 10 + 3).collect();
    assert_eq!(results, expected);
}

/// Jobs that wait, each in `block_on`, on a promise whose resolver they hand to
/// this thread; returns their promises and their resolvers, in the same order,
/// once every job is waiting or about to (it has polled its future once). Each
/// job gives what its resolver gives, plus one.
fn jobs_waiting_on_resolvers(count: usize) -> (Vec<Promise<usize>>, Vec<Resolver<usize>>) {
    let (hand_over, handed) = mpsc::channel::<(usize, Resolver<usize>)>();
    let jobs = (0..count)
        .map(|i| {
            let hand_over = hand_over.clone();
            spawn_blocking(move || {
                let (promise, resolver) = Promise::<usize>::pending();
                thenable::block_on(async move {
                    hand_over.send((i, resolver)).unwrap();
                    Ok::<_, Error>(promise.await? + 1)
                })
            })
        })
        .collect();
    let mut resolvers: Vec<(usize, Resolver<usize>)> = (0..count)
        .map(|_| {
            handed
                .recv_timeout(SAFETY_NET)
                .expect("a job never started")
        })
        .collect();
    resolvers.sort_by_key(|(i, _)| *i);
    (
        jobs,
        resolvers
            .into_iter()
            .map(|(_, resolver)| resolver)
            .collect(),
    )
}

#[test]
fn a_job_waiting_on_a_resolver_settled_by_another_thread_completes() {
    let _turn = exclusive();
    let result = within(|| {
        let (mut jobs, resolvers) = jobs_waiting_on_resolvers(1);
        for resolver in resolvers {
            resolver.resolve(41);
        }
        thenable::block_on(jobs.pop().unwrap())
    });
    assert_eq!(result.unwrap(), 42);
}

#[test]
fn with_every_pool_thread_waiting_on_this_thread_more_jobs_still_run() {
    let _turn = exclusive();
    let (results, late) = within(|| {
        let (jobs, resolvers) = jobs_waiting_on_resolvers(MAX_BLOCKING_THREADS);
        // The pool's threads all wait for this thread, which waits for this job.
        let late = thenable::block_on(spawn_blocking(|| Ok::<_, Error>("ran")));
        for (i, resolver) in resolvers.into_iter().enumerate() {
            resolver.resolve(i * 10);
        }
        (thenable::block_on(thenable::all(jobs)), late)
    });
    assert_eq!(late.unwrap(), "ran");
    let expected: Vec<usize> = (0..MAX_BLOCKING_THREADS).map(|i| i * 10 + 1).collect();
    assert_eq!(results.unwrap(), expected);
}

/// Jobs that do not wait in a loop (they block on a channel): `count` of them,
/// released one at a time once `MAX_BLOCKING_THREADS` have started and
/// `once_full` has run, then one more each time one is released. Returns the
/// most that ran at once, and each job's result, in order.
fn most_ordinary_jobs_at_once(count: usize, once_full: impl FnOnce()) -> (usize, Vec<usize>) {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (started, start) = mpsc::channel::<()>();
    let mut go_aheads = Vec::new();
    let jobs: Vec<Promise<usize>> = (0..count)
        .map(|i| {
            let (running, most, started) = (running.clone(), most.clone(), started.clone());
            let (go_ahead, wait) = mpsc::channel::<()>();
            go_aheads.push(go_ahead);
            spawn_blocking(move || {
                most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                started.send(()).unwrap();
                let told = wait.recv_timeout(SAFETY_NET);
                running.fetch_sub(1, Ordering::SeqCst);
                told.map(|()| i)
                    .map_err(|_| Error::msg("never told to go ahead"))
            })
        })
        .collect();
    let started_one = || start.recv_timeout(SAFETY_NET).expect("a job never started");
    for _ in 0..MAX_BLOCKING_THREADS {
        started_one();
    }
    once_full();
    // Jobs go ahead in the order they were queued, which is also the order they
    // start in; each one that ends lets exactly one more start.
    for (n, go_ahead) in go_aheads.into_iter().enumerate() {
        go_ahead.send(()).unwrap();
        if n + MAX_BLOCKING_THREADS < count {
            started_one();
        }
    }
    let results = thenable::block_on(thenable::all(jobs)).unwrap();
    (most.load(Ordering::SeqCst), results)
}

#[test]
fn jobs_that_do_not_wait_in_a_loop_run_at_most_max_at_once() {
    let _turn = exclusive();
    let count = 3 * MAX_BLOCKING_THREADS;
    let (most, results) = within(move || most_ordinary_jobs_at_once(count, || ()));
    assert_eq!(most, MAX_BLOCKING_THREADS);
    assert_eq!(results, (0..count).collect::<Vec<_>>());
}

#[test]
fn jobs_waiting_in_a_loop_make_room_for_as_many_others_and_no_more() {
    let _turn = exclusive();
    let count = 3 * MAX_BLOCKING_THREADS;
    let (most, results, waiters) = within(move || {
        let (waiting, resolvers) = jobs_waiting_on_resolvers(MAX_BLOCKING_THREADS);
        let (most, results) = most_ordinary_jobs_at_once(count, || ());
        for resolver in resolvers {
            resolver.resolve(0);
        }
        (most, results, thenable::block_on(thenable::all(waiting)))
    });
    assert_eq!(most, MAX_BLOCKING_THREADS);
    assert_eq!(results, (0..count).collect::<Vec<_>>());
    assert_eq!(waiters.unwrap(), vec![1; MAX_BLOCKING_THREADS]);
}

#[test]
fn jobs_whose_wait_ended_give_their_room_back() {
    let _turn = exclusive();
    let count = 3 * MAX_BLOCKING_THREADS;
    let (most, results, waiters) = within(move || {
        let (waiting, resolvers) = jobs_waiting_on_resolvers(MAX_BLOCKING_THREADS);
        let mut waiters = None;
        let (most, results) = most_ordinary_jobs_at_once(count, || {
            // With the queue still full: the threads of these jobs, once done,
            // must not take its jobs while the others hold their places.
            for resolver in resolvers {
                resolver.resolve(0);
            }
            waiters = Some(thenable::block_on(thenable::all(waiting)));
        });
        (most, results, waiters.expect("set once the pool was full"))
    });
    assert_eq!(most, MAX_BLOCKING_THREADS);
    assert_eq!(results, (0..count).collect::<Vec<_>>());
    assert_eq!(waiters.unwrap(), vec![1; MAX_BLOCKING_THREADS]);
}

/// Waits in a loop when the thread it belongs to ends: at a pool thread's exit,
/// after the thread has left the pool.
struct WaitsInALoopAtExit(mpsc::Sender<()>);

impl Drop for WaitsInALoopAtExit {
    fn drop(&mut self) {
        // A pool that counted this wait would start a thread for a queued job
        // meanwhile, which takes it within this time (on a machine so loaded
        // that it does not, the broken pool would pass; the sound one cannot
        // fail for it: nothing is asserted about time).
        let _ = thenable::EventLoop::new().block_on(thenable::sleep(Duration::from_millis(200)));
        let _ = self.0.send(());
    }
}

thread_local! {
    static AT_EXIT: std::cell::RefCell<Option<WaitsInALoopAtExit>> =
        const { std::cell::RefCell::new(None) };
}

#[test]
fn a_thread_that_left_the_pool_frees_no_place_when_it_waits_in_a_loop() {
    let _turn = exclusive();
    let count = 3 * MAX_BLOCKING_THREADS;
    let (most, results, waiter) = within(move || {
        let (hand_over, handed) = mpsc::channel::<Resolver<usize>>();
        let (exited, exit_seen) = mpsc::channel::<()>();
        let waiter = spawn_blocking(move || {
            let (promise, resolver) = Promise::<usize>::pending();
            let got = thenable::block_on(async move {
                hand_over.send(resolver).unwrap();
                promise.await
            });
            // Set after thenable's own thread locals are (by the `block_on`
            // above): dropped before them when the thread ends.
            AT_EXIT.with(|at_exit| *at_exit.borrow_mut() = Some(WaitsInALoopAtExit(exited)));
            got
        });
        let resolver = handed
            .recv_timeout(SAFETY_NET)
            .expect("the job never started");
        let mut waiter_result = None;
        let (most, results) = most_ordinary_jobs_at_once(count, || {
            // The pool is full and jobs are queued: once its wait ends, the
            // job's thread finds the pool over its bound and leaves it; at its
            // end, it waits in a loop while every place is still taken.
            resolver.resolve(1);
            waiter_result = Some(thenable::block_on(waiter));
            exit_seen
                .recv_timeout(SAFETY_NET)
                .expect("the job's thread did not leave the pool");
        });
        (
            most,
            results,
            waiter_result.expect("set once the pool was full"),
        )
    });
    assert_eq!(waiter.unwrap(), 1);
    assert_eq!(most, MAX_BLOCKING_THREADS);
    assert_eq!(results, (0..count).collect::<Vec<_>>());
}
