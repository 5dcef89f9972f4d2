//! The loop's blocking point: one `polling::Poller` per loop, and the I/O sources
//! registered with it.
//!
//! The loop sleeps in [`Reactor::wait`] when it has nothing to run, for as long as
//! its next timer allows; another thread wakes it with [`Reactor::notify`]. A source
//! (a socket, a pipe) is registered once, with no interest; interest is armed
//! when a task waits for readiness. Readiness wakes the waiting tasks, which then
//! retry their non-blocking operation; each wait is woken once, and waits again on
//! demand. A wait that holds a [`Ticket`] is withdrawn when its future is dropped,
//! so a source nobody waits on any more is disarmed and stops keeping the loop
//! alive. The reactor never runs callbacks and never decides whether the loop is
//! alive.
//!
//! The kernel's interest is level-triggered and outlives the wait that armed it:
//! a task that reads, gets `WouldBlock` and waits again (every request/response
//! protocol) finds its interest still armed, and costs no system call. Readiness
//! that arrives when nobody waits disarms that direction, so an unread socket
//! wakes the poller once, not in a loop; "no interest" is registered oneshot, so
//! that a hang-up (which the kernel reports whatever the interest) does not
//! either. Where the poller has no level mode, interest is oneshot and re-armed
//! by each wait.
//!
//! On Linux the wait itself is one `epoll_wait` on the poller's descriptor,
//! since `Poller::wait` makes four more system calls each time; `Poller::wait`
//! runs only when that reports something that is not a source (its notifier).
//!
//! Only the thread that drives the loop waits here, as a rule. A wait left by a
//! poll from another executor on a thread where no loop runs (a tokio task
//! reading a thenable socket, a `futures::executor::block_on` of a read's
//! promise) would then wait for a turn that may never come: for those, a
//! [`Watcher`] thread, started by the first of them, waits for the poller's
//! descriptor to become readable while nobody drives the loop, and takes the
//! readiness itself, waking whoever waits.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use polling::{Event, Events, PollMode, Poller};
use smallvec::SmallVec;

use crate::promise::core::Lock;

pub(crate) struct Reactor {
    poller: Poller,
    events: Mutex<Events>,
    sources: Mutex<Sources>,
    /// Sources with a task waiting on them: each keeps the loop alive.
    armed: AtomicUsize,
    /// How interest is registered: `Level`, or `Oneshot` where the OS has no level
    /// mode.
    mode: PollMode,
    /// A thread drives the loop (`run`, `block_on`, or a poll from another
    /// executor that turns it): it alone waits here then, the watcher stands by.
    driven: AtomicBool,
    /// Started by the first wait a poll from another executor leaves here
    /// ([`watch_foreign_waits`](Self::watch_foreign_waits)).
    #[cfg(unix)]
    watcher: std::sync::OnceLock<Watcher>,
}

#[derive(Default)]
struct Sources {
    slots: Vec<Option<Arc<Source>>>,
    free: Vec<usize>,
}

/// Merges the events of one source into one. `Poller::wait`, run after the
/// kernel's wait to clear a notification, reports again what that reported
/// (interest is level-triggered): a second event for a source would find gone
/// the waiters the first woke, and disarm the interest they are about to ask
/// for again.
fn one_event_per_source(events: &mut Vec<Event>) {
    events.sort_unstable_by_key(|event| event.key);
    events.dedup_by(|later, kept| {
        let same = later.key == kept.key;
        if same {
            kept.readable |= later.readable;
            kept.writable |= later.writable;
        }
        same
    });
}

/// `timeout` as `epoll_wait` takes it, rounded up to the millisecond by rustix
/// (never early), and no longer than the `int` of milliseconds of `epoll_pwait`
/// holds: past that, rustix would call `epoll_pwait2`, which kernels before 5.11
/// (and container seccomp policies of their time) refuse. The loop waits again
/// after 24.8 days.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn kernel_timeout(timeout: Duration) -> rustix::event::Timespec {
    const LONGEST: Duration = Duration::from_millis(i32::MAX as u64);
    let timeout = timeout.min(LONGEST);
    rustix::event::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    }
}

/// The wakers a wait takes from the ready sources, woken once every lock is
/// released: almost always one waiter per direction and a few ready sources.
type Wakers = SmallVec<[Waker; 16]>;

/// Whether [`Reactor::wait_in_kernel`] reported every event it was given.
#[derive(PartialEq)]
enum Reported {
    All,
    /// Some event was not a source's: `Poller::wait` must look.
    NotAll,
}

/// One registered I/O source.
pub(crate) struct Source {
    pub(crate) key: usize,
    /// The registered descriptor, open while `waiters.registered` is true (see
    /// [`Reactor::fire`]).
    #[cfg(unix)]
    fd: std::os::fd::RawFd,
    /// A spin lock, not `parking_lot`'s: held only for bookkeeping and a
    /// non-blocking `epoll_ctl`, nearly always by the loop's own thread, and
    /// its unlock is a plain store where `parking_lot`'s is a locked
    /// compare-exchange (two waits and a wake per echo message).
    waiters: Lock<Waiters>,
}

#[derive(Default)]
struct Waiters {
    /// Each with the ticket that registered it ([`ANONYMOUS`] for plain `poll_*`
    /// calls, which cannot withdraw).
    readers: Vec<(u64, Waker)>,
    writers: Vec<(u64, Waker)>,
    /// Readiness seen since the last `poll_*` took it (so a wake that raced with
    /// re-arming is not lost).
    readable: bool,
    writable: bool,
    /// The last ticket number handed out for this source.
    last_ticket: u64,
    /// The interest the poller holds for this source (read, write). Changed only
    /// under this lock, together with the system call, so it never disagrees with
    /// the kernel.
    kernel: (bool, bool),
    /// Cleared by [`Reactor::deregister`], before the owner may close the
    /// descriptor.
    registered: bool,
}

impl Waiters {
    fn is_waiting(&self) -> bool {
        !self.readers.is_empty() || !self.writers.is_empty()
    }

    fn wanted(&self) -> (bool, bool) {
        (!self.readers.is_empty(), !self.writers.is_empty())
    }
}

/// The ticket of waits registered without one: they stay until readiness (or
/// deregistration) wakes them.
const ANONYMOUS: u64 = 0;

/// Which readiness a task waits for.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// One waiting future's registration with a source, so that the future can update
/// its waker when polled again and withdraw it when dropped
/// ([`Reactor::withdraw`]). Holds nothing while the future is not registered.
pub(crate) struct Ticket {
    direction: Direction,
    registered: Option<u64>,
}

impl Ticket {
    pub(crate) fn new(direction: Direction) -> Ticket {
        Ticket {
            direction,
            registered: None,
        }
    }

    pub(crate) fn direction(&self) -> Direction {
        self.direction
    }
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Self> {
        let poller = Poller::new()?;
        let mode = if poller.supports_level() {
            PollMode::Level
        } else {
            PollMode::Oneshot
        };
        Ok(Reactor {
            poller,
            events: Mutex::new(Events::new()),
            sources: Mutex::new(Sources::default()),
            armed: AtomicUsize::new(0),
            mode,
            driven: AtomicBool::new(false),
            #[cfg(unix)]
            watcher: std::sync::OnceLock::new(),
        })
    }

    /// True while a thread drives the loop.
    pub(crate) fn is_driven(&self) -> bool {
        self.driven.load(Ordering::Acquire)
    }

    /// A thread starts driving the loop: from here on it alone waits here. A
    /// turn the watcher has begun is let finish first, so that it cannot clear a
    /// notification meant for this thread once this thread has looked at its
    /// queues. Costs a load and a branch while no watcher exists.
    pub(crate) fn begin_driving(&self) {
        // `SeqCst`, with the watcher's own flags: a Dekker pair (see `Watch`).
        self.driven.store(true, Ordering::SeqCst);
        #[cfg(unix)]
        if let Some(watcher) = self.watcher.get() {
            watcher.watch.wait_until_not_turning();
        }
    }

    /// The thread that drove the loop stops: a watcher that stood by for it
    /// watches again.
    pub(crate) fn end_driving(&self) {
        self.driven.store(false, Ordering::SeqCst);
        #[cfg(unix)]
        if let Some(watcher) = self.watcher.get() {
            watcher.watch.driving_ended();
        }
    }

    /// Sets the poller's interest in `source` to `interest` (read, write), and
    /// records it. The caller holds `waiters`, the source's lock.
    ///
    /// No interest is registered oneshot: the kernel reports a hang-up or an
    /// error whatever the interest, and level-triggered it would report it at
    /// every poll; oneshot, at most once.
    #[cfg(unix)]
    fn set_interest(
        &self,
        key: usize,
        waiters: &mut Waiters,
        fd: std::os::fd::BorrowedFd<'_>,
        interest: (bool, bool),
    ) -> io::Result<()> {
        let event = Event::new(key, interest.0, interest.1);
        let mode = if interest == (false, false) {
            PollMode::Oneshot
        } else {
            self.mode
        };
        self.poller.modify_with_mode(fd, event, mode)?;
        waiters.kernel = interest;
        Ok(())
    }

    /// Wakes the loop thread if it is blocked in [`wait`](Self::wait); if it is not,
    /// its next `wait` returns at once.
    pub(crate) fn notify(&self) {
        // Failing to notify would leave the loop asleep with work queued; the
        // poller's notify only fails if the OS refuses an eventfd write, which the
        // loop cannot recover from either.
        self.poller
            .notify()
            .expect("thenable: failed to wake the event loop");
    }

    /// True while some task waits for readiness of a source of this loop.
    pub(crate) fn has_armed_sources(&self) -> bool {
        self.armed.load(Ordering::Acquire) > 0
    }

    /// Blocks until notified, an armed source is ready, or `timeout` passes
    /// (`None`: no limit); then wakes the tasks waiting on ready sources. It may
    /// return sooner (a signal, or a timeout of more than 24 days on Linux): the
    /// caller works out its timeout again and waits again.
    pub(crate) fn wait(&self, timeout: Option<Duration>) {
        let mut wake = Wakers::new();
        self.wait_and_take(timeout, &mut wake);
        // Outside every lock of ours: a waker of another runtime may run anything.
        for waker in wake {
            waker.wake();
        }
    }

    /// [`wait`](Self::wait), the wakers of the ready sources' waiters taken into
    /// `wake` instead of woken.
    #[inline]
    fn wait_and_take(&self, timeout: Option<Duration>, wake: &mut Wakers) {
        let mut ready: Vec<Event> = Vec::new();
        if self.wait_in_kernel(timeout, &mut ready) == Reported::NotAll {
            let first = ready.len();
            self.wait_with_polling(Some(Duration::ZERO), &mut ready);
            if first > 0 && ready.len() > first {
                one_event_per_source(&mut ready);
            }
        }
        if ready.is_empty() {
            return;
        }
        let sources = self.sources.lock();
        for event in ready {
            if let Some(Some(source)) = sources.slots.get(event.key) {
                self.take_ready(source, event.readable, event.writable, wake);
            }
        }
    }

    /// One `epoll_wait`, where `Poller::wait` makes five system calls: it arms
    /// its timer descriptor for the timeout (`timerfd_settime` and an
    /// `epoll_ctl`) and clears and re-arms its notifier (a `read` and an
    /// `epoll_ctl`), even when nothing notified it. That was 16,000 system
    /// calls in the `echo` workload, 1.4% of its time.
    ///
    /// The sources' events carry the keys they were registered with; anything
    /// else (`polling`'s notifier or timer, or an event for a key that is no
    /// source of ours) is left to `Poller::wait`, which the caller then runs with
    /// a zero timeout: it clears its notifier, re-arms it and reports what is
    /// ready. Nothing reported here is lost by that: a source's interest is
    /// level-triggered, so `Poller::wait` reports it again. Should `polling`
    /// change what it stores in an event, every wait takes that second call:
    /// slower, never wrong.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn wait_in_kernel(&self, timeout: Option<Duration>, ready: &mut Vec<Event>) -> Reported {
        use rustix::event::epoll::{self, EventFlags};
        if self.mode != PollMode::Level {
            return self.wait_with_polling(timeout, ready);
        }
        let timeout = timeout.map(kernel_timeout);
        let mut buffer = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 256];
        let events: &[epoll::Event] = match epoll::wait(&self.poller, &mut buffer, timeout.as_ref())
        {
            Ok((events, _)) => events,
            Err(rustix::io::Errno::INTR) => &[],
            Err(e) => panic!("thenable: polling failed: {e}"),
        };
        let sources = self.sources.lock().slots.len();
        let mut reported = Reported::All;
        for event in events {
            // Copied out: the kernel's event is a packed struct.
            let (flags, key) = (event.flags, event.data.u64());
            match usize::try_from(key) {
                Ok(key) if key < sources => ready.push(Event::new(
                    key,
                    flags.intersects(
                        EventFlags::IN | EventFlags::PRI | EventFlags::HUP | EventFlags::ERR,
                    ),
                    flags.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR),
                )),
                _ => reported = Reported::NotAll,
            }
        }
        reported
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn wait_in_kernel(&self, timeout: Option<Duration>, ready: &mut Vec<Event>) -> Reported {
        self.wait_with_polling(timeout, ready)
    }

    fn wait_with_polling(&self, timeout: Option<Duration>, ready: &mut Vec<Event>) -> Reported {
        let mut events = self.events.lock();
        events.clear();
        match self.poller.wait(&mut events, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("thenable: polling failed: {e}"),
        }
        ready.extend(events.iter());
        Reported::All
    }

    /// Wakes the waiters of the reported directions.
    fn fire(&self, source: &Source, readable: bool, writable: bool) {
        let mut wake = Wakers::new();
        self.take_ready(source, readable, writable, &mut wake);
        for waker in wake {
            waker.wake();
        }
    }

    /// Wakes the tasks waiting to read `source`, for what the poller cannot
    /// see: bytes given back to a stream's buffer (see `net`). Their interest
    /// stays armed, as after readiness: one that finds nothing waits again.
    /// Apart from [`take_ready`](Self::take_ready), whose inlining into the
    /// poller's wait a second caller changed (`echo`: 2.8% more instructions).
    #[cold]
    #[inline(never)]
    pub(crate) fn wake_readers(&self, source: &Source) {
        let readers = {
            let mut waiters = source.waiters.lock();
            let was_waiting = waiters.is_waiting();
            let readers = std::mem::take(&mut waiters.readers);
            if was_waiting && !waiters.is_waiting() {
                self.armed.fetch_sub(1, Ordering::AcqRel);
            }
            readers
        };
        // Outside the lock: a waker of another runtime may run anything.
        for (_, waker) in readers {
            waker.wake();
        }
    }

    /// Records the reported directions as ready and takes their waiters' wakers
    /// into `wake`. The poller keeps the interest of a direction whose waiters
    /// are woken (they usually wait again soon), and drops the interest of a
    /// direction nobody waited on.
    fn take_ready(&self, source: &Source, readable: bool, writable: bool, wake: &mut Wakers) {
        let mut waiters = source.waiters.lock();
        let was_waiting = waiters.is_waiting();
        let mut kernel = waiters.kernel;
        if readable {
            waiters.readable = true;
            kernel.0 &= !waiters.readers.is_empty();
            wake.extend(waiters.readers.drain(..).map(|(_, waker)| waker));
        }
        if writable {
            waiters.writable = true;
            kernel.1 &= !waiters.writers.is_empty();
            wake.extend(waiters.writers.drain(..).map(|(_, waker)| waker));
        }
        if was_waiting && !waiters.is_waiting() {
            self.armed.fetch_sub(1, Ordering::AcqRel);
        }
        if self.mode == PollMode::Oneshot {
            // The event disarmed every direction: the waiters it did not wake
            // need theirs again.
            waiters.kernel = (false, false);
            kernel = waiters.wanted();
        }
        if kernel != waiters.kernel && waiters.registered {
            #[cfg(unix)]
            {
                #[allow(unsafe_code)]
                // SAFETY: `registered` is true, so `deregister` has not run,
                // and nothing closes a registered descriptor (see
                // `register`: an `Async` deregisters before it drops its
                // object, and one forgotten keeps it open for ever);
                // `deregister` clears the flag under this lock, which we
                // hold until the call returns.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(source.fd) };
                // The descriptor is open and registered: only a kernel out
                // of memory could refuse this.
                let _ = self.set_interest(source.key, &mut waiters, fd, kernel);
            }
        }
    }

    /// Registers `fd` with no interest yet.
    ///
    /// The caller must [`deregister`](Self::deregister) it before the descriptor is
    /// closed (the `Async` wrapper does, in its `Drop`, before dropping the I/O
    /// object).
    #[cfg(unix)]
    pub(crate) fn register(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Arc<Source>> {
        use std::os::fd::AsRawFd;
        let mut sources = self.sources.lock();
        let key = sources.free.pop().unwrap_or(sources.slots.len());
        let source = Arc::new(Source {
            key,
            fd: fd.as_raw_fd(),
            waiters: Lock::new(Waiters {
                registered: true,
                ..Waiters::default()
            }),
        });
        #[allow(unsafe_code)]
        // SAFETY: `polling` requires the source to be deleted from the poller before
        // it is closed. Every registration is owned by an `Async<T>` that holds the
        // descriptor and calls `deregister` in its `Drop` before the descriptor is
        // dropped (tested by `registrations_are_not_leaked_nor_reused_stale` in
        // `tests/io_issue4.rs`). `T: 'static` and no `&mut T` from `Async` mean
        // that an `Async` forgotten instead of dropped keeps its descriptor open
        // for ever: nothing closes a registered descriptor.
        let added = unsafe {
            self.poller
                .add_with_mode(fd.as_raw_fd(), Event::none(key), PollMode::Oneshot)
        };
        if let Err(error) = added {
            if key < sources.slots.len() {
                sources.free.push(key); // not taken after all
            }
            return Err(error);
        }
        if key == sources.slots.len() {
            sources.slots.push(Some(source.clone()));
        } else {
            sources.slots[key] = Some(source.clone());
        }
        Ok(source)
    }

    /// Removes a source; tasks still waiting on it are woken (their retry fails or
    /// sees the closed source).
    #[cfg(unix)]
    pub(crate) fn deregister(&self, source: &Source, fd: std::os::fd::BorrowedFd<'_>) {
        {
            let mut waiters = source.waiters.lock();
            waiters.registered = false;
            waiters.kernel = (false, false);
            let _ = self.poller.delete(fd);
        }
        {
            let mut sources = self.sources.lock();
            sources.slots[source.key] = None;
            sources.free.push(source.key);
        }
        self.fire(source, true, true);
    }

    /// Ready, or registers the waker and arms interest in `direction` (unless the
    /// poller still holds it from an earlier wait).
    ///
    /// Without a ticket the registration is anonymous: it stays until readiness
    /// or deregistration, however soon the caller loses interest. With one, the
    /// caller updates its own registration on every poll and withdraws it with
    /// [`withdraw`](Self::withdraw) when it stops waiting.
    ///
    /// `would_block` says the caller's operation has just returned `WouldBlock`:
    /// readiness recorded in `direction` is then stale (left by a wake-up whose
    /// waiter went on to read or write), and is forgotten rather than answered
    /// with, which would retry the operation once more for nothing: a wasted
    /// system call per read or write. Nothing is lost: interest is
    /// level-triggered, so a source that became ready meanwhile is reported by
    /// the next poll, whether its interest was still armed or is armed now.
    #[cfg(unix)]
    pub(crate) fn poll_ready(
        &self,
        source: &Source,
        fd: std::os::fd::BorrowedFd<'_>,
        direction: Direction,
        ticket: Option<&mut Ticket>,
        would_block: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = source.waiters.lock();
        let waiters = &mut *guard;
        let was_waiting = waiters.is_waiting();
        let (seen, list) = match direction {
            Direction::Read => (&mut waiters.readable, &mut waiters.readers),
            Direction::Write => (&mut waiters.writable, &mut waiters.writers),
        };
        if std::mem::take(seen) && !would_block {
            // Readiness drained every waiter of this direction, this one included.
            if let Some(ticket) = ticket {
                ticket.registered = None;
            }
            return Poll::Ready(Ok(()));
        }
        match ticket {
            None => {
                if !list
                    .iter()
                    .any(|(id, w)| *id == ANONYMOUS && w.will_wake(cx.waker()))
                {
                    list.push((ANONYMOUS, cx.waker().clone()));
                }
            }
            Some(ticket) => {
                let entry = ticket
                    .registered
                    .and_then(|mine| list.iter_mut().find(|(id, _)| *id == mine));
                match entry {
                    Some((_, waker)) => {
                        if !waker.will_wake(cx.waker()) {
                            *waker = cx.waker().clone();
                        }
                    }
                    None => {
                        waiters.last_ticket += 1;
                        ticket.registered = Some(waiters.last_ticket);
                        list.push((waiters.last_ticket, cx.waker().clone()));
                    }
                }
            }
        }
        if !was_waiting {
            self.armed.fetch_add(1, Ordering::AcqRel);
        }
        let wanted = waiters.wanted();
        let kernel = waiters.kernel;
        if (wanted.0 && !kernel.0) || (wanted.1 && !kernel.1) {
            self.set_interest(source.key, waiters, fd, wanted)?;
        }
        Poll::Pending
    }

    /// Takes back the registration of `ticket`, if it has one: a source left with
    /// no waiter is disarmed and no longer keeps the loop alive.
    #[cfg(unix)]
    pub(crate) fn withdraw(
        &self,
        source: &Source,
        fd: std::os::fd::BorrowedFd<'_>,
        ticket: &mut Ticket,
    ) {
        let Some(mine) = ticket.registered.take() else {
            return;
        };
        let mut waiters = source.waiters.lock();
        let was_waiting = waiters.is_waiting();
        let list = match ticket.direction {
            Direction::Read => &mut waiters.readers,
            Direction::Write => &mut waiters.writers,
        };
        let before = list.len();
        list.retain(|(id, _)| *id != mine);
        if list.len() == before {
            return; // readiness had already drained it
        }
        if was_waiting && !waiters.is_waiting() {
            self.armed.fetch_sub(1, Ordering::AcqRel);
        }
        let wanted = waiters.wanted();
        if wanted != waiters.kernel {
            // Best effort: an interest left armed fires once, finds nobody, and
            // only records the readiness for the next wait.
            let _ = self.set_interest(source.key, &mut waiters, fd, wanted);
        }
    }
}

// ---------------------------------------------------------------------------
// The watcher: readiness for waits that no turn of the loop would see
// ---------------------------------------------------------------------------

#[cfg(unix)]
impl Reactor {
    /// Has the waits registered here watched while no thread drives the loop:
    /// a poll from another executor, on a thread where no loop runs, has just
    /// left one (with its own waker, or a task's of the loop that poll turned).
    /// `owner` holds this reactor, which `reactor_of` finds there; the watcher
    /// keeps a weak reference to it, and ends once the reactor is dropped.
    ///
    /// The first call starts the watcher thread (see
    /// [`start_watcher`](Self::start_watcher), which I/O objects call first, to
    /// report a failure as their error: here it panics, since the wait would
    /// hang silently without it); the others cost a lock. Only polls from
    /// another executor call it: a driven loop never does.
    pub(crate) fn watch_foreign_waits<O: Send + Sync + 'static>(
        &self,
        owner: &Arc<O>,
        reactor_of: fn(&O) -> &Reactor,
    ) {
        self.watcher(owner, reactor_of)
            .expect("thenable: cannot start the I/O watcher thread")
            .watch
            .request();
    }

    /// Starts the watcher thread unless it runs already. It takes descriptors
    /// and a thread, which a process may be out of: an I/O object calls this
    /// before it leaves a wait to the watcher, so that the wait fails with the
    /// reason rather than panic in another executor's poll.
    pub(crate) fn start_watcher<O: Send + Sync + 'static>(
        &self,
        owner: &Arc<O>,
        reactor_of: fn(&O) -> &Reactor,
    ) -> io::Result<()> {
        self.watcher(owner, reactor_of).map(drop)
    }

    fn watcher<O: Send + Sync + 'static>(
        &self,
        owner: &Arc<O>,
        reactor_of: fn(&O) -> &Reactor,
    ) -> io::Result<&Watcher> {
        if let Some(watcher) = self.watcher.get() {
            return Ok(watcher);
        }
        let started = Watcher::start(self, Arc::downgrade(owner), reactor_of)?;
        // Another thread may have started one meanwhile: this one is dropped,
        // which ends its thread, and that one is used.
        let _ = self.watcher.set(started);
        Ok(self.watcher.get().expect("set just now"))
    }
}

/// Without I/O sources (`io` and `net` are for unix), no wait is ever left here.
#[cfg(not(unix))]
impl Reactor {
    pub(crate) fn watch_foreign_waits<O>(&self, _: &Arc<O>, _: fn(&O) -> &Reactor) {}

    pub(crate) fn start_watcher<O>(&self, _: &Arc<O>, _: fn(&O) -> &Reactor) -> io::Result<()> {
        Ok(())
    }
}

/// A reactor's watcher thread, as the reactor holds it: dropped with the
/// reactor, it ends the thread.
#[cfg(unix)]
struct Watcher {
    watch: Arc<Watch>,
    /// The other end is in the thread's `poll(2)`: closing this one ends it.
    _stop: std::os::unix::net::UnixStream,
}

/// What a reactor and its watcher thread share.
///
/// Two Dekker pairs with the reactor's `driven` flag, every access `SeqCst`,
/// so that of a thread that starts or stops driving and the watcher, at least
/// one sees what the other did. `turning`: the watcher sets it, then reads
/// `driven`, and turns only if nobody drives; a driver sets `driven`, then
/// reads `turning`, and waits for a turn under way to end. `parked`: the
/// watcher sets it, then reads `driven` before it waits for the drive to end
/// (under `state`'s lock); a driver that stops clears `driven`, then reads
/// `parked`, and wakes it (under the same lock). A driver pays a load for each
/// while the watcher neither turns nor stands by.
#[cfg(unix)]
#[derive(Default)]
struct Watch {
    turning: AtomicBool,
    parked: AtomicBool,
    state: Mutex<WatchState>,
    /// Signalled when a request comes, the reactor goes, a turn ends or a drive
    /// ends (for a watcher that stands by).
    changed: parking_lot::Condvar,
    /// Waits in `poll(2)` the watcher began, and turns it took: the tests
    /// count them.
    polls: AtomicUsize,
    turns: AtomicUsize,
}

#[cfg(unix)]
#[derive(Default)]
struct WatchState {
    /// A poll from another executor left a wait since the watcher last looked.
    requested: bool,
    /// The reactor is gone.
    stopped: bool,
}

#[cfg(unix)]
impl Watch {
    fn request(&self) {
        let mut state = self.state.lock();
        if !state.requested {
            state.requested = true;
            drop(state);
            self.changed.notify_all();
        }
    }

    /// Waits for a request and takes it; false once the reactor is gone.
    fn take_request(&self) -> bool {
        let mut state = self.state.lock();
        while !state.requested && !state.stopped {
            self.changed.wait(&mut state);
        }
        if state.stopped {
            return false;
        }
        state.requested = false;
        true
    }

    fn wait_until_not_turning(&self) {
        if self.turning.load(Ordering::SeqCst) {
            let mut state = self.state.lock();
            while self.turning.load(Ordering::SeqCst) {
                self.changed.wait(&mut state);
            }
        }
    }

    fn driving_ended(&self) {
        if self.parked.load(Ordering::SeqCst) {
            // Taken so that the watcher is either before its look at `driven`
            // or waiting: the notification cannot fall in between.
            let _state = self.state.lock();
            self.changed.notify_all();
        }
    }

    /// Begins a turn, unless a thread drives the loop. The turn ends when the
    /// guard is dropped, even by a panic (a system call that failed): a driver
    /// waiting for it to end would otherwise wait for ever.
    fn begin_turn(&self, reactor: &Reactor) -> Option<Turn<'_>> {
        self.turning.store(true, Ordering::SeqCst);
        let turn = Turn(self);
        (!reactor.driven.load(Ordering::SeqCst)).then_some(turn)
    }

    fn end_turn(&self) {
        {
            let _state = self.state.lock();
            self.turning.store(false, Ordering::SeqCst);
        }
        self.changed.notify_all();
    }

    /// Waits while a thread drives the loop.
    fn stand_by_while_driven(&self, reactor: &Reactor) {
        let mut state = self.state.lock();
        self.parked.store(true, Ordering::SeqCst);
        while reactor.driven.load(Ordering::SeqCst) {
            self.changed.wait(&mut state);
        }
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// A turn of the watcher, under way until dropped ([`Watch::begin_turn`]).
#[cfg(unix)]
struct Turn<'a>(&'a Watch);

#[cfg(unix)]
impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.end_turn();
    }
}

#[cfg(unix)]
impl Watcher {
    fn start<O: Send + Sync + 'static>(
        reactor: &Reactor,
        home: std::sync::Weak<O>,
        reactor_of: fn(&O) -> &Reactor,
    ) -> io::Result<Watcher> {
        use std::os::fd::AsFd;
        // A descriptor of its own for the poller: the reactor's is closed when
        // the reactor is dropped, perhaps while the thread polls it, and its
        // number may then name another file.
        let poller = reactor.poller.as_fd().try_clone_to_owned()?;
        let (stop, stopped) = std::os::unix::net::UnixStream::pair()?;
        let watch = Arc::new(Watch::default());
        let shared = watch.clone();
        std::thread::Builder::new()
            .name("thenable-io-watch".into())
            .spawn(move || watch_while_undriven(&shared, &home, reactor_of, &poller, &stopped))?;
        Ok(Watcher { watch, _stop: stop })
    }
}

#[cfg(unix)]
impl Drop for Watcher {
    fn drop(&mut self) {
        self.watch.state.lock().stopped = true;
        self.watch.changed.notify_all();
        // `_stop` is closed next, which ends the thread's `poll(2)`.
    }
}

/// The watcher thread. While the reactor has waits (after a request) and no
/// thread drives the loop, it waits for the poller's descriptor to be readable
/// (an event is pending: `poll(2)` reports it without taking it), then turns
/// the reactor with a zero timeout as the loop would. That wakes the waiters of
/// the ready sources (another executor's wakers directly; a task's through its
/// loop's queue, which wakes the foreign polls that turn that loop), and clears
/// the poller's notification, so that a loop notified while nobody drives it
/// does not keep the descriptor readable. Readiness nobody waits for disarms
/// its source, as in the loop's own turns: a socket left unread is reported
/// once more, not for ever. While a thread drives the loop, the watcher stands
/// by (that thread takes the readiness); with no wait left, it sleeps until
/// the next request. No step holds the reactor while it waits.
#[cfg(unix)]
fn watch_while_undriven<O>(
    watch: &Watch,
    home: &std::sync::Weak<O>,
    reactor_of: fn(&O) -> &Reactor,
    poller: &std::os::fd::OwnedFd,
    stopped: &std::os::unix::net::UnixStream,
) {
    while watch.take_request() {
        loop {
            let Some(owner) = home.upgrade() else { return };
            let reactor = reactor_of(&owner);
            if !reactor.has_armed_sources() {
                // A request made since it was taken is taken next: its wait is
                // registered before it asks.
                break;
            }
            if reactor.is_driven() {
                watch.stand_by_while_driven(reactor);
                continue;
            }
            drop(owner);
            watch.polls.fetch_add(1, Ordering::Relaxed);
            if !wait_for_an_event(poller, stopped) {
                return;
            }
            let Some(owner) = home.upgrade() else { return };
            let reactor = reactor_of(&owner);
            let mut wake = Wakers::new();
            if let Some(_turn) = watch.begin_turn(reactor) {
                reactor.wait_and_take(Some(Duration::ZERO), &mut wake);
                watch.turns.fetch_add(1, Ordering::Relaxed);
            }
            // With the turn over: a driver may start meanwhile, and a waker of
            // another runtime may run anything. One that panics is reported,
            // not let end this thread: every wait left here later would hang.
            for waker in wake {
                crate::event_loop::contained("a waker woken by the I/O watcher", || waker.wake());
            }
        }
    }
}

/// Blocks until the poller has an event pending (true) or the reactor is gone.
#[cfg(unix)]
fn wait_for_an_event(
    poller: &std::os::fd::OwnedFd,
    stopped: &std::os::unix::net::UnixStream,
) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = [
            PollFd::new(poller, PollFlags::IN),
            PollFd::new(stopped, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            // Its own descriptors, valid until it returns: cannot happen.
            Err(e) => panic!("thenable: the I/O watcher failed to poll: {e}"),
        }
        if !fds[1].revents().is_empty() {
            return false;
        }
        if !fds[0].revents().is_empty() {
            return true;
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicBool;
    use std::task::Wake;

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    /// Events the poller reports right now, without waking anybody.
    fn pending_events(reactor: &Reactor) -> usize {
        let mut events = Events::new();
        reactor
            .poller
            .wait(&mut events, Some(Duration::ZERO))
            .unwrap();
        events.len()
    }

    /// A connected pair, the first end non-blocking and registered.
    fn registered_pair(reactor: &Reactor) -> (UnixStream, UnixStream, Arc<Source>) {
        let (mine, peer) = UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        let source = reactor.register(mine.as_fd()).unwrap();
        (mine, peer, source)
    }

    fn kernel(source: &Source) -> (bool, bool) {
        source.waiters.lock().kernel
    }

    fn wait_to_read(reactor: &Reactor, source: &Source, io: &UnixStream, waker: &Waker) -> bool {
        let mut cx = Context::from_waker(waker);
        let poll = reactor.poll_ready(source, io.as_fd(), Direction::Read, None, true, &mut cx);
        poll.is_pending()
    }

    #[test]
    fn interest_outlives_the_wait_that_armed_it_and_goes_when_nobody_waits() {
        let reactor = Reactor::new().unwrap();
        if reactor.mode != PollMode::Level {
            return; // oneshot platforms re-arm on each wait
        }
        let (mine, mut peer, source) = registered_pair(&reactor);
        assert_eq!(kernel(&source), (false, false));

        let (woken, first) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &first));
        assert_eq!(kernel(&source), (true, false));
        peer.write_all(b"x").unwrap();
        reactor.wait(Some(Duration::ZERO));
        assert!(woken.0.load(Ordering::SeqCst));
        // The woken reader is expected to wait again: its interest stays.
        assert_eq!(kernel(&source), (true, false));

        // It did not read: the still-readable socket is reported once more, finds
        // nobody, and is disarmed, so it cannot keep the poller spinning.
        reactor.wait(Some(Duration::ZERO));
        assert_eq!(kernel(&source), (false, false));
        assert_eq!(pending_events(&reactor), 0);
        assert!(!reactor.has_armed_sources());

        // A new wait arms it again, and the data still there is reported at once.
        let (woken, second) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &second));
        assert_eq!(kernel(&source), (true, false));
        reactor.wait(Some(Duration::ZERO));
        assert!(woken.0.load(Ordering::SeqCst));
        reactor.deregister(&source, mine.as_fd());
    }

    #[test]
    fn a_hung_up_source_nobody_waits_on_is_reported_once_at_most() {
        // The kernel reports a hang-up whatever the interest: with level-triggered
        // interest left at "none", it would be reported by every poll, for ever.
        let reactor = Reactor::new().unwrap();
        let (mine, peer, source) = registered_pair(&reactor);
        drop(peer);
        reactor.wait(Some(Duration::ZERO));
        assert_eq!(pending_events(&reactor), 0);

        // Once a reader woken by the hang-up has gone, the same holds.
        let (woken, waker) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &waker));
        reactor.wait(Some(Duration::ZERO));
        assert!(woken.0.load(Ordering::SeqCst));
        reactor.wait(Some(Duration::ZERO)); // nobody waits: disarmed
        assert!(pending_events(&reactor) <= 1);
        assert_eq!(pending_events(&reactor), 0);
        reactor.deregister(&source, mine.as_fd());
    }

    /// A reader and a writer wait on one socket; readiness for the reader must
    /// leave the writer's wait armed, in either mode.
    fn a_wake_in_one_direction_keeps_the_other_armed(mode: PollMode) {
        let mut reactor = Reactor::new().unwrap();
        reactor.mode = mode;
        let (mine, mut peer, source) = registered_pair(&reactor);
        peer.set_nonblocking(true).unwrap();
        let mut filled = 0;
        loop {
            match (&mine).write(&[0; 4096]) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let (reader_woken, reader) = waker();
        let (writer_woken, writer) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &reader));
        let mut cx = Context::from_waker(&writer);
        let poll = reactor.poll_ready(&source, mine.as_fd(), Direction::Write, None, true, &mut cx);
        assert!(poll.is_pending());

        peer.write_all(b"x").unwrap();
        reactor.wait(Some(Duration::ZERO));
        assert!(reader_woken.0.load(Ordering::SeqCst));
        assert!(!writer_woken.0.load(Ordering::SeqCst));

        // The peer reads everything: the socket is writable again.
        let mut drained = 0;
        let mut buf = [0; 4096];
        while drained < filled {
            drained += std::io::Read::read(&mut peer, &mut buf).unwrap();
        }
        reactor.wait(Some(Duration::ZERO));
        assert!(writer_woken.0.load(Ordering::SeqCst));
        reactor.deregister(&source, mine.as_fd());
    }

    #[test]
    fn a_wake_in_one_direction_keeps_the_other_armed_level_triggered() {
        a_wake_in_one_direction_keeps_the_other_armed(PollMode::Level);
    }

    #[test]
    fn a_wake_in_one_direction_keeps_the_other_armed_oneshot() {
        a_wake_in_one_direction_keeps_the_other_armed(PollMode::Oneshot);
    }

    #[test]
    fn a_registration_the_poller_refuses_gives_its_key_back() {
        let reactor = Reactor::new().unwrap();
        let (mine, _peer) = UnixStream::pair().unwrap();
        let first = reactor.register(mine.as_fd()).unwrap();
        reactor.deregister(&first, mine.as_fd());
        // epoll refuses regular files.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(reactor.register(file.as_fd()).is_err());
        let again = reactor.register(mine.as_fd()).unwrap();
        assert_eq!(again.key, first.key);
        assert_eq!(reactor.sources.lock().slots.len(), 1);
        reactor.deregister(&again, mine.as_fd());
    }

    #[test]
    fn a_withdrawn_wait_disarms_at_once() {
        let reactor = Reactor::new().unwrap();
        let (mine, mut peer, source) = registered_pair(&reactor);
        let (woken, waker) = waker();
        let mut ticket = Ticket::new(Direction::Read);
        let mut cx = Context::from_waker(&waker);
        let poll = reactor.poll_ready(
            &source,
            mine.as_fd(),
            Direction::Read,
            Some(&mut ticket),
            true,
            &mut cx,
        );
        assert!(poll.is_pending());
        assert!(reactor.has_armed_sources());
        reactor.withdraw(&source, mine.as_fd(), &mut ticket);
        assert!(!reactor.has_armed_sources());
        assert_eq!(kernel(&source), (false, false));
        peer.write_all(b"x").unwrap();
        assert_eq!(pending_events(&reactor), 0);
        reactor.wait(Some(Duration::ZERO));
        assert!(!woken.0.load(Ordering::SeqCst));
        reactor.deregister(&source, mine.as_fd());
    }

    #[test]
    fn deregistering_wakes_waiters_and_touches_the_poller_no_more() {
        let reactor = Reactor::new().unwrap();
        let (mine, _peer, source) = registered_pair(&reactor);
        let (woken, waker) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &waker));
        reactor.deregister(&source, mine.as_fd());
        assert!(woken.0.load(Ordering::SeqCst));
        assert!(!reactor.has_armed_sources());
        let waiters = source.waiters.lock();
        assert!(!waiters.registered);
        assert_eq!(waiters.kernel, (false, false));
    }

    #[test]
    fn a_source_s_readiness_is_read_off_the_kernel_s_event_alone() {
        // Catches a `polling` that stores something else than our key in an
        // event: the wait would then leave every event to `Poller::wait`.
        let reactor = Reactor::new().unwrap();
        let (_first, _first_peer, first) = registered_pair(&reactor);
        let (mine, mut peer, source) = registered_pair(&reactor);
        assert_eq!((first.key, source.key), (0, 1));
        let (_, waker) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &waker));
        peer.write_all(b"x").unwrap();
        let mut ready = Vec::new();
        let reported = reactor.wait_in_kernel(Some(Duration::ZERO), &mut ready);
        assert!(reported == Reported::All);
        let events: Vec<_> = ready
            .iter()
            .map(|e| (e.key, e.readable, e.writable))
            .collect();
        assert_eq!(events, [(1, true, false)]);
        reactor.deregister(&source, mine.as_fd());
    }

    #[test]
    fn a_notification_is_left_to_polling_which_re_arms_it() {
        let reactor = Reactor::new().unwrap();
        let mut ready = Vec::new();
        for _ in 0..3 {
            reactor.notify();
            // Step by step what `wait` does. Were the notifier not cleared and
            // re-armed, or `polling`'s "already notified" flag not reset, the
            // next round's notification would not be seen: a loop asleep for
            // ever with work queued.
            let reported = reactor.wait_in_kernel(Some(Duration::ZERO), &mut ready);
            assert!(reported == Reported::NotAll);
            reactor.wait_with_polling(Some(Duration::ZERO), &mut ready);
            let reported = reactor.wait_in_kernel(Some(Duration::ZERO), &mut ready);
            assert!(reported == Reported::All);
        }
        assert!(ready.is_empty());
    }

    #[test]
    fn a_notification_from_another_thread_ends_an_unlimited_wait() {
        let reactor = Arc::new(Reactor::new().unwrap());
        let notifier = {
            let reactor = reactor.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                reactor.notify();
            })
        };
        reactor.wait(None); // hangs the test if the wake-up is lost
        notifier.join().unwrap();
    }

    #[test]
    fn a_source_reported_with_a_notification_keeps_the_interest_of_its_woken_reader() {
        // The notification sends the wait to `Poller::wait` too, which reports
        // the still-readable socket a second time: taken as a second event, it
        // finds no reader left and disarms the interest the woken one is about
        // to need again (two `epoll_ctl` per ready source and notified wait).
        let reactor = Reactor::new().unwrap();
        let (mine, mut peer, source) = registered_pair(&reactor);
        let (woken, waker) = waker();
        assert!(wait_to_read(&reactor, &source, &mine, &waker));
        peer.write_all(b"x").unwrap();
        reactor.notify();
        reactor.wait(Some(Duration::ZERO));
        assert!(woken.0.load(Ordering::SeqCst));
        assert_eq!(kernel(&source), (true, false));
        // Once: nobody waits now, so the next report disarms it.
        reactor.wait(Some(Duration::ZERO));
        assert_eq!(kernel(&source), (false, false));
        reactor.deregister(&source, mine.as_fd());
    }

    #[test]
    fn more_ready_sources_than_one_kernel_wait_reports_are_all_woken_and_the_notification_too() {
        // 256 events fit in a kernel wait: the rest, and the notification, wait
        // for the next.
        let reactor = Reactor::new().unwrap();
        let pairs: Vec<_> = (0..300).map(|_| registered_pair(&reactor)).collect();
        let flags: Vec<_> = pairs
            .iter()
            .map(|(mine, _, source)| {
                let (woken, waker) = waker();
                assert!(wait_to_read(&reactor, source, mine, &waker));
                woken
            })
            .collect();
        for (_, peer, _) in &pairs {
            (&*peer).write_all(b"x").unwrap();
        }
        reactor.notify();
        let woken = || flags.iter().filter(|f| f.0.load(Ordering::SeqCst)).count();
        reactor.wait(Some(Duration::ZERO));
        assert!(woken() >= 256, "{} woken", woken());
        reactor.wait(Some(Duration::ZERO));
        assert_eq!(woken(), 300);
        for (mine, _, source) in &pairs {
            reactor.deregister(source, mine.as_fd());
        }
        let mut ready = Vec::new();
        assert!(reactor.wait_in_kernel(Some(Duration::ZERO), &mut ready) == Reported::All);
        assert!(ready.is_empty(), "the notification was taken and cleared");
    }

    #[test]
    fn a_timeout_longer_than_epoll_pwait_counts_is_cut_to_what_it_takes() {
        // `epoll_pwait` takes milliseconds in an `int`: at most 24.8 days. A
        // longer one would make rustix call `epoll_pwait2`, missing before Linux
        // 5.11 (`strace -e inject=epoll_pwait2:error=ENOSYS` showed the loop
        // panic on a 30-day timer before the cut).
        let millis =
            |t: rustix::event::Timespec| t.tv_sec * 1_000 + (t.tv_nsec + 999_999) / 1_000_000;
        for long in [Duration::from_secs(30 * 86_400), Duration::MAX] {
            assert_eq!(millis(kernel_timeout(long)), i64::from(i32::MAX));
        }
        let short = kernel_timeout(Duration::from_micros(3_500));
        assert_eq!((short.tv_sec, short.tv_nsec), (0, 3_500_000));
        // And the wait itself: with a notification pending it returns at once.
        let reactor = Reactor::new().unwrap();
        reactor.notify();
        reactor.wait(Some(Duration::MAX));
    }

    #[test]
    fn a_timeout_is_never_cut_short() {
        // `epoll_wait` counts milliseconds: 3.5 ms must round up, not down.
        let reactor = Reactor::new().unwrap();
        let start = std::time::Instant::now();
        reactor.wait(Some(Duration::from_micros(3_500)));
        assert!(start.elapsed() >= Duration::from_micros(3_500));
    }

    // -----------------------------------------------------------------------
    // The watcher
    // -----------------------------------------------------------------------

    /// The owner of a reactor made for a test: the reactor itself.
    fn itself(reactor: &Reactor) -> &Reactor {
        reactor
    }

    /// A safety net: `f` on a thread of its own, a failure if it still runs
    /// after 30 s (the watcher's waits have no timeout of their own).
    fn bounded(f: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => worker.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(worker.join().unwrap_err())
            }
            Err(_) => panic!("still running after 30 s"),
        }
    }

    /// A waker that sends on a channel, for a test to block on.
    struct Sends(Mutex<std::sync::mpsc::Sender<()>>);

    impl Wake for Sends {
        fn wake(self: Arc<Self>) {
            let _ = self.0.lock().send(());
        }
    }

    fn sending_waker() -> (std::sync::mpsc::Receiver<()>, Waker) {
        let (send, receive) = std::sync::mpsc::channel();
        (receive, Waker::from(Arc::new(Sends(Mutex::new(send)))))
    }

    /// A read wait on a socket nothing is sent to, watched for another
    /// executor: the socket, its peer, its source and the watch.
    fn watching_a_wait_never_ready(
        reactor: &Arc<Reactor>,
    ) -> (UnixStream, UnixStream, Arc<Source>, Arc<Watch>) {
        let (mine, peer, source) = registered_pair(reactor);
        let (_, waker) = waker();
        assert!(wait_to_read(reactor, &source, &mine, &waker));
        reactor.watch_foreign_waits(reactor, itself);
        (mine, peer, source, watch_of(reactor))
    }

    fn watch_of(reactor: &Reactor) -> Arc<Watch> {
        reactor.watcher.get().expect("started").watch.clone()
    }

    /// Waits (bounded by the caller) until `condition` holds.
    fn until(condition: impl Fn() -> bool) {
        while !condition() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_watcher_wakes_a_wait_while_nobody_drives_and_ends_with_its_reactor() {
        bounded(|| {
            let reactor = Arc::new(Reactor::new().unwrap());
            let (mine, mut peer, source) = registered_pair(&reactor);
            let (woken, waker) = sending_waker();
            assert!(wait_to_read(&reactor, &source, &mine, &waker));
            reactor.watch_foreign_waits(&reactor, itself);
            peer.write_all(b"x").unwrap();
            woken.recv().unwrap(); // hangs if nothing turns the reactor
            let watch = watch_of(&reactor);
            assert!(watch.turns.load(Ordering::Relaxed) >= 1);
            reactor.deregister(&source, mine.as_fd());
            drop(reactor);
            // The thread holds the other reference until it ends.
            until(|| Arc::strong_count(&watch) == 1);
        });
    }

    #[test]
    fn the_watcher_ends_with_its_reactor_while_it_waits_for_an_event() {
        bounded(|| {
            let reactor = Arc::new(Reactor::new().unwrap());
            let (mine, _peer, source, watch) = watching_a_wait_never_ready(&reactor);
            // In `poll(2)`, or about to be: either way the end of the reactor's
            // socket is what tells it to stop.
            until(|| watch.polls.load(Ordering::Relaxed) == 1);
            // Withdrawn without an event: nothing but the end of the reactor
            // ends the thread's wait.
            reactor.deregister(&source, mine.as_fd());
            drop(reactor);
            until(|| Arc::strong_count(&watch) == 1);
            assert_eq!(watch.turns.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn the_watcher_clears_a_notification_once_rather_than_spin_on_it() {
        // The poller's descriptor stays readable while a notification is
        // pending: a watcher that left it there would turn for ever.
        bounded(|| {
            let reactor = Arc::new(Reactor::new().unwrap());
            let (mine, _peer, source, watch) = watching_a_wait_never_ready(&reactor);
            reactor.notify();
            until(|| watch.turns.load(Ordering::Relaxed) >= 1);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(watch.turns.load(Ordering::Relaxed), 1);
            // Cleared: a driver's wait does not return for it.
            let mut ready = Vec::new();
            assert!(reactor.wait_in_kernel(Some(Duration::ZERO), &mut ready) == Reported::All);
            assert!(ready.is_empty());
            // And re-armed: the next one wakes a driver's unlimited wait.
            reactor.begin_driving();
            let notifier = {
                let reactor = reactor.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    reactor.notify();
                })
            };
            reactor.wait(None);
            notifier.join().unwrap();
            reactor.end_driving();
            reactor.deregister(&source, mine.as_fd());
        });
    }

    #[test]
    fn the_watcher_leaves_the_reactor_to_a_driver_and_watches_again_after() {
        bounded(|| {
            let reactor = Arc::new(Reactor::new().unwrap());
            reactor.begin_driving();
            let (mine, mut peer, source) = registered_pair(&reactor);
            let (woken, waker) = waker();
            assert!(wait_to_read(&reactor, &source, &mine, &waker));
            reactor.watch_foreign_waits(&reactor, itself);
            let watch = watch_of(&reactor);
            peer.write_all(b"x").unwrap();
            reactor.wait(Some(Duration::ZERO));
            assert!(woken.0.load(Ordering::SeqCst));
            let mut byte = [0; 1];
            assert_eq!(std::io::Read::read(&mut &mine, &mut byte).unwrap(), 1);
            // The driver's notifications are its own: a watcher that cleared one
            // would leave this unlimited wait asleep.
            let notifier = {
                let reactor = reactor.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    reactor.notify();
                })
            };
            reactor.wait(None);
            notifier.join().unwrap();
            assert_eq!(watch.turns.load(Ordering::Relaxed), 0);

            // Undriven again, with a wait left by another executor: the
            // watcher takes the readiness.
            let (woken, waker) = sending_waker();
            assert!(wait_to_read(&reactor, &source, &mine, &waker));
            reactor.end_driving();
            reactor.watch_foreign_waits(&reactor, itself);
            peer.write_all(b"y").unwrap();
            woken.recv().unwrap();
            assert!(watch.turns.load(Ordering::Relaxed) >= 1);
            reactor.deregister(&source, mine.as_fd());
        });
    }

    /// Another executor's waker that panics when woken.
    struct Panics;

    impl Wake for Panics {
        fn wake(self: Arc<Self>) {
            panic!("a foreign waker that panics (expected by the test)");
        }
    }

    #[test]
    fn a_waker_that_panics_leaves_the_watcher_watching() {
        // Woken on the watcher's thread: the panic must not end that thread,
        // or every wait left to it afterwards would hang.
        bounded(|| {
            let reactor = Arc::new(Reactor::new().unwrap());
            let (first, mut first_peer, first_source) = registered_pair(&reactor);
            let (second, mut second_peer, second_source) = registered_pair(&reactor);
            let panics = Waker::from(Arc::new(Panics));
            assert!(wait_to_read(&reactor, &first_source, &first, &panics));
            let (woken, waker) = sending_waker();
            assert!(wait_to_read(&reactor, &second_source, &second, &waker));
            reactor.watch_foreign_waits(&reactor, itself);
            let watch = watch_of(&reactor);
            first_peer.write_all(b"x").unwrap();
            // The turn that takes the first readiness is over (its waker is
            // woken next): the second comes after it.
            until(|| watch.turns.load(Ordering::Relaxed) >= 1);
            second_peer.write_all(b"y").unwrap();
            woken.recv().unwrap(); // hangs if the panic ended the watcher
            reactor.deregister(&first_source, first.as_fd());
            reactor.deregister(&second_source, second.as_fd());
        });
    }
}
