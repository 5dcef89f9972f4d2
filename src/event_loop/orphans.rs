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
use crate::promise::core::Runnable;

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
    wakers: Vec::new(),
    limit: POLLERS_ROOM,
});

/// The wakers of [`FOREIGN_POLLERS`], each with whether it was woken since it
/// last registered, and the length at which the list is cleared.
///
/// Nothing tells when another executor's future is dropped, so a poller that
/// went away would stay listed until work appears, which may be never: a
/// tokio server whose every connection task awaited a thenable promise once
/// would keep a waker (and the task's memory) per connection. So when the list
/// reaches its limit, the pollers woken since they last registered go (a woken
/// future polls again, and a poll that still waits registers again: its
/// wake-up is not lost), and the others are woken, spuriously, to find out
/// which of them are still there by the next time. The limit leaves room for
/// half as many new pollers as stayed, at least [`POLLERS_ROOM`]: each poller
/// costs at most a few such wake-ups, and the list stays within a small
/// multiple of the pollers that are alive.
struct ForeignPollers {
    wakers: Vec<(Waker, bool)>,
    limit: usize,
}

/// See [`ForeignPollers`]: the new pollers a clearing leaves room for, at least.
const POLLERS_ROOM: usize = 32;

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
/// into it, or an orphan.
///
/// The poll turned `home` before it asks, and work that arrived in between found
/// no loop driven and no waker to wake: that is checked here, under the lock that
/// [`wake_foreign_pollers`] takes, and wakes `waker` at once.
pub(crate) fn add_foreign_poller(waker: &Waker, home: &Shared) {
    // Pairs with the fence in `Shared::inject`: either the injector sees the loop
    // no longer driven (and wakes the pollers), or this sees its work.
    std::sync::atomic::fence(Ordering::SeqCst);
    let mut pollers = FOREIGN_POLLERS.lock();
    if home.has_injected() || HAS_ORPHANS.load(Ordering::Acquire) {
        drop(pollers);
        waker.wake_by_ref();
        return;
    }
    if let Some((_, woken)) = pollers.wakers.iter_mut().find(|(w, _)| w.will_wake(waker)) {
        *woken = false;
        return;
    }
    // Woken and dropped once the lock is released: a waker may run any code.
    let mut gone = Vec::new();
    let mut to_wake = Vec::new();
    if pollers.wakers.len() >= pollers.limit {
        let ForeignPollers { wakers, limit } = &mut *pollers;
        // Those that stay move to the front, those that go gather behind them.
        let mut kept = 0;
        for i in 0..wakers.len() {
            if !wakers[i].1 {
                wakers.swap(kept, i);
                kept += 1;
            }
        }
        gone = wakers.split_off(kept);
        for (waker, woken) in wakers.iter_mut() {
            *woken = true;
            to_wake.push(waker.clone());
        }
        *limit = wakers.len() + (wakers.len() / 2).max(POLLERS_ROOM);
        wakers.shrink_to(*limit);
    }
    pollers.wakers.push((waker.clone(), false));
    drop(pollers);
    for waker in to_wake {
        waker.wake();
    }
    drop(gone);
}

pub(crate) fn wake_foreign_pollers() {
    let wakers = std::mem::take(&mut FOREIGN_POLLERS.lock().wakers);
    for (waker, _) in wakers {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that counts its wakes, and whose `Arc` tells whether the list of
    /// foreign pollers still holds it.
    #[derive(Default)]
    struct Probe {
        wakes: AtomicUsize,
    }

    impl std::task::Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn pollers_that_went_away_are_not_held_for_ever_and_live_ones_stay_woken() {
        // Other tests of this binary may wake the pollers (or find work and wake
        // a new one at once) meanwhile: that only lets go of more of them, and
        // every wake counts as one here.
        const GONE: usize = 1000;
        const LIVE: usize = 10;
        let local = crate::event_loop::Local::new();
        let home = &local.shared;
        let register = |probe: &Arc<Probe>| {
            let seen = probe.wakes.load(Ordering::Relaxed);
            add_foreign_poller(&Waker::from(probe.clone()), home);
            seen
        };
        let live: Vec<Arc<Probe>> = (0..LIVE).map(|_| Arc::default()).collect();
        // For each live poller, the wakes it had seen when it last registered.
        let mut registered: Vec<usize> = live.iter().map(register).collect();
        let gone: Vec<Arc<Probe>> = (0..GONE).map(|_| Arc::default()).collect();
        for probe in &gone {
            // Polled once, then dropped by its executor without another poll.
            register(probe);
            // A live poller that was woken polls again, and registers again.
            for (probe, seen) in live.iter().zip(&mut registered) {
                if probe.wakes.load(Ordering::Relaxed) > *seen {
                    *seen = register(probe);
                }
            }
        }
        let held = gone.iter().filter(|p| Arc::strong_count(p) > 1).count();
        let bound = 2 * (LIVE + POLLERS_ROOM);
        assert!(held <= bound, "{held} of {GONE} gone pollers held");
        wake_foreign_pollers();
        for (probe, seen) in live.iter().zip(&registered) {
            assert!(
                probe.wakes.load(Ordering::Relaxed) > *seen,
                "a live poller lost its wake-up"
            );
        }
    }
}
