//! The state machine of one promise: pending with a list of waiters, then settled
//! (fulfilled, rejected or cancelled) exactly once.
//!
//! A [`Core`] owns the outcome and decides who receives it: consumers (`then`
//! children, children following the promise their handler returned, adoption
//! forwarders, combinators' collectors) get it moved or cloned and are handed to
//! the scheduler; wakers are woken and take it when polled. It also counts
//! consumers, so that cancellation travels upstream only when nobody else wants the
//! value. It never runs a handler itself and never calls a reaction inline, so
//! depth never turns into stack.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::thread::LocalKey;

use crate::error::Error;
use crate::event_loop::claims;
use crate::event_loop::context::{self, LoopRef};
use crate::event_loop::Job;
use crate::task::{TaskRef, TaskWaker};

/// The lock around the state of links (a `then` link's slot, a root's
/// cancellation hooks, a task's link) and of combinators (a node's own state has
/// the same kind of lock, built into [`Core`]). Its critical
/// sections are a few instructions of the library's own code, and it is almost
/// never contended (a settle from another thread), so it spins: unlocking is a
/// plain store where `parking_lot` needs a compare-exchange. A thread that does
/// meet contention yields its time slice while it waits.
pub(crate) type Lock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// Something queued on a loop's microtask queue.
pub(crate) trait Runnable: Send + Sync {
    /// Runs the job (a promise reaction) on the loop thread.
    fn run(self: Arc<Self>);
    /// The loop is gone: settle whatever depends on this job as broken, without
    /// running user code.
    fn abandon(self: Arc<Self>);
}

/// One node of the promise graph as seen without its types: for chaining-cycle
/// detection, unhandled-rejection reports and upstream cancellation.
pub(crate) trait Graph: Send + Sync {
    /// Identity of the node.
    fn key(&self) -> usize;
    /// The nodes whose settlement waits on this one: those whose
    /// [`upstream`](Self::upstream) it is and, `through_tasks`, the promises of
    /// the tasks awaiting it (which have no upstream: a task awaits many).
    fn downstream(&self, out: &mut Vec<Arc<dyn Graph>>, through_tasks: bool);
    /// The rejection reason, if this promise was rejected, nobody ever consumed
    /// it, and it is not cancellation travelling on.
    fn unhandled(&self) -> Option<Error>;
    /// A `Promise` handle still refers to it: someone may still consume it.
    fn is_held(&self) -> bool;
    /// The consumer `consumer` (a reaction, follower or collector of this node)
    /// was cancelled. Returns true when that left this promise pending with no consumer
    /// at all: then the caller cancels it in turn (see [`withdraw`], which keeps
    /// this iterative).
    fn withdraw_consumer(&self, consumer: Consumer) -> bool;
    /// Cancels this node; false if it was settled already.
    fn cancel_node(self: Arc<Self>) -> bool;
    /// The one promise this node waits on now as one of its waiters, if it is
    /// derived from one (a `then` link waiting on its parent, or following the
    /// promise its handler returned, once attached to it): the reverse of
    /// [`downstream`](Self::downstream) without tasks.
    fn upstream(&self) -> Option<Arc<dyn Graph>>;
    /// False when nothing but its own resource can settle this node (a timer's
    /// promise) or it is settled already: then it waits on no promise, and adopting
    /// it cannot close a chaining cycle.
    fn may_wait(&self) -> bool;
    /// Whose work settles this node, as far as a wait's deadlock check needs to
    /// know (see [`settled_by_another_loop`]).
    fn settling(&self) -> Settling;
    /// See [`Core::recount_wait`].
    fn recount_wait(&self, task: &Arc<TaskWaker>, remote: bool) -> bool;
    /// See [`Core::settled_now`].
    fn settled_now(&self) -> Option<bool>;
}

/// See [`Graph::settling`].
pub(crate) enum Settling {
    /// The work of the loop with this id: its timer, its task, or a live resolver
    /// that keeps it alive.
    Loop(u64),
    /// This promise: it settles when that one does.
    Follows(Arc<dyn Graph>),
    /// These promises (a combinator's inputs still pending).
    Inputs(Vec<Arc<dyn Graph>>),
    /// A job that settles it, or that takes it a step further, is queued on some
    /// loop: one that has run out of work knows it is another loop's.
    Queued,
    /// Nothing a loop's deadlock check can see (a settled node, or one the library
    /// settles from a thread or from state it does not expose).
    Unknown,
    /// Work made on a thread that runs no loop, for its default loop `home`,
    /// and offered to other loops (see `event_loop::claims`) under `key`: a
    /// task not yet made (`task`), or a sleep. A search from another loop takes
    /// the offer: the task then runs on that loop, the sleep fires from a
    /// thread of the library's own.
    Offered { home: u64, key: usize, task: bool },
}

impl Settling {
    /// The settling of a combinator's output (`status`) whose `pending` inputs
    /// are those still to report. With none left while the output is pending,
    /// the job that decides it (the collector's, or an input's observer) is
    /// queued where the last input settled, maybe behind a long job of a busy
    /// loop.
    pub(crate) fn of_inputs(pending: Vec<Arc<dyn Graph>>, status: Status) -> Settling {
        match status {
            Status::Pending if pending.is_empty() => Settling::Queued,
            Status::Pending => Settling::Inputs(pending),
            _ => Settling::Unknown,
        }
    }
}

/// How many nodes [`settled_by_another_loop`] looks at, at most: an `await` of a
/// long chain must not cost a walk along all of it.
pub(crate) const SETTLING_SEARCH: usize = 64;

/// Whose work settles a node, as far as a short search upstream can tell (see
/// [`whose_work`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Whose {
    /// A loop of another thread's, on some path.
    Another,
    /// Only this thread's loops', on every path: `here`'s own work, or that of
    /// another loop of its thread, which cannot run while `here` waits.
    Own,
    /// Neither: a path ends where the search cannot see, or the search was cut
    /// short.
    Unknown,
}

/// True when `node` waits, within a short upstream search, on the work of a loop
/// of another thread than `here`'s: a task or timer of that loop, or a live
/// resolver that loop keeps. A task of `here` waiting on such a node is not
/// deadlocked when `here` runs out of work, since the other loop may still settle
/// it. Past the search, or when nothing says, the node counts as `here`'s own
/// business; so does the work of another loop of this thread, which cannot run
/// while `here` waits on this thread.
///
/// `idle` says that `here` has run out of work: then a job queued for a node of
/// the chain ([`Settling::Queued`]) is on another loop's queue, which will run it.
pub(crate) fn settled_by_another_loop(node: &dyn Graph, here: u64, idle: bool) -> bool {
    whose_work(node, here, idle) == Whose::Another
}

/// The search of [`settled_by_another_loop`], telling also whether every path
/// it took ends in work of this thread's loops ([`Whose::Own`]): that, and only
/// that, shows a wait once found on another loop's work to be stuck on this
/// thread's now.
///
/// Work offered by a thread that runs no loop (see `event_loop::claims`) that
/// the search meets is taken over on the way, unless `here` is the loop it was
/// made for: a task then becomes `here`'s (the loop running on this thread),
/// a sleep fires from the library's timer thread.
pub(crate) fn whose_work(node: &dyn Graph, here: u64, idle: bool) -> Whose {
    whose_work_claiming(node, here, idle, false, &mut false)
}

/// Takes over the offered work (see [`whose_work`]) upstream of `node` for
/// `here`, a loop of this thread; true if it took any. With `undriven` (a poll
/// from another executor, `here` being the loop its polls turn), a task is not
/// taken now but by a job queued on `here` (see
/// `claims::take_on_this_thread_later`): taken now, it would be queued on a
/// loop that runs only while that executor polls on this thread, which it may
/// never do again, and the task would be lost to its own loop too.
pub(crate) fn claim_upstream(node: &dyn Graph, here: u64, undriven: bool) -> bool {
    let mut claimed = false;
    whose_work_claiming(node, here, false, undriven, &mut claimed);
    claimed
}

/// [`whose_work`], setting `claimed` when it takes an offer (or, with
/// `undriven`, queues the taking of a task's, see [`claim_upstream`]).
fn whose_work_claiming(
    node: &dyn Graph,
    here: u64,
    idle: bool,
    undriven: bool,
    claimed: &mut bool,
) -> Whose {
    let mut pending = Vec::new();
    let mut seen_through = true;
    // Work of another thread on one path settles the question, but while
    // offers are open the other paths may hold some that is still to be taken
    // (a race of a sleep and a task made where no loop runs): the search then
    // goes on.
    let look_on = claims::any();
    let mut another = false;
    macro_rules! found_another {
        () => {{
            if !look_on {
                return Whose::Another;
            }
            another = true;
        }};
    }
    let mut next = node.settling();
    for _ in 0..SETTLING_SEARCH {
        match next {
            Settling::Offered {
                home,
                key,
                task: true,
            } if home != here && undriven => {
                *claimed |= claims::take_on_this_thread_later(key);
                found_another!();
            }
            Settling::Offered { home, key, task } if home != here => {
                let claim = claims::take(key);
                *claimed |= claim.is_some();
                let taken = claim.map(|claim| claim(claims::Taker::Other)).is_some();
                // A task taken is this loop's from now on; one taken first by
                // another loop, and a sleep, are another thread's.
                if !(task && taken) {
                    found_another!();
                }
            }
            // Its own loop's work, in that loop's queue.
            Settling::Offered { .. } => {}
            Settling::Loop(id) if id != here && context::local_loop(id).is_none() => {
                found_another!()
            }
            Settling::Queued if idle => found_another!(),
            Settling::Follows(source) => {
                next = source.settling();
                continue;
            }
            Settling::Inputs(inputs) => {
                // A list cut at the limit may leave inputs out.
                seen_through &= inputs.len() < SETTLING_SEARCH;
                pending.extend(inputs);
            }
            Settling::Loop(_) => {}
            Settling::Queued | Settling::Unknown => seen_through = false,
        }
        match pending.pop() {
            Some(input) => next = input.settling(),
            None if another => return Whose::Another,
            None if seen_through => return Whose::Own,
            None => return Whose::Unknown,
        }
    }
    if another {
        Whose::Another
    } else {
        Whose::Unknown
    }
}

/// What a reaction receives.
///
/// Flat, where an `Outcome(Result<T, E>)` variant beside `Quiet(E)` would be
/// simpler to match: that enum is laid out around the `Result`'s tag, and with
/// a second variant holding data it is passed in memory rather than in two
/// registers (with one-word `T` and `E`). That made `chain` some 2% slower for
/// 3 instructions more per link (likely the 16-byte reload of an input just
/// stored as two words, which the store buffer cannot forward).
pub(crate) enum Input<T, E> {
    Fulfilled(T),
    Rejected(E),
    /// Rejected with a reason the library made of a cancellation (a combinator's
    /// input was cancelled elsewhere), or passed on from such a rejection
    /// untouched: cancellation travelling on, which is never reported as
    /// unhandled. Handlers see it as any rejection.
    Quiet(E),
    /// The promise was cancelled: `then`/`catch` handlers must not run.
    Cancelled,
    /// The loop is gone: no user code may run.
    Abandoned,
}

impl<T, E> Input<T, E> {
    /// `outcome` as an input, a rejection not quiet.
    #[inline]
    pub(crate) fn outcome(outcome: Result<T, E>) -> Self {
        match outcome {
            Ok(value) => Input::Fulfilled(value),
            Err(error) => Input::Rejected(error),
        }
    }
}

/// Who consumes a promise, for [`withdraw`]: a reaction's key with [`REACTION`],
/// a follower's with [`FOLLOWER`], or a collector's with the input's index.
pub(crate) type Consumer = (usize, u32);

/// The index part of a reaction's [`Consumer`].
pub(crate) const REACTION: u32 = u32::MAX;
/// The index part of a follower's [`Consumer`].
pub(crate) const FOLLOWER: u32 = u32::MAX - 1;

/// A consumer that receives the outcome of a promise by value.
pub(crate) trait Reaction<T, E>: Send + Sync {
    /// Stores the input and returns the job that must be queued to process it.
    fn deliver(self: Arc<Self>, input: Input<T, E>) -> Arc<dyn Runnable>;
    /// The node this reaction settles, for cycle detection.
    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>>;
    /// Identity of the reaction, for [`Core::withdraw`].
    fn reaction_key(&self) -> usize;
}

/// A consumer of many promises of one type, each reporting with its own index
/// (`all`, `race`, ... over an iterator): the input's waiter is the collector
/// itself plus the index, so a combinator input costs no allocation.
pub(crate) trait Collector<T, E>: Send + Sync {
    /// Input `index` settled: records its input, and returns the job that settles
    /// the output if that decided it. (It runs where the input settled, under the
    /// input's lock: it must run no user code.)
    fn collect(self: Arc<Self>, index: u32, input: Input<T, E>) -> Option<Arc<dyn Runnable>>;
    /// Identity of the collector, for [`Core::withdraw`].
    fn collector_key(&self) -> usize;
}

/// A `then` child following the promise its handler returned (of the child's own
/// types, where its [`Reaction`] is for its parent's).
pub(crate) trait Follower<T, E>: Send + Sync {
    /// Stores the followed promise's outcome; returns the job that settles the
    /// follower with it.
    fn forward(self: Arc<Self>, input: Input<T, E>) -> Arc<dyn Runnable>;
    /// The follower as a node, for cycle detection.
    fn node(self: Arc<Self>) -> Arc<dyn Graph>;
    /// Identity of the follower, for [`Core::withdraw`].
    fn follower_key(&self) -> usize;
}

/// What a node's link does when the node is cancelled: release whatever would
/// have settled it (a parent, a timer, a task, a followed promise).
pub(crate) trait Link<T, E>: Send + Sync + Sized + 'static {
    fn on_cancel(node: &Arc<Node<T, E, Self>>);

    /// See [`Graph::upstream`]; roots (resolvers, timers, tasks) have none.
    fn upstream(_node: &Node<T, E, Self>) -> Option<Arc<dyn Graph>> {
        None
    }

    /// See [`Graph::may_wait`]: false for a link whose node only its own resource
    /// settles (a resolver may follow a promise, a task awaits them).
    const MAY_WAIT: bool = true;

    /// See [`Graph::settling`]; a derived node settles when its upstream does.
    fn settling(node: &Node<T, E, Self>) -> Settling {
        match Self::upstream(node) {
            Some(source) => Settling::Follows(source),
            None => Settling::Unknown,
        }
    }

    /// The node settled otherwise than by a cancellation (called by whoever
    /// settled it, once it did): what only a cancellation would have used can go.
    fn on_settled(_node: &Node<T, E, Self>) {}
}

impl<T, E> Link<T, E> for () {
    fn on_cancel(_: &Arc<Node<T, E, Self>>) {}
}

/// A promise node seen through its value and error types only; the concrete type
/// also carries the link (for `then` children, the handler) in the same allocation.
pub(crate) trait NodeDyn<T, E>: Graph {
    fn core(&self) -> &Core<T, E>;

    /// See [`Link::on_settled`].
    fn on_settled(&self);

    /// The node as a graph node, from any `Arc` of it (an upcast the caller of
    /// a generic node cannot write).
    fn into_graph(self: Arc<Self>) -> Arc<dyn Graph>;
}

pub(crate) type NodeRef<T, E> = Arc<dyn NodeDyn<T, E>>;

/// A promise's state plus its link.
pub(crate) struct Node<T, E, L> {
    pub(crate) core: Core<T, E>,
    pub(crate) link: L,
}

impl<T: Send + 'static, E: Send + 'static, L: Link<T, E>> Graph for Node<T, E, L> {
    fn key(&self) -> usize {
        &self.core as *const Core<T, E> as usize
    }

    fn downstream(&self, out: &mut Vec<Arc<dyn Graph>>, through_tasks: bool) {
        let inner = self.core.lock();
        if let State::Pending(waiters) = &inner.state {
            for waiter in waiters.iter() {
                let next = match waiter {
                    Waiter::Reaction(reaction) => reaction.clone().target(),
                    Waiter::Follower(follower) => Some(follower.clone().node()),
                    Waiter::Task(task) if through_tasks => task.output(),
                    Waiter::Task(_) => None,
                    Waiter::Collector(..) | Waiter::Waker(_) => None,
                };
                out.extend(next);
            }
        }
    }

    fn unhandled(&self) -> Option<Error> {
        let inner = self.core.lock();
        match &inner.state {
            // Cancellation travelling on is never reported: a quiet rejection
            // says so whatever `E` is; one that only says "cancelled" as an
            // `Error` (made by user code too) is taken for one as well.
            State::Settled(Some(Err(error)))
                if !inner.handled && !inner.cancelled && !inner.quiet() =>
            {
                Some(describe(error)).filter(|error| !error.is_cancelled())
            }
            _ => None,
        }
    }

    fn is_held(&self) -> bool {
        self.core.lock().handles > 0
    }

    fn withdraw_consumer(&self, consumer: Consumer) -> bool {
        self.core.withdraw(consumer)
    }

    fn cancel_node(self: Arc<Self>) -> bool {
        if !self.core.settle_cancelled() {
            return false;
        }
        L::on_cancel(&self);
        true
    }

    fn upstream(&self) -> Option<Arc<dyn Graph>> {
        L::upstream(self)
    }

    fn may_wait(&self) -> bool {
        L::MAY_WAIT && self.core.status() == Status::Pending
    }

    fn settling(&self) -> Settling {
        L::settling(self)
    }

    fn recount_wait(&self, task: &Arc<TaskWaker>, remote: bool) -> bool {
        self.core.recount_wait(task, remote)
    }

    fn settled_now(&self) -> Option<bool> {
        self.core.settled_now()
    }
}

impl<T: Send + 'static, E: Send + 'static, L: Link<T, E>> NodeDyn<T, E> for Node<T, E, L> {
    fn core(&self) -> &Core<T, E> {
        &self.core
    }

    fn on_settled(&self) {
        L::on_settled(self);
    }

    fn into_graph(self: Arc<Self>) -> Arc<dyn Graph> {
        self
    }
}

/// A rejection reason as an `Error`, for the unhandled-rejection hook.
fn describe<E: 'static>(error: &E) -> Error {
    let any: &dyn Any = error;
    if let Some(error) = any.downcast_ref::<Error>() {
        error.clone()
    } else if let Some(text) = any.downcast_ref::<String>() {
        Error::msg(text)
    } else if let Some(error) = any.downcast_ref::<Box<dyn std::error::Error + Send + Sync>>() {
        Error::converted_into(&**error).unwrap_or_else(|| Error::msg(error))
    } else if let Some(error) = any.downcast_ref::<std::io::Error>() {
        Error::converted_into(error).unwrap_or_else(|| Error::msg(error))
    } else {
        Error::msg(format!(
            "a rejection of type {}",
            std::any::type_name::<E>()
        ))
    }
}

pub(crate) enum Waiter<T, E> {
    Reaction(Arc<dyn Reaction<T, E>>),
    /// Input `.1` of a combinator (the index sits in the padding after the tag:
    /// a waiter stays three words).
    Collector(Arc<dyn Collector<T, E>>, u32),
    Follower(Arc<dyn Follower<T, E>>),
    /// A waker of one of our own tasks (counted, so the loop can tell a deadlock).
    Task(TaskRef),
    /// Any other executor's waker.
    Waker(Waker),
}

impl<T, E> Waiter<T, E> {
    /// Takes the outcome (reactions, collectors, followers) rather than being
    /// woken to poll for it.
    fn consumes(&self) -> bool {
        matches!(
            self,
            Waiter::Reaction(_) | Waiter::Collector(..) | Waiter::Follower(_)
        )
    }

    /// A waker of a task that has ended: nothing will poll for the outcome.
    fn ended(&self) -> bool {
        match self {
            Waiter::Task(task) => task.task_ended(),
            _ => false,
        }
    }

    fn is(&self, consumer: Consumer) -> bool {
        match self {
            Waiter::Reaction(reaction) => (reaction.reaction_key(), REACTION) == consumer,
            Waiter::Collector(collector, index) => (collector.collector_key(), *index) == consumer,
            Waiter::Follower(follower) => (follower.follower_key(), FOLLOWER) == consumer,
            Waiter::Task(_) | Waiter::Waker(_) => false,
        }
    }

    /// Hands `input` to a consumer; returns the job to queue, if any.
    fn deliver(self, input: Input<T, E>) -> Option<Arc<dyn Runnable>> {
        match self {
            Waiter::Reaction(reaction) => Some(reaction.deliver(input)),
            Waiter::Collector(collector, index) => collector.collect(index, input),
            Waiter::Follower(follower) => Some(follower.forward(input)),
            Waiter::Task(_) | Waiter::Waker(_) => unreachable!("wakers are woken"),
        }
    }

    fn wake(self) {
        match self {
            Waiter::Task(task) => task.wake(),
            Waiter::Waker(waker) => waker.wake(),
            Waiter::Reaction(_) | Waiter::Collector(..) | Waiter::Follower(_) => {
                unreachable!("consumers are delivered, not woken")
            }
        }
    }
}

/// The consumers of a pending promise, in the order they came. Almost every promise
/// has exactly one, stored inline; the rare fan-out spills to the heap. The enum
/// fits in the bytes of one `Waiter` (its variants use the niche of the waiter's
/// tag), so a node's state is three words instead of five with a `SmallVec`.
#[derive(Default)]
enum Waiters<T, E> {
    #[default]
    None,
    One(Waiter<T, E>),
    // Boxed: a `Vec` inline would make every node two words bigger.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Waiter<T, E>>>),
}

impl<T, E> Waiters<T, E> {
    fn push(&mut self, waiter: Waiter<T, E>) {
        match self {
            Waiters::None => *self = Waiters::One(waiter),
            Waiters::Many(all) => all.push(waiter),
            Waiters::One(_) => {
                let Waiters::One(first) = std::mem::take(self) else {
                    unreachable!("matched just above");
                };
                *self = Waiters::Many(Box::new(vec![first, waiter]));
            }
        }
    }

    fn as_slice(&self) -> &[Waiter<T, E>] {
        match self {
            Waiters::None => &[],
            Waiters::One(waiter) => std::slice::from_ref(waiter),
            Waiters::Many(all) => all,
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Waiter<T, E>> {
        self.as_slice().iter()
    }

    fn iter_mut(&mut self) -> std::slice::IterMut<'_, Waiter<T, E>> {
        match self {
            Waiters::None => [].iter_mut(),
            Waiters::One(waiter) => std::slice::from_mut(waiter).iter_mut(),
            Waiters::Many(all) => all.iter_mut(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Waiters::None)
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn retain(&mut self, mut keep: impl FnMut(&Waiter<T, E>) -> bool) {
        match self {
            Waiters::None => {}
            Waiters::One(waiter) => {
                if !keep(waiter) {
                    *self = Waiters::None;
                }
            }
            Waiters::Many(all) => {
                all.retain(keep);
                if all.is_empty() {
                    *self = Waiters::None;
                }
            }
        }
    }

    /// Whether [`push`](Self::push) has room for one more waiter without
    /// growing: then there is nothing to prune first (see
    /// [`push_pruning`](Self::push_pruning)).
    #[inline]
    fn has_room(&self) -> bool {
        match self {
            Waiters::None => true,
            Waiters::One(_) => false,
            Waiters::Many(all) => all.len() < all.capacity(),
        }
    }

    /// [`push`](Self::push) to a list that has no room, taking out first the
    /// wakers of tasks that ended, which nothing else takes away while the
    /// promise is pending (see `TaskWaker::ended`): a single one at once, those
    /// of a list when it is full. So a list is scanned for them once per
    /// doubling of its length at most, and holds at most about twice the
    /// waiters still alive. What it takes out is returned, for the caller to
    /// drop once the lock is released: dropping a waker may free what its task
    /// held. (Out of line: a list with room, the usual case, is pushed to
    /// without it.)
    #[inline(never)]
    fn push_pruning(&mut self, waiter: Waiter<T, E>) -> Waiters<T, E> {
        let gone = self.take_where(Waiter::ended);
        if let Waiters::Many(all) = self {
            // What a crowd of waiters left behind goes too.
            if all.len() * 4 <= all.capacity() {
                all.shrink_to(all.len() * 2);
            }
        }
        self.push(waiter);
        gone
    }

    /// Takes out every waiter that is not a consumer, and returns them (see
    /// [`push_pruning`](Self::push_pruning)): the promise has no handle left, so
    /// none of them will poll it again.
    #[inline(never)]
    fn take_pollers(&mut self) -> Waiters<T, E> {
        self.take_where(|waiter| !waiter.consumes())
    }

    /// Takes out the waiters `out` picks, keeping the order of the others, and
    /// returns them.
    fn take_where(&mut self, out: impl Fn(&Waiter<T, E>) -> bool) -> Waiters<T, E> {
        match self {
            Waiters::One(waiter) if out(waiter) => std::mem::take(self),
            Waiters::None | Waiters::One(_) => Waiters::None,
            // Looked for first: the scan is lighter than one that moves them.
            Waiters::Many(all) if !all.iter().any(&out) => Waiters::None,
            Waiters::Many(all) => {
                // Those kept move to the front, in their order, swapped with
                // those taken out, which gather behind them.
                let mut kept = 0;
                for i in 0..all.len() {
                    if !out(&all[i]) {
                        all.swap(kept, i);
                        kept += 1;
                    }
                }
                let taken = all.split_off(kept);
                if all.is_empty() {
                    *self = Waiters::None;
                }
                Waiters::Many(Box::new(taken))
            }
        }
    }

    fn into_vec(self) -> Vec<Waiter<T, E>> {
        match self {
            Waiters::None => Vec::new(),
            Waiters::One(waiter) => vec![waiter],
            Waiters::Many(all) => *all,
        }
    }
}

/// Fewer poll waiters than this are never looked through for stale ones: the
/// usual promise has one, a handful of clones awaited at once a few.
const STALE_POLLS_FROM: usize = 8;

/// The wakers other executors' polls left on a promise about to take one more,
/// if there are more than its handles can still need; none otherwise.
///
/// A handle polled and then dropped unsettled (the losing branch of a
/// `select!`, a `timeout` around it, a future that moved on) leaves its waker
/// here, and nothing tells which one it was: a handle is two words and does
/// not know its waiter. A thenable task's waker goes once its task ended (see
/// [`Waiters::push_pruning`]), but another executor's gives no such sign: a
/// promise kept pending (a shutdown signal cloned into every connection's
/// `select!` in tokio) would keep one waker per poll, and with it the
/// executor's task (a tokio task's whole allocation), until it settles. A live
/// handle needs only the waker of its last poll, so with more such wakers than
/// twice the live handles, most are stale: they are all taken out and woken,
/// and the live ones poll again and register again (a wake-up without an
/// outcome is allowed to any future). The list then grows by at least as many
/// pushes as it has live handles before the next such sweep: a spurious
/// wake-up or two per push, amortised.
/// `foreign` is how many of `waiters` are such wakers.
fn take_stale_polls<T, E>(
    waiters: &mut Waiters<T, E>,
    foreign: usize,
    handles: u32,
) -> Waiters<T, E> {
    if waiters.len() < STALE_POLLS_FROM || foreign <= 2 * handles as usize {
        return Waiters::None;
    }
    waiters.take_where(|waiter| matches!(waiter, Waiter::Waker(_)))
}

/// What a promise needs of its types, as one function (one word, where two
/// function pointers took two): turning one of the library's failures into an
/// `E`, and, once `Promise::clone` asked for it, copying an outcome for one more
/// consumer. Made where the bounds are known (`E: From<Error>`, `T: Clone`).
pub(crate) type Ops<T, E> = fn(Op<'_, T, E>) -> OpDone<T, E>;

/// A question to a promise's [`Ops`].
pub(crate) enum Op<'a, T, E> {
    Fail(Error),
    Copy(&'a Result<T, E>),
}

/// The answer of a promise's [`Ops`].
pub(crate) enum OpDone<T, E> {
    Failed(E),
    Copied(Result<T, E>),
}

/// `error` as the promise's error type.
fn fail_with<T, E>(ops: Ops<T, E>, error: Error) -> E {
    match ops(Op::Fail(error)) {
        OpDone::Failed(error) => error,
        // Not an answer to `Fail`; an `Ops` of ours never gives it.
        OpDone::Copied(_) => unreachable!("ops answer Fail with Failed"),
    }
}

/// How a settled promise ended, beyond its outcome (see [`Taken`]).
#[derive(Clone, Copy)]
pub(crate) enum End {
    Outcome,
    Quiet,
    Cancelled,
}

/// The form in which [`Core::poll_take`] takes a settled promise's outcome: a
/// `Result`, as an `await` gives it, or an [`Input`], as a consumer receives it
/// (a quiet rejection as `Input::Quiet`, a cancellation as `Input::Cancelled`),
/// for the library's tasks that pass on cancellation travelling on.
pub(crate) trait Taken<T, E> {
    /// Takes (or copies) the outcome in `slot`, which ended as `end`.
    fn take(
        slot: &mut Option<Result<T, E>>,
        last: bool,
        copies: bool,
        ops: Ops<T, E>,
        end: End,
    ) -> Self;
}

impl<T, E> Taken<T, E> for Result<T, E> {
    #[inline(always)]
    fn take(slot: &mut Option<Self>, last: bool, copies: bool, ops: Ops<T, E>, _: End) -> Self {
        share(slot, last, copies, ops)
    }
}

impl<T, E> Taken<T, E> for Input<T, E> {
    fn take(
        slot: &mut Option<Result<T, E>>,
        last: bool,
        copies: bool,
        ops: Ops<T, E>,
        end: End,
    ) -> Self {
        match end {
            // Nothing to take: the reason made for an `await` stays in the slot.
            End::Cancelled => Input::Cancelled,
            End::Quiet => share_quiet(slot, last, copies, ops),
            End::Outcome => Input::outcome(share(slot, last, copies, ops)),
        }
    }
}

/// What settling does for one waiter, once the lock is released.
enum Serve<T, E> {
    Run(Arc<dyn Runnable>),
    Wake(Waiter<T, E>),
    /// A collector that took the outcome and has nothing to run yet.
    Nothing,
}

impl<T, E> Serve<T, E> {
    fn run(self, home: Option<&LoopRef>) {
        match self {
            Serve::Run(job) => context::schedule(job, home),
            Serve::Wake(waiter) => waiter.wake(),
            Serve::Nothing => {}
        }
    }
}

enum State<T, E> {
    Pending(Waiters<T, E>),
    /// `None` once the last consumer took the value.
    Settled(Option<Result<T, E>>),
}

/// A promise's state, as seen while its lock is held (see [`Core::lock`]). The
/// flags are copies of the bits in the lock's word, written back when the guard
/// is dropped; `state` and `ops` are the core's own.
struct Inner<'a, T, E> {
    state: &'a mut State<T, E>,
    ops: &'a mut Ops<T, E>,
    /// Live `Promise` handles: each may still consume the outcome.
    handles: u32,
    /// While pending: a live, unsettled `Resolver` exists (so waiting on this is
    /// not a deadlock). Once settled: the rejection is quiet (see
    /// [`Inner::quiet`]).
    has_resolver: bool,
    /// Someone attached a handler or awaited: a rejection is not "unhandled".
    handled: bool,
    cancelled: bool,
    /// Set by `Promise::clone`: `ops` can copy, and each consumer gets its own copy.
    copies: bool,
    word: &'a AtomicU64,
}

/// The bits of a [`Core`]'s word: the lock, four flags, and the handle count in
/// the upper half.
const LOCKED: u64 = 1;
/// Also the quiet bit, once settled (see [`Inner::quiet`]).
const HAS_RESOLVER: u64 = 1 << 1;
const HANDLED: u64 = 1 << 2;
const CANCELLED: u64 = 1 << 3;
const COPIES: u64 = 1 << 4;
const HANDLES_SHIFT: u32 = 32;

impl<T, E> Inner<'_, T, E> {
    /// Settled as a quiet rejection (see [`Input::Quiet`]): the reason is an `E`,
    /// which the library cannot read, so the core remembers it. Meaningful only
    /// once settled.
    ///
    /// It is `has_resolver`'s bit, which means nothing once the promise is
    /// settled (only a pending promise is asked whether a resolver is live),
    /// rather than a fifth flag: that made the guard five words instead of four,
    /// and reading all the flags as bits of one field instead was slower on a
    /// `then` chain (docs/performance.md). Only the rejection paths read it.
    fn quiet(&self) -> bool {
        self.has_resolver
    }

    /// The flags as the word holds them, unlocked.
    fn word(&self) -> u64 {
        let flag = |set: bool, bit: u64| if set { bit } else { 0 };
        (u64::from(self.handles) << HANDLES_SHIFT)
            | flag(self.has_resolver, HAS_RESOLVER)
            | flag(self.handled, HANDLED)
            | flag(self.cancelled, CANCELLED)
            | flag(self.copies, COPIES)
    }
}

impl<T, E> Drop for Inner<'_, T, E> {
    /// Unlocks: one plain store of the flags, with the lock bit clear.
    fn drop(&mut self) {
        self.word.store(self.word(), Ordering::Release);
    }
}

/// How a promise was settled, for `Promise::is_*`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    Pending,
    Fulfilled,
    Rejected,
    Cancelled,
}

/// The result of [`Core::settle`].
#[must_use]
#[derive(PartialEq, Eq)]
pub(crate) enum Settle {
    /// It was settled before: nothing changed.
    Already,
    Done,
    /// Rejected with nobody to see it yet: the caller registers it with
    /// [`track_unhandled`].
    Unwatched,
}

/// A promise's state under a lock of its own, 40 bytes where a `Lock<_>` around
/// the same fields takes 48: the lock is one bit of a word that also holds the
/// flags and the handle count, so no byte of padding follows it. Every node of
/// the graph is one, and 8 bytes less is what brings a `then` link from a 112-
/// to a 96-byte chunk of the allocator (and one with a 16-byte handler from 128
/// to 112).
///
/// The lock spins as [`Lock`] does: its critical sections are a few
/// instructions of the library's own code, almost never contended. The user code
/// they may run: a value's `Clone` (for a cloned promise; a panic is caught and
/// becomes that consumer's rejection), `E::from(Error)` (cancelled or broken
/// outcomes), and, in a cancellation's race with a settlement, the drop of an
/// outcome nobody wants. Such code must not touch the same promise again: the
/// lock is not re-entrant, so it would spin for ever (it can never alias).
pub(crate) struct Core<T, E> {
    word: AtomicU64,
    state: UnsafeCell<State<T, E>>,
    ops: UnsafeCell<Ops<T, E>>,
}

#[allow(unsafe_code)]
// SAFETY: `state` and `ops` are only reached through `lock` (which holds the
// word's lock bit for as long as the guard lives, so one thread at a time has
// them) or through `&mut self`. What they hold moves between threads with the
// outcome, which is why `T` and `E` must be `Send`, exactly as for
// `Lock<State<T, E>>`. Tested by `the_lock_serializes_its_holders` below.
unsafe impl<T: Send, E: Send> Sync for Core<T, E> {}

/// What a settled core hands to one consumer: the outcome itself to the last
/// one, a copy to the others; `Err` if making it failed (a `Clone` that panicked,
/// or a value already moved out, which only a handle that should not exist can
/// ask for: a broken promise rather than a panic).
#[inline(always)]
fn take_or_copy<T, E>(
    slot: &mut Option<Result<T, E>>,
    last: bool,
    copies: bool,
    ops: Ops<T, E>,
) -> Result<Result<T, E>, E> {
    match (last, copies, slot.as_ref()) {
        (false, true, Some(outcome)) => match ops(Op::Copy(outcome)) {
            OpDone::Copied(copy) => Ok(copy),
            OpDone::Failed(error) => Err(error),
        },
        _ => slot.take().ok_or_else(|| fail_with(ops, Error::broken())),
    }
}

/// [`take_or_copy`], a failure to make it being a rejection.
fn share<T, E>(
    slot: &mut Option<Result<T, E>>,
    last: bool,
    copies: bool,
    ops: Ops<T, E>,
) -> Result<T, E> {
    take_or_copy(slot, last, copies, ops).unwrap_or_else(Err)
}

/// [`share`] for a promise rejected quietly (see [`Input::Quiet`]): the
/// rejection stays quiet, but a copy of it that failed (a panicking `Clone`)
/// is a failure of its own, to be reported. Apart from `share`, so that the
/// common case costs what it cost before quiet rejections.
fn share_quiet<T, E>(
    slot: &mut Option<Result<T, E>>,
    last: bool,
    copies: bool,
    ops: Ops<T, E>,
) -> Input<T, E> {
    match take_or_copy(slot, last, copies, ops) {
        Ok(Ok(value)) => Input::Fulfilled(value),
        Ok(Err(error)) => Input::Quiet(error),
        Err(failure) => Input::Rejected(failure),
    }
}

impl<T, E> Core<T, E> {
    pub(crate) fn new(state: Option<Result<T, E>>, has_resolver: bool, ops: Ops<T, E>) -> Self {
        let state = match state {
            Some(outcome) => State::Settled(Some(outcome)),
            None => State::Pending(Waiters::None),
        };
        let resolver = if has_resolver { HAS_RESOLVER } else { 0 };
        Core {
            word: AtomicU64::new((1 << HANDLES_SHIFT) | resolver),
            state: UnsafeCell::new(state),
            ops: UnsafeCell::new(ops),
        }
    }

    /// Takes the lock; dropping the guard releases it.
    fn lock(&self) -> Inner<'_, T, E> {
        match self.acquire::<true>() {
            Some(inner) => inner,
            None => unreachable!("a lock that waits is always taken"),
        }
    }

    /// Whether it has settled, if that can be told without waiting: `None`
    /// while another holder has the lock (so it never waits for a thread that
    /// may be waiting for the caller).
    pub(crate) fn settled_now(&self) -> Option<bool> {
        let inner = self.acquire::<false>()?;
        Some(!matches!(inner.state, State::Pending(_)))
    }

    /// Takes the lock, waiting for it if `WAIT`; without, `None` if another
    /// holder has it.
    #[inline(always)]
    fn acquire<const WAIT: bool>(&self) -> Option<Inner<'_, T, E>> {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & LOCKED == 0 {
                match self.word.compare_exchange_weak(
                    word,
                    word | LOCKED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => word = now,
                }
            } else {
                if !WAIT {
                    return None;
                }
                // Held by another thread (a settle from elsewhere): let it run.
                std::thread::yield_now();
                word = self.word.load(Ordering::Relaxed);
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: this thread set the lock bit, and only the guard's drop clears
        // it: until then no other thread gets past the loop above, so these are
        // the only references to `state` and `ops`.
        let (state, ops) = unsafe { (&mut *self.state.get(), &mut *self.ops.get()) };
        Some(Inner {
            state,
            ops,
            handles: (word >> HANDLES_SHIFT) as u32,
            has_resolver: word & HAS_RESOLVER != 0,
            handled: word & HANDLED != 0,
            cancelled: word & CANCELLED != 0,
            copies: word & COPIES != 0,
            word: &self.word,
        })
    }

    /// One of the library's failures as this promise's error type. (Takes the
    /// lock: never call it with the lock held.)
    pub(crate) fn fail(&self, error: Error) -> E {
        let ops = *self.lock().ops;
        fail_with(ops, error)
    }

    /// Settles the promise. Reactions go to the loop chosen by `context::schedule`
    /// (`home` is the resolver's loop, if a resolver settles it).
    pub(crate) fn settle(&self, outcome: Result<T, E>, home: Option<&LoopRef>) -> Settle {
        self.settle_as(outcome, false, home)
    }

    /// [`settle`](Self::settle), a rejection being quiet when `quiet` is set
    /// (see [`Input::Quiet`]).
    #[inline]
    pub(crate) fn settle_as(
        &self,
        outcome: Result<T, E>,
        quiet: bool,
        home: Option<&LoopRef>,
    ) -> Settle {
        self.try_settle(outcome, quiet, home)
            .unwrap_or(Settle::Already)
    }

    /// [`settle_as`](Self::settle_as), but an outcome that comes too late (the
    /// promise is settled or cancelled already) is given back instead of dropped:
    /// for a caller that can still hand it to someone else.
    #[inline]
    pub(crate) fn try_settle(
        &self,
        outcome: Result<T, E>,
        quiet: bool,
        home: Option<&LoopRef>,
    ) -> Result<Settle, Result<T, E>> {
        // Two copies of `finish`: the one every `then` link settles with keeps
        // no trace of quiet rejections (a `bool` argument, captured by its
        // closure, was tested for every waiter served).
        let settled = if quiet {
            self.finish::<true>(Some(outcome), home)
        } else {
            self.finish::<false>(Some(outcome), home)
        };
        settled.map_err(|late| late.expect("`finish` gives back the outcome it was given"))
    }

    /// Settles as broken: nothing is left that could settle it otherwise.
    pub(crate) fn settle_broken(&self, home: Option<&LoopRef>) -> Settle {
        self.settle(Err(self.fail(Error::broken())), home)
    }

    /// Settles as cancelled; false if already settled.
    pub(crate) fn settle_cancelled(&self) -> bool {
        self.finish::<false>(None, None).is_ok()
    }

    /// `outcome` is `None` for a cancellation; a rejection is quiet if `QUIET`.
    /// If the promise is settled already, `outcome` comes back (to be dropped
    /// once the lock is released).
    fn finish<const QUIET: bool>(
        &self,
        outcome: Option<Result<T, E>>,
        home: Option<&LoopRef>,
    ) -> Result<Settle, Option<Result<T, E>>> {
        let mut inner = self.lock();
        let waiters = match &mut inner.state {
            State::Pending(waiters) => std::mem::take(waiters),
            State::Settled(_) => return Err(outcome),
        };
        let cancelled = outcome.is_none();
        inner.cancelled = cancelled;
        let rejected = matches!(outcome, Some(Err(_)));
        // No resolver can settle it any more: from now on the bit says whether
        // the rejection is quiet (see `Inner::quiet`).
        inner.has_resolver = QUIET && rejected;
        let watched = !waiters.is_empty();
        let ops = *inner.ops;
        let mut slot = outcome.or_else(|| Some(Err(fail_with(ops, Error::cancelled()))));
        let keep = inner.handles > 0;
        let copies = inner.copies;
        let serve = |waiter: Waiter<T, E>, last: bool, slot: &mut Option<Result<T, E>>| {
            if !waiter.consumes() {
                return Serve::Wake(waiter);
            }
            let input = if cancelled {
                Input::Cancelled
            } else if QUIET {
                // (It hands a fulfilment on as one.)
                share_quiet(slot, last && !keep, copies, ops)
            } else {
                Input::outcome(share(slot, last && !keep, copies, ops))
            };
            match waiter.deliver(input) {
                Some(job) => Serve::Run(job),
                None => Serve::Nothing,
            }
        };
        let local = match &waiters {
            Waiters::Many(_) => context::local_queue(home),
            Waiters::None | Waiters::One(_) => None,
        };
        match (waiters, local) {
            (Waiters::None, _) => *inner.state = State::Settled(slot),
            // The usual case (one `then` or one `await`), without the lists.
            (Waiters::One(waiter), _) => {
                let served = serve(waiter, true, &mut slot);
                *inner.state = State::Settled(slot);
                drop(inner);
                served.run(home);
            }
            // Consumers only, for this thread's queue (a fan-out): each waiter
            // becomes its job in the list's own memory, and the list is queued as
            // one entry.
            (Waiters::Many(all), Some(queue)) if all.iter().all(Waiter::consumes) => {
                let mut left = all.len();
                let jobs: Vec<Arc<dyn Runnable>> = all
                    .into_iter()
                    .filter_map(|waiter| {
                        left -= 1;
                        match serve(waiter, left == 0, &mut slot) {
                            Serve::Run(job) => Some(job),
                            Serve::Wake(_) | Serve::Nothing => None,
                        }
                    })
                    .collect();
                *inner.state = State::Settled(slot);
                drop(inner);
                if !jobs.is_empty() {
                    queue.push(Job::Batch(jobs));
                }
            }
            (Waiters::Many(all), queue) => {
                let mut reactions_left = all.iter().filter(|w| w.consumes()).count();
                // Reactions and wakers are served in the order they were attached (an
                // `await` is a `then` too, as in JavaScript). When they go to a queue
                // of this thread they are queued right here, under the lock, which
                // runs no code but ours: a fan-out of a million needs no second list.
                // Other executors' wakers are woken once the lock is released.
                let mut later = Vec::new();
                for waiter in *all {
                    if waiter.consumes() {
                        reactions_left -= 1;
                    }
                    match (serve(waiter, reactions_left == 0, &mut slot), &queue) {
                        (Serve::Run(job), Some(queue)) => queue.push(Job::Run(job)),
                        (Serve::Wake(Waiter::Task(task)), Some(_)) => task.wake(),
                        (Serve::Nothing, _) => {}
                        (served, _) => later.push(served),
                    }
                }
                *inner.state = State::Settled(slot);
                drop(inner);
                for served in later {
                    served.run(home);
                }
            }
        }
        Ok(if rejected && !watched {
            Settle::Unwatched
        } else {
            Settle::Done
        })
    }

    /// Consumes one handle and attaches a reaction. If the promise is already
    /// settled, the job to queue is returned (never run inline: A+ 2.2.4).
    pub(crate) fn attach(&self, reaction: Arc<dyn Reaction<T, E>>) -> Option<Arc<dyn Runnable>> {
        self.attach_consumer(Waiter::Reaction(reaction))
    }

    /// [`attach`](Self::attach) for input `index` of `collector`.
    pub(crate) fn attach_collector(
        &self,
        collector: Arc<dyn Collector<T, E>>,
        index: u32,
    ) -> Option<Arc<dyn Runnable>> {
        self.attach_consumer(Waiter::Collector(collector, index))
    }

    /// [`attach`](Self::attach) for a `then` child following this promise.
    pub(crate) fn attach_follower(
        &self,
        follower: Arc<dyn Follower<T, E>>,
    ) -> Option<Arc<dyn Runnable>> {
        self.attach_consumer(Waiter::Follower(follower))
    }

    fn attach_consumer(&self, consumer: Waiter<T, E>) -> Option<Arc<dyn Runnable>> {
        let mut inner = self.lock();
        inner.handles -= 1;
        inner.handled = true;
        let last = inner.handles == 0;
        let (copies, ops) = (inner.copies, *inner.ops);
        let (cancelled, quiet) = (inner.cancelled, inner.quiet());
        match &mut inner.state {
            State::Pending(waiters @ Waiters::None) => {
                *waiters = Waiters::One(consumer);
                None
            }
            State::Pending(waiters) if !last && waiters.has_room() => {
                waiters.push(consumer);
                None
            }
            State::Pending(waiters) => {
                // The handle it took was the last one: no waker will poll again.
                let pollers = if last {
                    waiters.take_pollers()
                } else {
                    Waiters::None
                };
                let ended = waiters.push_pruning(consumer);
                drop(inner);
                drop((pollers, ended));
                None
            }
            State::Settled(_) if cancelled => {
                drop(inner);
                consumer.deliver(Input::Cancelled)
            }
            State::Settled(slot) if quiet => {
                let input = share_quiet(slot, last, copies, ops);
                drop(inner);
                consumer.deliver(input)
            }
            State::Settled(slot) => {
                let outcome = share(slot, last, copies, ops);
                drop(inner);
                consumer.deliver(Input::outcome(outcome))
            }
        }
    }

    /// The `Future` side: takes the outcome (consuming the handle) or registers the
    /// waker. `waiter` is only called when the promise is still pending. `R` is
    /// the form the outcome is taken in (see [`Taken`]).
    ///
    /// `may_take` is asked before a settled outcome is taken: the awaiting task may
    /// want to yield first (an `await` costs a tick). It runs under the lock and
    /// must not touch this promise.
    pub(crate) fn poll_take<R: Taken<T, E>>(
        &self,
        waiter: impl FnOnce(bool) -> Waiter<T, E>,
        may_take: impl FnOnce() -> bool,
    ) -> Option<R> {
        let mut inner = self.lock();
        inner.handled = true;
        let has_resolver = inner.has_resolver;
        let handles = inner.handles;
        match &mut inner.state {
            State::Pending(waiters @ Waiters::None) => {
                *waiters = Waiters::One(waiter(has_resolver));
                None
            }
            State::Pending(waiters) => {
                let new = waiter(has_resolver);
                // Counted in the same scan: other executors' wakers, for
                // `take_stale_polls` (read only when no duplicate stopped it).
                let mut foreign = 0;
                let duplicate = waiters.iter().any(|old| match (old, &new) {
                    (Waiter::Task(a), Waiter::Task(b)) => a.same_task(b),
                    (Waiter::Waker(a), new) => {
                        foreign += 1;
                        matches!(new, Waiter::Waker(b) if a.will_wake(b))
                    }
                    _ => false,
                });
                if duplicate {
                    return None;
                }
                let stale = take_stale_polls(waiters, foreign, handles);
                if waiters.has_room() {
                    waiters.push(new);
                    drop(inner);
                } else {
                    let ended = waiters.push_pruning(new);
                    drop(inner);
                    drop(ended);
                }
                // Outside the lock: a waker is other code, which may poll this
                // promise again at once.
                stale.into_vec().into_iter().for_each(Waiter::wake);
                None
            }
            State::Settled(_) if !may_take() => None,
            State::Settled(_) => {
                inner.handles -= 1;
                let last = inner.handles == 0;
                let (copies, ops) = (inner.copies, *inner.ops);
                let end = if inner.cancelled {
                    End::Cancelled
                } else if inner.quiet() {
                    End::Quiet
                } else {
                    End::Outcome
                };
                let State::Settled(slot) = &mut inner.state else {
                    unreachable!()
                };
                Some(R::take(slot, last, copies, ops, end))
            }
        }
    }

    /// The wait of `task` registered on this promise counts as one on another
    /// loop's work (see [`settled_by_another_loop`]) if `remote`, as its own
    /// loop's business if not. False if `task` does not wait here (any more).
    pub(crate) fn recount_wait(&self, task: &Arc<TaskWaker>, remote: bool) -> bool {
        let mut inner = self.lock();
        let mut found = false;
        if let State::Pending(waiters) = &mut inner.state {
            for waiter in waiters.iter_mut() {
                if let Waiter::Task(registered) = waiter {
                    if registered.is_of(task) {
                        found = true;
                        if remote {
                            registered.count_as_remote();
                        } else {
                            registered.count_as_own();
                        }
                    }
                }
            }
        }
        found
    }

    /// A `Promise` handle was dropped without consuming the outcome. Returns true
    /// when the promise is pending and has no consumer left.
    ///
    /// The last one gone, nobody can poll the promise any more: the wakers it
    /// holds go (a resolver may still settle it, for its consumers). While
    /// another handle is left, they stay: the promise cannot tell which
    /// handle registered a waker, and one task or executor polling two
    /// handles has one entry for both.
    pub(crate) fn release_handle(&self) -> bool {
        let mut inner = self.lock();
        inner.handles -= 1;
        if inner.handles > 0 {
            return false;
        }
        match &mut inner.state {
            State::Pending(Waiters::None) => true,
            State::Pending(waiters) => {
                let pollers = waiters.take_pollers();
                let unconsumed = !waiters.iter().any(Waiter::consumes);
                drop(inner);
                drop(pollers);
                unconsumed
            }
            State::Settled(_) => false,
        }
    }

    /// A consumer is about to poll it (an `await` from another executor, which
    /// drives the thread's loop first): a rejection is not "unhandled" at the
    /// end of that drain.
    pub(crate) fn mark_handled(&self) {
        self.lock().handled = true;
    }

    /// A consumer that took the handle to follow this promise was cancelled
    /// before it attached: as for a `then` cancelled after attaching, a rejection
    /// counts as handled. Otherwise as [`release_handle`](Self::release_handle).
    pub(crate) fn let_go(&self) -> bool {
        self.lock().handled = true;
        self.release_handle()
    }

    /// Removes the consumer `consumer` (it was cancelled). Returns true when the
    /// promise is pending and has no consumer left.
    fn withdraw(&self, consumer: Consumer) -> bool {
        let mut inner = self.lock();
        let handles = inner.handles;
        let State::Pending(waiters) = &mut inner.state else {
            return false;
        };
        let before = waiters.len();
        waiters.retain(|w| !w.is(consumer));
        let removed = waiters.len() < before;
        removed && handles == 0 && !waiters.iter().any(Waiter::consumes)
    }

    /// One more `Promise` handle, each consumer getting its own copy through
    /// `copying` (the promise's `Ops`, able to copy).
    pub(crate) fn add_handle(&self, copying: Ops<T, E>) {
        let mut inner = self.lock();
        inner.handles += 1;
        *inner.ops = copying;
        inner.copies = true;
    }

    /// The resolver stopped being a way to settle this promise (it adopted another).
    pub(crate) fn resolver_gone(&self) {
        let mut inner = self.lock();
        // Settled, the bit is the quiet one (see `Inner::quiet`), and not the
        // resolver's to clear.
        if let State::Pending(_) = inner.state {
            inner.has_resolver = false;
        }
    }

    /// Whether it settled as cancelled: one load, no lock. Only a cancellation
    /// sets the bit, in the same hold of the lock that settles the state, and
    /// the unlock publishes both.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.word.load(Ordering::Acquire) & CANCELLED != 0
    }

    pub(crate) fn status(&self) -> Status {
        let inner = self.lock();
        match &inner.state {
            State::Pending(_) => Status::Pending,
            State::Settled(_) if inner.cancelled => Status::Cancelled,
            State::Settled(Some(Ok(_))) => Status::Fulfilled,
            // Taken already (only possible without live handles) counts as rejected.
            State::Settled(_) => Status::Rejected,
        }
    }
}

impl<T, E> Drop for Core<T, E> {
    fn drop(&mut self) {
        // Only a promise that can never settle is dropped while it has waiters:
        // tell them, through the queue, so that a long chain does not recurse here.
        if let State::Pending(waiters) = self.state.get_mut() {
            let waiters = std::mem::take(waiters);
            let ops = *self.ops.get_mut();
            for waiter in waiters.into_vec() {
                if waiter.consumes() {
                    let broken = Input::Rejected(fail_with(ops, Error::broken()));
                    if let Some(job) = waiter.deliver(broken) {
                        context::schedule(job, None);
                    }
                } else {
                    waiter.wake();
                }
            }
        }
    }
}

/// A consumer leaving an upstream node.
type Withdrawal = (Arc<dyn Graph>, Consumer);

thread_local! {
    /// Withdrawals waiting to travel further upstream (see [`withdraw`]).
    static WITHDRAWING: RefCell<Option<Vec<Withdrawal>>> = const { RefCell::new(None) };
    /// Set while a cancelled task's future is dropped: promise handles dropped then
    /// withdraw their consumer instead of merely going away.
    static CANCELLING: Cell<bool> = const { Cell::new(false) };
}

/// Tells `upstream` that its consumer `consumer` was cancelled, cancelling it in
/// turn if that left it with no consumer, and so on up the chain, iteratively.
pub(crate) fn withdraw(upstream: Arc<dyn Graph>, consumer: Consumer) {
    run_flat(&WITHDRAWING, (upstream, consumer), |(node, consumer)| {
        if node.withdraw_consumer(consumer) {
            node.cancel_node();
        }
    });
}

/// Runs `work(item)`; an item given meanwhile by a nested call (on this thread,
/// with the same `list`) is not run inside it but from a work list the outermost
/// call empties, so that a chain of any length costs no stack.
pub(crate) fn run_flat<W: 'static>(
    list: &'static LocalKey<RefCell<Option<Vec<W>>>>,
    item: W,
    work: impl Fn(W),
) {
    let outermost = list.with(|list| {
        let mut list = list.borrow_mut();
        match list.as_mut() {
            Some(pending) => {
                pending.push(item);
                None
            }
            None => {
                *list = Some(Vec::new());
                Some(item)
            }
        }
    });
    let Some(item) = outermost else { return };
    // Emptied even if `work` unwinds, or every later call would think it is nested.
    struct Reset<W: 'static>(&'static LocalKey<RefCell<Option<Vec<W>>>>);
    impl<W> Drop for Reset<W> {
        fn drop(&mut self) {
            let _ = self.0.try_with(|list| list.borrow_mut().take());
        }
    }
    let _reset = Reset(list);
    let mut next = Some(item);
    while let Some(item) = next {
        work(item);
        next = list.with(|list| list.borrow_mut().as_mut().and_then(Vec::pop));
    }
}

/// Runs `f` (which drops a cancelled task's future) so that the promises it was
/// awaiting are cancelled too when it was their only consumer.
pub(crate) fn run_cancellation<R>(f: impl FnOnce() -> R) -> R {
    let previous = CANCELLING.with(|c| c.replace(true));
    /// Restores the flag even if `f` unwinds: left set, every later dropped
    /// handle on this thread would cancel its promise.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = CANCELLING.try_with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// True while a cancelled task's future is being dropped on this thread.
pub(crate) fn cancelling() -> bool {
    CANCELLING.try_with(Cell::get).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn ops(op: Op<'_, u64, Error>) -> OpDone<u64, Error> {
        match op {
            Op::Fail(error) => OpDone::Failed(error),
            Op::Copy(outcome) => OpDone::Copied(outcome.clone()),
        }
    }

    fn handles(core: &Core<u64, Error>) -> u32 {
        core.lock().handles
    }

    #[test]
    fn the_lock_serializes_its_holders() {
        // Each `add_handle` is a read-modify-write of the word's count and of
        // `ops` under the lock: if two threads held it at once, increments would
        // be lost, or a stale word written back over a newer one.
        const THREADS: u32 = 4;
        const ROUNDS: u32 = 20_000;
        let core = Arc::new(Core::<u64, Error>::new(None, true, ops));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let core = core.clone();
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        core.add_handle(ops);
                        assert_eq!(core.status(), Status::Pending);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(handles(&core), 1 + THREADS * ROUNDS);
        let inner = core.lock();
        assert!(inner.has_resolver && inner.copies && !inner.handled && !inner.cancelled);
    }

    #[test]
    fn one_of_racing_settles_wins_and_the_flags_survive_it() {
        let core = Arc::new(Core::<u64, Error>::new(None, true, ops));
        let threads: Vec<_> = (0..4u64)
            .map(|value| {
                let core = core.clone();
                std::thread::spawn(move || core.settle(Ok(value), None) == Settle::Done)
            })
            .collect();
        let winners = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(|&won| won)
            .count();
        assert_eq!(winners, 1);
        assert_eq!(core.status(), Status::Fulfilled);
        // Settling clears `has_resolver` and keeps the one handle.
        let inner = core.lock();
        assert!(!inner.has_resolver && !inner.cancelled);
        assert_eq!(inner.handles, 1);
    }

    #[test]
    fn only_a_rejection_is_quiet_and_no_resolver_bit_is_taken_for_it() {
        // Quiet shares its bit with `has_resolver`: a promise that had a
        // resolver must not come out quiet, nor a quiet one lose it.
        let loud = Core::<u64, Error>::new(None, true, ops);
        assert!(loud.settle(Err(Error::msg("loud")), None) == Settle::Unwatched);
        assert!(!loud.lock().quiet());
        let quiet = Core::<u64, Error>::new(None, true, ops);
        assert!(quiet.settle_as(Err(Error::msg("quiet")), true, None) == Settle::Unwatched);
        quiet.resolver_gone();
        let inner = quiet.lock();
        assert!(inner.quiet() && !inner.cancelled && !inner.handled);
        assert_eq!(inner.handles, 1);
        drop(inner);
        assert_eq!(quiet.status(), Status::Rejected);
        let fulfilled = Core::<u64, Error>::new(None, false, ops);
        assert!(fulfilled.settle_as(Ok(1), true, None) == Settle::Done);
        assert!(!fulfilled.lock().quiet());
        let cancelled = Core::<u64, Error>::new(None, true, ops);
        assert!(cancelled.settle_cancelled());
        assert!(!cancelled.lock().quiet());
    }

    #[test]
    fn the_lock_free_cancelled_read_agrees_with_the_status() {
        // `is_cancelled` reads the word's bit without the lock: it must say yes
        // for a cancellation alone, and keep saying it while the lock is held.
        let pending = Core::<u64, Error>::new(None, true, ops);
        assert!(!pending.is_cancelled());
        let fulfilled = Core::<u64, Error>::new(None, true, ops);
        assert!(fulfilled.settle(Ok(1), None) == Settle::Done);
        let rejected = Core::<u64, Error>::new(None, true, ops);
        assert!(rejected.settle(Err(Error::msg("no")), None) == Settle::Unwatched);
        let cancelled = Core::<u64, Error>::new(None, true, ops);
        assert!(cancelled.settle_cancelled());
        for core in [&pending, &fulfilled, &rejected, &cancelled] {
            assert_eq!(core.is_cancelled(), core.status() == Status::Cancelled);
            let held = core.lock();
            assert_eq!(core.is_cancelled(), held.cancelled);
        }
        assert!(cancelled.is_cancelled());
    }

    #[test]
    fn a_core_is_five_words() {
        assert_eq!(std::mem::size_of::<Core<u64, Error>>(), 40);
    }

    /// How many waiters (consumers and wakers) the pending promise of `node` holds.
    fn waiters_of<T, E>(node: &NodeRef<T, E>) -> usize {
        match &*node.core().lock().state {
            State::Pending(waiters) => waiters.len(),
            State::Settled(_) => 0,
        }
    }

    fn node_of<T, E>(promise: &crate::Promise<T, E>) -> NodeRef<T, E> {
        promise.node.clone().expect("not consumed")
    }

    /// Awaits `shutdown` until `other` settles first, as a connection's task
    /// waits on a server's shutdown beside its own work.
    async fn until(shutdown: crate::Promise<()>, other: crate::Promise<()>) -> Result<(), Error> {
        match futures::future::select(shutdown, other).await {
            futures::future::Either::Left((outcome, _)) => outcome,
            futures::future::Either::Right((outcome, _)) => outcome,
        }
    }

    /// Tasks that waited on a clone of a long-lived promise and ended while it
    /// was still pending (`batch` at a time) leave it holding their wakers;
    /// returns how many waiters it holds at the end.
    fn waiters_left_by_dead_tasks(tasks: usize, batch: usize) -> usize {
        let event_loop = crate::EventLoop::new();
        let (shutdown, _resolver) = crate::Promise::<()>::pending();
        let node = node_of(&shutdown);
        event_loop
            .block_on(end_tasks_waiting_on(&shutdown, tasks / batch, batch))
            .unwrap();
        waiters_of(&node)
    }

    /// `rounds` times, `batch` tasks that wait on a clone of `shutdown` until
    /// another promise settles, and end.
    async fn end_tasks_waiting_on(
        shutdown: &crate::Promise<()>,
        rounds: usize,
        batch: usize,
    ) -> Result<(), Error> {
        for _ in 0..rounds {
            let (gate, open) = crate::Promise::<()>::pending();
            let ended: Vec<_> = (0..batch)
                .map(|_| crate::spawn(until(shutdown.clone(), gate.clone())))
                .collect();
            // Let each of them register on `shutdown` before `gate` opens.
            crate::sleep(std::time::Duration::ZERO).await?;
            open.resolve(());
            for task in ended {
                task.await?;
            }
        }
        Ok(())
    }

    #[test]
    fn tasks_that_ended_leave_no_waker_on_a_pending_promise() {
        // One at a time: each finds only dead tasks' wakers before its own.
        let left = waiters_left_by_dead_tasks(1000, 1);
        assert!(left <= 1, "{left} waiters left by 1000 ended tasks");
        // Ten at a time: the list stays within a small multiple of the live ones.
        let left = waiters_left_by_dead_tasks(1000, 10);
        assert!(left <= 20, "{left} waiters left by 1000 ended tasks");
    }

    #[test]
    fn cancelled_tasks_leave_no_waker_on_a_pending_promise() {
        const TASKS: usize = 1000;
        let event_loop = crate::EventLoop::new();
        let (shutdown, _resolver) = crate::Promise::<()>::pending();
        let node = node_of(&shutdown);
        event_loop
            .block_on(async {
                for _ in 0..TASKS {
                    let waiting = shutdown.clone();
                    let task = crate::spawn(waiting);
                    crate::sleep(std::time::Duration::ZERO).await?;
                    assert!(task.cancel(), "the task was still waiting");
                }
                Ok::<_, Error>(())
            })
            .unwrap();
        let left = waiters_of(&node);
        assert!(left <= 1, "{left} waiters left by {TASKS} cancelled tasks");
        assert_eq!(node.core().status(), Status::Pending, "not cancelled");
    }

    #[test]
    fn block_on_calls_that_ended_leave_no_waker_on_a_pending_promise() {
        const CALLS: usize = 1000;
        let event_loop = crate::EventLoop::new();
        let (shutdown, _resolver) = crate::Promise::<()>::pending();
        let node = node_of(&shutdown);
        for _ in 0..CALLS {
            let (other, done) = crate::Promise::<()>::pending();
            crate::set_timeout(std::time::Duration::ZERO, move || {
                done.resolve(());
            });
            event_loop.block_on(until(shutdown.clone(), other)).unwrap();
        }
        let left = waiters_of(&node);
        assert!(
            left <= 1,
            "{left} waiters left by {CALLS} ended block_on calls"
        );
    }

    /// A waker that counts its wakes, and whose `Arc` tells whether a waiter
    /// list still holds it.
    #[derive(Default)]
    struct Probe {
        wakes: std::sync::atomic::AtomicUsize,
    }

    impl std::task::Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_last_handle_dropped_lets_go_of_wakers_but_not_of_consumers() {
        const POLLERS: usize = 1000;
        let event_loop = crate::EventLoop::new();
        let (promise, resolver) = crate::Promise::<u64>::pending();
        let node = node_of(&promise);
        let probes: Vec<Arc<Probe>> = (0..POLLERS).map(|_| Arc::default()).collect();
        let doubled = event_loop
            .block_on(async {
                let doubled = promise.clone().map(|value| value * 2);
                // Polled from a running loop, but not by its task: each is
                // another executor's waker, which only `will_wake` tells apart.
                for probe in &probes {
                    let waker = Waker::from(probe.clone());
                    let mut clone = promise.clone();
                    let poll = std::pin::Pin::new(&mut clone)
                        .poll(&mut std::task::Context::from_waker(&waker));
                    assert!(poll.is_pending());
                }
                Ok::<_, Error>(doubled)
            })
            .unwrap();
        // (Polls of dropped clones are swept now and then, with a spurious
        // wake-up: see `take_stale_polls`.)
        let wakes = |probes: &[Arc<Probe>]| -> Vec<usize> {
            probes
                .iter()
                .map(|p| p.wakes.load(Ordering::Relaxed))
                .collect()
        };
        let woken_before = wakes(&probes);
        drop(promise);
        let held = probes.iter().filter(|p| Arc::strong_count(p) > 1).count();
        assert_eq!(held, 0, "{held} wakers held by a promise nobody can poll");
        assert_eq!(waiters_of(&node), 1, "the `map` consumer stays");
        assert!(resolver.resolve(21));
        assert_eq!(event_loop.block_on(doubled).unwrap(), 42);
        assert_eq!(wakes(&probes), woken_before, "let go of, not woken");
    }

    /// Runs `f` on a thread of its own and fails if it has not returned within
    /// a generous deadline (a lost wake-up is a deadlock report, not a hang,
    /// but a bug could make it one).
    fn bounded<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(f());
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the test body hung or panicked")
    }

    #[test]
    fn a_task_polling_two_clones_is_still_woken_when_one_is_dropped() {
        // Both polls register the same task: the list holds one entry for
        // both, which the dropped clone must not take with it.
        let woken = bounded(|| {
            let event_loop = crate::EventLoop::new();
            let (promise, resolver) = crate::Promise::<u64>::pending();
            let mut kept = promise.clone();
            let mut dropped = Some(promise);
            let waiter = crate::spawn(std::future::poll_fn(move |cx| {
                if let Some(mut clone) = dropped.take() {
                    assert!(std::pin::Pin::new(&mut kept).poll(cx).is_pending());
                    assert!(std::pin::Pin::new(&mut clone).poll(cx).is_pending());
                    drop(clone);
                    // Not polled again until a wake-up comes.
                    return std::task::Poll::Pending;
                }
                std::pin::Pin::new(&mut kept).poll(cx)
            }));
            event_loop.block_on(async move {
                crate::sleep(std::time::Duration::ZERO).await?;
                resolver.resolve(5);
                waiter.await
            })
        });
        assert_eq!(woken.unwrap(), 5);
    }

    #[test]
    fn a_task_waiting_on_a_promise_is_woken_after_others_that_waited_on_it_died() {
        let woken = bounded(|| {
            let event_loop = crate::EventLoop::new();
            let (shutdown, resolver) = crate::Promise::<()>::pending();
            let node = node_of(&shutdown);
            event_loop.block_on(async move {
                let early = crate::spawn(shutdown.clone());
                end_tasks_waiting_on(&shutdown, 100, 10).await?;
                let late = crate::spawn(shutdown.clone());
                crate::sleep(std::time::Duration::ZERO).await?;
                let left = waiters_of(&node);
                assert!(left <= 20, "{left} waiters left by 1000 ended tasks");
                resolver.resolve(());
                early.await?;
                late.await?;
                shutdown.await
            })
        });
        woken.unwrap();
    }
}
