//! Fault hunting in `thenable::net` and `thenable::io`: limits at the edge of their
//! range, clones that share one read buffer across APIs, a peer that vanishes
//! while writes are queued, and a process out of descriptors.
//!
//! Every test body runs on a loop of its own under a safety net that turns a hang
//! into a failure; no test asserts on timing.
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Write};
use std::process::Stdio;

use common::child::{self, report};
use common::net::{kind_of, pair_with_std_peer, run};
use thenable::net::UdpSocket;

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
