//! Time: limits on how long a promise may take ([`Promise::timeout`],
//! [`Promise::timeout_at`]), values that arrive later ([`delay`]) and ticks as a
//! stream ([`interval`]).
//!
//! Timers belong to the loop of the thread that sets them (as with
//! [`set_timeout`](crate::set_timeout)), so these functions are called on the loop's
//! thread, like the rest of the loop API.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream;
use parking_lot::Mutex;

use super::concurrency::cancelled;
use crate::event_loop::clear_timer_on_its_loop;
use crate::promise::{Observation, Settled};
use crate::timer::LONGEST_DELAY;
use crate::{clear_timer, set_interval, set_timeout, sleep, Error, Promise, TimerId};

/// The shortest interval period, as in Node.js: a zero period would fire on every
/// turn of the loop.
const SHORTEST_PERIOD: Duration = Duration::from_millis(1);

impl<T, E> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    /// This promise, limited to `limit`: if it has not settled by then, the result
    /// rejects with `E::from(Error::timed_out())` ([`Error::is_timeout`]) and this
    /// promise is cancelled, which releases the work behind it (its timer, its task)
    /// unless something else still consumes it. If it settles first, the result
    /// settles the same way and the timer is removed at once, so it keeps nothing
    /// alive.
    ///
    /// Cancelling the result cancels this promise and removes the timer.
    ///
    /// Limits: a zero `limit` still lets a promise that is already settled (or
    /// settles during the current round of microtasks) win, because timers run
    /// after microtasks. A limit of a century or more (`Duration::MAX` included)
    /// means no limit: the promise is returned as it is, with no timer.
    ///
    /// ```
    /// use std::time::Duration;
    /// use thenable::{sleep, EventLoop};
    ///
    /// let event_loop = EventLoop::new();
    /// let slow = sleep(Duration::from_secs(3600)).timeout(Duration::from_millis(5));
    /// assert!(event_loop.block_on(slow).unwrap_err().is_timeout());
    /// event_loop.run().unwrap(); // returns at once: the hour-long sleep was cancelled
    ///
    /// let quick = sleep(Duration::from_millis(1)).map(|()| "done").timeout(Duration::from_secs(60));
    /// assert_eq!(event_loop.block_on(quick).unwrap(), "done");
    /// event_loop.run().unwrap(); // returns at once: the 60 s limit's timer was removed
    /// ```
    pub fn timeout(self, limit: Duration) -> Promise<T, E> {
        self.limit_to(limit)
    }

    /// This promise, limited to settling before `deadline`: the same as
    /// [`timeout`](Promise::timeout) with the time left until `deadline` (zero if it
    /// has passed already).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use thenable::{block_on, sleep};
    ///
    /// let deadline = Instant::now() + Duration::from_millis(5);
    /// let first = sleep(Duration::from_secs(3600)).timeout_at(deadline);
    /// let second = sleep(Duration::from_secs(3600)).timeout_at(deadline);
    /// assert!(block_on(first).unwrap_err().is_timeout());
    /// assert!(block_on(second).unwrap_err().is_timeout()); // one deadline for both
    /// ```
    pub fn timeout_at(self, deadline: Instant) -> Promise<T, E> {
        self.limit_to(deadline.saturating_duration_since(Instant::now()))
    }

    fn limit_to(self, limit: Duration) -> Promise<T, E> {
        if limit >= LONGEST_DELAY {
            return self;
        }
        let (limited, resolver) = Promise::pending();
        // The observation of `self`, kept to withdraw it, which cancels `self`
        // unless something else consumes it.
        let watcher: Arc<Mutex<Option<Arc<dyn Observation>>>> = Arc::default();
        let timer = set_timeout(limit, {
            let resolver = resolver.clone();
            let watcher = watcher.clone();
            move || {
                resolver.reject(E::from(Error::timed_out()));
                cancel_watcher(&watcher);
            }
        });
        let on_settled = resolver.clone();
        // Watched rather than chained on: a quiet rejection (cancellation
        // travelling on) is passed on quietly, where a `catch` would have made
        // it a rejection of its own.
        let watching = self.watch(move |settled| {
            // Done when the timer fired or the result was cancelled: this is
            // then the observation's withdrawal.
            if on_settled.is_done() {
                return;
            }
            clear_timer_on_its_loop(timer);
            match settled {
                Settled::Fulfilled(value) => on_settled.resolve(value),
                Settled::Rejected(error) => on_settled.reject(error),
                Settled::Quiet(error) => on_settled.reject_quietly(error),
                // Cancelled by someone else: the result is cancelled too, as a
                // child of `self` would be.
                Settled::Cancelled => on_settled.resolve_with(cancelled()),
            };
        });
        *watcher.lock() = Some(watching);
        let watcher = Arc::downgrade(&watcher);
        resolver.on_cancel(move || {
            // Before clearing the timer, whose callback holds the last reference.
            if let Some(watcher) = watcher.upgrade() {
                cancel_watcher(&watcher);
            }
            clear_timer_on_its_loop(timer);
        });
        limited
    }
}

/// Withdraws the observation, if still there, with the lock released first (the
/// cancellation runs `on_cancel` and `finally` callbacks of other promises).
fn cancel_watcher(watcher: &Mutex<Option<Arc<dyn Observation>>>) {
    let watching = watcher.lock().take();
    if let Some(watching) = watching {
        watching.cancel();
    }
}

/// A promise fulfilled with `value` once `duration` has passed: a
/// [`sleep`](crate::sleep) that carries a value. It never rejects by itself (use
/// `.map_err(E::from)` for another error type). Cancelling it removes its timer,
/// so it keeps nothing alive.
///
/// A duration of a century or more (`Duration::MAX` included) is a timer that
/// never fires in practice: the promise stays pending and, like any pending timer,
/// keeps the loop alive until it is cancelled.
///
/// ```
/// use std::time::Duration;
/// use thenable::{block_on, delay};
///
/// assert_eq!(block_on(delay(Duration::from_millis(5), "later")).unwrap(), "later");
/// ```
pub fn delay<T: Send + 'static>(duration: Duration, value: T) -> Promise<T> {
    sleep(duration.min(LONGEST_DELAY)).map(move |()| value)
}

/// A stream of ticks, one every `period`, numbered from 1: the stream form of
/// [`set_interval`](crate::set_interval) (Node.js's `timers/promises` `setInterval`).
///
/// The timer starts at once. A tick is never lost: if the consumer falls behind
/// (awaiting something else while the loop runs), the ticks that fired meanwhile
/// are yielded back to back, so the numbers count every tick that fired. A loop
/// kept busy for several periods (a handler that blocks its thread) fires the
/// timer once for them, as [`set_interval`](crate::set_interval) and Node.js do:
/// the numbers then count fewer ticks than periods passed, and are no clock.
/// The stream never ends by itself; dropping it clears
/// its timer, which then no longer keeps the loop alive. A zero period is taken
/// as 1 ms (as Node.js does), and a period of a century or more never ticks.
///
/// Poll it from a task of a thenable loop (`spawn`, `block_on`): the ticks come
/// from that loop's timers.
///
/// ```
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use std::time::Duration;
/// use futures_core::Stream;
///
/// let ticks = thenable::block_on(async {
///     let mut ticks = thenable::interval(Duration::from_millis(1));
///     let mut seen = Vec::new();
///     while let Some(tick) = poll_fn(|cx| Pin::new(&mut ticks).poll_next(cx)).await {
///         seen.push(tick);
///         if tick == 3 {
///             break;
///         }
///     }
///     Ok::<_, thenable::Error>(seen)
/// });
/// assert_eq!(ticks.unwrap(), [1, 2, 3]);
/// ```
pub fn interval(period: Duration) -> Interval {
    let ticks = Arc::new(Mutex::new(Ticks::default()));
    let fired = ticks.clone();
    let timer = set_interval(period.clamp(SHORTEST_PERIOD, LONGEST_DELAY), move || {
        let mut ticks = fired.lock();
        if ticks.stream_dropped {
            // The stream was dropped before the job clearing this timer reached
            // its loop; clear it here, on its own loop.
            let timer = ticks.timer;
            drop(ticks);
            if let Some(timer) = timer {
                clear_timer(timer);
            }
            return;
        }
        ticks.fired += 1;
        let waker = ticks.waker.take();
        drop(ticks);
        if let Some(waker) = waker {
            waker.wake();
        }
    });
    ticks.lock().timer = Some(timer);
    Interval { ticks, timer }
}

/// The stream of ticks made by [`interval`]: yields 1, 2, 3, ... one per period,
/// never ends, and clears its timer when dropped.
///
/// ```
/// use std::future::poll_fn;
/// use std::pin::Pin;
/// use std::time::Duration;
/// use futures_core::Stream;
///
/// let first = thenable::block_on(async {
///     let mut ticks = thenable::interval(Duration::from_millis(2));
///     Ok::<_, thenable::Error>(poll_fn(|cx| Pin::new(&mut ticks).poll_next(cx)).await)
/// });
/// assert_eq!(first.unwrap(), Some(1));
/// ```
#[derive(Debug)]
#[must_use = "an interval does nothing unless polled, and dropping it stops the timer"]
pub struct Interval {
    ticks: Arc<Mutex<Ticks>>,
    timer: TimerId,
}

/// What the timer callback and the stream share.
#[derive(Debug, Default)]
struct Ticks {
    /// Periods that have passed.
    fired: u64,
    /// Ticks handed to the consumer.
    yielded: u64,
    waker: Option<Waker>,
    timer: Option<TimerId>,
    /// Set when the stream is dropped: a tick that fires before the timer is
    /// cleared (by a job sent to the timer's loop) clears it.
    stream_dropped: bool,
}

impl Stream for Interval {
    type Item = u64;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u64>> {
        let mut ticks = self.ticks.lock();
        if ticks.yielded < ticks.fired {
            ticks.yielded += 1;
            return Poll::Ready(Some(ticks.yielded));
        }
        if !matches!(&ticks.waker, Some(waker) if waker.will_wake(cx.waker())) {
            ticks.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

impl Drop for Interval {
    fn drop(&mut self) {
        // Should a tick fire before the timer's loop gets to clearing it (dropped
        // on another thread, the clearing is sent there), that tick clears it.
        self.ticks.lock().stream_dropped = true;
        // Its own loop, wherever it is: `clear_timer` would ask only the current
        // loop of this thread, and leave the timer keeping its loop alive until
        // the next tick, a period away.
        clear_timer_on_its_loop(self.timer);
    }
}
