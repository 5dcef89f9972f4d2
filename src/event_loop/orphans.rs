//! Process-wide state: every live loop, and promise reactions whose home loop
//! nobody is driving ("orphans").
//!
//! A `Resolver` settled on a thread that runs no loop sends its reactions to its
//! home loop. When no thread drives that loop (its thread awaits through another
//! executor, say, or has not called `block_on` yet), the reactions come here
//! instead, and whoever waits next runs them: any loop at the start of its turn, or
//! any promise polled by a foreign executor. Reactions are `Send`, so this is sound;
//! only the thread they run on changes. This module never runs a reaction itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;

use parking_lot::Mutex;

use super::local::Shared;
use crate::promise::core::{Graph, Runnable};

static LOOPS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
/// A reaction, with the loop it was meant for, if any: that loop takes it first.
type Orphan = (Option<Weak<Shared>>, Arc<dyn Runnable>);

static ORPHANS: Mutex<VecDeque<Orphan>> = Mutex::new(VecDeque::new());
static HAS_ORPHANS: AtomicBool = AtomicBool::new(false);
/// Orphans pushed and not yet run to the end of the drain that took them. A
/// `block_on` that sees no undriven resolver left must still wait while this is not
/// zero: the resolver's settlement may be a reaction being run by another loop right
/// now, about to wake it.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Wakers of futures polled outside any running loop, woken when work appears that
/// such a poll would run.
static FOREIGN_POLLERS: Mutex<ForeignPollers> = Mutex::new(ForeignPollers {
    pollers: Vec::new(),
    prune_at: PRUNE_AT_LEAST,
});

/// See [`FOREIGN_POLLERS`] and [`add_foreign_poller`].
struct ForeignPollers {
    /// Each poller's waker, with the promise it last asked for while waiting
    /// on it.
    pollers: Vec<(Waker, Weak<dyn Graph>)>,
    /// The length past which the list is pruned before it grows.
    prune_at: usize,
}

/// The shortest list of foreign pollers that is pruned.
const PRUNE_AT_LEAST: usize = 64;

pub(crate) fn register(shared: &Arc<Shared>) {
    let mut loops = LOOPS.lock();
    loops.retain(|l| l.strong_count() > 0);
    loops.push(Arc::downgrade(shared));
}

/// The live loop whose id is `id`, on whatever thread.
pub(crate) fn find(id: u64) -> Option<Arc<Shared>> {
    LOOPS
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .find(|shared| shared.id == id)
}

/// Wakes every loop that is being driven, so that a `block_on` re-checks whether
/// its future can still complete.
pub(crate) fn notify_driven_loops() {
    let loops: Vec<Arc<Shared>> = LOOPS.lock().iter().filter_map(Weak::upgrade).collect();
    for shared in loops {
        if shared.is_driven() {
            shared.notify();
        }
    }
}

/// True if a loop nobody drives has live resolvers: their reactions would become
/// orphans that a waiting loop runs, so waiting is not a deadlock. A loop that is
/// gone does not count: its resolvers' reactions become orphans too, but a wait
/// on one of its promises is seen by the wait's own search (a live resolver of a
/// loop not of this thread is another loop's work), and nothing else waits on
/// them.
pub(crate) fn undriven_resolvers_exist() -> bool {
    LOOPS
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .any(|shared| !shared.is_driven() && !shared.is_closed() && shared.is_kept_alive())
}

/// Adds a reaction nobody would run otherwise; `home` is the loop it was meant for.
pub(crate) fn push(job: Arc<dyn Runnable>, home: Option<&Arc<Shared>>) {
    enqueue(std::iter::once(job), home);
    announce();
}

/// Adds reactions meant for `home`, in order, without the wake-ups that tell
/// waiters (see [`announce`]): for a caller that holds a lock no waker may
/// meet, and wakes them once it let go of it.
pub(crate) fn enqueue(
    jobs: impl IntoIterator<Item = Arc<dyn Runnable>>,
    home: Option<&Arc<Shared>>,
) {
    let home = home.map(Arc::downgrade);
    let mut orphans = ORPHANS.lock();
    let before = orphans.len();
    orphans.extend(jobs.into_iter().map(|job| (home.clone(), job)));
    let added = orphans.len() - before;
    if added > 0 {
        IN_FLIGHT.fetch_add(added, Ordering::AcqRel);
        HAS_ORPHANS.store(true, Ordering::Release);
    }
}

/// Wakes whoever may run an orphan [`enqueue`] added: foreign pollers, and the
/// loops being driven.
pub(crate) fn announce() {
    wake_foreign_pollers();
    notify_driven_loops();
}

/// Takes orphan reactions, in the order they were settled: those meant for `own`
/// (or for no loop, or for a loop that is gone), or, with `everything`, all of them.
///
/// A loop that is busy leaves other loops' orphans alone: their loop may be about
/// to run (a thread on its way into `block_on`), and they should run there. A loop
/// with nothing else to do, and a poll from another executor, take everything.
pub(crate) fn take(own: &Arc<Shared>, everything: bool) -> Option<VecDeque<Arc<dyn Runnable>>> {
    if !HAS_ORPHANS.load(Ordering::Acquire) {
        return None;
    }
    let mut orphans = ORPHANS.lock();
    let mut taken = VecDeque::new();
    let mut left = VecDeque::new();
    for (home, job) in std::mem::take(&mut *orphans) {
        let mine = everything
            || home.as_ref().is_none_or(|home| match home.upgrade() {
                Some(home) => Arc::ptr_eq(&home, own) || home.is_closed(),
                None => true,
            });
        if mine {
            taken.push_back(job);
        } else {
            left.push_back((home, job));
        }
    }
    *orphans = left;
    if orphans.is_empty() {
        HAS_ORPHANS.store(false, Ordering::Release);
    }
    (!taken.is_empty()).then_some(taken)
}

/// True while some orphan reaction has not yet been run (see [`IN_FLIGHT`]).
pub(crate) fn in_flight() -> bool {
    IN_FLIGHT.load(Ordering::Acquire) > 0
}

/// `count` orphans taken earlier have run (or were abandoned). When the last one
/// is done, waiting loops re-check whether their futures can still complete.
pub(crate) fn finished(count: usize) {
    if IN_FLIGHT.fetch_sub(count, Ordering::AcqRel) == count {
        notify_driven_loops();
    }
}

/// Asks for `waker` to be woken when work appears that a poll from another
/// executor would run, for `home`, the loop such a poll drives: work injected
/// into it, or an orphan. `waits_on` is the pending promise the poll waits on.
///
/// The poll turned `home` before it asks, and work that arrived in between found
/// no loop driven and no waker to wake: that is checked here, under the lock that
/// [`wake_foreign_pollers`] takes, and wakes `waker` at once.
///
/// Nothing tells a waker of another executor's task that ended from one still
/// waiting, and each task that ever polled a pending promise kept its waker
/// here (with tokio, the whole task's memory) until work arrived: so the list
/// is pruned, when it has doubled, of the pollers whose promise settled or is
/// gone. That woke their waker (a settle wakes every waker waiting, a promise
/// dropped pending too), and the poll that follows asks again for what the task
/// still waits on. A poller whose promise is pending stays, however many there
/// are: no live poller is dropped or woken for nothing (a sweep that woke them
/// to see which came back kept 65 tasks of a `LocalPool` awaiting one promise
/// polling each other out for ever).
pub(crate) fn add_foreign_poller(waker: &Waker, home: &Shared, waits_on: Weak<dyn Graph>) {
    // Pairs with the fence in `Shared::inject`: either the injector sees the loop
    // no longer driven (and wakes the pollers), or this sees its work.
    std::sync::atomic::fence(Ordering::SeqCst);
    let mut list = FOREIGN_POLLERS.lock();
    if home.has_injected() || HAS_ORPHANS.load(Ordering::Acquire) {
        drop(list);
        waker.wake_by_ref();
        return;
    }
    // Dropped once the lock is released: a waker's drop is another executor's
    // code, and the last reference to a promise may settle what waits on it,
    // which may come back here.
    let mut let_go: Vec<(Waker, Weak<dyn Graph>)> = Vec::new();
    let mut looked_at: Vec<Arc<dyn Graph>> = Vec::new();
    if let Some(entry) = list.pollers.iter_mut().find(|(w, _)| w.will_wake(waker)) {
        entry.1 = waits_on;
    } else {
        if list.pollers.len() >= list.prune_at {
            let mut i = 0;
            while i < list.pollers.len() {
                let over = match list.pollers[i].1.upgrade() {
                    None => true,
                    Some(node) => {
                        // Never waits for a lock: its holder may be waiting for this one.
                        let settled = node.settled_now() == Some(true);
                        looked_at.push(node);
                        settled
                    }
                };
                if over {
                    let_go.push(list.pollers.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            list.prune_at = PRUNE_AT_LEAST.max(2 * list.pollers.len());
        }
        list.pollers.push((waker.clone(), waits_on));
    }
    drop(list);
    drop(looked_at);
    drop(let_go);
}

pub(crate) fn wake_foreign_pollers() {
    let pollers = {
        let mut list = FOREIGN_POLLERS.lock();
        list.prune_at = PRUNE_AT_LEAST;
        std::mem::take(&mut list.pollers)
    };
    for (waker, _) in pollers {
        waker.wake();
    }
}
