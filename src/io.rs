//! I/O readiness on the loop: [`Async<T>`] wraps a non-blocking socket or pipe and
//! turns "would block" into a wait on the loop's reactor.
//!
//! For a one-off wait on any descriptor, [`readable`] and [`writable`] return
//! promises (the seeds' `readability(sock)` / `writability(sock)`).
//!
//! This module owns the registration of one I/O object with its loop's poller and
//! the retry loop of non-blocking operations. It never blocks the loop thread, and
//! never closes a descriptor that is still registered: `Async` deregisters in its
//! `Drop`, before the object it wraps is dropped.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use crate::error::Error;
use crate::event_loop::context::{self, LoopRef};
use crate::event_loop::spawn;
use crate::promise::Promise;
use crate::reactor::Source;
pub(crate) use crate::reactor::{Direction, Ticket};

/// A promise that fulfils once `source` may be read without blocking: data has
/// arrived, a connection waits to be accepted, or the peer hung up (a read then
/// returns the end of the stream or the error). The seeds' `readability(sock)`.
///
/// `source` is any descriptor the loop's poller accepts: a socket (std's or
/// thenable's), a pipe, a terminal; blocking or not, since nothing is read. A
/// regular file never blocks, so the promise fulfils at once (as `poll(2)` reports
/// it; epoll refuses to watch files). Readiness is a hint: a read may still find
/// nothing (another reader got there first), so read in non-blocking mode and wait
/// again on `WouldBlock`. For a thenable [`TcpStream`](crate::net::TcpStream), bytes
/// it has already buffered are not readiness: its own read methods see them.
///
/// The wait watches a duplicate of the descriptor, registered with the calling
/// thread's loop and woken once. The duplicate keeps the open file alive
/// while the promise waits (so the reader of a pipe whose writing end is waited on
/// sees the end only once the wait is over). While it waits, the promise keeps the
/// loop alive; cancel it ([`Promise::cancel`]) to stop waiting, which deregisters
/// and closes the duplicate. For many waits on one object, [`Async`] registers it
/// once instead. Failures (a descriptor that cannot be duplicated or polled) reject
/// with the [`io::Error`] inside the [`Error`].
///
/// ```
/// use std::net::UdpSocket;
/// use thenable::io::readable;
///
/// let a = UdpSocket::bind("127.0.0.1:0")?;
/// let b = UdpSocket::bind("127.0.0.1:0")?;
/// let ready = readable(&b); // nothing sent yet: pending
/// a.send_to(b"hi", b.local_addr()?)?;
/// let size = ready.then(move |()| {
///     let mut buf = [0; 16];
///     Ok(b.recv(&mut buf)?) // does not block: the datagram is there
/// });
/// assert_eq!(thenable::block_on(size)?, 2);
/// # Ok::<_, thenable::Error>(())
/// ```
///
/// Cancelled, the wait is dropped and no longer keeps the loop alive:
///
/// ```
/// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let event_loop = thenable::EventLoop::new();
/// let ready = thenable::io::readable(&socket); // nobody will ever send
/// assert!(ready.cancel());
/// event_loop.run()?; // returns: nothing waits any more
/// # Ok::<_, thenable::Error>(())
/// ```
pub fn readable(source: &(impl AsFd + ?Sized)) -> Promise<()> {
    ready_promise(source, Direction::Read)
}

/// A promise that fulfils once `source` may be written without blocking: there is
/// room in its send buffer, a non-blocking connect has finished, or the peer is
/// gone (a write then fails with the reason). The seeds' `writability(sock)`.
///
/// Everything said for [`readable`] holds here too: any pollable descriptor, a
/// duplicate armed once, fulfilled at once for a regular file, cancel to stop
/// waiting.
///
/// ```
/// use thenable::io::writable;
///
/// let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let to_self = socket.local_addr()?;
/// let sent = writable(&socket).then(move |()| Ok(socket.send_to(b"ping", to_self)?));
/// assert_eq!(thenable::block_on(sent)?, 4);
/// # Ok::<_, thenable::Error>(())
/// ```
pub fn writable(source: &(impl AsFd + ?Sized)) -> Promise<()> {
    ready_promise(source, Direction::Write)
}

fn ready_promise(source: &(impl AsFd + ?Sized), direction: Direction) -> Promise<()> {
    // A duplicate, so the promise owns what it registers: the caller may close or
    // drop `source` at any time without the poller ever holding a closed descriptor.
    let watched = match source.as_fd().try_clone_to_owned() {
        Ok(fd) => Async::new(fd),
        Err(error) => Err(error),
    };
    let watched: Async<OwnedFd> = match watched {
        Ok(watched) => watched,
        // EPERM: epoll does not watch regular files, which never block.
        Err(error) if error.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            return Promise::resolved(());
        }
        Err(error) => return Promise::rejected(Error::new(error)),
    };
    // Dropping the task's future (the promise cancelled, or its loop dropped)
    // drops `watched`: deregistered, then closed.
    spawn(async move {
        watched.wait(direction).await?;
        Ok(())
    })
}

/// A non-blocking I/O object registered with the loop of the thread that wrapped it.
///
/// Operations that would block wait for readiness instead: [`readable`] and
/// [`writable`] are futures, [`read_with`] and [`write_with`] retry an operation
/// until it stops returning `WouldBlock`. While a task waits on it, the object keeps
/// its loop alive.
///
/// [`readable`]: Async::readable
/// [`writable`]: Async::writable
/// [`read_with`]: Async::read_with
/// [`write_with`]: Async::write_with
///
/// ```
/// use std::io::{Read, Write};
/// use std::net::{TcpListener, TcpStream};
/// use thenable::io::Async;
///
/// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
/// let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
/// let (server, _) = listener.accept().unwrap();
/// server.set_nonblocking(true).unwrap();
/// let server = Async::new(server).unwrap();
///
/// client.write_all(b"ping").unwrap();
/// let got = thenable::block_on(async {
///     let mut buf = [0; 4];
///     let n = server.read_with(|mut s| s.read(&mut buf)).await?;
///     Ok::<_, std::io::Error>(buf[..n].to_vec())
/// });
/// assert_eq!(got.unwrap(), b"ping");
/// ```
pub struct Async<T: AsFd> {
    source: Arc<Source>,
    home: LoopRef,
    io: Option<T>,
}

impl<T: AsFd> Async<T> {
    /// Registers `io` with this thread's loop. `io` must already be in non-blocking
    /// mode (for std sockets: `set_nonblocking(true)`), or operations would block
    /// the loop.
    ///
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap();
    /// assert!(socket.get_ref().local_addr().is_ok());
    /// ```
    ///
    /// `io` is owned (`T: 'static`: a socket, an `Arc` of one, not a borrow of
    /// one). The loop keeps the descriptor's number until the `Async` is dropped;
    /// an `Async` that is forgotten instead keeps `io`, and so its descriptor, open
    /// for ever, so that number can never come to name another file. To wait on a
    /// borrowed object, use [`readable`] and
    /// [`writable`].
    ///
    /// ```compile_fail
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let borrowing = thenable::io::Async::new(&socket); // `&socket` is not 'static
    /// std::mem::forget(borrowing);
    /// drop(socket);
    /// ```
    pub fn new(io: T) -> io::Result<Async<T>>
    where
        T: 'static,
    {
        let home = context::with_current(|local| local.shared.clone());
        let source = home.reactor().register(io.as_fd())?;
        Ok(Async {
            source,
            home,
            io: Some(io),
        })
    }

    /// The wrapped object.
    ///
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap();
    /// assert!(socket.get_ref().local_addr().unwrap().ip().is_loopback());
    /// ```
    pub fn get_ref(&self) -> &T {
        self.io.as_ref().expect("present until dropped")
    }

    /// Deregisters and gives the object back (still in non-blocking mode).
    ///
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap().into_inner();
    /// assert!(socket.local_addr().is_ok());
    /// ```
    pub fn into_inner(mut self) -> T {
        let io = self.io.take().expect("present until dropped");
        self.home.reactor().deregister(&self.source, io.as_fd());
        io
    }

    fn poll_ready(&self, direction: Direction, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let foreign = self.check_home()?;
        let fd = self.get_ref().as_fd();
        let poll = self
            .home
            .reactor()
            .poll_ready(&self.source, fd, direction, None, false, cx);
        self.watch_if_foreign(foreign, poll, None)
    }

    /// Waiting from another loop than the one the object is registered with would
    /// hang: readiness is only ever reported to the home loop, which nobody drives.
    /// Otherwise true if no loop runs on this thread: another executor polls.
    fn check_home(&self) -> io::Result<bool> {
        match context::with_running(|local| Arc::ptr_eq(&local.shared, &self.home)) {
            Some(false) => Err(io::Error::other(
                "thenable: this I/O object is registered with another event loop (it was \
                 created before this loop was, or on another thread); create it once the \
                 loop that uses it exists",
            )),
            Some(true) => Ok(false),
            None => Ok(true),
        }
    }

    /// A wait left by another executor's poll: the home loop may never turn to
    /// see its readiness, so the reactor's watcher looks out for it while
    /// nobody drives the loop. The first such wait starts the watcher, which
    /// takes descriptors and a thread: a process out of them gets the error,
    /// as from any I/O call, and the wait (`ticket`'s) is taken back. An
    /// anonymous one stays, as it would have, until readiness or the object's
    /// end.
    fn watch_if_foreign(
        &self,
        foreign: bool,
        poll: Poll<io::Result<()>>,
        ticket: Option<&mut Ticket>,
    ) -> Poll<io::Result<()>> {
        if foreign && poll.is_pending() {
            if let Err(error) = self.home.start_watcher() {
                if let Some(ticket) = ticket {
                    self.withdraw(ticket);
                }
                return Poll::Ready(Err(error));
            }
            self.home.watch_foreign_waits();
        }
        poll
    }

    /// Like [`poll_readable`](Self::poll_readable) / [`poll_writable`](Self::poll_writable)
    /// (by the ticket's direction), for a caller that keeps `ticket` and hands it to
    /// [`withdraw`](Self::withdraw) when it stops waiting.
    pub(crate) fn poll_ready_with(
        &self,
        ticket: &mut Ticket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_ticket(ticket, false, cx)
    }

    /// Like [`poll_ready_with`](Self::poll_ready_with), right after the operation
    /// returned `WouldBlock` (see [`Reactor::poll_ready`]).
    pub(crate) fn poll_ready_after_would_block(
        &self,
        ticket: &mut Ticket,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_ticket(ticket, true, cx)
    }

    fn poll_ticket(
        &self,
        ticket: &mut Ticket,
        would_block: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let foreign = self.check_home()?;
        let fd = self.get_ref().as_fd();
        let direction = ticket.direction();
        let poll = self.home.reactor().poll_ready(
            &self.source,
            fd,
            direction,
            Some(ticket),
            would_block,
            cx,
        );
        self.watch_if_foreign(foreign, poll, Some(ticket))
    }

    /// Takes back the wait registered under `ticket`, if any.
    pub(crate) fn withdraw(&self, ticket: &mut Ticket) {
        let fd = self.get_ref().as_fd();
        self.home.reactor().withdraw(&self.source, fd, ticket);
    }

    /// Wakes the tasks waiting to read, as readiness would: what they wait for
    /// may be there without the kernel knowing (taken by an operation whose
    /// promise was cancelled, and given back; see `net`). One that finds nothing
    /// waits again.
    pub(crate) fn wake_readers(&self) {
        self.home.reactor().wake_readers(&self.source);
    }

    /// A future of readiness in `direction` whose wait is withdrawn if it is
    /// dropped first.
    pub(crate) fn wait(&self, direction: Direction) -> Wait<'_, T> {
        Wait {
            io: self,
            ticket: Ticket::new(direction),
        }
    }

    /// Ready when the object may be readable (a retry may still see `WouldBlock`).
    ///
    /// When pending, the waker stays registered until the object becomes readable
    /// or is dropped, and until then keeps the loop alive, even if the caller
    /// stops polling. The [`readable`](Self::readable) future withdraws its wait
    /// when dropped instead.
    ///
    /// ```
    /// # use std::task::Poll;
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap();
    /// let waker = futures::task::noop_waker();
    /// let mut cx = std::task::Context::from_waker(&waker);
    /// assert!(socket.poll_readable(&mut cx).is_pending()); // nothing sent yet
    /// ```
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ready(Direction::Read, cx)
    }

    /// Ready when the object may be writable. A pending wait stays registered as
    /// with [`poll_readable`](Self::poll_readable); [`writable`](Self::writable)
    /// withdraws its wait when dropped.
    ///
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap();
    /// thenable::block_on(async { socket.writable().await }).unwrap();
    /// ```
    pub fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_ready(Direction::Write, cx)
    }

    /// Waits until the object may be readable (the seeds' `readability(sock)`).
    /// Dropped before that, the future withdraws its wait: a source nobody waits on
    /// is disarmed and does not keep the loop alive.
    ///
    /// ```
    /// let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// b.set_nonblocking(true).unwrap();
    /// let b_addr = b.local_addr().unwrap();
    /// let b = thenable::io::Async::new(b).unwrap();
    /// a.send_to(b"hi", b_addr).unwrap();
    /// thenable::block_on(async { b.readable().await }).unwrap();
    /// ```
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        self.wait(Direction::Read)
    }

    /// Waits until the object may be writable (the seeds' `writability(sock)`).
    /// Dropped before that, the future withdraws its wait.
    ///
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap();
    /// thenable::block_on(async { socket.writable().await }).unwrap();
    /// ```
    pub fn writable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        self.wait(Direction::Write)
    }

    /// Runs a non-blocking read operation, waiting for readability each time it
    /// returns `WouldBlock`.
    ///
    /// ```
    /// let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// b.set_nonblocking(true).unwrap();
    /// let b_addr = b.local_addr().unwrap();
    /// let b = thenable::io::Async::new(b).unwrap();
    /// a.send_to(b"hello", b_addr).unwrap();
    /// let mut buf = [0; 16];
    /// let (n, _from) = thenable::block_on(b.read_with(|s| s.recv_from(&mut buf))).unwrap();
    /// assert_eq!(&buf[..n], b"hello");
    /// ```
    pub async fn read_with<R>(&self, op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.retry(Direction::Read, op).await
    }

    /// Runs a non-blocking write operation, waiting for writability each time it
    /// returns `WouldBlock`.
    ///
    /// ```
    /// let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// let to = a.local_addr().unwrap();
    /// let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// b.set_nonblocking(true).unwrap();
    /// let b = thenable::io::Async::new(b).unwrap();
    /// let sent = thenable::block_on(b.write_with(|s| s.send_to(b"hi", to))).unwrap();
    /// assert_eq!(sent, 2);
    /// ```
    pub async fn write_with<R>(&self, op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.retry(Direction::Write, op).await
    }

    /// Runs `op` until it stops returning `WouldBlock`, waiting for readiness in
    /// `direction` in between; the wait is withdrawn if the future is dropped.
    async fn retry<R>(
        &self,
        direction: Direction,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut wait = self.wait(direction);
        std::future::poll_fn(|cx| loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(wait.poll_ready_after_would_block(cx))?
                }
                done => return Poll::Ready(done),
            }
        })
        .await
    }
}

/// Readiness of an [`Async`] in one direction ([`Async::wait`]); dropped while
/// pending, it withdraws its wait from the reactor.
pub(crate) struct Wait<'a, T: AsFd> {
    io: &'a Async<T>,
    ticket: Ticket,
}

impl<T: AsFd> Wait<'_, T> {
    /// Ready, or registered (again) to be woken; may be polled after it was ready,
    /// to wait for the next readiness.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_ready_with(&mut self.ticket, cx)
    }

    /// [`poll_ready`](Self::poll_ready) right after the operation returned
    /// `WouldBlock`.
    pub(crate) fn poll_ready_after_would_block(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.poll_ready_after_would_block(&mut self.ticket, cx)
    }
}

impl<T: AsFd> Future for Wait<'_, T> {
    type Output = io::Result<()>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_ready(cx)
    }
}

impl<T: AsFd> Drop for Wait<'_, T> {
    fn drop(&mut self) {
        self.io.withdraw(&mut self.ticket);
    }
}

impl<T: AsFd + std::fmt::Debug> std::fmt::Debug for Async<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Async").field("io", &self.io).finish()
    }
}

impl<T: AsFd> Drop for Async<T> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            // Deregistered before `io` is dropped (closed): the poller never sees a
            // closed or reused descriptor under this source's key.
            self.home.reactor().deregister(&self.source, io.as_fd());
            drop(io);
        }
    }
}

// Standard input as lines: in its own file, as it owns more than readiness.
mod stdin;
pub use self::stdin::*;
