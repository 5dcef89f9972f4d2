//! Fault hunting in `thenable::net` and `thenable::io`: limits at the edge of their
//! range, clones that share one read buffer across APIs, reads cancelled on
//! another thread as they take their bytes, a peer that vanishes while writes
//! are queued, and a process out of descriptors.
//!
//! Every test body runs on a loop of its own under a safety net that turns a hang
//! into a failure; no test asserts on timing.
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Write};
use std::process::Stdio;

use common::child::{self, report};
use common::net::{kind_of, pair_with_std_peer, run};
use common::run_cancelling_odd_ones_as_served;
use thenable::net::{TcpListener, TcpStream, UdpSocket};
use thenable::{EventLoop, Promise};

/// The child succeeded and printed `expected`.
fn assert_child_said(output: &std::process::Output, expected: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(expected),
        "child status {:?}, stdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------
// "No limit" spelled `usize::MAX`
// ---------------------------------------------------------------------------

/// `usize::MAX` is the natural way to ask for a line of any length; it must not
/// overflow the slack kept for a `\r` (a panic in debug builds, a limit of zero in
/// release builds).
#[test]
fn read_line_without_a_limit_reads_a_line_split_across_reads() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        let line = stream.read_line(usize::MAX);
        peer.write_all(b"hel")?;
        // Let the first half be read on its own before the rest arrives.
        thenable::sleep(std::time::Duration::from_millis(5)).await?;
        peer.write_all(b"lo\n")?;
        assert_eq!(line.await?.as_deref(), Some("hello"));
        Ok(())
    })
}

/// `read(usize::MAX)` means "whatever is there": it must not try to allocate the
/// limit up front.
#[test]
fn read_with_a_huge_limit_returns_what_is_there() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"abc")?;
        assert_eq!(stream.read(usize::MAX).await?, b"abc");
        drop(peer);
        assert!(stream.read(usize::MAX).await?.is_empty());
        Ok(())
    })
}

/// The same for UDP: no datagram is longer than 64 KiB, whatever the limit says.
#[test]
fn recv_from_with_a_huge_limit_returns_the_datagram() {
    run(async {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let me = socket.local_addr()?;
        socket.send_to("whole", me).await?;
        let (datagram, from) = socket.recv_from(usize::MAX).await?;
        assert_eq!(datagram, b"whole");
        assert_eq!(from, me);
        Ok(())
    })
}

/// What a read returns holds what arrived, not the room the read made for it: a
/// caller that keeps many small chunks read with a huge limit (`usize::MAX`, or
/// 64 KiB for UDP) must not keep a megabyte (64 KiB) for each. Node.js shrinks
/// its read buffers to what was read in the same way.
#[test]
fn chunks_read_with_a_huge_limit_keep_no_more_memory_than_they_hold() {
    /// Room a small chunk may carry: far below what the limit would have
    /// reserved (1 MiB for a stream read, 64 KiB for a datagram).
    const SMALL: usize = 4096;
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        let mut kept = Vec::new();
        for message in [&b"abc"[..], b"defgh"] {
            peer.write_all(message)?;
            let chunk = stream.read(usize::MAX).await?;
            assert_eq!(chunk, message);
            kept.push(chunk);
        }
        for chunk in &kept {
            assert!(
                chunk.capacity() <= SMALL,
                "{} bytes kept for {}",
                chunk.capacity(),
                chunk.len()
            );
        }
        drop(peer);
        let end = stream.read(usize::MAX).await?;
        assert!(end.is_empty());
        assert!(
            end.capacity() <= SMALL,
            "{} bytes kept for the end of the stream",
            end.capacity()
        );

        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let me = socket.local_addr()?;
        socket.send_to("tiny", me).await?;
        let (datagram, _) = socket.recv_from(usize::MAX).await?;
        assert_eq!(datagram, b"tiny");
        assert!(
            datagram.capacity() <= SMALL,
            "{} bytes kept for a datagram of 4",
            datagram.capacity()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Clones share one read buffer, whichever API reads
// ---------------------------------------------------------------------------

/// A clone used through `AsyncBufRead` (as `futures` codecs and `lines()` do) must
/// not hide the bytes it buffered from the other handles: "clones share the socket,
/// its read buffer". Here the peer sends three lines and nothing more; the clone
/// reads one, and the next line must be there for the original handle.
#[test]
fn bytes_a_clone_buffered_through_async_buf_read_are_seen_by_the_other_handles() {
    use futures::io::AsyncBufReadExt;
    // A hang is the failure: the bytes are in `reader`'s hands, never coming back.
    common::within_for(std::time::Duration::from_secs(10), || {
        run(async {
            let (stream, mut peer) = pair_with_std_peer().await?;
            let mut reader = stream.clone();
            peer.write_all(b"one\ntwo\nthree\n")?;
            let mut first = String::new();
            AsyncBufReadExt::read_line(&mut reader, &mut first).await?;
            assert_eq!(first, "one\n");
            // `reader` is still alive (a codec keeps its stream): the rest is
            // buffered, and the other handle must see it, in order.
            assert_eq!(stream.read_line(100).await?.as_deref(), Some("two"));
            drop(reader);
            assert_eq!(stream.read_line(100).await?.as_deref(), Some("three"));
            Ok(())
        })
    });
}

// ---------------------------------------------------------------------------
// Reads cancelled on another thread just as they take their bytes
// ---------------------------------------------------------------------------

/// Rounds of [`RACE_REQUESTS`] reads, every other one cancelled on another
/// thread just as the one before it has its bytes: the loop then polls the next
/// read's task, which takes bytes out of the stream (or a datagram out of the
/// socket) and settles its promise, which another thread cancels meanwhile.
const RACE_ROUNDS: usize = 200;
const RACE_REQUESTS: usize = 32;

/// A thenable stream on `event_loop`, whose peer has sent `bytes` and closed,
/// once they have arrived (so that the first poll of a read takes some).
fn stream_that_received(event_loop: &EventLoop, bytes: &[u8]) -> TcpStream {
    let (stream, mut peer) = event_loop
        .block_on(pair_with_std_peer())
        .expect("a connected pair");
    peer.write_all(bytes).expect("the kernel holds it all");
    event_loop
        .block_on(thenable::io::readable(&stream))
        .expect("readable");
    stream
}

/// The bytes the reads of `requests` that were not cancelled (or were cancelled
/// too late, and have them) got, in order.
fn bytes_of_uncancelled(
    event_loop: &EventLoop,
    requests: Vec<Promise<Vec<u8>>>,
    got: &mut Vec<u8>,
) {
    for (request, cancelled) in run_cancelling_odd_ones_as_served(event_loop, requests) {
        if !cancelled {
            got.extend(event_loop.block_on(request).expect("no read fails"));
        }
    }
}

/// Cancels `promise` on another thread, as `Promise::cancel` allows: its task, if
/// queued on the loop, is dropped only when the loop gets to the cancellation,
/// which comes after the polls queued before it.
fn cancel_elsewhere<T: Send + 'static>(promise: Promise<T>) {
    let cancelled = std::thread::spawn(move || promise.cancel()).join().unwrap();
    assert!(cancelled, "nothing ran yet");
}

/// A read cancelled on another thread after its task was queued, before the loop
/// polled it: the poll comes first, takes the bytes, and finds the promise
/// cancelled (the race above, made certain). What it took is the next read's.
#[test]
fn a_read_cancelled_on_another_thread_before_its_task_runs_gives_its_bytes_to_the_next() {
    common::within(|| {
        let event_loop = EventLoop::new();
        let stream = stream_that_received(&event_loop, b"abcdefgh\r\nline\nnot \xff\nrest");
        let read = |promise: Promise<Vec<u8>>| event_loop.block_on(promise).unwrap();
        // Its bytes read straight from the socket, past the (empty) buffer.
        cancel_elsewhere(stream.read(2));
        assert_eq!(read(stream.read_exact(3)), b"abc");
        cancel_elsewhere(stream.read_exact(3));
        assert_eq!(read(stream.read_exact(2)), b"de");
        cancel_elsewhere(stream.read_line(100));
        assert_eq!(
            read(stream.read(4)),
            b"fgh\r",
            "a line gives its `\\r\\n` back"
        );
        cancel_elsewhere(stream.read_line(100));
        assert_eq!(read(stream.read(2)), b"\nl");
        cancel_elsewhere(stream.read_line(100));
        assert_eq!(
            event_loop
                .block_on(stream.read_line(100))
                .unwrap()
                .as_deref(),
            Some("ine")
        );
        // A line that is not UTF-8 is consumed by the error: given back too.
        cancel_elsewhere(stream.read_line(100));
        let error = event_loop.block_on(stream.read_line(100)).unwrap_err();
        assert_eq!(kind_of(&error), ErrorKind::InvalidData);
        cancel_elsewhere(stream.read(usize::MAX));
        assert_eq!(read(stream.read(usize::MAX)), b"rest");
    });
}

/// A read waiting for readiness when a cancelled one gives its bytes back is
/// woken: the kernel, drained of them, would never wake it. It waits there
/// because the read before came back short: the next one then waits without
/// asking the kernel (see `SocketReader` in `net.rs`), while the read after it
/// does ask, and takes what has arrived meanwhile.
#[test]
fn a_read_waiting_when_a_cancelled_one_gives_its_bytes_back_gets_them() {
    common::within(|| {
        let event_loop = EventLoop::new();
        let (stream, mut peer) = event_loop.block_on(pair_with_std_peer()).unwrap();
        peer.write_all(b"x").unwrap();
        assert_eq!(event_loop.block_on(stream.read(10)).unwrap(), b"x"); // short
        peer.write_all(b"yz").unwrap();
        event_loop
            .block_on(thenable::io::readable(&stream))
            .unwrap();
        let waiting = stream.read(10);
        cancel_elsewhere(stream.read(10));
        assert_eq!(event_loop.block_on(waiting).unwrap(), b"yz");
    });
}

/// The error a socket reports once (a reset: after it, reads see the end of
/// the stream) goes back too: the next read reports the reset, not a clean end.
#[test]
fn a_reset_reported_to_a_cancelled_read_is_reported_to_the_next() {
    common::within(|| {
        let event_loop = EventLoop::new();
        let (stream, peer) = event_loop.block_on(pair_with_std_peer()).unwrap();
        event_loop.block_on(stream.write_all("unread")).unwrap();
        // Closing a socket with unread data sends a reset (RST), not a FIN.
        peer.peek(&mut [0; 1]).unwrap();
        drop(peer);
        event_loop
            .block_on(thenable::io::readable(&stream))
            .unwrap();
        cancel_elsewhere(stream.read(10));
        let error = event_loop.block_on(stream.read(10)).unwrap_err();
        assert_eq!(kind_of(&error), ErrorKind::ConnectionReset);
        // Reported once, as the kernel does: then the end.
        assert!(event_loop.block_on(stream.read(10)).unwrap().is_empty());
    });
}

/// The same for `recv_from`: the datagram a cancelled one received is the next
/// one's.
#[test]
fn a_recv_from_cancelled_on_another_thread_before_its_task_runs_gives_its_datagram_to_the_next() {
    common::within(|| {
        let event_loop = EventLoop::new();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for datagram in [&b"first"[..], b"second"] {
            sender.send_to(datagram, to).unwrap();
        }
        let receive = |limit| event_loop.block_on(socket.recv_from(limit)).unwrap().0;
        // Let both arrive, so that the first poll of a `recv_from` receives.
        event_loop
            .block_on(thenable::io::readable(&socket))
            .unwrap();
        cancel_elsewhere(socket.recv_from(16));
        assert_eq!(receive(16), b"first");
        cancel_elsewhere(socket.recv_from(16));
        // Truncated to the limit of the one that gets it, as from the kernel.
        assert_eq!(receive(3), b"sec");
    });
}

/// The same for `accept`: the connection a cancelled one took is the next one's,
/// not closed on its client.
#[test]
fn an_accept_cancelled_on_another_thread_before_its_task_runs_gives_its_connection_to_the_next() {
    common::within(|| {
        let event_loop = EventLoop::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let first = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let second = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Let the connections arrive, so that the first poll of an accept takes one.
        event_loop
            .block_on(thenable::io::readable(&listener))
            .unwrap();
        cancel_elsewhere(listener.accept());
        let (_conn, peer) = event_loop.block_on(listener.accept()).unwrap();
        assert_eq!(peer, first.local_addr().unwrap());
        // And through `incoming` as well.
        cancel_elsewhere(listener.accept());
        let mut incoming = listener.incoming();
        let conn = event_loop
            .block_on(async { futures::StreamExt::next(&mut incoming).await.unwrap() })
            .unwrap();
        assert_eq!(conn.peer_addr().unwrap(), second.local_addr().unwrap());
    });
}

/// Every byte must come out once, in order: what a cancelled read took goes back
/// to the front of the stream's buffer, for the next read. `read_exact` and
/// `read` take turns being the cancelled one; the others read with
/// `read_exact`, or through `futures-io` (`AsyncRead`, `AsyncBufRead`) in a
/// task of their own, never cancelled.
#[test]
fn reads_cancelled_on_another_thread_as_they_take_their_bytes_lose_none() {
    let got = common::within(|| {
        let event_loop = EventLoop::new();
        let sent: Vec<u8> = (0..(RACE_ROUNDS * RACE_REQUESTS) as u32)
            .flat_map(u32::to_be_bytes)
            .collect();
        let stream = stream_that_received(&event_loop, &sent);
        let mut got = Vec::new();
        for _ in 0..RACE_ROUNDS {
            let requests = (0..RACE_REQUESTS)
                .map(|i| match i % 8 {
                    1 | 5 => stream.read(4),
                    2 => read_through_async_read(stream.clone()),
                    6 => read_through_async_buf_read(stream.clone()),
                    _ => stream.read_exact(4),
                })
                .collect();
            bytes_of_uncancelled(&event_loop, requests, &mut got);
        }
        // What is left, given-back bytes first, up to the end of the stream.
        loop {
            let rest = event_loop.block_on(stream.read(usize::MAX)).unwrap();
            if rest.is_empty() {
                break;
            }
            got.extend(rest);
        }
        (sent, got)
    });
    assert_in_order(&got.0, &got.1);
}

/// Four bytes, read with `AsyncReadExt::read_exact`.
fn read_through_async_read(mut stream: TcpStream) -> Promise<Vec<u8>> {
    thenable::spawn(async move {
        let mut bytes = [0; 4];
        futures::AsyncReadExt::read_exact(&mut stream, &mut bytes).await?;
        Ok(bytes.to_vec())
    })
}

/// Up to four bytes, from what `AsyncBufReadExt::fill_buf` lends.
fn read_through_async_buf_read(mut stream: TcpStream) -> Promise<Vec<u8>> {
    use futures::AsyncBufReadExt;
    thenable::spawn(async move {
        let lent = stream.fill_buf().await?;
        let bytes = lent[..lent.len().min(4)].to_vec();
        stream.consume_unpin(bytes.len());
        Ok(bytes)
    })
}

/// The same for lines: a cancelled `read_line` gives its line back, terminator
/// (`\n` or `\r\n`) included.
#[test]
fn lines_read_by_requests_cancelled_on_another_thread_as_they_are_served_are_not_lost() {
    let (sent, got) = common::within(|| {
        let event_loop = EventLoop::new();
        let sent: String = (0..RACE_ROUNDS * RACE_REQUESTS)
            .map(|n| {
                if n % 3 == 0 {
                    format!("{n}\r\n")
                } else {
                    format!("{n}\n")
                }
            })
            .collect();
        let stream = stream_that_received(&event_loop, sent.as_bytes());
        let mut got = Vec::new();
        let mut take = |line: Option<String>| {
            let Some(line) = line else { return false };
            got.push(line);
            true
        };
        for _ in 0..RACE_ROUNDS {
            let requests = (0..RACE_REQUESTS).map(|_| stream.read_line(100)).collect();
            for (request, cancelled) in run_cancelling_odd_ones_as_served(&event_loop, requests) {
                if !cancelled {
                    take(event_loop.block_on(request).expect("every line is UTF-8"));
                }
            }
        }
        while take(event_loop.block_on(stream.read_line(100)).unwrap()) {}
        let sent: Vec<String> = sent.lines().map(str::to_owned).collect();
        (sent, got)
    });
    assert_in_order(&sent, &got);
}

/// The same for datagrams: one a cancelled `recv_from` received goes to the next
/// `recv_from` (a datagram cannot be put back in the kernel).
#[test]
fn datagrams_received_by_recv_froms_cancelled_on_another_thread_are_not_lost() {
    let (sent, got) = common::within(|| {
        let event_loop = EventLoop::new();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let from = sender.local_addr().unwrap();
        let total = (RACE_ROUNDS * RACE_REQUESTS) as u32;
        const ROUND_ENDS: u32 = u32::MAX;
        let mut got = Vec::new();
        let take = |got: &mut Vec<u32>, (datagram, sender): (Vec<u8>, std::net::SocketAddr)| {
            assert_eq!(sender, from);
            got.push(u32::from_be_bytes(datagram.try_into().expect("4 bytes")));
        };
        for round in 0..RACE_ROUNDS {
            // A round's worth at a time: the kernel's buffer holds that much.
            for n in 0..RACE_REQUESTS {
                let n = (round * RACE_REQUESTS + n) as u32;
                sender.send_to(&n.to_be_bytes(), to).unwrap();
            }
            sender.send_to(&ROUND_ENDS.to_be_bytes(), to).unwrap();
            let requests = (0..RACE_REQUESTS).map(|_| socket.recv_from(16)).collect();
            for (request, cancelled) in run_cancelling_odd_ones_as_served(&event_loop, requests) {
                if !cancelled {
                    take(
                        &mut got,
                        event_loop.block_on(request).expect("no receive fails"),
                    );
                }
            }
            // The round's datagrams that the cancelled requests left, given-back
            // ones first, up to the round's end mark (so a lost datagram is a
            // difference, not a wait for ever), so that the kernel's buffer
            // never holds more than a round's.
            while got.last() != Some(&ROUND_ENDS) {
                take(&mut got, event_loop.block_on(socket.recv_from(16)).unwrap());
            }
            got.pop();
        }
        ((0..total).collect::<Vec<u32>>(), got)
    });
    assert_in_order(&sent, &got);
}

/// `got` is `sent`, or else the first place where it is not.
fn assert_in_order<T: PartialEq + std::fmt::Debug>(sent: &[T], got: &[T]) {
    let first_wrong = (0..sent.len().max(got.len())).find(|&i| sent.get(i) != got.get(i));
    if let Some(i) = first_wrong {
        panic!(
            "{} sent, {} got; the first difference at {i}: sent {:?}, got {:?}",
            sent.len(),
            got.len(),
            sent.get(i),
            got.get(i)
        );
    }
}

// ---------------------------------------------------------------------------
// A peer gone while bytes are queued: an error, not a signal
// ---------------------------------------------------------------------------

/// A write to a peer that has reset must reject with the `io::ErrorKind`, even in
/// a process where `SIGPIPE` keeps its default action (killing the process), as
/// in programs that restore it to behave in pipelines, or a library embedded in a
/// C program: the Rust runtime's `SIG_IGN` is not something a library may rely
/// on. Run in a child process, which the signal would kill.
#[test]
fn a_write_to_a_reset_peer_is_an_error_even_where_sigpipe_is_not_ignored() {
    let output = child::command("sigpipe")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_child_said(&output, "child: rejected");
}

/// Gives `SIGPIPE` back its default action (killing the process).
fn restore_default_sigpipe() {
    // SAFETY: `signal` is the C library's, with the signature of its prototype;
    // `SIG_DFL` is 0 and `SIGPIPE` 13 on Linux. Changing a disposition is sound
    // in a single-threaded child that installs no handler.
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    unsafe { signal(SIGPIPE, SIG_DFL) };
}

/// The child's report: two failed writes, each a reset or a broken pipe.
fn report_write_failures(kinds: &[ErrorKind]) {
    assert_eq!(kinds.len(), 2, "writes to a reset peer kept succeeding");
    for kind in kinds {
        assert!(
            matches!(kind, ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{kind:?}"
        );
    }
    report(format!("rejected {kinds:?}"));
}

fn write_to_reset_peer_with_default_sigpipe() {
    restore_default_sigpipe();
    let kinds = run(async {
        let (stream, peer) = pair_with_std_peer().await?;
        // A peer that closes with bytes unread resets the connection (RST).
        stream.write_all("first").await?;
        peer.peek(&mut [0; 1])?; // it arrived, unread
        drop(peer);
        // The first failing write reports the reset; a server that then answers
        // with an error line (or flushes before closing) writes again, and that
        // write meets a socket the kernel already knows to be dead (EPIPE).
        let mut kinds = Vec::new();
        for _ in 0..100 {
            match stream.write_all(vec![b'x'; 64 * 1024]).await {
                Ok(()) => thenable::sleep(std::time::Duration::from_millis(1)).await?,
                Err(e) => {
                    kinds.push(kind_of(&e));
                    if kinds.len() == 2 {
                        break;
                    }
                }
            }
        }
        Ok(kinds)
    });
    report_write_failures(&kinds);
}

/// The same through the `futures-io` trait, whose `poll_write` writes the caller's
/// buffer itself, outside the write queue.
#[test]
fn a_trait_write_to_a_reset_peer_is_an_error_even_where_sigpipe_is_not_ignored() {
    let output = child::command("sigpipe-trait")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_child_said(&output, "child: rejected");
}

fn trait_write_to_reset_peer_with_default_sigpipe() {
    use futures::io::AsyncWriteExt;
    restore_default_sigpipe();
    let kinds = run(async {
        let (mut stream, peer) = pair_with_std_peer().await?;
        AsyncWriteExt::write_all(&mut stream, b"first").await?;
        peer.peek(&mut [0; 1])?; // it arrived, unread: closing resets
        drop(peer);
        let mut kinds = Vec::new();
        for _ in 0..100 {
            match AsyncWriteExt::write_all(&mut stream, &[b'x'; 64 * 1024]).await {
                Ok(()) => thenable::sleep(std::time::Duration::from_millis(1)).await?,
                Err(e) => {
                    kinds.push(e.kind());
                    if kinds.len() == 2 {
                        break;
                    }
                }
            }
        }
        Ok(kinds)
    });
    report_write_failures(&kinds);
}

// ---------------------------------------------------------------------------
// Standard input with no limit
// ---------------------------------------------------------------------------

/// `with_max_line_length(usize::MAX)` must read lines, not overflow.
#[test]
fn stdin_lines_without_a_limit_reads_to_the_end() {
    let mut child = child::command("stdin-no-limit")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"one\ntw").unwrap();
    input.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    input.write_all(b"o\nthree").unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert_child_said(&output, "child: lines [\"one\", \"two\", \"three\"]");
}

fn read_stdin_without_a_limit() {
    use futures::StreamExt;
    let mut lines = thenable::io::stdin_lines().with_max_line_length(usize::MAX);
    let got = thenable::block_on(async move {
        let mut got = Vec::new();
        while let Some(line) = lines.next().await {
            got.push(line?);
        }
        Ok::<_, thenable::Error>(got)
    })
    .unwrap();
    report(format!("lines {got:?}"));
}

// ---------------------------------------------------------------------------
// Out of descriptors: accept errors must not starve the loop
// ---------------------------------------------------------------------------

/// `Incoming` says an error such as running out of descriptors "is yielded and the
/// stream goes on". A server that logs the error and goes on must still let the
/// loop run its other work, above all the connections whose closing would free a
/// descriptor. The pending connection keeps the listener readable, so an
/// `Incoming` that retries at once, in the same poll, makes the accepting task spin
/// without ever returning to the loop. Run in a child process, whose descriptor
/// limit is lowered.
#[test]
fn accept_errors_from_running_out_of_descriptors_let_the_loop_run() {
    let output = child::command("emfile")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_child_said(&output, "child: the timer ran");
}

fn accept_while_out_of_descriptors() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// However many turns of `incoming.next()` a loop that keeps running needs
    /// before a zero-delay timer fires: a handful. A spinning task never stops.
    const STARVED: usize = 10_000;

    let fired = Arc::new(AtomicBool::new(false));
    let errors = run(async {
        let listener = thenable::net::TcpListener::bind("127.0.0.1:0")?;
        let _waiting = std::net::TcpStream::connect(listener.local_addr()?)?;
        // Use up every descriptor but none to spare: the next accept is EMFILE.
        let hoard = use_up_descriptors();
        thenable::set_timeout(std::time::Duration::ZERO, {
            let fired = fired.clone();
            move || fired.store(true, Ordering::SeqCst)
        });
        let mut incoming = listener.incoming();
        let mut errors = 0;
        while let Some(conn) = incoming.next().await {
            match conn {
                Ok(_) => panic!("accepted with no descriptor to spare"),
                Err(_) => errors += 1, // logged and skipped, as servers do
            }
            if fired.load(Ordering::SeqCst) || errors == STARVED {
                break;
            }
        }
        drop(hoard);
        Ok(errors)
    });
    assert!(
        fired.load(Ordering::SeqCst),
        "{errors} accept errors in a row and the loop never ran its timer"
    );
    report(format!("the timer ran after {errors} accept errors"));
}

/// The same for a server that calls `accept()` in a loop and skips its errors (the
/// loop of the module's example, and of every tokio server): each promise rejects
/// at once, the next `accept()` meets the same queued connection, and the loop's
/// other work (the timer) must still get its turn.
#[test]
fn accept_promises_failing_for_want_of_descriptors_let_the_loop_run() {
    let output = child::command("emfile-accept")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_child_said(&output, "child: the timer ran");
}

/// Lowers the descriptor limit so that one is left; returns what holds the rest.
fn use_up_descriptors() -> Vec<std::fs::File> {
    #[repr(C)]
    struct Rlimit {
        current: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, limit: *mut Rlimit) -> i32;
        fn setrlimit(resource: i32, limit: *const Rlimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7;
    let mut limit = Rlimit { current: 0, max: 0 };
    // SAFETY: C library calls with the layout of `struct rlimit` on 64-bit Linux.
    assert_eq!(unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) }, 0);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    limit.current = open + 8;
    assert_eq!(unsafe { setrlimit(RLIMIT_NOFILE, &limit) }, 0);
    let mut hoard = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        hoard.push(file);
    }
    hoard
}

fn accept_promises_while_out_of_descriptors() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    /// As in `accept_while_out_of_descriptors`.
    const STARVED: usize = 10_000;

    let fired = Arc::new(AtomicBool::new(false));
    let errors = run(async {
        let listener = thenable::net::TcpListener::bind("127.0.0.1:0")?;
        let _waiting = std::net::TcpStream::connect(listener.local_addr()?)?;
        let hoard = use_up_descriptors();
        thenable::set_timeout(std::time::Duration::ZERO, {
            let fired = fired.clone();
            move || fired.store(true, Ordering::SeqCst)
        });
        let mut errors = 0;
        loop {
            match listener.accept().await {
                Ok(_) => panic!("accepted with no descriptor to spare"),
                Err(_) => errors += 1, // logged and skipped, as servers do
            }
            if fired.load(Ordering::SeqCst) || errors == STARVED {
                break;
            }
        }
        drop(hoard);
        Ok(errors)
    });
    assert!(
        fired.load(Ordering::SeqCst),
        "{errors} accept errors in a row and the loop never ran its timer"
    );
    report(format!("the timer ran after {errors} accept errors"));
}

/// A wait another executor leaves where no loop runs needs the reactor's
/// watcher thread (a duplicate of the poller's descriptor, a socket pair, a
/// thread): out of descriptors, the first such wait fails with the error, as
/// any I/O call does then, instead of panicking inside the caller's poll.
#[test]
fn a_wait_whose_watcher_cannot_start_fails_with_the_error() {
    let output = child::command("emfile-watcher")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_child_said(&output, "child: the wait failed: EMFILE");
}

fn wait_from_another_executor_while_out_of_descriptors() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    // Registered with this thread's default loop, which nothing drives.
    let socket = thenable::io::Async::new(socket).unwrap();
    let hoard = use_up_descriptors();
    let waited = futures::executor::block_on(socket.readable());
    drop(hoard);
    match waited {
        Err(error) if error.raw_os_error() == Some(24) => report("the wait failed: EMFILE"),
        other => report(format!("the wait gave {other:?}")),
    }
}

/// Not a test of its own: the entry point of the child processes the tests above
/// start. Run by the test harness without the variable, it does nothing.
#[test]
fn child_process_entry_point() {
    let Some(mode) = child::mode() else {
        return;
    };
    match mode.as_str() {
        "sigpipe" => write_to_reset_peer_with_default_sigpipe(),
        "sigpipe-trait" => trait_write_to_reset_peer_with_default_sigpipe(),
        "stdin-no-limit" => read_stdin_without_a_limit(),
        "emfile" => accept_while_out_of_descriptors(),
        "emfile-accept" => accept_promises_while_out_of_descriptors(),
        "emfile-watcher" => wait_from_another_executor_while_out_of_descriptors(),
        other => panic!("unknown child mode {other}"),
    }
}
