//! Tasks: futures driven by a loop, and the wakers that put them back on its queue.
//!
//! A task's waker pushes the task on its loop's microtask queue (directly on the
//! loop thread, through the injector from any other thread), at most once until the
//! task is polled again. The wrapper built by [`output_future`] settles the task's
//! promise with the future's output, with a panic error if it panicked, and as
//! broken if it is dropped unfinished. This module never polls anything itself: the
//! loop does.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake};

use pin_project_lite::pin_project;

use crate::error::Error;
use crate::event_loop::context::{self, LoopRef};
use crate::promise::core::{Graph, Link, Node, Settling, Status};
use crate::promise::{Settled, Settler};

/// The waker of one task.
pub(crate) struct TaskWaker {
    pub(crate) home: LoopRef,
    pub(crate) key: usize,
    /// Set while the task sits on a queue, so wakes do not queue it twice.
    pub(crate) scheduled: AtomicBool,
    /// Clones of this waker held by our own promises (see [`TaskRef`]): the rest of
    /// the clones belong to code the loop cannot see, which might wake it any time.
    internal: AtomicUsize,
    /// Clones held by our own promises for waits that count as another loop's work
    /// ([`TaskRef::count_as_remote`]): foreign, until the loop finds them on its
    /// own work after all. A `u32`, which fits beside the flags: a word would
    /// make the waker an 80-byte allocation (a 96-byte chunk), not a 72-byte one.
    remote: AtomicU32,
    /// The promise this task settles, for chaining-cycle detection.
    output: Option<Weak<dyn Graph>>,
    /// An `await` of an already settled promise yielded during the last poll (see
    /// [`TaskWaker::settled_await_may_proceed`]). This and the next two fields are
    /// touched only by the poll of the task, so they are loaded and stored, never
    /// swapped: a swap is a locked instruction (8 to 11 ns on this VM).
    yield_requested: AtomicBool,
    /// The current poll is the one that follows such a yield.
    yield_granted: AtomicBool,
    /// The promise (its node's key) this task last registered to wait on: when that
    /// one is found settled, the task was woken by it, and it must not yield.
    awaiting: AtomicUsize,
    /// The task has ended (finished, cancelled, or its loop dropped it; for
    /// `block_on`'s, the call returned): it is never polled again, so a promise
    /// that still holds this waker may drop it. A promise cannot tell which of
    /// its handles a task polled, so the drop of a handle does not take the
    /// task's waker away (another handle polled by the same task shares its
    /// entry); this flag is how the waiter lists of long-lived promises stay
    /// within the tasks that are alive. It sits beside the other flags: the
    /// waker stays a 72-byte allocation.
    ended: AtomicBool,
}

/// `Arc` references the loop itself keeps to every task waker: the one in the task
/// table.
const LOOP_REFS: usize = 1;

impl TaskWaker {
    pub(crate) fn new(home: LoopRef, key: usize, output: Option<Weak<dyn Graph>>) -> Self {
        TaskWaker {
            home,
            key,
            scheduled: AtomicBool::new(true),
            internal: AtomicUsize::new(0),
            remote: AtomicU32::new(0),
            output,
            yield_requested: AtomicBool::new(false),
            yield_granted: AtomicBool::new(false),
            awaiting: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// The task will never be polled again (see [`TaskWaker::ended`]).
    pub(crate) fn end(&self) {
        // Relaxed: a promise that reads it late only keeps the waker a while
        // longer, and nothing else is published with it.
        self.ended.store(true, Ordering::Relaxed);
    }

    /// This task now waits on the promise whose node has `key`.
    pub(crate) fn waits_on(&self, key: usize) {
        self.awaiting.store(key, Ordering::Relaxed);
    }

    /// A poll of the task's future begins: it is granted the yield an `await` of
    /// an already settled promise asked for in the previous poll.
    pub(crate) fn begin_poll(&self) {
        let granted = self.yield_requested.load(Ordering::Relaxed);
        self.yield_requested.store(false, Ordering::Relaxed);
        self.yield_granted.store(granted, Ordering::Relaxed);
    }

    /// The poll [`begin_poll`](Self::begin_poll) began is over.
    pub(crate) fn end_poll(&self) {
        self.yield_granted.store(false, Ordering::Relaxed);
    }

    /// Whether this task, awaiting the settled promise whose node has `key`, may
    /// take its outcome now. In JavaScript an `await` always costs a microtask
    /// tick, even on a settled promise; so when the task did not wait on it before,
    /// the first time it asks to be polled again from the back of the queue (and
    /// says no), and in that next poll it may.
    pub(crate) fn settled_await_may_proceed(self: &Arc<Self>, key: usize) -> bool {
        if self.awaiting.load(Ordering::Relaxed) == key {
            self.awaiting.store(0, Ordering::Relaxed);
            // It waited on this promise and was woken because it settled: the
            // tick was the wake-up.
            return true;
        }
        if self.key == usize::MAX {
            // `block_on`'s own future is polled by `block_on`, not from the queue:
            // a yield would not be a tick.
            return true;
        }
        if self.yield_granted.load(Ordering::Relaxed) {
            self.yield_granted.store(false, Ordering::Relaxed);
            return true;
        }
        self.yield_requested.store(true, Ordering::Relaxed);
        self.wake_by_ref();
        false
    }

    /// True when code outside thenable's promises holds this waker, or one of our
    /// promises whose wait counts as another loop's work, so the task may be woken
    /// by something the loop does not know about.
    pub(crate) fn has_foreign_wakers(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) > LOOP_REFS + self.internal.load(Ordering::Acquire)
    }

    /// [`has_foreign_wakers`](Self::has_foreign_wakers), not counting the waits on
    /// another loop's work: code outside thenable's promises holds this waker, or
    /// one of our promises whose live resolver may be used by another thread.
    pub(crate) fn has_unseen_wakers(self: &Arc<Self>) -> bool {
        let ours = self.internal.load(Ordering::Acquire) + self.remote_waits() as usize;
        Arc::strong_count(self) > LOOP_REFS + ours
    }

    /// How many of our promises hold this waker for a wait that counts as another
    /// loop's work (see [`TaskRef::count_as_remote`]).
    pub(crate) fn remote_waits(&self) -> u32 {
        self.remote.load(Ordering::Acquire)
    }
}

impl Wake for TaskWaker {
    /// Hands its reference on to the queue, where `wake_by_ref` needs a clone.
    fn wake(self: Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            context::schedule_task(self);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            context::schedule_task(self.clone());
        }
    }
}

/// A task's waker stored by one of our promises.
pub(crate) struct TaskRef {
    /// Taken only by [`wake`](Self::wake), which consumes the `TaskRef`.
    task: Option<Arc<TaskWaker>>,
    counted: Counted,
}

/// How a [`TaskRef`] counts for its loop's deadlock check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// The wait is the loop's own business (`TaskWaker::internal`).
    Internal,
    /// The wait is on another loop's work, as far as the last search saw
    /// (`TaskWaker::remote`).
    Remote,
    /// Foreign for good: the promise has a live resolver.
    Foreign,
}

impl TaskRef {
    /// `internal` is false when the promise has a live resolver that another thread
    /// may use: then the wait is not a deadlock, and the loop must stay alive.
    pub(crate) fn new(task: Arc<TaskWaker>, internal: bool) -> Self {
        let counted = if internal {
            task.internal.fetch_add(1, Ordering::AcqRel);
            Counted::Internal
        } else {
            Counted::Foreign
        };
        TaskRef {
            task: Some(task),
            counted,
        }
    }

    fn task(&self) -> &Arc<TaskWaker> {
        self.task.as_ref().expect("only `wake` takes the task")
    }

    pub(crate) fn same_task(&self, other: &TaskRef) -> bool {
        self.is_of(other.task())
    }

    pub(crate) fn is_of(&self, task: &Arc<TaskWaker>) -> bool {
        Arc::ptr_eq(self.task(), task)
    }

    /// The task has ended: waking it would do nothing (see [`TaskWaker::ended`]).
    pub(crate) fn task_ended(&self) -> bool {
        self.task
            .as_ref()
            .is_some_and(|task| task.ended.load(Ordering::Relaxed))
    }

    /// Counts as a wait on another loop's work instead of an internal waker: what
    /// the task waits on may be settled by another loop.
    pub(crate) fn count_as_remote(&mut self) {
        if self.counted == Counted::Internal {
            self.counted = Counted::Remote;
            let task = self.task();
            task.remote.fetch_add(1, Ordering::AcqRel);
            task.internal.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counts as an internal waker again, after [`count_as_remote`]: what the task
    /// waits on has come to be its own loop's work.
    ///
    /// [`count_as_remote`]: Self::count_as_remote
    pub(crate) fn count_as_own(&mut self) {
        if self.counted == Counted::Remote {
            self.counted = Counted::Internal;
            let task = self.task();
            task.internal.fetch_add(1, Ordering::AcqRel);
            task.remote.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn output(&self) -> Option<Arc<dyn Graph>> {
        self.task().output.as_ref()?.upgrade()
    }

    /// Wakes the task, handing it this reference (no count is taken or dropped
    /// for the queue).
    pub(crate) fn wake(mut self) {
        let task = self.release().expect("only `wake` takes the task");
        if !task.scheduled.swap(true, Ordering::AcqRel) {
            context::schedule_task(task);
        }
    }

    /// Stops counting as an internal waker, and gives the task back.
    fn release(&mut self) -> Option<Arc<TaskWaker>> {
        let task = self.task.take()?;
        match self.counted {
            Counted::Internal => {
                task.internal.fetch_sub(1, Ordering::AcqRel);
            }
            Counted::Remote => {
                task.remote.fetch_sub(1, Ordering::AcqRel);
            }
            Counted::Foreign => {}
        }
        Some(task)
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        self.release();
    }
}

pin_project! {
    /// `future`, with a panic turned into `Err(from_error(panic))`; see
    /// [`catch_panics`].
    pub(crate) struct CatchPanics<F, C> {
        #[pin]
        future: F,
        from_error: C,
    }
}

/// Polls `future`, turning a panic into `Err(from_error(panic))`.
pub(crate) fn catch_panics<F, C>(future: F, from_error: C) -> CatchPanics<F, C> {
    CatchPanics { future, from_error }
}

impl<F, C, T, E> Future for CatchPanics<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Fn(Error) -> E,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let mut this = self.project();
        match catch_unwind(AssertUnwindSafe(|| this.future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err((this.from_error)(Error::panic(payload)))),
        }
    }
}

pin_project! {
    /// The future a task runs: `future`, with its output (or panic) settling the
    /// task's promise. The settler is held from the start, so dropping the task at
    /// any point drops it, and the promise settles as broken.
    ///
    /// Written out rather than as an `async fn`: an `async fn` keeps its argument
    /// and the futures it awaits in separate places, so wrapping a task's future
    /// that way tripled its size (a 4 KiB buffer in a task cost 12 KiB).
    pub(crate) struct TaskFuture<F, T, E, L> {
        #[pin]
        stage: Stage<F>,
        settler: Option<Settler<T, E, L>>,
    }
}

pin_project! {
    #[project = StageProjection]
    enum Stage<F> {
        Running { #[pin] future: F },
        Done,
    }
}

/// `future` as a task's future, settling `settler`'s promise with its output.
pub(crate) fn output_future<F, T, E, L>(
    future: F,
    settler: Settler<T, E, L>,
) -> TaskFuture<F, T, E, L> {
    TaskFuture {
        stage: Stage::Running { future },
        settler: Some(settler),
    }
}

/// What a task's future ends with, and how it settles the task's promise: a
/// `Result` (a user's task), or, for the library's own tasks, a [`Settled`],
/// whose rejection may be quiet: cancellation travelling on (see
/// `core::Input::Quiet`), which an `await` would have turned into an ordinary
/// rejection of the task's own.
pub(crate) trait TaskOutput<T, E> {
    fn settle_task<L: Link<T, E>>(self, settler: &mut Settler<T, E, L>);
}

impl<T: Send + 'static, E: Send + 'static> TaskOutput<T, E> for Result<T, E> {
    #[inline]
    fn settle_task<L: Link<T, E>>(self, settler: &mut Settler<T, E, L>) {
        settler.settle(self);
    }
}

/// A cancellation passed on (an input of the task cancelled elsewhere) rejects
/// quietly with [`Error::cancelled`], as it does for `all`.
impl<T: Send + 'static, E: Send + 'static> TaskOutput<T, E> for Settled<T, E> {
    fn settle_task<L: Link<T, E>>(self, settler: &mut Settler<T, E, L>) {
        match self {
            Settled::Fulfilled(value) => settler.settle(Ok(value)),
            Settled::Rejected(error) => settler.settle(Err(error)),
            Settled::Quiet(error) => settler.settle_as(Err(error), true),
            Settled::Cancelled => {
                let cancelled = settler.fail(Error::cancelled());
                settler.settle_as(Err(cancelled), true);
            }
        }
    }
}

impl<F, T, E, L> Future for TaskFuture<F, T, E, L>
where
    F: Future,
    F::Output: TaskOutput<T, E>,
    T: Send + 'static,
    E: Send + 'static,
    L: Link<T, E>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let StageProjection::Running { future } = this.stage.as_mut().project() else {
            return Poll::Ready(());
        };
        let mut output = match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(payload) => Err(Error::panic(payload)),
        };
        // The future is dropped before its promise settles, as an `async` block's
        // locals are before it returns; a destructor that panics rejects it.
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| this.stage.set(Stage::Done))) {
            output = Err(Error::panic(payload));
        }
        if let Some(mut settler) = this.settler.take() {
            match output {
                Ok(output) => output.settle_task(&mut settler),
                Err(panic) => {
                    let panic = settler.fail(panic);
                    settler.settle(Err(panic));
                }
            }
        }
        Poll::Ready(())
    }
}

/// The link of a task's promise: the task whose future is dropped if the promise is
/// cancelled. Set once the loop has made the task (later than the promise, when it
/// is spawned from another thread).
pub(crate) struct TaskLink {
    /// The task, from [`Weak::into_raw`], or null before the loop has made it and
    /// once the cancellation took it. An atomic rather than a lock around an
    /// `Option`: with the loop's id beside it, a lock made a task's promise a
    /// 96-byte chunk, not an 80-byte one (`tasks`: 377 → 392 MiB, 577 → 597 ms).
    task: AtomicPtr<TaskWaker>,
    /// The loop that runs the task, known before the task exists: a wait on the
    /// promise from another loop is not that loop's deadlock. With [`OFFERED`]
    /// set, the default loop the task was spawned for, while the task is
    /// offered to other loops (see `event_loop::claims`); the loop that takes
    /// it writes its own id when it makes the task.
    loop_id: AtomicU64,
}

/// The bit of [`TaskLink::loop_id`] (and of a sleep's) that says the work is
/// offered to other loops: loop ids are counted from 1, and never reach it.
pub(crate) const OFFERED: u64 = 1 << 63;

impl TaskLink {
    pub(crate) fn new(loop_id: u64) -> TaskLink {
        TaskLink {
            task: AtomicPtr::new(std::ptr::null_mut()),
            loop_id: AtomicU64::new(loop_id),
        }
    }

    /// The link of a task spawned for the default loop `loop_id` and offered to
    /// other loops until one of them, or that loop, makes it.
    pub(crate) fn offered(loop_id: u64) -> TaskLink {
        TaskLink::new(loop_id | OFFERED)
    }

    /// Names the task of `node`'s promise; cancels it at once if the promise was
    /// cancelled before the task existed.
    pub(crate) fn attach<T, E>(node: &Node<T, E, TaskLink>, task: &Arc<TaskWaker>) {
        let raw = Weak::into_raw(Arc::downgrade(task)).cast_mut();
        let before = node.link.task.swap(raw, Ordering::AcqRel);
        debug_assert!(before.is_null(), "a task is attached once");
        // Where it was offered, the loop that took it (only there does it differ).
        if node.link.loop_id.load(Ordering::Relaxed) != task.home.id {
            node.link.loop_id.store(task.home.id, Ordering::Release);
        }
        if node.core.is_cancelled() {
            if let Some(task) = node.link.take() {
                context::cancel_task(&task);
            }
        }
    }

    /// The task, once: whoever swaps the pointer out owns the reference.
    fn take(&self) -> Option<Weak<TaskWaker>> {
        Self::reclaim(self.task.swap(std::ptr::null_mut(), Ordering::AcqRel))
    }

    /// The reference that a pointer taken out of `task` (replaced with null)
    /// stands for.
    fn reclaim(raw: *mut TaskWaker) -> Option<Weak<TaskWaker>> {
        // SAFETY: a non-null pointer in `task` came from `Weak::into_raw` in
        // `attach`, and whoever replaced it with null (a swap, or the drop's
        // exclusive access) is the only one to see it, so this takes back that
        // one reference exactly once.
        #[allow(unsafe_code)]
        (!raw.is_null()).then(|| unsafe { Weak::from_raw(raw) })
    }
}

impl Drop for TaskLink {
    /// Through `&mut`: no swap (a locked instruction) is needed to read it.
    fn drop(&mut self) {
        let raw = std::mem::replace(self.task.get_mut(), std::ptr::null_mut());
        drop(Self::reclaim(raw));
    }
}

impl<T: Send + 'static, E: Send + 'static> Link<T, E> for TaskLink {
    fn on_cancel(node: &Arc<Node<T, E, Self>>) {
        if let Some(task) = node.link.take() {
            context::cancel_task(&task);
        } else if node.link.loop_id.load(Ordering::Acquire) & OFFERED != 0 {
            // Offered, not made yet: its future is in the offer, and is dropped
            // now, as a made task's is (else not before its default loop ran, or
            // its thread ended). One that took the offer first makes the task,
            // which `attach` finds cancelled.
            let key = crate::event_loop::claims::key_of(&**node);
            if let Some(offer) = crate::event_loop::claims::take(key) {
                crate::event_loop::contained("a cancelled task's destructor", || {
                    crate::promise::core::run_cancellation(|| drop(offer))
                });
            }
        }
    }

    fn settling(node: &Node<T, E, Self>) -> Settling {
        match node.core.status() {
            Status::Pending => match node.link.loop_id.load(Ordering::Acquire) {
                id if id & OFFERED != 0 => Settling::Offered {
                    home: id & !OFFERED,
                    key: crate::event_loop::claims::key_of(node),
                    task: true,
                },
                id => Settling::Loop(id),
            },
            _ => Settling::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promise::{internal, internal_with};

    #[test]
    fn a_task_link_gives_its_task_back_once_and_releases_it_when_dropped() {
        let local = crate::event_loop::Local::new();
        let task = Arc::new(TaskWaker::new(local.shared.clone(), 0, None));
        let (_promise, settler) = internal_with::<u8, Error, _>(TaskLink::new(local.shared.id));
        TaskLink::attach(settler.node(), &task);
        assert_eq!(Arc::weak_count(&task), 1, "attaching keeps one reference");
        let taken = settler.node().link.take().expect("attached");
        assert!(taken.ptr_eq(&Arc::downgrade(&task)));
        assert!(settler.node().link.take().is_none(), "taken twice");
        drop(taken);
        assert_eq!(Arc::weak_count(&task), 0);

        let (promise, settler) = internal_with::<u8, Error, _>(TaskLink::new(local.shared.id));
        TaskLink::attach(settler.node(), &task);
        drop((promise, settler));
        assert_eq!(
            Arc::weak_count(&task),
            0,
            "a dropped link releases its task"
        );
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_task_waker_is_a_72_byte_allocation() {
        // With its `Arc`'s two counts: 72 bytes take an 80-byte chunk of the
        // allocator, 80 a 96-byte one (see `remote`).
        assert!(std::mem::size_of::<TaskWaker>() + 16 <= 72);
    }

    #[test]
    fn a_task_costs_its_future_plus_three_words() {
        let big = async {
            let buffer = [7u8; 4096];
            crate::Promise::<u8>::resolved(1).await?;
            Ok::<_, Error>(buffer[100])
        };
        let future_size = std::mem::size_of_val(&big);
        let (_output, settler) = internal::<u8, Error>();
        let task = output_future(big, settler);
        let word = std::mem::size_of::<usize>();
        assert!(
            // The settler, and the tag of "running or done" with its padding.
            std::mem::size_of_val(&task) <= future_size + 3 * word,
            "a {future_size}-byte future became a {}-byte task",
            std::mem::size_of_val(&task)
        );
        let guarded = catch_panics(async { Ok::<u8, Error>(1) }, |e: Error| e);
        assert!(std::mem::size_of_val(&guarded) <= 2 * word);
    }
}
