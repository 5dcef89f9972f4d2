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

/// The open offers, by key, each with its ticket: the key is a node's address,
/// which a node made after the offered one was freed may have again, where a
/// ticket is never reused.
#[derive(Default)]
struct Table {
    offers: HashMap<usize, (u64, Claim)>,
    next_ticket: u64,
}

static OFFERS: Mutex<Option<Table>> = Mutex::new(None);
/// How many offers are open: a poll from another executor looks for offers
/// upstream of what it waits on only when there are some.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Offers `claim` for the node at address `key` (which the offer keeps alive,
/// so no other node takes the address while it is open). The ticket names this
/// offer for [`take_ticket`]: one who keeps only the key, and looks again after
/// the offer may have been taken (and the node freed), must not take an offer
/// made later for another node at the same address.
pub(crate) fn offer(key: usize, claim: Claim) -> u64 {
    let mut table = OFFERS.lock();
    let table = table.get_or_insert_with(Table::default);
    let ticket = table.next_ticket;
    table.next_ticket += 1;
    let previous = table.offers.insert(key, (ticket, claim));
    debug_assert!(previous.is_none(), "one offer per node");
    OPEN.fetch_add(1, Ordering::AcqRel);
    ticket
}

/// Takes the offer for the node at `key`, if still open: only one caller gets
/// it. The caller runs it (or drops it, to withdraw it) outside the lock. Only
/// for a caller that holds the node (or one that holds it): then no other node
/// can have its address.
pub(crate) fn take(key: usize) -> Option<Claim> {
    take_if(key, |_| true)
}

/// [`take`] the offer at `key` only if it is the one [`offer`] gave `ticket`.
pub(crate) fn take_ticket(key: usize, ticket: u64) -> Option<Claim> {
    take_if(key, |open| open == ticket)
}

fn take_if(key: usize, wanted: impl FnOnce(u64) -> bool) -> Option<Claim> {
    let claim = {
        let mut table = OFFERS.lock();
        let offers = &mut table.as_mut()?.offers;
        match offers.get(&key) {
            Some((ticket, _)) if wanted(*ticket) => offers.remove(&key)?.1,
            _ => return None,
        }
    };
    OPEN.fetch_sub(1, Ordering::AcqRel);
    Some(claim)
}

/// The ticket of the open offer at `key`, if any.
fn ticket_of(key: usize) -> Option<u64> {
    let table = OFFERS.lock();
    table.as_ref()?.offers.get(&key).map(|(ticket, _)| *ticket)
}

/// Withdraws the offer for the node at `key`, if still open: what it holds is
/// dropped here, outside the lock. (See [`take`] for who may.)
pub(crate) fn withdraw(key: usize) {
    drop(take(key));
}

/// For a poll from another executor, on a thread that runs no loop: queues on
/// this thread's loop (which that executor's polls turn) a job that takes the
/// offer open now at `key`, if it is still open then, and true if there was
/// one. The offer stays open meanwhile: if the executor never polls on this
/// thread again (it polled once and let go, it moved the future to another
/// thread, the thread ended), the job never runs, or is dropped unrun, and the
/// work is still there for its own loop or another taker.
pub(crate) fn take_on_this_thread_later(key: usize) -> bool {
    let Some(ticket) = ticket_of(key) else {
        return false;
    };
    super::context::with_current(|local| {
        local.push(super::Job::Call(Box::new(move || {
            if let Some(claim) = take_ticket(key, ticket) {
                claim(Taker::Other);
            }
        })));
    });
    true
}

/// True while some offer is open.
pub(crate) fn any() -> bool {
    OPEN.load(Ordering::Acquire) > 0
}

/// The key of the node at `node`: its address.
pub(crate) fn key_of<N: ?Sized>(node: &N) -> usize {
    (node as *const N).cast::<()>() as usize
}
