//! `spawn_blocking`: results, errors and panics come back as settlements on the
//! calling thread's loop, the pool is bounded, and the loop keeps running while a
//! job blocks.
//!
//! No timing assertions: waits that could hang (a job waiting for another) have a
//! generous safety net that turns a hang into a failure.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::within;
use thenable::{spawn_blocking, Error, EventLoop, Promise, MAX_BLOCKING_THREADS};

/// How long a test waits for a job before it counts as hung. A safety net only.
const SAFETY_NET: Duration = Duration::from_secs(30);

#[test]
fn fulfils_with_the_result() {
    let input = [3u64, 4, 5];
    let sum: Promise<u64> = spawn_blocking(move || Ok(input.iter().sum()));
    assert_eq!(thenable::block_on(sum).unwrap(), 12);
}

#[test]
fn rejects_with_the_error_in_the_callers_error_type() {
    let failed: Promise<u8, String> = spawn_blocking(|| Err("no such file".to_string()));
    assert_eq!(thenable::block_on(failed).unwrap_err(), "no such file");

    let io: Promise<u8, std::io::Error> =
        spawn_blocking(|| Err(std::io::ErrorKind::PermissionDenied.into()));
    let error = thenable::block_on(io).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
}

#[test]
fn a_panic_rejects_and_the_pool_survives_it() {
    let panicked: Promise<u8> = spawn_blocking(|| panic!("bad input {}", 7));
    let error = thenable::block_on(panicked).unwrap_err();
    assert!(error.is_panic(), "{error:?}");
    assert!(error.to_string().contains("bad input 7"), "{error}");

    // As many panics as the pool has threads, then work: no thread was lost.
    let panics: Vec<Promise<u8>> = (0..MAX_BLOCKING_THREADS)
        .map(|_| spawn_blocking(|| panic!("again")))
        .collect();
    for panicked in panics {
        assert!(thenable::block_on(panicked).unwrap_err().is_panic());
    }
    let after: Promise<&str> = spawn_blocking(|| Ok("still working"));
    assert_eq!(thenable::block_on(after).unwrap(), "still working");
}

/// The job runs on a pool thread, its handlers on a loop: this one, unless the
/// job finished before this thread got into `block_on` and another loop of the
/// process, with nothing else to do, ran the reaction first (an orphan: see
/// docs/design.md). Never on the pool thread.
#[test]
fn runs_off_the_loop_thread_and_settles_on_a_loop() {
    let loop_thread = thread::current().id();
    let job = spawn_blocking(|| Ok::<_, Error>(thread::current().id()));
    let observed = job.map(move |worker| (worker, thread::current().id()));
    let (worker, handler) = thenable::block_on(observed).unwrap();
    assert_ne!(worker, loop_thread, "the job ran on the loop thread");
    assert_ne!(handler, worker, "the handler ran on the pool thread");
}

#[test]
fn many_more_jobs_than_threads_all_complete_and_the_pool_stays_bounded() {
    let running = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let jobs: Vec<Promise<u64>> = (0..20 * MAX_BLOCKING_THREADS as u64)
        .map(|n| {
            let (running, most_at_once) = (running.clone(), most_at_once.clone());
            spawn_blocking(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most_at_once.fetch_max(now, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(n * n)
            })
        })
        .collect();
    let squares = thenable::block_on(thenable::all(jobs)).unwrap();
    let expected: Vec<u64> = (0..20 * MAX_BLOCKING_THREADS as u64)
        .map(|n| n * n)
        .collect();
    assert_eq!(squares, expected);
    // Other tests share the pool, so this counts at most the whole pool.
    let most = most_at_once.load(Ordering::SeqCst);
    assert!(
        most <= MAX_BLOCKING_THREADS,
        "{most} jobs ran at once, more than the pool's {MAX_BLOCKING_THREADS} threads"
    );
}

#[test]
fn jobs_run_in_parallel() {
    // The first job waits for the second: with a single thread they would deadlock
    // (and fail after the safety net).
    let (send, receive) = mpsc::channel::<&str>();
    let waiter: Promise<&str> = spawn_blocking(move || {
        receive
            .recv_timeout(SAFETY_NET)
            .map_err(|_| Error::msg("the second job never ran alongside the first"))
    });
    let sender: Promise<()> = spawn_blocking(move || {
        send.send("hello from the other thread").unwrap();
        Ok(())
    });
    thenable::block_on(sender).unwrap();
    assert_eq!(
        thenable::block_on(waiter).unwrap(),
        "hello from the other thread"
    );
}

#[test]
fn timers_keep_firing_while_a_job_blocks() {
    let event_loop = EventLoop::new();
    let ticks = Rc::new(Cell::new(0u32));
    let counter = ticks.clone();
    let interval = thenable::set_interval(Duration::from_millis(5), move || {
        counter.set(counter.get() + 1)
    });
    let slow: Promise<&str> = spawn_blocking(|| {
        thread::sleep(Duration::from_millis(200));
        Ok("done")
    });
    let (done, during) = event_loop
        .block_on(async {
            let done = slow.await?;
            Ok::<_, Error>((done, ticks.get()))
        })
        .unwrap();
    thenable::clear_timer(interval);
    assert_eq!(done, "done");
    assert!(during > 0, "no timer fired while the blocking job ran");
}

#[test]
fn a_pending_job_keeps_run_alive_until_it_settles() {
    within(a_pending_job_keeps_run_alive_body);
}

fn a_pending_job_keeps_run_alive_body() {
    let event_loop = EventLoop::new();
    let result = Rc::new(Cell::new(0u64));
    let slot = result.clone();
    let job: Promise<u64> = spawn_blocking(|| {
        thread::sleep(Duration::from_millis(20));
        Ok(42)
    });
    // Awaited by a local task, not by `block_on`: only the pending job's resolver
    // stops `run` from returning early.
    let _task = thenable::spawn_local(async move {
        slot.set(job.await?);
        Ok::<_, Error>(())
    });
    event_loop.run().unwrap();
    assert_eq!(result.get(), 42);
}

#[test]
fn works_from_inside_a_task_and_from_several_loop_threads() {
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            thread::spawn(move || {
                thenable::block_on(thenable::spawn(async move {
                    let mut total = 0;
                    for i in 0..5 {
                        total += spawn_blocking(move || Ok::<_, Error>(t * 100 + i)).await?;
                    }
                    Ok::<_, Error>(total)
                }))
            })
        })
        .collect();
    let totals: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(totals, [10, 510, 1010]);
}

#[test]
fn a_cancelled_job_stops_keeping_the_loop_alive() {
    let (release, hold) = mpsc::channel::<()>();
    within(move || cancel_a_held_job_and_run(hold));
    // Fails if the job was cancelled before it started (and so never ran): fine.
    let _ = release.send(());
}

fn cancel_a_held_job_and_run(hold: mpsc::Receiver<()>) {
    let event_loop = EventLoop::new();
    let held: Promise<()> = spawn_blocking(move || {
        // Holds a pool thread until the test is over (or the safety net).
        let _ = hold.recv_timeout(SAFETY_NET);
        Ok(())
    });
    assert!(held.cancel());
    // Returns although the job still runs: the cancelled promise no longer counts.
    event_loop.run().unwrap();
    assert!(held.is_cancelled());
}
