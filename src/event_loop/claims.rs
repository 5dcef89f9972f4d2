//! Work made on a thread that runs no loop, for that thread's default loop,
//! which a loop of another thread may take over when it waits on it: a task not
//! yet started (its future is `Send`), a sleep (a deadline).
//!
//! The default loop runs only while something on its thread waits on a
//! thenable promise, and may never run again: the thread may hand the promise
//! to another thread and park, or await it through another executor that moves
//! the waiting task to another thread. So each such piece of work is offered
//! here, keyed by its promise's node, beside its place in the default loop. The
//! first to take it runs it: the default loop, in order with its other work,
//! or a loop of another thread whose wait reaches the promise (the search of
//! `core::whose_work`), or a poll from another executor. This module only keeps
//! the offers; what taking one does is the offer's own closure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// Who takes an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taker {
    /// The default loop it was made for, at its place in that loop's order.
    Home,
    /// A loop of another thread (or of this one, while its default loop cannot
    /// run), or a poll from another executor, waiting on it.
    Other,
}

/// What taking an offer does.
pub(crate) type Claim = Box<dyn FnOnce(Taker) + Send>;

static OFFERS: Mutex<Option<HashMap<usize, Claim>>> = Mutex::new(None);
/// How many offers are open: a poll from another executor looks for offers
/// upstream of what it waits on only when there are some.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Offers `claim` for the node at address `key` (which the offer keeps alive,
/// so no other node takes the address while it is open).
pub(crate) fn offer(key: usize, claim: Claim) {
    let previous = OFFERS
        .lock()
        .get_or_insert_with(HashMap::new)
        .insert(key, claim);
    debug_assert!(previous.is_none(), "one offer per node");
    OPEN.fetch_add(1, Ordering::AcqRel);
}

/// Takes the offer for the node at `key`, if still open: only one caller gets
/// it. The caller runs it (or drops it, to withdraw it) outside the lock.
pub(crate) fn take(key: usize) -> Option<Claim> {
    let claim = OFFERS.lock().as_mut()?.remove(&key)?;
    OPEN.fetch_sub(1, Ordering::AcqRel);
    Some(claim)
}

/// Withdraws the offer for the node at `key`, if still open: what it holds is
/// dropped here, outside the lock.
pub(crate) fn withdraw(key: usize) {
    drop(take(key));
}

/// True while some offer is open.
pub(crate) fn any() -> bool {
    OPEN.load(Ordering::Acquire) > 0
}

/// The key of the node at `node`: its address.
pub(crate) fn key_of<N: ?Sized>(node: &N) -> usize {
    (node as *const N).cast::<()>() as usize
}
