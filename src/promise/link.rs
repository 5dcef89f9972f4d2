//! How one promise's outcome becomes another's: the `then` link (a handler stored
//! in the child's own allocation), adoption (a promise resolved with a promise), and
//! the hooks that release a root promise's resource when it is cancelled.
//!
//! Links run only from the microtask queue. Adoption is iterative: a `then` child
//! follows the promise its handler returned as one more waiter of it (a resolver's
//! promise, through a forwarder), and a chaining cycle is refused before it can
//! hang.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;

use super::core::{
    self, Follower, Graph, Input, Link, Lock, Node, NodeDyn, NodeRef, Reaction, Runnable, Settle,
    Settling, FOLLOWER, REACTION,
};
use super::Promise;
use crate::error::Error;
use crate::event_loop::context::{self, LoopRef};
use crate::event_loop::{contained, report_panic};

/// What a handler produced: a settled outcome, or a promise to adopt.
pub enum Next<T, E> {
    /// Fulfil or reject with this.
    Settled(Result<T, E>),
    /// Follow this promise.
    Adopt(Promise<T, E>),
    /// Reject with a quiet rejection's reason, passed on untouched: it stays
    /// cancellation travelling on (see `Input::Quiet`).
    Quiet(E),
    /// The input was a cancellation: cancel too.
    Cancelled,
}

/// Settles `node`, registering an unwatched rejection for the unhandled report.
/// Generic over the node's type, so that a caller holding a concrete `Arc` (a
/// resolver) settles through a reference, without a count up and down for a
/// `NodeRef`.
pub(crate) fn settle<T, E, N>(node: &Arc<N>, outcome: Result<T, E>, home: Option<&LoopRef>)
where
    T: Send + 'static,
    E: Send + 'static,
    N: NodeDyn<T, E> + ?Sized,
{
    settle_as(node, outcome, false, home);
}

/// [`settle`], a rejection being quiet when `quiet` is set (see `Input::Quiet`).
pub(crate) fn settle_as<T, E, N>(
    node: &Arc<N>,
    outcome: Result<T, E>,
    quiet: bool,
    home: Option<&LoopRef>,
) where
    T: Send + 'static,
    E: Send + 'static,
    N: NodeDyn<T, E> + ?Sized,
{
    match node.core().settle_as(outcome, quiet, home) {
        Settle::Already => return,
        Settle::Unwatched => track_unwatched(node.clone().into_graph(), home),
        Settle::Done => {}
    }
    node.on_settled();
}

/// Registers `node`, rejected with nobody to see it, for the unhandled report.
fn track_unwatched(node: Arc<dyn Graph>, home: Option<&LoopRef>) {
    match home {
        // Settled on another thread (a resolver is `Send`): this thread's loop,
        // if any, is not the one whose drain decides whether it was handled.
        Some(home) if context::local_queue(Some(home)).is_none() => {
            context::schedule(Arc::new(TrackUnhandled(node)), Some(home));
        }
        _ => context::track_unhandled(node),
    }
}

/// Registers a rejection for the unhandled report on the loop that runs it.
struct TrackUnhandled(Arc<dyn Graph>);

impl Runnable for TrackUnhandled {
    fn run(self: Arc<Self>) {
        context::track_unhandled(self.0.clone());
    }

    fn abandon(self: Arc<Self>) {}
}

/// The states of a `then` link's slot (`T0, E0` are the parent's types, `T, E`
/// the child's own), shared with observers, which never follow a promise.
enum Slot<T0, E0, F, T = (), E = ()> {
    /// Attached to `parent`, waiting for its outcome.
    Waiting {
        f: F,
        parent: Arc<dyn Graph>,
    },
    /// Queued with its input.
    Ready {
        f: F,
        input: Input<T0, E0>,
    },
    /// The handler returned this promise: queued to follow it, a tick later (as
    /// V8's job that calls `then` on a returned promise).
    Adopting(Promise<T, E>),
    /// Attached to the promise the handler returned, waiting for its outcome.
    Following(Arc<dyn Graph>),
    /// Queued with the followed promise's outcome.
    Forwarding(Input<T, E>),
    Done,
}

/// What [`Slot::cancel`] leaves for its caller to do once the lock is released.
enum AfterCancel<T, E> {
    /// It was waiting: queue it (its function sees `Input::Cancelled`) and
    /// withdraw it from `parent`.
    Withdraw(Arc<dyn Graph>),
    /// Let go of the promise it was about to follow.
    Release(Promise<T, E>),
    /// Stop following this promise.
    Unfollow(Arc<dyn Graph>),
    Nothing,
}

/// What a queued link does when its job runs.
enum Queued<T0, E0, F, T, E> {
    Handle(F, Input<T0, E0>),
    Follow(Promise<T, E>),
    Forward(Input<T, E>),
}

/// The transitions of a slot, shared by `then` links and observers.
impl<T0, E0, F, T, E> Slot<T0, E0, F, T, E> {
    /// The parent's outcome arrived: ready to run, unless the link was cancelled
    /// while the parent settled (on another thread, between `cancel` queuing the
    /// function with `Input::Cancelled` and withdrawing it from the parent): then
    /// the function keeps that input, and the outcome is not wanted.
    fn deliver(&mut self, input: Input<T0, E0>) {
        match std::mem::replace(self, Slot::Done) {
            Slot::Waiting { f, .. } => *self = Slot::Ready { f, input },
            other => {
                *self = other;
                // Dropped in the middle of the parent's settling, under its lock:
                // a drop that panics must not leave it half-settled.
                crate::event_loop::contained("a value's drop", || drop(input));
            }
        }
    }

    /// The function and its input, if it is ready to run.
    fn take_ready(&mut self) -> Option<(F, Input<T0, E0>)> {
        match std::mem::replace(self, Slot::Done) {
            Slot::Ready { f, input } => Some((f, input)),
            _ => None,
        }
    }

    /// What the link's job has to do, if anything.
    fn take_step(&mut self) -> Option<Queued<T0, E0, F, T, E>> {
        match std::mem::replace(self, Slot::Done) {
            Slot::Ready { f, input } => Some(Queued::Handle(f, input)),
            Slot::Adopting(promise) => Some(Queued::Follow(promise)),
            Slot::Forwarding(input) => Some(Queued::Forward(input)),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The function, if it has not run yet (the loop is gone).
    fn take_unrun(&mut self) -> Option<F> {
        match std::mem::replace(self, Slot::Done) {
            Slot::Waiting { f, .. } | Slot::Ready { f, .. } => Some(f),
            _ => None,
        }
    }

    /// Cancelled: a function that has not run will see `Input::Cancelled`.
    fn cancel(&mut self) -> AfterCancel<T, E> {
        match std::mem::replace(self, Slot::Done) {
            Slot::Waiting { f, parent } => {
                *self = Slot::Ready {
                    f,
                    input: Input::Cancelled,
                };
                AfterCancel::Withdraw(parent)
            }
            Slot::Ready { f, .. } => {
                *self = Slot::Ready {
                    f,
                    input: Input::Cancelled,
                };
                AfterCancel::Nothing
            }
            Slot::Adopting(promise) => AfterCancel::Release(promise),
            Slot::Following(source) => AfterCancel::Unfollow(source),
            Slot::Forwarding(_) | Slot::Done => AfterCancel::Nothing,
        }
    }
}

/// The handler of a `then`-like call, kept in the child node (`T0, E0` are the
/// parent's types, `T, E` the child's).
pub(crate) struct ThenLink<T0, E0, F, T, E> {
    slot: Lock<Slot<T0, E0, F, T, E>>,
}

impl<T0, E0, F, T, E> ThenLink<T0, E0, F, T, E> {
    pub(crate) fn new(f: F, parent: Arc<dyn Graph>) -> Self {
        ThenLink {
            slot: Lock::new(Slot::Waiting { f, parent }),
        }
    }
}

/// Lets go of a promise a cancelled link was about to follow, as a cancelled
/// consumer would: it is cancelled in turn if nothing else consumes it.
fn let_go<T: Send + 'static, E: Send + 'static>(mut promise: Promise<T, E>) {
    let source = promise.take_node();
    if source.core().let_go() {
        source.cancel_node();
    }
}

/// The error a promise adopting one that waits on it is rejected with.
fn chaining_cycle() -> Error {
    Error::deadlock("chaining cycle: a promise was resolved with a promise that waits on it")
}

impl<T, E, T0, E0, F> Node<T, E, ThenLink<T0, E0, F, T, E>>
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
                if self.core.settle(outcome, None) == Settle::Unwatched {
                    context::track_unhandled(self);
                }
            }
            Next::Quiet(error) => self.settle_quietly(error),
            Next::Adopt(promise) => {
                // Followed from the queue, a tick later, by this node itself: no
                // forwarder to allocate.
                *self.link.slot.lock() = Slot::Adopting(promise);
                context::schedule(self, None);
            }
            Next::Cancelled => {
                self.cancel_node();
            }
        }
    }

    /// Rejects this node quietly, passing on a quiet rejection (see `Input::Quiet`).
    fn settle_quietly(self: Arc<Self>, error: E) {
        if self.core.settle_as(Err(error), true, None) == Settle::Unwatched {
            context::track_unhandled(self);
        }
    }

    /// Attaches to the promise the handler returned, unless that would wait on
    /// itself.
    fn follow(self: Arc<Self>, mut promise: Promise<T, E>) {
        let source = promise.take_node();
        if creates_cycle(&*self, &*source) {
            source.core().release_handle();
            let cycle = self.core.fail(chaining_cycle());
            if self.core.settle(Err(cycle), None) == Settle::Unwatched {
                context::track_unhandled(self);
            }
            return;
        }
        // Following before attaching: an outcome delivered at once finds it so.
        *self.link.slot.lock() = Slot::Following(source.clone());
        if let Some(job) = source.core().attach_follower(self.clone()) {
            context::schedule(job, None);
        }
        // Cancelled from another thread while the handler ran, or before the
        // attachment: that cancellation found nothing to withdraw, so withdraw now
        // (twice is harmless).
        if self.core.is_cancelled() {
            core::withdraw(source, (self.key(), FOLLOWER));
        }
    }

    /// Settles this node as the followed promise did.
    fn forward(self: Arc<Self>, input: Input<T, E>) {
        let outcome = match input {
            Input::Fulfilled(value) => Ok(value),
            Input::Rejected(error) => Err(error),
            Input::Quiet(error) => return self.settle_quietly(error),
            Input::Cancelled => {
                self.cancel_node();
                return;
            }
            Input::Abandoned => Err(self.core.fail(Error::broken())),
        };
        if self.core.settle(outcome, None) == Settle::Unwatched {
            context::track_unhandled(self);
        }
    }
}

impl<T, E, T0, E0, F> Link<T, E> for ThenLink<T0, E0, F, T, E>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn on_cancel(node: &Arc<Node<T, E, Self>>) {
        let after = node.link.slot.lock().cancel();
        match after {
            AfterCancel::Withdraw(parent) => {
                // Handlers see the cancellation (a `finally` runs), from the queue.
                context::schedule(node.clone(), None);
                core::withdraw(parent, (node.key(), REACTION));
            }
            AfterCancel::Release(promise) => let_go(promise),
            AfterCancel::Unfollow(source) => core::withdraw(source, (node.key(), FOLLOWER)),
            AfterCancel::Nothing => {}
        }
    }

    /// Not the promise it is queued to follow: the cycle search sees only attached
    /// links (the link checks for a cycle itself when it attaches).
    fn upstream(node: &Node<T, E, Self>) -> Option<Arc<dyn Graph>> {
        match &*node.link.slot.lock() {
            Slot::Waiting { parent, .. } => Some(parent.clone()),
            Slot::Following(source) => Some(source.clone()),
            Slot::Adopting(_) | Slot::Ready { .. } | Slot::Forwarding(_) | Slot::Done => None,
        }
    }

    /// The promise it is queued to follow too: that one's settler settles it.
    fn settling(node: &Node<T, E, Self>) -> Settling {
        let source = match &*node.link.slot.lock() {
            Slot::Waiting { parent, .. } => Some(parent.clone()),
            Slot::Adopting(promise) => promise.node.clone().map(|node| node as Arc<dyn Graph>),
            Slot::Following(source) => Some(source.clone()),
            Slot::Ready { .. } | Slot::Forwarding(_) | Slot::Done => None,
        };
        match source {
            Some(source) => Settling::Follows(source),
            // Its job is queued with the input (its handler's, or the outcome to
            // forward), on the loop that settled the parent.
            None if node.core.status() == core::Status::Pending => Settling::Queued,
            None => Settling::Unknown,
        }
    }
}

impl<T, E, T0, E0, F> Reaction<T0, E0> for Node<T, E, ThenLink<T0, E0, F, T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn deliver(self: Arc<Self>, input: Input<T0, E0>) -> Arc<dyn Runnable> {
        self.link.slot.lock().deliver(input);
        self
    }

    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>> {
        Some(self)
    }

    fn reaction_key(&self) -> usize {
        self.key()
    }
}

impl<T, E, T0, E0, F> Follower<T, E> for Node<T, E, ThenLink<T0, E0, F, T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn forward(self: Arc<Self>, input: Input<T, E>) -> Arc<dyn Runnable> {
        let mut slot = self.link.slot.lock();
        if matches!(*slot, Slot::Following(_)) {
            *slot = Slot::Forwarding(input);
        }
        drop(slot);
        self
    }

    fn node(self: Arc<Self>) -> Arc<dyn Graph> {
        self
    }

    fn follower_key(&self) -> usize {
        self.key()
    }
}

impl<T, E, T0, E0, F> Runnable for Node<T, E, ThenLink<T0, E0, F, T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
    T0: Send + 'static,
    E0: Send + 'static,
    F: FnOnce(Input<T0, E0>) -> Next<T, E> + Send + 'static,
{
    fn run(self: Arc<Self>) {
        let step = self.link.slot.lock().take_step();
        match step {
            Some(Queued::Handle(f, input)) => self.complete(f(input)),
            Some(Queued::Follow(promise)) => self.follow(promise),
            Some(Queued::Forward(input)) => self.forward(input),
            None => {}
        }
    }

    fn abandon(self: Arc<Self>) {
        let step = self.link.slot.lock().take_step();
        match step {
            Some(Queued::Handle(f, input)) => {
                // No handler runs now, but dropping it and its input is user code:
                // a panic is reported, and the child breaks all the same.
                contained("a value's drop", || drop(input));
                let next = catch_unwind(AssertUnwindSafe(|| f(Input::Abandoned)));
                let next = next.unwrap_or_else(|payload| {
                    report_panic("an abandoned handler's drop", &*payload);
                    Next::Settled(Err(self.core.fail(Error::broken())))
                });
                self.complete(next)
            }
            Some(Queued::Follow(_)) | Some(Queued::Forward(_)) => {
                let _ = self.core.settle_broken(None);
            }
            None => {}
        }
    }
}

/// What a cancelled root runs to release its resource (clear a timer, drop a task).
type CancelHook = Box<dyn FnOnce() + Send>;

/// What a root registered: its cancellation hooks, and the promise its resolver
/// made it follow (its upstream, for chaining-cycle detection: without it a ring
/// of resolvers is only seen by the bounded downstream search).
#[derive(Default)]
struct Registered {
    hooks: SmallVec<[CancelHook; 1]>,
    following: Option<Arc<dyn Cancel>>,
}

/// The inputs a combinator still waits on, at most `limit` of them.
pub(crate) trait PendingInputs: Send + Sync {
    fn pending_inputs(&self, limit: usize) -> Vec<Arc<dyn Graph>>;
}

/// The link of a promise that something other than a parent settles (a resolver,
/// a timer, a task): what to release if it is cancelled. For a resolver's promise it
/// also holds the home loop, kept alive until the resolver is done.
pub(crate) struct Hooks {
    /// Boxed: most promises never get a hook (a user's `Promise::pending` has
    /// none), and inline the list made every such node a 128-byte chunk, not 112.
    on_cancel: Lock<Option<Box<Registered>>>,
    home: Option<LoopRef>,
    /// Settled, following another promise, or cancelled: the settler is done.
    finished: AtomicBool,
    /// Live `Resolver` clones: when the last goes while unfinished, the promise is
    /// broken. Not counted down once finished (nothing reads it then).
    resolvers: AtomicU32,
    /// Set once `on_cancel` holds a list: settling checks it before taking the
    /// lock to drop the list (a locked instruction most settles need not pay).
    registered: AtomicBool,
}

impl Hooks {
    /// `home` is the loop a resolver keeps alive (already acquired); with one,
    /// that first resolver is counted already (a count made, not added to).
    pub(crate) fn new(home: Option<LoopRef>) -> Hooks {
        Hooks {
            on_cancel: Lock::new(None),
            resolvers: AtomicU32::new(u32::from(home.is_some())),
            home,
            finished: AtomicBool::new(false),
            registered: AtomicBool::new(false),
        }
    }

    /// The registered list, made now if need be.
    fn list_in<'a>(&self, list: &'a mut Option<Box<Registered>>) -> &'a mut Registered {
        list.get_or_insert_with(|| {
            self.registered.store(true, Ordering::Release);
            Box::default()
        })
    }

    pub(crate) fn add_resolver(&self) {
        self.resolvers.fetch_add(1, Ordering::Relaxed);
    }

    /// One resolver went away; true if it was the last.
    pub(crate) fn drop_resolver(&self) -> bool {
        self.resolvers.fetch_sub(1, Ordering::AcqRel) == 1
    }

    pub(crate) fn home(&self) -> Option<&LoopRef> {
        self.home.as_ref()
    }

    /// Marks the settler done; false if it already was. The caller settles, then
    /// calls [`release_home`](Self::release_home): in that order, a loop waiting
    /// on the home loop's resolvers sees the settlement's work before it sees the
    /// resolver gone, and does not mistake the moment for a deadlock.
    pub(crate) fn finish(&self) -> bool {
        !self.finished.swap(true, Ordering::AcqRel)
    }

    /// Stops keeping the home loop alive (once, after `finish` returned true).
    pub(crate) fn release_home(&self) {
        if let Some(home) = &self.home {
            home.release();
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Adds a cancellation hook: run at once if the node is already cancelled,
    /// dropped if it settled otherwise.
    pub(crate) fn add<T, E>(node: &Node<T, E, Hooks>, hook: CancelHook) {
        let mut hooks = node.link.on_cancel.lock();
        match node.core.status() {
            core::Status::Pending => node.link.list_in(&mut hooks).hooks.push(hook),
            core::Status::Cancelled => {
                drop(hooks);
                run_hook(hook);
            }
            _ => {}
        }
    }

    /// Records that the node follows what `forward` follows (its upstream), and
    /// that a cancellation stops `forward`.
    pub(crate) fn follow<T, E>(node: &Node<T, E, Hooks>, forward: Arc<dyn Cancel>) {
        let stop = forward.clone();
        node.link.list_in(&mut node.link.on_cancel.lock()).following = Some(forward);
        Hooks::add(node, Box::new(move || stop.cancel()));
    }
}

impl<T, E> Link<T, E> for Hooks {
    /// The cancellation hooks will never run: dropped now, not when the node
    /// goes (a settled promise may be kept for long, a cache's, and a hook
    /// may hold what stops the work, a channel's sender, a handle). The rest
    /// of what was registered was for a pending node only.
    ///
    /// A list made while it settles may be missed here (the flag read before it
    /// was set): it is then dropped with the node, as every list was before.
    fn on_settled(node: &Node<T, E, Self>) {
        if !node.link.registered.load(Ordering::Acquire) {
            return;
        }
        let registered = node.link.on_cancel.lock().take();
        if registered.is_some() {
            // The captures of a user's `on_cancel` callback: user code.
            contained("an on_cancel callback's drop", || drop(registered));
        }
    }

    fn on_cancel(node: &Arc<Node<T, E, Self>>) {
        if node.link.finish() {
            node.link.release_home();
        }
        let hooks = node.link.on_cancel.lock().take();
        for hook in hooks.into_iter().flat_map(|registered| registered.hooks) {
            run_hook(hook);
        }
    }

    fn upstream(node: &Node<T, E, Self>) -> Option<Arc<dyn Graph>> {
        let following = node.link.on_cancel.lock().as_ref()?.following.clone()?;
        following.source()
    }

    /// A live resolver's promise is its home loop's business: settling it from
    /// another thread runs its reactions there. So is one whose resolver has
    /// just finished and is settling it (or making it follow another) right
    /// now, on whatever thread: until the outcome or the forwarder is in place,
    /// nothing else would say who settles it, and a wait looking at that moment
    /// would take it for one nothing can end.
    fn settling(node: &Node<T, E, Self>) -> Settling {
        let link = &node.link;
        match &link.home {
            Some(home) if !link.is_finished() && link.resolvers.load(Ordering::Acquire) > 0 => {
                Settling::Loop(home.id)
            }
            _ => {
                let registered = node.link.on_cancel.lock();
                let following = registered.as_ref().and_then(|r| r.following.clone());
                drop(registered);
                if let (Some(home), None) = (&link.home, &following) {
                    if node.core.status() == core::Status::Pending {
                        // Finished, still pending: its resolver is settling it.
                        return Settling::Loop(home.id);
                    }
                }
                match following {
                    Some(forward) => match forward.source() {
                        Some(source) => Settling::Follows(source),
                        // Queued to attach to the promise it follows, or to
                        // forward its outcome.
                        None if forward.is_queued() => Settling::Queued,
                        None => Settling::Unknown,
                    },
                    None => Settling::Unknown,
                }
            }
        }
    }
}

/// Runs a cancellation hook. A user's (`Resolver::on_cancel`) may panic, and it
/// runs wherever the cancellation travels: inside a combinator's job that cancels
/// its losers, a timer's callback, another promise's cancellation. Unwound, the
/// panic would skip the hooks after it (the one that stops following a promise,
/// among others) and the rest of that work (the other losers, left running), and
/// leave the loop; so it is reported, as a `set_timeout` callback's is.
fn run_hook(hook: CancelHook) {
    contained("an on_cancel callback", hook);
}

/// Something that can stop following a promise.
pub(crate) trait Cancel: Send + Sync {
    fn cancel(&self);
    /// The promise being followed, once attached to it and until the outcome is
    /// forwarded.
    fn source(&self) -> Option<Arc<dyn Graph>>;
    /// A job of the forwarder is queued: to attach, or to forward the outcome.
    fn is_queued(&self) -> bool;
}

/// Follows `source` and settles `target` with its outcome, one microtask later (as
/// V8 does for a native promise returned from a handler). `register` receives the
/// forwarder before it is queued (on another thread's loop it may run at once): it
/// lets a cancelled `target` stop following (and withdraw from) `source`, and
/// tells the cycle search what `target` follows.
pub(crate) fn adopt<T, E>(
    target: NodeRef<T, E>,
    source: Promise<T, E>,
    home: Option<&LoopRef>,
    register: impl FnOnce(Arc<dyn Cancel>),
) where
    T: Send + 'static,
    E: Send + 'static,
{
    let forward = Arc::new(Forward {
        target: Lock::new(Some(target)),
        step: Lock::new(Step::Attach(source)),
    });
    register(forward.clone());
    context::schedule(forward, home);
}

enum Step<T, E> {
    Attach(Promise<T, E>),
    Waiting(Arc<dyn Graph>),
    Forward(Input<T, E>),
    Done,
}

struct Forward<T, E> {
    /// `None` once forwarded or cancelled.
    target: Lock<Option<NodeRef<T, E>>>,
    step: Lock<Step<T, E>>,
}

impl<T: Send + 'static, E: Send + 'static> Forward<T, E> {
    fn take_target(&self) -> Option<NodeRef<T, E>> {
        self.target.lock().take()
    }
}

impl<T: Send + 'static, E: Send + 'static> Runnable for Forward<T, E> {
    fn run(self: Arc<Self>) {
        let step = std::mem::replace(&mut *self.step.lock(), Step::Done);
        match step {
            Step::Attach(mut source) => {
                let Some(target) = self.target.lock().clone() else {
                    return;
                };
                let node = source.take_node();
                if creates_cycle(&*target, &*node) {
                    self.take_target();
                    node.core().release_handle();
                    let core = target.core();
                    settle(&target, Err(core.fail(chaining_cycle())), None);
                    return;
                }
                *self.step.lock() = Step::Waiting(node.clone());
                let me: Arc<dyn Reaction<T, E>> = self.clone();
                if let Some(job) = node.core().attach(me) {
                    context::schedule(job, None);
                }
            }
            Step::Forward(input) => {
                let Some(target) = self.take_target() else {
                    return;
                };
                match input {
                    Input::Fulfilled(value) => settle(&target, Ok(value), None),
                    Input::Rejected(error) => settle(&target, Err(error), None),
                    Input::Quiet(error) => settle_as(&target, Err(error), true, None),
                    Input::Cancelled => {
                        target.cancel_node();
                    }
                    Input::Abandoned => {
                        let core = target.core();
                        settle(&target, Err(core.fail(Error::broken())), None);
                    }
                }
            }
            other => *self.step.lock() = other,
        }
    }

    fn abandon(self: Arc<Self>) {
        let step = std::mem::replace(&mut *self.step.lock(), Step::Done);
        if let Some(target) = self.take_target() {
            break_target(&*target);
        }
        // Only now: the promise or outcome it held may be the last of a value
        // whose drop panics, and the target must be broken by then.
        drop(step);
    }
}

impl<T: Send + 'static, E: Send + 'static> Reaction<T, E> for Forward<T, E> {
    fn deliver(self: Arc<Self>, input: Input<T, E>) -> Arc<dyn Runnable> {
        *self.step.lock() = Step::Forward(input);
        self
    }

    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>> {
        let target: Arc<dyn Graph> = self.target.lock().clone()?;
        Some(target)
    }

    fn reaction_key(&self) -> usize {
        self as *const Self as usize
    }
}

impl<T: Send + 'static, E: Send + 'static> Cancel for Forward<T, E> {
    fn cancel(&self) {
        let step = std::mem::replace(&mut *self.step.lock(), Step::Done);
        self.take_target();
        match step {
            // Not attached yet: we hold the only handle we took; let it go as a
            // cancelled consumer would.
            Step::Attach(mut source) => {
                let node = source.take_node();
                if node.core().let_go() {
                    node.cancel_node();
                }
            }
            Step::Waiting(source) => core::withdraw(source, (self.reaction_key(), REACTION)),
            Step::Forward(_) | Step::Done => {}
        }
    }

    fn source(&self) -> Option<Arc<dyn Graph>> {
        // Only once attached: a forwarder still queued to attach checks for a
        // cycle itself when it runs, and a chain of resolvers built head first
        // (each following the next, not yet attached) then costs no walk at all.
        match &*self.step.lock() {
            Step::Waiting(source) => Some(source.clone()),
            Step::Attach(_) | Step::Forward(_) | Step::Done => None,
        }
    }

    fn is_queued(&self) -> bool {
        matches!(&*self.step.lock(), Step::Attach(_) | Step::Forward(_))
    }
}

impl<T, E> Drop for Forward<T, E> {
    fn drop(&mut self) {
        // Dropped before it could forward (its source was abandoned): the target
        // would otherwise stay pending for ever.
        if let Some(target) = self.target.get_mut().take() {
            break_target(&*target);
        }
    }
}

/// Settles a forwarder's target as broken.
fn break_target<T, E>(target: &dyn NodeDyn<T, E>) {
    if target.core().settle_broken(None) != Settle::Already {
        target.on_settled();
    }
}

/// Steps the chaining-cycle search takes at most: far more than any real graph,
/// a bound for safety only.
const SEARCH_LIMIT: usize = 1 << 24;

/// Nodes visited at most when also looking downstream through tasks (for cycles
/// that pass through something with no single upstream).
const DOWNSTREAM_SEARCH_BUDGET: usize = 64;

/// True if `source` (transitively) waits on `target`, so that `target` adopting
/// `source` would wait on itself.
///
/// What a promise waits on is a chain, not a tree (a `then` link waits on its
/// parent, a link following a returned promise on that one), and what waits on it
/// is the tree of such chains ending there: `source` waits on `target` when the
/// chain up from `source` meets `target`, which is when the tree down from
/// `target` holds `source`. So [`waits_on`] walks both, a step each in turn, and
/// stops as soon as either ends: it costs twice the smaller, and finds a cycle of
/// any length through `then` links and adoptions. (Wrapping a promise again and
/// again, each wrapper adopts a long chain but nothing waits on it yet: a step
/// each, where walking up alone made the wrappers cost quadratic time.) A short
/// search downstream of `target` through tasks catches some more.
fn creates_cycle(target: &dyn Graph, source: &dyn Graph) -> bool {
    if !source.may_wait() {
        return false; // a timer's promise, or a settled one: it waits on nothing
    }
    waits_on(source, target) || reaches_through_tasks(target, source.key())
}

/// True if the chain `source` waits on reaches `target` (see [`creates_cycle`]).
///
/// Only links attached to what they wait on count, on both sides (they are the
/// waiters `downstream` lists): a `then` child or a forwarder queued to follow a
/// promise searches for a cycle itself when it attaches, and sees this one's link
/// then, so the cycle is refused wherever it closes.
fn waits_on(source: &dyn Graph, target: &dyn Graph) -> bool {
    let (top, bottom) = (target.key(), source.key());
    visit();
    if bottom == top {
        return true;
    }
    let mut up = source.upstream();
    let mut down = Vec::new();
    target.downstream(&mut down, false);
    for _ in 0..SEARCH_LIMIT {
        let Some(node) = down.pop() else {
            return false; // nothing below `target` is `source`
        };
        visit();
        if node.key() == bottom {
            return true;
        }
        node.downstream(&mut down, false);
        let Some(node) = up else {
            return false; // `source`'s chain ended without `target`
        };
        visit();
        if node.key() == top {
            return true;
        }
        up = node.upstream();
    }
    false
}

/// True if a promise within the first few downstream of `target`, tasks' promises
/// included, is `wanted`.
fn reaches_through_tasks(target: &dyn Graph, wanted: usize) -> bool {
    let mut frontier = Vec::new();
    target.downstream(&mut frontier, true);
    let mut visited = 0;
    while let Some(node) = frontier.pop() {
        visit();
        if node.key() == wanted {
            return true;
        }
        visited += 1;
        if visited >= DOWNSTREAM_SEARCH_BUDGET {
            return false;
        }
        node.downstream(&mut frontier, true);
    }
    false
}

/// Counts a node the cycle search looked at, for the unit tests of its cost.
#[inline(always)]
fn visit() {
    #[cfg(test)]
    tests::VISITS.with(|visits| visits.set(visits.get() + 1));
}

/// A consumer of one promise's outcome that is not a promise itself: the inputs
/// of a combinator, which nothing chains on. Like a `then` link, its function runs
/// from the microtask queue and a cancellation withdraws it from the promise it
/// watches (travelling upstream); unlike one, it has no state of its own to settle,
/// so it costs a third of the memory and none of the settling.
pub(crate) struct Observer<T, E, F> {
    /// The same states as a `then` link's (never `Following`).
    watch: Lock<Slot<T, E, F>>,
}

/// A way to stop observing, whatever the observed promise's types.
pub(crate) trait Observation: Send + Sync {
    /// Withdraws from the observed promise if its outcome has not arrived yet; the
    /// function then runs with `Input::Cancelled`, from the queue.
    fn cancel(self: Arc<Self>);
    /// The observed promise, while its outcome has not arrived.
    fn observed(&self) -> Option<Arc<dyn Graph>>;
}

impl<T, E, F> Observer<T, E, F>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Input<T, E>) + Send + 'static,
{
    /// Observes `parent` (consuming its handle) with `f`.
    pub(crate) fn attach(parent: NodeRef<T, E>, f: F) -> Arc<Self> {
        let upstream: Arc<dyn Graph> = parent.clone();
        let observer = Arc::new(Observer {
            watch: Lock::new(Slot::Waiting {
                f,
                parent: upstream,
            }),
        });
        if let Some(job) = parent.core().attach(observer.clone()) {
            context::schedule(job, None);
        }
        observer
    }
}

impl<T, E, F> Reaction<T, E> for Observer<T, E, F>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Input<T, E>) + Send + 'static,
{
    fn deliver(self: Arc<Self>, input: Input<T, E>) -> Arc<dyn Runnable> {
        self.watch.lock().deliver(input);
        self
    }

    fn target(self: Arc<Self>) -> Option<Arc<dyn Graph>> {
        None
    }

    fn reaction_key(&self) -> usize {
        self as *const Self as usize
    }
}

impl<T, E, F> Runnable for Observer<T, E, F>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Input<T, E>) + Send + 'static,
{
    fn run(self: Arc<Self>) {
        let ready = self.watch.lock().take_ready();
        if let Some((f, input)) = ready {
            f(input);
        }
    }

    fn abandon(self: Arc<Self>) {
        let unrun = self.watch.lock().take_unrun();
        if let Some(f) = unrun {
            f(Input::Abandoned);
        }
    }
}

impl<T, E, F> Observation for Observer<T, E, F>
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(Input<T, E>) + Send + 'static,
{
    fn cancel(self: Arc<Self>) {
        let after = self.watch.lock().cancel();
        if let AfterCancel::Withdraw(parent) = after {
            let key = self.reaction_key();
            context::schedule(self, None);
            core::withdraw(parent, (key, REACTION));
        }
    }

    fn observed(&self) -> Option<Arc<dyn Graph>> {
        match &*self.watch.lock() {
            Slot::Waiting { parent, .. } => Some(parent.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::EventLoop;

    thread_local! {
        /// Nodes the chaining-cycle search visited on this thread.
        pub(super) static VISITS: Cell<usize> = const { Cell::new(0) };
    }

    /// Runs `wrap` on a fresh loop, returning the value it settles with and the
    /// nodes the cycle search visited meanwhile.
    fn visits_while(wrap: impl FnOnce() -> Promise<u64>) -> (u64, usize) {
        let event_loop = EventLoop::new();
        VISITS.with(|v| v.set(0));
        let value = event_loop.block_on(wrap()).expect("the wrapped value");
        (value, VISITS.with(Cell::get))
    }

    #[test]
    fn a_resolver_s_promise_stays_its_home_s_business_while_the_resolver_settles_it() {
        // `Resolver::settle` on another thread marks the resolver finished, then
        // settles: a wait's search that looks in between must not find a
        // promise that nothing settles (`block_on` took it for a deadlock, one
        // run in about a hundred of a test that settles from the pool).
        let event_loop = EventLoop::new();
        let (promise, resolver) = Promise::<u64>::pending();
        let node = resolver.node.clone();
        let home = node.link.home().expect("a resolver has a home").id;
        let settling = |node: &Node<u64, Error, Hooks>| <Hooks as Link<u64, Error>>::settling(node);
        assert!(matches!(settling(&node), Settling::Loop(id) if id == home));
        assert!(node.link.finish());
        assert!(
            matches!(settling(&node), Settling::Loop(id) if id == home),
            "finished but not yet settled: still its home's business"
        );
        settle(&node, Ok(1), node.link.home());
        node.link.release_home();
        assert!(matches!(settling(&node), Settling::Unknown));
        drop((resolver, promise, event_loop));
    }

    /// Each wrapper adopts the previous one, all queued to follow in the same
    /// tick: the search must not walk the whole chain adopted so far.
    #[test]
    fn wrapping_a_promise_again_and_again_costs_a_search_linear_in_the_wrappers() {
        for wrappers in [1_000u64, 2_000, 4_000] {
            let (value, visits) = visits_while(|| {
                let mut p = Promise::<u64>::resolved(7);
                for _ in 0..wrappers {
                    p = Promise::<(), Error>::resolved(()).then(move |()| p);
                }
                p
            });
            assert_eq!(value, 7);
            assert!(
                visits as u64 <= 2 * wrappers,
                "{wrappers} then wrappers: {visits} nodes visited"
            );
            // The same through resolvers, each following the one made before it.
            let (value, visits) = visits_while(|| {
                let mut p = Promise::<u64>::resolved(7);
                for _ in 0..wrappers {
                    let (next, resolver) = Promise::<u64>::pending();
                    assert!(resolver.resolve_with(p));
                    p = next;
                }
                p
            });
            assert_eq!(value, 7);
            assert!(
                visits as u64 <= 2 * wrappers,
                "{wrappers} resolver wrappers: {visits} nodes visited"
            );
        }
    }

    /// A ring of `then` children, each returning the next, all queued to follow in
    /// the same tick: none of them sees another's link before it attaches, and the
    /// one that closes the ring refuses it, whichever order they attach in.
    #[test]
    fn a_ring_of_then_children_adopting_each_other_at_once_is_a_chaining_cycle() {
        let event_loop = EventLoop::new();
        for ring in [1usize, 2, 3, 64, 65, 1_000] {
            for backwards in [false, true] {
                let slots: Vec<Arc<Lock<Option<Promise<u64>>>>> =
                    (0..ring).map(|_| Arc::default()).collect();
                let children: Vec<Promise<u64>> = (0..ring)
                    .map(|i| {
                        let next = if backwards { i + ring - 1 } else { i + 1 };
                        let slot = slots[next % ring].clone();
                        Promise::<(), Error>::resolved(())
                            .then(move |()| slot.lock().take().expect("filled before the loop"))
                    })
                    .collect();
                for (slot, child) in slots.iter().zip(&children) {
                    *slot.lock() = Some(child.clone());
                }
                for child in children {
                    let err = event_loop.block_on(child).unwrap_err();
                    assert!(
                        err.is_deadlock() && err.to_string().contains("chaining cycle"),
                        "ring of {ring} (backwards: {backwards}): {err}"
                    );
                }
            }
        }
    }

    /// A pending promise for a slot to wait on.
    fn a_parent() -> Arc<dyn Graph> {
        Arc::new(Node {
            core: core::Core::<u32, Error>::new(None, false, |op| match op {
                core::Op::Fail(error) => core::OpDone::Failed(error),
                core::Op::Copy(outcome) => core::OpDone::Copied(outcome.clone()),
            }),
            link: (),
        })
    }

    #[test]
    fn an_outcome_delivered_after_a_cancellation_leaves_the_handler_its_cancellation() {
        // `on_cancel` on one thread (the slot cancelled, not yet withdrawn from the
        // parent), interleaved with the parent's settlement on another.
        let parent = a_parent();
        let ran = Arc::new(AtomicU32::new(0));
        let counted = ran.clone();
        let mut slot: Slot<u32, Error, _> = Slot::Waiting {
            f: move |input: Input<u32, Error>| {
                counted.fetch_add(1, Ordering::SeqCst);
                matches!(input, Input::Cancelled)
            },
            parent,
        };
        assert!(matches!(slot.cancel(), AfterCancel::Withdraw(_)));
        slot.deliver(Input::Fulfilled(1));
        let (f, input) = slot
            .take_ready()
            .expect("the handler is still there to run");
        assert!(f(input), "it sees the cancellation");
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    struct PanicsWhenDropped;

    impl Drop for PanicsWhenDropped {
        fn drop(&mut self) {
            panic!("a value's drop [expected test panic]");
        }
    }

    #[test]
    fn an_unwanted_late_outcome_whose_drop_panics_is_dropped_without_unwinding() {
        let parent = a_parent();
        let mut slot: Slot<PanicsWhenDropped, Error, _> = Slot::Waiting {
            f: |input: Input<PanicsWhenDropped, Error>| matches!(input, Input::Cancelled),
            parent,
        };
        assert!(matches!(slot.cancel(), AfterCancel::Withdraw(_)));
        // Delivered inside the parent's settling: a panic here would leave it
        // half-settled.
        slot.deliver(Input::Fulfilled(PanicsWhenDropped));
        let (f, input) = slot.take_ready().expect("the handler is still there");
        assert!(f(input));
    }
}
