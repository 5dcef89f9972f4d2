//! One loop's queues and the algorithm of a turn.
//!
//! `Local` is the loop-thread half (microtasks, immediates, timers, tasks: may hold
//! `!Send` callbacks); `Shared` is the half any thread may touch (the injector, the
//! reactor to wake the loop, the keep-alive count). The turn runs callbacks with no
//! `RefCell` borrow held, so a callback may queue more work of any kind.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{context, orphans};
use crate::blocking;
use crate::promise::core::{self, Graph, Runnable, Whose};
use crate::reactor::Reactor;
use crate::task::TaskWaker;
use crate::timer::{Callback, Due, Timers};

/// Work on the microtask queue.
pub(crate) enum Job {
    Run(Arc<dyn Runnable>),
    /// The reactions of one promise with many, run in turn as one entry (they
    /// were all queued at once, so nothing queued meanwhile could come between
    /// them): a fan-out of a million takes one place in the queue, not a million.
    Batch(Vec<Arc<dyn Runnable>>),
    Poll(Arc<TaskWaker>),
    Call(Box<dyn FnOnce()>),
}

/// Work sent from another thread.
pub(crate) enum SendJob {
    Run(Arc<dyn Runnable>),
    Poll(Arc<TaskWaker>),
    Call(Box<dyn FnOnce() + Send>),
}

impl From<SendJob> for Job {
    fn from(job: SendJob) -> Job {
        match job {
            SendJob::Run(job) => Job::Run(job),
            SendJob::Poll(task) => Job::Poll(task),
            SendJob::Call(f) => Job::Call(f),
        }
    }
}

impl Job {
    /// The loop is gone: the job will never run.
    fn abandon(self) {
        match self {
            Job::Run(job) => job.abandon(),
            // One at a time, as the loop's drop abandons its jobs.
            Job::Batch(jobs) => jobs.into_iter().for_each(abandon_contained),
            Job::Poll(_) => {} // the task itself is dropped with the task table
            Job::Call(f) => drop(f),
        }
    }
}

static NEXT_LOOP_ID: AtomicU64 = AtomicU64::new(1);

/// The part of a loop other threads can reach.
pub(crate) struct Shared {
    pub(crate) id: u64,
    reactor: Reactor,
    injected: Mutex<Vec<SendJob>>,
    has_injected: AtomicBool,
    /// Whether `injected` holds a reaction; read and written under its lock
    /// (see [`orphan`](Self::orphan)).
    reactions_injected: AtomicBool,
    /// Live resolvers homed here and live `LoopHandle`s: each may bring work later.
    keep_alive: AtomicUsize,
    closed: AtomicBool,
}

impl Shared {
    /// Queues work from any thread and wakes the loop.
    /// Queues `job` for the loop; false if the loop is closed, `job` then being
    /// handed to the orphans (a reaction) or abandoned (anything else).
    pub(crate) fn inject(self: &Arc<Self>, job: SendJob) -> bool {
        // Checked under the queue's lock, which the loop's drop holds to close it:
        // a job is either in the queue the drop abandons, or refused here.
        let reaction = matches!(job, SendJob::Run(_));
        let refused = {
            let mut injected = self.injected.lock();
            if self.closed.load(Ordering::Acquire) {
                Some(job)
            } else {
                if reaction {
                    self.reactions_injected.store(true, Ordering::Relaxed);
                }
                injected.push(job);
                None
            }
        };
        if let Some(job) = refused {
            match job {
                // Closed since the sender looked: a reaction that arrives after
                // the loop went was never its work (see `context::send_elsewhere`).
                SendJob::Run(job) => orphans::push(job, None),
                // Abandoning drops user code (a posted closure, a task's future)
                // on whatever thread sent it: its panic must not unwind there.
                job => context::with_graveyard(|| {
                    contained("an abandoned job", || Job::from(job).abandon())
                }),
            }
            return false;
        }
        self.has_injected.store(true, Ordering::Release);
        self.reactor.notify();
        // Pairs with the fence in `orphans::add_foreign_poller`: a poll from another
        // executor that has just stopped driving this loop either is seen here as
        // not driving it, or sees this job when it registers its waker.
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.is_driven() {
            // The thread that drove the loop when the sender looked has stopped
            // since, and may not drive it again: a reaction goes where one sent a
            // moment later would (see `orphan_injected_reactions`). Only then:
            // other jobs find no reaction left there (a post before `run`
            // looking through every earlier post would be quadratic).
            if reaction {
                self.orphan_injected_reactions();
            }
            // Its thread may be awaiting through another executor: bring it back.
            orphans::wake_foreign_pollers();
        }
        true
    }

    /// Hands the reactions waiting in the injector to the orphans, in the order
    /// they came, once no thread drives the loop: called by the thread that stops
    /// driving it, and by a sender that finds it no longer driven after queuing.
    ///
    /// A reaction is sent to the injector only while a thread drives the loop,
    /// and to the orphans otherwise (`context::send_elsewhere`). One that arrived
    /// too late for the driver's last look at its queues (a `block_on` whose
    /// future completed meanwhile, a poll from another executor) would otherwise
    /// wait until the loop is driven again, which a thread's default loop may
    /// never be (its promise awaited on another thread, or in a tokio task that
    /// moved to another worker), and be broken with the loop; a reaction settled
    /// just after it, by the same thread, became an orphan and ran. Tasks' polls
    /// and posted calls belong to the loop, and stay.
    pub(crate) fn orphan_injected_reactions(self: &Arc<Self>) {
        // Pairs with the fence in `inject`: either this sees the job queued, or
        // the sender sees the loop no longer driven and calls this itself.
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.has_injected() {
            return;
        }
        let mut injected = self.injected.lock();
        let moved = self.move_injected_reactions(&mut injected);
        drop(injected);
        if moved {
            orphans::announce();
        }
    }

    /// Hands `job`, a reaction homed here, to the orphans, nobody driving the
    /// loop: after the reactions still in the injector, under its lock. A
    /// thread that settles two promises homed here, the first while the loop
    /// was driven (injected) and the second just after (an orphan), would
    /// otherwise see the second overtake the first while the thread that
    /// stopped driving hands it over (their handlers ran [2, 1]).
    pub(crate) fn orphan(self: &Arc<Self>, job: Arc<dyn Runnable>) {
        let mut injected = self.injected.lock();
        self.move_injected_reactions(&mut injected);
        orphans::enqueue(std::iter::once(job), Some(self));
        drop(injected);
        // Outside the lock: a waker may run any code, a send to this loop too.
        orphans::announce();
    }

    /// Moves the reactions of `injected` (this loop's injector, locked) to the
    /// orphans, in order, without waking anyone; true if there were any.
    fn move_injected_reactions(self: &Arc<Self>, injected: &mut Vec<SendJob>) -> bool {
        if !self.reactions_injected.load(Ordering::Relaxed) {
            return false;
        }
        self.reactions_injected.store(false, Ordering::Relaxed);
        let mut reactions = Vec::new();
        injected.retain_mut(|job| match job {
            SendJob::Run(reaction) => {
                reactions.push(reaction.clone());
                false
            }
            _ => true,
        });
        if injected.is_empty() {
            // A sender's store that comes after this one marks a job pushed
            // after this took the queue: true then is at worst one empty look.
            self.has_injected.store(false, Ordering::Release);
        }
        orphans::enqueue(reactions, Some(self));
        true
    }

    pub(crate) fn notify(&self) {
        self.reactor.notify();
    }

    pub(crate) fn reactor(&self) -> &Reactor {
        &self.reactor
    }

    /// Work from other threads waits to be taken.
    pub(crate) fn has_injected(&self) -> bool {
        self.has_injected.load(Ordering::Acquire)
    }

    /// A thread is inside `run`, `block_on` or a poll that drives this loop.
    pub(crate) fn is_driven(&self) -> bool {
        self.reactor.is_driven()
    }

    pub(crate) fn set_driven(&self, driven: bool) {
        if driven {
            self.reactor.begin_driving();
        } else {
            self.reactor.end_driving();
        }
    }

    /// A poll from another executor, on a thread where no loop runs, left a
    /// readiness wait here: see `Reactor::watch_foreign_waits`.
    pub(crate) fn watch_foreign_waits(self: &Arc<Self>) {
        self.reactor.watch_foreign_waits(self, Shared::reactor);
    }

    /// Starts the reactor's watcher, for a wait about to be left to it: see
    /// `Reactor::start_watcher`.
    pub(crate) fn start_watcher(self: &Arc<Self>) -> std::io::Result<()> {
        self.reactor.start_watcher(self, Shared::reactor)
    }

    pub(crate) fn is_kept_alive(&self) -> bool {
        self.keep_alive.load(Ordering::Acquire) > 0
    }

    pub(crate) fn acquire(&self) {
        self.keep_alive.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn release(&self) {
        if self.keep_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A loop may be blocked waiting for exactly this: let it re-check.
            self.reactor.notify();
            if !self.is_driven() {
                orphans::notify_driven_loops();
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

struct TaskEntry {
    /// `None` while it is being polled.
    future: Option<Pin<Box<dyn Future<Output = ()>>>>,
    task: Arc<TaskWaker>,
}

/// A place in the task table: a task, or a free place linked to the next free one
/// (so that reusing places needs no second vector, whose growth would copy it).
enum TaskSlot {
    Taken(TaskEntry),
    Free { next: usize },
}

/// No next free place.
const NO_SLOT: usize = usize::MAX;

/// The entry of `task` in the table, if it is still there.
fn entry_of<'a>(tasks: &'a mut [TaskSlot], task: &Arc<TaskWaker>) -> Option<&'a mut TaskEntry> {
    match tasks.get_mut(task.key) {
        Some(TaskSlot::Taken(entry)) if Arc::ptr_eq(&entry.task, task) => Some(entry),
        _ => None,
    }
}

/// Why a loop stopped turning.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The caller's condition became true.
    Done,
    /// Nothing queued, no timer, nothing that keeps the loop alive.
    Idle,
    /// Nothing can run right now (only when asked not to block).
    Stalled,
}

/// The loop-thread part of a loop.
pub(crate) struct Local {
    pub(crate) shared: Arc<Shared>,
    micro: RefCell<VecDeque<Job>>,
    immediates: RefCell<VecDeque<Box<dyn FnOnce()>>>,
    pub(crate) timers: RefCell<Timers>,
    tasks: RefCell<Vec<TaskSlot>>,
    /// The first free place of `tasks`, or [`NO_SLOT`].
    free_task: Cell<usize>,
    live_tasks: Cell<usize>,
    /// Promises rejected with nobody watching, checked when the microtasks drain.
    unhandled: RefCell<Vec<Arc<dyn Graph>>>,
    /// Orphan reactions moved to `micro` and not yet run (see `orphans::in_flight`).
    orphans_taken: Cell<usize>,
    /// Promises this loop's tasks (and `block_on`'s future) wait on. Those that
    /// count as its own business are searched again whenever the loop runs out of
    /// work (see `own_waits_moved_elsewhere`); those that count as another loop's
    /// work, while only such waits keep the loop alive (see [`Recheck`]). Those
    /// whose task or promise is gone are dropped before the list grows.
    task_waits: RefCell<Vec<TaskWait>>,
    /// When the waits on other loops' work are looked at again, while nothing
    /// else keeps the loop alive.
    recheck: Cell<Option<Recheck>>,
    /// The task of the `block_on` running this loop, if any (it is not in the
    /// task table).
    block_on_task: RefCell<Option<Weak<TaskWaker>>>,
    /// This is its thread's default loop (made by `context::ambient`): read for
    /// every sleep and `Send` task made while no loop runs, without a look at
    /// the thread-local that holds the default loop.
    pub(crate) is_default: Cell<bool>,
}

/// A task, a promise it waits on, and whether that wait counted as another
/// loop's work (its `TaskRef` counts as remote) when it was last looked at.
struct TaskWait {
    task: Weak<TaskWaker>,
    node: Weak<dyn Graph>,
    remote: bool,
}

/// What keeps a loop with nothing queued and no timer alive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Alive {
    /// Nothing: it is idle.
    No,
    /// A live resolver or handle, or armed I/O: any of them may bring work at
    /// any time, and the loop hears when it stops (a resolver settles or is
    /// dropped, a handle is dropped, I/O is disarmed here).
    Yes,
    /// None of those, but a task's waker held outside thenable: it may wake the
    /// task at any time, or be dropped without a wake, which nothing tells the
    /// loop of.
    Foreign,
    /// Only waits on other loops' work, as the searches last saw them.
    Elsewhere,
}

impl Alive {
    /// What keeps the loop alive may stop doing so without a wake-up: the loop
    /// must look again by itself (see [`Recheck`]).
    fn unheard(self) -> bool {
        matches!(self, Alive::Foreign | Alive::Elsewhere)
    }
}

/// The next look at what keeps alive a loop that only things it would not hear
/// the end of keep alive: waits on other loops' work, and wakers held outside
/// thenable.
///
/// A wait counted as another loop's work when it registered may come to wait on
/// this loop's own stuck work (the other loop's handler returns one of this
/// loop's promises, and that loop may be gone since); a waker held outside
/// thenable may be dropped without a wake (by a future that forgets it, a
/// thread that gives up). Nothing wakes this loop then, so it wakes itself to
/// look again. The first look comes [`FIRST_RECHECK`] after the loop ran out
/// of work, then at doubling intervals up to [`LAST_RECHECK`]: a wait that got
/// stuck is told "deadlock" within about a second of it (at once, for a test
/// or a short program), and a long wait on a busy loop or a foreign waker
/// costs six wake-ups in its first second and one a second after, each a
/// search of at most [`core::SETTLING_SEARCH`] nodes per wait on another
/// loop's work and a look at the task table's reference counts. Wake-ups from
/// the other loop or the foreign waker do not put the next look off, so a
/// stream of replies cannot hide a wait that got stuck. None of this happens
/// while the loop has work, a timer or anything else that keeps it alive; once
/// it has run out of work and finds such a reason (or none), the interval
/// starts again from the first.
#[derive(Clone, Copy)]
struct Recheck {
    at: Instant,
    interval: Duration,
}

/// See [`Recheck`]: short enough that a deadlock is told before a person would
/// notice the wait, long enough that a wait on another loop's reply, most often
/// there in microseconds, seldom costs a wake-up.
const FIRST_RECHECK: Duration = Duration::from_millis(10);
/// See [`Recheck`]: how late a deadlock may be told, after a long wait that was
/// legitimate until then; and one wake-up a second costs a waiting loop nothing
/// one could measure.
const LAST_RECHECK: Duration = Duration::from_secs(1);

/// The interval of the look that follows one after `previous` (see [`Recheck`]),
/// or of the first look.
pub(crate) fn next_recheck(previous: Option<Duration>) -> Duration {
    previous.map_or(FIRST_RECHECK, |interval| (interval * 2).min(LAST_RECHECK))
}

impl Local {
    pub(crate) fn new() -> Local {
        let id = NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed);
        let reactor = Reactor::new().expect("thenable: cannot create the OS poller");
        let shared = Arc::new(Shared {
            id,
            reactor,
            injected: Mutex::new(Vec::new()),
            has_injected: AtomicBool::new(false),
            reactions_injected: AtomicBool::new(false),
            keep_alive: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        orphans::register(&shared);
        Local {
            shared,
            micro: RefCell::new(VecDeque::new()),
            immediates: RefCell::new(VecDeque::new()),
            timers: RefCell::new(Timers::new(id)),
            tasks: RefCell::new(Vec::new()),
            free_task: Cell::new(NO_SLOT),
            live_tasks: Cell::new(0),
            unhandled: RefCell::new(Vec::new()),
            orphans_taken: Cell::new(0),
            task_waits: RefCell::new(Vec::new()),
            recheck: Cell::new(None),
            block_on_task: RefCell::new(None),
            is_default: Cell::new(false),
        }
    }

    pub(crate) fn push(&self, job: Job) {
        self.micro.borrow_mut().push_back(job);
    }

    pub(crate) fn push_immediate(&self, f: Box<dyn FnOnce()>) {
        self.immediates.borrow_mut().push_back(f);
    }

    /// Adds a task; it is polled from the microtask queue. `make` builds its
    /// future once the task exists (its promise's link names the task), with no
    /// borrow of the table held: it may cancel the task at once.
    pub(crate) fn spawn(
        &self,
        output: Option<Weak<dyn Graph>>,
        make: impl FnOnce(&Arc<TaskWaker>) -> Pin<Box<dyn Future<Output = ()>>>,
    ) {
        if let Some(task) = self.add_task(output, make) {
            self.push(Job::Poll(task));
        }
    }

    /// [`spawn`](Self::spawn), polling the task at once instead of queuing it:
    /// for a task whose start was itself queued (offered to other loops, see
    /// `claims`), so that its first poll comes where `spawn` would have queued
    /// it.
    pub(crate) fn spawn_and_poll(
        &self,
        output: Option<Weak<dyn Graph>>,
        make: impl FnOnce(&Arc<TaskWaker>) -> Pin<Box<dyn Future<Output = ()>>>,
    ) {
        if let Some(task) = self.add_task(output, make) {
            self.poll_task(task);
        }
    }

    /// Adds a task (see [`spawn`](Self::spawn)) and gives it back to be polled,
    /// unless it was cancelled before it existed.
    #[inline]
    fn add_task(
        &self,
        output: Option<Weak<dyn Graph>>,
        make: impl FnOnce(&Arc<TaskWaker>) -> Pin<Box<dyn Future<Output = ()>>>,
    ) -> Option<Arc<TaskWaker>> {
        let mut tasks = self.tasks.borrow_mut();
        let key = match self.free_task.get() {
            NO_SLOT => tasks.len(),
            free => free,
        };
        let task = Arc::new(TaskWaker::new(self.shared.clone(), key, output));
        // Taken before `make` runs, with no future yet: polling it does nothing.
        let entry = TaskSlot::Taken(TaskEntry {
            future: None,
            task: task.clone(),
        });
        if key == tasks.len() {
            tasks.push(entry);
        } else {
            match std::mem::replace(&mut tasks[key], entry) {
                TaskSlot::Free { next } => self.free_task.set(next),
                TaskSlot::Taken(_) => unreachable!("the free list names free places only"),
            }
        }
        self.live_tasks.set(self.live_tasks.get() + 1);
        drop(tasks);
        let future = make(&task);
        match entry_of(&mut self.tasks.borrow_mut(), &task) {
            Some(entry) => entry.future = Some(future),
            // Its promise was cancelled before the task existed (see `TaskLink`).
            None => {
                core::run_cancellation(|| drop(future));
                return None;
            }
        }
        Some(task)
    }

    fn poll_task(&self, task: Arc<TaskWaker>) {
        let taken = entry_of(&mut self.tasks.borrow_mut(), &task).and_then(|e| e.future.take());
        let Some(mut future) = taken else {
            return;
        };
        task.scheduled.store(false, Ordering::Release);
        // The poll's waker borrows `task`'s reference, where `Waker::from(task
        // .clone())` costs a count up and down per poll (tasks, n = 1,000,000:
        // 595.7 -> 582.5 ms over 9 alternating runs). Clones the future makes
        // count for themselves, through the standard vtable.
        #[allow(unsafe_code)]
        // SAFETY: `from_raw` gets the pointer of a live `Arc`, and the `Arc` it
        // makes is never dropped (the `Waker` it becomes is `ManuallyDrop`), so
        // no count is taken from `task`'s. `task` holds that count for as long
        // as `waker` is used: it is the context's until the poll returns, and
        // `waker` is not used after. (`polling_leaves_a_task_s_count_as_it_was`
        // fails if a count is taken or given per poll.)
        let waker = ManuallyDrop::new(Waker::from(unsafe { Arc::from_raw(Arc::as_ptr(&task)) }));
        let mut cx = Context::from_waker(&waker);
        task.begin_poll();
        let (poll, task) = context::polling_task(task, || {
            catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)))
        });
        task.end_poll();
        match poll {
            Ok(Poll::Pending) => {
                let mut tasks = self.tasks.borrow_mut();
                match entry_of(&mut tasks, &task) {
                    Some(entry) => entry.future = Some(future),
                    // Cancelled while it was being polled.
                    None => {
                        drop(tasks);
                        drop_cancelled(future);
                    }
                }
                return;
            }
            Ok(Poll::Ready(())) => {}
            // Task futures catch their own panics; this is a last line of defence.
            Err(payload) => report_panic("a task", &*payload),
        }
        let entry = self.remove_task(&task);
        drop(entry);
        drop(future);
    }

    /// Takes a task out of the table (if it is still there).
    fn remove_task(&self, task: &Arc<TaskWaker>) -> Option<TaskEntry> {
        let mut tasks = self.tasks.borrow_mut();
        entry_of(&mut tasks, task)?;
        let next = self.free_task.replace(task.key);
        let TaskSlot::Taken(entry) =
            std::mem::replace(&mut tasks[task.key], TaskSlot::Free { next })
        else {
            unreachable!("entry_of found a task here");
        };
        self.live_tasks.set(self.live_tasks.get() - 1);
        task.end();
        Some(entry)
    }

    /// Drops a task's future (its promise was cancelled): its destructors run, and
    /// promises it was the only consumer of are cancelled in turn.
    pub(crate) fn cancel_task(&self, task: &Arc<TaskWaker>) {
        if let Some(entry) = self.remove_task(task) {
            drop_cancelled(entry);
        }
    }

    fn run_job(&self, job: Job) {
        match job {
            Job::Run(job) => job.run(),
            Job::Batch(jobs) => jobs.into_iter().for_each(|job| job.run()),
            Job::Poll(task) => self.poll_task(task),
            Job::Call(f) => contained("a microtask", f),
        }
    }

    pub(crate) fn track_unhandled(&self, node: Arc<dyn Graph>) {
        self.unhandled.borrow_mut().push(node);
    }

    /// Runs microtasks until the queue is empty, including ones queued meanwhile;
    /// then reports the rejections that are still unhandled (as Node.js does after
    /// the microtask queue drains). What the hook queues, or rejects with nobody
    /// watching, is part of the same drain, as in Node.js's
    /// `processTicksAndRejections`: it runs (and is reported) before the drain
    /// returns, not after the next timer or immediate.
    fn drain_micro(&self) {
        loop {
            loop {
                let job = self.micro.borrow_mut().pop_front();
                match job {
                    Some(job) => self.run_job(job),
                    None => break,
                }
            }
            let orphans_run = self.orphans_taken.replace(0);
            if orphans_run > 0 {
                orphans::finished(orphans_run);
            }
            if self.unhandled.borrow().is_empty() {
                return;
            }
            let suspects = std::mem::take(&mut *self.unhandled.borrow_mut());
            for node in suspects {
                if let Some(error) = node.unhandled() {
                    context::report_unhandled(&error);
                }
            }
        }
    }

    /// Moves work sent by other threads, and orphan reactions, to the microtasks:
    /// the orphans meant for this loop, or, with `all_orphans`, every one (see
    /// `orphans::take`). True if it moved anything.
    fn take_injected(&self, all_orphans: bool) -> bool {
        let mut micro = self.micro.borrow_mut();
        let before = micro.len();
        // Orphans first: what this loop's injector holds was sent since a thread
        // started driving it, after every orphan meant for it was pushed (sent
        // while nobody drove it, or handed over by the last driver as it stopped),
        // so a thread that settles two promises homed here gets their handlers
        // run in the order it settled them. Both under the injector's lock, which
        // a hand-over to the orphans holds (see `Shared::orphan`): taken between
        // the two, a reaction handed over would be overtaken by one injected
        // after it.
        let injected = self
            .shared
            .has_injected
            .swap(false, Ordering::AcqRel)
            .then(|| self.shared.injected.lock());
        if let Some(orphans) = orphans::take(&self.shared, all_orphans) {
            self.orphans_taken
                .set(self.orphans_taken.get() + orphans.len());
            micro.extend(orphans.into_iter().map(Job::Run));
        }
        if let Some(mut injected) = injected {
            self.shared
                .reactions_injected
                .store(false, Ordering::Relaxed);
            let injected = std::mem::take(&mut *injected);
            micro.extend(injected.into_iter().map(Job::from));
        }
        micro.len() > before
    }

    fn run_due_timers(&self, done: &dyn Fn() -> bool) {
        let now = self.timers.borrow().reading(Instant::now());
        loop {
            let due = self.timers.borrow_mut().pop_due_at(now);
            match due {
                None => break,
                Some(Due::Once(f)) => {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f.call())) {
                        report_panic("a timer callback", &*payload);
                    }
                }
                Some(Due::Fire(target)) => target.fire(),
                Some(Due::Repeat { id, interval }) => {
                    // The next run is due a period after this one started, as in
                    // Node.js: a run that takes longer than the period is followed
                    // by the next on the next turn, not a period after it ended.
                    // (Not the batch's `now`: a zero period would then be due
                    // again within this batch, and so for ever.)
                    let started = Instant::now();
                    let result = catch_unwind(AssertUnwindSafe(|| (interval.f.borrow_mut())()));
                    if let Err(payload) = result {
                        report_panic("an interval callback", &*payload);
                    }
                    let cleared = self.timers.borrow_mut().rearm(id, interval, started);
                    // Dropped with the table released: the closure's captures may
                    // set or clear timers as they go.
                    if let Some(cleared) = cleared {
                        contained("an interval callback's destructor", || drop(cleared));
                    }
                }
            }
            self.drain_micro();
            if done() {
                break;
            }
        }
    }

    fn run_immediates(&self, done: &dyn Fn() -> bool) {
        // Only those queued before this phase: immediates queued by immediates wait
        // for the next turn, as in Node.js.
        let count = self.immediates.borrow().len();
        for _ in 0..count {
            let Some(f) = self.immediates.borrow_mut().pop_front() else {
                break;
            };
            contained("an immediate", f);
            self.drain_micro();
            if done() {
                break;
            }
        }
    }

    pub(crate) fn has_ready_work(&self) -> bool {
        !self.micro.borrow().is_empty()
            || !self.immediates.borrow().is_empty()
            || self.shared.has_injected.load(Ordering::Acquire)
    }

    /// Something outside the queues may still bring work: a live resolver or loop
    /// handle, or I/O a task waits for; or a task whose waker is held by code the
    /// loop cannot see; or only (as far as the searches saw) another loop's work
    /// that a task or `block_on`'s future waits on.
    fn kept_alive(&self) -> Alive {
        if self.shared.keep_alive.load(Ordering::Acquire) > 0
            || self.shared.reactor.has_armed_sources()
        {
            return Alive::Yes;
        }
        match self.tasks_keep_alive() {
            Alive::No if self.own_waits_moved_elsewhere() => self.tasks_keep_alive(),
            alive => alive,
        }
    }

    /// Whether the tasks keep the loop alive: one with a waker held outside
    /// thenable (`Foreign`), or one waiting on another loop's work (`Elsewhere`).
    fn tasks_keep_alive(&self) -> Alive {
        let mut remote = false;
        for slot in self.tasks.borrow().iter() {
            if let TaskSlot::Taken(entry) = slot {
                if entry.future.is_some() {
                    // Looked at again by the next `Recheck` as another loop's
                    // work is: the first task found so is reason enough.
                    if entry.task.has_unseen_wakers() {
                        return Alive::Foreign;
                    }
                    remote |= entry.task.remote_waits() > 0;
                }
            }
        }
        // `block_on`'s own wakers held outside thenable are its business (it
        // waits for them once the loop is idle); its waits on other loops' work
        // are looked at again as the tasks' are.
        let block_on = self.block_on_task.borrow().as_ref().and_then(Weak::upgrade);
        remote |= block_on.is_some_and(|task| task.remote_waits() > 0);
        if remote {
            Alive::Elsewhere
        } else {
            Alive::No
        }
    }

    /// How long to sleep with nothing queued and no timer: `Some(None)`, for ever,
    /// while something keeps the loop alive that it hears the end of; a while,
    /// while only waits on other loops' work or wakers held outside thenable do
    /// (see [`Recheck`]); `None`: the loop is idle.
    fn idle_timeout(&self) -> Option<Option<Duration>> {
        let mut alive = self.kept_alive();
        if alive.unheard() {
            let now = Instant::now();
            let interval = match self.recheck.get() {
                None => next_recheck(None),
                Some(recheck) if now < recheck.at => return Some(Some(recheck.at - now)),
                Some(recheck) => {
                    self.recheck_remote_waits();
                    alive = self.kept_alive();
                    next_recheck(Some(recheck.interval))
                }
            };
            if alive.unheard() {
                let at = now + interval;
                self.recheck.set(Some(Recheck { at, interval }));
                return Some(Some(interval));
            }
        }
        self.recheck.set(None);
        (alive == Alive::Yes).then_some(None)
    }

    /// A task of this loop waits on `node`; `remote` if that wait counted as one
    /// on another loop's work, not as the loop's own.
    pub(crate) fn record_task_wait(
        &self,
        task: &Arc<TaskWaker>,
        node: Weak<dyn Graph>,
        remote: bool,
    ) {
        let mut waits = self.task_waits.borrow_mut();
        if waits.len() == waits.capacity() {
            waits.retain(wait_may_go_on);
            // A task polled again while it waits on the same promise (woken by
            // something else, in a `select`) records the wait again: once each.
            let mut seen = std::collections::HashSet::new();
            waits.retain(|wait| {
                seen.insert((
                    wait.task.as_ptr(),
                    wait.node.as_ptr().cast::<()>(),
                    wait.remote,
                ))
            });
        }
        waits.push(TaskWait {
            task: Arc::downgrade(task),
            node,
            remote,
        });
    }

    /// The recorded waits counted as another loop's work (`remote`) or not, with
    /// their place in the list, upgraded. No borrow is held during the searches
    /// that follow, and the promises are dropped after the last one: a promise
    /// dropped there may run destructors.
    fn recorded_waits(&self, remote: bool) -> Vec<(usize, Arc<TaskWaker>, Arc<dyn Graph>)> {
        let mut waits = self.task_waits.borrow_mut();
        waits.retain(wait_may_go_on);
        let chosen = waits.iter().enumerate();
        let chosen = chosen.filter(|(_, wait)| wait.remote == remote);
        chosen
            .filter_map(|(i, wait)| Some((i, wait.task.upgrade()?, wait.node.upgrade()?)))
            .collect()
    }

    /// Marks the recorded wait at `i` (as [`recorded_waits`] found it: nothing
    /// the searches or the recounts do records a wait) as `remote` or not.
    ///
    /// [`recorded_waits`]: Self::recorded_waits
    fn mark_wait(&self, i: usize, remote: bool) {
        if let Some(wait) = self.task_waits.borrow_mut().get_mut(i) {
            wait.remote = remote;
        }
    }

    /// Searches again from the waits that counted as this loop's own business,
    /// the loop having run out of work: the chain may have come to follow another
    /// loop's task since (a handler returned one), or the job that takes it
    /// further may sit on another loop's queue (its parent settled there just
    /// before the wait registered). Those now found on another loop's work count
    /// as such from now on, as if the wait had registered so. True if any did.
    fn own_waits_moved_elsewhere(&self) -> bool {
        let own = self.recorded_waits(false);
        if own.is_empty() {
            return false;
        }
        let here = self.shared.id;
        let idle = context::others_idle(here);
        let mut moved = false;
        for (i, task, node) in &own {
            // A wait that is over (its task was woken, or polls something else
            // now) keeps nothing alive.
            if core::settled_by_another_loop(&**node, here, idle) && node.recount_wait(task, true) {
                self.mark_wait(*i, true);
                moved = true;
            }
        }
        moved
    }

    /// Searches again from the waits that counted as another loop's work, the
    /// loop having nothing else to do: those the search now finds on nothing but
    /// this thread's loops' work (the chain moved here) count as the loop's own
    /// from now on, and are searched again as such whenever it runs out of work.
    /// A wait the search cannot see through (a promise settled by a settler of
    /// the library's own, say a `scope`'s) stays counted as another loop's: that
    /// loop may still be about to settle it.
    fn recheck_remote_waits(&self) {
        let remote = self.recorded_waits(true);
        if remote.is_empty() {
            return;
        }
        let here = self.shared.id;
        let idle = context::others_idle(here);
        for (i, task, node) in &remote {
            if core::whose_work(&**node, here, idle) == Whose::Own {
                node.recount_wait(task, false);
                self.mark_wait(*i, false);
            }
        }
    }

    /// `block_on` runs this loop for `task` (`None`: it returned).
    pub(crate) fn set_block_on_task(&self, task: Option<Weak<TaskWaker>>) {
        *self.block_on_task.borrow_mut() = task;
    }

    /// Turns the loop until `done()`, or until nothing could ever bring more work
    /// (`Idle`), or, when `block` is false, until nothing can run right now.
    ///
    /// A turn, as in Node.js: microtasks; due timers (microtasks after each);
    /// wait for I/O or a wake-up, no longer than the next timer; work injected
    /// from other threads; immediates (microtasks after each).
    pub(crate) fn turn_until(&self, done: &dyn Fn() -> bool, block: bool) -> Stop {
        // A poll from another executor runs every orphan; a loop that waits for
        // its own work runs other loops' orphans only when it has nothing to do.
        let all_orphans = !block;
        // Whether a turn that does not block has looked at I/O once.
        let mut looked_at_io = false;
        if block {
            // A `block_on` or `run` that waits on other loops' work looks at it
            // again from the first interval, whatever an earlier one left.
            self.recheck.set(None);
        }
        loop {
            self.take_injected(all_orphans);
            self.drain_micro();
            if done() {
                return Stop::Done;
            }
            self.run_due_timers(done);
            if done() {
                return Stop::Done;
            }
            if !self.has_ready_work() && !all_orphans && self.take_injected(true) {
                continue;
            }
            let mut timeout = if self.has_ready_work() {
                Some(Duration::ZERO)
            } else if let Some(deadline) = self.timers.borrow_mut().next_deadline() {
                Some(deadline.saturating_duration_since(Instant::now()))
            } else {
                match self.idle_timeout() {
                    // Its searches took over a task offered by a thread that
                    // runs no loop (see `claims`).
                    _ if self.has_ready_work() => Some(Duration::ZERO),
                    Some(timeout) => timeout,
                    None => return Stop::Idle,
                }
            };
            if !block && timeout != Some(Duration::ZERO) {
                // A poll from another executor: readiness there already (a wait
                // registered in this very turn, on a socket with data waiting) is
                // taken once without blocking; what comes later, the watcher
                // reports (`Reactor::watch_foreign_waits`).
                if looked_at_io || !self.shared.reactor.has_armed_sources() {
                    return Stop::Stalled;
                }
                looked_at_io = true;
                timeout = Some(Duration::ZERO);
            }
            // With work queued, still look at I/O (without blocking) if some task
            // waits for it, so that busy loops do not starve sockets.
            if timeout != Some(Duration::ZERO) || self.shared.reactor.has_armed_sources() {
                self.wait_for_events(timeout);
            }
            self.take_injected(all_orphans);
            self.drain_micro();
            if done() {
                return Stop::Done;
            }
            self.run_immediates(done);
            if done() {
                return Stop::Done;
            }
        }
    }

    /// Blocks until another thread wakes the loop, or `timeout` passed.
    pub(crate) fn wait_for_wake_up(&self, timeout: Option<Duration>) {
        if !self.has_ready_work() {
            self.wait_for_events(timeout);
        }
    }

    /// Waits for I/O or a wake-up, no longer than `timeout`. A wait that may
    /// block, on a thread of the blocking pool, frees the job's place in the
    /// pool's bound meanwhile: what the loop waits for may be more pool work.
    fn wait_for_events(&self, timeout: Option<Duration>) {
        if timeout == Some(Duration::ZERO) {
            self.shared.reactor.wait(timeout);
        } else {
            blocking::waiting_in_a_loop(|| self.shared.reactor.wait(timeout));
        }
    }

    pub(crate) fn live_task_count(&self) -> usize {
        self.live_tasks.get()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The rejections still tracked met no drain's end (made outside any, or
        // on a thread whose loop never turned again): reported now, as that end
        // would have, before the teardown below (whose own rejections are
        // nobody's to handle) and with the loop whole, as Node.js reports before
        // its `exit` event. Not those whose promise a handle still holds: they
        // may yet be handled, on another loop of this thread or on a thread
        // they were handed to, and are left to the loop free functions use now
        // (its drain's end, or its drop, decides), or, at the thread's end, to
        // whoever holds them.
        let suspects = std::mem::take(self.unhandled.get_mut());
        for node in &suspects {
            if let Some(error) = node.unhandled() {
                if node.is_held() {
                    context::track_unhandled(node.clone());
                } else {
                    context::report_unhandled(&error);
                }
            }
        }
        let injected = {
            let mut queue = self.shared.injected.lock();
            self.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut *queue)
        };
        // Everything still queued is abandoned: promises waiting on it settle as
        // broken, handlers do not run, futures are dropped (running destructors).
        // One job at a time: a destructor that panics must not skip the jobs
        // after it, whose promises would then stay pending for ever.
        context::with_graveyard(|| {
            let micro = std::mem::take(self.micro.get_mut());
            for job in micro {
                contained("an abandoned job", || job.abandon());
            }
            for job in injected {
                contained("an abandoned job", || Job::from(job).abandon());
            }
            // Callbacks one at a time too: a capture that panics when dropped must
            // not leave the sleeps and tasks after it pending.
            for immediate in std::mem::take(self.immediates.get_mut()) {
                contained("an abandoned immediate's destructor", || drop(immediate));
            }
            for timer in self.timers.get_mut().take_all() {
                match timer {
                    Callback::Fire(target) => {
                        contained("an abandoned timer", || target.abandon());
                    }
                    callback => {
                        contained("an abandoned timer's destructor", || drop(callback));
                    }
                }
            }
            // One at a time: a destructor that panics must not unwind out of the
            // loop's drop, nor skip the tasks after it.
            for slot in std::mem::take(self.tasks.get_mut()) {
                if let TaskSlot::Taken(entry) = &slot {
                    entry.task.end();
                }
                contained("a task's destructor", || drop(slot));
            }
            // Perhaps their last references: what they hold is dropped here.
            for node in suspects {
                contained("an unhandled rejection's destructor", || drop(node));
            }
        });
        let orphans_abandoned = self.orphans_taken.replace(0);
        if orphans_abandoned > 0 {
            orphans::finished(orphans_abandoned);
        }
        if self.shared.is_kept_alive() {
            // Its live resolvers no longer count as undriven ones for other loops'
            // `block_on`: one that waits only for them must re-check.
            orphans::notify_driven_loops();
        }
        orphans::wake_foreign_pollers();
    }
}

/// A recorded task wait whose task and promise both still exist.
fn wait_may_go_on(wait: &TaskWait) -> bool {
    wait.task.strong_count() > 0 && wait.node.strong_count() > 0
}

/// Drops what a cancelled task left, as a cancellation; a destructor that panics
/// is reported, not unwound into the loop or the caller of `cancel`.
fn drop_cancelled<T>(value: T) {
    contained("a cancelled task's destructor", || {
        core::run_cancellation(|| drop(value))
    });
}

/// Abandons one reaction of a batch; a panic is reported, and the rest go on.
fn abandon_contained(job: Arc<dyn Runnable>) {
    contained("an abandoned reaction", || job.abandon());
}

/// Runs user code the loop (or a settling) must survive: a panic is reported, not
/// unwound into the caller.
pub(crate) fn contained(what: &str, f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        report_panic(what, &*payload);
    }
}

pub(crate) fn report_panic(what: &str, payload: &(dyn std::any::Any + Send)) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    // `eprintln!` (which a test harness captures, unlike a write to stderr)
    // panics if stderr fails; this runs in destructors too (a loop's, at thread
    // exit among others), where an unwinding panic aborts.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        eprintln!("thenable: {what} panicked: {message} (the loop goes on)")
    }));
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{sleep, spawn_local, Error, EventLoop};

    #[test]
    fn the_waits_a_task_is_done_with_are_dropped_as_the_list_grows() {
        let event_loop = EventLoop::new();
        let waits = 1_000;
        let task = spawn_local(async move {
            // Each wait on a sleep counts as the loop's own business, and is
            // recorded for the check made when the loop runs out of work.
            for _ in 0..waits {
                sleep(Duration::ZERO).await?;
            }
            Ok::<_, Error>(())
        });
        event_loop.block_on(task).unwrap();
        let recorded = event_loop.local.task_waits.borrow().len();
        assert!(recorded > 0, "the waits were recorded");
        assert!(recorded < 64, "{recorded} of {waits} waits still recorded");
    }

    #[test]
    fn polling_leaves_a_task_s_count_as_it_was() {
        // Each poll reads the task's reference count (its table entry's) and
        // clones and drops its waker, as futures do: a poll that took or gave a
        // count would show as counts that drift from one poll to the next.
        let event_loop = EventLoop::new();
        let counts = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = counts.clone();
        let mut left = 100;
        drop(spawn_local(std::future::poll_fn(move |cx| {
            let count = super::context::with_running(|local| {
                let tasks = local.tasks.borrow();
                tasks.iter().find_map(|slot| match slot {
                    super::TaskSlot::Taken(entry) => Some(Arc::strong_count(&entry.task)),
                    super::TaskSlot::Free { .. } => None,
                })
            });
            seen.borrow_mut().push(count.flatten());
            drop(cx.waker().clone());
            left -= 1;
            if left == 0 {
                return std::task::Poll::Ready(Ok::<_, Error>(()));
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        })));
        event_loop.run().unwrap();
        let counts = counts.borrow();
        assert_eq!(counts.len(), 100);
        // The table's and the one the poll runs with: the job's, handed on.
        assert!(counts.iter().all(|&c| c == Some(2)), "{counts:?}");
    }

    #[test]
    fn a_wait_a_task_polls_again_and_again_is_recorded_once() {
        let event_loop = EventLoop::new();
        let polls = 1_000;
        let task = spawn_local(async move {
            // Polled again and again while it waits on the same promise, as a
            // `select` with a busier branch would be.
            let mut hour = std::pin::pin!(sleep(Duration::from_secs(3600)));
            let mut left = polls;
            std::future::poll_fn(move |cx| {
                let _ = hour.as_mut().poll(cx);
                left -= 1;
                if left == 0 {
                    return std::task::Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
            .await;
            Ok::<_, Error>(())
        });
        let recorded = {
            let local = &event_loop.local;
            event_loop.block_on(task).unwrap();
            local.task_waits.borrow().len()
        };
        assert!(
            recorded < 64,
            "{recorded} records of one wait polled {polls} times"
        );
    }
}
