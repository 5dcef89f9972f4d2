//! Standard input as a stream of lines ([`stdin_lines`]), read without blocking the
//! loop and without a thread per read.
//!
//! This module owns how standard input is opened for the loop and how its bytes
//! become lines. It never blocks the loop thread: a pipe, terminal or socket is
//! read in non-blocking mode and waited on through the reactor ([`Async`]); what the
//! poller refuses (a regular file, `/dev/null`) is read on the blocking pool, where
//! a read never waits for long. It never leaves standard input in non-blocking mode
//! for other programs: where it has to switch the shared mode, it switches it back.
//!
//! Requests are served in order by one task per [`StdinLines`], so each line goes to
//! exactly one request, in the order the requests were made. However that task
//! ends, every request it leaves settles: broken if its loop was dropped (the
//! stream's own request is then made again), the panic's error if it panicked.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll, Waker};

use futures_core::stream::{FusedStream, Stream};
use parking_lot::Mutex;
use rustix::fs::{FileType, OFlags};

use super::Async;
use crate::blocking::spawn_blocking;
use crate::error::Error;
use crate::event_loop::{contained, context};
use crate::promise::{internal, Promise, Settler};

/// The longest line [`stdin_lines`] accepts by default, in bytes, not counting the
/// line ending (64 KiB, as asyncio's `StreamReader`). A longer line is reported as
/// an error of kind [`InvalidData`](io::ErrorKind::InvalidData) and skipped; see
/// [`StdinLines::with_max_line_length`].
///
/// ```
/// assert_eq!(thenable::io::DEFAULT_MAX_LINE_LENGTH, 64 * 1024);
/// ```
pub const DEFAULT_MAX_LINE_LENGTH: usize = 64 * 1024;

/// Bytes asked for by one read of standard input.
const READ_CHUNK: usize = 16 * 1024;

/// The lines of standard input, as a [`Stream`] of `Result<String, Error>` or as
/// promises ([`StdinLines::next_line`]), read without blocking the loop.
///
/// Lines end with `\n` or `\r\n`, which are removed; the last line needs no ending.
/// A line that is not UTF-8, or longer than the limit, gives an `Err` whose
/// wrapped [`io::Error`] has kind [`InvalidData`](io::ErrorKind::InvalidData);
/// reading goes on with the next line. The stream ends at the end of input, and
/// after a read error (reported once: retrying a hung-up terminal fails for ever).
///
/// Should the task serving the requests panic (a waker that panics when its
/// request is settled, say), what it had read ahead can no longer be trusted:
/// every request waiting then rejects with that panic ([`Error::is_panic`]), and
/// so does every later one ([`next_line`](StdinLines::next_line)); the stream
/// reports it once and ends. Standard input itself is released, and a new
/// `StdinLines` reads on from wherever the input then stands.
///
/// Keep one `StdinLines` for the whole program: input it has read ahead (a few
/// kilobytes at most) belongs to it, is lost when it is dropped, and is not seen by
/// another `StdinLines` or by `std::io::stdin()`.
///
/// How it reads: a pipe, terminal or socket in non-blocking mode, woken by the
/// loop's reactor. On Linux a pipe or terminal is opened again with a file
/// description of its own, so the mode never leaks into descriptor 0, or into
/// standard output on the same terminal; otherwise the mode of the shared
/// description is switched, and switched back when the last reader is dropped.
/// What cannot be polled (a regular file, `/dev/null`) is read on the blocking pool
/// ([`spawn_blocking`](crate::spawn_blocking)).
///
/// ```
/// # // This example gets its own standard input, a file of three lines.
/// # let path = std::env::temp_dir().join(format!("thenable-stdin-doc-{}", std::process::id()));
/// # std::fs::write(&path, "3\nfour\r\n5").unwrap();
/// # rustix::stdio::dup2_stdin(std::fs::File::open(&path).unwrap()).unwrap();
/// # std::fs::remove_file(&path).unwrap();
/// use futures::StreamExt;
///
/// // With standard input "3\nfour\r\n5":
/// let mut lines = thenable::io::stdin_lines();
/// let numbers = thenable::block_on(async move {
///     let mut numbers = Vec::new();
///     while let Some(line) = lines.next().await {
///         match line?.parse::<u32>() {
///             Ok(n) => numbers.push(n),
///             Err(_) => println!("not a number, skipped"),
///         }
///     }
///     Ok::<_, thenable::Error>(numbers)
/// });
/// assert_eq!(numbers.unwrap(), [3, 5]);
/// ```
pub struct StdinLines {
    queue: Arc<Mutex<LineQueue>>,
    /// The request `poll_next` waits on.
    current: Option<Promise<Option<String>>>,
    ended: bool,
}

/// Standard input as lines, read on this thread's loop; see [`StdinLines`].
///
/// Nothing is read until a line is asked for. While a request waits for input it
/// keeps the loop alive (as a `data` listener on `process.stdin` keeps Node.js
/// running).
///
/// ```
/// # // This example gets its own standard input, a file of two lines.
/// # let path = std::env::temp_dir().join(format!("thenable-stdin-fn-{}", std::process::id()));
/// # std::fs::write(&path, "hello\nworld\n").unwrap();
/// # rustix::stdio::dup2_stdin(std::fs::File::open(&path).unwrap()).unwrap();
/// # std::fs::remove_file(&path).unwrap();
/// // With standard input "hello\nworld\n":
/// let lines = thenable::io::stdin_lines();
/// let first = thenable::block_on(lines.next_line()).unwrap();
/// assert_eq!(first.as_deref(), Some("hello"));
/// ```
pub fn stdin_lines() -> StdinLines {
    StdinLines {
        queue: Arc::new(Mutex::new(LineQueue {
            reader: LineReader::new(DEFAULT_MAX_LINE_LENGTH),
            requests: VecDeque::new(),
            next_request_id: 0,
            serving: false,
            server: None,
            failed: None,
        })),
        current: None,
        ended: false,
    }
}

impl StdinLines {
    /// Sets the longest accepted line, in bytes, not counting the line ending
    /// (default [`DEFAULT_MAX_LINE_LENGTH`]). A longer line gives one `Err` of kind
    /// [`InvalidData`](io::ErrorKind::InvalidData) and is skipped, and no more than
    /// about this much input is held in memory.
    ///
    /// ```
    /// let lines = thenable::io::stdin_lines().with_max_line_length(80);
    /// # drop(lines);
    /// ```
    pub fn with_max_line_length(self, bytes: usize) -> StdinLines {
        self.queue.lock().reader.max_line_length = bytes;
        self
    }

    /// A promise of the next line: `Some(line)`, or `None` at the end of input.
    ///
    /// Requests are served in the order they were made, whether made here or by
    /// polling the stream. Cancelling the promise (see [`Promise::cancel`]) withdraws
    /// the request, and the line goes to the next one; a promise merely dropped
    /// still takes its line. A request is served on the loop of the first request
    /// made while none was being served; if that loop is dropped first, the promise
    /// breaks ([`Error::is_broken`]) and its line goes to the next request (the
    /// stream's own request is made again, first in line, and served on the loop
    /// the stream is polled on). After a panic in the task serving the requests
    /// (see [`StdinLines`]) the promise is rejected at once with that panic.
    ///
    /// ```
    /// # // This example gets its own standard input, a file of two lines.
    /// # let path = std::env::temp_dir().join(format!("thenable-stdin-next-{}", std::process::id()));
    /// # std::fs::write(&path, "20\n22\n").unwrap();
    /// # rustix::stdio::dup2_stdin(std::fs::File::open(&path).unwrap()).unwrap();
    /// # std::fs::remove_file(&path).unwrap();
    /// use thenable::Error;
    ///
    /// fn number(line: Option<String>) -> Result<u32, Error> {
    ///     let line = line.ok_or_else(|| Error::msg("no more input"))?;
    ///     Ok(line.trim().parse()?)
    /// }
    ///
    /// // With standard input "20\n22\n":
    /// let lines = thenable::io::stdin_lines();
    /// let first = lines.next_line().then(number);
    /// let second = lines.next_line().then(number);
    /// let sum = first.then(move |a| second.map(move |b| a + b));
    /// assert_eq!(thenable::block_on(sum).unwrap(), 42);
    /// ```
    pub fn next_line(&self) -> Promise<Option<String>> {
        self.request(false)
    }

    /// Queues a request, at the front when `first_in_line` (the stream's own,
    /// made again because its server went; it came before any request queued now).
    fn request(&self, first_in_line: bool) -> Promise<Option<String>> {
        let (promise, mut settler) = internal::<Option<String>, Error>();
        let hooks = settler.cancel_hooks();
        let id = {
            let mut queue = self.queue.lock();
            if let Some(error) = queue.failed.clone() {
                drop(queue);
                settler.settle(Err(error));
                return promise;
            }
            let id = queue.next_request_id;
            queue.next_request_id += 1;
            let request = LineRequest {
                id,
                settler,
                cancelled: false,
            };
            if first_in_line {
                queue.requests.push_front(request);
            } else {
                queue.requests.push_back(request);
            }
            id
        };
        let queue = Arc::downgrade(&self.queue);
        hooks.add(move || withdraw(&queue, id));
        self.serve();
        promise
    }

    /// Starts a server on this thread's loop if requests wait and none serves them.
    fn serve(&self) {
        {
            let mut queue = self.queue.lock();
            if queue.serving || queue.requests.is_empty() {
                return;
            }
            queue.serving = true;
        }
        let server = Server {
            queue: self.queue.clone(),
            finished: false,
        };
        // Nothing awaits the server: it reports through the requests it serves.
        let _server = crate::spawn(async move {
            server.await;
            Ok::<(), Error>(())
        });
    }
}

/// Ends at the end of input.
///
/// ```
/// # let path = std::env::temp_dir().join(format!("thenable-stdin-fused-{}", std::process::id()));
/// # std::fs::write(&path, "only line").unwrap();
/// # rustix::stdio::dup2_stdin(std::fs::File::open(&path).unwrap()).unwrap();
/// # std::fs::remove_file(&path).unwrap();
/// use futures::stream::FusedStream;
/// use futures::StreamExt;
///
/// // With standard input "only line":
/// let mut lines = thenable::io::stdin_lines();
/// assert!(!lines.is_terminated());
/// let all: Vec<_> = futures::executor::block_on(lines.by_ref().collect());
/// assert_eq!(all.len(), 1);
/// assert!(lines.is_terminated());
/// ```
impl Stream for StdinLines {
    type Item = Result<String, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let mut asked_again = false;
        loop {
            let request = match &mut this.current {
                Some(request) => request,
                None => {
                    let request = this.request(false);
                    this.current.insert(request)
                }
            };
            let outcome = ready!(Pin::new(request).poll(cx));
            this.current = None;
            return Poll::Ready(match outcome {
                Ok(Some(line)) => Some(Ok(line)),
                Ok(None) => {
                    this.ended = true;
                    None
                }
                // Only a server that went unfinished (its loop dropped) breaks a
                // request: ask again, first in line, for a server on this loop.
                // Once: should that one break at once too (no loop here can run
                // a server), the caller hears of it rather than this spinning.
                Err(error) if error.is_broken() && !asked_again => {
                    asked_again = true;
                    this.current = Some(this.request(true));
                    continue;
                }
                Err(error) => {
                    // Only a panic in the server rejects a request with a panic,
                    // and it rejects every later one too: reported once, then the
                    // end, as a read error is.
                    if error.is_panic() {
                        this.ended = true;
                    }
                    Some(Err(error))
                }
            });
        }
    }
}

impl FusedStream for StdinLines {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl std::fmt::Debug for StdinLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinLines")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Drop for StdinLines {
    fn drop(&mut self) {
        // The stream's own request has no other consumer: withdraw it, so the
        // server stops waiting (and stops keeping the loop alive) if nobody else asks.
        if let Some(request) = self.current.take() {
            request.cancel();
        }
    }
}

/// The state one [`StdinLines`] shares with the task serving its requests.
struct LineQueue {
    reader: LineReader,
    /// Requests not served yet, oldest first.
    requests: VecDeque<LineRequest>,
    next_request_id: u64,
    /// A server task exists (started by the first request while none did).
    serving: bool,
    /// The server's waker, so a cancelled request can make it look again.
    server: Option<Waker>,
    /// A server panicked, leaving `reader` in a state nobody can vouch for: no
    /// server starts again, and every request rejects with this.
    failed: Option<Error>,
}

struct LineRequest {
    id: u64,
    settler: Settler<Option<String>, Error>,
    cancelled: bool,
}

/// The cancellation hook of request `id`: marks it, wakes the server to drop it.
fn withdraw(queue: &Weak<Mutex<LineQueue>>, id: u64) {
    let Some(queue) = queue.upgrade() else {
        return;
    };
    let server = {
        let mut queue = queue.lock();
        if let Some(request) = queue.requests.iter_mut().find(|r| r.id == id) {
            request.cancelled = true;
        }
        queue.server.take()
    };
    if let Some(server) = server {
        server.wake();
    }
}

/// The task serving a queue's requests until none is left.
struct Server {
    queue: Arc<Mutex<LineQueue>>,
    finished: bool,
}

impl Future for Server {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Caught here rather than by the task: the task's wrapper would only drop
        // the server, as a dropped loop does, and its requests would break with the
        // panic's message lost (and the reader would be used again as it was left).
        match catch_unwind(AssertUnwindSafe(|| self.serve(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                self.fail(Error::panic(payload));
                Poll::Ready(())
            }
        }
    }
}

impl Server {
    fn serve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut queue = self.queue.lock();
            let withdrawn = queue.take_cancelled();
            if queue.requests.is_empty() {
                // Decided under the lock, so a request queued after this sees
                // `serving == false` and starts a new server.
                queue.serving = false;
                queue.server = None;
                let released = queue.reader.stop_waiting();
                drop(queue);
                drop((withdrawn, released));
                self.finished = true;
                return Poll::Ready(());
            }
            queue.server = Some(cx.waker().clone());
            let outcome = queue.reader.poll_line(cx);
            let served = match outcome {
                Poll::Pending => None,
                Poll::Ready(outcome) => queue.requests.pop_front().map(|r| (r, outcome)),
            };
            drop(queue);
            // Settled and dropped outside the lock: neither may ever call back into it.
            drop(withdrawn);
            match served {
                None => return Poll::Pending,
                Some((request, outcome)) => {
                    #[cfg(test)]
                    tests::before_settling();
                    // Cancelled (on another thread) since it left the queue, too
                    // late for `withdraw` to find it: its line is still the next
                    // one, for the next request.
                    if let Some(outcome) = request.settler.settle_or_give_back(outcome, false) {
                        self.queue.lock().reader.give_back(outcome);
                    }
                }
            }
        }
    }

    /// Serving panicked, perhaps half-way through an update of the reader: the
    /// queue is marked failed, so no server reads with that reader again, and
    /// every request in it rejects with the panic. Standard input is released (a
    /// pollable source deregistered, its mode restored), for a new reader.
    fn fail(&mut self, error: Error) {
        self.finished = true;
        let (requests, reader) = {
            // Not held by the panic: its guard was dropped as it unwound.
            let mut queue = self.queue.lock();
            queue.failed = Some(error.clone());
            queue.serving = false;
            queue.server = None;
            let fresh = LineReader::new(queue.reader.max_line_length);
            let reader = std::mem::replace(&mut queue.reader, fresh);
            (std::mem::take(&mut queue.requests), reader)
        };
        drop(reader);
        for mut request in requests {
            contained(SETTLING_A_REQUEST, || {
                request.settler.settle(Err(error.clone()))
            });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished: its loop was dropped (its task with it). A pollable
        // source is registered with that loop's reactor, which nobody will poll
        // again: close it, so the next request (on another loop) opens standard
        // input afresh. (A read on the pool is kept: it may hold bytes read
        // already.) The reader is as a finished poll left it, fit to read on. A
        // request would wait for ever for a server nobody starts: each breaks, as
        // the promise of a task of that loop does. The stream, woken by that, asks
        // again (see `poll_next`), wherever it is polled: it may be waiting on
        // another thread, for a server of this loop.
        let (released, broken) = {
            let mut queue = self.queue.lock();
            queue.serving = false;
            queue.server = None;
            let released = match &queue.reader.source {
                Some(StdinSource::Pollable { .. }) => queue.reader.source.take(),
                _ => None,
            };
            (released, std::mem::take(&mut queue.requests))
        };
        drop(released);
        for request in broken {
            contained(SETTLING_A_REQUEST, || drop(request));
        }
    }
}

/// What a panic is reported as when settling one of the requests a server leaves
/// panics: a waker that panics belongs to that request's consumer, and the other
/// requests are settled all the same.
const SETTLING_A_REQUEST: &str = "waking a standard input request";

impl LineQueue {
    fn take_cancelled(&mut self) -> Vec<LineRequest> {
        if !self.requests.iter().any(|r| r.cancelled) {
            return Vec::new();
        }
        let (cancelled, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.requests)
            .into_iter()
            .partition(|r| r.cancelled);
        self.requests = kept.into();
        cancelled
    }
}

/// Turns the bytes of standard input into lines.
struct LineReader {
    /// Opened on first use, on the loop of the task that reads.
    source: Option<StdinSource>,
    /// What the last poll gave, back from a request cancelled before it reached
    /// it: the next poll gives it again. (One at most: the server polls again
    /// before it settles another request.)
    given_back: Option<Result<Option<String>, Error>>,
    buffer: Vec<u8>,
    /// How much of `buffer` is known to hold no newline.
    searched: usize,
    /// Skipping the rest of a line that was too long.
    discarding: bool,
    at_end: bool,
    max_line_length: usize,
}

impl LineReader {
    fn new(max_line_length: usize) -> LineReader {
        LineReader {
            source: None,
            given_back: None,
            buffer: Vec::new(),
            searched: 0,
            discarding: false,
            at_end: false,
            max_line_length,
        }
    }

    fn poll_line(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<String>, Error>> {
        #[cfg(test)]
        tests::maybe_panic();
        if let Some(outcome) = self.given_back.take() {
            return Poll::Ready(outcome);
        }
        loop {
            if let Some(line) = self.take_line() {
                return Poll::Ready(line.map(Some));
            }
            if self.at_end {
                return Poll::Ready(self.take_last_line());
            }
            if self.source.as_ref().is_some_and(|s| !s.registered_here()) {
                // Registered with a loop that is not the one reading now (the first
                // was dropped, say): its reactor would never report readiness here.
                self.source = None;
            }
            let source = match &mut self.source {
                Some(source) => source,
                None => match StdinSource::open() {
                    Ok(source) => self.source.insert(source),
                    Err(error) => return Poll::Ready(Err(self.fail(error))),
                },
            };
            match ready!(source.poll_read(cx, &mut self.buffer)) {
                Ok(0) => self.at_end = true,
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(self.fail(error))),
            }
        }
    }

    /// Keeps `outcome`, which the last poll gave, for the next poll.
    fn give_back(&mut self, outcome: Result<Option<String>, Error>) {
        debug_assert!(self.given_back.is_none(), "two outcomes given back");
        self.given_back = Some(outcome);
    }

    /// A read error ends the input: reported once, then the end. (Retrying could
    /// fail for ever, as a read of a hung-up terminal does, and a caller that skips
    /// errors would spin.) The source is closed now rather than when dropped.
    fn fail(&mut self, error: io::Error) -> Error {
        self.at_end = true;
        self.discarding = false;
        self.buffer.clear();
        self.searched = 0;
        self.source = None;
        Error::new(error)
    }

    /// The next complete line in the buffer, if there is one (or an error for a
    /// line that cannot be one).
    fn take_line(&mut self) -> Option<Result<String, Error>> {
        loop {
            let newline = self.buffer[self.searched..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|at| self.searched + at);
            if self.discarding {
                match newline {
                    Some(at) => {
                        self.buffer.drain(..=at);
                        self.searched = 0;
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        self.buffer.clear();
                        self.searched = 0;
                        return None;
                    }
                }
            }
            return match newline {
                Some(at) => {
                    let mut line: Vec<u8> = self.buffer.drain(..=at).collect();
                    self.searched = 0;
                    line.pop(); // the '\n'
                    Some(self.finish_line(line))
                }
                // One byte of slack for the '\r' of a "\r\n" not complete yet.
                None if self.buffer.len() > self.max_line_length.saturating_add(1) => {
                    // Too long already: report it now rather than buffer it all.
                    self.buffer.clear();
                    self.searched = 0;
                    self.discarding = true;
                    Some(Err(self.too_long()))
                }
                None => {
                    self.searched = self.buffer.len();
                    None
                }
            };
        }
    }

    /// At the end of input: what is left, a last line without a line ending.
    fn take_last_line(&mut self) -> Result<Option<String>, Error> {
        self.searched = 0;
        if std::mem::take(&mut self.discarding) || self.buffer.is_empty() {
            self.buffer.clear();
            return Ok(None);
        }
        let line = std::mem::take(&mut self.buffer);
        self.finish_line(line).map(Some)
    }

    fn finish_line(&self, mut line: Vec<u8>) -> Result<String, Error> {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max_line_length {
            return Err(self.too_long());
        }
        String::from_utf8(line).map_err(|_| {
            Error::new(io::Error::new(
                io::ErrorKind::InvalidData,
                "standard input: line is not valid UTF-8",
            ))
        })
    }

    fn too_long(&self) -> Error {
        Error::new(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "standard input: line longer than {} bytes",
                self.max_line_length
            ),
        ))
    }

    /// Nobody waits for a line any more: a readiness wait left armed would keep the
    /// loop alive until input arrives, so the source is closed (and opened again by
    /// the next request). Returns it, to be dropped outside the queue's lock.
    fn stop_waiting(&mut self) -> Option<StdinSource> {
        match &self.source {
            Some(StdinSource::Pollable { waiting, .. }) if *waiting => self.source.take(),
            _ => None,
        }
    }
}

/// Standard input, opened for the loop.
enum StdinSource {
    /// A pipe, terminal or socket: non-blocking reads, readiness from the reactor.
    Pollable {
        stdin: Async<NonBlockingStdin>,
        /// The last read left a readiness wait armed.
        waiting: bool,
    },
    /// What the poller refuses (a regular file, `/dev/null`): reads run on the
    /// blocking pool. The descriptor is in the in-flight read while it runs.
    OnPool {
        file: Option<File>,
        read: Option<Promise<(File, io::Result<Vec<u8>>)>>,
    },
}

impl StdinSource {
    fn open() -> io::Result<StdinSource> {
        let stdin = io::stdin();
        let fd = stdin.as_fd();
        let file_type = FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode);
        if file_type == FileType::RegularFile {
            // Files are always "ready" (epoll refuses them): read them on the pool,
            // through a duplicate that shares the file offset with descriptor 0.
            return Ok(StdinSource::on_pool(rustix::io::dup(fd)?));
        }
        let nonblocking = match reopen_own_description(file_type) {
            Some(reopened) => NonBlockingStdin {
                file: File::from(reopened),
                shares_mode: false,
            },
            None => NonBlockingStdin::shared(rustix::io::dup(fd)?)?,
        };
        match Async::new(nonblocking) {
            Ok(stdin) => Ok(StdinSource::Pollable {
                stdin,
                waiting: false,
            }),
            // EPERM: the descriptor does not support polling (`/dev/null`, say).
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
                Ok(StdinSource::on_pool(rustix::io::dup(fd)?))
            }
            Err(error) => Err(error),
        }
    }

    fn on_pool(fd: OwnedFd) -> StdinSource {
        StdinSource::OnPool {
            file: Some(File::from(fd)),
            read: None,
        }
    }

    /// Appends what one read gives to `buffer`; `Ok(0)` at the end of input.
    fn poll_read(&mut self, cx: &mut Context<'_>, buffer: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        match self {
            StdinSource::Pollable { stdin, waiting } => {
                let mut chunk = [0; READ_CHUNK];
                loop {
                    match (&stdin.get_ref().file).read(&mut chunk) {
                        Ok(n) => {
                            *waiting = false;
                            buffer.extend_from_slice(&chunk[..n]);
                            return Poll::Ready(Ok(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            *waiting = true;
                            ready!(stdin.poll_readable(cx))?;
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            StdinSource::OnPool { file, read } => loop {
                if let Some(in_flight) = read {
                    let outcome = ready!(Pin::new(in_flight).poll(cx));
                    *read = None;
                    let (returned, result) = outcome?;
                    *file = Some(returned);
                    let bytes = result?;
                    buffer.extend_from_slice(&bytes);
                    return Poll::Ready(Ok(bytes.len()));
                }
                let Some(reading) = file.take() else {
                    return Poll::Ready(Err(io::Error::other("standard input was lost")));
                };
                *read = Some(spawn_blocking(move || {
                    let mut chunk = vec![0; READ_CHUNK];
                    let result = loop {
                        match (&reading).read(&mut chunk) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            other => break other,
                        }
                    };
                    let bytes = result.map(|n| {
                        chunk.truncate(n);
                        chunk
                    });
                    Ok((reading, bytes))
                }));
            },
        }
    }

    /// False for a pollable source registered with another loop than this thread's
    /// current one.
    fn registered_here(&self) -> bool {
        match self {
            StdinSource::Pollable { stdin, .. } => {
                context::with_current(|local| Arc::ptr_eq(&local.shared, &stdin.home))
            }
            StdinSource::OnPool { .. } => true,
        }
    }
}

/// On Linux, a pipe or terminal can be opened again through `/proc/self/fd/0`,
/// giving a description of its own: non-blocking mode set there does not leak into
/// descriptor 0, nor into standard output when it is the same terminal (where a
/// shared non-blocking mode makes `println!` fail with `WouldBlock`). `None` where
/// that is not possible (a socket, no `/proc`, another system).
fn reopen_own_description(file_type: FileType) -> Option<OwnedFd> {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
        return None;
    }
    if !matches!(file_type, FileType::Fifo | FileType::CharacterDevice) {
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    rustix::fs::open("/proc/self/fd/0", flags, rustix::fs::Mode::empty()).ok()
}

/// Standard input in non-blocking mode, for the reactor.
struct NonBlockingStdin {
    file: File,
    /// Non-blocking mode was set on the description shared with descriptor 0 (and
    /// whoever else holds it): restored when the last such reader goes.
    shares_mode: bool,
}

/// Readers that need the shared description in non-blocking mode, and whether it
/// was blocking before the first of them.
struct SharedMode {
    readers: usize,
    was_blocking: bool,
}

static SHARED_MODE: Mutex<SharedMode> = Mutex::new(SharedMode {
    readers: 0,
    was_blocking: false,
});

impl NonBlockingStdin {
    /// `fd` is a duplicate of descriptor 0: they share one description, and its
    /// mode.
    fn shared(fd: OwnedFd) -> io::Result<NonBlockingStdin> {
        let mut mode = SHARED_MODE.lock();
        if mode.readers == 0 {
            let flags = rustix::fs::fcntl_getfl(&fd)?;
            mode.was_blocking = !flags.contains(OFlags::NONBLOCK);
            if mode.was_blocking {
                rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
            }
        }
        mode.readers += 1;
        Ok(NonBlockingStdin {
            file: File::from(fd),
            shares_mode: true,
        })
    }
}

impl AsFd for NonBlockingStdin {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for NonBlockingStdin {
    fn drop(&mut self) {
        if !self.shares_mode {
            return;
        }
        let mut mode = SHARED_MODE.lock();
        mode.readers -= 1;
        if mode.readers == 0 && mode.was_blocking {
            // Best effort: a failure here leaves the mode as it is, nothing to undo.
            if let Ok(flags) = rustix::fs::fcntl_getfl(&self.file) {
                let _ = rustix::fs::fcntl_setfl(&self.file, flags - OFlags::NONBLOCK);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::EventLoop;

    thread_local! {
        /// Makes every read of lines on this thread panic, with the queue's lock
        /// held and before standard input is touched (the tests' own input is
        /// not theirs to read).
        static PANIC_WHILE_READING: Cell<bool> = const { Cell::new(false) };
    }

    const INJECTED: &str = "a panic injected into the server";

    pub(super) fn maybe_panic() {
        if PANIC_WHILE_READING.get() {
            panic!("{INJECTED}");
        }
    }

    thread_local! {
        /// What happens, one action per request, as this thread's server is about
        /// to settle a request it has taken from the queue, outside the queue's
        /// lock: the moment at which another thread may cancel that request.
        static BEFORE_SETTLING: RefCell<VecDeque<Box<dyn FnOnce()>>> =
            const { RefCell::new(VecDeque::new()) };
    }

    pub(super) fn before_settling() {
        let action = BEFORE_SETTLING.with_borrow_mut(VecDeque::pop_front);
        if let Some(action) = action {
            action();
        }
    }

    /// Queues an action for [`before_settling`]: cancelling `request` from
    /// another thread. Reports whether that cancelled it.
    fn cancel_as_it_is_served(request: Promise<Option<String>>) -> mpsc::Receiver<bool> {
        let (report, cancelled) = mpsc::channel();
        BEFORE_SETTLING.with_borrow_mut(|actions| {
            actions.push_back(Box::new(move || {
                let cancelled = std::thread::spawn(move || request.cancel());
                let _ = report.send(cancelled.join().unwrap());
            }))
        });
        cancelled
    }

    /// A reader that has read `input` already, and the end of input after it: the
    /// tests' own standard input is not theirs to read.
    fn reading(input: &str) -> StdinLines {
        let lines = stdin_lines();
        {
            let mut queue = lines.queue.lock();
            queue.reader.buffer.extend_from_slice(input.as_bytes());
            queue.reader.at_end = true;
        }
        lines
    }

    /// Runs `f` on a thread of its own; fails if it is still running after a
    /// minute (a request nobody settles) rather than hang.
    fn bounded<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, finished) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _ = done.send(f());
        });
        match finished.recv_timeout(Duration::from_secs(60)) {
            Ok(value) => {
                worker.join().unwrap();
                value
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(worker.join().unwrap_err())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("a request was left waiting"),
        }
    }

    /// [`bounded`], on a thread where reading panics.
    fn with_reads_panicking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        bounded(move || {
            PANIC_WHILE_READING.set(true);
            f()
        })
    }

    fn next(lines: &mut StdinLines) -> impl Future<Output = Option<Result<String, Error>>> + '_ {
        std::future::poll_fn(move |cx| Pin::new(&mut *lines).poll_next(cx))
    }

    #[test]
    fn a_panic_while_reading_rejects_every_waiting_request_with_it() {
        let (first, second, idle) = with_reads_panicking(|| {
            let event_loop = EventLoop::new();
            let lines = stdin_lines();
            let (first, second) = (lines.next_line(), lines.next_line());
            let first = event_loop.block_on(first).unwrap_err();
            let second = event_loop.block_on(second).unwrap_err();
            let queue = lines.queue.lock();
            (first, second, !queue.serving && queue.requests.is_empty())
        });
        assert!(first.is_panic(), "rejected with {first}");
        assert!(first.to_string().contains(INJECTED), "{first}");
        assert!(second.same_as(&first), "rejected with {second}");
        assert!(idle, "nothing is left queued or serving");
    }

    #[test]
    fn after_a_panic_the_stream_reports_it_once_then_ends_and_later_requests_reject_at_once() {
        let (reported, after, started, later) = with_reads_panicking(|| {
            let event_loop = EventLoop::new();
            let mut lines = stdin_lines();
            let mut next_item = || {
                event_loop
                    .block_on(async { Ok::<_, Error>(next(&mut lines).await) })
                    .unwrap()
            };
            let reported = next_item();
            let after = next_item();
            let later = lines.next_line();
            let started = lines.queue.lock().serving;
            let later = event_loop.block_on(later);
            (reported, after, started, later)
        });
        let reported = match reported {
            Some(Err(error)) => error,
            other => panic!("the stream gave {other:?}"),
        };
        assert!(reported.is_panic(), "rejected with {reported}");
        assert!(
            after.is_none(),
            "the stream ends after the panic: {after:?}"
        );
        assert!(!started, "a request after the panic starts no server");
        let later = later.unwrap_err();
        assert!(later.same_as(&reported), "rejected with {later}");
    }

    struct PanicsWhenWoken;

    impl std::task::Wake for PanicsWhenWoken {
        fn wake(self: Arc<Self>) {
            panic!("a waker that panics");
        }
    }

    #[test]
    fn a_waker_that_panics_as_the_panic_is_reported_keeps_no_other_request_from_it() {
        let last = with_reads_panicking(|| {
            let event_loop = EventLoop::new();
            let lines = stdin_lines();
            event_loop
                .block_on(async {
                    let mut first = lines.next_line();
                    let waker = Waker::from(Arc::new(PanicsWhenWoken));
                    let polled = Pin::new(&mut first).poll(&mut Context::from_waker(&waker));
                    assert!(polled.is_pending());
                    Ok::<_, Error>(lines.next_line().await)
                })
                .unwrap()
        });
        let last = last.unwrap_err();
        assert!(last.is_panic(), "rejected with {last}");
        assert!(last.to_string().contains(INJECTED), "{last}");
    }

    /// What each request got, shown as a test compares it.
    fn shown(outcome: Result<Option<String>, Error>) -> String {
        match outcome {
            Ok(Some(line)) => line,
            Ok(None) => "the end".to_string(),
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn a_line_whose_request_is_cancelled_as_it_is_served_goes_to_the_next_request() {
        let (cancelled, got) = bounded(|| {
            let event_loop = EventLoop::new();
            let lines = reading("one\ntwo\n");
            let cancelled = cancel_as_it_is_served(lines.next_line());
            let later = [lines.next_line(), lines.next_line(), lines.next_line()];
            let got = later.map(|request| shown(event_loop.block_on(request)));
            (cancelled.try_recv(), got)
        });
        assert_eq!(cancelled, Ok(true), "cancelled before its line reached it");
        assert_eq!(got, ["one", "two", "the end"]);
    }

    #[test]
    fn a_line_given_back_with_no_request_waiting_goes_to_the_next_request_made() {
        let (cancelled, idle, got) = bounded(|| {
            let event_loop = EventLoop::new();
            let lines = reading("one\ntwo\n");
            let cancelled = cancel_as_it_is_served(lines.next_line());
            event_loop.run().unwrap();
            let idle = {
                let queue = lines.queue.lock();
                !queue.serving && queue.requests.is_empty()
            };
            let got = [(); 3].map(|()| shown(event_loop.block_on(lines.next_line())));
            (cancelled.try_recv(), idle, got)
        });
        assert_eq!(cancelled, Ok(true), "cancelled before its line reached it");
        assert!(idle, "the server ended once nobody waited");
        assert_eq!(got, ["one", "two", "the end"]);
    }

    #[test]
    fn an_outcome_given_back_twice_over_still_goes_out_first_errors_too() {
        let (cancelled, got) = bounded(|| {
            let event_loop = EventLoop::new();
            let lines = reading("too long\nok\n").with_max_line_length(3);
            let first = cancel_as_it_is_served(lines.next_line());
            let second = cancel_as_it_is_served(lines.next_line());
            let later = [lines.next_line(), lines.next_line(), lines.next_line()];
            let got = later.map(|request| shown(event_loop.block_on(request)));
            ([first.try_recv(), second.try_recv()], got)
        });
        assert_eq!(
            cancelled,
            [Ok(true), Ok(true)],
            "both were cancelled in time"
        );
        assert_eq!(
            got,
            [
                "error: standard input: line longer than 3 bytes",
                "ok",
                "the end"
            ]
        );
    }
}
