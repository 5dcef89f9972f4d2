//! Blocking work off the loop: [`spawn_blocking`] runs a closure on a small, bounded,
//! process-wide thread pool and settles a promise with its result on the loop that
//! asked (as libuv's thread pool does for Node.js, or asyncio's `run_in_executor`).
//!
//! This module owns the pool: its threads, its queue, and the wrapper that turns a
//! closure's result or panic into a settlement. It never blocks a loop thread and
//! never runs a handler: settling goes through a [`Resolver`](crate::Resolver),
//! which hands the reactions to the home loop and wakes it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::promise::Promise;

/// The most threads [`spawn_blocking`] runs at once, for the whole process. More
/// jobs wait in a queue, first come, first served.
///
/// Threads are started only when a job finds none idle, and one that stays idle for
/// ten seconds exits, so a program that never blocks has no pool threads.
///
/// ```
/// assert!(thenable::MAX_BLOCKING_THREADS >= 2);
/// ```
pub const MAX_BLOCKING_THREADS: usize = 8;

/// How long a pool thread waits for work before it exits.
const IDLE_THREAD_LIFETIME: Duration = Duration::from_secs(10);

/// Runs `work` on the blocking thread pool and returns a promise of its result.
///
/// The promise settles on the loop of the calling thread (its handlers run there,
/// never on a pool thread), and until it does, it keeps that loop alive: `run` and
/// `block_on` wait for it while the loop goes on running timers, tasks and I/O.
/// A panic in `work` rejects the promise with an error for which
/// [`Error::is_panic`] holds; the pool thread survives it.
///
/// Use it for what would stall the loop: CPU-heavy computations, blocking system
/// calls, libraries without an asynchronous API. At most
/// [`MAX_BLOCKING_THREADS`] jobs run at once; the rest wait their turn.
/// Cancelling the promise skips `work` if it has not started yet (a running job
/// cannot be interrupted; its result is dropped).
///
/// `work` should not wait for other pool work (`block_on(spawn_blocking(..))`):
/// once every pool thread is doing so, nothing is left to run what they wait for,
/// and they wait for ever.
///
/// ```
/// use thenable::{spawn_blocking, Error, Promise};
///
/// fn fib(n: u64) -> u64 {
///     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
/// }
///
/// let answer: Promise<u64> = spawn_blocking(|| Ok(fib(20)));
/// let text = answer.map(|v| format!("fib(20) = {v}"));
/// assert_eq!(thenable::block_on(text).unwrap(), "fib(20) = 6765");
///
/// let failed: Promise<u64> = spawn_blocking(|| Err(Error::msg("disk on fire")));
/// assert_eq!(thenable::block_on(failed).unwrap_err().to_string(), "disk on fire");
///
/// let panicked: Promise<u64> = spawn_blocking(|| panic!("bug"));
/// assert!(thenable::block_on(panicked).unwrap_err().is_panic());
/// ```
pub fn spawn_blocking<T, E, F>(work: F) -> Promise<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let (promise, resolver) = Promise::pending();
    // Kept here to report a pool that cannot start a single thread; dropped at the
    // end of this function otherwise, leaving the job's copy as the only one.
    let refusal = resolver.clone();
    let job: Job = Box::new(move || {
        if resolver.is_done() {
            return; // cancelled while queued: nobody wants the result any more
        }
        let outcome = catch_unwind(AssertUnwindSafe(work))
            .unwrap_or_else(|payload| Err(E::from(Error::panic(payload))));
        resolver.settle(outcome);
    });
    if let Err(error) = POOL.submit(job) {
        refusal.reject(E::from(Error::new(error)));
    }
    promise
}

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<PoolState>,
    work_queued: Condvar,
}

struct PoolState {
    queue: VecDeque<Job>,
    /// Threads alive, idle or busy; never more than `MAX_BLOCKING_THREADS`.
    threads: usize,
    /// Threads waiting on `work_queued` (a notified thread counts until it wakes).
    idle: usize,
}

static POOL: Pool = Pool {
    state: Mutex::new(PoolState {
        queue: VecDeque::new(),
        threads: 0,
        idle: 0,
    }),
    work_queued: Condvar::new(),
};

impl Pool {
    /// Queues `job` and makes sure a thread will take it: an idle one if there are
    /// more idle threads than queued jobs, else a new one if the pool may grow, else
    /// the first busy thread to finish. Fails only when no pool thread exists and
    /// none can be started (the job is then dropped, not queued).
    fn submit(&'static self, job: Job) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.queue.push_back(job);
        if state.idle >= state.queue.len() {
            self.work_queued.notify_one();
            return Ok(());
        }
        if state.threads == MAX_BLOCKING_THREADS {
            return Ok(());
        }
        state.threads += 1;
        let started = std::thread::Builder::new()
            .name("thenable-blocking".into())
            .spawn(move || self.work());
        match started {
            Ok(_detached) => Ok(()),
            Err(error) => {
                state.threads -= 1;
                if state.threads > 0 {
                    return Ok(()); // a running thread will get to it
                }
                // With no thread at all, every earlier job was refused the same way,
                // so the job just queued is the only one.
                let refused = state.queue.pop_back();
                drop(state);
                drop(refused);
                Err(error)
            }
        }
    }

    /// A pool thread: runs queued jobs, exits after idling too long.
    fn work(&self) {
        let mut state = self.state.lock();
        loop {
            if let Some(job) = state.queue.pop_front() {
                drop(state);
                // Jobs catch their closure's panics themselves; this guard keeps
                // the thread count right should settling ever panic too.
                let _ = catch_unwind(AssertUnwindSafe(job));
                state = self.state.lock();
                continue;
            }
            state.idle += 1;
            let waited = self.work_queued.wait_for(&mut state, IDLE_THREAD_LIFETIME);
            state.idle -= 1;
            if waited.timed_out() && state.queue.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}
