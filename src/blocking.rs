//! Blocking work off the loop: [`spawn_blocking`] runs a closure on a small, bounded,
//! process-wide thread pool and settles a promise with its result on the loop that
//! asked (as libuv's thread pool does for Node.js, or asyncio's `run_in_executor`).
//!
//! This module owns the pool: its threads, its queue, its bound, and the wrapper
//! that turns a closure's result or panic into a settlement. It never blocks a loop
//! thread and never runs a handler: settling goes through a
//! [`Resolver`](crate::Resolver), which hands the reactions to the home loop and
//! wakes it. The loop tells it when a pool thread's loop waits
//! (`waiting_in_a_loop`), which does not count towards the bound.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::Error;
use crate::promise::Promise;

/// The most jobs [`spawn_blocking`] runs at once, for the whole process, not
/// counting those waiting in a loop of their own. More jobs wait in a queue, first
/// come, first served.
///
/// A job that waits in a loop ([`block_on`](crate::block_on) or
/// [`EventLoop::run`](crate::EventLoop::run) inside the job) gives its place to the
/// next queued job while its loop waits, since what it waits for may be more pool
/// work. When that wait ends, the job goes on at once, even if that puts the pool
/// over its bound (by one per wait that ended); until it is back within the bound,
/// no queued job starts, and the next thread that would take one exits instead.
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
/// `work` may wait for other pool work in a loop (`block_on(spawn_blocking(..))`):
/// while it waits, its place goes to the queue (see [`MAX_BLOCKING_THREADS`]), so
/// the work it waits for runs even when every pool thread waits so; the pool then
/// has one thread more per waiting job. A job that blocks any other way (on a
/// channel, a lock, another executor's `block_on`) keeps its place: with every
/// pool thread waiting so on queued jobs, they wait for ever, as in libuv's pool.
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
///
/// Twice as many jobs as the pool has threads, each waiting on one more:
///
/// ```
/// use thenable::{block_on, spawn_blocking, Error, Promise, MAX_BLOCKING_THREADS};
///
/// let jobs: Vec<Promise<usize>> = (0..2 * MAX_BLOCKING_THREADS)
///     .map(|i| spawn_blocking(move || block_on(spawn_blocking(move || Ok::<_, Error>(i * i)))))
///     .collect();
/// let squares = block_on(thenable::all(jobs)).unwrap();
/// assert_eq!(squares[MAX_BLOCKING_THREADS], MAX_BLOCKING_THREADS * MAX_BLOCKING_THREADS);
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

/// Runs `wait`, a loop's wait for I/O or a wake-up. On a pool thread, the job
/// calling it (through `block_on` or `run`) gives up its place in the pool's bound
/// meanwhile: it uses no CPU, and what it waits for may be more pool work, which
/// would otherwise wait for a place that none of the waiting jobs gives back.
pub(crate) fn waiting_in_a_loop(wait: impl FnOnce()) {
    if !ON_POOL_THREAD.get() {
        return wait();
    }
    struct Back;
    impl Drop for Back {
        fn drop(&mut self) {
            POOL.state.lock().waiting -= 1;
        }
    }
    POOL.start_waiting();
    let _back = Back;
    wait()
}

thread_local! {
    /// True on the pool's own threads, until they leave the pool (see
    /// [`waiting_in_a_loop`]).
    static ON_POOL_THREAD: Cell<bool> = const { Cell::new(false) };
}

struct Pool {
    state: Mutex<PoolState>,
    work_queued: Condvar,
}

/// The bound: `threads - waiting <= MAX_BLOCKING_THREADS` whenever a job starts.
/// Between starts it may be exceeded, by one thread per wait that ended: that
/// thread's job goes on at once, and the first thread of the pool to look for a
/// job while the pool is over its bound exits instead of taking one.
struct PoolState {
    queue: VecDeque<Job>,
    /// Threads alive: idle, running a job, or with a job waiting in a loop.
    threads: usize,
    /// Threads waiting on `work_queued` (a notified thread counts until it wakes).
    idle: usize,
    /// Threads whose job waits in a loop (see [`waiting_in_a_loop`]).
    waiting: usize,
}

static POOL: Pool = Pool {
    state: Mutex::new(PoolState {
        queue: VecDeque::new(),
        threads: 0,
        idle: 0,
        waiting: 0,
    }),
    work_queued: Condvar::new(),
};

impl PoolState {
    /// Threads that count towards the bound: all but those whose job waits in a
    /// loop. Idle ones count too: each takes the next job it is told of.
    fn counted(&self) -> usize {
        self.threads - self.waiting
    }
}

impl Pool {
    /// Queues `job` and makes sure a thread will take it: an idle one if there are
    /// more idle threads than queued jobs, else a new one if the bound allows it,
    /// else the first thread to finish a job or to wait in a loop. Fails only when
    /// no pool thread exists and none can be started (the job is then dropped, not
    /// queued).
    fn submit(&'static self, job: Job) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.queue.push_back(job);
        if state.idle >= state.queue.len() {
            self.work_queued.notify_one();
            return Ok(());
        }
        if state.counted() >= MAX_BLOCKING_THREADS {
            return Ok(());
        }
        match self.start_thread(&mut state) {
            Ok(()) => Ok(()),
            Err(_) if state.threads > 0 => Ok(()), // a thread alive will get to it
            Err(error) => {
                // With no thread at all, every earlier job was refused the same way,
                // so the job just queued is the only one.
                let refused = state.queue.pop_back();
                drop(state);
                drop(refused);
                Err(error)
            }
        }
    }

    /// A thread of the pool about to wait in a loop: its place goes to the queue,
    /// if a job there has no idle thread to take it.
    fn start_waiting(&'static self) {
        let mut state = self.state.lock();
        state.waiting += 1;
        if state.queue.len() > state.idle && state.counted() < MAX_BLOCKING_THREADS {
            // Refused, the jobs stay queued for the first thread that finishes a
            // job or comes back from its wait.
            let _ = self.start_thread(&mut state);
        }
    }

    fn start_thread(&'static self, state: &mut PoolState) -> std::io::Result<()> {
        state.threads += 1;
        let started = std::thread::Builder::new()
            .name("thenable-blocking".into())
            .spawn(move || self.work());
        if started.is_err() {
            state.threads -= 1;
        }
        started.map(drop)
    }

    /// A pool thread: runs queued jobs, exits after idling too long or when the
    /// pool is over its bound.
    fn work(&self) {
        ON_POOL_THREAD.set(true);
        self.take_jobs();
        // Left the pool (no longer in `threads`): what runs on this thread from
        // now on, its thread locals' destructors, may still wait in a loop, and
        // such a wait must free no place it does not hold.
        ON_POOL_THREAD.set(false);
    }

    fn take_jobs(&self) {
        let mut state = self.state.lock();
        loop {
            if !state.queue.is_empty() {
                if state.counted() > MAX_BLOCKING_THREADS {
                    // A job's wait in a loop ended since another thread took its
                    // place: one of the two goes. The job left for this thread (an
                    // idle one was told of it, perhaps this one) goes to another
                    // idle thread, or else to the next that finishes a job.
                    state.threads -= 1;
                    self.work_queued.notify_one();
                    return;
                }
                let job = state.queue.pop_front().expect("not empty");
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
