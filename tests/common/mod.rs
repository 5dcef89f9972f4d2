//! Helpers shared by the integration tests: a watchdog that turns a hang into a
//! failure, counters and logs that handlers (which must be `Send`) can write to,
//! and timer-driven work that shows whether it was cancelled.
//!
//! Each test file includes this with `mod common;`; `net` holds what the socket
//! tests share, `child` the harness of tests that run a child process.

// Every test binary compiles the whole module but uses only part of it.
#![allow(dead_code)]

#[cfg(unix)]
pub mod net;

pub mod child;

use std::panic;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::Duration;

use thenable::{sleep, spawn, Error, Promise};

/// A delay no test may ever wait for: work that sleeps this long must be
/// cancelled, or `EventLoop::run` would not return and [`within`] would fail.
pub const HOUR: Duration = Duration::from_secs(3600);

/// How long [`within`] lets a test body run before it counts as hung. A safety net
/// only: passing bodies take milliseconds.
pub const HANG_LIMIT: Duration = Duration::from_secs(30);

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs `f` on a fresh thread (so it starts with no loop of its own and the
/// default unhandled-rejection hook) and returns what it returns; fails the test
/// if `f` panics, or if it is still running after [`HANG_LIMIT`] (something kept
/// a loop alive). Panics that carry [`MARK`] are kept off stderr.
pub fn within<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    within_for(HANG_LIMIT, f)
}

/// [`within`], on a thread with a 256 KiB stack (an eighth of a default
/// thread's): work that recursed per link, input or level would overflow it.
pub fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    within(|| {
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// [`within`] with a time limit of the caller's choosing.
pub fn within_for<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    quiet_expected_panics();
    let (done, finished) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = done.send(f());
    });
    match finished.recv_timeout(limit) {
        Ok(value) => {
            // Joined so that the thread's locals (its loop among them) are gone
            // too before the caller goes on, e.g. to count open descriptors.
            if let Err(payload) = worker.join() {
                panic::resume_unwind(payload);
            }
            value
        }
        // `f` panicked and dropped the sender: fail with its own panic.
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(payload) => panic::resume_unwind(payload),
            Ok(()) => unreachable!("the worker sends before it returns"),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("still running after {limit:?}: something kept the loop alive")
        }
    }
}

/// Text to put in the message of a panic a test provokes on purpose: from the
/// first [`within`] on, the panic hook stays quiet for those (and only those).
pub const MARK: &str = "[expected test panic]";

/// Keeps panics whose message contains [`MARK`] off stderr, for the rest of the
/// process; every other panic is reported as usual.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !text.contains(MARK) {
                default(info);
            }
        }));
    });
}

/// Counts events (a handler ran, a hook fired, a future was dropped); clones share
/// the count. The atomic is public for tests that also take one off or keep a
/// maximum (work in flight, and the most ever in flight).
#[derive(Clone, Default)]
pub struct Counter(pub Arc<AtomicUsize>);

impl Counter {
    /// Counts one event.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one event and returns the count including it: 1 for the first.
    pub fn bump_and_get(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The events counted so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Bumps its counter when dropped: moved into a task, it tells that the task's
/// future was dropped.
pub struct DropCounter(pub Counter);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.bump();
    }
}

/// An ordered record of events; clones push to the same list.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Records `event` after those recorded so far.
    pub fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }

    /// The events recorded so far, in order.
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// `value` after `delay`; `fired` is bumped when the timer's handler runs, which
/// cannot happen if the promise was cancelled.
pub fn after<T: Send + 'static>(delay: Duration, value: T, fired: &Counter) -> Promise<T> {
    let fired = fired.clone();
    sleep(delay).map(move |()| {
        fired.bump();
        value
    })
}

/// A rejection with `message` after `delay`.
pub fn fail_after<T: Send + 'static>(delay: Duration, message: &'static str) -> Promise<T> {
    sleep(delay).then(move |()| Err(Error::msg(message)))
}

/// A task that would bump `finished` after an [`HOUR`] and fulfil with 1;
/// `dropped` counts its future being dropped.
pub fn hour_long_task<E: From<Error> + Send + 'static>(
    finished: &Counter,
    dropped: &Counter,
) -> Promise<i32, E> {
    let (finished, guard) = (finished.clone(), DropCounter(dropped.clone()));
    spawn(async move {
        let _guard = guard;
        sleep(HOUR).await.map_err(E::from)?;
        finished.bump();
        Ok(1)
    })
}

/// Every thread of the blocking pool, each held by a job that waits for its
/// go-ahead. Fill the pool only in a process of its own (a test binary or a child
/// process): tests sharing it would be starved.
pub struct FullPool {
    jobs: Vec<Promise<()>>,
    go_aheads: Vec<mpsc::Sender<()>>,
}

impl FullPool {
    /// Returns once every pool thread runs one of the jobs; a job that waits
    /// longer than `safety_net` for its go-ahead fails.
    pub fn fill(safety_net: Duration) -> FullPool {
        let (started, all_started) = mpsc::channel::<()>();
        let mut go_aheads = Vec::new();
        let jobs = (0..thenable::MAX_BLOCKING_THREADS)
            .map(|_| {
                let started = started.clone();
                let (go_ahead, wait) = mpsc::channel::<()>();
                go_aheads.push(go_ahead);
                thenable::spawn_blocking(move || {
                    started.send(()).unwrap();
                    wait.recv_timeout(safety_net)
                        .map_err(|_| Error::msg("never told to go ahead"))
                })
            })
            .collect();
        for _ in 0..thenable::MAX_BLOCKING_THREADS {
            all_started
                .recv_timeout(safety_net)
                .expect("the pool did not run MAX_BLOCKING_THREADS jobs at once");
        }
        FullPool { jobs, go_aheads }
    }

    /// Lets every job finish, and waits until they have.
    pub fn release(self) {
        for go_ahead in self.go_aheads {
            go_ahead.send(()).unwrap();
        }
        for job in self.jobs {
            thenable::block_on(job).unwrap();
        }
    }
}

/// Runs `event_loop` while another thread cancels each odd promise of `requests`
/// as soon as the one before it has settled: just when the loop is about to hand
/// it the next outcome (the race of `as_completed`'s and `stdin_lines`' settlers
/// with cancellation). The even ones are never cancelled, so they settle in the
/// end. Gives the promises back, in order, with whether each was cancelled (one
/// cancelled too late kept its outcome).
pub fn run_cancelling_odd_ones_as_served<T: Send + 'static>(
    event_loop: &thenable::EventLoop,
    requests: Vec<Promise<T>>,
) -> Vec<(Promise<T>, bool)> {
    let start = Arc::new(std::sync::Barrier::new(2));
    let go = start.clone();
    let canceller = std::thread::spawn(move || {
        go.wait();
        let cancelled: Vec<bool> = (0..requests.len())
            .map(|i| {
                if i % 2 == 0 {
                    return false;
                }
                while requests[i - 1].is_pending() {
                    std::hint::spin_loop();
                }
                requests[i].cancel()
            })
            .collect();
        requests.into_iter().zip(cancelled).collect()
    });
    start.wait();
    event_loop.run().unwrap();
    canceller.join().unwrap()
}
