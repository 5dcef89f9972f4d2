//! Structured concurrency: [`scope`] runs a body that spawns tasks into a
//! [`Scope`]; the scope's promise settles only when the body and every task have
//! finished, and the first failure cancels everything else (asyncio's
//! `TaskGroup`, trio's nursery).
//!
//! Every member (the body and each task) is a task of the loop, watched by a
//! `then_or_catch`. The scope keeps those watchers: cancelling a watcher cancels
//! the task behind it (its only consumer), which drops the task's future.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

use super::concurrency::cancelled;
use crate::promise::{internal, Settler};
use crate::{spawn, Error, Promise};

/// Runs `body` as a task with a [`Scope`] to spawn more tasks into, and settles
/// once the body and all those tasks have finished:
///
/// - with the body's value if nothing failed;
/// - with the first failure (of the body or of any task; a panic counts) if
///   something did. That failure cancels every other member at once, the body
///   included, in the order they joined the scope: their futures are dropped
///   (their destructors run, in that order) before any handler of the scope's
///   promise runs.
///
/// Cancelling the scope's promise cancels every member the same way. Tasks may
/// spawn more tasks into their own scope; a task spawned into a scope that has
/// failed, been cancelled or finished never runs (see [`Scope::spawn`]).
///
/// ```
/// use std::time::Duration;
/// use thenable::{block_on, delay, scope, Promise, Scope};
///
/// let total = scope(|s: Scope| async move {
///     let slow: Promise<i32> = s.spawn(async { delay(Duration::from_millis(5), 1).await });
///     let fast: Promise<i32> = s.spawn(async { Ok(2) });
///     Ok(slow.await? + fast.await?)
/// });
/// assert_eq!(block_on(total).unwrap(), 3);
/// ```
///
/// The first failure wins and the rest is cancelled:
///
/// ```
/// use std::time::Duration;
/// use thenable::{block_on, scope, sleep, Error, Scope};
///
/// let outcome = scope(|s: Scope| async move {
///     // The scope waits for its tasks: their promises need not be kept.
///     drop(s.spawn(async {
///         sleep(Duration::from_secs(3600)).await?;
///         Ok(())
///     }));
///     drop(s.spawn(async { Err::<(), _>(Error::msg("disk full")) }));
///     Ok(())
/// });
/// assert_eq!(block_on(outcome).unwrap_err().to_string(), "disk full");
/// ```
pub fn scope<R, E, F, Body>(body: F) -> Promise<R, E>
where
    F: FnOnce(Scope<E>) -> Body,
    Body: Future<Output = Result<R, E>> + Send + 'static,
    R: Send + 'static,
    E: From<Error> + Send + 'static,
{
    // A library-settled promise, not a resolver's: a pending scope keeps the loop
    // alive only through its members, so a scope stuck on something nothing can
    // complete ends `block_on` with a deadlock error instead of a hang.
    let (result, settler) = internal::<R, E>();
    let cancel_hooks = settler.cancel_hooks();
    let body_value: Arc<Mutex<Option<R>>> = Arc::default();
    let settle: Settle<E> = {
        let body_value = body_value.clone();
        let mut settler = settler;
        Box::new(move |failure| match failure {
            Some(error) => settler.settle(Err(error)),
            None => {
                let value = body_value.lock().take();
                let outcome = value.ok_or_else(|| E::from(Error::broken()));
                settler.settle(outcome);
            }
        })
    };
    let state = Arc::new(Mutex::new(State {
        members: BTreeMap::new(),
        next_key: 0,
        body_done: false,
        failure: None,
        closed: false,
        settle: Some(settle),
    }));
    let weak = Arc::downgrade(&state);
    cancel_hooks.add(move || {
        if let Some(state) = weak.upgrade() {
            close(&state, None);
        }
    });
    let handle = Scope { state };
    let body = spawn(body(handle.clone())).map(move |value| {
        *body_value.lock() = Some(value);
    });
    handle.watch(body, Member::Body, None);
    result
}

/// The handle a [`scope`]'s body receives, to spawn tasks that belong to the
/// scope. It is `Clone + Send`: tasks may spawn more tasks into their own scope.
/// `E` is the error type of the scope and of its tasks.
///
/// ```
/// use thenable::{block_on, scope, Scope};
///
/// let count = scope(|s: Scope| async move {
///     let nested = s.clone();
///     let inner = s.spawn(async move {
///         // a task spawning into its own scope
///         nested.spawn(async { Ok(()) }).await?;
///         Ok(1)
///     });
///     Ok(inner.await? + 1)
/// });
/// assert_eq!(block_on(count).unwrap(), 2);
/// ```
pub struct Scope<E = Error> {
    state: Arc<Mutex<State<E>>>,
}

impl<E> Clone for Scope<E> {
    fn clone(&self) -> Self {
        Scope {
            state: self.state.clone(),
        }
    }
}

impl<E> fmt::Debug for Scope<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Scope")
            .field("members", &state.members.len())
            .field("closed", &state.closed)
            .finish()
    }
}

/// Settles the scope's promise: with the body's value (`None`) or with the
/// first failure. Boxed so that the state need not know the body's value type.
type Settle<E> = Box<dyn FnOnce(Option<E>) + Send>;

struct State<E> {
    /// By key, which counts up as members join: cancelled in the order they
    /// joined (the body first), as `all` cancels its inputs, so that their
    /// destructors and `on_cancel` hooks run in the same order on every run.
    members: BTreeMap<u64, Running<E>>,
    next_key: u64,
    body_done: bool,
    /// The first failure.
    failure: Option<E>,
    /// No more members: the scope failed, was cancelled or finished.
    closed: bool,
    /// `None` once settled, or once the scope's promise was cancelled.
    settle: Option<Settle<E>>,
}

/// A member still running.
struct Running<E> {
    /// Cancelling it cancels the member's task.
    watcher: Promise<(), E>,
    /// For a task (not the body): what its promise waits on.
    gate: Option<Gate>,
}

/// The promise [`Scope::spawn`] returns follows a gate, opened by the task when
/// it fulfils (its value is then in a slot), cancelled by the scope otherwise.
/// Unlike the value, the gate has no type parameter, so the state can hold the
/// gates of tasks of any value type.
struct Gate {
    /// Kept to cancel the gate. Being a live handle, it also means that cancelling
    /// the task's promise does not cancel the gate: the scope still waits.
    gate: Promise<(), Error>,
    /// Shared with the task, which takes it to open the gate. Dropping the last
    /// one unused would break the gate: the scope cancels it first.
    opener: Arc<Mutex<Option<Settler<(), Error>>>>,
}

impl<E> Running<E> {
    /// The member ended, or is being cancelled (`cancel_task`). Its promise is
    /// cancelled unless the task has fulfilled it already.
    fn end(self, cancel_task: bool) {
        if let Some(Gate { gate, opener }) = self.gate {
            gate.cancel();
            drop(opener);
        }
        if cancel_task {
            self.watcher.cancel();
        }
    }
}

/// Which kind of member a watcher watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Body,
    Task,
}

impl<E> Scope<E>
where
    E: From<Error> + Send + 'static,
{
    /// Spawns `task` as a member of the scope, and returns a promise of its value.
    ///
    /// The task belongs to the scope, and so do its failures: if it fails, its
    /// error goes to the scope (it is the scope's error if it is the first
    /// failure, and every other member is cancelled), and the promise returned
    /// here is cancelled rather than rejected, so that a task nobody awaits is
    /// never reported as an unhandled rejection. The promise is cancelled too when
    /// the scope cancels the task (a sibling failed, or the scope's promise was
    /// cancelled). Cancelling the returned promise only stops waiting for it: the
    /// task goes on, as the scope still waits for it.
    ///
    /// A task spawned after the scope has failed, been cancelled or finished is
    /// dropped without running, and its promise is cancelled. As with
    /// [`spawn`](crate::spawn), the task runs on the loop of the calling thread.
    ///
    /// ```
    /// use thenable::{block_on, scope, Promise, Scope};
    ///
    /// let kept = block_on(scope(|s: Scope| async move { Ok(s) })).unwrap();
    /// let late: Promise<i32> = kept.spawn(async { Ok(1) }); // the scope has finished
    /// assert!(late.is_cancelled());
    /// ```
    pub fn spawn<T, F>(&self, task: F) -> Promise<T, E>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        if self.state.lock().closed {
            return cancelled();
        }
        let (gate, opener) = internal::<(), Error>();
        let opener = Arc::new(Mutex::new(Some(opener)));
        let slot: Arc<Mutex<Option<T>>> = Arc::default();
        let taken = slot.clone();
        let handle = gate.clone().map_err(E::from).then(move |()| {
            let value = taken.lock().take();
            value.ok_or_else(|| E::from(Error::broken()))
        });
        let open = opener.clone();
        let member = spawn(async move {
            let value = task.await?;
            *slot.lock() = Some(value);
            let opener = open.lock().take();
            if let Some(mut opener) = opener {
                opener.settle(Ok(()));
            }
            Ok(())
        });
        self.watch(member, Member::Task, Some(Gate { gate, opener }));
        handle
    }

    /// Adds `member` to the scope, or cancels it at once if the scope is closed.
    fn watch(&self, member: Promise<(), E>, kind: Member, gate: Option<Gate>) {
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            Running {
                watcher: member,
                gate,
            }
            .end(true);
            return;
        }
        let key = state.next_key;
        state.next_key += 1;
        // The watchers keep the scope's state alive while members run (the body,
        // which holds a `Scope`, may finish first).
        let (on_value, on_error) = (self.state.clone(), self.state.clone());
        let watcher = member.then_or_catch(
            move |()| {
                finished(&on_value, key, kind, None);
                Ok(())
            },
            move |error| {
                finished(&on_error, key, kind, Some(error));
                Ok(())
            },
        );
        state.members.insert(key, Running { watcher, gate });
    }
}

/// Member `key` finished, with `failure` if it failed.
fn finished<E: Send + 'static>(
    state: &Mutex<State<E>>,
    key: u64,
    kind: Member,
    failure: Option<E>,
) {
    let (running, first_failure) = {
        let mut guard = state.lock();
        let running = guard.members.remove(&key);
        if kind == Member::Body && failure.is_none() {
            guard.body_done = true;
        }
        (running, failure.filter(|_| !guard.closed))
    };
    if let Some(running) = running {
        running.end(false);
    }
    match first_failure {
        Some(error) => close(state, Some(error)),
        None => settle_if_done(state),
    }
}

/// Closes the scope and cancels every member: because of `failure`, or (`None`)
/// because the scope's own promise was cancelled.
fn close<E: Send + 'static>(state: &Mutex<State<E>>, failure: Option<E>) {
    let (members, dropped_settle) = {
        let mut guard = state.lock();
        guard.closed = true;
        let dropped_settle = match failure {
            Some(error) => {
                guard.failure = Some(error);
                None
            }
            // Cancelled: there is nothing left to settle.
            None => guard.settle.take(),
        };
        let members = std::mem::take(&mut guard.members);
        (members, dropped_settle)
    };
    drop(dropped_settle);
    // Each task's future is dropped by a job its loop runs next, queued before
    // anything the settle below schedules: the destructors run before any handler
    // of the scope's promise.
    for running in members.into_values() {
        running.end(true);
    }
    settle_if_done(state);
}

/// Settles the scope once no member is left and the body has finished, or
/// something failed.
fn settle_if_done<E: Send + 'static>(state: &Mutex<State<E>>) {
    let (settle, failure) = {
        let mut guard = state.lock();
        let ended = guard.body_done || guard.failure.is_some();
        if !guard.members.is_empty() || !ended {
            return;
        }
        guard.closed = true;
        (guard.settle.take(), guard.failure.take())
    };
    if let Some(settle) = settle {
        settle(failure);
    }
}
