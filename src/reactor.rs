//! The loop's blocking point: one `polling::Poller` per loop.
//!
//! The loop sleeps here when it has nothing to run, for as long as its next timer
//! allows; another thread wakes it with [`Reactor::notify`] after pushing work on
//! the loop's injector. I/O sources will register here too. The reactor never runs
//! callbacks and never decides whether the loop is alive.

use std::io;
use std::time::Duration;

use parking_lot::Mutex;
use polling::{Events, Poller};

pub(crate) struct Reactor {
    poller: Poller,
    events: Mutex<Events>,
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Reactor {
            poller: Poller::new()?,
            events: Mutex::new(Events::new()),
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

    /// Blocks until notified or until `timeout` passes (`None`: no limit).
    pub(crate) fn wait(&self, timeout: Option<Duration>) {
        let mut events = self.events.lock();
        events.clear();
        match self.poller.wait(&mut events, timeout) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("thenable: polling failed: {e}"),
        }
    }
}
