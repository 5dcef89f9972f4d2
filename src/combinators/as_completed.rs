//! `as_completed`: the outcomes of many promises, in the order they settle.
//!
//! Each input costs one link ([`Promise::watch`]) reporting to shared state.
//! Outcomes go, in arrival order, to whoever asked first: the promises handed out by
//! `next_promise` (which `poll_next` uses too), or a queue kept for the next request.
//! A request is settled once the lock is released, so it may be cancelled (on another
//! thread) in between: its outcome then comes back and goes to the next request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};
use parking_lot::Mutex;

use super::collect::{outcome, report_lost, Links};
use crate::error::Error;
use crate::event_loop::contained;
use crate::promise::{internal, quietly_rejected, Promise, Settler};

/// The outcomes of a set of promises in the order they settle, made by
/// [`as_completed`] (asyncio's `as_completed`).
///
/// Use it as a [`Stream`] of `Result<T, E>` (`while let Some(outcome) =
/// stream.next().await`), or chain promises with
/// [`next_promise`](AsCompleted::next_promise). Both draw from the same sequence:
/// each outcome goes to exactly one request, in the order the requests were made.
///
/// Dropping it cancels the inputs still pending (see [`Promise::cancel`]), once no
/// promise handed out by `next_promise` is still waiting for its outcome. An input
/// cancelled elsewhere yields an `Err` for which [`Error::is_cancelled`] holds.
/// A rejection that arrived but was never handed out is then reported as an
/// unhandled one (see [`set_unhandled_rejection_hook`](crate::set_unhandled_rejection_hook)).
///
/// ```
/// use std::time::Duration;
/// use futures::StreamExt;
/// use thenable::{as_completed, sleep};
///
/// let mut done = as_completed([
///     sleep(Duration::from_millis(30)).map(|()| "slow"),
///     sleep(Duration::from_millis(1)).map(|()| "fast"),
/// ]);
/// let order = thenable::block_on(async move {
///     let mut order = Vec::new();
///     while let Some(outcome) = done.next().await {
///         order.push(outcome?);
///     }
///     Ok::<_, thenable::Error>(order)
/// });
/// assert_eq!(order.unwrap(), ["fast", "slow"]);
/// ```
#[must_use = "dropping an AsCompleted cancels the inputs still pending"]
pub struct AsCompleted<T: Send + 'static, E: Send + 'static = Error> {
    shared: Arc<Completion<T, E>>,
    /// The request `poll_next` waits on.
    current: Option<Promise<T, E>>,
}

struct Completion<T: Send + 'static, E: Send + 'static> {
    state: Mutex<CompletionState<T, E>>,
    /// `collect::report_lost`, for the rejections that arrived but will never be
    /// handed out (a function pointer: `Drop` cannot ask for `E: From<Error>`).
    lost: fn(E, bool),
}

/// An input's outcome, with whether it is a quiet rejection (see
/// `collect::outcome`).
type Outcome<T, E> = (Result<T, E>, bool);

struct CompletionState<T: Send + 'static, E: Send + 'static> {
    links: Links,
    /// Outcomes that arrived before anyone asked for them, in arrival order (and,
    /// while `handing_over`, those that arrived meanwhile).
    ready: VecDeque<Outcome<T, E>>,
    /// Promises handed out and waiting for an outcome, in the order handed out,
    /// each with the number that identifies it if it is cancelled.
    waiting: VecDeque<(u64, Settler<T, E>)>,
    next_request: u64,
    /// Outcomes not promised to anybody yet: inputs still pending, plus `ready`,
    /// minus `waiting`.
    unclaimed: usize,
    /// The `AsCompleted` is gone: once nothing waits, cancel the inputs still pending.
    dropped: bool,
    /// An outcome is on its way to a request, outside the lock. Until it arrives,
    /// outcomes and requests queue up behind it: one that comes back (its request
    /// was cancelled) must still go out before them.
    handing_over: bool,
}

impl<T: Send + 'static, E: Send + 'static> CompletionState<T, E> {
    /// The `AsCompleted` is gone and no handed-out promise still waits: nobody will
    /// ever ask for another outcome (no request can be made after the drop, so once
    /// true, it stays true).
    fn unwanted(&self) -> bool {
        self.dropped && self.waiting.is_empty()
    }

    /// The links to cancel, if the outcomes to come are unwanted.
    fn release_if_unwanted(&mut self) -> Links {
        if self.unwanted() {
            self.links.take()
        } else {
            Links::new()
        }
    }

    /// The oldest waiting request with the oldest outcome, to settle once the lock
    /// is released; `None`, and the handing over ends, when either queue is empty.
    fn next_hand_over(&mut self) -> Option<(Settler<T, E>, Outcome<T, E>)> {
        self.handing_over = !self.waiting.is_empty() && !self.ready.is_empty();
        if !self.handing_over {
            return None;
        }
        let (_, settler) = self.waiting.pop_front()?;
        self.ready.pop_front().map(|outcome| (settler, outcome))
    }
}

impl<T: Send + 'static, E: Send + 'static> Completion<T, E> {
    /// An input's outcome: to the oldest waiting request, or queued for the next one.
    fn receive(&self, outcome: Outcome<T, E>) {
        if let Some((settler, outcome)) = self.take_next(outcome) {
            self.hand_over(settler, outcome);
        }
    }

    /// Queues `outcome` and, unless another call is handing outcomes over already,
    /// takes the first to hand over.
    fn take_next(&self, outcome: Outcome<T, E>) -> Option<(Settler<T, E>, Outcome<T, E>)> {
        let mut state = self.state.lock();
        if state.unwanted() {
            drop(state);
            self.discard([outcome]);
            return None;
        }
        state.ready.push_back(outcome);
        if state.handing_over {
            return None;
        }
        state.next_hand_over()
    }

    /// Settles `settler` with `outcome`, then the next waiting requests with the
    /// next outcomes, until either runs out.
    fn hand_over(&self, mut settler: Settler<T, E>, mut outcome: Outcome<T, E>) {
        loop {
            let mut given_back = None;
            // A foreign waker that panics (it runs once the request has its outcome)
            // must not end the handing over with `handing_over` still set: the
            // outcomes queued behind would wait for ever.
            contained("a waker", || {
                let (outcome, quiet) = outcome;
                given_back = settler
                    .settle_or_give_back(outcome, quiet)
                    .map(|outcome| (outcome, quiet));
            });
            let (next, links, unwanted) = {
                let mut state = self.state.lock();
                if let Some(outcome) = given_back {
                    // Its request was cancelled after it left `waiting`, too late
                    // for `withdraw` to find it: the outcome is unclaimed again, and
                    // still the oldest.
                    state.unclaimed += 1;
                    state.ready.push_front(outcome);
                }
                let next = state.next_hand_over();
                let unwanted = if state.unwanted() {
                    std::mem::take(&mut state.ready)
                } else {
                    VecDeque::new()
                };
                (next, state.release_if_unwanted(), unwanted)
            };
            links.cancel();
            self.discard(unwanted);
            match next {
                Some((request, first)) => (settler, outcome) = (request, first),
                None => return,
            }
        }
    }

    /// Drops outcomes nobody will ever ask for, reporting their rejections as
    /// unhandled ones (asyncio leaves them unretrieved, and reports them): the
    /// combinator took them in, and they reach nobody else.
    fn discard(&self, outcomes: impl IntoIterator<Item = Outcome<T, E>>) {
        for (outcome, quiet) in outcomes {
            if let Err(error) = outcome {
                (self.lost)(error, quiet);
            }
        }
    }

    /// A handed-out promise was cancelled: its outcome goes to the next request.
    fn withdraw(&self, request: u64) {
        let (withdrawn, links) = {
            let mut state = self.state.lock();
            let position = state.waiting.iter().position(|(id, _)| *id == request);
            let withdrawn = position.and_then(|at| state.waiting.remove(at));
            if withdrawn.is_some() {
                state.unclaimed += 1;
            }
            (withdrawn, state.release_if_unwanted())
        };
        drop(withdrawn);
        links.cancel();
    }
}

/// The outcomes of `promises` in the order they settle (asyncio's
/// `as_completed`), as an [`AsCompleted`]: a [`Stream`] of `Result<T, E>`, and a
/// source of promises through [`next_promise`](AsCompleted::next_promise).
///
/// An empty input ends at once. For results in input order, see [`all`](crate::all)
/// and [`all_settled`](crate::all_settled).
///
/// ```
/// use futures::StreamExt;
/// use thenable::{as_completed, Error, Promise};
///
/// let (late, resolver) = Promise::<i32>::pending();
/// let mut outcomes = as_completed([late, Promise::rejected(Error::msg("early"))]);
/// resolver.resolve(2);
/// let (first, second) = thenable::block_on(async move {
///     Ok::<_, Error>((outcomes.next().await.unwrap(), outcomes.next().await.unwrap()))
/// })
/// .unwrap();
/// assert_eq!(first.unwrap_err().to_string(), "early");
/// assert_eq!(second.unwrap(), 2);
/// ```
pub fn as_completed<T, E>(promises: impl IntoIterator<Item = Promise<T, E>>) -> AsCompleted<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let inputs: Vec<Promise<T, E>> = promises.into_iter().collect();
    let shared = Arc::new(Completion {
        state: Mutex::new(CompletionState {
            links: Links::new(),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            next_request: 0,
            unclaimed: inputs.len(),
            dropped: false,
            handing_over: false,
        }),
        lost: report_lost::<E>,
    });
    for input in inputs {
        let completion = shared.clone();
        let link = input.watch(move |settled| completion.receive(outcome(settled)));
        // Unlike `Gather::watch`, no need to ask whether the link is still wanted:
        // the links are cancelled only once the `AsCompleted` returned below is gone.
        shared.state.lock().links.push(link);
    }
    AsCompleted {
        shared,
        current: None,
    }
}

impl<T, E> AsCompleted<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    /// A promise of the next outcome in completion order, or `None` once every
    /// input's outcome has been handed out. Promises handed out earlier get earlier
    /// outcomes, whether or not they have settled yet; this is how to consume the
    /// outcomes by chaining `then`s instead of awaiting.
    ///
    /// Cancelling a promise it returned gives its outcome to the next request
    /// (dropping it does not: the outcome would then be dropped with it).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use thenable::{as_completed, sleep, AsCompleted, Promise};
    ///
    /// // Log each outcome as it comes, then the end: a then-chain, no async.
    /// fn drain(mut rest: AsCompleted<u64>, log: Arc<Mutex<Vec<u64>>>) -> Promise<()> {
    ///     match rest.next_promise() {
    ///         None => Promise::resolved(()),
    ///         Some(next) => next.then(move |ms| {
    ///             log.lock().unwrap().push(ms);
    ///             drain(rest, log)
    ///         }),
    ///     }
    /// }
    ///
    /// let naps = [20, 1, 10].map(|ms| sleep(Duration::from_millis(ms)).map(move |()| ms));
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// thenable::block_on(drain(as_completed(naps), log.clone())).unwrap();
    /// assert_eq!(*log.lock().unwrap(), [1, 10, 20]);
    /// ```
    pub fn next_promise(&mut self) -> Option<Promise<T, E>> {
        let mut state = self.shared.state.lock();
        if state.unclaimed == 0 {
            return None;
        }
        state.unclaimed -= 1;
        // While outcomes are handed over, the oldest may still come back to `ready`.
        let ready = if state.handing_over {
            None
        } else {
            state.ready.pop_front()
        };
        if let Some((outcome, quiet)) = ready {
            drop(state);
            return Some(match outcome {
                Ok(value) => Promise::resolved(value),
                Err(error) if quiet => quietly_rejected(error),
                Err(error) => Promise::rejected(error),
            });
        }
        let (promise, settler) = internal::<T, E>();
        let request = state.next_request;
        state.next_request += 1;
        let weak = Arc::downgrade(&self.shared);
        settler.on_cancel(move || {
            if let Some(shared) = weak.upgrade() {
                shared.withdraw(request);
            }
        });
        state.waiting.push_back((request, settler));
        Some(promise)
    }
}

/// Yields each input's outcome in the order they settle, then ends.
///
/// ```
/// use futures::StreamExt;
/// use thenable::{as_completed, Promise};
///
/// let outcomes = as_completed([Promise::<i32>::resolved(1), Promise::resolved(2)]);
/// let values = thenable::block_on(async move {
///     Ok::<_, thenable::Error>(outcomes.map(Result::unwrap).collect::<Vec<_>>().await)
/// });
/// assert_eq!(values.unwrap(), [1, 2]);
/// ```
impl<T, E> Stream for AsCompleted<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    type Item = Result<T, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Waiting on a promise (rather than storing a waker ourselves) gives the
        // stream everything a promise does when polled: it drives this thread's loop
        // under a foreign executor, and the loop can tell a deadlock.
        let current = match &mut this.current {
            Some(current) => current,
            None => match this.next_promise() {
                Some(next) => this.current.insert(next),
                None => return Poll::Ready(None),
            },
        };
        match Pin::new(current).poll(cx) {
            Poll::Ready(outcome) => {
                this.current = None;
                Poll::Ready(Some(outcome))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let state = self.shared.state.lock();
        let asked = usize::from(self.current.is_some());
        // The outcomes `ready` while handed over go to the waiting requests first.
        let ready = state.ready.len().saturating_sub(state.waiting.len());
        (ready, Some(state.unclaimed + asked))
    }
}

/// Terminated once every outcome has been yielded.
///
/// ```
/// use futures::stream::{FusedStream, StreamExt};
/// use thenable::{as_completed, Promise};
///
/// let mut outcomes = as_completed([Promise::<i32>::resolved(1)]);
/// assert!(!outcomes.is_terminated());
/// thenable::block_on(async {
///     while outcomes.next().await.is_some() {}
///     Ok::<_, thenable::Error>(())
/// })
/// .unwrap();
/// assert!(outcomes.is_terminated());
/// ```
impl<T, E> FusedStream for AsCompleted<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.current.is_none() && self.shared.state.lock().unclaimed == 0
    }
}

impl<T: Send + 'static, E: Send + 'static> Drop for AsCompleted<T, E> {
    fn drop(&mut self) {
        if let Some(current) = self.current.take() {
            // Gives its outcome back (its `on_cancel` runs inside `cancel`).
            current.cancel();
        }
        let (ready, links) = {
            let mut state = self.shared.state.lock();
            state.dropped = true;
            // Outcomes being handed over to requests still waiting stay theirs.
            let ready = if state.unwanted() {
                std::mem::take(&mut state.ready)
            } else {
                VecDeque::new()
            };
            (ready, state.release_if_unwanted())
        };
        links.cancel();
        self.shared.discard(ready);
    }
}

impl<T: Send + 'static, E: Send + 'static> std::fmt::Debug for AsCompleted<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("AsCompleted")
            .field("ready", &state.ready.len())
            .field("unclaimed", &state.unclaimed)
            .field("waiting", &state.waiting.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventLoop, Resolver};

    /// An `AsCompleted` of `n` pending inputs, with their resolvers.
    fn of_pending(n: usize) -> (AsCompleted<u32>, Vec<Resolver<u32>>) {
        let (inputs, resolvers): (Vec<_>, Vec<_>) = (0..n).map(|_| Promise::pending()).unzip();
        (as_completed(inputs), resolvers)
    }

    #[test]
    fn an_outcome_whose_request_is_cancelled_while_it_is_handed_over_goes_to_the_next() {
        let event_loop = EventLoop::new();
        let (mut completed, resolvers) = of_pending(2);
        let first = completed.next_promise().unwrap();
        let second = completed.next_promise().unwrap();
        // The interleaving: the first request is cancelled on another thread after
        // its settler was taken out, before the outcome reaches it.
        let (settler, outcome) = completed.shared.take_next((Ok(1), false)).unwrap();
        assert!(first.cancel());
        completed.shared.hand_over(settler, outcome);
        assert!(
            second.is_fulfilled(),
            "the outcome went to the next request"
        );
        assert_eq!(event_loop.block_on(second).unwrap(), 1);
        // The other input is still unclaimed, and comes out next.
        let third = completed.next_promise().unwrap();
        assert!(completed.next_promise().is_none());
        resolvers[1].resolve(2);
        assert_eq!(event_loop.block_on(third).unwrap(), 2);
    }

    #[test]
    fn an_outcome_given_back_with_nobody_waiting_stays_ahead_of_later_ones() {
        let event_loop = EventLoop::new();
        let (mut completed, _resolvers) = of_pending(2);
        let only = completed.next_promise().unwrap();
        let (settler, outcome) = completed.shared.take_next((Ok(1), false)).unwrap();
        assert!(only.cancel());
        // The other input settles (its watcher on another loop's thread, say)
        // before the first outcome comes back.
        completed.shared.receive((Ok(2), false));
        completed.shared.hand_over(settler, outcome);
        let mut order = Vec::new();
        while let Some(next) = completed.next_promise() {
            order.push(event_loop.block_on(next).unwrap());
        }
        assert_eq!(order, [1, 2], "each outcome once, in completion order");
    }

    /// Counts its drops.
    struct Counted(Arc<std::sync::atomic::AtomicU32>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn an_outcome_given_back_after_the_as_completed_is_gone_is_dropped_once() {
        let _event_loop = EventLoop::new();
        let (inputs, resolvers): (Vec<_>, Vec<_>) =
            (0..2).map(|_| Promise::<Counted>::pending()).unzip();
        let mut completed = as_completed(inputs);
        let only = completed.next_promise().unwrap();
        let drops = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shared = completed.shared.clone();
        let (settler, outcome) = shared
            .take_next((Ok(Counted(drops.clone())), false))
            .unwrap();
        drop(completed);
        assert!(only.cancel());
        shared.hand_over(settler, outcome);
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            resolvers.iter().all(Resolver::is_done),
            "the inputs are cancelled"
        );
    }

    #[test]
    fn rejections_arriving_or_given_back_after_the_as_completed_is_gone_are_reported_once() {
        let event_loop = EventLoop::new();
        let reported = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = reported.clone();
        crate::set_unhandled_rejection_hook(move |_| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let (mut completed, _resolvers) = of_pending(3);
        let only = completed.next_promise().unwrap();
        let shared = completed.shared.clone();
        let (settler, outcome) = shared
            .take_next((Err(Error::msg("given back")), false))
            .unwrap();
        drop(completed);
        assert!(only.cancel());
        shared.hand_over(settler, outcome);
        // Outcomes arriving once it is unwanted (their input settled on another
        // thread before its link was cancelled, say): a genuine one, a quiet one.
        shared.receive((Err(Error::msg("arrived late")), false));
        shared.receive((Err(Error::msg("passed on")), true));
        event_loop.run().unwrap();
        crate::reset_unhandled_rejection_hook();
        assert_eq!(reported.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
