//! The event loop: [`EventLoop`], its cross-thread [`LoopHandle`], and the free
//! functions that act on the loop of the current thread.
//!
//! This module owns *when* things run (see `local` for one turn) and *what keeps a
//! loop alive*. It never interprets promise outcomes: promises hand it jobs.
//!
//! # What keeps a loop alive
//!
//! [`EventLoop::run`] returns once nothing is left that could ever add work:
//! no queued microtask, immediate or cross-thread job; no live timer; no unsettled
//! [`Resolver`](crate::Resolver) created on this loop; no [`LoopHandle`]; no wait
//! for I/O (a pending [`accept`](crate::net::TcpListener::accept) or read, a
//! [`stdin_lines`](crate::io::stdin_lines) request, as a listening or reading
//! socket keeps Node.js running); no task whose waker is held by code outside
//! thenable (another runtime's channel, say). As in Node.js, a pending promise by
//! itself does not keep the loop alive.

pub(crate) mod claims;
pub(crate) mod context;
mod local;
pub(crate) mod orphans;

use std::future::{Future, IntoFuture};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use self::local::Stop;
pub(crate) use self::local::{contained, report_panic, Job, Local, SendJob, Shared};
use crate::error::Error;
use crate::promise::core::{Link, Node, Settling};
use crate::promise::{self, Promise, Settled};
use crate::task::{catch_panics, output_future, TaskLink, TaskOutput, TaskWaker, OFFERED};
use crate::timer::{Callback, Fire, TimerId};

/// A single-threaded event loop: microtasks (promise reactions), immediates,
/// timers and tasks, run in the order Node.js runs them.
///
/// Most programs never name one: the free functions ([`block_on`](crate::block_on),
/// [`spawn`](crate::spawn), [`set_timeout`](crate::set_timeout), ...) use the loop
/// running on the current thread, or else the most recently created live
/// `EventLoop` of this thread, or else the thread's default loop.
///
/// Dropping a loop first reports the unhandled rejections that no microtask
/// drain looked at and nobody holds any more (see
/// [`set_unhandled_rejection_hook`]), then abandons its
/// queued work: promises waiting on it settle as broken, handlers queued on it
/// never run, and task futures are dropped. A
/// promise made by [`Promise::pending`] while it was current outlives it:
/// settled later, its handlers run on the loop running where it is settled (with
/// none running, that thread's newest `EventLoop`), or else on whichever loop
/// waits next.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use thenable::EventLoop;
///
/// let event_loop = EventLoop::new();
/// let log = Rc::new(RefCell::new(Vec::new()));
/// let (a, b, c) = (log.clone(), log.clone(), log.clone());
/// // Long enough not to be due yet when the first turn reaches its timers: a due
/// // timer runs before the turn's immediates, as in Node.js.
/// thenable::set_timeout(Duration::from_millis(50), move || a.borrow_mut().push("timeout"));
/// thenable::set_immediate(move || b.borrow_mut().push("immediate"));
/// thenable::queue_microtask(move || c.borrow_mut().push("microtask"));
/// event_loop.run().unwrap();
/// assert_eq!(*log.borrow(), ["microtask", "immediate", "timeout"]);
/// ```
pub struct EventLoop {
    pub(crate) local: Rc<Local>,
}

impl EventLoop {
    /// A new loop; until it is dropped, free functions called on this thread outside
    /// a running loop use it.
    ///
    /// # Panics
    ///
    /// If the operating system refuses the loop its poller (out of file
    /// descriptors, say). The thread's default loop is made the same way, by the
    /// first free function that needs it.
    ///
    /// ```
    /// let event_loop = thenable::EventLoop::new();
    /// event_loop.run().unwrap(); // nothing to do: returns at once
    /// ```
    pub fn new() -> EventLoop {
        let local = Rc::new(Local::new());
        context::register_created(&local);
        EventLoop { local }
    }

    /// Runs until nothing is left that could ever add work: no queued microtask,
    /// immediate or cross-thread job; no live timer; no unsettled
    /// [`Resolver`](crate::Resolver) created on this loop; no [`LoopHandle`]; no
    /// wait for I/O (a pending `accept` or read: a server's `run` returns only
    /// once nothing waits on its sockets any more); no task whose waker is
    /// held by code outside thenable (another runtime's channel, say), or that
    /// waits on another loop's work. As in Node.js, a
    /// pending promise by itself does not keep the loop alive. Fails only when
    /// called while a loop already runs on this thread.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    ///
    /// let event_loop = thenable::EventLoop::new();
    /// let slept = Arc::new(AtomicBool::new(false));
    /// let flag = slept.clone();
    /// // The task's promise is dropped: the task runs on, and keeps `run` going.
    /// thenable::spawn(async move {
    ///     thenable::sleep(Duration::from_millis(5)).await?;
    ///     flag.store(true, Ordering::Relaxed);
    ///     Ok::<_, thenable::Error>(())
    /// });
    /// event_loop.run().unwrap();
    /// assert!(slept.load(Ordering::Relaxed));
    /// ```
    pub fn run(&self) -> Result<(), Error> {
        context::enter(&self.local, || self.local.turn_until(&|| false, true))
            .map(|_| ())
            .map_err(|()| nested("run"))
    }

    /// Runs the loop until `future` completes and returns its output.
    ///
    /// If the loop runs out of everything that could complete the future (no
    /// queued work, timers, live resolvers, I/O waits, foreign wakers or another
    /// loop's task, timer or resolver it waits on), returns a deadlock
    /// error ([`Error::is_deadlock`]) instead of waiting for ever. A foreign waker
    /// dropped without a wake stops counting: a loop that only such wakers keep
    /// waiting looks at them again after 10 ms, then at intervals doubling up to
    /// a second, and tells the deadlock at the first look that finds none held.
    /// A panic in the future becomes a panic error. Calling it while a loop runs
    /// on this thread is an error too: await the future instead.
    ///
    /// ```
    /// let event_loop = thenable::EventLoop::new();
    /// let stuck = event_loop.block_on(std::future::pending::<Result<(), thenable::Error>>());
    /// assert!(stuck.unwrap_err().is_deadlock());
    /// ```
    pub fn block_on<F, T, E>(&self, future: F) -> Result<T, E>
    where
        F: IntoFuture<Output = Result<T, E>>,
        E: From<Error>,
    {
        let local = &self.local;
        let entered = context::enter(local, || {
            let task = Arc::new(TaskWaker::new(local.shared.clone(), usize::MAX, None));
            // Its waits on other loops' work keep the loop alive as a task's do.
            local.set_block_on_task(Some(Arc::downgrade(&task)));
            struct Done<'a>(&'a Local, &'a TaskWaker);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.set_block_on_task(None);
                    // Promises the future left waiting hold its waker: it may go.
                    self.1.end();
                }
            }
            let _done = Done(local, &task);
            let mut future = std::pin::pin!(catch_panics(future.into_future(), E::from));
            // The interval of the last look again at the future's wakers held
            // outside thenable, since it was last polled.
            let mut recheck = None;
            loop {
                if task.scheduled.swap(false, Ordering::AcqRel) {
                    recheck = None;
                    // Made per poll, so that between polls only `task` refers to it
                    // (as the task table does for a spawned task): any other
                    // reference is a waker held outside thenable.
                    let waker = Waker::from(task.clone());
                    let mut cx = Context::from_waker(&waker);
                    let (polled, _) =
                        context::polling_task(task.clone(), || future.as_mut().poll(&mut cx));
                    if let Poll::Ready(output) = polled {
                        return output;
                    }
                }
                let woken = || task.scheduled.load(Ordering::Acquire);
                if local.turn_until(&woken, true) == Stop::Idle && !woken() {
                    // Nothing here can wake the future, unless code outside thenable
                    // holds its waker, or a resolver of a loop nobody drives settles
                    // (its reactions would come here as orphans).
                    // Checked in this order: a resolver settles (its reactions
                    // become orphans in flight) before it stops counting as live,
                    // and an orphan stops being in flight only after it ran (and
                    // woke whoever it completes).
                    let foreign = task.has_foreign_wakers();
                    if !foreign
                        && !orphans::undriven_resolvers_exist()
                        && !orphans::in_flight()
                        && !woken()
                    {
                        return Err(E::from(Error::deadlock(
                            "block_on: the future waits for something that nothing left \
                             in the loop can complete (no queued work, timers, unsettled \
                             resolvers or wakers held elsewhere)",
                        )));
                    }
                    if !woken() {
                        // A waker held outside thenable may be dropped without a
                        // wake, which nothing tells the loop of: it looks again
                        // after a while, as at waits on other loops' work.
                        let timeout =
                            foreign.then(|| *recheck.insert(local::next_recheck(recheck)));
                        local.wait_for_wake_up(timeout);
                    }
                }
            }
        });
        entered.unwrap_or_else(|()| Err(E::from(nested("block_on"))))
    }

    /// A handle other threads can use to send work to this loop.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let event_loop = thenable::EventLoop::new();
    /// let handle = event_loop.handle();
    /// let (sender, posted) = mpsc::channel();
    /// let main_thread = std::thread::current().id();
    /// std::thread::spawn(move || {
    ///     // The job runs on the loop's thread, not on this one.
    ///     assert!(handle.post(move || sender.send(std::thread::current().id()).unwrap()));
    ///     // Dropping the last handle lets `run` return.
    /// });
    /// event_loop.run().unwrap();
    /// assert_eq!(posted.try_recv().unwrap(), main_thread);
    /// ```
    pub fn handle(&self) -> LoopHandle {
        LoopHandle::new(self.local.shared.clone())
    }
}

impl Default for EventLoop {
    fn default() -> Self {
        EventLoop::new()
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("id", &self.local.shared.id)
            .field("tasks", &self.local.live_task_count())
            .finish()
    }
}

fn nested(what: &str) -> Error {
    Error::deadlock(format!(
        "{what} called while an event loop is running on this thread; await instead"
    ))
}

/// A `Send + Sync + Clone` handle to an [`EventLoop`], to post work to it from any
/// thread. A live handle keeps its loop alive.
///
/// ```
/// use thenable::EventLoop;
///
/// let event_loop = EventLoop::new();
/// let handle = event_loop.handle();
/// let worker = std::thread::spawn(move || {
///     let p = handle.spawn(async { Ok::<_, thenable::Error>(6 * 7) });
///     drop(handle);
///     p
/// });
/// event_loop.run().unwrap();
/// let p = worker.join().unwrap();
/// assert_eq!(event_loop.block_on(p).unwrap(), 42);
/// ```
pub struct LoopHandle {
    shared: Arc<Shared>,
}

impl LoopHandle {
    fn new(shared: Arc<Shared>) -> LoopHandle {
        shared.acquire();
        LoopHandle { shared }
    }

    /// Runs `f` on the loop (as a microtask). Returns `false`, dropping `f`, if the
    /// loop is already gone; `true` once `f` is queued (a loop dropped before it
    /// runs `f` drops it, as it drops all its queued work).
    ///
    /// ```
    /// let event_loop = thenable::EventLoop::new();
    /// let handle = event_loop.handle();
    /// assert!(handle.post(|| println!("hello from the loop")));
    /// drop(handle);
    /// event_loop.run().unwrap();
    /// ```
    pub fn post(&self, f: impl FnOnce() + Send + 'static) -> bool {
        // Refused under the queue's lock if the loop closed since it was looked at.
        !self.shared.is_closed() && self.shared.inject(SendJob::Call(Box::new(f)))
    }

    /// Spawns `future` as a task on the loop; its promise settles with the output
    /// (as broken if the loop is dropped first).
    ///
    /// ```
    /// let event_loop = thenable::EventLoop::new();
    /// let p = event_loop.handle().spawn(async { Ok::<_, thenable::Error>("done") });
    /// assert_eq!(event_loop.block_on(p).unwrap(), "done");
    /// ```
    ///
    /// The promise may be awaited on another thread's loop, while the loop that
    /// runs the task is driven by its own thread:
    ///
    /// ```
    /// use std::time::Duration;
    /// use thenable::{EventLoop, LoopHandle};
    ///
    /// let (send, receive) = std::sync::mpsc::channel();
    /// let worker = std::thread::spawn(move || {
    ///     let event_loop = EventLoop::new();
    ///     send.send(event_loop.handle()).unwrap();
    ///     event_loop.run().unwrap(); // until the last handle is dropped
    /// });
    /// let handle: LoopHandle = receive.recv().unwrap();
    /// let task = handle.spawn(async {
    ///     thenable::sleep(Duration::from_millis(1)).await?;
    ///     Ok::<_, thenable::Error>(7)
    /// });
    /// assert_eq!(thenable::block_on(task.then(|v| Ok(v * 6))).unwrap(), 42);
    /// drop(handle);
    /// worker.join().unwrap();
    /// ```
    pub fn spawn<F, T, E>(&self, future: F) -> Promise<T, E>
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (promise, settler) = task_promise::<T, E>(&self.shared);
        let graph = settler.graph();
        self.shared.inject(SendJob::Call(Box::new(move || {
            context::with_current(|local| local.spawn(Some(graph), start_task(future, settler)));
        })));
        promise
    }

    /// True once the loop has been dropped.
    ///
    /// ```
    /// let event_loop = thenable::EventLoop::new();
    /// let handle = event_loop.handle();
    /// drop(event_loop);
    /// assert!(handle.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

impl Clone for LoopHandle {
    fn clone(&self) -> Self {
        LoopHandle::new(self.shared.clone())
    }
}

impl Drop for LoopHandle {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHandle")
            .field("id", &self.shared.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// What a task starts from, once it exists: its promise's link names it, and its
/// future is the user's future settling that promise.
fn start_task<F, T, E>(
    future: F,
    settler: promise::Settler<T, E, TaskLink>,
) -> impl FnOnce(&Arc<TaskWaker>) -> std::pin::Pin<Box<dyn Future<Output = ()>>>
where
    F: Future + 'static,
    F::Output: TaskOutput<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    move |task| {
        TaskLink::attach(settler.node(), task);
        Box::pin(output_future(future, settler))
    }
}

/// A task's promise and its settler; cancelling the promise drops the task.
fn task_promise<T, E>(home: &Shared) -> (Promise<T, E>, promise::Settler<T, E, TaskLink>)
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    promise::internal_with::<T, E, _>(TaskLink::new(home.id))
}

/// Runs `future` to completion on this thread's loop and returns its output; see
/// [`EventLoop::block_on`]. Accepts a [`Promise`] or any future with
/// `Output = Result<T, E>`.
///
/// ```
/// let answer = thenable::block_on(async {
///     let doubled = thenable::Promise::<i32>::resolved(21).map(|v| v * 2).await?;
///     Ok::<_, thenable::Error>(doubled)
/// });
/// assert_eq!(answer.unwrap(), 42);
/// ```
pub fn block_on<F, T, E>(future: F) -> Result<T, E>
where
    F: IntoFuture<Output = Result<T, E>>,
    E: From<Error>,
{
    if context::is_running() {
        return Err(E::from(nested("block_on")));
    }
    let local = context::ambient();
    EventLoop { local }.block_on(future)
}

/// Spawns a `Send` future as a task on this thread's loop; the returned promise
/// settles with its output (or a panic error, or broken if the loop is dropped).
/// Tasks start on the microtask queue, so `spawn` itself never polls.
///
/// Spawned on a thread that runs no loop and has no [`EventLoop`] of its own,
/// the task goes to the thread's default loop, which runs only while something
/// there waits on a promise. Until that loop starts it, a loop of another
/// thread (or another executor) that awaits the promise takes the task over
/// and runs it; if the thread ends first, the promise breaks.
///
/// ```
/// let task = std::thread::spawn(|| thenable::spawn(async { Ok::<_, thenable::Error>(7) }))
///     .join()
///     .unwrap();
/// // Its thread ended without running it: nobody will.
/// assert!(thenable::block_on(task).unwrap_err().is_broken());
///
/// let (sender, receiver) = std::sync::mpsc::channel();
/// let (_keep, parked) = std::sync::mpsc::channel::<()>();
/// let maker = std::thread::spawn(move || {
///     sender.send(thenable::spawn(async { Ok::<_, thenable::Error>(7) })).unwrap();
///     let _ = parked.recv(); // never runs a loop
/// });
/// // Run here, by the loop that awaits it.
/// assert_eq!(thenable::block_on(receiver.recv().unwrap()).unwrap(), 7);
/// # drop(_keep);
/// # maker.join().unwrap();
/// ```
///
/// ```
/// use thenable::{spawn, Promise};
///
/// fn countdown(n: u32) -> Promise<u32> {
///     spawn(async move { if n == 0 { Ok(0) } else { Ok(countdown(n - 1).await? + 1) } })
/// }
/// assert_eq!(thenable::block_on(countdown(10_000)).unwrap(), 10_000);
/// ```
pub fn spawn<F, T, E>(future: F) -> Promise<T, E>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    spawn_send(future)
}

/// Spawns a future that need not be `Send` (it stays on this thread).
///
/// ```
/// use std::rc::Rc;
///
/// let shared = Rc::new(5); // not Send
/// let p = thenable::spawn_local(async move { Ok::<_, thenable::Error>(*shared + 1) });
/// assert_eq!(thenable::block_on(p).unwrap(), 6);
/// ```
pub fn spawn_local<F, T, E>(future: F) -> Promise<T, E>
where
    F: Future<Output = Result<T, E>> + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    spawn_here(future)
}

/// [`spawn`] for the library's own tasks that pass on how what they waited on
/// ended: a [`Settled::Quiet`] or [`Settled::Cancelled`] output rejects the
/// task's promise quietly (cancellation travelling on, never reported as
/// unhandled), where a task's `Err` is a rejection of its own.
pub(crate) fn spawn_passing_on<F, T, E>(future: F) -> Promise<T, E>
where
    F: Future<Output = Settled<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    spawn_send(future)
}

/// A task of this thread's loop, as [`spawn_here`] makes it; but on a thread
/// that runs no loop, where it would go to the thread's default loop, its
/// start is offered to other loops too (see `claims`): the default loop may
/// never run, and the promise may be awaited on another thread. The default
/// loop starts it at its place in the queue, unless a loop or another
/// executor waiting on it took it first. The library's own tasks whose output
/// is not a plain `Result` (see `task::TaskOutput`) are spawned with it too.
pub(crate) fn spawn_send<F, T, E>(future: F) -> Promise<T, E>
where
    F: Future + Send + 'static,
    F::Output: TaskOutput<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    context::with_current_or_undriven_default(|local, undriven_default| {
        if undriven_default {
            return spawn_offered(local, future);
        }
        spawn_on(local, future)
    })
}

/// A task for `default`, this thread's default loop, which runs no loop now:
/// its start is queued there and offered to other loops (see `claims`).
fn spawn_offered<F, T, E>(default: &Rc<Local>, future: F) -> Promise<T, E>
where
    F: Future + Send + 'static,
    F::Output: TaskOutput<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let (promise, settler) =
        promise::internal_with::<T, E, _>(TaskLink::offered(default.shared.id));
    let key = claims::key_of(&**settler.node());
    let graph = settler.graph();
    let ticket = claims::offer(
        key,
        Box::new(move |taker| {
            let make = start_task(future, settler);
            context::with_current(|local| match taker {
                // From the queue, where `spawn` would have queued its poll.
                claims::Taker::Home => local.spawn_and_poll(Some(graph), make),
                claims::Taker::Other => local.spawn(Some(graph), make),
            });
        }),
    );
    /// The default loop's turn to start the task: dropped unrun (the loop is
    /// dropped), it withdraws the offer, and the task's promise breaks. It
    /// holds the key and the offer's ticket, not the node: taken over and run
    /// elsewhere, the task's node may be freed before this runs, and a node
    /// made later at the same address have an offer of its own.
    struct StartAtHome {
        key: usize,
        ticket: u64,
    }
    impl StartAtHome {
        fn run(self) {
            let (key, ticket) = (self.key, self.ticket);
            std::mem::forget(self);
            if let Some(start) = claims::take_ticket(key, ticket) {
                start(claims::Taker::Home);
            }
        }
    }
    impl Drop for StartAtHome {
        fn drop(&mut self) {
            drop(claims::take_ticket(self.key, self.ticket));
        }
    }
    let start = StartAtHome { key, ticket };
    default.push(Job::Call(Box::new(move || start.run())));
    promise
}

/// A task of this thread's loop, settling its promise with `future`'s output.
fn spawn_here<F, T, E>(future: F) -> Promise<T, E>
where
    F: Future + 'static,
    F::Output: TaskOutput<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    context::with_current(|local| spawn_on(local, future))
}

/// A task of `local`, settling its promise with `future`'s output.
#[inline]
fn spawn_on<F, T, E>(local: &Local, future: F) -> Promise<T, E>
where
    F: Future + 'static,
    F::Output: TaskOutput<T, E>,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let (promise, settler) = task_promise::<T, E>(&local.shared);
    let graph = settler.graph();
    local.spawn(Some(graph), start_task(future, settler));
    promise
}

/// Queues `f` on the microtask queue: it runs after the current callback, before
/// any timer, immediate or I/O callback (JavaScript's `queueMicrotask`).
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let event_loop = thenable::EventLoop::new();
/// let ran = Rc::new(Cell::new(false));
/// let flag = ran.clone();
/// thenable::queue_microtask(move || flag.set(true));
/// assert!(!ran.get()); // queued, not run inline
/// event_loop.run().unwrap();
/// assert!(ran.get());
/// ```
pub fn queue_microtask(f: impl FnOnce() + 'static) {
    context::with_current(|local| local.push(Job::Call(Box::new(f))));
}

/// Queues `f` for the immediates phase of the loop (Node.js's `setImmediate`):
/// after microtasks, timers and I/O of the current turn.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let event_loop = thenable::EventLoop::new();
/// let ran = Rc::new(Cell::new(false));
/// let flag = ran.clone();
/// thenable::set_immediate(move || flag.set(true));
/// event_loop.run().unwrap();
/// assert!(ran.get());
/// ```
pub fn set_immediate(f: impl FnOnce() + 'static) {
    context::with_current(|local| local.push_immediate(Box::new(f)));
}

/// Runs `f` once, `delay` from now. Timers fire in deadline order; equal deadlines
/// in the order they were set. A pending timer keeps the loop alive. Delays longer
/// than a century (up to `Duration::MAX`) are clamped to a century; a zero delay is
/// not raised to 1 ms as in Node.js, so it fires before a 1 ms timer set earlier.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use std::time::Duration;
///
/// let event_loop = thenable::EventLoop::new();
/// let fired = Rc::new(RefCell::new(Vec::new()));
/// for name in ["first", "second"] {
///     let fired = fired.clone();
///     thenable::set_timeout(Duration::from_millis(2), move || fired.borrow_mut().push(name));
/// }
/// event_loop.run().unwrap(); // returns after both timers fired
/// assert_eq!(*fired.borrow(), ["first", "second"]);
/// ```
pub fn set_timeout(delay: Duration, f: impl FnOnce() + 'static) -> TimerId {
    let now = Instant::now();
    context::with_current(|local| {
        local
            .timers
            .borrow_mut()
            .insert(now, delay, Callback::Once(crate::timer::OnceFn::new(f)))
    })
}

/// Runs `f` every `period` until [`clear_timer`] is called with the returned id
/// (which `f` itself may do). Each run is due a period after the previous one
/// started, as in Node.js: after a run that took longer than the period, the next
/// one comes on the next turn of the loop, not a period after the slow run ended.
/// A zero period is not raised to 1 ms as in Node.js: `f` then runs on every turn
/// of the loop, which never sleeps while the interval lives (the stream
/// [`interval`](crate::interval) takes a zero period as 1 ms). Periods longer than
/// a century are clamped to a century, as delays are.
///
/// ```
/// use std::cell::{Cell, RefCell};
/// use std::rc::Rc;
/// use std::time::Duration;
///
/// let event_loop = thenable::EventLoop::new();
/// let ticks = Rc::new(Cell::new(0));
/// let id = Rc::new(RefCell::new(None));
/// let (count, me) = (ticks.clone(), id.clone());
/// *id.borrow_mut() = Some(thenable::set_interval(Duration::from_millis(1), move || {
///     count.set(count.get() + 1);
///     if count.get() == 3 {
///         thenable::clear_timer(me.borrow().unwrap());
///     }
/// }));
/// event_loop.run().unwrap();
/// assert_eq!(ticks.get(), 3);
/// ```
pub fn set_interval(period: Duration, f: impl FnMut() + 'static) -> TimerId {
    let now = Instant::now();
    let f: crate::timer::RepeatFn = Rc::new(std::cell::RefCell::new(f));
    context::with_current(|local| {
        local.timers.borrow_mut().insert(
            now,
            period,
            Callback::Repeat(Box::new(crate::timer::Interval { f, period })),
        )
    })
}

/// Cancels a timer of this thread's loop; `false` if it already fired, was already
/// cleared, or belongs to another loop.
///
/// ```
/// use std::time::Duration;
///
/// let event_loop = thenable::EventLoop::new();
/// let id = thenable::set_timeout(Duration::from_secs(3600), || unreachable!());
/// assert!(thenable::clear_timer(id));
/// event_loop.run().unwrap(); // returns at once: no live timer left
/// ```
pub fn clear_timer(id: TimerId) -> bool {
    let cleared = context::with_current(|local| local.timers.borrow_mut().clear(id));
    // The callback (and whatever it holds) is dropped here, outside the borrow.
    cleared.is_some()
}

/// Clears timer `id` wherever this runs: at once if its loop belongs to this
/// thread, otherwise by asking that loop (a promise may be cancelled, and its
/// handlers may run, on another thread). No effect if it fired or was cleared,
/// or if its loop is gone (it took its timers with it).
pub(crate) fn clear_timer_on_its_loop(id: TimerId) {
    if let Some(local) = context::local_loop(id.loop_id) {
        let cleared = local.timers.borrow_mut().clear(id);
        // The callback (and whatever it holds: a sleep's node) is dropped outside
        // the borrow.
        drop(cleared);
    } else if let Some(home) = orphans::find(id.loop_id) {
        home.inject(SendJob::Call(Box::new(move || {
            clear_timer(id);
        })));
    }
}

/// Sets what happens to rejections nobody handled by the end of the microtask
/// drain in which they happened, on this thread (Node.js's `unhandledRejection`).
/// One that no drain followed (made while no loop ran) is reported when its loop
/// is dropped, if still unhandled then: an [`EventLoop`] dropped, or the thread's
/// default loop when the thread ends. If a [`Promise`] handle still holds it
/// then, it may yet be handled: it is left to the loop this thread uses next
/// (at the thread's end, to whoever holds it, and not reported). The default
/// writes one line to stderr.
/// Cancellations are never reported, nor is cancellation travelling on: a
/// combinator rejected because an input was cancelled elsewhere, and that
/// rejection passed on untouched. A hook that panics is reported on stderr, as a
/// handler's panic is, and the loop goes on.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use thenable::{Error, EventLoop, Promise};
///
/// let event_loop = EventLoop::new();
/// let seen = Rc::new(RefCell::new(Vec::new()));
/// let log = seen.clone();
/// thenable::set_unhandled_rejection_hook(move |e: &Error| log.borrow_mut().push(e.to_string()));
/// let _ignored = Promise::<i32>::resolved(1).then(|_| Err::<i32, _>(Error::msg("lost")));
/// let handled = Promise::<i32>::rejected(Error::msg("seen")).catch(|_| Ok(0));
/// event_loop.run().unwrap();
/// assert_eq!(*seen.borrow(), ["lost"]);
/// # drop(handled);
/// thenable::reset_unhandled_rejection_hook();
/// ```
///
/// No drain runs after these rejections: the loop's drop reports them.
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use thenable::{Error, EventLoop, Promise};
///
/// let event_loop = EventLoop::new();
/// let seen = Rc::new(RefCell::new(Vec::new()));
/// let log = seen.clone();
/// thenable::set_unhandled_rejection_hook(move |e: &Error| log.borrow_mut().push(e.to_string()));
/// drop(Promise::<i32>::rejected(Error::msg("lost")));
/// let handled = Promise::<i32>::rejected(Error::msg("seen")).catch(|_| Ok(0));
/// assert!(seen.borrow().is_empty());
/// drop(event_loop);
/// assert_eq!(*seen.borrow(), ["lost"]);
/// # drop(handled);
/// thenable::reset_unhandled_rejection_hook();
/// ```
pub fn set_unhandled_rejection_hook(hook: impl Fn(&Error) + 'static) {
    context::set_unhandled_hook(Some(Rc::new(hook)));
}

/// Restores the default unhandled-rejection report (one line on stderr).
///
/// ```
/// thenable::set_unhandled_rejection_hook(|_| {});
/// thenable::reset_unhandled_rejection_hook();
/// ```
pub fn reset_unhandled_rejection_hook() {
    context::set_unhandled_hook(None);
}

/// A promise fulfilled `duration` from now (a timer of this thread's loop).
/// Cancelling it removes the timer, so it no longer keeps the loop alive.
///
/// Made on a thread that runs no loop and has no [`EventLoop`] of its own, the
/// timer is the thread's default loop's, which runs only while something there
/// waits on a promise: awaited on another thread meanwhile, the sleep is taken
/// over and fired from a thread of the library's at the same deadline.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// thenable::block_on(thenable::sleep(Duration::from_millis(10))).unwrap();
/// assert!(start.elapsed() >= Duration::from_millis(10));
/// ```
pub fn sleep(duration: Duration) -> Promise<()> {
    context::with_current_or_undriven_default(|local, undriven_default| {
        if undriven_default {
            return sleep_offered(local, duration);
        }
        sleep_on(local, local.shared.id, duration, false).0
    })
}

/// A sleep's promise node (its timer's callback holds one reference).
type SleepNode = Arc<Node<(), Error, SleepLink>>;

/// A sleep on `local`'s timers, whose link names the loop `loop_id` (with
/// [`OFFERED`] for [`sleep_offered`]), and its node if `keep_node` (a count
/// taken only then).
#[inline]
fn sleep_on(
    local: &Local,
    loop_id: u64,
    duration: Duration,
    keep_node: bool,
) -> (Promise<()>, Option<SleepNode>) {
    let mut made = None;
    let now = Instant::now();
    local.timers.borrow_mut().insert_with(now, duration, |id| {
        // The node knows its timer from the start, and the timer holds it.
        let (sleeping, node) = promise::with_link(SleepLink {
            loop_id,
            timer: AtomicU64::new(id.slot_bits()),
        });
        made = Some((sleeping, keep_node.then(|| node.clone())));
        Callback::Fire(node)
    });
    made.expect("made with the timer")
}

/// A sleep for `default`, this thread's default loop, which runs no loop now:
/// another loop that waits on the sleep takes it over (see `claims`), since the
/// default loop may never run.
#[cold]
fn sleep_offered(default: &Local, duration: Duration) -> Promise<()> {
    let deadline = Instant::now() + duration.min(crate::timer::LONGEST_DELAY);
    let (sleeping, node) = sleep_on(default, default.shared.id | OFFERED, duration, true);
    let node = node.expect("kept");
    let key = claims::key_of(&*node);
    // The node withdraws its offer itself, holding the node: no ticket needed.
    let _ticket = claims::offer(
        key,
        Box::new(move |taker| {
            if taker == claims::Taker::Other {
                fire_elsewhere(node, deadline);
            }
        }),
    );
    sleeping
}

/// No timer: the sleep was cancelled. (Neither this nor [`FIRED_ELSEWHERE`] is
/// the [`TimerId::slot_bits`] of a timer: their key, `u32::MAX`, is no slot's.)
const NO_TIMER: u64 = u64::MAX;
/// The sleep was taken over from a default loop nobody drives (see [`sleep`]):
/// the library's timer thread fires it, and its timer there is being cleared.
const FIRED_ELSEWHERE: u64 = u64::MAX - 1;
/// What a wait on a sleep fired elsewhere waits on: work of no loop of this
/// thread's (loop ids are counted from 1, and never reach it).
const TIMER_THREAD: u64 = u64::MAX;

/// Takes over an offered sleep (see [`sleep`]): its timer on the default loop it
/// was made for is cleared (through that loop's injector, as a cancellation
/// from another thread is), and the library's timer thread settles it at
/// `deadline`. Nothing if it was cancelled first.
fn fire_elsewhere(node: SleepNode, deadline: Instant) {
    let bits = node.link.timer.load(Ordering::Acquire);
    if bits == NO_TIMER || bits == FIRED_ELSEWHERE {
        return;
    }
    let taken = node.link.timer.compare_exchange(
        bits,
        FIRED_ELSEWHERE,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    if taken.is_err() {
        return;
    }
    clear_timer_on_its_loop(TimerId::from_slot_bits(node.link.home(), bits));

    /// Settles the sleep when the timer thread wakes it.
    struct FireAtDeadline(parking_lot::Mutex<Option<SleepNode>>);
    impl std::task::Wake for FireAtDeadline {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let node = self.0.lock().take();
            if let Some(node) = node {
                // Settling wakes foreign wakers, whose panic must not end the
                // timer thread.
                contained("a sleep's wake-up", || promise::settle_node(node, Ok(())));
            }
        }
    }
    let fire = FireAtDeadline(parking_lot::Mutex::new(Some(node)));
    crate::timer::wake_at(deadline, Waker::from(Arc::new(fire)));
}

/// The link of a [`sleep`]'s promise: the timer that settles it, which a
/// cancellation clears (so that it no longer keeps the loop alive).
struct SleepLink {
    /// The loop whose timer it is: an id, not a reference, since a sleep is made
    /// far more often than cancelled (cancelling looks the loop up). With
    /// [`OFFERED`] set, a default loop nobody drove when the sleep was made: the
    /// sleep is offered to other loops (see [`sleep`]).
    loop_id: u64,
    /// [`TimerId::slot_bits`], [`NO_TIMER`] once cleared, or
    /// [`FIRED_ELSEWHERE`].
    timer: AtomicU64,
}

impl SleepLink {
    /// The loop the sleep's timer was set on.
    fn home(&self) -> u64 {
        self.loop_id & !OFFERED
    }

    /// Withdraws the offer of a sleep offered to other loops: it fired, was
    /// cancelled, or its loop is gone.
    #[inline]
    fn withdraw(node: &Node<(), Error, Self>) {
        if node.link.loop_id & OFFERED != 0 {
            claims::withdraw(claims::key_of(node));
        }
    }
}

impl Link<(), Error> for SleepLink {
    /// Only its timer settles it: adopting a sleep never needs a cycle search.
    const MAY_WAIT: bool = false;

    fn on_cancel(node: &Arc<Node<(), Error, Self>>) {
        let bits = node.link.timer.swap(NO_TIMER, Ordering::AcqRel);
        if bits == NO_TIMER {
            return;
        }
        SleepLink::withdraw(node);
        // Fired elsewhere, its timer there is being cleared already; the timer
        // thread's wake-up finds it cancelled.
        if bits != FIRED_ELSEWHERE {
            clear_timer_on_its_loop(TimerId::from_slot_bits(node.link.home(), bits));
        }
    }

    fn settling(node: &Node<(), Error, Self>) -> Settling {
        match node.link.timer.load(Ordering::Acquire) {
            NO_TIMER => Settling::Unknown,
            FIRED_ELSEWHERE => Settling::Loop(TIMER_THREAD),
            _ if node.link.loop_id & OFFERED != 0 => Settling::Offered {
                home: node.link.home(),
                key: claims::key_of(node),
                task: false,
            },
            _ => Settling::Loop(node.link.loop_id),
        }
    }
}

impl Fire for Node<(), Error, SleepLink> {
    fn fire(self: Arc<Self>) {
        SleepLink::withdraw(&self);
        promise::settle_node(self, Ok(()));
    }

    fn abandon(self: Arc<Self>) {
        SleepLink::withdraw(&self);
        // Taken over: the timer thread settles it.
        if self.link.timer.load(Ordering::Acquire) == FIRED_ELSEWHERE {
            return;
        }
        promise::settle_node(self, Err(Error::broken()));
    }
}
