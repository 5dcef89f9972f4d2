//! Concurrency control: [`map_concurrent`] (at most `limit` calls in flight),
//! [`map_series`] (one at a time) and [`retry`] with a [`Backoff`].
//!
//! Each runs as one task of the current thread's loop that starts the work and
//! waits on the promises it gets back, so cancelling the returned promise drops
//! the task, and the task cancels whatever it still waits on.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;

use super::time::delay;
use crate::event_loop::spawn_passing_on;
use crate::promise::Settled;
use crate::{Error, Promise};

/// Calls `f` on every item with at most `limit` of the returned promises pending
/// at any time (bluebird's `Promise.map` with `concurrency`), and fulfils with
/// their values in input order.
///
/// Items are taken from the iterator only when a slot is free, in order, so an
/// endless or lazy iterator is fine. The first rejection rejects the result at
/// once: the promises still in flight are cancelled and no further item is
/// taken. Cancelling the result does the same. Nothing is called before the
/// function returns: the work starts on the loop, in a task.
///
/// An empty input fulfils with an empty `Vec`. A `limit` of 0 could never start
/// anything: the result rejects with an [`Error::msg`] saying so, without taking
/// any item.
///
/// A panic in `f` rejects the result with a panic error ([`Error::is_panic`]).
///
/// ```
/// use std::time::Duration;
/// use thenable::{block_on, delay, map_concurrent, Promise};
///
/// let lengths = map_concurrent(["a", "bbb", "cc"], 2, |word| -> Promise<usize> {
///     // the longest word takes the longest: results still come back in input order
///     delay(Duration::from_millis(word.len() as u64), word.len())
/// });
/// assert_eq!(block_on(lengths).unwrap(), [1, 3, 2]);
///
/// let none = map_concurrent(1..=3, 0, |n| Promise::<i32>::resolved(n));
/// assert!(block_on(none).unwrap_err().to_string().contains("limit"));
/// ```
pub fn map_concurrent<I, F, U, E>(items: I, limit: usize, f: F) -> Promise<Vec<U>, E>
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    F: FnMut(I::Item) -> Promise<U, E> + Send + 'static,
    U: Send + 'static,
    E: From<Error> + Send + 'static,
{
    if limit == 0 {
        return Promise::rejected(E::from(Error::msg(
            "map_concurrent: the limit must be at least 1 (with 0, nothing could ever start)",
        )));
    }
    spawn_passing_on(MapConcurrent {
        items: Some(items.into_iter()),
        f,
        limit,
        results: Vec::new(),
        in_flight: BTreeMap::new(),
        finished: Arc::default(),
    })
}

/// Calls `f` on one item at a time, starting the next once the previous promise
/// has fulfilled, and fulfils with the values in input order (bluebird's
/// `Promise.mapSeries`). The first rejection stops there: later items are never
/// taken. It is [`map_concurrent`] with a limit of 1.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use thenable::{block_on, map_series, Promise};
///
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let seen = log.clone();
/// let doubled = map_series(vec![1, 2, 3], move |n| {
///     seen.lock().unwrap().push(n);
///     Promise::<i32>::resolved(n * 2)
/// });
/// assert_eq!(block_on(doubled).unwrap(), [2, 4, 6]);
/// assert_eq!(*log.lock().unwrap(), [1, 2, 3]);
/// ```
pub fn map_series<I, F, U, E>(items: I, f: F) -> Promise<Vec<U>, E>
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    F: FnMut(I::Item) -> Promise<U, E> + Send + 'static,
    U: Send + 'static,
    E: From<Error> + Send + 'static,
{
    map_concurrent(items, 1, f)
}

/// How the started promises ended, by item index, in the order they settled.
type Finished<U, E> = Arc<Mutex<Vec<(usize, Settled<U, E>)>>>;

/// The task behind [`map_concurrent`].
///
/// Each started promise gets a watcher ([`Promise::watched_by`]) that records how
/// it ended in `finished`, and the task is registered as the watcher's waiter by
/// polling it once. A watcher settles right after recording, which wakes the task,
/// and the task then reads `finished`: each wake costs the outcomes it brings, not
/// a poll of every promise in flight. Waiting on our own promises (rather than
/// storing a waker) also keeps the loop's deadlock detection working. A promise
/// cancelled elsewhere, or rejected quietly, is cancellation travelling on: the
/// result rejects quietly too (see `core::Input::Quiet`).
struct MapConcurrent<Items, F, U, E> {
    /// `None` once exhausted (or after a failure: no more items are taken).
    items: Option<Items>,
    f: F,
    limit: usize,
    /// One slot per item taken, filled as they fulfil.
    results: Vec<Option<U>>,
    /// The watchers of the promises still pending, by item index, to cancel them
    /// in input order (as `all` cancels its inputs: their hooks run in an order
    /// that is the same on every run).
    in_flight: BTreeMap<usize, Promise<(), E>>,
    finished: Finished<U, E>,
}

// No field is ever pinned: the struct only holds data and handles, which are
// moved freely.
impl<Items, F, U, E> Unpin for MapConcurrent<Items, F, U, E> {}

impl<Items, F, U, E> MapConcurrent<Items, F, U, E>
where
    Items: Iterator,
    F: FnMut(Items::Item) -> Promise<U, E>,
    U: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn start(&mut self, item: Items::Item, cx: &mut Context<'_>) {
        let index = self.results.len();
        self.results.push(None);
        let finished = self.finished.clone();
        let mut watcher =
            (self.f)(item).watched_by(move |settled| finished.lock().push((index, settled)));
        // Handlers never run inline, so this is pending: it registers the task.
        if Pin::new(&mut watcher).poll(cx).is_pending() {
            self.in_flight.insert(index, watcher);
        }
    }

    fn cancel_in_flight(&mut self) {
        self.items = None;
        for watcher in std::mem::take(&mut self.in_flight).into_values() {
            watcher.cancel();
        }
    }
}

impl<Items, F, U, E> Future for MapConcurrent<Items, F, U, E>
where
    Items: Iterator,
    F: FnMut(Items::Item) -> Promise<U, E>,
    U: Send + 'static,
    E: From<Error> + Send + 'static,
{
    type Output = Settled<Vec<U>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let finished = std::mem::take(&mut *this.finished.lock());
        for (index, settled) in finished {
            this.in_flight.remove(&index);
            match value(settled) {
                Ok(value) => this.results[index] = Some(value),
                // An item cancelled elsewhere counts as a rejection, as an input
                // cancelled elsewhere does for `all`.
                Err(failure) => {
                    this.cancel_in_flight();
                    return Poll::Ready(failure);
                }
            }
        }
        while this.in_flight.len() < this.limit {
            match this.items.as_mut().and_then(Iterator::next) {
                Some(item) => this.start(item, cx),
                None => {
                    this.items = None;
                    break;
                }
            }
        }
        if this.items.is_none() && this.in_flight.is_empty() {
            let values = std::mem::take(&mut this.results).into_iter().collect();
            let values: Option<Vec<U>> = values;
            return Poll::Ready(Settled::Fulfilled(
                values.expect("every item taken has fulfilled"),
            ));
        }
        Poll::Pending
    }
}

impl<Items, F, U, E> Drop for MapConcurrent<Items, F, U, E> {
    fn drop(&mut self) {
        // The task was dropped (its promise cancelled, or the loop dropped): the
        // work it started is no longer wanted.
        for watcher in std::mem::take(&mut self.in_flight).into_values() {
            watcher.cancel();
        }
    }
}

/// How long [`retry`] waits between attempts: `initial` after the first failure,
/// then `factor` times longer after each further failure, never more than `max`
/// (exponential backoff).
///
/// The pause after failed attempt `n` (counting from 1) is
/// `min(initial × factor^(n-1), max)`. A factor below 1 makes the pauses shrink; a
/// factor that is NaN or negative is taken as 1 (constant pauses). A `Backoff` is
/// also an endless iterator of those pauses (`into_iter`), which is what
/// [`retry`] takes: any other iterator of `Duration`s works too.
///
/// ```
/// use std::time::Duration;
/// use thenable::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_millis(500));
/// let pauses: Vec<Duration> = backoff.into_iter().take(5).collect();
/// let millis: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
/// assert_eq!(millis, [100, 200, 400, 500, 500]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The pause after the first failed attempt.
    pub initial: Duration,
    /// How much longer each further pause is than the one before.
    pub factor: f64,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// A backoff starting at `initial`, multiplied by `factor` after each failure,
    /// capped at `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let backoff = thenable::Backoff::new(Duration::from_millis(10), 3.0, Duration::from_secs(1));
    /// assert_eq!(backoff.delay_after_attempt(2), Duration::from_millis(30));
    /// ```
    pub const fn new(initial: Duration, factor: f64, max: Duration) -> Backoff {
        Backoff {
            initial,
            factor,
            max,
        }
    }

    /// The pause after failed attempt `attempt` (counting from 1; 0 counts as 1):
    /// `min(initial × factor^(attempt-1), max)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use thenable::Backoff;
    ///
    /// let backoff = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(60));
    /// assert_eq!(backoff.delay_after_attempt(1), Duration::from_secs(1));
    /// assert_eq!(backoff.delay_after_attempt(4), Duration::from_secs(8));
    /// assert_eq!(backoff.delay_after_attempt(1000), Duration::from_secs(60)); // capped
    /// ```
    pub fn delay_after_attempt(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        if exponent == 0 || self.initial.is_zero() {
            return self.initial.min(self.max);
        }
        let factor = if self.factor.is_nan() || self.factor < 0.0 {
            1.0
        } else {
            self.factor
        };
        let scaled =
            self.initial.as_secs_f64() * factor.powi(i32::try_from(exponent).unwrap_or(i32::MAX));
        // Too large to be a Duration (infinite included) is more than `max`.
        Duration::try_from_secs_f64(scaled).map_or(self.max, |pause| pause.min(self.max))
    }
}

/// 100 ms, doubling, at most 10 s.
///
/// ```
/// use std::time::Duration;
/// let backoff = thenable::Backoff::default();
/// assert_eq!(backoff.delay_after_attempt(2), Duration::from_millis(200));
/// ```
impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10))
    }
}

/// The endless sequence of a [`Backoff`]'s pauses, one per failed attempt.
///
/// ```
/// use std::time::Duration;
/// let mut pauses = thenable::Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(3)).into_iter();
/// assert_eq!(pauses.next(), Some(Duration::from_secs(1)));
/// assert_eq!(pauses.next(), Some(Duration::from_secs(2)));
/// assert_eq!(pauses.next(), Some(Duration::from_secs(3)));
/// ```
#[derive(Clone, Debug)]
pub struct BackoffDelays {
    backoff: Backoff,
    failed_attempts: u32,
}

impl Iterator for BackoffDelays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        Some(self.backoff.delay_after_attempt(self.failed_attempts))
    }
}

impl IntoIterator for Backoff {
    type Item = Duration;
    type IntoIter = BackoffDelays;

    fn into_iter(self) -> BackoffDelays {
        BackoffDelays {
            backoff: self,
            failed_attempts: 0,
        }
    }
}

/// Calls `attempt` until its promise fulfils, at most `attempts` times, pausing
/// between tries for the next duration of `backoff` (usually a [`Backoff`]; any
/// iterator of `Duration`s will do). Fulfils with the first value; rejects with
/// the error of the last attempt once `attempts` have failed, or earlier if
/// `backoff` runs out of pauses.
///
/// The first call happens on the loop, in a task, not inside `retry`. Cancelling
/// the result cancels the attempt in flight (or the pause) and makes no further
/// attempt. `attempts == 0` rejects at once with an [`Error::msg`] saying so,
/// without calling `attempt`. A panic in `attempt` is a bug, not a transient
/// failure: it ends the retries with a panic error ([`Error::is_panic`]). An
/// attempt whose promise is cancelled elsewhere counts as a failed one (as an
/// input cancelled elsewhere counts as a rejection for [`all`](crate::all)): it
/// is retried, and the last one's cancellation is passed on, quietly.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use thenable::{block_on, retry, Backoff, Error, Promise};
///
/// let calls = Arc::new(AtomicU32::new(0));
/// let counter = calls.clone();
/// let flaky = retry(5, Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(10)), move || {
///     match counter.fetch_add(1, Ordering::SeqCst) + 1 {
///         n if n < 3 => Promise::rejected(Error::msg(format!("attempt {n} failed"))),
///         n => Promise::resolved(n),
///     }
/// });
/// assert_eq!(block_on(flaky).unwrap(), 3);
///
/// let hopeless = retry(2, [Duration::ZERO], || Promise::<()>::rejected(Error::msg("down")));
/// assert_eq!(block_on(hopeless).unwrap_err().to_string(), "down");
/// ```
pub fn retry<T, E, F, B>(attempts: usize, backoff: B, mut attempt: F) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    F: FnMut() -> Promise<T, E> + Send + 'static,
    B: IntoIterator<Item = Duration>,
    B::IntoIter: Send + 'static,
{
    if attempts == 0 {
        return Promise::rejected(E::from(Error::msg(
            "retry: attempts must be at least 1 (with 0, nothing would be tried)",
        )));
    }
    let mut pauses = backoff.into_iter();
    // The attempts' ends are passed on as they are: a last attempt cancelled
    // elsewhere, or rejected quietly, rejects the result quietly.
    spawn_passing_on(async move {
        let mut made = 0;
        loop {
            made += 1;
            let failure = match value(CancelOnDrop::new(attempt()).await) {
                Ok(value) => return Settled::Fulfilled(value),
                Err(failure) => failure,
            };
            if made == attempts {
                return failure;
            }
            let Some(pause) = pauses.next() else {
                return failure;
            };
            drop(failure);
            if let Err(failure) = value(CancelOnDrop::new(delay(pause, ()).map_err(E::from)).await)
            {
                return failure;
            }
        }
    })
}

/// The value, or the failure as the end of a promise of another type, to pass
/// on as it is (a quiet rejection or a cancellation staying what it was).
fn value<T, U, E>(settled: Settled<T, E>) -> Result<T, Settled<U, E>> {
    match settled {
        Settled::Fulfilled(value) => Ok(value),
        Settled::Rejected(error) => Err(Settled::Rejected(error)),
        Settled::Quiet(error) => Err(Settled::Quiet(error)),
        Settled::Cancelled => Err(Settled::Cancelled),
    }
}

/// Awaits a promise and cancels it if dropped before it settled, so that a task
/// dropped mid-wait (its own promise was cancelled) releases what it waited on.
pub(super) struct CancelOnDrop<T, E> {
    /// `None` once the promise has given its outcome.
    promise: Option<Promise<T, E>>,
}

impl<T, E> CancelOnDrop<T, E> {
    pub(super) fn new(promise: Promise<T, E>) -> Self {
        CancelOnDrop {
            promise: Some(promise),
        }
    }
}

/// Gives how the promise ended, a quiet rejection or a cancellation included,
/// for the task to pass on.
impl<T: Send + 'static, E: From<Error> + Send + 'static> Future for CancelOnDrop<T, E> {
    type Output = Settled<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Settled<T, E>> {
        let promise = self
            .promise
            .as_mut()
            .expect("CancelOnDrop polled after it completed");
        let outcome = promise.poll_settled(cx);
        if outcome.is_ready() {
            self.promise = None;
        }
        outcome
    }
}

impl<T, E> Drop for CancelOnDrop<T, E> {
    fn drop(&mut self) {
        if let Some(promise) = self.promise.take() {
            // Withdraws this consumer: the promise is cancelled only if nobody
            // else consumes it (a clone the attempt also handed elsewhere).
            crate::promise::core::run_cancellation(|| drop(promise));
        }
    }
}

/// A promise already cancelled. Following it is how a resolver cancels its own
/// promise: `resolver.resolve_with(cancelled())` (adoption passes cancellation on).
pub(super) fn cancelled<T, E>() -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let (promise, _resolver) = Promise::pending();
    promise.cancel();
    promise
}
