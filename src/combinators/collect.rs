//! `all`, `all_settled`, `race`, `any` and `join`: one promise made from many, with
//! results in input order.
//!
//! Over an iterator, the inputs report straight to state shared by the call
//! (`Collect`): each input's waiter is that state plus the input's index, so an
//! input costs no allocation. A tuple's inputs are of different types, so each has
//! a link of its own ([`Promise::watch`]) reporting to `Gather`. Either way the call
//! is the link of its output promise's node (one allocation for both), and the
//! output is settled from inside the library, like a `then` child: it does not keep
//! the loop alive by itself (the inputs do, if anything does). When the output is
//! decided early (the first rejection for `all`, the first outcome for `race`, ...)
//! or is cancelled, the call withdraws from the inputs still pending, and that
//! cancellation travels upstream into those whose only consumer it was, releasing
//! their timers and tasks.
//!
//! `outcome` and `Links` are shared with `as_completed` and `shield`.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Error;
use crate::event_loop::contained;
use crate::promise::core::{
    self, Collector, Graph, Input, Link, Lock, Node, Runnable, Settling, FOLLOWER,
};
use crate::promise::{
    never, settle_node_as, wired_with_link, Observation, PendingInputs, Promise, Settled,
};

// ---------------------------------------------------------------------------
// Links: one `watch` per input
// ---------------------------------------------------------------------------

/// An input's outcome as the combinators report it, and whether a rejection is
/// quiet: an input cancelled elsewhere counts as a rejection with
/// [`Error::cancelled`], which is cancellation travelling on and must stay
/// unreported whatever `E` it is converted into (see `core::Input::Quiet`). (A
/// link the combinator cancelled itself reports `Cancelled` too, when its outcome
/// is no longer wanted: ignored.)
pub(crate) fn outcome<T, E: From<Error>>(settled: Settled<T, E>) -> (Result<T, E>, bool) {
    match settled {
        Settled::Fulfilled(value) => (Ok(value), false),
        Settled::Rejected(error) => (Err(error), false),
        Settled::Quiet(error) => (Err(error), true),
        Settled::Cancelled => (Err(E::from(Error::cancelled())), true),
    }
}

/// Reports `error`, a rejection a combinator took in that can no longer reach
/// anyone, as unhandled, unless `quiet` (cancellation travelling on): it is
/// tracked as a rejected promise nobody consumes, so the report comes after the
/// microtask drain as others do, and an error that only says "cancelled" stays
/// unreported there too. Off the hot paths: only a lost outcome costs the node.
pub(crate) fn report_lost<E>(error: E, quiet: bool)
where
    E: From<Error> + Send + 'static,
{
    if !quiet {
        drop(Promise::<(), E>::rejected(error));
    }
}

/// The links ([`Promise::watch`]) of one combinator call: what to cancel once its
/// inputs are no longer wanted. Link `i` watches input `i`; it is `None` once that
/// input has reported.
#[must_use = "cancel the links once the lock is released"]
pub(crate) struct Links(Vec<Option<Arc<dyn Observation>>>);

impl Links {
    pub(crate) fn new() -> Links {
        Links(Vec::new())
    }

    pub(crate) fn with_capacity(inputs: usize) -> Links {
        Links(Vec::with_capacity(inputs))
    }

    pub(crate) fn push(&mut self, link: Arc<dyn Observation>) {
        self.0.push(Some(link));
    }

    /// Input `index` reported: its link has nothing left to cancel. It is handed
    /// back to be dropped (once the lock is released), so that its memory is
    /// reused while the call still waits on other inputs, and a call that ends with
    /// every input reported cancels nothing. (A link that reports before it was
    /// pushed, from another thread's loop, simply stays.)
    pub(crate) fn reported(&mut self, index: usize) -> Option<Arc<dyn Observation>> {
        self.0.get_mut(index).and_then(Option::take)
    }

    /// Takes the links out of shared state, to cancel them once its lock is released.
    pub(crate) fn take(&mut self) -> Links {
        Links(std::mem::take(&mut self.0))
    }

    /// Cancels the links in input order, then drops them. Never under a lock of ours:
    /// cancelling runs other promises' code (`on_cancel` callbacks). A link whose input
    /// has reported (the one reporting now included) no longer waits on it, so
    /// cancelling it reaches nothing; the others withdraw from their inputs, which are
    /// cancelled in turn if nobody else consumes them.
    pub(crate) fn cancel(self) {
        for link in self.0.into_iter().flatten() {
            // A link holding an outcome that arrived but was not delivered yet drops
            // it (user code, which may panic): the links after it are still
            // cancelled, or their inputs would run on unwanted.
            contained("a value's drop", || link.cancel());
        }
    }
}

// ---------------------------------------------------------------------------
// Gather: many inputs, one output decided by a policy
// ---------------------------------------------------------------------------

/// Decides, from one input's outcome, whether the output settles now (and how).
/// A plain function pointer, so that the inputs of a tuple, each of its own type,
/// can report to one state. A rejection it decides is the deciding input's own
/// reason, so a quiet one stays quiet.
type Decide<P, T, O, E> = fn(&mut P, usize, Result<T, E>) -> Option<Result<O, E>>;

/// One `join` call (a tuple of inputs, each of its own type), kept in its output
/// promise's node, as `Collect` is. `P` is what the combinator keeps (values so
/// far, reasons so far, ...). Each input is watched by a link of its own
/// ([`Promise::watch`]), whose watcher holds the node.
struct Gather<P> {
    state: Mutex<GatherState<P>>,
}

/// A `join` call's output node: the output promise, with the call as its link.
type GatherNode<P, O, E> = Node<O, E, Gather<P>>;

struct GatherState<P> {
    policy: P,
    /// False once the output is settled or cancelled: outcomes that come later
    /// are ignored, and no link is wanted any more.
    open: bool,
    links: Links,
    /// Watchers not yet dropped: when the last goes (its loop is gone) with the
    /// output undecided, nothing is left to settle it, and it breaks. Counted
    /// for every input from the start: an input settled on another thread's
    /// loop may report, and its watcher go, before the next input is watched.
    watchers: usize,
}

impl<P: Send + 'static> Gather<P> {
    /// The output promise, its node given to `watch_inputs` first, to have the
    /// inputs report to it, which must watch each of the `inputs` once.
    /// Cancelling the output cancels the inputs' links.
    fn start<O, E>(
        policy: P,
        inputs: usize,
        watch_inputs: impl FnOnce(&Arc<GatherNode<P, O, E>>),
    ) -> Promise<O, E>
    where
        O: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let call = Gather {
            state: Mutex::new(GatherState {
                policy,
                open: true,
                links: Links::with_capacity(inputs),
                watchers: inputs,
            }),
        };
        wired_with_link(call, watch_inputs)
    }
}

impl<P, O, E> Link<O, E> for Gather<P>
where
    P: Send + 'static,
    O: Send + 'static,
    E: Send + 'static,
{
    /// The output was cancelled: stop watching the inputs.
    fn on_cancel(node: &Arc<GatherNode<P, O, E>>) {
        let links = {
            let mut state = node.link.state.lock();
            state.open = false;
            state.links.take()
        };
        links.cancel();
    }

    /// Its inputs, those still watched, are what settles the output.
    fn settling(node: &GatherNode<P, O, E>) -> Settling {
        Settling::of_inputs(
            node.link.pending_inputs(core::SETTLING_SEARCH),
            node.core.status(),
        )
    }
}

/// Watches input `index` of `node`'s call.
fn watch<P, T, O, E>(
    node: &Arc<GatherNode<P, O, E>>,
    index: usize,
    input: Promise<T, E>,
    decide: Decide<P, T, O, E>,
) where
    P: Send + 'static,
    T: Send + 'static,
    O: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let watcher = Watcher(node.clone());
    let link = input.watch(move |settled| {
        let (outcome, quiet) = outcome(settled);
        watcher.receive(index, outcome, quiet, decide);
    });
    let mut state = node.link.state.lock();
    if state.open {
        state.links.push(link);
        return;
    }
    // Decided while we were attaching (an input settled on another thread's
    // loop): this input is no longer wanted.
    drop(state);
    link.cancel();
}

/// What one input's watcher holds of its call.
struct Watcher<P, O: Send + 'static, E: Send + 'static>(Arc<GatherNode<P, O, E>>);

impl<P, O, E> Watcher<P, O, E>
where
    P: Send + 'static,
    O: Send + 'static,
    E: From<Error> + Send + 'static,
{
    /// One of the watchers [`Gather::start`] counted, one per input.
    fn receive<T>(
        &self,
        index: usize,
        outcome: Result<T, E>,
        quiet: bool,
        decide: Decide<P, T, O, E>,
    ) {
        let node = &self.0;
        let mut state = node.link.state.lock();
        // Never the last reference (the observer runs this), so dropping it under
        // the lock frees nothing.
        drop(state.links.reported(index));
        if !state.open {
            return; // decided or cancelled already
        }
        let Some(decided) = decide(&mut state.policy, index, outcome) else {
            return;
        };
        state.open = false;
        let links = state.links.take();
        drop(state);
        settle_node_as(node, decided, quiet);
        links.cancel();
    }
}

impl<P, O: Send + 'static, E: Send + 'static> Drop for Watcher<P, O, E> {
    /// The last watcher gone with the output undecided (dropped uncalled: its
    /// loop is gone) breaks the output, which nothing else could settle.
    fn drop(&mut self) {
        let node = &self.0;
        let mut state = node.link.state.lock();
        state.watchers -= 1;
        if state.watchers > 0 || !state.open {
            return;
        }
        state.open = false;
        drop(state);
        let _ = node.core.settle_broken(None);
    }
}

impl<P> PendingInputs for Gather<P>
where
    P: Send + 'static,
{
    fn pending_inputs(&self, limit: usize) -> Vec<Arc<dyn Graph>> {
        let state = self.state.lock();
        let links = state.links.0.iter().flatten();
        links
            .filter_map(|link| link.observed())
            .take(limit)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Collect: many inputs of one type, reporting straight to the call's state
// ---------------------------------------------------------------------------

/// What an `all`/`all_settled`/`race`/`any` call over an iterator keeps, and how
/// it decides.
trait Policy<T, E>: Send + 'static {
    type Output: Send + 'static;
    /// Input `index` reported `outcome`; true once that decides the output. Runs
    /// where the input settled, under its lock: it must run no user code.
    fn record(&mut self, index: usize, outcome: Result<T, E>) -> bool;
    /// The decided output. Runs from the microtask queue, and may run user code
    /// (`any_with`'s `combine`).
    fn finish(self) -> Result<Self::Output, E>;
    /// True when a rejection `finish` gives is the reason of the input that
    /// decided (`all`, `race`): a quiet one then stays quiet. `any`'s is what
    /// `combine` made of them all, the user's own.
    const PASSES_REASON: bool;
}

/// The state of one `all`/`all_settled`/`race`/`any` call over an iterator of
/// inputs, kept in its output promise's node (as a `then` link keeps its
/// handler): the call and its output are one allocation. Each input's waiter is
/// that node with the input's index (a [`Collector`]), so an input costs no
/// allocation of its own, and its outcome is recorded as it is delivered. Only
/// the input that decides the output queues a job, which settles the output: the
/// tick a JavaScript combinator settles at (its per-input reactions that decide
/// nothing have no effect anyone can see).
///
/// The node and its pending inputs hold each other (an input's waiter list holds
/// the node, the node the input) until the input reports, or the call ends and
/// withdraws from it, which happens once the output is decided or cancelled.
struct Collect<P: Policy<T, E>, T, E: Send + 'static> {
    /// A spin lock, as a node's: it is held for a few instructions of ours (the
    /// policy's `finish`, which may run user code, and the inputs' cancellation
    /// run once it is released), and taken once per input.
    state: Lock<CollectState<P>>,
    /// The inputs' types (`P` may be a policy for several).
    types: PhantomData<fn(T, E)>,
}

/// A call's output node: the output promise, with the call as its link.
type CollectNode<P, T, E> = Node<<P as Policy<T, E>>::Output, E, Collect<P, T, E>>;

struct CollectState<P> {
    /// Taken by the job that settles the output.
    policy: Option<P>,
    /// Set by the delivery that decided the output: later ones are ignored.
    decided: bool,
    /// The output's rejection, if any, is cancellation travelling on.
    quiet: bool,
    /// False once the call ended: its output is settled, cancelled, or left to
    /// break (its loop is gone).
    open: bool,
    /// Input `i` while it may still report: what to withdraw from when the output
    /// is decided early or cancelled.
    inputs: Vec<Option<Arc<dyn Graph>>>,
}

/// What a [`Collect`] call held, once it ended.
struct Ended<P> {
    policy: Option<P>,
    quiet: bool,
    /// Whether this ending is the one that settles the output (no other did).
    settles: bool,
    inputs: Vec<Option<Arc<dyn Graph>>>,
}

impl<P, T, E> Collect<P, T, E>
where
    P: Policy<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn start(policy: P, inputs: Vec<Promise<T, E>>) -> Promise<P::Output, E> {
        // The indices must fit the waiter's `u32` and stay clear of reactions' mark.
        assert!(
            inputs.len() < FOLLOWER as usize,
            "thenable: a combinator takes fewer than 4 billion inputs"
        );
        let call = Collect {
            state: Lock::new(CollectState {
                policy: Some(policy),
                decided: false,
                quiet: false,
                open: true,
                inputs: Vec::new(),
            }),
            types: PhantomData,
        };
        wired_with_link::<P::Output, E, _>(call, |node| {
            // In place: the promises' array becomes the inputs' (same size and
            // alignment), so attaching allocates nothing.
            let attached: Vec<Option<Arc<dyn Graph>>> = inputs
                .into_iter()
                .enumerate()
                .map(|(index, input)| Some(input.report_to(node.clone(), index as u32)))
                .collect();
            let mut state = node.link.state.lock();
            if state.open {
                // (Inputs that reported meanwhile are let go when the output settles.)
                state.inputs = attached;
                return;
            }
            // Ended while we were attaching (decided by an input that settled on
            // another thread's loop, whose job ran there): the inputs are no
            // longer wanted.
            drop(state);
            withdraw_from(node, attached);
        })
    }

    /// Ends the call: later deliveries are ignored, and what it held is handed back
    /// to be used or dropped once the lock is released (dropping runs user code).
    fn end(&self) -> Ended<P> {
        let mut state = self.state.lock();
        state.decided = true;
        Ended {
            policy: state.policy.take(),
            quiet: state.quiet,
            settles: std::mem::replace(&mut state.open, false),
            inputs: std::mem::take(&mut state.inputs),
        }
    }
}

/// Withdraws `node`'s call from the inputs that have not reported; those left
/// with no other consumer are cancelled in turn. Never under the call's lock:
/// cancelling runs other promises' `on_cancel` hooks.
fn withdraw_from<P, T, E>(node: &CollectNode<P, T, E>, inputs: Vec<Option<Arc<dyn Graph>>>)
where
    P: Policy<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let key = node.collector_key();
    for (index, input) in (0..).zip(inputs) {
        if let Some(input) = input {
            core::withdraw(input, (key, index));
        }
    }
}

impl<P, T, E> Link<P::Output, E> for Collect<P, T, E>
where
    P: Policy<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    /// The output was cancelled: the call stops waiting on its inputs.
    fn on_cancel(node: &Arc<CollectNode<P, T, E>>) {
        let ended = node.link.end();
        withdraw_from(node, ended.inputs);
    }

    /// Its pending inputs are what settles the output.
    fn settling(node: &CollectNode<P, T, E>) -> Settling {
        Settling::of_inputs(
            node.link.pending_inputs(core::SETTLING_SEARCH),
            node.core.status(),
        )
    }
}

impl<P, T, E> PendingInputs for Collect<P, T, E>
where
    P: Policy<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn pending_inputs(&self, limit: usize) -> Vec<Arc<dyn Graph>> {
        let state = self.state.lock();
        state.inputs.iter().flatten().take(limit).cloned().collect()
    }
}

impl<P, T, E, O> Collector<T, E> for Node<O, E, Collect<P, T, E>>
where
    P: Policy<T, E, Output = O>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    O: Send + 'static,
{
    fn collect(self: Arc<Self>, index: u32, input: Input<T, E>) -> Option<Arc<dyn Runnable>> {
        let mut state = self.link.state.lock();
        // Never the input's last reference (whoever settles it holds one), so
        // dropping it here frees nothing: the memory goes back as inputs report.
        drop(state.inputs.get_mut(index as usize).and_then(Option::take));
        if state.decided {
            // The value is not wanted: dropped with our lock released (its drop is
            // the user's code).
            drop(state);
            // It runs under the input's lock, in the middle of its settling: a
            // panic must not leave the input half-settled (its other consumers
            // unserved) nor escape into whoever settled it.
            contained("a value's drop", || drop(input));
            return None;
        }
        let (outcome, quiet) = match input {
            Input::Fulfilled(value) => (Ok(value), false),
            Input::Rejected(error) => (Err(error), false),
            Input::Quiet(error) => (Err(error), true),
            // An input cancelled elsewhere counts as a rejection (see `all`), and
            // a quiet one (see `outcome`).
            Input::Cancelled => (Err(E::from(Error::cancelled())), true),
            Input::Abandoned => (Err(E::from(Error::broken())), false),
        };
        let policy = state.policy.as_mut()?;
        if !policy.record(index as usize, outcome) {
            return None;
        }
        state.decided = true;
        state.quiet = quiet && P::PASSES_REASON;
        drop(state);
        Some(self)
    }

    fn collector_key(&self) -> usize {
        self as *const Self as *const () as usize
    }
}

impl<P, T, E, O> Runnable for Node<O, E, Collect<P, T, E>>
where
    P: Policy<T, E, Output = O>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    O: Send + 'static,
{
    /// Settles the output, as decided.
    fn run(self: Arc<Self>) {
        let ended = self.link.end();
        if let (Some(policy), true) = (ended.policy, ended.settles) {
            let (outcome, quiet) = match catch_unwind(AssertUnwindSafe(|| policy.finish())) {
                Ok(outcome) => (outcome, ended.quiet),
                Err(payload) => (Err(E::from(Error::panic(payload))), false),
            };
            settle_node_as(&self, outcome, quiet);
        }
        withdraw_from(&self, ended.inputs);
    }

    /// The loop is gone: no user code may run (an `any`'s `combine`), so the
    /// output is left to break.
    fn abandon(self: Arc<Self>) {
        let ended = self.link.end();
        if ended.settles {
            let _ = self.core.settle_broken(None);
        }
    }
}

/// `slots` as a `Vec`, every slot filled. Collected in place (the standard
/// library reuses the allocation when the types' alignments agree): a call over a
/// million inputs does not allocate a second array at the end.
fn take_all<T>(slots: &mut Vec<Option<T>>) -> Vec<T> {
    std::mem::take(slots)
        .into_iter()
        .map(|slot| slot.expect("every input reported exactly once"))
        .collect()
}

// ---------------------------------------------------------------------------
// all
// ---------------------------------------------------------------------------

struct AllValues<T, E> {
    values: Vec<Option<T>>,
    left: usize,
    /// The first rejection, which decides.
    rejected: Option<E>,
}

impl<T: Send + 'static, E: Send + 'static> Policy<T, E> for AllValues<T, E> {
    type Output = Vec<T>;

    fn record(&mut self, index: usize, outcome: Result<T, E>) -> bool {
        match outcome {
            Ok(value) => {
                self.values[index] = Some(value);
                self.left -= 1;
                self.left == 0
            }
            Err(error) => {
                self.rejected = Some(error);
                true
            }
        }
    }

    fn finish(mut self) -> Result<Vec<T>, E> {
        match self.rejected.take() {
            Some(error) => {
                // The values that came before the rejection are not wanted; a drop
                // that panics is the value's bug, and must not replace the reason.
                let values = std::mem::take(&mut self.values);
                contained("a value's drop", || drop(values));
                Err(error)
            }
            None => Ok(take_all(&mut self.values)),
        }
    }

    const PASSES_REASON: bool = true;
}

/// Fulfils with every input's value, in input order, once all have fulfilled
/// (JavaScript's `Promise.all`, asyncio's `gather`).
///
/// `promises` is either any iterator of promises of one value type, whose values
/// come back in a `Vec`, or a tuple of 2 to 12 promises of any value types (and one
/// error type), whose values come back in a tuple of the same shape (the same as
/// [`join`]); see [`IntoAll`].
///
/// Fails fast: the first rejection rejects the output at once, and the inputs still
/// pending are then cancelled (see [`Promise::cancel`]: an input that something
/// else also consumes keeps running for that consumer). An empty input fulfils with
/// an empty `Vec`. An input cancelled elsewhere counts as a rejection with
/// [`Error::cancelled`]. Cancelling the output cancels the inputs still pending.
///
/// ```
/// use std::time::Duration;
/// use thenable::{all, sleep, Promise};
///
/// let slow = sleep(Duration::from_millis(20)).map(|()| "slow");
/// let fast = sleep(Duration::from_millis(1)).map(|()| "fast");
/// let both = all([slow, fast]);
/// assert_eq!(thenable::block_on(both).unwrap(), ["slow", "fast"]); // input order
///
/// let mixed = all((Promise::<u8>::resolved(1), Promise::resolved("two")));
/// assert_eq!(thenable::block_on(mixed).unwrap(), (1, "two"));
///
/// let none: Vec<Promise<i32>> = Vec::new();
/// assert!(thenable::block_on(all(none)).unwrap().is_empty());
/// ```
pub fn all<Shape, P: IntoAll<Shape>>(promises: P) -> Promise<P::Values, P::Error> {
    promises.into_all()
}

/// What [`all`] and [`Promise::all`] take: an iterator of promises of one value
/// type, or a tuple of up to 12 promises of different value types. `Shape` (which
/// is [`Many`] or [`Tuple`]) only tells the two kinds apart; it is inferred, never
/// written.
///
/// ```
/// use thenable::{all, Promise};
///
/// let listed = all(vec![Promise::<u8>::resolved(1), Promise::resolved(2)]);
/// let tupled = all((Promise::<u8>::resolved(1), Promise::resolved('b')));
/// assert_eq!(thenable::block_on(listed).unwrap(), [1, 2]);
/// assert_eq!(thenable::block_on(tupled).unwrap(), (1, 'b'));
/// ```
pub trait IntoAll<Shape> {
    /// What the output fulfils with: a `Vec` of the values, or a tuple of them.
    type Values: Send + 'static;
    /// The inputs' (and the output's) error type.
    type Error: From<Error> + Send + 'static;
    #[doc(hidden)]
    fn into_all(self) -> Promise<Self::Values, Self::Error>;
}

/// The [`IntoAll`] shape of an iterator of promises of one type.
///
/// ```
/// let _: fn(Vec<thenable::Promise<u8>>) -> thenable::Promise<Vec<u8>> =
///     thenable::all::<thenable::Many, _>;
/// ```
pub enum Many {}

/// The [`IntoAll`] shape of a tuple of promises.
///
/// ```
/// use thenable::Promise;
/// let _: fn((Promise<u8>, Promise<char>)) -> Promise<(u8, char)> =
///     thenable::all::<thenable::Tuple, _>;
/// ```
pub enum Tuple {}

impl<I, T, E> IntoAll<Many> for I
where
    I: IntoIterator<Item = Promise<T, E>>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    type Values = Vec<T>;
    type Error = E;

    fn into_all(self) -> Promise<Vec<T>, E> {
        let inputs: Vec<Promise<T, E>> = self.into_iter().collect();
        if inputs.is_empty() {
            return Promise::resolved(Vec::new());
        }
        let policy = AllValues {
            values: (0..inputs.len()).map(|_| None).collect(),
            left: inputs.len(),
            rejected: None,
        };
        Collect::start(policy, inputs)
    }
}

impl<J: Join> IntoAll<Tuple> for J {
    type Values = J::Values;
    type Error = J::Error;

    fn into_all(self) -> Promise<J::Values, J::Error> {
        self.join()
    }
}

// ---------------------------------------------------------------------------
// all_settled
// ---------------------------------------------------------------------------

struct AllSettled<T, E> {
    outcomes: Vec<Option<Result<T, E>>>,
    left: usize,
}

impl<T: Send + 'static, E: Send + 'static> Policy<T, E> for AllSettled<T, E> {
    type Output = Vec<Result<T, E>>;

    fn record(&mut self, index: usize, outcome: Result<T, E>) -> bool {
        self.outcomes[index] = Some(outcome);
        self.left -= 1;
        self.left == 0
    }

    fn finish(mut self) -> Result<Vec<Result<T, E>>, E> {
        Ok(take_all(&mut self.outcomes))
    }

    const PASSES_REASON: bool = false;
}

/// Fulfils with every input's outcome (`Ok` value or `Err` reason), in input order,
/// once all have settled (JavaScript's `Promise.allSettled`, asyncio's
/// `gather(..., return_exceptions=True)`).
///
/// It never rejects on account of its inputs (only if it is itself cancelled). An
/// empty input fulfils with an empty `Vec`; an input cancelled elsewhere gives an
/// `Err` for which [`Error::is_cancelled`] holds. Cancelling the output cancels the
/// inputs still pending.
///
/// ```
/// use thenable::{all_settled, Error, Promise};
///
/// let outcomes = all_settled([
///     Promise::<i32>::resolved(1),
///     Promise::rejected(Error::msg("no")),
/// ]);
/// let outcomes = thenable::block_on(outcomes).unwrap();
/// assert_eq!(*outcomes[0].as_ref().unwrap(), 1);
/// assert_eq!(outcomes[1].as_ref().unwrap_err().to_string(), "no");
/// ```
pub fn all_settled<T, E>(
    promises: impl IntoIterator<Item = Promise<T, E>>,
) -> Promise<Vec<Result<T, E>>, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let inputs: Vec<Promise<T, E>> = promises.into_iter().collect();
    if inputs.is_empty() {
        return Promise::resolved(Vec::new());
    }
    let policy = AllSettled {
        outcomes: (0..inputs.len()).map(|_| None).collect(),
        left: inputs.len(),
    };
    Collect::start(policy, inputs)
}

// ---------------------------------------------------------------------------
// race
// ---------------------------------------------------------------------------

/// The first outcome, which decides.
struct First<T, E>(Option<Result<T, E>>);

impl<T: Send + 'static, E: Send + 'static> Policy<T, E> for First<T, E> {
    type Output = T;

    fn record(&mut self, _: usize, outcome: Result<T, E>) -> bool {
        self.0 = Some(outcome);
        true
    }

    fn finish(self) -> Result<T, E> {
        self.0.expect("decided by an outcome")
    }

    const PASSES_REASON: bool = true;
}

/// Settles as the first input to settle, fulfilled or rejected (JavaScript's
/// `Promise.race`); the losers still pending are then cancelled, which releases
/// their timers and tasks unless something else consumes them.
///
/// An empty input gives a promise that stays pending for ever, as JavaScript's
/// `Promise.race([])` does; nothing keeps the loop alive for it, so
/// [`block_on`](crate::block_on) on it ends with an error for which
/// [`Error::is_deadlock`] holds instead of hanging. An input cancelled elsewhere
/// counts as settling with [`Error::cancelled`]. Cancelling the output cancels every
/// input still pending.
///
/// ```
/// use std::time::Duration;
/// use thenable::{race, sleep, EventLoop, Promise};
///
/// let event_loop = EventLoop::new();
/// let slow = sleep(Duration::from_secs(3600)).map(|()| "slow");
/// let fast = sleep(Duration::from_millis(1)).map(|()| "fast");
/// assert_eq!(event_loop.block_on(race([slow, fast])).unwrap(), "fast");
/// // The hour-long timer was cancelled with its loser: nothing is left to wait for.
/// event_loop.run().unwrap();
///
/// let none: Vec<Promise<i32>> = Vec::new();
/// let never = race(none);
/// assert!(never.is_pending());
/// assert!(event_loop.block_on(never).unwrap_err().is_deadlock()); // not a hang
/// ```
pub fn race<T, E>(promises: impl IntoIterator<Item = Promise<T, E>>) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let inputs: Vec<Promise<T, E>> = promises.into_iter().collect();
    if inputs.is_empty() {
        return never();
    }
    Collect::start(First(None), inputs)
}

// ---------------------------------------------------------------------------
// any
// ---------------------------------------------------------------------------

struct AnyOf<T, E, C> {
    /// The first value, which decides.
    fulfilled: Option<T>,
    reasons: Vec<Option<E>>,
    left: usize,
    combine: C,
}

impl<T, E, C> Policy<T, E> for AnyOf<T, E, C>
where
    T: Send + 'static,
    E: Send + 'static,
    C: FnOnce(Vec<E>) -> E + Send + 'static,
{
    type Output = T;

    fn record(&mut self, index: usize, outcome: Result<T, E>) -> bool {
        match outcome {
            Ok(value) => {
                self.fulfilled = Some(value);
                true
            }
            Err(reason) => {
                self.reasons[index] = Some(reason);
                self.left -= 1;
                self.left == 0
            }
        }
    }

    /// A panic in the user's `combine` rejects the output, as in any handler (the
    /// job that calls this catches it).
    fn finish(mut self) -> Result<T, E> {
        match self.fulfilled {
            Some(value) => Ok(value),
            None => Err((self.combine)(take_all(&mut self.reasons))),
        }
    }

    const PASSES_REASON: bool = false;
}

/// Fulfils as the first input to fulfil (JavaScript's `Promise.any`); the others
/// still pending are then cancelled. When every input rejects, rejects with
/// [`Error::aggregate`] of every reason, in input order (not in the order they
/// came), converted to `E`.
///
/// The bound `E: Into<Error>` is what lets reasons of type `E` go into an aggregate:
/// it holds for [`Error`] itself (the reasons are then the very errors the inputs
/// rejected with) and for every `std::error::Error + Send + Sync`, such as
/// `std::io::Error`. For other error types (`String`, your own enum) use
/// [`any_with`], which combines the reasons with your function.
///
/// An empty input rejects at once with an empty aggregate (as JavaScript does). An
/// input cancelled elsewhere counts as a rejection with [`Error::cancelled`].
/// Cancelling the output cancels the inputs still pending.
///
/// ```
/// use thenable::{any, Error, Promise};
///
/// let first_ok = any([
///     Promise::<i32>::rejected(Error::msg("mirror 1 down")),
///     Promise::resolved(2),
/// ]);
/// assert_eq!(thenable::block_on(first_ok).unwrap(), 2);
///
/// let all_bad = any([
///     Promise::<i32>::rejected(Error::msg("a")),
///     Promise::rejected(Error::msg("b")),
/// ]);
/// let error = thenable::block_on(all_bad).unwrap_err();
/// assert!(error.is_aggregate());
/// assert_eq!(error.to_string(), "2 errors: a; b");
/// ```
pub fn any<T, E>(promises: impl IntoIterator<Item = Promise<T, E>>) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Into<Error> + Send + 'static,
{
    any_with(promises, |reasons: Vec<E>| {
        E::from(Error::aggregate(
            reasons.into_iter().map(Into::into).collect(),
        ))
    })
}

/// [`any`] for any error type: when every input rejects, `combine` receives the
/// reasons in input order and makes the output's error (it runs at most once; on an
/// empty input it runs at once, inside `any_with`, with no reasons). If it panics,
/// the output rejects with [`Error::panic`], on an empty input too.
///
/// ```
/// use thenable::{any_with, Promise};
///
/// let p = any_with(
///     [Promise::<i32, String>::rejected("a".into()), Promise::rejected("b".into())],
///     |reasons| reasons.join(" and "),
/// );
/// assert_eq!(thenable::block_on(p).unwrap_err(), "a and b");
/// ```
pub fn any_with<T, E, C>(
    promises: impl IntoIterator<Item = Promise<T, E>>,
    combine: C,
) -> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    C: FnOnce(Vec<E>) -> E + Send + 'static,
{
    let inputs: Vec<Promise<T, E>> = promises.into_iter().collect();
    if inputs.is_empty() {
        // As in `AnyOf::finish`: the caller only built a promise, and a panic in
        // `combine` is the output's rejection, not an unwinding out of here.
        return match catch_unwind(AssertUnwindSafe(|| combine(Vec::new()))) {
            Ok(error) => Promise::rejected(error),
            Err(payload) => Promise::rejected(E::from(Error::panic(payload))),
        };
    }
    let policy = AnyOf {
        fulfilled: None,
        reasons: (0..inputs.len()).map(|_| None).collect(),
        left: inputs.len(),
        combine,
    };
    Collect::start(policy, inputs)
}

// ---------------------------------------------------------------------------
// join: all over a tuple of promises of different value types
// ---------------------------------------------------------------------------

/// A tuple of 2 to 12 promises with one error type and any value types, which
/// [`join`] turns into one promise of the tuple of their values: `all` for
/// heterogeneous inputs (futures' `join!`, asyncio's `gather` with differently typed
/// results).
///
/// It behaves as [`all`]: values in input order, fails fast on the first rejection
/// and then cancels the inputs still pending; cancelling the output cancels them too.
///
/// ```
/// use thenable::{Join, Promise};
///
/// let (id, name) = (Promise::<u32>::resolved(7), Promise::resolved("ada"));
/// let both: Promise<(u32, &str)> = (id, name).join();
/// assert_eq!(thenable::block_on(both).unwrap(), (7, "ada"));
/// ```
pub trait Join {
    /// The tuple of the inputs' value types, e.g. `(u32, &str)` for
    /// `(Promise<u32>, Promise<&str>)`.
    ///
    /// ```
    /// use thenable::{Join, Promise};
    /// let values: <(Promise<u8>, Promise<bool>) as Join>::Values = (1, true);
    /// # let _ = values;
    /// ```
    type Values: Send + 'static;

    /// The error type the inputs share.
    ///
    /// ```
    /// use thenable::{Error, Join, Promise};
    /// let error: <(Promise<u8>, Promise<bool>) as Join>::Error = Error::msg("x");
    /// # let _ = error;
    /// ```
    type Error: From<Error> + Send + 'static;

    /// One promise of all the values; see the trait's documentation.
    ///
    /// ```
    /// use thenable::{Error, Join, Promise};
    ///
    /// let failed = (Promise::<u8>::resolved(1), Promise::<bool>::rejected(Error::msg("no")));
    /// assert_eq!(thenable::block_on(failed.join()).unwrap_err().to_string(), "no");
    /// ```
    fn join(self) -> Promise<Self::Values, Self::Error>;
}

/// One promise of the values of a tuple of promises of different types: see
/// [`Join`]. The same as `promises.join()`.
///
/// ```
/// use std::time::Duration;
/// use thenable::{join, sleep, Promise};
///
/// let count = sleep(Duration::from_millis(5)).map(|()| 3_usize);
/// let label = Promise::resolved(String::from("items"));
/// let (n, what) = thenable::block_on(join((count, label))).unwrap();
/// assert_eq!(format!("{n} {what}"), "3 items");
/// ```
pub fn join<J: Join>(promises: J) -> Promise<J::Values, J::Error> {
    promises.join()
}

/// What a `join` keeps: one slot per input, and how many are still empty.
struct JoinOf<S> {
    slots: S,
    left: usize,
}

/// A tuple of `Option`s, all filled once every input fulfilled.
trait Slots {
    type Values;
    fn take_all(&mut self) -> Self::Values;
}

macro_rules! join_tuple {
    ($count:expr; $($value:ident $index:tt),+) => {
        impl<$($value),+> Slots for ($(Option<$value>,)+) {
            type Values = ($($value,)+);

            fn take_all(&mut self) -> Self::Values {
                ($(self.$index.take().expect("every input reported exactly once"),)+)
            }
        }

        impl<$($value,)+ E> Join for ($(Promise<$value, E>,)+)
        where
            $($value: Send + 'static,)+
            E: From<Error> + Send + 'static,
        {
            type Values = ($($value,)+);
            type Error = E;

            fn join(self) -> Promise<Self::Values, E> {
                let policy = JoinOf {
                    slots: ($(None::<$value>,)+),
                    left: $count,
                };
                Gather::start(policy, $count, |node| {
                    $(
                        watch(
                            node,
                            $index,
                            self.$index,
                            |state, _, outcome| {
                                match outcome {
                                    Ok(value) => {
                                        state.slots.$index = Some(value);
                                        state.left -= 1;
                                        (state.left == 0).then(|| Ok(state.slots.take_all()))
                                    }
                                    Err(error) => Some(Err(error)),
                                }
                            },
                        );
                    )+
                })
            }
        }
    };
}

join_tuple!(2; A 0, B 1);
join_tuple!(3; A 0, B 1, C 2);
join_tuple!(4; A 0, B 1, C 2, D 3);
join_tuple!(5; A 0, B 1, C 2, D 3, F 4);
join_tuple!(6; A 0, B 1, C 2, D 3, F 4, G 5);
join_tuple!(7; A 0, B 1, C 2, D 3, F 4, G 5, H 6);
join_tuple!(8; A 0, B 1, C 2, D 3, F 4, G 5, H 6, I 7);
join_tuple!(9; A 0, B 1, C 2, D 3, F 4, G 5, H 6, I 7, J 8);
join_tuple!(10; A 0, B 1, C 2, D 3, F 4, G 5, H 6, I 7, J 8, K 9);
join_tuple!(11; A 0, B 1, C 2, D 3, F 4, G 5, H 6, I 7, J 8, K 9, L 10);
join_tuple!(12; A 0, B 1, C 2, D 3, F 4, G 5, H 6, I 7, J 8, K 9, L 10, M 11);

// ---------------------------------------------------------------------------
// The same, as associated functions of `Promise`
// ---------------------------------------------------------------------------

impl<T, E> Promise<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    /// [`all`] as an associated function: `Promise::all(promises)`, as in JavaScript,
    /// over an iterator of promises or a tuple of them. (The result is this
    /// `Promise<T, E>`: `T` is the `Vec` or tuple of values.)
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let p = Promise::all(vec![Promise::<i32>::resolved(1), Promise::resolved(2)]);
    /// assert_eq!(thenable::block_on(p).unwrap(), [1, 2]);
    /// let q = Promise::all((Promise::<i32>::resolved(1), Promise::resolved("two")));
    /// assert_eq!(thenable::block_on(q).unwrap(), (1, "two"));
    /// ```
    pub fn all<Shape, P>(promises: P) -> Promise<T, E>
    where
        P: IntoAll<Shape, Values = T, Error = E>,
    {
        all(promises)
    }

    /// [`all_settled`] as an associated function: `Promise::all_settled(promises)`.
    ///
    /// ```
    /// use thenable::{Error, Promise};
    ///
    /// let p = Promise::all_settled([Promise::<i32>::rejected(Error::msg("x"))]);
    /// assert!(thenable::block_on(p).unwrap()[0].is_err());
    /// ```
    pub fn all_settled(
        promises: impl IntoIterator<Item = Promise<T, E>>,
    ) -> Promise<Vec<Result<T, E>>, E> {
        all_settled(promises)
    }

    /// [`race`] as an associated function: `Promise::race(promises)`.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let (never, _keep) = Promise::<i32>::pending();
    /// let p = Promise::race([never, Promise::resolved(5)]);
    /// assert_eq!(thenable::block_on(p).unwrap(), 5);
    /// ```
    pub fn race(promises: impl IntoIterator<Item = Promise<T, E>>) -> Promise<T, E> {
        race(promises)
    }

    /// [`any`] as an associated function: `Promise::any(promises)`.
    ///
    /// ```
    /// use thenable::{Error, Promise};
    ///
    /// let p = Promise::any([Promise::<i32>::rejected(Error::msg("x")), Promise::resolved(3)]);
    /// assert_eq!(thenable::block_on(p).unwrap(), 3);
    /// ```
    pub fn any(promises: impl IntoIterator<Item = Promise<T, E>>) -> Promise<T, E>
    where
        E: Into<Error>,
    {
        any(promises)
    }

    /// [`any_with`] as an associated function.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let p = Promise::any_with([Promise::<i32, String>::rejected("x".into())], |r| r.concat());
    /// assert_eq!(thenable::block_on(p).unwrap_err(), "x");
    /// ```
    pub fn any_with<C>(
        promises: impl IntoIterator<Item = Promise<T, E>>,
        combine: C,
    ) -> Promise<T, E>
    where
        C: FnOnce(Vec<E>) -> E + Send + 'static,
    {
        any_with(promises, combine)
    }

    /// [`join`] as an associated function: `Promise::join((a, b, ...))`, the tuple
    /// form of `Promise.all`.
    ///
    /// ```
    /// use thenable::Promise;
    ///
    /// let p = Promise::join((Promise::<i32>::resolved(1), Promise::resolved('x')));
    /// assert_eq!(thenable::block_on(p).unwrap(), (1, 'x'));
    /// ```
    pub fn join<J: Join<Values = T, Error = E>>(promises: J) -> Promise<T, E> {
        promises.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `join`'s watchers are called however their inputs end; one dropped
    /// uncalled (its job dropped with its loop) must still not leave the output
    /// pending for ever, since nothing else settles it.
    #[test]
    fn a_join_whose_last_watcher_is_dropped_uncalled_breaks() {
        let mut watchers = Vec::new();
        let output = Gather::start((), 2, |node: &Arc<GatherNode<(), u8, Error>>| {
            watchers.push(Watcher(node.clone()));
            watchers.push(Watcher(node.clone()));
        });
        drop(watchers.pop());
        assert!(output.is_pending(), "a watcher is left");
        drop(watchers.pop());
        assert!(!output.is_pending(), "the last watcher is gone");
        let error = crate::block_on(output).unwrap_err();
        assert!(error.is_broken(), "{error}");
    }

    /// Counts the inputs of a two-input join, fulfilling with their sum once both
    /// fulfilled.
    fn sum_of_two(
        left: &mut (u8, u8),
        _: usize,
        outcome: Result<u8, Error>,
    ) -> Option<Result<u8, Error>> {
        match outcome {
            Ok(value) => {
                left.0 -= 1;
                left.1 += value;
                (left.0 == 0).then_some(Ok(left.1))
            }
            Err(error) => Some(Err(error)),
        }
    }

    /// The first input of a `join` reports (settled by its resolver's loop on
    /// another thread) before the second one is watched, as it may while the
    /// call attaches: its watcher, called and dropped, was the only one yet,
    /// and must not break an output that the second input still decides.
    #[test]
    fn a_join_whose_first_input_reports_while_it_attaches_waits_for_the_others() {
        let (first, settle_first) = std::sync::mpsc::channel::<()>();
        let (ran, first_ran) = std::sync::mpsc::channel::<()>();
        let (input, resolver) = std::sync::mpsc::channel();
        // The first input's resolver belongs to a loop of another thread, which
        // runs its watcher there.
        let other = std::thread::spawn(move || {
            let event_loop = crate::EventLoop::new();
            let (promise, resolve) = event_loop
                .block_on(async { Ok::<_, Error>(Promise::<u8>::pending()) })
                .unwrap();
            input.send(promise).unwrap();
            settle_first.recv().unwrap();
            event_loop
                .block_on(async move {
                    resolve.resolve(1);
                    crate::sleep(std::time::Duration::ZERO).await
                })
                .unwrap();
            ran.send(()).unwrap();
        });
        let a = resolver.recv().unwrap();
        let (b, resolve_b) = Promise::<u8>::pending();
        let output = Gather::start((2, 0), 2, |node: &Arc<GatherNode<(u8, u8), u8, Error>>| {
            watch(node, 0, a, sum_of_two);
            first.send(()).unwrap();
            first_ran.recv().unwrap();
            watch(node, 1, b, sum_of_two);
        });
        other.join().unwrap();
        assert!(
            output.is_pending(),
            "decided before its second input reported"
        );
        resolve_b.resolve(2);
        assert_eq!(crate::block_on(output).unwrap(), 3);
    }
}
