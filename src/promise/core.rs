//! The state machine of one promise: pending with a list of waiters, then settled
//! exactly once.
//!
//! A [`Core`] owns the outcome and decides who receives it: reactions (the `then`
//! children and adoption forwarders) get it moved or cloned and are handed to the
//! scheduler; wakers are woken and take it when polled. It never runs a handler
//! itself and never calls a reaction inline, so depth never turns into stack.

use std::sync::Arc;
use std::task::Waker;

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::error::Error;
use crate::event_loop::context::{self, LoopRef};
use crate::task::TaskRef;

/// Something queued on a loop's microtask queue.
pub(crate) trait Runnable: Send + Sync {
    /// Runs the job (a promise reaction) on the loop thread.
    fn run(self: Arc<Self>);
    /// The loop is gone: settle whatever depends on this job as broken, without
    /// running user code.
    fn abandon(self: Arc<Self>);
}

/// One edge of the promise graph, used to find chaining cycles.
pub(crate) trait Graph: Send + Sync {
    /// Identity of the node.
    fn key(&self) -> usize;
    /// The nodes whose settlement waits on this one.
    fn downstream(&self, out: &mut Vec<Arc<dyn Graph>>);
}

/// A consumer that receives the outcome of a promise by value.
pub(crate) trait Reaction<T, E>: Send + Sync {
    /// Stores the outcome and returns the job that must be queued to process it.
    fn deliver(self: Arc<Self>, outcome: Result<T, E>) -> Arc<dyn Runnable>;
    /// The node this reaction settles, for cycle detection.
    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>>;
}

/// A promise node seen through its value and error types only; the concrete type
/// also carries the handler of the `then` that created it, in the same allocation.
pub(crate) trait NodeDyn<T, E>: Graph {
    fn core(&self) -> &Core<T, E>;
}

pub(crate) type NodeRef<T, E> = Arc<dyn NodeDyn<T, E>>;

/// A promise's state plus, for `then` children, the handler (`link`).
pub(crate) struct Node<T, E, L> {
    pub(crate) core: Core<T, E>,
    pub(crate) link: L,
}

impl<T: Send, E: Send, L: Send + Sync> Graph for Node<T, E, L> {
    fn key(&self) -> usize {
        &self.core as *const Core<T, E> as usize
    }

    fn downstream(&self, out: &mut Vec<Arc<dyn Graph>>) {
        let inner = self.core.inner.lock();
        if let State::Pending(waiters) = &inner.state {
            for waiter in waiters.iter() {
                let next = match waiter {
                    Waiter::Reaction(reaction) => reaction.clone().target(),
                    Waiter::Task(task) => task.output(),
                    Waiter::Waker(_) => None,
                };
                out.extend(next);
            }
        }
    }
}

impl<T: Send, E: Send, L: Send + Sync> NodeDyn<T, E> for Node<T, E, L> {
    fn core(&self) -> &Core<T, E> {
        &self.core
    }
}

pub(crate) enum Waiter<T, E> {
    Reaction(Arc<dyn Reaction<T, E>>),
    /// A waker of one of our own tasks (counted, so the loop can tell a deadlock).
    Task(TaskRef),
    /// Any other executor's waker.
    Waker(Waker),
}

impl<T, E> Waiter<T, E> {
    fn wake(self) {
        match self {
            Waiter::Task(task) => task.wake(),
            Waiter::Waker(waker) => waker.wake(),
            Waiter::Reaction(_) => unreachable!("reactions are delivered, not woken"),
        }
    }
}

type Waiters<T, E> = SmallVec<[Waiter<T, E>; 1]>;

/// What settling does for one waiter, once the lock is released.
enum Serve<T, E> {
    Run(Arc<dyn Runnable>),
    Wake(Waiter<T, E>),
}

/// Copies an outcome for one more consumer (set by `Promise::clone`).
pub(crate) type Cloner<T, E> = fn(&Result<T, E>) -> Result<T, E>;

enum State<T, E> {
    Pending(Waiters<T, E>),
    /// `None` once the last consumer took the value.
    Settled(Option<Result<T, E>>),
}

struct Inner<T, E> {
    state: State<T, E>,
    /// Live `Promise` handles: each may still consume the outcome.
    handles: u32,
    /// A live, unsettled `Resolver` exists (so waiting on this is not a deadlock).
    has_resolver: bool,
    /// Set by `Promise::clone`: how to give each consumer its own copy.
    cloner: Option<Cloner<T, E>>,
}

pub(crate) struct Core<T, E> {
    inner: Mutex<Inner<T, E>>,
    /// How the library's own failures become an `E` (`E: From<Error>`, captured
    /// where the promise was created).
    from_error: fn(Error) -> E,
}

/// What a settled core hands to one consumer.
fn share<T, E>(
    slot: &mut Option<Result<T, E>>,
    last: bool,
    cloner: Option<Cloner<T, E>>,
    from_error: fn(Error) -> E,
) -> Result<T, E> {
    match (last, cloner, slot.as_ref()) {
        (false, Some(clone), Some(outcome)) => clone(outcome),
        // A value already moved out can only be asked for again through a handle
        // that should not exist; answer with a broken promise rather than panic.
        _ => slot
            .take()
            .unwrap_or_else(|| Err(from_error(Error::broken()))),
    }
}

impl<T, E> Core<T, E> {
    pub(crate) fn new(
        state: Option<Result<T, E>>,
        has_resolver: bool,
        from_error: fn(Error) -> E,
    ) -> Self {
        let state = match state {
            Some(outcome) => State::Settled(Some(outcome)),
            None => State::Pending(SmallVec::new()),
        };
        Core {
            inner: Mutex::new(Inner {
                state,
                handles: 1,
                has_resolver,
                cloner: None,
            }),
            from_error,
        }
    }

    pub(crate) fn error_converter(&self) -> fn(Error) -> E {
        self.from_error
    }

    /// One of the library's failures as this promise's error type.
    pub(crate) fn fail(&self, error: Error) -> E {
        (self.from_error)(error)
    }

    /// Settles as broken: nothing is left that could settle it otherwise.
    pub(crate) fn settle_broken(&self, home: Option<&LoopRef>) -> bool {
        self.settle(Err(self.fail(Error::broken())), home)
    }

    /// Settles the promise; false if it already was. Reactions go to the loop
    /// running on this thread, or else to `home`.
    pub(crate) fn settle(&self, outcome: Result<T, E>, home: Option<&LoopRef>) -> bool {
        let mut inner = self.inner.lock();
        let waiters = match &mut inner.state {
            State::Pending(waiters) => std::mem::take(waiters),
            State::Settled(_) => return false,
        };
        inner.has_resolver = false;
        let mut reactions_left = waiters
            .iter()
            .filter(|w| matches!(w, Waiter::Reaction(_)))
            .count();
        let keep = inner.handles > 0;
        let cloner = inner.cloner;
        let mut slot = Some(outcome);
        // Reactions and wakers are served in the order they were attached (an
        // `await` is a `then` too, as in JavaScript).
        let mut served: SmallVec<[Serve<T, E>; 1]> = SmallVec::new();
        for waiter in waiters {
            match waiter {
                Waiter::Reaction(reaction) => {
                    reactions_left -= 1;
                    let last = reactions_left == 0 && !keep;
                    let outcome = share(&mut slot, last, cloner, self.from_error);
                    served.push(Serve::Run(reaction.deliver(outcome)));
                }
                other => served.push(Serve::Wake(other)),
            }
        }
        inner.state = State::Settled(slot);
        drop(inner);
        for next in served {
            match next {
                Serve::Run(job) => context::schedule(job, home),
                Serve::Wake(waiter) => waiter.wake(),
            }
        }
        true
    }

    /// Consumes one handle and attaches a reaction. If the promise is already
    /// settled, the job to queue is returned (never run inline: A+ 2.2.4).
    pub(crate) fn attach(&self, reaction: Arc<dyn Reaction<T, E>>) -> Option<Arc<dyn Runnable>> {
        let mut inner = self.inner.lock();
        inner.handles -= 1;
        let last = inner.handles == 0;
        let cloner = inner.cloner;
        match &mut inner.state {
            State::Pending(waiters) => {
                waiters.push(Waiter::Reaction(reaction));
                None
            }
            State::Settled(slot) => {
                let outcome = share(slot, last, cloner, self.from_error);
                drop(inner);
                Some(reaction.deliver(outcome))
            }
        }
    }

    /// The `Future` side: takes the outcome (consuming the handle) or registers the
    /// waker. `waiter` is only called when the promise is still pending.
    pub(crate) fn poll_take(
        &self,
        waiter: impl FnOnce(bool) -> Waiter<T, E>,
    ) -> Option<Result<T, E>> {
        let mut inner = self.inner.lock();
        let has_resolver = inner.has_resolver;
        match &mut inner.state {
            State::Pending(waiters) => {
                let new = waiter(has_resolver);
                let duplicate = waiters.iter().any(|old| match (old, &new) {
                    (Waiter::Task(a), Waiter::Task(b)) => a.same_task(b),
                    (Waiter::Waker(a), Waiter::Waker(b)) => a.will_wake(b),
                    _ => false,
                });
                if !duplicate {
                    waiters.push(new);
                }
                None
            }
            State::Settled(_) => {
                inner.handles -= 1;
                let last = inner.handles == 0;
                let cloner = inner.cloner;
                let State::Settled(slot) = &mut inner.state else {
                    unreachable!()
                };
                Some(share(slot, last, cloner, self.from_error))
            }
        }
    }

    /// A `Promise` handle was dropped without consuming the outcome.
    pub(crate) fn release_handle(&self) {
        let mut inner = self.inner.lock();
        inner.handles -= 1;
        if inner.handles == 0 {
            if let State::Settled(slot) = &mut inner.state {
                // Nobody can read it any more: free it now, outside the lock.
                let outcome = slot.take();
                drop(inner);
                drop(outcome);
            }
        }
    }

    pub(crate) fn add_handle(&self, cloner: Cloner<T, E>) {
        let mut inner = self.inner.lock();
        inner.handles += 1;
        inner.cloner = Some(cloner);
    }

    /// The resolver stopped being a way to settle this promise (it adopted another).
    pub(crate) fn resolver_gone(&self) {
        self.inner.lock().has_resolver = false;
    }

    /// `Some(true)` fulfilled, `Some(false)` rejected, `None` pending.
    pub(crate) fn status(&self) -> Option<bool> {
        match &self.inner.lock().state {
            State::Pending(_) => None,
            State::Settled(Some(outcome)) => Some(outcome.is_ok()),
            // Taken already: only possible without live handles.
            State::Settled(None) => Some(false),
        }
    }
}

impl<T, E> Drop for Core<T, E> {
    fn drop(&mut self) {
        // Only a promise that can never settle is dropped while it has waiters:
        // tell them, through the queue, so that a long chain does not recurse here.
        if let State::Pending(waiters) = &mut self.inner.get_mut().state {
            let waiters = std::mem::take(waiters);
            for waiter in waiters {
                match waiter {
                    Waiter::Reaction(reaction) => {
                        context::schedule(reaction.deliver(Err(self.fail(Error::broken()))), None)
                    }
                    other => other.wake(),
                }
            }
        }
    }
}
