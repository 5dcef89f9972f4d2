//! Timers of one loop: a binary heap of deadlines over a slab of callbacks.
//!
//! Setting a timer is O(log n), cancelling it is O(1) (the slab slot is freed and
//! its generation bumped; the stale heap entry is skipped when it surfaces). Equal
//! deadlines fire in the order they were set. This module never runs a callback
//! itself: the loop takes due callbacks out and runs them with no borrow held.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// The longest delay a timer is set for: a century. Longer ones (up to
/// `Duration::MAX`) are clamped to it rather than overflow `Instant`; the timer
/// still keeps its loop alive, as in Node.js, where an over-long delay is clamped.
pub(crate) const LONGEST_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `delay` after `now`, with `delay` clamped to [`LONGEST_DELAY`].
pub(crate) fn deadline_after(now: Instant, delay: Duration) -> Instant {
    now + delay.min(LONGEST_DELAY)
}

/// Identifies a timer set with [`set_timeout`](crate::set_timeout) or
/// [`set_interval`](crate::set_interval), for [`clear_timer`](crate::clear_timer).
///
/// It names its loop too, so clearing it on another loop does nothing, and its
/// generation, so clearing it after it fired never cancels a newer timer.
///
/// ```
/// use std::time::Duration;
/// let id = thenable::set_timeout(Duration::from_secs(60), || unreachable!());
/// assert!(thenable::clear_timer(id));
/// assert!(!thenable::clear_timer(id)); // already cleared
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    pub(crate) loop_id: u64,
    key: u32,
    generation: u32,
}

pub(crate) type RepeatFn = Rc<RefCell<dyn FnMut()>>;

pub(crate) enum Callback {
    Once(Box<dyn FnOnce()>),
    Repeat { f: RepeatFn, period: Duration },
}

/// A due timer taken out of the set, to be run by the loop.
pub(crate) enum Due {
    Once(Box<dyn FnOnce()>),
    Repeat {
        id: TimerId,
        f: RepeatFn,
        period: Duration,
    },
}

struct Slot {
    generation: u32,
    /// `None` while free, or while an interval's callback is running.
    callback: Option<Callback>,
    in_use: bool,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    deadline: Instant,
    seq: u64,
    key: u32,
    generation: u32,
}

pub(crate) struct Timers {
    loop_id: u64,
    heap: BinaryHeap<Reverse<Entry>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    seq: u64,
    live: usize,
}

impl Timers {
    pub(crate) fn new(loop_id: u64) -> Self {
        Timers {
            loop_id,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            seq: 0,
            live: 0,
        }
    }

    pub(crate) fn insert(&mut self, deadline: Instant, callback: Callback) -> TimerId {
        let key = match self.free.pop() {
            Some(key) => key,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    callback: None,
                    in_use: false,
                });
                u32::try_from(self.slots.len() - 1).expect("more than 4 billion timers")
            }
        };
        let slot = &mut self.slots[key as usize];
        slot.callback = Some(callback);
        slot.in_use = true;
        self.live += 1;
        let id = TimerId {
            loop_id: self.loop_id,
            key,
            generation: slot.generation,
        };
        self.push_entry(deadline, id);
        id
    }

    fn push_entry(&mut self, deadline: Instant, id: TimerId) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            deadline,
            seq: self.seq,
            key: id.key,
            generation: id.generation,
        }));
    }

    fn slot_of(&mut self, id: TimerId) -> Option<&mut Slot> {
        if id.loop_id != self.loop_id {
            return None;
        }
        self.slots
            .get_mut(id.key as usize)
            .filter(|slot| slot.in_use && slot.generation == id.generation)
    }

    fn release(&mut self, key: u32) -> Option<Callback> {
        let slot = &mut self.slots[key as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.in_use = false;
        self.free.push(key);
        self.live -= 1;
        slot.callback.take()
    }

    /// Cancels a timer; false if it already fired or was cleared. The callback is
    /// returned so the caller drops it outside any borrow.
    pub(crate) fn clear(&mut self, id: TimerId) -> Option<Option<Callback>> {
        self.slot_of(id)?;
        Some(self.release(id.key))
    }

    /// The earliest deadline of a live timer.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse(top)) = self.heap.peek() {
            let slot = &self.slots[top.key as usize];
            if slot.in_use && slot.generation == top.generation {
                return Some(top.deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the next timer due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Due> {
        let deadline = self.next_deadline()?;
        if deadline > now {
            return None;
        }
        let Reverse(entry) = self.heap.pop()?;
        let id = TimerId {
            loop_id: self.loop_id,
            key: entry.key,
            generation: entry.generation,
        };
        let slot = &mut self.slots[entry.key as usize];
        match slot.callback.take() {
            Some(Callback::Repeat { f, period }) => Some(Due::Repeat { id, f, period }),
            Some(Callback::Once(f)) => {
                self.release(entry.key);
                Some(Due::Once(f))
            }
            None => None,
        }
    }

    /// Puts an interval back after its callback ran, unless it was cleared meanwhile.
    pub(crate) fn rearm(&mut self, id: TimerId, f: RepeatFn, period: Duration, now: Instant) {
        if let Some(slot) = self.slot_of(id) {
            slot.callback = Some(Callback::Repeat { f, period });
            self.push_entry(deadline_after(now, period), id);
        }
    }

    /// Empties the set (the loop is being dropped).
    pub(crate) fn take_all(&mut self) -> Vec<Callback> {
        self.heap.clear();
        self.free.clear();
        self.live = 0;
        self.slots
            .drain(..)
            .filter_map(|slot| slot.callback)
            .collect()
    }
}

/// Wakes `waker` at `deadline`, from a background thread.
///
/// For futures polled by another executor (tokio, `futures::executor::block_on`)
/// while they wait on a timer of a loop nobody runs: the poll drives that loop, but
/// only this wake-up brings the executor back when the timer is due.
pub(crate) fn wake_at(deadline: Instant, waker: Waker) {
    static SERVICE: OnceLock<Arc<WakeService>> = OnceLock::new();
    let service = SERVICE.get_or_init(|| {
        let service = Arc::new(WakeService::default());
        let worker = service.clone();
        std::thread::Builder::new()
            .name("thenable-timer-wake".into())
            .spawn(move || worker.run())
            .expect("thenable: cannot start the timer wake-up thread");
        service
    });
    let mut queue = service.queue.lock();
    queue.seq += 1;
    let seq = queue.seq;
    queue.heap.push(Reverse(Wake {
        deadline,
        seq,
        waker,
    }));
    service.changed.notify_one();
}

#[derive(Default)]
struct WakeService {
    queue: Mutex<WakeQueue>,
    changed: Condvar,
}

#[derive(Default)]
struct WakeQueue {
    heap: BinaryHeap<Reverse<Wake>>,
    seq: u64,
}

struct Wake {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}

impl Eq for Wake {}

impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Wake {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

impl WakeService {
    fn run(&self) {
        let mut queue = self.queue.lock();
        loop {
            let now = Instant::now();
            let next = queue.heap.peek().map(|Reverse(top)| top.deadline);
            match next {
                Some(deadline) if deadline <= now => {
                    let Reverse(due) = queue.heap.pop().expect("peeked");
                    MutexGuard::unlocked(&mut queue, || due.waker.wake());
                }
                Some(deadline) => {
                    self.changed.wait_until(&mut queue, deadline);
                }
                None => self.changed.wait(&mut queue),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn once() -> Callback {
        Callback::Once(Box::new(|| {}))
    }

    #[test]
    fn equal_deadlines_pop_in_insertion_order_and_cleared_ones_are_skipped() {
        let mut timers = Timers::new(7);
        let now = Instant::now();
        let a = timers.insert(now, once());
        let b = timers.insert(now, once());
        let c = timers.insert(now, once());
        assert!(timers.clear(b).is_some());
        assert!(timers.clear(b).is_none());
        assert_eq!(timers.live, 2);
        assert!(matches!(timers.pop_due(now), Some(Due::Once(_))));
        assert!(matches!(timers.pop_due(now), Some(Due::Once(_))));
        assert!(timers.pop_due(now).is_none());
        // Slots were reused with a new generation: old ids no longer match.
        let d = timers.insert(now, once());
        assert!(d != a && d != c);
        assert!(timers.clear(a).is_none());
        assert!(timers.clear(d).is_some());
    }

    #[test]
    fn foreign_loop_ids_are_refused() {
        let mut timers = Timers::new(1);
        let id = timers.insert(Instant::now(), once());
        let foreign = TimerId { loop_id: 2, ..id };
        assert!(timers.clear(foreign).is_none());
        assert_eq!(timers.live, 1);
    }
}
