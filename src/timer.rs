//! Timers of one loop: a FIFO lane per distinct delay, and a binary heap of the
//! lanes ordered by their first deadline (Node.js's timer lists, with exact order).
//!
//! Timers set with the same delay are due in the order they were set (time only
//! moves forward), so each lane is sorted by construction and setting a timer is an
//! append, O(1) for a delay in use already. The heap holds one entry per non-empty
//! lane, keyed by the lane's first (deadline, instant set), so taking the next due
//! timer costs O(log lanes), not O(log timers): a million timers over a hundred
//! distinct delays sift through a heap of a hundred. Deadlines still fire in exact
//! deadline order, equal deadlines in the order they were set, whichever lanes they
//! sit in (the one set at the earlier instant first). Cancelling is O(1): the slab
//! slot is freed and its generation bumped; the stale lane entry is skipped when it
//! reaches the front. This module never runs a callback itself: the loop takes due
//! callbacks out and runs them with no borrow held.
//!
//! The module's `unsafe` is in two places: a small callback is stored in its
//! timer's place ([`OnceFn`]: a closure of at most two words moved into and out of
//! raw storage), and the place of a lane's next timer is prefetched.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::mem::{align_of, size_of, ManuallyDrop, MaybeUninit};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// The longest delay a timer is set for: a century. Longer ones (up to
/// `Duration::MAX`) are clamped to it rather than overflow `Instant`; the timer
/// still keeps its loop alive, as in Node.js, where an over-long delay is clamped.
pub(crate) const LONGEST_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

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

impl TimerId {
    /// The id without its loop, packed in one word (for an atomic).
    pub(crate) fn slot_bits(self) -> u64 {
        (u64::from(self.key) << 32) | u64::from(self.generation)
    }

    /// The inverse of [`slot_bits`](Self::slot_bits).
    pub(crate) fn from_slot_bits(loop_id: u64, bits: u64) -> TimerId {
        TimerId {
            loop_id,
            key: (bits >> 32) as u32,
            generation: bits as u32,
        }
    }
}

pub(crate) type RepeatFn = Rc<RefCell<dyn FnMut()>>;

/// What a timer settles when it is due, instead of calling a closure: a `sleep`'s
/// own promise node, so that a sleep costs one allocation.
pub(crate) trait Fire {
    /// The timer is due.
    fn fire(self: Arc<Self>);
    /// The loop is gone before the timer was due.
    fn abandon(self: Arc<Self>);
}

pub(crate) enum Callback {
    Once(OnceFn),
    /// Boxed: intervals are rare, and inline they would make every slot bigger.
    Repeat(Box<Interval>),
    Fire(Arc<dyn Fire>),
}

/// A timer's `FnOnce()`, stored in the timer's own place when it fits in two
/// words (a callback capturing an `Rc` or two), boxed otherwise.
///
/// Timers fire in deadline order, not in the order they were set, so a boxed
/// callback is a cache miss of its own each time one runs, after the miss on the
/// timer's place; inline, the second miss is gone, and so is an allocation per
/// timer.
pub(crate) struct OnceFn {
    storage: MaybeUninit<[usize; 2]>,
    vtable: &'static OnceVTable,
    /// The callback may be neither `Send` nor `Sync`.
    _local: PhantomData<*const ()>,
}

struct OnceVTable {
    /// Moves the callback out of the storage and calls it.
    call: unsafe fn(*mut [usize; 2]),
    /// Drops the callback in the storage.
    drop: unsafe fn(*mut [usize; 2]),
}

struct VTableOf<F>(PhantomData<F>);

#[allow(unsafe_code)]
impl<F: FnOnce()> VTableOf<F> {
    const VTABLE: OnceVTable = OnceVTable {
        call: Self::call,
        drop: Self::drop,
    };

    /// # Safety
    /// `storage` holds a valid `F`, written by `OnceFn::inline`, never read since.
    unsafe fn call(storage: *mut [usize; 2]) {
        // SAFETY: see above; the caller forgets the `OnceFn`, so this is the one read.
        let f = unsafe { storage.cast::<F>().read() };
        f();
    }

    /// # Safety
    /// As for `call`.
    unsafe fn drop(storage: *mut [usize; 2]) {
        // SAFETY: see `call`; `OnceFn::drop` runs at most once, and never after `call`.
        unsafe { storage.cast::<F>().drop_in_place() }
    }
}

#[allow(unsafe_code)]
impl OnceFn {
    pub(crate) fn new<F: FnOnce() + 'static>(f: F) -> OnceFn {
        if Self::fits::<F>() {
            Self::inline(f)
        } else {
            // A box is two words: it fits.
            let boxed: Box<dyn FnOnce()> = Box::new(f);
            Self::inline(boxed)
        }
    }

    /// Whether an `F` is stored inline (else it is boxed, and the box inline).
    const fn fits<F>() -> bool {
        size_of::<F>() <= size_of::<[usize; 2]>() && align_of::<F>() <= align_of::<usize>()
    }

    fn inline<F: FnOnce() + 'static>(f: F) -> OnceFn {
        assert!(Self::fits::<F>(), "checked by the caller");
        let mut storage = MaybeUninit::<[usize; 2]>::uninit();
        // SAFETY: `F` fits the storage in size and alignment (asserted just above),
        // and the storage is uninitialised: nothing is overwritten.
        unsafe { storage.as_mut_ptr().cast::<F>().write(f) };
        OnceFn {
            storage,
            vtable: &VTableOf::<F>::VTABLE,
            _local: PhantomData,
        }
    }

    /// Runs the callback (once: it is consumed).
    pub(crate) fn call(self) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: the storage holds the callback `new` wrote (of the type the
        // vtable was made for); `this` is never dropped, so it is read once.
        unsafe { (this.vtable.call)(this.storage.as_mut_ptr()) }
    }
}

#[allow(unsafe_code)]
impl Drop for OnceFn {
    fn drop(&mut self) {
        // SAFETY: as in `call`, which forgets the value instead of dropping it.
        unsafe { (self.vtable.drop)(self.storage.as_mut_ptr()) }
    }
}

/// What an interval runs, and how often.
pub(crate) struct Interval {
    pub(crate) f: RepeatFn,
    pub(crate) period: Duration,
}

/// A due timer taken out of the set, to be run by the loop.
pub(crate) enum Due {
    Once(OnceFn),
    Fire(Arc<dyn Fire>),
    Repeat {
        id: TimerId,
        interval: Box<Interval>,
    },
}

/// A place of the timer table, named by a [`TimerId`]'s key. Timers fire in
/// deadline order, not in the order their places were taken, so a million timers
/// touch their places at random: 32 bytes each, not 40, is a fifth less memory to
/// miss in the cache. Every state carries the place's generation, which then
/// shares the word of the enum's tag.
///
/// The generation is bumped each time the place is freed, so that an old id (or
/// lane entry) no longer matches.
enum Slot {
    /// Free, linked to the next free place (or [`NO_SLOT`]). The free places link
    /// through the table itself: a separate list would grow by reallocation as
    /// timers fire, and each large reallocation makes glibc consolidate every
    /// small free chunk.
    Free {
        generation: u32,
        next: u32,
    },
    Once {
        generation: u32,
        f: OnceFn,
    },
    Repeat {
        generation: u32,
        interval: Box<Interval>,
    },
    Fire {
        generation: u32,
        target: Arc<dyn Fire>,
    },
    /// An interval whose callback is running.
    Running {
        generation: u32,
    },
}

const NO_SLOT: u32 = u32::MAX;

/// One timer in its lane (16 bytes: deadlines are nanoseconds from the set's
/// creation, not 16-byte `Instant`s).
struct Entry {
    deadline: u64,
    key: u32,
    generation: u32,
}

/// The timers set with one delay, in the order they were set (so by deadline).
struct Lane {
    delay: Duration,
    entries: VecDeque<Entry>,
}

/// A non-empty lane, keyed by its first entry: when the first timers of two
/// lanes are due at the same nanosecond, the one set at the earlier instant (the
/// one with the longer delay) fires first. Two set at the same instant with the
/// same delay share a lane, in the order they were set, unless a caller's stale
/// `now` opened a second lane for that delay: those two fire in lane order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Head {
    deadline: u64,
    /// When its first entry was set: the deadline less the lane's delay.
    set: u64,
    lane: u32,
}

/// An instant read on one [`Timers`]' clock: nanoseconds from its epoch.
#[derive(Clone, Copy)]
pub(crate) struct Reading(u64);

pub(crate) struct Timers {
    loop_id: u64,
    /// What deadlines count their nanoseconds from.
    epoch: Instant,
    lanes: Vec<Lane>,
    free_lanes: Vec<u32>,
    lane_of: HashMap<Duration, u32, BuildDelayHasher>,
    /// The last entry of `lane_of` looked up or made: timers come in runs of one
    /// delay (a loop of `sleep(1 ms)`), and then the map is not consulted.
    last_lane: Option<(Duration, u32)>,
    heads: BinaryHeap<Reverse<Head>>,
    slots: Vec<Slot>,
    /// The first free slot, or [`NO_SLOT`].
    free: u32,
    live: usize,
}

impl Timers {
    pub(crate) fn new(loop_id: u64) -> Self {
        Timers {
            loop_id,
            epoch: Instant::now(),
            lanes: Vec::new(),
            free_lanes: Vec::new(),
            lane_of: HashMap::default(),
            last_lane: None,
            heads: BinaryHeap::new(),
            slots: Vec::new(),
            free: NO_SLOT,
            live: 0,
        }
    }

    /// Sets a timer due `delay` after `now` (`delay` clamped to [`LONGEST_DELAY`]).
    pub(crate) fn insert(&mut self, now: Instant, delay: Duration, callback: Callback) -> TimerId {
        self.insert_with(now, delay, |_| callback)
    }

    /// [`insert`](Self::insert), with the callback made knowing the timer's id (a
    /// sleep's node keeps it, to clear it if cancelled). `make` must not touch the
    /// timers.
    pub(crate) fn insert_with(
        &mut self,
        now: Instant,
        delay: Duration,
        make: impl FnOnce(TimerId) -> Callback,
    ) -> TimerId {
        let key = match self.free {
            NO_SLOT => {
                self.slots.push(Slot::Running { generation: 0 }); // armed just below
                u32::try_from(self.slots.len() - 1)
                    .ok()
                    .filter(|&key| key != NO_SLOT)
                    .expect("more than 4 billion timers")
            }
            key => key,
        };
        let slot = &mut self.slots[key as usize];
        if let Slot::Free { next, .. } = *slot {
            self.free = next;
        }
        let id = TimerId {
            loop_id: self.loop_id,
            key,
            generation: slot.generation(),
        };
        *slot = Slot::armed(id.generation, make(id));
        self.live += 1;
        self.push_entry(now, delay, id);
        id
    }

    /// `instant` in nanoseconds from the epoch (an `Instant` from before the set
    /// existed counts as the epoch itself).
    fn nanos(&self, instant: Instant) -> u64 {
        // A `u64` of nanoseconds lasts 584 years: past any clamped deadline.
        let nanos = instant.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    }

    fn push_entry(&mut self, now: Instant, delay: Duration, id: TimerId) {
        let delay = delay.min(LONGEST_DELAY);
        let entry = Entry {
            deadline: self.nanos(now).saturating_add(delay.as_nanos() as u64),
            key: id.key,
            generation: id.generation,
        };
        let lane = match self.last_lane {
            Some((last, lane)) if last == delay => Some(lane),
            _ => self.lane_of.get(&delay).copied(),
        };
        if let Some(lane) = lane {
            self.last_lane = Some((delay, lane));
            let entries = &mut self.lanes[lane as usize].entries;
            // `Instant::now()` never goes back, so appending keeps the lane sorted;
            // an earlier `now` passed in (a caller's stale reading) must not break it.
            if entries
                .back()
                .is_none_or(|last| last.deadline <= entry.deadline)
            {
                entries.push_back(entry);
                return;
            }
        }
        self.open_lane(delay, entry);
    }

    /// Starts a lane with `entry` (or, if a lane for `delay` exists but `entry`
    /// cannot be appended to it, an extra lane for the same delay).
    fn open_lane(&mut self, delay: Duration, entry: Entry) {
        let head = |lane| Head {
            deadline: entry.deadline,
            set: entry.deadline.saturating_sub(delay.as_nanos() as u64),
            lane,
        };
        let lane = match self.free_lanes.pop() {
            Some(lane) => {
                let slot = &mut self.lanes[lane as usize];
                slot.delay = delay;
                lane
            }
            None => {
                self.lanes.push(Lane {
                    delay,
                    entries: VecDeque::new(),
                });
                u32::try_from(self.lanes.len() - 1).expect("more than 4 billion lanes")
            }
        };
        self.heads.push(Reverse(head(lane)));
        self.lanes[lane as usize].entries.push_back(entry);
        self.lane_of.insert(delay, lane);
        self.last_lane = Some((delay, lane));
    }

    fn slot_of(&mut self, id: TimerId) -> Option<&mut Slot> {
        if id.loop_id != self.loop_id {
            return None;
        }
        self.slots
            .get_mut(id.key as usize)
            .filter(|slot| slot.is_live(id.generation))
    }

    fn release(&mut self, key: u32) -> Option<Callback> {
        let slot = &mut self.slots[key as usize];
        let freed = Slot::Free {
            generation: slot.generation().wrapping_add(1),
            next: self.free,
        };
        self.free = key;
        self.live -= 1;
        std::mem::replace(slot, freed).into_callback()
    }

    /// Cancels a timer; false if it already fired or was cleared. The callback is
    /// returned so the caller drops it outside any borrow.
    pub(crate) fn clear(&mut self, id: TimerId) -> Option<Option<Callback>> {
        self.slot_of(id)?;
        Some(self.release(id.key))
    }

    /// The first entry of the first lane, once stale entries are skipped.
    fn first(&mut self) -> Option<&Entry> {
        loop {
            let Reverse(top) = self.heads.peek()?;
            let lane = top.lane as usize;
            let entry = self.lanes[lane]
                .entries
                .front()
                .expect("lanes in the heap are not empty");
            if self.slots[entry.key as usize].is_live(entry.generation) {
                return self.lanes[lane].entries.front();
            }
            self.pop_first();
        }
    }

    /// Removes the first entry of the first lane and re-keys that lane.
    fn pop_first(&mut self) -> Option<Entry> {
        let mut top = self.heads.peek_mut()?;
        let lane = top.0.lane;
        let Lane { delay, entries } = &mut self.lanes[lane as usize];
        let entry = entries.pop_front();
        match entries.front() {
            Some(next) => {
                top.0.deadline = next.deadline;
                top.0.set = next.deadline.saturating_sub(delay.as_nanos() as u64);
                prefetch(&self.slots[next.key as usize]);
            }
            None => {
                std::collections::binary_heap::PeekMut::pop(top);
                let delay = self.lanes[lane as usize].delay;
                if self.lane_of.get(&delay) == Some(&lane) {
                    self.lane_of.remove(&delay);
                }
                if self.last_lane == Some((delay, lane)) {
                    self.last_lane = None;
                }
                // The empty lane keeps its buffer for the next delay: freeing a large
                // block makes glibc consolidate every small free chunk at once.
                self.free_lanes.push(lane);
            }
        }
        entry
    }

    /// The earliest deadline of a live timer.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        let nanos = self.first()?.deadline;
        Some(self.epoch + Duration::from_nanos(nanos))
    }

    /// `now` as this set's clock reads it, for [`pop_due_at`](Self::pop_due_at):
    /// converting an `Instant` costs more than taking a timer, and the loop takes
    /// every timer due at one `now` in turn.
    pub(crate) fn reading(&self, now: Instant) -> Reading {
        Reading(self.nanos(now))
    }

    /// Takes the next timer due at `now`, if any.
    #[cfg(test)]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Due> {
        self.pop_due_at(self.reading(now))
    }

    /// Takes the next timer due at `now` (a [`reading`](Self::reading)), if any.
    pub(crate) fn pop_due_at(&mut self, now: Reading) -> Option<Due> {
        if self.first()?.deadline > now.0 {
            return None;
        }
        let entry = self.pop_first()?;
        let id = TimerId {
            loop_id: self.loop_id,
            key: entry.key,
            generation: entry.generation,
        };
        let slot = &mut self.slots[entry.key as usize];
        let running = Slot::Running {
            generation: entry.generation,
        };
        match std::mem::replace(slot, running) {
            Slot::Repeat { interval, .. } => Some(Due::Repeat { id, interval }),
            Slot::Once { f, .. } => {
                self.release(entry.key);
                Some(Due::Once(f))
            }
            Slot::Fire { target, .. } => {
                self.release(entry.key);
                Some(Due::Fire(target))
            }
            unarmed => {
                *slot = unarmed; // `first` returns live entries only
                None
            }
        }
    }

    /// Puts an interval back after its callback ran, unless it was cleared meanwhile:
    /// then it is given back, for the caller to drop outside any borrow (its
    /// captures' destructors may set or clear timers). `started` is when the run
    /// began: the period counts from there, as in Node.js.
    #[must_use = "a cleared interval is dropped by the caller, outside the borrow"]
    pub(crate) fn rearm(
        &mut self,
        id: TimerId,
        interval: Box<Interval>,
        started: Instant,
    ) -> Option<Box<Interval>> {
        let Some(slot) = self.slot_of(id) else {
            return Some(interval);
        };
        let period = interval.period;
        *slot = Slot::Repeat {
            generation: id.generation,
            interval,
        };
        self.push_entry(started, period, id);
        None
    }

    /// Empties the set (the loop is being dropped).
    pub(crate) fn take_all(&mut self) -> Vec<Callback> {
        self.heads.clear();
        self.lanes.clear();
        self.free_lanes.clear();
        self.lane_of.clear();
        self.last_lane = None;
        self.free = NO_SLOT;
        self.live = 0;
        self.slots
            .drain(..)
            .filter_map(Slot::into_callback)
            .collect()
    }
}

/// Asks the cache for `slot`, which will be read when its lane's next timer is
/// taken: timers fire in deadline order, so their places are read at random,
/// and each is a cache miss unless it was asked for ahead (measured: `timers`
/// 194 -> 173 ms over 9 alternating runs, where touching the place with a load
/// instead gained nothing).
#[inline(always)]
fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: a prefetch is a hint: it changes nothing a program can observe,
    // and never faults, whatever the address (here a live reference). SSE, which
    // it needs, is part of every x86_64 target. No test can see it, by design;
    // the timer tests check that firing is unchanged.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((slot as *const Slot).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

impl Slot {
    fn armed(generation: u32, callback: Callback) -> Slot {
        match callback {
            Callback::Once(f) => Slot::Once { generation, f },
            Callback::Repeat(interval) => Slot::Repeat {
                generation,
                interval,
            },
            Callback::Fire(target) => Slot::Fire { generation, target },
        }
    }

    fn generation(&self) -> u32 {
        match *self {
            Slot::Free { generation, .. }
            | Slot::Once { generation, .. }
            | Slot::Repeat { generation, .. }
            | Slot::Fire { generation, .. }
            | Slot::Running { generation } => generation,
        }
    }

    /// The callback it holds, if it is armed.
    fn into_callback(self) -> Option<Callback> {
        match self {
            Slot::Once { f, .. } => Some(Callback::Once(f)),
            Slot::Repeat { interval, .. } => Some(Callback::Repeat(interval)),
            Slot::Fire { target, .. } => Some(Callback::Fire(target)),
            Slot::Free { .. } | Slot::Running { .. } => None,
        }
    }

    /// Holds the timer of `generation` (armed, or an interval that is running).
    fn is_live(&self, generation: u32) -> bool {
        self.generation() == generation && !matches!(self, Slot::Free { .. })
    }
}

/// Hashes a delay with one multiplication: the lane map is looked up for every
/// timer set, and its keys are not chosen by an adversary.
#[derive(Default, Clone, Copy)]
struct BuildDelayHasher;

impl BuildHasher for BuildDelayHasher {
    type Hasher = DelayHasher;
    fn build_hasher(&self) -> DelayHasher {
        DelayHasher(0)
    }
}

struct DelayHasher(u64);

impl Hasher for DelayHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: spreads nearby values over the high bits hashbrown uses.
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
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
    let key = (deadline, wake_key(&waker));
    let mut queue = service.queue.lock();
    // Another executor polls a pending promise as often as it likes (a
    // `select!` in a loop, at every iteration), and each pending poll asks for
    // the wake-up of the same deadline: one per waker is enough. Kept, each
    // would hold a clone of the waker until the deadline, an hour away maybe.
    if !queue.pending.insert(key) {
        return;
    }
    queue.seq += 1;
    let seq = queue.seq;
    queue.heap.push(Reverse(Wake {
        deadline,
        seq,
        waker,
    }));
    service.changed.notify_one();
}

/// What tells two wakers apart for [`wake_at`]: those with equal keys wake the
/// same task (`Waker::will_wake` compares the same two pointers).
fn wake_key(waker: &Waker) -> (usize, usize) {
    let vtable: *const std::task::RawWakerVTable = waker.vtable();
    (waker.data() as usize, vtable as usize)
}

#[derive(Default)]
struct WakeService {
    queue: Mutex<WakeQueue>,
    changed: Condvar,
}

#[derive(Default)]
struct WakeQueue {
    heap: BinaryHeap<Reverse<Wake>>,
    /// The deadline and waker of each entry of `heap`.
    pending: HashSet<(Instant, (usize, usize))>,
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
                    queue.pending.remove(&(due.deadline, wake_key(&due.waker)));
                    // Another runtime's waker may panic: the thread must go on
                    // for every other deadline.
                    MutexGuard::unlocked(&mut queue, || {
                        crate::event_loop::contained("a timer thread's wake-up", || {
                            due.waker.wake()
                        })
                    });
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
    use std::cell::Cell;

    fn once() -> Callback {
        Callback::Once(OnceFn::new(|| {}))
    }

    #[test]
    fn equal_deadlines_pop_in_insertion_order_and_cleared_ones_are_skipped() {
        let mut timers = Timers::new(7);
        let now = Instant::now();
        let a = timers.insert(now, Duration::ZERO, once());
        let b = timers.insert(now, Duration::ZERO, once());
        let c = timers.insert(now, Duration::ZERO, once());
        assert!(timers.clear(b).is_some());
        assert!(timers.clear(b).is_none());
        assert_eq!(timers.live, 2);
        assert!(matches!(timers.pop_due(now), Some(Due::Once(_))));
        assert!(matches!(timers.pop_due(now), Some(Due::Once(_))));
        assert!(timers.pop_due(now).is_none());
        // Slots were reused with a new generation: old ids no longer match.
        let d = timers.insert(now, Duration::ZERO, once());
        assert!(d != a && d != c);
        assert!(timers.clear(a).is_none());
        assert!(timers.clear(d).is_some());
    }

    #[test]
    fn foreign_loop_ids_are_refused() {
        let mut timers = Timers::new(1);
        let id = timers.insert(Instant::now(), Duration::ZERO, once());
        let foreign = TimerId { loop_id: 2, ..id };
        assert!(timers.clear(foreign).is_none());
        assert_eq!(timers.live, 1);
    }

    fn fire_due(timers: &mut Timers, now: Instant) {
        while let Some(due) = timers.pop_due(now) {
            match due {
                Due::Once(f) => f.call(),
                Due::Repeat { .. } | Due::Fire(_) => unreachable!(),
            }
        }
    }

    fn logging(log: &Rc<RefCell<Vec<u32>>>, name: u32) -> Callback {
        let log = log.clone();
        Callback::Once(OnceFn::new(move || log.borrow_mut().push(name)))
    }

    #[test]
    fn deadlines_fire_in_order_across_lanes_and_ties_in_the_order_set() {
        let mut timers = Timers::new(1);
        let log = Rc::new(RefCell::new(Vec::new()));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Lanes: 30 ms, 10 ms, 20 ms; deadlines interleave across them.
        timers.insert(t0, ms(30), logging(&log, 30));
        timers.insert(t0, ms(10), logging(&log, 10));
        timers.insert(t0 + ms(5), ms(10), logging(&log, 15));
        timers.insert(t0, ms(20), logging(&log, 20));
        timers.insert(t0 + ms(10), ms(20), logging(&log, 31)); // ties with the first
        timers.insert(t0 + ms(20), ms(10), logging(&log, 32)); // ties again
        let cleared = timers.insert(t0, ms(10), logging(&log, 99));
        assert!(timers.clear(cleared).is_some());
        assert_eq!(timers.next_deadline(), Some(t0 + ms(10)));
        fire_due(&mut timers, t0 + ms(25));
        assert_eq!(*log.borrow(), [10, 15, 20]);
        fire_due(&mut timers, t0 + ms(60));
        assert_eq!(*log.borrow(), [10, 15, 20, 30, 31, 32]);
        assert_eq!(timers.live, 0);
        assert!(timers.next_deadline().is_none());
        assert!(timers.lane_of.is_empty(), "empty lanes are closed");
    }

    #[test]
    fn a_stale_now_opens_a_second_lane_without_breaking_the_order() {
        let mut timers = Timers::new(1);
        let log = Rc::new(RefCell::new(Vec::new()));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        timers.insert(t0 + ms(5), ms(10), logging(&log, 2));
        timers.insert(t0, ms(10), logging(&log, 1)); // earlier than the lane's last
        timers.insert(t0 + ms(6), ms(10), logging(&log, 3));
        fire_due(&mut timers, t0 + ms(100));
        assert_eq!(*log.borrow(), [1, 2, 3]);
        assert_eq!(timers.live, 0);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_timer_costs_a_32_byte_place_and_a_16_byte_lane_entry() {
        // The place holds a small callback itself: no box of its own.
        assert_eq!(size_of::<OnceFn>(), 3 * size_of::<usize>());
        assert_eq!(size_of::<Slot>(), 32);
        assert_eq!(size_of::<Entry>(), 16);
    }

    /// Counts its drops: a callback's captures must be dropped exactly once,
    /// whether it is called, dropped uncalled, or panics.
    struct Dropped(Rc<Cell<u32>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn a_callback_inline_or_boxed_is_called_once_and_dropped_once() {
        let drops = Rc::new(Cell::new(0));
        let calls = Rc::new(Cell::new(0));
        // Inline (two words), boxed (too big), boxed (over-aligned), and empty.
        #[repr(align(16))]
        struct Aligned(u8);
        let (small, big, aligned) = (Dropped(drops.clone()), Dropped(drops.clone()), Aligned(7));
        let (c1, c2, c3, c4) = (calls.clone(), calls.clone(), calls.clone(), calls.clone());
        let padding = [3u64; 4];
        let callbacks = [
            OnceFn::new(move || {
                let _keep = small;
                c1.set(c1.get() + 1);
            }),
            OnceFn::new(move || {
                let _keep = big;
                c2.set(c2.get() + padding.iter().sum::<u64>() as u32 - 11);
            }),
            OnceFn::new(move || c3.set(c3.get() + u32::from(aligned.0) - 6)),
            OnceFn::new(|| {}),
        ];
        assert!(OnceFn::fits::<Rc<u8>>() && !OnceFn::fits::<[u64; 4]>());
        assert!(!OnceFn::fits::<Aligned>());
        for callback in callbacks {
            callback.call();
        }
        assert_eq!((calls.get(), drops.get()), (3, 2));
        // Dropped without being called: the captures go, once.
        let uncalled = OnceFn::new({
            let (keep, c4) = (Dropped(drops.clone()), c4);
            move || {
                let _keep = keep;
                c4.set(c4.get() + 100);
            }
        });
        drop(uncalled);
        assert_eq!((calls.get(), drops.get()), (3, 3));
    }

    #[test]
    fn a_callback_that_panics_drops_its_captures_once() {
        let drops = Rc::new(Cell::new(0));
        let keep = Dropped(drops.clone());
        let callback = OnceFn::new(move || {
            let _keep = keep;
            panic!("a timer callback failed");
        });
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback.call()));
        assert!(caught.is_err());
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn an_interval_cleared_while_it_runs_is_not_rearmed() {
        let mut timers = Timers::new(1);
        let t0 = Instant::now();
        let f: RepeatFn = Rc::new(RefCell::new(|| {}));
        let period = Duration::from_millis(10);
        let id = timers.insert(
            t0,
            period,
            Callback::Repeat(Box::new(Interval { f, period })),
        );
        let Some(Due::Repeat { id: due, interval }) = timers.pop_due(t0 + period) else {
            panic!("the interval is due");
        };
        assert_eq!(due, id);
        assert!(
            timers.clear(id).is_some(),
            "a running interval can be cleared"
        );
        assert!(timers.rearm(id, interval, t0 + period).is_some());
        assert_eq!(timers.live, 0);
        assert!(timers.next_deadline().is_none());
        // The freed place is reused with a new generation.
        let next = timers.insert(t0, period, once());
        assert_ne!(next, id);
        assert!(timers.clear(id).is_none());
    }

    #[test]
    fn a_freed_lane_reused_for_another_delay_is_not_taken_for_the_old_one() {
        let mut timers = Timers::new(1);
        let log = Rc::new(RefCell::new(Vec::new()));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        timers.insert(t0, ms(10), logging(&log, 1));
        fire_due(&mut timers, t0 + ms(10)); // the 10 ms lane empties and is freed
        timers.insert(t0 + ms(10), ms(50), logging(&log, 3)); // reuses it: 50 ms
        timers.insert(t0 + ms(10), ms(10), logging(&log, 2)); // a new 10 ms lane
        timers.insert(t0 + ms(11), ms(50), logging(&log, 4));
        fire_due(&mut timers, t0 + ms(30));
        assert_eq!(*log.borrow(), [1, 2]);
        fire_due(&mut timers, t0 + ms(100));
        assert_eq!(*log.borrow(), [1, 2, 3, 4]);
    }

    #[test]
    fn duration_max_is_clamped_to_a_century() {
        let mut timers = Timers::new(1);
        let now = Instant::now();
        timers.insert(now, Duration::MAX, once());
        assert_eq!(timers.next_deadline(), Some(now + LONGEST_DELAY));
    }

    #[test]
    fn a_waker_that_panics_leaves_the_timer_thread_waking_the_others() {
        struct Panics;
        impl std::task::Wake for Panics {
            fn wake(self: Arc<Self>) {
                panic!("a waker's wake [expected test panic]");
            }
        }
        struct Sends(Mutex<std::sync::mpsc::Sender<()>>);
        impl std::task::Wake for Sends {
            fn wake(self: Arc<Self>) {
                let _ = self.0.lock().send(());
            }
        }
        let now = Instant::now();
        wake_at(now, Waker::from(Arc::new(Panics)));
        let (woken, wakes) = std::sync::mpsc::channel();
        wake_at(
            now + Duration::from_millis(1),
            Waker::from(Arc::new(Sends(Mutex::new(woken)))),
        );
        // A thread the panic ended would never send (the bound is no timing
        // claim: it only keeps a failure from hanging the suite).
        assert!(wakes.recv_timeout(Duration::from_secs(30)).is_ok());
    }
}
