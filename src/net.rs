//! TCP and UDP on the loop: [`TcpListener`], [`TcpStream`] and [`UdpSocket`].
//!
//! Every operation that waits returns a [`Promise`], so it can be chained with
//! `then` or awaited. The work starts when the method is called (as in
//! JavaScript), on the loop of the calling thread, and never blocks that thread:
//! sockets are non-blocking and registered with the loop's reactor through
//! [`Async`]. Failures reject with an [`Error`] that wraps the `std::io::Error`, so
//! `err.downcast_ref::<std::io::Error>().unwrap().kind()` tells what happened.
//!
//! ```
//! use thenable::net::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let server = thenable::spawn(async move {
//!     let (conn, _peer) = listener.accept().await?;
//!     let line = conn.read_line(1024).await?.unwrap_or_default();
//!     conn.write_all(format!("echo: {line}\n")).await
//! });
//! let reply = TcpStream::connect(addr)
//!     .then(|client| client.write_all("hi\n").map(move |()| client))
//!     .then(|client| client.read_line(1024));
//! assert_eq!(thenable::block_on(reply)?.as_deref(), Some("echo: hi"));
//! thenable::block_on(server)?;
//! # Ok::<_, thenable::Error>(())
//! ```
//!
//! A socket belongs to the loop that was current where it was created (the running
//! loop, or else the thread's ambient one, see [`EventLoop`](crate::EventLoop)): use
//! it from that loop. This module owns the sockets' buffering and the mapping of
//! their operations onto readiness; it never blocks the loop thread and never
//! touches the reactor except through [`Async`].
//!
//! `TcpStream` also implements the `futures-io` traits `AsyncRead`, `AsyncBufRead`
//! and `AsyncWrite`, for codecs and utilities written against them. Its inherent
//! methods (which return promises) share names with the methods of the extension
//! traits (`AsyncReadExt::read` and so on); with those traits in scope, call the
//! trait forms by path: `AsyncReadExt::read(&mut stream, &mut buf)`.

use std::any::Any;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::{
    self as std_net, IpAddr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs,
};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use futures_io::{AsyncBufRead, AsyncRead, AsyncWrite};
use parking_lot::Mutex;

use crate::error::Error;
use crate::event_loop::{spawn, spawn_send};
use crate::io::{Async, Direction, Ticket};
use crate::promise::core::{Link, Lock};
use crate::promise::{Promise, Settler};
use crate::task::TaskOutput;

/// How much a buffered read asks the socket for at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A read into a smaller buffer than this reads this much ahead (see
/// `StreamBuffers::read`).
const READ_AHEAD: usize = 2048;
/// The most a single buffered read asks for, however much `read_exact` wants.
const MAX_READ_CHUNK: usize = 1024 * 1024;
/// The most room a stream's read buffer keeps once it no longer needs it (see
/// `ReadBuffer::fill_from`): a message of megabytes, once delivered, does not
/// hold its size in memory for the rest of the connection.
const KEPT_READ_CAPACITY: usize = 4 * READ_CHUNK;
/// The most one `recv_from` makes room for, however large its limit: no UDP
/// datagram is longer.
const MAX_DATAGRAM: usize = 64 * 1024;
/// How many queued writes go out in one `writev`.
const MAX_WRITE_SLICES: usize = 32;
/// The stack of the helper thread that resolves names (see
/// [`TcpStream::connect`]); name resolution needs more than the bare minimum.
const CONNECT_THREAD_STACK: usize = 256 * 1024;

fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

/// The first `len` bytes of `bytes`, without the room a read made for more
/// when it mostly went unused: a caller keeping many small chunks read with a
/// large limit would otherwise keep the limit's worth of memory for each (Node.js
/// shrinks its read buffers so, too).
fn fitted(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes.truncate(len);
    if bytes.capacity() / 2 > len {
        bytes.shrink_to_fit();
    }
    bytes
}

/// A TCP socket listening for connections.
///
/// ```
/// use thenable::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let peer = thenable::block_on(async move {
///     let client = TcpStream::connect(addr).await?;
///     let (_conn, peer) = listener.accept().await?;
///     assert_eq!(peer, client.local_addr()?);
///     Ok::<_, thenable::Error>(peer)
/// })?;
/// assert!(peer.ip().is_loopback());
/// # Ok::<_, thenable::Error>(())
/// ```
pub struct TcpListener {
    shared: Arc<ListenerShared>,
}

struct ListenerShared {
    socket: Async<std_net::TcpListener>,
    /// Connections accepted for promises cancelled first, for the next accept.
    given_back: GivenBack<(TcpStream, SocketAddr)>,
}

impl TcpListener {
    /// Binds and listens on `addr` (port 0: a free port, see
    /// [`local_addr`](Self::local_addr)). Binding does not wait, so it returns
    /// directly. Name resolution, if `addr` is a host name, happens here, on this
    /// thread: bind to addresses rather than names inside a busy loop.
    ///
    /// ```
    /// let listener = thenable::net::TcpListener::bind("127.0.0.1:0")?;
    /// assert_ne!(listener.local_addr()?.port(), 0);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::from_std(std_net::TcpListener::bind(addr)?)
    }

    /// Takes over a listener made with the standard library: switches it to
    /// non-blocking mode and registers it with this thread's loop.
    ///
    /// ```
    /// let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let addr = std_listener.local_addr()?;
    /// let listener = thenable::net::TcpListener::from_std(std_listener)?;
    /// assert_eq!(listener.local_addr()?, addr);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn from_std(listener: std_net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            shared: Arc::new(ListenerShared {
                socket: Async::new(listener)?,
                given_back: GivenBack::default(),
            }),
        })
    }

    /// The address the listener is bound to.
    ///
    /// ```
    /// let listener = thenable::net::TcpListener::bind("127.0.0.1:0")?;
    /// assert!(listener.local_addr()?.ip().is_loopback());
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.get_ref().local_addr()
    }

    /// The next connection and the peer's address.
    ///
    /// While it waits, the promise keeps the listening socket open (and the loop
    /// alive), even if the `TcpListener` itself is dropped; cancel the promise to
    /// stop waiting.
    ///
    /// After running out of descriptors or memory, the promise rejects only after
    /// a pause of 10 ms, as [`incoming`](Self::incoming) does: the connection
    /// stays queued, so a server that skips the error and accepts again would
    /// otherwise fail at once, for ever, without giving the loop back.
    ///
    /// Cancelled on another thread just as its task accepted a connection, the
    /// promise loses nothing: the connection goes to the next `accept` (or
    /// [`incoming`](Self::incoming)).
    ///
    /// ```
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let client = TcpStream::connect(listener.local_addr()?);
    /// let accepted = listener.accept().map(|(conn, _peer)| conn.peer_addr());
    /// let client = thenable::block_on(client)?;
    /// assert_eq!(thenable::block_on(accepted)??, client.local_addr()?);
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn accept(&self) -> Promise<(TcpStream, SocketAddr)> {
        let shared = self.shared.clone();
        spawn_send(async move {
            let accepted = shared
                .socket
                .read_with(|listener| match shared.given_back.take() {
                    Some(given_back) => Ok(Accepted::GivenBack(given_back)),
                    None => listener.accept().map(Accepted::New),
                })
                .await;
            let outcome = match accepted {
                Ok(Accepted::GivenBack(connection)) => Ok(connection),
                Ok(Accepted::New((stream, peer))) => {
                    TcpStream::from_std(stream).map(|stream| (stream, peer))
                }
                Err(error) => {
                    if out_of_resources(&error) {
                        // Cancelled meanwhile, the sleep's timer ends on its own soon.
                        let _ = crate::sleep(ACCEPT_PAUSE).await;
                    }
                    Err(error)
                }
            };
            OrGiveBack::new(outcome, shared)
        })
    }

    /// The connections, as a [`Stream`] that never ends (like std's `incoming`).
    /// An error, such as running out of file descriptors, is yielded and the stream
    /// goes on with the next connection; after running out of descriptors or
    /// memory it first pauses 10 ms, so that a caller skipping errors gives the
    /// loop back (to the connections whose closing frees a descriptor). The stream
    /// keeps the listening socket open while it exists.
    ///
    /// ```
    /// use futures::StreamExt;
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// let mut incoming = listener.incoming();
    /// let count = thenable::block_on(async move {
    ///     let clients = [TcpStream::connect(addr), TcpStream::connect(addr)];
    ///     let mut accepted = 0;
    ///     while accepted < clients.len() {
    ///         let _conn = incoming.next().await.expect("never ends")?;
    ///         accepted += 1;
    ///     }
    ///     Ok::<_, thenable::Error>(accepted)
    /// })?;
    /// assert_eq!(count, 2);
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn incoming(&self) -> Incoming {
        Incoming {
            shared: self.shared.clone(),
            wait: Ticket::new(Direction::Read),
            pause: None,
        }
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

/// The listening socket, for [`io::readable`](crate::io::readable) (ready: a
/// connection waits to be accepted) and other descriptor-level APIs.
///
/// ```
/// use std::os::fd::AsFd;
///
/// let listener = thenable::net::TcpListener::bind("127.0.0.1:0")?;
/// let pending = thenable::io::readable(&listener);
/// let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
/// thenable::block_on(pending)?; // someone is at the door
/// assert!(listener.as_fd().try_clone_to_owned().is_ok());
/// # Ok::<_, thenable::Error>(())
/// ```
impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.socket.get_ref().as_fd()
    }
}

/// What an accept's attempt found.
enum Accepted {
    New((std_net::TcpStream, SocketAddr)),
    GivenBack((TcpStream, SocketAddr)),
}

/// A connection accepted for a promise that was cancelled first goes to the
/// next accept, which the readiness of the listening socket (drained of it)
/// would not wake.
impl GiveBack<(TcpStream, SocketAddr)> for Arc<ListenerShared> {
    fn give_back(self, outcome: Result<(TcpStream, SocketAddr), Error>) {
        // An error took nothing: the connection that caused it, if any, is
        // still queued and fails the next accept again.
        if let Ok(connection) = outcome {
            self.given_back.give_back(connection);
            self.socket.wake_readers();
        }
    }
}

/// The connections of a [`TcpListener`], from [`TcpListener::incoming`].
///
/// ```
/// use futures::StreamExt;
///
/// let listener = thenable::net::TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let mut incoming = listener.incoming();
/// drop(listener); // the stream keeps the socket open
/// let _client = std::net::TcpStream::connect(addr)?;
/// let conn = thenable::block_on(async move { incoming.next().await.unwrap() })?;
/// assert!(conn.peer_addr()?.ip().is_loopback());
/// # Ok::<_, thenable::Error>(())
/// ```
pub struct Incoming {
    shared: Arc<ListenerShared>,
    /// Withdrawn when the stream is dropped while it waits for a connection.
    wait: Ticket,
    /// Set after an error that leaves the connection queued (out of descriptors or
    /// memory): the listener stays readable, so accepting again at once would fail
    /// at once, for ever, and a caller that skips errors would never give the loop
    /// back (tasks run as microtasks), not even to the connections whose closing
    /// frees a descriptor. The next poll waits for this pause first (Go's
    /// `net/http` pauses too).
    pause: Option<Promise<()>>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.shared.socket.withdraw(&mut self.wait);
        if let Some(pause) = self.pause.take() {
            pause.cancel(); // or its timer would keep the loop alive
        }
    }
}

/// How long [`Incoming`] waits before accepting again after running out of
/// descriptors or memory.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// An accept error that leaves the connection queued, to fail again if retried.
fn out_of_resources(error: &io::Error) -> bool {
    use rustix::io::Errno;
    let resource_errors = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM];
    resource_errors
        .iter()
        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}

impl Stream for Incoming {
    type Item = Result<TcpStream, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pause) = &mut this.pause {
            // A cancelled or failed pause is over too.
            let _ = ready!(Pin::new(pause).poll(cx));
            this.pause = None;
        }
        loop {
            if let Some((stream, _peer)) = this.shared.given_back.take() {
                return Poll::Ready(Some(Ok(stream)));
            }
            match this.shared.socket.get_ref().accept() {
                Ok((stream, _peer)) => {
                    return Poll::Ready(Some(TcpStream::from_std(stream).map_err(Error::from)))
                }
                Err(e) if would_block(&e) => {
                    let socket = &this.shared.socket;
                    let ready = socket.poll_ready_after_would_block(&mut this.wait, cx);
                    if let Err(e) = ready!(ready) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                Err(e) => {
                    if out_of_resources(&e) {
                        this.pause = Some(crate::sleep(ACCEPT_PAUSE));
                    }
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field(
                "local_addr",
                &self.shared.socket.get_ref().local_addr().ok(),
            )
            .finish()
    }
}

/// A TCP connection.
///
/// Reads go through a buffer kept with the socket, so no byte is lost between
/// operations: what `read_line` read past the end of its line, what a cancelled
/// `read_exact` had gathered, is there for the next read. So is what a read took
/// when its promise was cancelled (on another thread) as its task finished: it
/// goes back to the front of the buffer. Writes are queued in the order they
/// were called and go out in that order, however the promises are awaited; a
/// write's promise fulfils once its bytes were handed to the kernel.
///
/// Clones share the socket, its read buffer and its write queue (cheap: one
/// `Arc`), which is how a promise can own the connection while you keep a handle,
/// and how one task can read while another writes. The socket closes when the
/// last clone and the last operation in flight are gone.
///
/// ```
/// use thenable::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// thenable::block_on(async move {
///     let client = TcpStream::connect(addr).await?;
///     let (server, _) = listener.accept().await?;
///     let _ = client.write_all("one\ntwo\n");
///     client.shutdown(std::net::Shutdown::Write).await?;
///     assert_eq!(server.read_line(100).await?.as_deref(), Some("one"));
///     assert_eq!(server.read_line(100).await?.as_deref(), Some("two"));
///     assert_eq!(server.read_line(100).await?, None); // end of stream
///     Ok::<_, thenable::Error>(())
/// })?;
/// # Ok::<_, thenable::Error>(())
/// ```
pub struct TcpStream {
    shared: Arc<StreamShared>,
    /// A copy of the front of the shared buffer that this handle's
    /// `poll_fill_buf` lent (`AsyncBufRead` must lend a slice that outlives the
    /// call, which the shared buffer behind its lock cannot). The bytes stay in
    /// the shared buffer, so every handle sees them, until `consume` takes them
    /// there too; a copy that another read overtook is stale and dropped.
    lent: Mutex<LentBytes>,
    /// The readiness waits of this handle's `futures-io` reads and writes, withdrawn
    /// when the handle is dropped (the traits' polls have no future of their own
    /// to withdraw them when a caller gives up).
    trait_waits: TraitWaits,
}

struct TraitWaits {
    read: Ticket,
    write: Ticket,
}

impl TraitWaits {
    fn new() -> TraitWaits {
        TraitWaits {
            read: Ticket::new(Direction::Read),
            write: Ticket::new(Direction::Write),
        }
    }
}

struct StreamShared {
    socket: Async<std_net::TcpStream>,
    /// A spin lock: held across a non-blocking `recv` or `send`, nearly always
    /// by the loop's own thread, and unlocked by a plain store where
    /// `parking_lot`'s unlock is a locked compare-exchange.
    buffers: Lock<StreamBuffers>,
}

#[derive(Default)]
struct StreamBuffers {
    inbound: ReadBuffer,
    outbound: WriteQueue,
    /// What the next read from the socket must know (see [`SocketReader`]).
    socket_state: SocketState,
    /// Where a small read reads ahead (see [`StreamBuffers::read`]): zeroed once, when
    /// first needed, not at each read.
    ahead: Vec<u8>,
}

impl StreamBuffers {
    /// The inbound buffer, and the socket to read more into it.
    fn reader<'a>(
        &'a mut self,
        socket: &'a std_net::TcpStream,
    ) -> (&'a mut ReadBuffer, SocketReader<'a>) {
        let reader = SocketReader {
            socket,
            state: &mut self.socket_state,
        };
        (&mut self.inbound, reader)
    }

    /// `poll_read`'s operation: from what is buffered, else from the socket. A
    /// read into a buffer smaller than [`READ_AHEAD`] reads that much ahead,
    /// keeping the rest: a read that drains the socket then comes back short,
    /// and the next one waits for readiness without a system call that would
    /// fail (see [`SocketReader`]). A client reading 64-byte replies, as
    /// `echo`'s, saves a `recvfrom` per reply.
    fn read(&mut self, socket: &std_net::TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let inbound = &mut self.inbound;
        if !inbound.is_empty() {
            let n = inbound.len().min(buf.len());
            buf[..n].copy_from_slice(&inbound.filled()[..n]);
            inbound.consume(n);
            return Ok(n);
        }
        let mut socket = SocketReader {
            socket,
            state: &mut self.socket_state,
        };
        // A read of nothing goes to the socket: read ahead, it would take bytes
        // nobody asked for out of the kernel's view (readiness).
        if buf.is_empty() || buf.len() >= READ_AHEAD {
            return socket.read(buf);
        }
        let ahead = &mut self.ahead;
        ahead.resize(READ_AHEAD, 0);
        let n = socket.read(ahead)?;
        let given = n.min(buf.len());
        buf[..given].copy_from_slice(&ahead[..given]);
        inbound.extend(&ahead[given..n]);
        Ok(given)
    }
}

/// Reads from the socket, but answers `WouldBlock` without a system call when the
/// last read returned fewer bytes than it asked for: the kernel had no more then,
/// so asking again at once would only fail. The read after that one is real, once
/// the caller has armed its wait. Nothing is missed: interest is
/// level-triggered, so the next poll reports a socket that became readable
/// meanwhile, an end of stream included. (The echo server of `cargo bench --bench compare`
/// makes one system call fewer per message.)
///
/// An error given back by a read whose promise was cancelled comes first, as
/// the socket would have reported it.
struct SocketReader<'a> {
    socket: &'a std_net::TcpStream,
    state: &'a mut SocketState,
}

#[derive(Default)]
struct SocketState {
    /// What the next read does before it asks the kernel: one test of one
    /// byte, as the flag of a short read alone was (testing the error too
    /// cost `echo`'s short reads 5 instructions each).
    next: NextRead,
    /// An error the socket reported to a read whose promise was cancelled first,
    /// for the next read from the socket to report (the kernel reports one
    /// once: a connection reset, then the end of the stream).
    given_back_error: Option<io::Error>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum NextRead {
    #[default]
    Ask,
    /// The last read came back short: answer `WouldBlock`.
    Drained,
    /// Report `given_back_error`.
    Report,
}

impl SocketState {
    fn give_back(&mut self, error: io::Error) {
        self.given_back_error = Some(error);
        self.next = NextRead::Report;
    }

    #[cold]
    fn report(&mut self) -> Option<io::Error> {
        if self.next != NextRead::Report {
            return None;
        }
        self.next = NextRead::Ask;
        self.given_back_error.take()
    }
}

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let state = &mut *self.state;
        if state.next != NextRead::Ask {
            // A read of nothing asks the kernel, and leaves the next one to it.
            if state.next == NextRead::Drained && !buf.is_empty() {
                state.next = NextRead::Ask;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if let Some(error) = state.report() {
                return Err(error);
            }
        }
        let result = (&mut &*self.socket).read(buf);
        state.next = if matches!(result, Ok(n) if n > 0 && n < buf.len()) {
            NextRead::Drained
        } else {
            NextRead::Ask
        };
        result
    }
}

/// The addresses `addr` names, when knowing them needs no name lookup (the part of
/// connecting that blocks): a socket address, or text that parses as one.
fn literal_addrs(addr: &dyn Any) -> Option<Vec<SocketAddr>> {
    if let Some(&addr) = addr.downcast_ref::<SocketAddr>() {
        return Some(vec![addr]);
    }
    if let Some(&addr) = addr.downcast_ref::<SocketAddrV4>() {
        return Some(vec![addr.into()]);
    }
    if let Some(&addr) = addr.downcast_ref::<SocketAddrV6>() {
        return Some(vec![addr.into()]);
    }
    if let Some(&(ip, port)) = addr.downcast_ref::<(IpAddr, u16)>() {
        return Some(vec![SocketAddr::new(ip, port)]);
    }
    let text = addr
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| addr.downcast_ref::<String>().map(String::as_str))?;
    text.parse::<SocketAddr>().ok().map(|addr| vec![addr])
}

/// Connects to the first of `addrs` that accepts; the error is the last one's.
async fn connect_to(addrs: Vec<SocketAddr>) -> Result<TcpStream, Error> {
    let mut last_error = None;
    for addr in addrs {
        match connect_one(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    });
    Err(Error::from(error))
}

/// A non-blocking connect: started at once, finished when the socket becomes
/// writable, its outcome read from the socket's pending error.
async fn connect_one(addr: SocketAddr) -> io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let socket = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
    match rustix::net::connect(&socket, &addr) {
        Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
        Err(errno) => return Err(errno.into()),
    }
    let stream = TcpStream::from_std(std_net::TcpStream::from(socket))?;
    stream.shared.socket.writable().await?;
    match stream.shared.socket.get_ref().take_error()? {
        Some(error) => Err(error),
        None => Ok(stream),
    }
}

impl TcpStream {
    /// Connects to `addr`, trying each address it names in turn (as the standard
    /// library does).
    ///
    /// The connection is made without blocking, by the calling thread's loop, and
    /// the socket is registered with that loop. A name (not an IP address) is
    /// resolved on a short-lived helper thread, since resolving blocks (Node.js
    /// resolves names on its thread pool). A refused connection rejects with
    /// `ErrorKind::ConnectionRefused`.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use thenable::net::TcpStream;
    ///
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let free_port = listener.local_addr()?;
    /// drop(listener); // nobody listens there any more
    /// let err = thenable::block_on(TcpStream::connect(free_port)).unwrap_err();
    /// let kind = err.downcast_ref::<std::io::Error>().unwrap().kind();
    /// assert_eq!(kind, ErrorKind::ConnectionRefused);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn connect<A>(addr: A) -> Promise<TcpStream>
    where
        A: ToSocketAddrs + Send + 'static,
    {
        if let Some(addrs) = literal_addrs(&addr) {
            return spawn(connect_to(addrs));
        }
        let (resolved, resolver) = Promise::<Vec<SocketAddr>>::pending();
        let helper = std::thread::Builder::new()
            .name("thenable-resolve".into())
            .stack_size(CONNECT_THREAD_STACK)
            .spawn(move || {
                let addrs = addr.to_socket_addrs().map(Iterator::collect);
                resolver.settle(addrs.map_err(Error::from))
            });
        // If the thread could not start, the resolver went down with its closure
        // and `resolved` is broken: report why instead.
        let spawn_error = helper.err().map(Error::from);
        // Run on the resolver's home loop: the calling loop.
        resolved.then_or_catch(
            |addrs| spawn(connect_to(addrs)),
            move |error| Promise::rejected(spawn_error.unwrap_or(error)),
        )
    }

    /// Takes over a connected stream made with the standard library: switches it to
    /// non-blocking mode and registers it with this thread's loop.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let std_stream = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let stream = thenable::net::TcpStream::from_std(std_stream)?;
    /// assert_eq!(stream.peer_addr()?, listener.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn from_std(stream: std_net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Ok(TcpStream {
            shared: Arc::new(StreamShared {
                socket: Async::new(stream)?,
                buffers: Lock::new(StreamBuffers::default()),
            }),
            lent: Mutex::new(LentBytes::default()),
            trait_waits: TraitWaits::new(),
        })
    }

    /// The address of the other end.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let stream = thenable::net::TcpStream::from_std(std::net::TcpStream::connect(
    ///     listener.local_addr()?,
    /// )?)?;
    /// assert_eq!(stream.peer_addr()?, listener.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.get_ref().peer_addr()
    }

    /// The address of this end.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let stream = thenable::net::TcpStream::from_std(std::net::TcpStream::connect(
    ///     listener.local_addr()?,
    /// )?)?;
    /// let (_server, peer) = listener.accept()?;
    /// assert_eq!(stream.local_addr()?, peer);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.get_ref().local_addr()
    }

    /// Turns Nagle's algorithm off (`true`) or on: with it off, small writes go
    /// out at once instead of waiting to be coalesced.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let stream = thenable::net::TcpStream::from_std(std::net::TcpStream::connect(
    ///     listener.local_addr()?,
    /// )?)?;
    /// stream.set_nodelay(true)?;
    /// assert!(stream.nodelay()?);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.shared.socket.get_ref().set_nodelay(nodelay)
    }

    /// Whether Nagle's algorithm is off (see [`set_nodelay`](Self::set_nodelay)).
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let stream = thenable::net::TcpStream::from_std(std::net::TcpStream::connect(
    ///     listener.local_addr()?,
    /// )?)?;
    /// assert!(!stream.nodelay()?); // the operating system's default
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn nodelay(&self) -> io::Result<bool> {
        self.shared.socket.get_ref().nodelay()
    }

    /// Up to `max_len` bytes, as soon as some are available: buffered bytes first,
    /// else one read from the socket (which may return fewer than were sent: TCP
    /// has no message boundaries). Empty only at the end of the stream (or when
    /// `max_len` is 0).
    ///
    /// ```
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// thenable::block_on(async move {
    ///     let client = TcpStream::connect(addr).await?;
    ///     let (server, _) = listener.accept().await?;
    ///     client.write_all("hello").await?;
    ///     drop(client);
    ///     let mut got = Vec::new();
    ///     loop {
    ///         let chunk = server.read(3).await?;
    ///         if chunk.is_empty() {
    ///             break; // the client closed
    ///         }
    ///         assert!(chunk.len() <= 3);
    ///         got.extend(chunk);
    ///     }
    ///     assert_eq!(got, b"hello");
    ///     Ok::<_, thenable::Error>(())
    /// })?;
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn read(&self, max_len: usize) -> Promise<Vec<u8>> {
        let shared = self.shared.clone();
        spawn_send(async move {
            let bytes = if max_len == 0 {
                Ok(Vec::new())
            } else {
                shared
                    .io(Direction::Read, |buffers, socket| {
                        let (inbound, mut socket) = buffers.reader(socket);
                        if !inbound.is_empty() {
                            return Ok(inbound.take(max_len));
                        }
                        // The limit is a bound, not a size: `usize::MAX` means "what is there".
                        let mut bytes = vec![0; max_len.min(MAX_READ_CHUNK)];
                        let n = socket.read(&mut bytes)?;
                        // As if through the buffer: bytes given back move it back.
                        inbound.taken += n as u64;
                        Ok(fitted(bytes, n))
                    })
                    .await
            };
            OrGiveBack::new(bytes, ToStream::new(shared))
        })
    }

    /// Exactly `len` bytes. If the stream ends first, rejects with
    /// `ErrorKind::UnexpectedEof` and the bytes that did arrive stay buffered for
    /// the next read, as they do if the promise is cancelled, half-way or as the
    /// last bytes arrive.
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// thenable::block_on(async move {
    ///     let client = TcpStream::connect(addr).await?;
    ///     let (server, _) = listener.accept().await?;
    ///     let _ = client.write_all("head");
    ///     client.write_all("er+rest").await?;
    ///     drop(client);
    ///     assert_eq!(server.read_exact(6).await?, b"header");
    ///     let err = server.read_exact(10).await.unwrap_err();
    ///     let kind = err.downcast_ref::<std::io::Error>().unwrap().kind();
    ///     assert_eq!(kind, ErrorKind::UnexpectedEof);
    ///     assert_eq!(server.read(100).await?, b"+rest"); // still there
    ///     Ok::<_, thenable::Error>(())
    /// })?;
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn read_exact(&self, len: usize) -> Promise<Vec<u8>> {
        let shared = self.shared.clone();
        spawn_send(async move {
            let bytes = shared
                .io(Direction::Read, |buffers, socket| {
                    let (inbound, mut socket) = buffers.reader(socket);
                    while inbound.len() < len {
                        let missing = len - inbound.len();
                        let chunk = missing.clamp(READ_CHUNK, MAX_READ_CHUNK);
                        if inbound.fill_from(&mut socket, chunk)? == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("connection closed after {} of {len} bytes", inbound.len()),
                            ));
                        }
                    }
                    Ok(inbound.take(len))
                })
                .await;
            OrGiveBack::new(bytes, ToStream::new(shared))
        })
    }

    /// The next line, without its `\n` (or `\r\n`); `None` at the end of the
    /// stream. Bytes after the line stay buffered for the next read.
    ///
    /// Rejects, with the error kind inside the [`Error`]:
    /// - `InvalidData` if the line is longer than `max_line_len` bytes (not counting
    ///   the terminator). Nothing is consumed (where the line ends is unknown), and
    ///   no more than about `max_line_len` bytes are ever buffered for it: a peer
    ///   cannot make a reader hoard memory. Close the connection, or read on.
    /// - `InvalidData` if the line is not UTF-8; that line is consumed (unless
    ///   the promise was cancelled: then it is the next read's).
    /// - `UnexpectedEof` if the stream ends in the middle of a line (the partial
    ///   line stays buffered).
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// thenable::block_on(async move {
    ///     let client = TcpStream::connect(addr).await?;
    ///     let (server, _) = listener.accept().await?;
    ///     client.write_all("short\r\nthis line is far too long\n").await?;
    ///     assert_eq!(server.read_line(8).await?.as_deref(), Some("short"));
    ///     let err = server.read_line(8).await.unwrap_err();
    ///     let kind = err.downcast_ref::<std::io::Error>().unwrap().kind();
    ///     assert_eq!(kind, ErrorKind::InvalidData);
    ///     Ok::<_, thenable::Error>(())
    /// })?;
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn read_line(&self, max_line_len: usize) -> Promise<Option<String>> {
        let shared = self.shared.clone();
        spawn_send(async move {
            let taken = shared
                .io(Direction::Read, |buffers, socket| {
                    let (inbound, socket) = buffers.reader(socket);
                    take_line(inbound, socket, max_line_len)
                })
                .await;
            let (outcome, rest) = match taken {
                Ok(Some(TakenLine { line, rest })) => (line.map(Some), rest),
                Ok(None) => (Ok(None), Cow::Borrowed(&[][..])),
                Err(error) => (Err(error), Cow::Borrowed(&[][..])),
            };
            OrGiveBack::new(
                outcome,
                ToStream {
                    stream: shared,
                    rest,
                },
            )
        })
    }

    /// Queues `data` to be written, after everything queued before; fulfils once
    /// all of it was handed to the kernel (in as many partial writes as the
    /// socket needs). Cancelling the promise does not take the bytes back: they
    /// go out with the next write, [`flush`](Self::flush) or
    /// [`shutdown`](Self::shutdown), or are dropped with the socket if the last
    /// handle goes first. (A promise dropped without cancelling keeps its task,
    /// and the task keeps the connection open until the bytes are out.)
    ///
    /// Once `shutdown(Write)` (or `Both`, or the `futures-io` `close`) was called
    /// on any handle, even before the end of the stream went out, the promise is
    /// rejected at once with `ErrorKind::BrokenPipe` and nothing is queued.
    ///
    /// ```
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// thenable::block_on(async move {
    ///     let client = TcpStream::connect(addr).await?;
    ///     let (server, _) = listener.accept().await?;
    ///     let big = vec![7u8; 1 << 20];
    ///     let sent = client.write_all(big.clone()); // more than one write can take
    ///     assert_eq!(server.read_exact(big.len()).await?, big);
    ///     sent.await
    /// })?;
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn write_all(&self, data: impl Into<Vec<u8>>) -> Promise<()> {
        let queued = self.shared.buffers.lock().outbound.push(data.into());
        match queued {
            Ok(end) => self.send_queued_until(end),
            Err(e) => Promise::rejected(e.into()),
        }
    }

    /// Fulfils once everything queued so far was handed to the kernel. (There is
    /// no other buffering in between: the kernel sends on its own.)
    ///
    /// ```
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// thenable::block_on(async move {
    ///     let client = TcpStream::connect(addr).await?;
    ///     let (server, _) = listener.accept().await?;
    ///     let _ = client.write_all("a");
    ///     let _ = client.write_all("b");
    ///     client.flush().await?;
    ///     assert_eq!(server.read_exact(2).await?, b"ab");
    ///     Ok::<_, thenable::Error>(())
    /// })?;
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn flush(&self) -> Promise<()> {
        let end = self.shared.buffers.lock().outbound.queued_end();
        self.send_queued_until(end)
    }

    fn send_queued_until(&self, end: u64) -> Promise<()> {
        let shared = self.shared.clone();
        spawn(async move {
            shared
                .io(Direction::Write, |buffers, socket| {
                    buffers.outbound.send_until(NoSigPipe(socket), end)
                })
                .await?;
            Ok(())
        })
    }

    /// Shuts down the reading half, the writing half, or both. Shutting down
    /// writing first sends everything queued when it was called, then tells the
    /// peer no more is coming (it reads the end of the stream) while it can still
    /// send to us: a half-close.
    ///
    /// From the call on, writes on every handle of the connection reject at once
    /// with `ErrorKind::BrokenPipe` (Node.js's "write after end"), so nothing
    /// written meanwhile can slip in before the end or keep it waiting. That holds
    /// even if this promise is cancelled: the queued bytes then go out with a
    /// later [`flush`](Self::flush), but the end of the stream does not.
    ///
    /// ```
    /// use std::net::Shutdown;
    /// use thenable::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// thenable::block_on(async move {
    ///     let client = TcpStream::connect(addr).await?;
    ///     let (server, _) = listener.accept().await?;
    ///     let _ = client.write_all("question");
    ///     client.shutdown(Shutdown::Write).await?;
    ///     let late = client.write_all("more").await.unwrap_err();
    ///     let kind = late.downcast_ref::<std::io::Error>().unwrap().kind();
    ///     assert_eq!(kind, std::io::ErrorKind::BrokenPipe); // write after end
    ///     assert_eq!(server.read_exact(8).await?, b"question");
    ///     assert!(server.read(10).await?.is_empty()); // the client is done sending
    ///     server.write_all("answer").await?; // but still reads
    ///     assert_eq!(client.read_exact(6).await?, b"answer");
    ///     Ok::<_, thenable::Error>(())
    /// })?;
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn shutdown(&self, how: Shutdown) -> Promise<()> {
        // Taken now, not when the task runs: what other handles queue meanwhile
        // is rejected, so it cannot slip in before the end or keep it waiting.
        let end = (how != Shutdown::Read).then(|| self.shared.buffers.lock().outbound.end());
        let shared = self.shared.clone();
        spawn(async move {
            if let Some(end) = end {
                shared
                    .io(Direction::Write, |buffers, socket| {
                        buffers.outbound.send_until(NoSigPipe(socket), end)
                    })
                    .await?;
            }
            shared.socket.get_ref().shutdown(how)?;
            Ok(())
        })
    }
}

impl StreamShared {
    /// Runs `op` with the buffers and the socket until it stops returning
    /// `WouldBlock`, waiting for readiness in the direction of `ticket` in between.
    /// `op` keeps its progress in the buffers, never in locals, so an operation
    /// dropped half-way (a cancelled promise) loses nothing. The waits are
    /// registered under `ticket`, which the caller withdraws when it stops (the
    /// `futures-io` impls keep one per handle and direction).
    fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Ticket,
        op: &mut impl FnMut(&mut StreamBuffers, &std_net::TcpStream) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        loop {
            let result = op(&mut self.buffers.lock(), self.socket.get_ref());
            match result {
                Err(e) if would_block(&e) => {
                    ready!(self.socket.poll_ready_after_would_block(ticket, cx))?
                }
                done => return Poll::Ready(done),
            }
        }
    }

    /// [`poll_io`](Self::poll_io) as a future, for the promise-returning
    /// operations: dropped while waiting (a cancelled promise), it withdraws its
    /// wait, so an idle socket nobody reads any more does not keep the loop alive.
    async fn io<R>(
        &self,
        direction: Direction,
        mut op: impl FnMut(&mut StreamBuffers, &std_net::TcpStream) -> io::Result<R>,
    ) -> io::Result<R> {
        let mut wait = self.socket.wait(direction);
        std::future::poll_fn(|cx| loop {
            let result = op(&mut self.buffers.lock(), self.socket.get_ref());
            match result {
                Err(e) if would_block(&e) => ready!(wait.poll_ready_after_would_block(cx))?,
                done => return Poll::Ready(done),
            }
        })
        .await
    }
}

/// What the task of an operation that takes something out of a socket (bytes,
/// a datagram, a connection) ends with: the outcome for its promise, and where
/// to give the outcome back if the promise was cancelled first. Cancelled on
/// another thread, a task is dropped only when its loop gets to it, after the
/// polls queued before: it may still run, take, and find its promise settled
/// (as cancelled). What it took then goes back where the next operation looks
/// first, as `io::stdin_lines` does with a line (see `docs/design.md`).
struct OrGiveBack<T, B> {
    outcome: Result<T, Error>,
    back: B,
}

impl<T, B> OrGiveBack<T, B> {
    fn new(outcome: io::Result<T>, back: B) -> Self {
        OrGiveBack {
            outcome: outcome.map_err(Error::from),
            back,
        }
    }
}

/// Where an outcome that a cancelled promise did not take goes back to.
trait GiveBack<T> {
    fn give_back(self, outcome: Result<T, Error>);
}

impl<T, B> TaskOutput<T, Error> for OrGiveBack<T, B>
where
    T: Send + 'static,
    B: GiveBack<T>,
{
    fn settle_task<L: Link<T, Error>>(self, settler: &mut Settler<T, Error, L>) {
        if let Some(outcome) = settler.try_settle_as(self.outcome, false) {
            self.back.give_back(outcome);
        }
    }
}

/// What a read took, going back to the front of its stream's read buffer.
struct ToStream {
    stream: Arc<StreamShared>,
    /// The bytes taken that the outcome does not hold: a line's terminator, or
    /// the whole of a line that is not UTF-8 (its error only says so).
    rest: Cow<'static, [u8]>,
}

impl ToStream {
    fn new(stream: Arc<StreamShared>) -> ToStream {
        ToStream {
            stream,
            rest: Cow::Borrowed(&[]),
        }
    }
}

/// The bytes a read's value holds.
trait TakenBytes {
    fn into_taken_bytes(self) -> Vec<u8>;
}

impl TakenBytes for Vec<u8> {
    fn into_taken_bytes(self) -> Vec<u8> {
        self
    }
}

impl TakenBytes for Option<String> {
    fn into_taken_bytes(self) -> Vec<u8> {
        self.map(String::into_bytes).unwrap_or_default()
    }
}

impl<T: TakenBytes> GiveBack<T> for ToStream {
    /// Nothing runs on the loop's thread between the take and this (the task's
    /// future is dropped in between, which runs no code of the caller's), so the
    /// bytes go back exactly where they were taken: the stream's position
    /// (`ReadBuffer::taken`), and so a copy lent by `poll_fill_buf`, stays
    /// right. The readers waiting for readiness are woken: the socket does not
    /// know of these bytes (one that found its read short and waits may have
    /// been overtaken by this one).
    fn give_back(self, outcome: Result<T, Error>) {
        let mut buffers = self.stream.buffers.lock();
        match outcome {
            Ok(value) => {
                let mut bytes = value.into_taken_bytes();
                bytes.extend_from_slice(&self.rest);
                buffers.inbound.give_back(bytes);
            }
            Err(error) => {
                buffers.inbound.give_back(self.rest.into_owned());
                // The errors of our own making (the end of the stream in the
                // middle of something, a line too long) come again by themselves.
                if let Some(again) = reported_by_the_socket(&error) {
                    buffers.socket_state.give_back(again);
                }
            }
        }
        drop(buffers);
        self.stream.socket.wake_readers();
    }
}

/// `error` again, if a system call reported it (the kernel reports a socket's
/// error once).
fn reported_by_the_socket(error: &Error) -> Option<io::Error> {
    let code = error.downcast_ref::<io::Error>()?.raw_os_error()?;
    Some(io::Error::from_raw_os_error(code))
}

/// Outcomes taken for promises that were cancelled first, oldest first, for
/// the next operation to take before it asks the socket (a datagram or a
/// connection cannot be put back in the kernel).
struct GivenBack<T> {
    /// Whether `outcomes` holds any: an operation reads this, a plain load, and
    /// takes the lock only when it does.
    any: AtomicBool,
    outcomes: Mutex<VecDeque<T>>,
}

impl<T> Default for GivenBack<T> {
    fn default() -> Self {
        GivenBack {
            any: AtomicBool::new(false),
            outcomes: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T> GivenBack<T> {
    fn take(&self) -> Option<T> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut outcomes = self.outcomes.lock();
        let taken = outcomes.pop_front();
        self.any.store(!outcomes.is_empty(), Ordering::Release);
        taken
    }

    /// At the front: what an operation gives back is what it took last, before
    /// anything still in the socket, and it looked here first, so it took that
    /// from here if there was anything.
    fn give_back(&self, outcome: T) {
        let mut outcomes = self.outcomes.lock();
        outcomes.push_front(outcome);
        self.any.store(true, Ordering::Release);
    }
}

/// A line [`take_line`] took out of the buffer.
struct TakenLine {
    /// The line without its terminator, or the error of one that is not UTF-8.
    line: io::Result<String>,
    /// The bytes taken that `line` does not hold: its terminator, or, if it is
    /// not UTF-8, the whole line (see [`ToStream::rest`]).
    rest: Cow<'static, [u8]>,
}

/// Takes the next line out of `inbound`, reading more from `socket` as needed (see
/// [`TcpStream::read_line`] for the rules).
fn take_line(
    inbound: &mut ReadBuffer,
    mut socket: impl Read,
    max_line_len: usize,
) -> io::Result<Option<TakenLine>> {
    let too_long = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {max_line_len} bytes"),
        )
    };
    // Where the last search stopped, even if that was in an earlier run of the
    // operation, before a wait: searching the whole buffer again after each wait
    // made a long line cost its length times the reads it took.
    let mut searched = inbound.newline_free;
    loop {
        let filled = inbound.filled();
        #[cfg(test)]
        tests::SEARCHED.set(tests::SEARCHED.get() + filled.len() - searched);
        if let Some(offset) = filled[searched..].iter().position(|&b| b == b'\n') {
            let newline = searched + offset;
            let content_len = if newline > 0 && filled[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            if content_len > max_line_len {
                return Err(too_long());
            }
            let terminator: &'static [u8] = if content_len < newline {
                b"\r\n"
            } else {
                b"\n"
            };
            let mut line = inbound.take(newline + 1);
            line.truncate(content_len);
            return Ok(Some(match String::from_utf8(line) {
                Ok(line) => TakenLine {
                    line: Ok(line),
                    rest: Cow::Borrowed(terminator),
                },
                Err(e) => {
                    let error = io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line is not UTF-8: {}", e.utf8_error()),
                    );
                    let mut whole = e.into_bytes();
                    whole.extend_from_slice(terminator);
                    TakenLine {
                        line: Err(error),
                        rest: Cow::Owned(whole),
                    }
                }
            }));
        }
        // Even a `\r\n` arriving next would leave more than `max_line_len` before it.
        if filled.len() > max_line_len.saturating_add(1) {
            return Err(too_long());
        }
        searched = filled.len();
        inbound.newline_free = searched;
        if inbound.fill_from(&mut socket, READ_CHUNK)? == 0 {
            return match inbound.len() {
                0 => Ok(None),
                partial => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed in the middle of a line ({partial} bytes)"),
                )),
            };
        }
    }
}

impl Clone for TcpStream {
    /// Another handle on the same connection.
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let stream = thenable::net::TcpStream::from_std(std::net::TcpStream::connect(
    ///     listener.local_addr()?,
    /// )?)?;
    /// let writer = stream.clone();
    /// assert_eq!(writer.local_addr()?, stream.local_addr()?);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    fn clone(&self) -> Self {
        TcpStream {
            shared: self.shared.clone(),
            lent: Mutex::new(LentBytes::default()),
            trait_waits: TraitWaits::new(),
        }
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        self.shared.socket.withdraw(&mut self.trait_waits.read);
        self.shared.socket.withdraw(&mut self.trait_waits.write);
    }
}

/// The socket, for [`io::readable`](crate::io::readable) /
/// [`io::writable`](crate::io::writable) and other descriptor-level APIs.
///
/// Readiness is the kernel's view: bytes the stream has already read into its own
/// buffer (past a line that `read_line` returned, or past what a `poll_read` into
/// fewer than 2 KiB asked for: it reads that much ahead) do not make the socket
/// readable, so read through the stream's methods rather than wait on readiness
/// first. Reading or writing the descriptor directly bypasses the stream's buffer
/// and write queue, and mixes their order.
///
/// ```
/// use thenable::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// thenable::block_on(async move {
///     let client = TcpStream::connect(addr).await?;
///     let (server, _) = listener.accept().await?;
///     thenable::io::writable(&client).await?; // an empty send buffer has room
///     let arrived = thenable::io::readable(&server);
///     client.write_all("hi").await?;
///     arrived.await?;
///     assert_eq!(server.read(10).await?, b"hi");
///     Ok::<_, thenable::Error>(())
/// })?;
/// # Ok::<_, thenable::Error>(())
/// ```
impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.socket.get_ref().as_fd()
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local_addr", &self.local_addr().ok())
            .field("peer_addr", &self.peer_addr().ok())
            .finish()
    }
}

/// Reads through the same buffer as the promise-returning methods.
impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What `poll_fill_buf` lent is still in the shared buffer: read from there
        // (the copy goes stale and is dropped by the next `poll_fill_buf`).
        let ticket = &mut this.trait_waits.read;
        this.shared
            .poll_io(cx, ticket, &mut |buffers, socket| buffers.read(socket, buf))
    }
}

impl AsyncBufRead for TcpStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        let lent = this.lent.get_mut();
        if !lent.unconsumed().is_empty() && !lent.is_current(&this.shared.buffers.lock().inbound) {
            *lent = LentBytes::default();
        }
        if lent.unconsumed().is_empty() {
            let (bytes, origin) = ready!(this.shared.poll_io(
                cx,
                &mut this.trait_waits.read,
                &mut |buffers, socket| {
                    let (inbound, socket) = buffers.reader(socket);
                    if inbound.is_empty() {
                        inbound.fill_from(socket, READ_CHUNK)?;
                    }
                    Ok((inbound.filled().to_vec(), inbound.taken))
                }
            ))?;
            *lent = LentBytes {
                bytes,
                consumed: 0,
                origin,
            };
        }
        Poll::Ready(Ok(lent.unconsumed()))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let lent = this.lent.get_mut();
        let amt = amt.min(lent.unconsumed().len());
        let mut buffers = this.shared.buffers.lock();
        if lent.is_current(&buffers.inbound) {
            buffers.inbound.consume(amt);
            lent.consumed += amt;
        } else {
            // Another read took these bytes first: nothing left here to consume.
            *lent = LentBytes::default();
        }
    }
}

/// Writes after everything queued by [`TcpStream::write_all`], keeping the order.
impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.shared.poll_io(
            cx,
            &mut this.trait_waits.write,
            &mut |buffers, mut socket| {
                buffers.outbound.check_open()?;
                let end = buffers.outbound.queued_end();
                buffers.outbound.send_until(NoSigPipe(socket), end)?;
                socket.write(buf)
            },
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shared
            .poll_io(cx, &mut this.trait_waits.write, &mut |buffers, socket| {
                let end = buffers.outbound.queued_end();
                buffers.outbound.send_until(NoSigPipe(socket), end)
            })
    }

    /// Sends what was queued when it was first polled, then shuts down the
    /// writing half, as [`TcpStream::shutdown`] does: writes on any handle after
    /// that first poll fail with `BrokenPipe`.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Ending is idempotent: once ended the queue cannot grow, so a later poll
        // takes the same end as the first one.
        let end = this.shared.buffers.lock().outbound.end();
        ready!(this
            .shared
            .poll_io(cx, &mut this.trait_waits.write, &mut |buffers, socket| {
                buffers.outbound.send_until(NoSigPipe(socket), end)
            }))?;
        Poll::Ready(this.shared.socket.get_ref().shutdown(Shutdown::Write))
    }
}

/// Bytes read from a socket and not yet delivered: a `Vec` consumed from the front.
#[derive(Default)]
struct ReadBuffer {
    bytes: Vec<u8>,
    start: usize,
    /// How many bytes were ever taken from the front (or read past it by
    /// `TcpStream::read`, which may give them back): where `filled` starts in
    /// the stream, which tells a lent copy whether it is still current.
    taken: u64,
    /// How many bytes at the front of `filled` are known to hold no `\n`: where
    /// `take_line`'s next search starts.
    newline_free: usize,
}

impl ReadBuffer {
    fn filled(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn consume(&mut self, n: usize) {
        self.taken += n as u64;
        self.start += n;
        self.newline_free = self.newline_free.saturating_sub(n);
        debug_assert!(self.start <= self.bytes.len());
        if self.start == self.bytes.len() {
            if self.bytes.capacity() > KEPT_READ_CAPACITY {
                self.bytes = Vec::new(); // the room of a large message, not needed now
            } else {
                self.bytes.clear();
            }
            self.start = 0;
        }
    }

    /// Puts `bytes`, just taken from the front, back there: the stream's
    /// position moves back with them.
    fn give_back(&mut self, mut bytes: Vec<u8>) {
        let n = bytes.len();
        if n == 0 {
            return;
        }
        self.taken -= n as u64;
        self.newline_free = if bytes.contains(&b'\n') {
            0
        } else {
            self.newline_free + n
        };
        if self.is_empty() {
            // Taken whole, or read past the buffer: the `Vec` itself comes back.
            self.bytes = bytes;
        } else if self.start >= n {
            self.start -= n;
            self.bytes[self.start..self.start + n].copy_from_slice(&bytes);
            return;
        } else {
            bytes.extend_from_slice(self.filled());
            self.bytes = bytes;
        }
        self.start = 0;
    }

    /// Takes up to `n` bytes from the front.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.len());
        if self.start == 0 && n == self.bytes.len() {
            self.taken += n as u64;
            self.newline_free = 0;
            return std::mem::take(&mut self.bytes);
        }
        let taken = self.filled()[..n].to_vec();
        self.consume(n);
        taken
    }

    /// One read of up to `chunk` bytes from `reader` appended; 0 at end of stream.
    fn fill_from(&mut self, mut reader: impl Read, chunk: usize) -> io::Result<usize> {
        // Reclaim the consumed front once it is at least half the buffer, so
        // compaction costs amortised O(1) per byte.
        if self.start > 0 && self.start * 2 >= self.bytes.len() {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        // The room a large message took, once it was taken and a few bytes
        // after it are all that is left: keep what this read needs.
        let needed = (self.bytes.len() + chunk).max(KEPT_READ_CAPACITY);
        if self.bytes.capacity() / 2 > needed {
            self.bytes.shrink_to(needed);
        }
        let old_len = self.bytes.len();
        self.bytes.resize(old_len + chunk, 0);
        let result = reader.read(&mut self.bytes[old_len..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.bytes.truncate(old_len + n);
        result
    }
}

/// A copy lent by `poll_fill_buf`, see [`TcpStream`]'s `lent` field.
#[derive(Default)]
struct LentBytes {
    bytes: Vec<u8>,
    consumed: usize,
    /// The stream position (`ReadBuffer::taken`) of `bytes[0]`.
    origin: u64,
}

impl LentBytes {
    fn unconsumed(&self) -> &[u8] {
        &self.bytes[self.consumed..]
    }

    /// Whether the shared buffer still starts where this copy's unconsumed part
    /// does (no other read took bytes since).
    fn is_current(&self, inbound: &ReadBuffer) -> bool {
        inbound.taken == self.origin + self.consumed as u64
    }
}

/// A socket written without raising `SIGPIPE` when the peer is gone: the write
/// fails with `BrokenPipe` instead, whatever the process does with the signal.
/// (std's `write` already sends with `MSG_NOSIGNAL`, its `write_vectored` is a
/// plain `writev`, which would kill a process that keeps the default action.)
struct NoSigPipe<'a>(&'a std_net::TcpStream);

impl Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&mut &*self.0).write(buf)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
        let mut no_control = SendAncillaryBuffer::default();
        Ok(sendmsg(self.0, bufs, &mut no_control, SendFlags::NOSIGNAL)?)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&mut &*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes not yet handed to the kernel, in call order. Positions are counted in
/// bytes since the stream opened, so a writer knows when its own bytes are out.
#[derive(Default)]
struct WriteQueue {
    chunks: VecDeque<Vec<u8>>,
    /// How much of the front chunk is already sent.
    front_sent: usize,
    queued_end: u64,
    sent_end: u64,
    /// Set by a shutdown of the writing half: nothing more may be queued.
    ended: bool,
}

impl WriteQueue {
    /// Queues `data`; returns the position its last byte ends at. Fails with
    /// `BrokenPipe` once [`end`](Self::end) was called.
    fn push(&mut self, data: Vec<u8>) -> io::Result<u64> {
        self.check_open()?;
        if !data.is_empty() {
            self.queued_end += data.len() as u64;
            self.chunks.push_back(data);
        }
        Ok(self.queued_end)
    }

    /// `BrokenPipe` once [`end`](Self::end) was called (Node.js's "write after end").
    fn check_open(&self) -> io::Result<()> {
        if self.ended {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the writing half was shut down",
            ));
        }
        Ok(())
    }

    /// Closes the queue to new writes; returns where the last byte to send before
    /// the end of the stream ends (the same on every call).
    fn end(&mut self) -> u64 {
        self.ended = true;
        self.queued_end
    }

    fn queued_end(&self) -> u64 {
        self.queued_end
    }

    /// Writes until every byte before `end` is sent (`WouldBlock` if the socket
    /// fills up first: what was written stays written).
    fn send_until(&mut self, mut writer: impl Write, end: u64) -> io::Result<()> {
        while self.sent_end < end {
            let mut slices: [IoSlice<'_>; MAX_WRITE_SLICES] = [IoSlice::new(&[]); MAX_WRITE_SLICES];
            let mut count = 0;
            for (i, chunk) in self.chunks.iter().take(MAX_WRITE_SLICES).enumerate() {
                let from = if i == 0 { self.front_sent } else { 0 };
                slices[i] = IoSlice::new(&chunk[from..]);
                count += 1;
            }
            let written = match writer.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.advance(written);
        }
        Ok(())
    }

    fn advance(&mut self, mut written: usize) {
        self.sent_end += written as u64;
        while written > 0 {
            let front_left = self.chunks[0].len() - self.front_sent;
            if written < front_left {
                self.front_sent += written;
                return;
            }
            written -= front_left;
            self.chunks.pop_front();
            self.front_sent = 0;
        }
    }
}

/// A UDP socket.
///
/// ```
/// use thenable::net::UdpSocket;
///
/// let a = UdpSocket::bind("127.0.0.1:0")?;
/// let b = UdpSocket::bind("127.0.0.1:0")?;
/// let b_addr = b.local_addr()?;
/// let (datagram, from) = thenable::block_on(async move {
///     a.send_to("ping", b_addr).await?;
///     b.recv_from(1500).await
/// })?;
/// assert_eq!(datagram, b"ping");
/// assert!(from.ip().is_loopback());
/// # Ok::<_, thenable::Error>(())
/// ```
#[derive(Clone)]
pub struct UdpSocket {
    shared: Arc<UdpShared>,
}

struct UdpShared {
    socket: Async<std_net::UdpSocket>,
    /// Datagrams received for promises cancelled first, with their senders, for
    /// the next `recv_from`.
    given_back: GivenBack<(Vec<u8>, SocketAddr)>,
}

impl UdpSocket {
    /// Binds to `addr` (port 0: a free port).
    ///
    /// ```
    /// let socket = thenable::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert_ne!(socket.local_addr()?.port(), 0);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<UdpSocket> {
        UdpSocket::from_std(std_net::UdpSocket::bind(addr)?)
    }

    /// Takes over a socket made with the standard library: switches it to
    /// non-blocking mode and registers it with this thread's loop.
    ///
    /// ```
    /// let std_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let addr = std_socket.local_addr()?;
    /// let socket = thenable::net::UdpSocket::from_std(std_socket)?;
    /// assert_eq!(socket.local_addr()?, addr);
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn from_std(socket: std_net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        Ok(UdpSocket {
            shared: Arc::new(UdpShared {
                socket: Async::new(socket)?,
                given_back: GivenBack::default(),
            }),
        })
    }

    /// The address the socket is bound to.
    ///
    /// ```
    /// let socket = thenable::net::UdpSocket::bind("127.0.0.1:0")?;
    /// assert!(socket.local_addr()?.ip().is_loopback());
    /// # Ok::<_, std::io::Error>(())
    /// ```
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.socket.get_ref().local_addr()
    }

    /// Sends one datagram to `target`; fulfils with the number of bytes sent. The
    /// target is an address, not a name: resolving names would block the loop.
    ///
    /// ```
    /// let socket = thenable::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let to_self = socket.local_addr()?;
    /// assert_eq!(thenable::block_on(socket.send_to(vec![1, 2, 3], to_self))?, 3);
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn send_to(&self, datagram: impl Into<Vec<u8>>, target: SocketAddr) -> Promise<usize> {
        let shared = self.shared.clone();
        let datagram = datagram.into();
        spawn(async move {
            let sent = shared
                .socket
                .write_with(|socket| socket.send_to(&datagram, target))
                .await?;
            Ok(sent)
        })
    }

    /// The next datagram and its sender. A datagram longer than `max_len` is
    /// truncated to `max_len` bytes (the rest is lost, as with `recv_from(2)`).
    ///
    /// Cancelled on another thread just as its task received a datagram, the
    /// promise loses nothing: the datagram goes to the next `recv_from` (cut to
    /// the shorter of the two limits).
    ///
    /// ```
    /// let socket = thenable::net::UdpSocket::bind("127.0.0.1:0")?;
    /// let to_self = socket.local_addr()?;
    /// let received = socket.recv_from(2);
    /// let (datagram, from) = thenable::block_on(async move {
    ///     socket.send_to("abc", to_self).await?;
    ///     received.await
    /// })?;
    /// assert_eq!(datagram, b"ab");
    /// assert_eq!(from, to_self);
    /// # Ok::<_, thenable::Error>(())
    /// ```
    pub fn recv_from(&self, max_len: usize) -> Promise<(Vec<u8>, SocketAddr)> {
        let shared = self.shared.clone();
        spawn_send(async move {
            // No datagram is longer, so a larger limit (`usize::MAX`) needs no more room.
            let mut room = vec![0; max_len.min(MAX_DATAGRAM)];
            let received = shared
                .socket
                .read_with(|socket| {
                    if let Some((mut datagram, from)) = shared.given_back.take() {
                        datagram.truncate(max_len);
                        return Ok((datagram, from));
                    }
                    let (len, from) = socket.recv_from(&mut room)?;
                    Ok((fitted(std::mem::take(&mut room), len), from))
                })
                .await;
            OrGiveBack::new(received, shared)
        })
    }
}

/// The socket, for [`io::readable`](crate::io::readable) /
/// [`io::writable`](crate::io::writable) and other descriptor-level APIs.
///
/// ```
/// use thenable::net::UdpSocket;
///
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let to_self = socket.local_addr()?;
/// let arrived = thenable::io::readable(&socket);
/// thenable::block_on(async move {
///     socket.send_to("knock", to_self).await?;
///     arrived.await?;
///     assert_eq!(socket.recv_from(10).await?.0, b"knock");
///     Ok::<_, thenable::Error>(())
/// })?;
/// # Ok::<_, thenable::Error>(())
/// ```
impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.socket.get_ref().as_fd()
    }
}

/// A datagram received for a promise that was cancelled first goes to the next
/// `recv_from`, which the socket's readiness (drained of it) would not wake.
impl GiveBack<(Vec<u8>, SocketAddr)> for Arc<UdpShared> {
    fn give_back(self, outcome: Result<(Vec<u8>, SocketAddr), Error>) {
        // An error took no datagram. (The errors a UDP socket reports, an ICMP
        // "port unreachable" after a send, are hints about earlier sends, not
        // kept for the next receive.)
        if let Ok(received) = outcome {
            self.given_back.give_back(received);
            self.socket.wake_readers();
        }
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Bytes `take_line` has looked through for a `\n` on this thread.
        pub(super) static SEARCHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Gives `data` one piece per read, and `WouldBlock` before each piece, as a
    /// socket does when a line arrives more slowly than it is read.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        piece: usize,
        arrived: bool,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !std::mem::replace(&mut self.arrived, false) {
                self.arrived = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.piece).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn a_long_line_arriving_in_pieces_is_searched_once_not_once_per_piece() {
        let line_len = 1 << 20;
        let mut data = vec![b'x'; line_len];
        data.extend_from_slice(b"\nnext\n");
        let mut pieces = Pieces {
            data,
            at: 0,
            piece: 1024,
            arrived: false,
        };
        let mut inbound = ReadBuffer::default();
        SEARCHED.set(0);
        // What `read_line`'s task does: the operation again after each wait.
        let mut take = || loop {
            match take_line(&mut inbound, &mut pieces, usize::MAX) {
                Err(e) if would_block(&e) => continue,
                done => break done.unwrap().map(|taken| taken.line.unwrap()),
            }
        };
        assert_eq!(take().map(|line| line.len()), Some(line_len));
        assert_eq!(take().as_deref(), Some("next"));
        // Each byte once, and those of the last piece (read with the line's
        // end) once more for the next line: linear, where searching the whole
        // buffer again after every wait looks through half a gigabyte.
        let searched = SEARCHED.get();
        assert!(
            searched <= 2 * (line_len + 6),
            "searched {searched} bytes for a line of {line_len}"
        );
    }

    #[test]
    fn a_read_buffer_gives_back_the_room_a_large_message_took() {
        let big = vec![b'x'; MAX_READ_CHUNK];
        let mut buffer = ReadBuffer::default();
        // Emptied, by `take` or by `consume`: the room goes with the bytes.
        buffer.fill_from(&big[..], big.len()).unwrap();
        assert_eq!(buffer.take(big.len() - 1).len(), big.len() - 1);
        buffer.consume(1);
        assert!(buffer.bytes.capacity() <= KEPT_READ_CAPACITY);
        // A few bytes left behind it: the next read keeps what it needs only.
        buffer.fill_from(&big[..], big.len()).unwrap();
        buffer.consume(big.len() - 3);
        buffer.fill_from(&b"yz"[..], READ_CHUNK).unwrap();
        assert_eq!(buffer.filled(), b"xxxyz");
        assert!(buffer.bytes.capacity() <= KEPT_READ_CAPACITY);
        assert_eq!(buffer.taken, 2 * big.len() as u64 - 3);
        // Room it needs is kept: reading on into a large message does not
        // give back and take again.
        buffer.fill_from(&big[..], MAX_READ_CHUNK).unwrap();
        let room = buffer.bytes.capacity();
        buffer.fill_from(&big[..], MAX_READ_CHUNK).unwrap();
        buffer.consume(MAX_READ_CHUNK);
        buffer.fill_from(&big[..], MAX_READ_CHUNK).unwrap();
        assert!(buffer.bytes.capacity() >= room);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_taken_whole_for_giving_back() {
        let mut buffer = ReadBuffer::default();
        let mut source = &b"a\xff\nb\n"[..];
        let taken = take_line(&mut buffer, &mut source, 100).unwrap().unwrap();
        assert_eq!(taken.line.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(&*taken.rest, b"a\xff\n");
        let taken = take_line(&mut buffer, &mut source, 100).unwrap().unwrap();
        assert_eq!(taken.line.unwrap(), "b");
        assert_eq!(&*taken.rest, b"\n");
    }

    #[test]
    fn bytes_given_back_are_the_front_again_at_their_position() {
        let mut buffer = ReadBuffer::default();
        // Taken whole: the same `Vec` comes back.
        buffer.fill_from(&b"abc"[..], 64).unwrap();
        let whole = buffer.take(3);
        let at = whole.as_ptr();
        buffer.give_back(whole);
        assert_eq!((buffer.filled(), buffer.taken), (&b"abc"[..], 0));
        assert_eq!(buffer.filled().as_ptr(), at);
        // Taken from the front, with room before what is left: copied in place.
        assert_eq!(buffer.take(2), b"ab");
        buffer.give_back(b"ab".to_vec());
        assert_eq!((buffer.filled(), buffer.taken), (&b"abc"[..], 0));
        // No room left before the rest (a fill compacted the buffer since):
        // in front of a copy of it.
        assert_eq!(buffer.take(2), b"ab");
        buffer.fill_from(&b"de"[..], 64).unwrap();
        buffer.give_back(b"ab".to_vec());
        assert_eq!((buffer.filled(), buffer.taken), (&b"abcde"[..], 0));
        // Where `take_line` searches from: past bytes given back without a `\n`,
        // from the start again if they hold one.
        buffer.newline_free = 5;
        assert_eq!(buffer.take(1), b"a");
        buffer.give_back(b"a".to_vec());
        assert_eq!(buffer.newline_free, 5);
        buffer.take(2);
        buffer.give_back(b"a\n".to_vec());
        assert_eq!(buffer.newline_free, 0);
    }

    #[test]
    fn read_buffer_keeps_order_and_position_across_take_and_fill() {
        let mut buffer = ReadBuffer::default();
        buffer.fill_from(&b"hello world"[..], 64).unwrap();
        assert_eq!(buffer.take(6), b"hello ");
        assert_eq!(buffer.filled(), b"world");
        buffer.fill_from(&b"!"[..], 64).unwrap();
        assert_eq!(buffer.take(usize::MAX), b"world!");
        assert!(buffer.is_empty());
        assert_eq!(buffer.taken, 12);
    }

    #[test]
    fn write_queue_tracks_partial_writes_across_chunks() {
        /// A writer that accepts at most three bytes per call.
        struct Trickle(Vec<u8>);
        impl Write for Trickle {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut queue = WriteQueue::default();
        let first = queue.push(b"abcd".to_vec()).unwrap();
        let second = queue.push(b"efghij".to_vec()).unwrap();
        let mut out = Trickle(Vec::new());
        queue.send_until(&mut out, first).unwrap();
        assert!(out.0.starts_with(b"abcd"));
        queue.send_until(&mut out, second).unwrap();
        assert_eq!(out.0, b"abcdefghij");
        assert!(queue.chunks.is_empty());
    }

    #[test]
    fn a_small_read_reads_ahead_so_that_the_next_one_after_it_drained_makes_no_system_call() {
        let listener = std_net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std_net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mine, _) = listener.accept().unwrap();
        mine.set_nonblocking(true).unwrap();
        let mut buffers = StreamBuffers::default();
        let wait_until_readable = |len: usize| {
            let mut peeked = [0u8; 16];
            while !matches!(mine.peek(&mut peeked), Ok(n) if n >= len) {
                std::thread::yield_now();
            }
        };
        let read = |buffers: &mut StreamBuffers, buf: &mut [u8]| buffers.read(&mine, buf);

        // Read ahead: the 4-byte read takes all 6 bytes there, the rest is kept.
        peer.write_all(b"abcdef").unwrap();
        wait_until_readable(6);
        let mut four = [0u8; 4];
        assert_eq!(read(&mut buffers, &mut four).unwrap(), 4);
        assert_eq!(&four, b"abcd");
        peer.write_all(b"g").unwrap();
        wait_until_readable(1);
        assert_eq!(read(&mut buffers, &mut four).unwrap(), 2);
        assert_eq!(&four[..2], b"ef");
        // The socket read came back short, so this read answers `WouldBlock`
        // without asking the kernel, which has a byte (the caller waits for
        // readiness, reported at once): read straight into 4 bytes, the first
        // read would have been a full one, and this one a system call.
        let skipped = read(&mut buffers, &mut four).unwrap_err();
        assert_eq!(skipped.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(read(&mut buffers, &mut four).unwrap(), 1);
        assert_eq!(four[0], b'g');

        // A buffer of `READ_AHEAD` bytes or more is read into directly (after
        // the shortcut that the 1-byte read set up again).
        let big = vec![7u8; READ_AHEAD + 10];
        peer.write_all(&big).unwrap();
        wait_until_readable(16);
        let skipped = read(&mut buffers, &mut four).unwrap_err();
        assert_eq!(skipped.kind(), io::ErrorKind::WouldBlock);
        let mut into = vec![0u8; READ_AHEAD];
        let n = read(&mut buffers, &mut into).unwrap();
        assert!(n > 0 && buffers.inbound.is_empty());
    }

    #[test]
    fn take_line_limits_apply_to_content_not_terminator() {
        let mut buffer = ReadBuffer::default();
        let mut source = &b"1234\r\n12345\n"[..];
        let taken = take_line(&mut buffer, &mut source, 4).unwrap().unwrap();
        assert_eq!(taken.line.unwrap(), "1234");
        assert_eq!(&*taken.rest, b"\r\n");
        let err = take_line(&mut buffer, &mut source, 4).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(buffer.filled(), b"12345\n"); // nothing consumed
    }
}
