//! How one promise's outcome becomes another's: the `then` link (a handler stored
//! in the child's own allocation) and adoption (a promise resolved with a promise).
//!
//! Links run only from the microtask queue. Adoption is iterative: a forwarder is a
//! reaction like any other, and a chaining cycle is refused before it can hang.

use std::sync::Arc;

use parking_lot::Mutex;

use super::core::{Graph, Node, NodeRef, Reaction, Runnable};
use super::Promise;
use crate::error::Error;
use crate::event_loop::context::{self, LoopRef};

/// What a handler produced: a settled outcome, or a promise to adopt.
pub enum Next<T, E> {
    /// Fulfil or reject with this.
    Settled(Result<T, E>),
    /// Follow this promise.
    Adopt(Promise<T, E>),
}

/// The input of a link's function: the parent's outcome, or word that it will never
/// come (the loop was dropped), in which case no user code may run.
pub(crate) enum Input<T, E> {
    Outcome(Result<T, E>),
    Abandoned,
}

enum Slot<T0, E0, F> {
    Waiting(F),
    Ready(F, Result<T0, E0>),
    Done,
}

/// The handler of a `then`-like call, kept in the child node.
pub(crate) struct ThenLink<T0, E0, F> {
    slot: Mutex<Slot<T0, E0, F>>,
}

impl<T0, E0, F> ThenLink<T0, E0, F> {
    pub(crate) fn new(f: F) -> Self {
        ThenLink {
            slot: Mutex::new(Slot::Waiting(f)),
        }
    }
}

impl<T, E, T0, E0, F> Node<T, E, ThenLink<T0, E0, F>>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn complete(self: Arc<Self>, next: Next<T, E>) {
        match next {
            Next::Settled(outcome) => {
                self.core.settle(outcome, None);
            }
            Next::Adopt(promise) => adopt(self, promise, None),
        }
    }
}

impl<T, E, T0, E0, F> Reaction<T0, E0> for Node<T, E, ThenLink<T0, E0, F>>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn deliver(self: Arc<Self>, outcome: Result<T0, E0>) -> Arc<dyn Runnable> {
        {
            let mut slot = self.link.slot.lock();
            if let Slot::Waiting(f) = std::mem::replace(&mut *slot, Slot::Done) {
                *slot = Slot::Ready(f, outcome);
            }
        }
        self
    }

    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>> {
        Some(self)
    }
}

impl<T, E, T0, E0, F> Runnable for Node<T, E, ThenLink<T0, E0, F>>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn run(self: Arc<Self>) {
        let slot = std::mem::replace(&mut *self.link.slot.lock(), Slot::Done);
        if let Slot::Ready(f, outcome) = slot {
            self.complete(f(Input::Outcome(outcome)));
        }
    }

    fn abandon(self: Arc<Self>) {
        let slot = std::mem::replace(&mut *self.link.slot.lock(), Slot::Done);
        if let Slot::Waiting(f) | Slot::Ready(f, _) = slot {
            self.complete(f(Input::Abandoned));
        }
    }
}

/// Follows `source` and settles `target` with its outcome, one microtask later (as
/// V8 does for a native promise returned from a handler).
pub(crate) fn adopt<T, E>(target: NodeRef<T, E>, source: Promise<T, E>, home: Option<&LoopRef>)
where
    T: Send + 'static,
    E: Send + 'static,
{
    let forward = Arc::new(Forward {
        target,
        step: Mutex::new(Step::Attach(source)),
    });
    context::schedule(forward, home);
}

enum Step<T, E> {
    Attach(Promise<T, E>),
    Forward(Result<T, E>),
    Waiting,
    Done,
}

struct Forward<T, E> {
    target: NodeRef<T, E>,
    step: Mutex<Step<T, E>>,
}

impl<T: Send + 'static, E: Send + 'static> Runnable for Forward<T, E> {
    fn run(self: Arc<Self>) {
        let step = std::mem::replace(&mut *self.step.lock(), Step::Waiting);
        match step {
            Step::Attach(mut source) => {
                let node = source.node.take().expect("adopting a consumed promise");
                if creates_cycle(&*self.target, &*node) {
                    *self.step.lock() = Step::Done;
                    node.core().release_handle();
                    let core = self.target.core();
                    let cycle = Error::deadlock(
                        "chaining cycle: a promise was resolved with a promise that waits on it",
                    );
                    core.settle(Err(core.fail(cycle)), None);
                    return;
                }
                let me: Arc<dyn Reaction<T, E>> = self.clone();
                if let Some(job) = node.core().attach(me) {
                    context::schedule(job, None);
                }
            }
            Step::Forward(outcome) => {
                *self.step.lock() = Step::Done;
                self.target.core().settle(outcome, None);
            }
            other => *self.step.lock() = other,
        }
    }

    fn abandon(self: Arc<Self>) {
        let step = std::mem::replace(&mut *self.step.lock(), Step::Done);
        if !matches!(step, Step::Done) {
            self.target.core().settle_broken(None);
        }
    }
}

impl<T: Send + 'static, E: Send + 'static> Reaction<T, E> for Forward<T, E> {
    fn deliver(self: Arc<Self>, outcome: Result<T, E>) -> Arc<dyn Runnable> {
        *self.step.lock() = Step::Forward(outcome);
        self
    }

    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>> {
        let target: Arc<dyn Graph> = self.target.clone();
        Some(target)
    }
}

impl<T, E> Drop for Forward<T, E> {
    fn drop(&mut self) {
        // Dropped before it could forward (its source was abandoned): the target
        // would otherwise stay pending for ever.
        if !matches!(self.step.get_mut(), Step::Done) {
            self.target.core().settle_broken(None);
        }
    }
}

/// Nodes visited at most when looking for a cycle. Every adoption pays for this
/// search, so it stays small: real cycles are short (a promise resolved with its own
/// `then`); a longer one goes undetected here, and a `block_on` on it ends with a
/// deadlock error instead of a chaining-cycle error.
const CYCLE_SEARCH_BUDGET: usize = 64;

/// True if `source` (transitively) waits on `target`, so that `target` adopting
/// `source` would wait on itself.
fn creates_cycle(target: &dyn Graph, source: &dyn Graph) -> bool {
    let wanted = source.key();
    if target.key() == wanted {
        return true;
    }
    let mut frontier = Vec::new();
    target.downstream(&mut frontier);
    let mut visited = 0;
    while let Some(node) = frontier.pop() {
        if node.key() == wanted {
            return true;
        }
        visited += 1;
        if visited >= CYCLE_SEARCH_BUDGET {
            return false;
        }
        node.downstream(&mut frontier);
    }
    false
}
