//! The loop's blocking point: one `polling::Poller` per loop, and the I/O sources
//! registered with it.
//!
//! The loop sleeps in [`Reactor::wait`] when it has nothing to run, for as long as
//! its next timer allows; another thread wakes it with [`Reactor::notify`]. A source
//! (a socket, a pipe) is registered once, with no interest; interest is armed
//! oneshot when a task waits for readiness and re-armed on demand. Readiness wakes
//! the waiting tasks, which then retry their non-blocking operation. A wait that
//! holds a [`Ticket`] is withdrawn when its future is dropped, so a source nobody
//! waits on any more is disarmed and stops keeping the loop alive. The reactor
//! never runs callbacks and never decides whether the loop is alive.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use polling::{Event, Events, Poller};
use smallvec::SmallVec;

pub(crate) struct Reactor {
    poller: Poller,
    events: Mutex<Events>,
    sources: Mutex<Sources>,
    /// Sources with a task waiting on them: each keeps the loop alive.
    armed: AtomicUsize,
}

#[derive(Default)]
struct Sources {
    slots: Vec<Option<Arc<Source>>>,
    free: Vec<usize>,
}

/// One registered I/O source.
pub(crate) struct Source {
    pub(crate) key: usize,
    waiters: Mutex<Waiters>,
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
}

impl Waiters {
    fn is_waiting(&self) -> bool {
        !self.readers.is_empty() || !self.writers.is_empty()
    }

    fn interest(&self, key: usize) -> Event {
        Event::new(key, !self.readers.is_empty(), !self.writers.is_empty())
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
        Ok(Reactor {
            poller: Poller::new()?,
            events: Mutex::new(Events::new()),
            sources: Mutex::new(Sources::default()),
            armed: AtomicUsize::new(0),
        })
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
    /// (`None`: no limit); then wakes the tasks waiting on ready sources.
    pub(crate) fn wait(&self, timeout: Option<Duration>) {
        let mut ready: Vec<Event> = Vec::new();
        {
            let mut events = self.events.lock();
            events.clear();
            match self.poller.wait(&mut events, timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("thenable: polling failed: {e}"),
            }
            ready.extend(events.iter());
        }
        for event in ready {
            let source = self.sources.lock().slots.get(event.key).cloned().flatten();
            if let Some(source) = source {
                self.fire(&source, event.readable, event.writable);
            }
        }
    }

    fn fire(&self, source: &Source, readable: bool, writable: bool) {
        // Almost always one waiter per direction: no allocation per event.
        let mut wake: SmallVec<[Waker; 2]> = SmallVec::new();
        {
            let mut waiters = source.waiters.lock();
            let was_waiting = waiters.is_waiting();
            if readable {
                waiters.readable = true;
                wake.extend(waiters.readers.drain(..).map(|(_, waker)| waker));
            }
            if writable {
                waiters.writable = true;
                wake.extend(waiters.writers.drain(..).map(|(_, waker)| waker));
            }
            if was_waiting && !waiters.is_waiting() {
                self.armed.fetch_sub(1, Ordering::AcqRel);
            }
        }
        for waker in wake {
            waker.wake();
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
            waiters: Mutex::new(Waiters::default()),
        });
        #[allow(unsafe_code)]
        // SAFETY: `polling` requires the source to be deleted from the poller before
        // it is closed. Every registration is owned by an `Async<T>` that holds the
        // descriptor and calls `deregister` in its `Drop` before the descriptor is
        // dropped (tested by `registrations_are_not_leaked_nor_reused_stale` in
        // `tests/io_issue4.rs`).
        unsafe {
            self.poller.add(fd.as_raw_fd(), Event::none(key))?
        };
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
        let _ = self.poller.delete(fd);
        {
            let mut sources = self.sources.lock();
            sources.slots[source.key] = None;
            sources.free.push(source.key);
        }
        self.fire(source, true, true);
    }

    /// Ready, or registers the waker and arms interest (oneshot) in `direction`.
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
    /// level-triggered, so re-arming a source that became ready meanwhile
    /// reports it at once.
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
        let interest = waiters.interest(source.key);
        drop(guard);
        self.poller.modify(fd, interest)?;
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
        let interest = waiters.interest(source.key);
        if was_waiting && !waiters.is_waiting() {
            self.armed.fetch_sub(1, Ordering::AcqRel);
        }
        drop(waiters);
        // Best effort: an interest left armed fires once, finds nobody, and only
        // records the readiness for the next wait.
        let _ = self.poller.modify(fd, interest);
    }
}
