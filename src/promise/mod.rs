//! `Promise<T, E>` and `Resolver<T, E>`: the public face of a promise.
//!
//! This module owns the promise API (constructors, `then` and friends, the
//! `Future` impl) and turns each call into a node of the promise graph. It never
//! runs a handler where it is attached (A+ 2.2.4): reactions always go through the
//! loop's microtask queue, see [`core`].

pub(crate) mod core;
mod link;

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use self::core::{Core, Graph, Input, Node, NodeDyn, NodeRef, Status, Waiter};
#[doc(hidden)]
pub use self::link::Next;
use self::link::{adopt, settle, settle_as, Hooks, Observer, ThenLink};
pub(crate) use self::link::{Observation, PendingInputs};
use crate::error::Error;
use crate::event_loop::context::{self, LoopRef};
use crate::task::TaskRef;

/// A value that will be available later: pending, then fulfilled with a `T` or
/// rejected with an `E`, exactly once.
///
/// Handlers attached with [`then`](Promise::then), [`catch`](Promise::catch) and
/// [`finally`](Promise::finally) run on the event loop, never inside the call that
/// attaches them, in the order they were attached. Each returns a new promise.
/// A promise is also a [`Future`] with `Output = Result<T, E>`.
///
/// A promise is eager, as in JavaScript: the work behind it and the handlers
/// attached to it run whether or not anyone awaits the result. Dropping a promise
/// does not cancel it (a dropped [`spawn`](crate::spawn) handle leaves its task
/// running, as in tokio); [`cancel`](Promise::cancel) does. A rejection that no
/// handler or `await` takes is reported (see
/// [`set_unhandled_rejection_hook`](crate::set_unhandled_rejection_hook)).
///
/// ```
/// use thenable::Promise;
///
/// let p = Promise::<i32>::resolved(20)
///     .then(|v| Ok(v + 1))
///     .map(|v| v * 2);
/// assert_eq!(thenable::block_on(p).unwrap(), 42);
/// ```
///
/// # Panics
///
/// `then`, `catch`, `map` and the other methods that consume the promise, and
/// `clone`, panic on a promise already awaited to completion through a
/// reference (`(&mut promise).await`), which took its outcome; polling it again
/// panics too, as for most futures. The `is_*` methods are then all false.
#[must_use = "a dropped promise is not cancelled: its work and handlers run on, and a \
              rejection nobody handles is reported"]
pub struct Promise<T, E = Error> {
    node: Option<NodeRef<T, E>>,
}

/// The settling side of a [`Promise`] made with [`Promise::pending`] or
/// [`Promise::new`].
///
/// The first [`resolve`](Resolver::resolve), [`reject`](Resolver::reject) or
/// [`resolve_with`](Resolver::resolve_with) wins; later calls return `false` and
/// change nothing. A resolver is `Clone + Send`: settle from any thread. When every
/// clone is dropped while the promise is still pending, it settles as broken
/// ([`Error::is_broken`]) rather than hang.
///
/// An unsettled resolver keeps the loop it was created on alive (it might settle
/// the promise any time, from any thread), like an open handle in Node.js.
///
/// ```
/// use thenable::Promise;
///
/// let (promise, resolver) = Promise::<&str>::pending();
/// std::thread::spawn(move || resolver.resolve("from another thread"));
/// assert_eq!(thenable::block_on(promise).unwrap(), "from another thread");
/// ```
pub struct Resolver<T, E = Error> {
    /// The promise's own node: its link counts the live resolvers.
    node: Arc<Node<T, E, Hooks>>,
}

/// What a handler may return: a `Result` (`Err` plays JavaScript's `throw`) or a
/// `Promise`, which is adopted (followed until it settles), however deep.
///
/// ```
/// use thenable::Promise;
///
/// let direct = Promise::<i32>::resolved(1).then(|v| Ok(v + 1));
/// let adopted = Promise::<i32>::resolved(1).then(|v| Promise::resolved(v + 1));
/// assert_eq!(thenable::block_on(direct).unwrap(), 2);
/// assert_eq!(thenable::block_on(adopted).unwrap(), 2);
/// ```
pub trait IntoPromise<T, E> {
    #[doc(hidden)]
    fn into_next(self) -> Next<T, E>;
}

impl<T, E> IntoPromise<T, E> for Result<T, E> {
    fn into_next(self) -> Next<T, E> {
        Next::Settled(self)
    }
}

impl<T, E> IntoPromise<T, E> for Promise<T, E> {
    fn into_next(self) -> Next<T, E> {
        Next::Adopt(self)
    }
}

/// How a promise ended, as [`Promise::watch`] reports it (and
/// [`Promise::watched_by`], [`Promise::poll_settled`]); also what the library's
/// own tasks end with, to pass that on (see `task::TaskOutput`).
pub(crate) enum Settled<T, E> {
    Fulfilled(T),
    Rejected(E),
    /// See `core::Input::Quiet`.
    Quiet(E),
    Cancelled,
}

impl<T, E: From<Error>> Settled<T, E> {
    /// How the promise that gave `input` ended; the loop gone counts as broken.
    fn of(input: Input<T, E>) -> Self {
        match input {
            Input::Fulfilled(value) => Settled::Fulfilled(value),
            Input::Rejected(error) => Settled::Rejected(error),
            Input::Quiet(error) => Settled::Quiet(error),
            Input::Cancelled => Settled::Cancelled,
            Input::Abandoned => Settled::Rejected(E::from(Error::broken())),
        }
    }
}

/// The [`core::Ops`] of a promise: the library's failures as `E`; no copies.
fn plain_ops<T, E: From<Error>>(op: core::Op<'_, T, E>) -> core::OpDone<T, E> {
    match op {
        core::Op::Fail(error) => core::OpDone::Failed(E::from(error)),
        // Asked only once `Promise::clone` switched to `copying_ops`.
        core::Op::Copy(_) => core::OpDone::Failed(E::from(Error::broken())),
    }
}

/// The [`core::Ops`] of a cloned promise: each consumer gets its own copy. A
/// `clone` that panics (it runs under the promise's lock, while it settles or is
/// awaited) is that consumer's rejection, as a panicking handler is: the others
/// still get theirs, and the handles are counted once.
fn copying_ops<T: Clone, E: Clone + From<Error>>(op: core::Op<'_, T, E>) -> core::OpDone<T, E> {
    match op {
        core::Op::Fail(error) => core::OpDone::Failed(E::from(error)),
        core::Op::Copy(outcome) => match catch_unwind(AssertUnwindSafe(|| outcome.clone())) {
            Ok(copy) => core::OpDone::Copied(copy),
            Err(payload) => core::OpDone::Failed(E::from(Error::panic(payload))),
        },
    }
}

/// Runs a handler; a panic becomes a rejection.
fn guarded<U, E: From<Error>>(handler: impl FnOnce() -> Next<U, E>) -> Next<U, E> {
    catch_unwind(AssertUnwindSafe(handler))
        .unwrap_or_else(|payload| Next::Settled(Err(E::from(Error::panic(payload)))))
}

/// Drops what a link holds and this outcome does not call for (a `then`'s
/// handler on a rejection, the other handler of a `then_or_catch`), then gives
/// `next`. Its drop is user code: a panic there rejects the child, as a panic
/// in a handler does (and as one in the captures of a handler that ran, dropped
/// when it returns), and what `next` passed on is lost. A cancelled child takes
/// no rejection: that panic is reported instead.
///
/// Used where the drop would otherwise come after the link's function returns,
/// unguarded, and unwind out of the loop. Free when the value has no drop glue.
fn unused<U, E: From<Error>>(value: impl Sized, next: Next<U, E>) -> Next<U, E> {
    match catch_unwind(AssertUnwindSafe(move || drop(value))) {
        Ok(()) => next,
        Err(payload) if matches!(next, Next::Cancelled) => {
            crate::event_loop::report_panic("a drop for a cancelled promise", &*payload);
            next
        }
        Err(payload) => {
            crate::event_loop::contained("a value's drop", || drop(next));
            Next::Settled(Err(E::from(Error::panic(payload))))
        }
    }
}

fn broken<U, E: From<Error>>() -> Next<U, E> {
    Next::Settled(Err(E::from(Error::broken())))
}

impl<T, E> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn settled(outcome: Result<T, E>) -> Promise<T, E> {
        let rejected = outcome.is_err();
        let node: NodeRef<T, E> = Arc::new(Node {
            core: Core::new(Some(outcome), false, plain_ops::<T, E>),
            link: (),
        });
        if rejected {
            context::track_unhandled(node.clone());
        }
        Promise { node: Some(node) }
    }

    /// A pending node settled by something other than a parent: a resolver (with
    /// its `home` loop) or the library itself.
    fn rooted(home: Option<LoopRef>) -> Arc<Node<T, E, Hooks>> {
        let has_resolver = home.is_some();
        Arc::new(Node {
            core: Core::new(None, has_resolver, plain_ops::<T, E>),
            link: Hooks::new(home),
        })
    }

    /// A pending promise and the resolver that settles it (JavaScript's
    /// `Promise.withResolvers()`).
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let (p, r) = Promise::<i32>::pending();
    /// assert!(p.is_pending());
    /// assert!(r.resolve(7));
    /// assert!(!r.resolve(8)); // the first settle wins
    /// assert_eq!(thenable::block_on(p).unwrap(), 7);
    /// ```
    pub fn pending() -> (Promise<T, E>, Resolver<T, E>) {
        let home = context::with_current(|local| local.shared.clone());
        home.acquire();
        let node = Promise::rooted(Some(home));
        let resolver = Resolver { node: node.clone() };
        (Promise { node: Some(node) }, resolver)
    }

    /// A promise settled by `executor`, which runs right away (as JavaScript's
    /// `new Promise(executor)`); a panic in the executor rejects the promise.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let p = Promise::<i32>::new(|resolver| {
    ///     thenable::set_timeout(std::time::Duration::from_millis(1), move || {
    ///         resolver.resolve(5);
    ///     });
    /// });
    /// assert_eq!(thenable::block_on(p).unwrap(), 5);
    /// ```
    pub fn new(executor: impl FnOnce(Resolver<T, E>)) -> Promise<T, E> {
        let (promise, resolver) = Promise::pending();
        let keep = resolver.clone();
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| executor(resolver))) {
            keep.reject(E::from(Error::panic(payload)));
        }
        promise
    }

    /// A promise already fulfilled with `value`.
    ///
    /// ```
    /// let p = thenable::Promise::<&str>::resolved("ready");
    /// assert!(p.is_fulfilled());
    /// ```
    pub fn resolved(value: T) -> Promise<T, E> {
        Promise::settled(Ok(value))
    }

    /// A promise already rejected with `error`.
    ///
    /// ```
    /// let p = thenable::Promise::<i32>::rejected(thenable::Error::msg("no"));
    /// assert!(p.is_rejected());
    /// ```
    pub fn rejected(error: E) -> Promise<T, E> {
        Promise::settled(Err(error))
    }

    /// The one way to derive a promise: `f` receives this promise's outcome on the
    /// loop and decides the child's. One allocation: the child node holds `f`.
    ///
    /// `f` runs unguarded (a `catch_unwind` around every link cost the `chain`
    /// workload 0.9% of its instructions), so it must consume what it captured on
    /// every input but `Input::Abandoned`: call a handler under [`guarded`], or
    /// drop it through [`unused`]. On `Input::Abandoned` it may drop anything:
    /// the link's `abandon` contains that, and the child breaks.
    fn chain<U, E2, F>(mut self, f: F) -> Promise<U, E2>
    where
        U: Send + 'static,
        E2: From<Error> + Send + 'static,
        F: FnOnce(Input<T, E>) -> Next<U, E2> + Send + 'static,
    {
        let parent = self.take_node();
        let upstream: Arc<dyn Graph> = parent.clone();
        let child = Arc::new(Node {
            core: Core::new(None, false, plain_ops::<U, E2>),
            link: ThenLink::new(f, upstream),
        });
        if let Some(job) = parent.core().attach(child.clone()) {
            context::schedule(job, None);
        }
        Promise { node: Some(child) }
    }

    /// Makes this promise input `index` of `collector` (consuming the handle), and
    /// returns it as a graph node, to withdraw from with the collector's key and
    /// `index`. If it is settled already, its job is queued at once.
    pub(crate) fn report_to(
        mut self,
        collector: Arc<dyn core::Collector<T, E>>,
        index: u32,
    ) -> Arc<dyn Graph> {
        let node = self.take_node();
        if let Some(job) = node.core().attach_collector(collector, index) {
            context::schedule(job, None);
        }
        node
    }

    /// Calls `watcher` with however this promise ends, cancellation included (which
    /// no public handler sees), from the microtask queue. Cancelling the returned
    /// observation withdraws it (the watcher then sees `Settled::Cancelled`). The
    /// primitive under the combinators: a consumer with no promise of its own.
    pub(crate) fn watch<F>(mut self, watcher: F) -> Arc<dyn Observation>
    where
        F: FnOnce(Settled<T, E>) + Send + 'static,
    {
        Observer::attach(self.take_node(), move |input| {
            let settled = Settled::of(input);
            // The watchers are the library's own; one that panics must not take
            // the loop down.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| watcher(settled))) {
                crate::event_loop::report_panic("a combinator", &*payload);
            }
        })
    }

    /// [`watch`](Self::watch) through a promise derived from this one, which
    /// fulfils once `watcher` has run: for a task, which waits on that promise
    /// (our own, so the loop can tell a deadlock; a waker stored by the watcher
    /// would count as foreign). Cancelling it withdraws from this promise, as
    /// cancelling a `then` child does; `watcher` then sees `Settled::Cancelled`.
    pub(crate) fn watched_by<F>(self, watcher: F) -> Promise<(), E>
    where
        F: FnOnce(Settled<T, E>) + Send + 'static,
    {
        self.chain(move |input| {
            guarded(|| {
                watcher(Settled::of(input));
                Next::Settled(Ok(()))
            })
        })
    }

    /// Polls this promise as a future, but gives its end as a consumer sees it: a
    /// quiet rejection as `Settled::Quiet` and a cancellation as
    /// `Settled::Cancelled`, which an `await` turns into a plain `Err`. For the
    /// library's tasks that pass on cancellation travelling on.
    pub(crate) fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<Settled<T, E>> {
        self.poll_as::<Input<T, E>>(cx).map(Settled::of)
    }

    /// Runs `on_fulfilled` with the value once this promise fulfils; a rejection
    /// passes through untouched. The handler returns `Ok(v)`, `Err(e)` (a rejection,
    /// JavaScript's `throw`) or a promise to follow.
    ///
    /// ```
    /// use thenable::{Error, Promise};
    ///
    /// let p = Promise::<i32>::resolved(2)
    ///     .then(|v| Ok(v * 10))
    ///     .then(|v| if v > 10 { Err(Error::msg("too big")) } else { Ok(v) });
    /// assert_eq!(thenable::block_on(p).unwrap_err().to_string(), "too big");
    /// ```
    pub fn then<U, R, F>(self, on_fulfilled: F) -> Promise<U, E>
    where
        U: Send + 'static,
        R: IntoPromise<U, E>,
        F: FnOnce(T) -> R + Send + 'static,
    {
        self.chain(move |input| match input {
            Input::Fulfilled(value) => guarded(|| on_fulfilled(value).into_next()),
            Input::Rejected(error) => unused(on_fulfilled, Next::Settled(Err(error))),
            Input::Quiet(error) => unused(on_fulfilled, Next::Quiet(error)),
            Input::Cancelled => unused(on_fulfilled, Next::Cancelled),
            Input::Abandoned => broken(),
        })
    }

    /// Runs `on_rejected` with the error once this promise rejects; a value passes
    /// through untouched. Return `Ok(v)` to recover, `Err(e)` to stay rejected.
    ///
    /// ```
    /// use thenable::{Error, Promise};
    ///
    /// let p = Promise::<i32>::rejected(Error::msg("offline")).catch(|_| Ok(0));
    /// assert_eq!(thenable::block_on(p).unwrap(), 0);
    /// ```
    pub fn catch<R, F>(self, on_rejected: F) -> Promise<T, E>
    where
        R: IntoPromise<T, E>,
        F: FnOnce(E) -> R + Send + 'static,
    {
        self.chain(move |input| match input {
            Input::Fulfilled(value) => unused(on_rejected, Next::Settled(Ok(value))),
            Input::Rejected(error) | Input::Quiet(error) => {
                guarded(|| on_rejected(error).into_next())
            }
            Input::Cancelled => unused(on_rejected, Next::Cancelled),
            Input::Abandoned => broken(),
        })
    }

    /// The two-handler form of JavaScript's `then(onFulfilled, onRejected)`: exactly
    /// one of the two runs. Unlike `.then(f).catch(g)`, `g` does not see errors of `f`.
    ///
    /// ```
    /// use thenable::{Error, Promise};
    ///
    /// let p = Promise::<i32>::rejected(Error::msg("x"))
    ///     .then_or_catch(|v| Ok(v.to_string()), |e| Ok(format!("recovered from {e}")));
    /// assert_eq!(thenable::block_on(p).unwrap(), "recovered from x");
    /// ```
    pub fn then_or_catch<U, R1, R2, F1, F2>(
        self,
        on_fulfilled: F1,
        on_rejected: F2,
    ) -> Promise<U, E>
    where
        U: Send + 'static,
        R1: IntoPromise<U, E>,
        R2: IntoPromise<U, E>,
        F1: FnOnce(T) -> R1 + Send + 'static,
        F2: FnOnce(E) -> R2 + Send + 'static,
    {
        self.chain(move |input| match input {
            Input::Fulfilled(value) => {
                unused(on_rejected, guarded(|| on_fulfilled(value).into_next()))
            }
            Input::Rejected(error) | Input::Quiet(error) => {
                unused(on_fulfilled, guarded(|| on_rejected(error).into_next()))
            }
            Input::Cancelled => unused((on_fulfilled, on_rejected), Next::Cancelled),
            Input::Abandoned => broken(),
        })
    }

    /// Runs `on_settled` whichever way this promise settles, then passes the
    /// outcome through unchanged (a panic in `on_settled` rejects instead). As in
    /// JavaScript, the outcome reaches the next handler three microtask ticks
    /// after `on_settled` ran (V8 adopts a promise of the callback's result).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use thenable::{Error, Promise};
    ///
    /// let closed = Arc::new(AtomicBool::new(false));
    /// let flag = closed.clone();
    /// let p = Promise::<i32>::rejected(Error::msg("reset"))
    ///     .finally(move || flag.store(true, Ordering::SeqCst));
    /// assert!(thenable::block_on(p).is_err());
    /// assert!(closed.load(Ordering::SeqCst));
    /// ```
    pub fn finally<F>(self, on_settled: F) -> Promise<T, E>
    where
        F: FnOnce() + Send + 'static,
    {
        self.finally_next(move || {
            on_settled();
            Next::Settled(Ok(()))
        })
    }

    /// [`finally`](Self::finally) with a callback that returns a promise (or a
    /// `Result`), as a JavaScript `finally` callback may: the outcome passes on
    /// once that promise fulfils, and its rejection (or an `Err`) replaces the
    /// outcome, as a `throw` in the callback does in JavaScript. The ticks are
    /// V8's, as for `finally`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use thenable::{sleep, Error, Promise};
    ///
    /// // Waits for the cleanup before passing the value on.
    /// let p = Promise::<i32>::resolved(7).finally_with(|| sleep(Duration::from_millis(1)));
    /// assert_eq!(thenable::block_on(p).unwrap(), 7);
    ///
    /// // A cleanup that fails replaces the outcome.
    /// let p = Promise::<i32>::resolved(7).finally_with(|| Err(Error::msg("close failed")));
    /// assert_eq!(thenable::block_on(p).unwrap_err().to_string(), "close failed");
    /// ```
    pub fn finally_with<F, P>(self, on_settled: F) -> Promise<T, E>
    where
        F: FnOnce() -> P + Send + 'static,
        P: IntoPromise<(), E>,
    {
        self.finally_next(move || on_settled().into_next())
    }

    /// `finally` and `finally_with`: JavaScript's `finally(f)` is
    /// `then(v => Promise.resolve(f()).then(() => v), ...)`, the same adoption,
    /// so that the ticks match.
    fn finally_next<F>(self, on_settled: F) -> Promise<T, E>
    where
        F: FnOnce() -> Next<(), E> + Send + 'static,
    {
        let pass_on = |after: Next<(), E>, passed: Next<T, E>| {
            let after = match after {
                Next::Settled(Ok(())) => Promise::<(), E>::resolved(()),
                Next::Settled(Err(error)) => Promise::rejected(error),
                Next::Adopt(promise) => promise,
                // Not made by a callback's `into_next`; kept whole all the same.
                Next::Quiet(error) => return unused(passed, Next::Quiet(error)),
                Next::Cancelled => return unused(passed, Next::Cancelled),
            };
            Next::Adopt(after.chain(move |input| match input {
                Input::Fulfilled(()) => passed,
                Input::Rejected(error) => unused(passed, Next::Settled(Err(error))),
                Input::Quiet(error) => unused(passed, Next::Quiet(error)),
                Input::Cancelled => unused(passed, Next::Cancelled),
                Input::Abandoned => broken(),
            }))
        };
        // A panic in the callback rejects, as a `throw` does; what it would have
        // passed on is dropped then.
        let run = move |on_settled: F, passed: Next<T, E>| match catch_unwind(AssertUnwindSafe(
            on_settled,
        )) {
            Ok(after) => pass_on(after, passed),
            Err(payload) => unused(passed, Next::Settled(Err(E::from(Error::panic(payload))))),
        };
        self.chain(move |input| match input {
            Input::Fulfilled(value) => run(on_settled, Next::Settled(Ok(value))),
            Input::Rejected(error) => run(on_settled, Next::Settled(Err(error))),
            Input::Quiet(error) => run(on_settled, Next::Quiet(error)),
            // A cancelled child takes no rejection: a panic is reported instead,
            // and a promise the callback returns is not waited for.
            Input::Cancelled => match catch_unwind(AssertUnwindSafe(on_settled)) {
                Ok(after) => unused(after, Next::Cancelled),
                Err(payload) => {
                    crate::event_loop::report_panic("a finally callback", &*payload);
                    Next::Cancelled
                }
            },
            Input::Abandoned => unused(on_settled, broken()),
        })
    }

    /// Transforms the value with a plain function (a `then` that cannot fail).
    ///
    /// ```
    /// let p = thenable::Promise::<i32>::resolved(4).map(|v| v * v);
    /// assert_eq!(thenable::block_on(p).unwrap(), 16);
    /// ```
    pub fn map<U, F>(self, f: F) -> Promise<U, E>
    where
        U: Send + 'static,
        F: FnOnce(T) -> U + Send + 'static,
    {
        self.chain(move |input| match input {
            Input::Fulfilled(value) => guarded(|| Next::Settled(Ok(f(value)))),
            Input::Rejected(error) => unused(f, Next::Settled(Err(error))),
            Input::Quiet(error) => unused(f, Next::Quiet(error)),
            Input::Cancelled => unused(f, Next::Cancelled),
            Input::Abandoned => broken(),
        })
    }

    /// Transforms the error, possibly into another error type.
    ///
    /// ```
    /// use thenable::{Error, Promise};
    ///
    /// let p: Promise<i32, String> =
    ///     Promise::<i32>::rejected(Error::msg("low level")).map_err(|e| format!("high level: {e}"));
    /// assert_eq!(thenable::block_on(p).unwrap_err(), "high level: low level");
    /// ```
    pub fn map_err<E2, F>(self, f: F) -> Promise<T, E2>
    where
        E2: From<Error> + Send + 'static,
        F: FnOnce(E) -> E2 + Send + 'static,
    {
        self.chain(move |input| match input {
            Input::Fulfilled(value) => unused(f, Next::Settled(Ok(value))),
            // A new reason, of the handler's making: no longer quiet.
            Input::Rejected(error) | Input::Quiet(error) => {
                guarded(|| Next::Settled(Err(f(error))))
            }
            Input::Cancelled => unused(f, Next::Cancelled),
            Input::Abandoned => broken(),
        })
    }
}

impl<T, E> Promise<T, E> {
    fn take_node(&mut self) -> NodeRef<T, E> {
        self.node
            .take()
            .expect("thenable: promise used after it was awaited to completion")
    }

    fn status(&self) -> Option<Status> {
        self.node.as_ref().map(|node| node.core().status())
    }

    /// True until the promise settles.
    ///
    /// ```
    /// let (p, _r) = thenable::Promise::<i32>::pending();
    /// assert!(p.is_pending());
    /// ```
    pub fn is_pending(&self) -> bool {
        self.status() == Some(Status::Pending)
    }

    /// True once the promise is fulfilled.
    ///
    /// ```
    /// assert!(thenable::Promise::<i32>::resolved(1).is_fulfilled());
    /// ```
    pub fn is_fulfilled(&self) -> bool {
        self.status() == Some(Status::Fulfilled)
    }

    /// True once the promise is rejected (a cancelled promise is not rejected).
    ///
    /// ```
    /// let p = thenable::Promise::<i32>::rejected(thenable::Error::msg("x"));
    /// assert!(p.is_rejected());
    /// ```
    pub fn is_rejected(&self) -> bool {
        self.status() == Some(Status::Rejected)
    }

    /// True once the promise is cancelled.
    ///
    /// ```
    /// let (p, _r) = thenable::Promise::<i32>::pending();
    /// p.cancel();
    /// assert!(p.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.status() == Some(Status::Cancelled)
    }

    /// Cancels the promise if it is still pending (false otherwise), as bluebird's
    /// `cancel()`:
    ///
    /// - it settles as cancelled: awaiting it gives an error for which
    ///   [`Error::is_cancelled`] is true; its `then`, `catch` and `map` handlers never
    ///   run, its `finally` handlers do, and promises derived from it are cancelled;
    /// - cancellation travels upstream: the promise it was derived from, once every
    ///   one of *its* consumers (handlers and live handles) has cancelled, is cancelled
    ///   too, and so on up to the root, where the resource is released: a
    ///   [`sleep`](crate::sleep)'s timer is removed, a spawned task's future is dropped
    ///   (running its destructors, and cancelling what it was awaiting), a promise
    ///   made with [`Promise::pending`] runs its [`Resolver::on_cancel`] callbacks.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let event_loop = thenable::EventLoop::new();
    /// let slow = thenable::sleep(Duration::from_secs(3600)).map(|()| unreachable!());
    /// assert!(slow.cancel());
    /// event_loop.run().unwrap(); // returns at once: the timer is gone
    /// assert!(event_loop.block_on(slow).unwrap_err().is_cancelled());
    /// ```
    pub fn cancel(&self) -> bool {
        match &self.node {
            Some(node) => node.clone().cancel_node(),
            None => false,
        }
    }
}

/// Every clone receives the outcome (fan-out); handlers of all clones run in the
/// order they were attached.
///
/// Each consumer but the last gets `T::clone` (or `E::clone`) of the outcome,
/// made under the promise's lock: a `clone` that panics is that consumer's
/// rejection (a panic error), and a `clone` must not use the promise it is a
/// value of (it would wait for its lock for ever).
///
/// ```
/// use thenable::Promise;
///
/// let p = Promise::<i32>::resolved(3);
/// let a = p.clone().map(|v| v + 1);
/// let b = p.map(|v| v * 2);
/// assert_eq!(thenable::block_on(a).unwrap(), 4);
/// assert_eq!(thenable::block_on(b).unwrap(), 6);
/// ```
impl<T: Clone + Send, E: Clone + Send + From<Error>> Clone for Promise<T, E> {
    fn clone(&self) -> Self {
        let node = self
            .node
            .as_ref()
            .expect("thenable: promise cloned after it was awaited to completion");
        node.core().add_handle(copying_ops::<T, E>);
        Promise {
            node: Some(node.clone()),
        }
    }
}

impl<T, E> Drop for Promise<T, E> {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            // Dropping a promise does not cancel it (a dropped `spawn` handle leaves
            // the task running, as in tokio); but a cancelled task's future dropping
            // the promise it awaited is that promise's consumer cancelling.
            if node.core().release_handle() && core::cancelling() {
                node.cancel_node();
            }
        }
    }
}

impl<T, E> fmt::Debug for Promise<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.status() {
            None => "consumed",
            Some(Status::Pending) => "pending",
            Some(Status::Fulfilled) => "fulfilled",
            Some(Status::Rejected) => "rejected",
            Some(Status::Cancelled) => "cancelled",
        };
        f.debug_struct("Promise").field("state", &state).finish()
    }
}

/// Awaiting a promise gives its outcome. Outside a running thenable loop (inside
/// another executor, say) polling also runs whatever this thread's loop has ready,
/// so a chain of handlers makes progress; a promise settled from another thread
/// wakes the awaiting task directly.
///
/// ```
/// use thenable::Promise;
///
/// let (p, r) = Promise::<i32>::pending();
/// std::thread::spawn(move || r.resolve(9));
/// assert_eq!(futures::executor::block_on(p).unwrap(), 9);
/// ```
impl<T: Send + 'static, E: Send + 'static> Future for Promise<T, E> {
    type Output = Result<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_as(cx)
    }
}

impl<T: Send + 'static, E: Send + 'static> Promise<T, E> {
    /// The `Future` side, the outcome taken as an `R` (see `core::Taken`).
    #[inline]
    fn poll_as<R: core::Taken<T, E>>(&mut self, cx: &mut Context<'_>) -> Poll<R> {
        let node = self
            .node
            .as_ref()
            .expect("thenable: promise polled after it completed");
        let idle_loop = if context::is_running() {
            None
        } else {
            // This poll is a consumer from now on: the drain below must not
            // report the rejection it is about to take as unhandled.
            node.core().mark_handled();
            let local = context::ambient();
            let settled = || node.core().status() != Status::Pending;
            let _ = context::enter(&local, || local.turn_until(&settled, false));
            Some(local)
        };
        let by_task = context::is_polled_task(cx.waker());
        // A wait registered as this loop's own business, to check once the node's
        // lock is released (the search takes it).
        let mut internal_wait = None;
        let key = node.key();
        // Only one of the two closures runs.
        let may_take = || {
            !by_task
                || context::with_polled_task(|task| task.settled_await_may_proceed(key))
                    .unwrap_or(true)
        };
        let waiter = |has_resolver: bool| match by_task
            .then(|| context::with_polled_task(Arc::clone))
            .flatten()
        {
            Some(task) => {
                task.waits_on(key);
                if !has_resolver {
                    internal_wait = Some(task.clone());
                }
                Waiter::Task(TaskRef::new(task, !has_resolver))
            }
            None => Waiter::Waker(cx.waker().clone()),
        };
        let taken = node.core().poll_take::<R>(waiter, may_take);
        match taken {
            Some(outcome) => {
                // `poll_take` consumed the handle: forget it without releasing it.
                self.node = None;
                Poll::Ready(outcome)
            }
            None => {
                if let Some(task) = internal_wait {
                    let remote = core::settled_by_another_loop(&**node, task.home.id, false);
                    if remote {
                        node.core().recount_wait(&task, true);
                    }
                    // Looked at again: a wait of the loop's own when it runs out of
                    // work, one on another loop's work while only such waits keep it
                    // alive (the chain may move on).
                    let wait: std::sync::Weak<dyn NodeDyn<T, E>> = Arc::downgrade(node);
                    let wait: std::sync::Weak<dyn Graph> = wait;
                    if let Some(local) = context::local_loop(task.home.id) {
                        local.record_task_wait(&task, wait, remote);
                    }
                }
                // A task's wait took over the work it found offered by a thread
                // that runs no loop, in its search above; any other wait (another
                // executor's, or a waker that is not a task's) takes it here.
                if !by_task && crate::event_loop::claims::any() {
                    let here = context::with_current(|local| local.shared.id);
                    let undriven = idle_loop.is_some();
                    if core::claim_upstream(&**node, here, undriven) && undriven {
                        // A task taken over is queued on this thread's loop (or
                        // the job that takes it), which the executor's next
                        // poll turns.
                        cx.waker().wake_by_ref();
                    }
                }
                if let Some(local) = idle_loop {
                    let waits_on: std::sync::Weak<dyn NodeDyn<T, E>> = Arc::downgrade(node);
                    crate::event_loop::orphans::add_foreign_poller(
                        cx.waker(),
                        &local.shared,
                        waits_on,
                    );
                    // Its tasks' readiness waits: nobody turns the loop to see them.
                    if local.shared.reactor().has_armed_sources() {
                        local.shared.watch_foreign_waits();
                    }
                    let next_timer = local.timers.borrow_mut().next_deadline();
                    if let Some(deadline) = next_timer {
                        crate::timer::wake_at(deadline, cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<T, E> Resolver<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    fn node(&self) -> NodeRef<T, E> {
        self.node.clone()
    }

    /// Fulfils or rejects with `outcome`; `false` if already settled. Handy to turn
    /// a callback that receives a `Result` into a promise.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// fn parse_later(text: &'static str) -> Promise<i32> {
    ///     Promise::new(|resolver| {
    ///         thenable::set_timeout(std::time::Duration::ZERO, move || {
    ///             resolver.settle(text.parse::<i32>().map_err(Into::into));
    ///         });
    ///     })
    /// }
    /// assert_eq!(thenable::block_on(parse_later("12")).unwrap(), 12);
    /// assert!(thenable::block_on(parse_later("x")).is_err());
    /// ```
    pub fn settle(&self, outcome: Result<T, E>) -> bool {
        let link = &self.node.link;
        if !link.finish() {
            return false;
        }
        settle(&self.node, outcome, link.home());
        link.release_home();
        true
    }

    /// Fulfils the promise; `false` if it was already settled (nothing changes).
    ///
    /// ```
    /// let (p, r) = thenable::Promise::<u8>::pending();
    /// assert!(r.resolve(1));
    /// assert!(!r.resolve(2));
    /// assert_eq!(thenable::block_on(p).unwrap(), 1);
    /// ```
    pub fn resolve(&self, value: T) -> bool {
        self.settle(Ok(value))
    }

    /// Rejects the promise; `false` if it was already settled (nothing changes).
    ///
    /// ```
    /// let (p, r) = thenable::Promise::<u8>::pending();
    /// assert!(r.reject(thenable::Error::msg("nope")));
    /// assert!(!r.resolve(2));
    /// assert!(thenable::block_on(p).is_err());
    /// ```
    pub fn reject(&self, error: E) -> bool {
        self.settle(Err(error))
    }

    /// [`reject`](Self::reject), quietly: the library's own resolvers passing on
    /// cancellation travelling on (see `core::Input::Quiet`).
    pub(crate) fn reject_quietly(&self, error: E) -> bool {
        let link = &self.node.link;
        if !link.finish() {
            return false;
        }
        settle_as(&self.node, Err(error), true, link.home());
        link.release_home();
        true
    }

    /// Makes the promise follow `other`: it settles as `other` settles. `false` if
    /// already settled or following. Following a promise that itself waits on this
    /// one rejects with a chaining-cycle error ([`Error::is_deadlock`]). Cancelling
    /// the promise then withdraws it from `other`.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let (p, r) = Promise::<i32>::pending();
    /// r.resolve_with(Promise::resolved(1).map(|v| v + 1));
    /// assert_eq!(thenable::block_on(p).unwrap(), 2);
    /// ```
    pub fn resolve_with(&self, other: Promise<T, E>) -> bool {
        let link = &self.node.link;
        if !link.finish() {
            return false;
        }
        let node = self.node();
        node.core().resolver_gone();
        adopt(node, other, link.home(), |forward| {
            Hooks::follow(&self.node, forward)
        });
        link.release_home();
        true
    }

    /// True once this resolver (or a clone) has settled or followed, or the promise
    /// was cancelled.
    ///
    /// ```
    /// let (_p, r) = thenable::Promise::<i32>::pending();
    /// assert!(!r.is_done());
    /// r.resolve(1);
    /// assert!(r.is_done());
    /// ```
    pub fn is_done(&self) -> bool {
        self.node.link.is_finished()
    }

    /// Runs `on_cancel` if the promise is cancelled (at once if it already was;
    /// never if it settles otherwise): the place to stop the work that would have
    /// settled it, as bluebird's `onCancel`. It runs inside the `cancel` call (or
    /// wherever the cancellation travelling upstream reaches this promise: a
    /// combinator cancelling its losers, a timeout). A panic in it is reported
    /// on stderr, as one in a [`set_timeout`](crate::set_timeout) callback is,
    /// and does not unwind: the other callbacks still run and the cancellation
    /// goes on.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use thenable::Promise;
    ///
    /// let stopped = Arc::new(AtomicBool::new(false));
    /// let flag = stopped.clone();
    /// let (p, r) = Promise::<i32>::pending();
    /// r.on_cancel(move || flag.store(true, Ordering::SeqCst));
    /// p.cancel();
    /// assert!(stopped.load(Ordering::SeqCst));
    /// assert!(!r.resolve(1)); // too late
    /// ```
    pub fn on_cancel(&self, on_cancel: impl FnOnce() + Send + 'static) {
        Hooks::add(&self.node, Box::new(on_cancel));
    }
}

impl<T, E> Clone for Resolver<T, E> {
    fn clone(&self) -> Self {
        self.node.link.add_resolver();
        Resolver {
            node: self.node.clone(),
        }
    }
}

impl<T, E> fmt::Debug for Resolver<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("done", &self.node.link.is_finished())
            .finish()
    }
}

impl<T, E> Drop for Resolver<T, E> {
    fn drop(&mut self) {
        let link = &self.node.link;
        // Once it settled, the count of live resolvers is read by nobody: a
        // load spares the two locked instructions of counting down and trying
        // to finish.
        if link.is_finished() {
            return;
        }
        if link.drop_resolver() && link.finish() {
            if self.node.core.settle_broken(link.home()) != core::Settle::Already {
                <Hooks as core::Link<T, E>>::on_settled(&self.node);
            }
            link.release_home();
        }
    }
}

/// Settles a promise from inside the library (a task's output, a timer): unlike a
/// `Resolver` it does not keep any loop alive, and it settles as broken if dropped
/// unused. `L` is the node's link: what a cancellation releases.
pub(crate) struct Settler<T, E, L = Hooks> {
    node: Option<Arc<Node<T, E, L>>>,
}

impl<T: Send + 'static, E: Send + 'static, L: core::Link<T, E>> Settler<T, E, L> {
    /// The node this settles (for its link to be told what to release).
    pub(crate) fn node(&self) -> &Arc<Node<T, E, L>> {
        self.node.as_ref().expect("settler used after settling")
    }

    /// One of the library's failures as the promise's error type.
    pub(crate) fn fail(&self, error: Error) -> E {
        self.node().core.fail(error)
    }

    pub(crate) fn graph(&self) -> std::sync::Weak<dyn Graph> {
        let node: std::sync::Weak<Node<T, E, L>> = Arc::downgrade(self.node());
        node
    }

    pub(crate) fn settle(&mut self, outcome: Result<T, E>) {
        if let Some(node) = self.node.take() {
            let node: NodeRef<T, E> = node;
            settle(&node, outcome, None);
        }
    }

    /// [`settle`](Self::settle), a rejection being quiet when `quiet` is set
    /// (see `core::Input::Quiet`).
    pub(crate) fn settle_as(&mut self, outcome: Result<T, E>, quiet: bool) {
        if let Some(node) = self.node.take() {
            let node: NodeRef<T, E> = node;
            settle_as(&node, outcome, quiet, None);
        }
    }

    /// [`settle_as`](Self::settle_as), but if the promise was cancelled first
    /// (from another thread, say) the outcome is given back, for the caller to
    /// hand to someone else rather than lose.
    pub(crate) fn settle_or_give_back(
        mut self,
        outcome: Result<T, E>,
        quiet: bool,
    ) -> Option<Result<T, E>> {
        self.try_settle_as(outcome, quiet)
    }

    /// [`settle_or_give_back`](Self::settle_or_give_back) through a reference,
    /// for a task's output (see `task::TaskOutput`); the settler is spent either
    /// way.
    pub(crate) fn try_settle_as(
        &mut self,
        outcome: Result<T, E>,
        quiet: bool,
    ) -> Option<Result<T, E>> {
        let Some(node) = self.node.take() else {
            return Some(outcome);
        };
        match node.core.try_settle(outcome, quiet, None) {
            Ok(core::Settle::Unwatched) => {
                node.on_settled();
                context::track_unhandled(node);
            }
            Ok(_) => node.on_settled(),
            Err(late) => return Some(late),
        }
        None
    }
}

impl<T: Send + 'static, E: Send + 'static> Settler<T, E> {
    /// Runs `hook` if the promise is cancelled (the resource to release).
    pub(crate) fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        Hooks::add(self.node(), Box::new(hook));
    }

    /// Where to register what to release if the promise is cancelled; usable after
    /// the settler itself was moved away.
    pub(crate) fn cancel_hooks(&self) -> CancelHooks<T, E> {
        CancelHooks(self.node().clone())
    }
}

impl<T, E, L> Drop for Settler<T, E, L> {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let _ = node.core.settle_broken(None);
        }
    }
}

/// See [`Settler::cancel_hooks`].
pub(crate) struct CancelHooks<T, E>(Arc<Node<T, E, Hooks>>);

impl<T, E> CancelHooks<T, E> {
    /// Runs `hook` if the promise is cancelled (the resource to release).
    pub(crate) fn add(&self, hook: impl FnOnce() + Send + 'static) {
        Hooks::add(&self.0, Box::new(hook));
    }
}

/// A node as the code that will settle it holds it.
pub(crate) type SettlerNode<T, E, L> = Arc<Node<T, E, L>>;

/// A new pending promise settled from inside the library whose node carries `link`
/// (what a cancellation releases); the caller settles the node with [`settle_node`].
pub(crate) fn with_link<T, E, L>(link: L) -> (Promise<T, E>, SettlerNode<T, E, L>)
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    L: core::Link<T, E>,
{
    let mut settler = None;
    let promise = wired_with_link(link, |node| settler = Some(node.clone()));
    (promise, settler.expect("wired"))
}

/// A new pending promise settled from inside the library whose node carries
/// `link`, as [`with_link`] makes; `wire` is given the node first, to hand out
/// what will settle it. The promise then takes the node's reference: no count is
/// taken and dropped for it.
pub(crate) fn wired_with_link<T, E, L>(
    link: L,
    wire: impl FnOnce(&Arc<Node<T, E, L>>),
) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    L: core::Link<T, E>,
{
    let node = Arc::new(Node {
        core: Core::new(None, false, plain_ops::<T, E>),
        link,
    });
    wire(&node);
    Promise {
        node: Some(node as NodeRef<T, E>),
    }
}

/// Settles a node made by [`with_link`] (no effect if it is settled already).
pub(crate) fn settle_node<T, E, L>(node: Arc<Node<T, E, L>>, outcome: Result<T, E>)
where
    T: Send + 'static,
    E: Send + 'static,
    L: core::Link<T, E>,
{
    let node: NodeRef<T, E> = node;
    settle(&node, outcome, None);
}

/// [`settle_node`], a rejection being quiet when `quiet` is set (see
/// `core::Input::Quiet`).
pub(crate) fn settle_node_as<T, E, L>(node: &Arc<Node<T, E, L>>, outcome: Result<T, E>, quiet: bool)
where
    T: Send + 'static,
    E: Send + 'static,
    L: core::Link<T, E>,
{
    settle_as(node, outcome, quiet, None);
}

/// A new pending promise whose node carries `link`, with its settler.
pub(crate) fn internal_with<T, E, L>(link: L) -> (Promise<T, E>, Settler<T, E, L>)
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    L: core::Link<T, E>,
{
    let (promise, node) = with_link(link);
    (promise, Settler { node: Some(node) })
}

/// A promise that nothing will ever settle (but a cancellation): JavaScript's
/// `Promise.race([])`. Nothing keeps a loop alive for it, so `block_on` on it
/// reports a deadlock instead of waiting.
pub(crate) fn never<T, E>() -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let node: NodeRef<T, E> = Promise::rooted(None);
    Promise { node: Some(node) }
}

/// A promise already rejected with `error`, quietly (see `core::Input::Quiet`).
pub(crate) fn quietly_rejected<T, E>(error: E) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let (promise, mut settler) = internal_with(());
    settler.settle_as(Err(error), true);
    promise
}

/// A new pending promise settled from inside the library, with its settler.
pub(crate) fn internal<T, E>() -> (Promise<T, E>, Settler<T, E>)
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    internal_with(Hooks::new(None))
}
