//! `shield`: a promise that follows another, but whose cancellation stops there.
//!
//! The shielded promise watches its input through one link ([`Promise::watch`])
//! that nobody can reach, so the input always keeps one consumer that never cancels:
//! cancellation coming from the shield's consumers ends at the shield (asyncio's
//! `shield`).

use super::collect::{outcome, report_lost};
use crate::error::Error;
use crate::promise::{internal, Promise};

/// A promise that settles as `promise` does, but whose cancellation does not travel
/// upstream to `promise` (asyncio's `shield`): cancelling it, or everything that
/// consumes it (a [`race`](crate::race) it lost, a cancelled task awaiting it),
/// leaves `promise` and the work behind it running.
///
/// Only the shield's own consumers are held off: cancelling `promise` itself
/// (through a clone of it) still stops it, and the shielded promise then rejects
/// with an error for which [`Error::is_cancelled`] holds.
///
/// If the shielded promise was cancelled, a later rejection of `promise` reaches
/// none of its consumers, and is reported as an unhandled one (asyncio's
/// "exception was never retrieved").
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use thenable::{shield, sleep, EventLoop};
///
/// let event_loop = EventLoop::new();
/// let saved = Arc::new(AtomicBool::new(false));
/// let flag = saved.clone();
/// let save = sleep(Duration::from_millis(5)).map(move |()| flag.store(true, Ordering::SeqCst));
///
/// let shielded = shield(save);
/// assert!(shielded.cancel()); // the consumer gives up...
/// event_loop.run().unwrap();
/// assert!(saved.load(Ordering::SeqCst)); // ...but the save still happened
/// ```
pub fn shield<T, E>(promise: Promise<T, E>) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let (shielded, settler) = internal::<T, E>();
    // The link is let go on purpose: nobody can cancel it, so `promise` keeps a
    // consumer that never cancels, and cancellation stops at `shielded`.
    drop(promise.watch(move |settled| {
        let (outcome, quiet) = outcome(settled);
        // `shielded` was cancelled first: the rejection this link took in reaches
        // nobody, and is reported as an unhandled one of its own (asyncio's
        // "exception was never retrieved"). Quiet ones are cancellation travelling
        // on; `report_lost` leaves those alone.
        if let Some(Err(error)) = settler.settle_or_give_back(outcome, quiet) {
            report_lost(error, quiet);
        }
    }));
    shielded
}

impl<T, E> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    /// [`shield`] as a method: `promise.shield()`.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let (inner, resolver) = Promise::<i32>::pending();
    /// let outer = inner.shield();
    /// outer.cancel();
    /// assert!(outer.is_cancelled());
    /// assert!(resolver.resolve(1)); // the inner promise was not cancelled
    /// ```
    pub fn shield(self) -> Promise<T, E> {
        shield(self)
    }
}
