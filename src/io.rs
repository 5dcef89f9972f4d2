//! I/O readiness on the loop: [`Async<T>`] wraps a non-blocking socket or pipe and
//! turns "would block" into a wait on the loop's reactor.
//!
//! This module owns the registration of one I/O object with its loop's poller and
//! the retry loop of non-blocking operations. It never blocks the loop thread, and
//! never closes a descriptor that is still registered: `Async` deregisters in its
//! `Drop`, before the object it wraps is dropped.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::event_loop::context::{self, LoopRef};
use crate::reactor::{Direction, Source};

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
    pub fn new(io: T) -> io::Result<Async<T>> {
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
    /// let _addr = socket.get_ref().local_addr().unwrap();
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
        let fd = self.get_ref().as_fd();
        self.home
            .reactor()
            .poll_ready(&self.source, fd, direction, cx)
    }

    /// Ready when the object may be readable (a retry may still see `WouldBlock`).
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

    /// Ready when the object may be writable.
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
        poll_fn(|cx| self.poll_readable(cx))
    }

    /// Waits until the object may be writable (the seeds' `writability(sock)`).
    ///
    /// ```
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    /// socket.set_nonblocking(true).unwrap();
    /// let socket = thenable::io::Async::new(socket).unwrap();
    /// thenable::block_on(async { socket.writable().await }).unwrap();
    /// ```
    pub fn writable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        poll_fn(|cx| self.poll_writable(cx))
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
    pub async fn read_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                done => return done,
            }
        }
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
    pub async fn write_with<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        loop {
            match op(self.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                done => return done,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn open_descriptors() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
    }

    #[test]
    fn descriptors_are_not_leaked_or_reused() {
        let event_loop = crate::EventLoop::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let before = open_descriptors();
        for round in 0..50u8 {
            let mut client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            let server = Async::new(server).unwrap();
            client.write_all(&[round]).unwrap();
            let got = event_loop
                .block_on(async {
                    let mut byte = [0];
                    server.read_with(|mut s| s.read(&mut byte)).await?;
                    Ok::<_, io::Error>(byte[0])
                })
                .unwrap();
            // A stale registration of a reused descriptor number would deliver the
            // wrong socket's readiness, or none: each round reads its own byte.
            assert_eq!(got, round);
        }
        event_loop.run().unwrap(); // nothing armed is left: returns
        assert_eq!(open_descriptors(), before);
    }
}

// Standard input as lines: in its own file, as it owns more than readiness.
mod stdin;
pub use self::stdin::*;
