//! One loop's queues and the algorithm of a turn.
//!
//! `Local` is the loop-thread half (microtasks, immediates, timers, tasks: may hold
//! `!Send` callbacks); `Shared` is the half any thread may touch (the injector, the
//! reactor to wake the loop, the keep-alive count). The turn runs callbacks with no
//! `RefCell` borrow held, so a callback may queue more work of any kind.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{context, orphans};
use crate::promise::core::{self, Graph, Runnable};
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
            Job::Batch(jobs) => jobs.into_iter().for_each(|job| job.abandon()),
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
    /// Live resolvers homed here and live `LoopHandle`s: each may bring work later.
    keep_alive: AtomicUsize,
    closed: AtomicBool,
    /// A thread is inside `run`, `block_on` or a poll that drives this loop.
    driven: AtomicBool,
}

impl Shared {
    /// Queues work from any thread and wakes the loop.
    pub(crate) fn inject(&self, job: SendJob) {
        // Checked under the queue's lock, which the loop's drop holds to close it:
        // a job is either in the queue the drop abandons, or refused here.
        let refused = {
            let mut injected = self.injected.lock();
            if self.closed.load(Ordering::Acquire) {
                Some(job)
            } else {
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
            return;
        }
        self.has_injected.store(true, Ordering::Release);
        self.reactor.notify();
        // Pairs with the fence in `orphans::add_foreign_poller`: a poll from another
        // executor that has just stopped driving this loop either is seen here as
        // not driving it, or sees this job when it registers its waker.
        std::sync::atomic::fence(Ordering::SeqCst);
        if !self.is_driven() {
            // Its thread may be awaiting through another executor: bring it back.
            orphans::wake_foreign_pollers();
        }
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

    pub(crate) fn is_driven(&self) -> bool {
        self.driven.load(Ordering::Acquire)
    }

    pub(crate) fn set_driven(&self, driven: bool) {
        self.driven.store(driven, Ordering::Release);
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
    /// Promises this loop's tasks (and `block_on`'s future) wait on, which counted
    /// as its own business when the waits registered: searched again when the loop
    /// runs out of work (see `context::waits_elsewhere`). Those whose task or
    /// promise is gone are dropped before the list grows.
    task_waits: RefCell<Vec<TaskWait>>,
}

/// A task, and a promise it waits on.
type TaskWait = (Weak<TaskWaker>, Weak<dyn Graph>);

impl Local {
    pub(crate) fn new() -> Local {
        let id = NEXT_LOOP_ID.fetch_add(1, Ordering::Relaxed);
        let reactor = Reactor::new().expect("thenable: cannot create the OS poller");
        let shared = Arc::new(Shared {
            id,
            reactor,
            injected: Mutex::new(Vec::new()),
            has_injected: AtomicBool::new(false),
            keep_alive: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            driven: AtomicBool::new(false),
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
                return;
            }
        }
        self.push(Job::Poll(task));
    }

    fn poll_task(&self, task: Arc<TaskWaker>) {
        let taken = entry_of(&mut self.tasks.borrow_mut(), &task).and_then(|e| e.future.take());
        let Some(mut future) = taken else {
            return;
        };
        task.scheduled.store(false, Ordering::Release);
        let waker = Waker::from(task.clone());
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
    /// the microtask queue drains).
    fn drain_micro(&self) {
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

    /// Moves work sent by other threads, and orphan reactions, to the microtasks:
    /// the orphans meant for this loop, or, with `all_orphans`, every one (see
    /// `orphans::take`). True if it moved anything.
    fn take_injected(&self, all_orphans: bool) -> bool {
        let mut micro = self.micro.borrow_mut();
        let before = micro.len();
        if self.shared.has_injected.swap(false, Ordering::AcqRel) {
            let injected = std::mem::take(&mut *self.shared.injected.lock());
            micro.extend(injected.into_iter().map(Job::from));
        }
        if let Some(orphans) = orphans::take(&self.shared, all_orphans) {
            self.orphans_taken
                .set(self.orphans_taken.get() + orphans.len());
            micro.extend(orphans.into_iter().map(Job::Run));
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
                    let result = catch_unwind(AssertUnwindSafe(|| (interval.f.borrow_mut())()));
                    if let Err(payload) = result {
                        report_panic("an interval callback", &*payload);
                    }
                    let cleared = self.timers.borrow_mut().rearm(id, interval, Instant::now());
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
    /// handle, I/O a task waits for, or a task whose waker is held by code the loop
    /// cannot see.
    fn kept_alive(&self) -> bool {
        if self.shared.keep_alive.load(Ordering::Acquire) > 0
            || self.shared.reactor.has_armed_sources()
        {
            return true;
        }
        let foreign = self.tasks.borrow().iter().any(|slot| match slot {
            TaskSlot::Taken(entry) => entry.future.is_some() && entry.task.has_foreign_wakers(),
            TaskSlot::Free { .. } => false,
        });
        foreign || self.task_waits_elsewhere()
    }

    /// A task of this loop waits on `node`, a wait that counted as the loop's own.
    pub(crate) fn record_task_wait(&self, task: &Arc<TaskWaker>, node: Weak<dyn Graph>) {
        let mut waits = self.task_waits.borrow_mut();
        if waits.len() == waits.capacity() {
            waits.retain(wait_may_go_on);
            // A task polled again while it waits on the same promise (woken by
            // something else, in a `select`) records the wait again: once each.
            let mut seen = std::collections::HashSet::new();
            waits.retain(|(task, node)| seen.insert((task.as_ptr(), node.as_ptr().cast::<()>())));
        }
        waits.push((Arc::downgrade(task), node));
    }

    fn task_waits_elsewhere(&self) -> bool {
        let waits: Vec<Weak<dyn Graph>> = {
            let mut waits = self.task_waits.borrow_mut();
            waits.retain(wait_may_go_on);
            waits.iter().map(|(_, node)| node.clone()).collect()
        };
        context::waits_elsewhere(self.shared.id, &waits)
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
            let timeout = if self.has_ready_work() {
                Some(Duration::ZERO)
            } else if let Some(deadline) = self.timers.borrow_mut().next_deadline() {
                Some(deadline.saturating_duration_since(Instant::now()))
            } else if self.kept_alive() {
                None
            } else {
                return Stop::Idle;
            };
            if !block && timeout != Some(Duration::ZERO) {
                return Stop::Stalled;
            }
            // With work queued, still look at I/O (without blocking) if some task
            // waits for it, so that busy loops do not starve sockets.
            if timeout != Some(Duration::ZERO) || self.shared.reactor.has_armed_sources() {
                self.shared.reactor.wait(timeout);
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

    /// Blocks until another thread wakes the loop.
    pub(crate) fn wait_for_wake_up(&self) {
        if !self.has_ready_work() {
            self.shared.reactor.wait(None);
        }
    }

    pub(crate) fn live_task_count(&self) -> usize {
        self.live_tasks.get()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let injected = {
            let mut queue = self.shared.injected.lock();
            self.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut *queue)
        };
        // Everything still queued is abandoned: promises waiting on it settle as
        // broken, handlers do not run, futures are dropped (running destructors).
        context::with_graveyard(|| {
            let micro = std::mem::take(self.micro.get_mut());
            micro.into_iter().for_each(Job::abandon);
            injected
                .into_iter()
                .for_each(|job| Job::from(job).abandon());
            drop(std::mem::take(self.immediates.get_mut()));
            for timer in self.timers.get_mut().take_all() {
                if let Callback::Fire(target) = timer {
                    target.abandon();
                }
            }
            // One at a time: a destructor that panics must not unwind out of the
            // loop's drop, nor skip the tasks after it.
            for slot in std::mem::take(self.tasks.get_mut()) {
                contained("a task's destructor", || drop(slot));
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
fn wait_may_go_on((task, node): &TaskWait) -> bool {
    task.strong_count() > 0 && node.strong_count() > 0
}

/// Drops what a cancelled task left, as a cancellation; a destructor that panics
/// is reported, not unwound into the loop or the caller of `cancel`.
fn drop_cancelled<T>(value: T) {
    contained("a cancelled task's destructor", || {
        core::run_cancellation(|| drop(value))
    });
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
    eprintln!("thenable: {what} panicked: {message} (the loop goes on)");
}

#[cfg(test)]
mod tests {
    use std::future::Future;
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
