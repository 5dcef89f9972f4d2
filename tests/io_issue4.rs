//! Issue 4's list, where `tests/net.rs` does not already cover it: readiness as
//! promises (`io::readable` / `io::writable`) on sockets, pipes and files; waits
//! dropped when nobody waits (a cancelled or timed-out read, write, accept or
//! receive no longer keeps `run` going on an idle socket); partial writes seen
//! through readiness; reads already waiting when the peer resets or half-closes;
//! writes after our own shutdown; and a line server facing bad input and faults (a
//! line over the limit, bytes that are not text, requests that are not the
//! protocol, a client gone in the middle of a line, a reset) that rejects each with
//! its `io::ErrorKind`, serves everyone else on, and leaves no descriptor open.
//!
//! Every test body runs on a loop of its own with a safety net that turns a hang
//! into a failure; nothing asserts on timing.
#![cfg(unix)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, UdpSocket as StdUdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::net::{
    assert_no_descriptor_leak, kind_of, pair_with_std_peer, run, run_exclusive,
    sharing_descriptors, SAFETY_NET,
};
use common::within_for;
use futures::future::{select, Either};
use thenable::io::{readable, writable};
use thenable::net::{TcpListener, TcpStream, UdpSocket};
use thenable::{sleep, spawn, Error, EventLoop, Promise};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Lets the loop run timers, I/O and tasks for a moment. Used only before asserting
/// that something is *still* pending because what it waits for has not been done
/// yet (a state, not a timing): it must fail whenever readiness is reported early.
async fn let_the_loop_turn() -> Result<(), Error> {
    sleep(Duration::from_millis(5)).await
}

/// A UDP socket from the standard library, bound to loopback.
fn std_udp() -> StdUdpSocket {
    StdUdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket")
}

/// `cat` with both ends piped: a pipe to write to and a pipe to read from, neither
/// of them a socket.
fn cat() -> std::process::Child {
    Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cat")
}

// ---------------------------------------------------------------------------
// Readiness as promises
// ---------------------------------------------------------------------------

#[test]
fn readable_fulfils_once_a_datagram_arrives_and_not_before() {
    run(async {
        let receiver = std_udp();
        receiver.set_nonblocking(true)?;
        let sender = std_udp();
        let ready = readable(&receiver);
        let_the_loop_turn().await?;
        assert!(ready.is_pending(), "readable before anything was sent");
        sender.send_to(b"datagram", receiver.local_addr()?)?;
        ready.await?;
        let mut buf = [0; 32];
        // Non-blocking: a readiness reported too early would fail with WouldBlock.
        let (n, from) = receiver.recv_from(&mut buf)?;
        assert_eq!(&buf[..n], b"datagram");
        assert_eq!(from, sender.local_addr()?);
        Ok(())
    })
}

#[test]
fn readiness_is_a_promise_that_chains_with_then() {
    let echoed = run(async {
        let socket = std_udp();
        let me = socket.local_addr()?;
        let chain = writable(&socket)
            .then(move |()| {
                socket.send_to(b"round trip", me)?;
                Ok(socket)
            })
            .then(|socket| readable(&socket).map(move |()| socket))
            .then(|socket| {
                let mut buf = [0; 32];
                let n = socket.recv(&mut buf)?;
                Ok(buf[..n].to_vec())
            });
        chain.await
    });
    assert_eq!(echoed, b"round trip");
}

#[test]
fn readable_on_a_listener_means_a_connection_waits() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let knock = readable(&listener);
        let_the_loop_turn().await?;
        assert!(knock.is_pending(), "readable before anyone connected");
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        knock.await?;
        let (conn, peer) = listener.accept().await?;
        assert_eq!(peer, client.local_addr()?);
        assert_eq!(conn.peer_addr()?, client.local_addr()?);
        Ok(())
    })
}

#[test]
fn readiness_works_on_pipes_and_reports_the_hang_up() {
    // Taken before the pipes are opened, so a descriptor count never sees them.
    let _shared = sharing_descriptors();
    let mut child = cat();
    let mut to_cat = child.stdin.take().unwrap();
    let mut from_cat = child.stdout.take().unwrap();
    run_exclusive(async {
        writable(&to_cat).await?; // an empty pipe has room
        let output = readable(&from_cat);
        let_the_loop_turn().await?;
        assert!(output.is_pending(), "readable before cat wrote anything");
        to_cat.write_all(b"through a pipe\n")?;
        output.await?;
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let mut buf = [0; 64];
            readable(&from_cat).await?;
            let n = from_cat.read(&mut buf)?;
            assert_ne!(n, 0, "cat ended early");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"through a pipe\n");
        // Closing cat's input makes it exit: the end of its output is readable too.
        drop(to_cat);
        readable(&from_cat).await?;
        assert_eq!(from_cat.read(&mut [0; 8])?, 0);
        Ok(())
    });
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_regular_file_is_always_ready() {
    run(async {
        let path = std::env::temp_dir().join(format!("thenable-io-issue4-{}", std::process::id()));
        std::fs::write(&path, b"contents")?;
        let file = std::fs::File::open(&path)?;
        std::fs::remove_file(&path)?;
        // The poller refuses files; readiness follows poll(2): always ready.
        readable(&file).await?;
        writable(&file).await?;
        let null = std::fs::File::open("/dev/null")?;
        readable(&null).await?;
        Ok(())
    })
}

#[test]
fn writable_waits_while_the_send_buffer_is_full() {
    run(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut writer = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (mut reader, _) = listener.accept()?;
        writer.set_nonblocking(true)?;
        reader.set_read_timeout(Some(SAFETY_NET))?;

        // Fill the socket up: the last write is usually partial, then WouldBlock.
        let chunk = vec![b'w'; 64 * 1024];
        let mut written = 0;
        loop {
            match writer.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let room = writable(&writer);
        let_the_loop_turn().await?;
        // Nobody read anything: the buffers cannot have emptied.
        assert!(room.is_pending(), "writable with full buffers");

        // A reader on another thread drains everything, to the end of the stream.
        let drained = std::thread::spawn(move || {
            let mut total = 0;
            let mut buf = vec![0; 64 * 1024];
            loop {
                match reader.read(&mut buf).expect("read") {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        room.await?;
        // Room again: one more write goes through, in part or whole.
        written += loop {
            match writer.write(&chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => writable(&writer).await?,
                Err(e) => return Err(e.into()),
            }
        };
        writer.shutdown(Shutdown::Write)?;
        // Every byte the partial writes reported, and no other, arrived.
        assert_eq!(drained.join().expect("reader thread"), written);
        Ok(())
    })
}

#[test]
fn a_cancelled_wait_is_dropped_and_no_longer_keeps_the_loop_alive() {
    let _shared = sharing_descriptors();
    let event_loop = EventLoop::new();
    let socket = std_udp();
    // Nobody will ever send to it: only cancellation can end these waits.
    let direct = readable(&socket);
    assert!(direct.cancel());
    // Cancelling a consumer withdraws it, and the wait it alone consumed goes too.
    let chained = readable(&socket).then(|()| Ok(1));
    assert!(chained.cancel());
    event_loop.run().unwrap(); // returns: nothing is armed any more
    assert!(direct.is_cancelled());
}

#[test]
fn a_wait_that_fires_disarms_itself() {
    let _shared = sharing_descriptors();
    let event_loop = EventLoop::new();
    let socket = std_udp();
    let ready = writable(&socket);
    event_loop.run().unwrap(); // returns once the only wait has fired: none is left
    assert!(ready.is_fulfilled());
}

#[test]
fn the_wait_owns_what_it_watches_so_the_source_may_be_dropped() {
    run(async {
        let receiver = std_udp();
        let addr = receiver.local_addr()?;
        let ready = readable(&receiver);
        // The wait watches a duplicate: the socket stays open (and registered
        // safely) while it waits, even with the caller's handle gone.
        drop(receiver);
        std_udp().send_to(b"still there", addr)?;
        ready.await?;
        Ok(())
    })
}

#[test]
fn readiness_of_thenable_sockets_agrees_with_their_operations() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        writable(&client).await?;
        let arrived = readable(&server);
        let_the_loop_turn().await?;
        assert!(arrived.is_pending());
        client.write_all("ping\n").await?;
        arrived.await?;
        // The wait read nothing: the stream still gets every byte.
        assert_eq!(server.read_line(10).await?.as_deref(), Some("ping"));

        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let to_self = udp.local_addr()?;
        let datagram = readable(&udp);
        udp.send_to("self", to_self).await?;
        datagram.await?;
        assert_eq!(udp.recv_from(10).await?.0, b"self");
        Ok(())
    })
}

#[test]
fn a_thousand_readiness_waits_on_one_loop() {
    const SOCKETS: usize = 1000;
    run(async {
        let sockets: Vec<StdUdpSocket> = (0..SOCKETS).map(|_| std_udp()).collect();
        let waits: Vec<Promise<()>> = sockets.iter().map(readable).collect();
        let_the_loop_turn().await?;
        assert!(waits.iter().all(Promise::is_pending));
        let sender = std_udp();
        // In reverse order, so no wait is satisfied by accident of ordering.
        for socket in sockets.iter().rev() {
            sender.send_to(b"x", socket.local_addr()?)?;
        }
        let woken = thenable::all(waits).await?;
        assert_eq!(woken.len(), SOCKETS);
        for socket in &sockets {
            socket.set_nonblocking(true)?;
            assert_eq!(socket.recv(&mut [0; 4])?, 1);
        }
        Ok(())
    })
}

#[test]
fn registrations_are_not_leaked_nor_reused_stale() {
    assert_no_descriptor_leak(|| {
        let event_loop = EventLoop::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for round in 0..50u8 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            let server = thenable::io::Async::new(server).unwrap();
            client.write_all(&[round]).unwrap();
            let got = event_loop
                .block_on(async {
                    let mut byte = [0];
                    server.read_with(|mut s| s.read(&mut byte)).await?;
                    Ok::<_, std::io::Error>(byte[0])
                })
                .unwrap();
            // A stale registration of a reused descriptor number would deliver the
            // wrong socket's readiness, or none: each round reads its own byte.
            assert_eq!(got, round);
        }
        event_loop.run().unwrap(); // nothing armed is left: returns
    });
}

#[test]
fn readiness_waits_leave_no_descriptor_behind() {
    assert_no_descriptor_leak(|| {
        run_exclusive(async {
            let socket = std_udp();
            let me = socket.local_addr()?;
            for _ in 0..50 {
                writable(&socket).await?; // fulfilled
                let never = readable(&socket);
                never.cancel(); // cancelled
                let ready = readable(&socket);
                socket.send_to(b"x", me)?;
                ready.await?;
                socket.recv(&mut [0; 4])?;
            }
            Ok(())
        });
        // A loop dropped with a wait still armed closes what the wait held.
        let event_loop = EventLoop::new();
        let socket = std_udp();
        let abandoned = readable(&socket);
        drop(event_loop);
        assert!(
            abandoned.is_rejected(),
            "a wait whose loop is gone is broken"
        );
    });
}

// ---------------------------------------------------------------------------
// Waits withdrawn when nobody waits: an idle socket no longer keeps `run` alive
// ---------------------------------------------------------------------------

/// [`common::within`] with the socket tests' [`SAFETY_NET`] (a wait left armed
/// keeps `run` going for ever), sharing [`common::net::DESCRIPTORS`] meanwhile.
fn within(f: impl FnOnce() + Send + 'static) {
    // Held here, not by the worker: if the worker hangs, the failure releases it
    // and the descriptor counts of other tests see the leak instead of waiting.
    let _shared = sharing_descriptors();
    within_for(SAFETY_NET, f);
}

/// A thenable stream and its std peer, made without a loop running.
fn idle_stream_pair() -> (TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    (TcpStream::from_std(ours).unwrap(), peer)
}

#[test]
fn cancelled_stream_reads_on_an_idle_socket_let_the_loop_finish() {
    within(|| {
        let event_loop = EventLoop::new();
        let (stream, _peer) = idle_stream_pair();
        let reads = [
            stream.read(10).map(drop),
            stream.read_exact(10).map(drop),
            stream.read_line(10).map(drop),
        ];
        // Let each of them wait for readiness before it is cancelled (which goes up
        // the `map` to the read itself).
        event_loop.block_on(let_the_loop_turn()).unwrap();
        assert!(reads.iter().all(Promise::is_pending));
        for read in &reads {
            assert!(read.cancel());
        }
        event_loop.run().unwrap(); // nobody waits on the socket, which is still open
        drop(stream);
    });
}

#[test]
fn a_read_that_timed_out_lets_the_loop_finish() {
    within(|| {
        let event_loop = EventLoop::new();
        let (stream, _peer) = idle_stream_pair();
        let answer = stream.read_line(100).timeout(Duration::from_millis(1));
        let err = event_loop.block_on(answer).unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        event_loop.run().unwrap();
        drop(stream);
    });
}

#[test]
fn a_cancelled_write_on_a_full_socket_lets_the_loop_finish() {
    within(|| {
        let event_loop = EventLoop::new();
        let (stream, _peer) = idle_stream_pair();
        // More than the buffers of both ends hold while the peer reads nothing.
        let write = stream.write_all(vec![0u8; 32 << 20]);
        event_loop.block_on(let_the_loop_turn()).unwrap();
        assert!(write.is_pending());
        assert!(write.cancel());
        event_loop.run().unwrap();
        drop(stream);
    });
}

#[test]
fn cancelled_accepts_and_receives_let_the_loop_finish() {
    within(|| {
        let event_loop = EventLoop::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let accept = listener.accept();
        let receive = udp.recv_from(100);
        event_loop.block_on(let_the_loop_turn()).unwrap();
        assert!(accept.cancel());
        assert!(receive.cancel());
        event_loop.run().unwrap(); // the listener and the socket are still open
        drop((listener, udp));
    });
}

#[test]
fn a_dropped_incoming_stream_lets_the_loop_finish() {
    use futures::StreamExt;
    within(|| {
        let event_loop = EventLoop::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut incoming = listener.incoming();
        let next = event_loop.block_on(async {
            let next = incoming.next();
            let turn = std::pin::pin!(let_the_loop_turn());
            let first_is_ready = matches!(select(next, turn).await, Either::Left(_));
            Ok::<_, Error>(first_is_ready)
        });
        assert!(!next.unwrap(), "a connection nobody made");
        drop(incoming);
        event_loop.run().unwrap(); // the listener is still open
        drop(listener);
    });
}

#[test]
fn a_dropped_async_readiness_future_lets_the_loop_finish() {
    within(|| {
        let event_loop = EventLoop::new();
        let socket = std_udp();
        socket.set_nonblocking(true).unwrap();
        let socket = thenable::io::Async::new(socket).unwrap();
        let ready = event_loop.block_on(async {
            let readable = std::pin::pin!(socket.readable());
            let turn = std::pin::pin!(let_the_loop_turn());
            let first_is_ready = matches!(select(readable, turn).await, Either::Left(_));
            Ok::<_, Error>(first_is_ready)
        });
        assert!(!ready.unwrap(), "readable with nothing sent");
        event_loop.run().unwrap(); // the socket is still registered
        drop(socket);
    });
}

#[test]
fn a_trait_read_given_up_lets_the_loop_finish_once_its_handle_is_dropped() {
    use futures::io::AsyncReadExt;
    within(|| {
        let event_loop = EventLoop::new();
        let (stream, _peer) = idle_stream_pair();
        let mut reader = stream.clone();
        let read = event_loop.block_on(async {
            let mut buf = [0; 10];
            let read = AsyncReadExt::read(&mut reader, &mut buf);
            let turn = std::pin::pin!(let_the_loop_turn());
            let first_is_ready = matches!(select(read, turn).await, Either::Left(_));
            Ok::<_, Error>(first_is_ready)
        });
        assert!(!read.unwrap(), "read with nothing sent");
        // The trait's poll has no future to withdraw its wait; the handle does.
        drop(reader);
        event_loop.run().unwrap(); // `stream` still holds the socket open
        drop(stream);
    });
}

#[test]
fn withdrawing_one_wait_leaves_the_others_waiting() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        let first = stream.read(100);
        let second = stream.clone().read_line(100);
        let_the_loop_turn().await?;
        assert!(first.cancel());
        peer.write_all(b"for the second\n")?;
        assert_eq!(second.await?.as_deref(), Some("for the second"));

        let socket = std_udp();
        let me = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        let socket = std::sync::Arc::new(thenable::io::Async::new(socket)?);
        let waiter = |socket: std::sync::Arc<thenable::io::Async<StdUdpSocket>>| {
            spawn(async move { Ok::<_, Error>(socket.readable().await?) })
        };
        let (dropped, kept) = (waiter(socket.clone()), waiter(socket.clone()));
        let_the_loop_turn().await?;
        assert!(dropped.cancel());
        socket.get_ref().send_to(b"x", me)?;
        kept.await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Peers that reset or half-close while a read waits; our own shutdown
// ---------------------------------------------------------------------------

#[test]
fn a_read_already_waiting_when_the_peer_resets_is_connection_reset() {
    run(async {
        let (stream, peer) = pair_with_std_peer().await?;
        stream.write_all("unread").await?;
        peer.peek(&mut [0; 1])?; // the bytes are in the peer's buffer...
        let waiting = stream.read(100);
        let_the_loop_turn().await?;
        assert!(waiting.is_pending());
        drop(peer); // ...so closing sends a reset
        let err = waiting.await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::ConnectionReset);
        Ok(())
    })
}

#[test]
fn a_line_waiting_when_the_peer_half_closes_is_unexpected_eof_and_it_can_still_answer() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        let waiting = stream.read_line(100);
        peer.write_all(b"no newline")?;
        peer.shutdown(Shutdown::Write)?; // half-close: the peer still reads
        let err = waiting.await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::UnexpectedEof);
        stream.write_all("error: incomplete line\n").await?;
        drop(stream);
        let mut answer = String::new();
        peer.read_to_string(&mut answer)?;
        assert_eq!(answer, "error: incomplete line\n");
        Ok(())
    })
}

#[test]
fn a_write_after_our_own_shutdown_is_broken_pipe() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        stream.write_all("last").await?;
        stream.shutdown(Shutdown::Write).await?;
        let err = stream.write_all("too late").await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::BrokenPipe);
        let mut got = Vec::new();
        peer.read_to_end(&mut got)?;
        assert_eq!(got, b"last"); // nothing after the shutdown leaked out
        Ok(())
    })
}

#[test]
fn a_read_after_both_halves_are_shut_down_is_the_end_and_a_write_fails() {
    run(async {
        let (stream, _peer) = pair_with_std_peer().await?;
        stream.shutdown(Shutdown::Both).await?;
        assert_eq!(stream.read_line(10).await?, None);
        let err = stream.read_exact(1).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::UnexpectedEof);
        let err = stream.write_all("x").await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::BrokenPipe);
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// A line server facing bad input and faults
// ---------------------------------------------------------------------------

/// The longest request line [`serve_pings`] accepts.
const MAX_LINE: usize = 64;

/// The protocol: `PING <word>` is answered `PONG <word>`; any other text line gets
/// `error: bad request` and the connection is served on. A line the framing
/// rejects (too long, not UTF-8, cut off, reset) gets an error line if the socket
/// still takes one, then ends the connection with that error.
async fn serve_pings(conn: TcpStream) -> Result<(), Error> {
    loop {
        match conn.read_line(MAX_LINE).await {
            Ok(Some(line)) => match line.strip_prefix("PING ") {
                Some(word) => conn.write_all(format!("PONG {word}\n")).await?,
                None => conn.write_all("error: bad request\n").await?,
            },
            Ok(None) => return Ok(()),
            Err(e) => {
                // Best effort: the peer may be gone; the rejection is what matters.
                let _ = conn.write_all(format!("error: {e}\n")).await;
                return Err(e);
            }
        }
    }
}

/// Connects a thenable client and accepts it; the server side is served by its
/// own task, whose promise tells how that connection ended.
async fn connect_and_serve(listener: &TcpListener) -> Result<(TcpStream, Promise<()>), Error> {
    let client = TcpStream::connect(listener.local_addr()?);
    let (conn, _) = listener.accept().await?;
    let served = spawn(serve_pings(conn));
    Ok((client.await?, served))
}

/// A round trip on the polite connection, which must be served throughout.
async fn ping(polite: &TcpStream, word: &str) -> Result<(), Error> {
    polite.write_all(format!("PING {word}\n")).await?;
    let answer = polite.read_line(100).await?;
    assert_eq!(answer, Some(format!("PONG {word}")));
    Ok(())
}

#[test]
fn bad_input_and_faults_are_rejected_with_their_kind_while_others_are_served() {
    assert_no_descriptor_leak(|| {
        run_exclusive(async {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            // One polite client, connected first and served the whole time.
            let (polite, polite_served) = connect_and_serve(&listener).await?;
            ping(&polite, "before").await?;

            // Text that is not the protocol: rejected, and the connection served on.
            let (chatty, chatty_served) = connect_and_serve(&listener).await?;
            chatty
                .write_all("HELO example.com\nPING still-here\n")
                .await?;
            assert_eq!(
                chatty.read_line(100).await?.as_deref(),
                Some("error: bad request")
            );
            assert_eq!(
                chatty.read_line(100).await?.as_deref(),
                Some("PONG still-here")
            );
            drop(chatty);
            chatty_served.await?; // a clean end
            ping(&polite, "after-chatter").await?;

            let mut faults = Vec::new();
            // A line over the limit.
            let (long, long_served) = connect_and_serve(&listener).await?;
            let mut line = vec![b'L'; 10 * MAX_LINE];
            line.push(b'\n');
            long.write_all(line).await?;
            faults.push(("too long", long_served.await.unwrap_err()));
            // The error line, or a reset if the server closed with bytes unread.
            match long.read_line(200).await {
                Ok(Some(reply)) => assert!(reply.starts_with("error: line longer"), "{reply}"),
                Err(e) => assert_eq!(kind_of(&e), ErrorKind::ConnectionReset),
                Ok(None) => panic!("closed without a word"),
            }
            drop(long);
            ping(&polite, "after-too-long").await?;

            // Bytes that are not text.
            let (binary, binary_served) = connect_and_serve(&listener).await?;
            binary.write_all(&b"\x00\xff\xfe\x80garbage\n"[..]).await?;
            faults.push(("not text", binary_served.await.unwrap_err()));
            let reply = binary.read_line(200).await?.unwrap_or_default();
            assert!(reply.starts_with("error: line is not UTF-8"), "{reply:?}");
            assert_eq!(binary.read_line(200).await?, None); // and closed
            drop(binary);
            ping(&polite, "after-garbage").await?;

            // Gone in the middle of a line.
            let (cut, cut_served) = connect_and_serve(&listener).await?;
            cut.write_all("PING half-a-li").await?;
            drop(cut);
            faults.push(("cut off", cut_served.await.unwrap_err()));
            ping(&polite, "after-cut-off").await?;

            // Reset: closed in the middle of a line with an answer still unread.
            let (rude, rude_served) = connect_and_serve(&listener).await?;
            rude.write_all("PING once\n").await?;
            readable(&rude).await?; // the answer arrived; nobody reads it
            rude.write_all("PING tw").await?;
            drop(rude);
            faults.push(("reset", rude_served.await.unwrap_err()));
            ping(&polite, "after-reset").await?;

            let kinds: Vec<(&str, ErrorKind)> =
                faults.iter().map(|(what, e)| (*what, kind_of(e))).collect();
            assert_eq!(
                kinds,
                [
                    ("too long", ErrorKind::InvalidData),
                    ("not text", ErrorKind::InvalidData),
                    ("cut off", ErrorKind::UnexpectedEof),
                    ("reset", ErrorKind::ConnectionReset),
                ]
            );
            // The rejections say what happened, not only its kind.
            assert!(
                faults[0].1.to_string().contains("longer than"),
                "{}",
                faults[0].1
            );
            assert!(faults[1].1.to_string().contains("UTF-8"), "{}", faults[1].1);

            drop(polite);
            polite_served.await?; // served to the end, which was clean
            Ok(())
        });
    });
}

/// A socket made before the loop that waits on it belongs to the thread's default
/// loop, which nobody drives: waiting on it from the new loop is a clear error,
/// not a silent hang.
#[test]
fn waiting_on_a_socket_of_another_loop_is_an_error_not_a_hang() {
    let _shared = sharing_descriptors();
    std::thread::spawn(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let event_loop = EventLoop::new();
        let error = event_loop
            .block_on(listener.accept())
            .expect_err("accept on a listener of another loop");
        assert!(
            error.to_string().contains("another event loop"),
            "unexpected error: {error}"
        );
        // Made once the loop exists, the same works.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = event_loop.block_on(async move {
            let client = TcpStream::connect(addr);
            let (_server_side, _) = listener.accept().await?;
            client.await?;
            Ok::<_, Error>(())
        });
        accepted.expect("accept on this loop's listener");
    })
    .join()
    .expect("the test thread");
}

// ---------------------------------------------------------------------------
// `Async` shared by several waiters, released with waits still registered, and
// awaited from another thread
// ---------------------------------------------------------------------------

/// Two readers and a writer wait on one socket: one write of two bytes wakes both
/// readers (each reads one), and the writer waits on until the peer drains the
/// send buffer.
#[test]
fn two_readers_and_a_writer_waiting_on_one_socket_are_each_woken() {
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use thenable::io::Async;
    run(async {
        let (mine, mut peer) = UnixStream::pair()?;
        mine.set_nonblocking(true)?;
        peer.set_nonblocking(true)?;
        let mut filled = 0;
        while let Ok(n) = (&mine).write(&[0; 4096]) {
            filled += n;
        }
        let mine = Arc::new(Async::new(mine)?);
        let reader = |mine: Arc<Async<UnixStream>>| {
            spawn(async move {
                let mut byte = [0; 1];
                Ok::<_, Error>(mine.read_with(|mut s| s.read(&mut byte)).await?)
            })
        };
        let (first, second) = (reader(mine.clone()), reader(mine.clone()));
        let writer = mine.clone();
        let written =
            spawn(async move { Ok::<_, Error>(writer.write_with(|mut s| s.write(b"z")).await?) });
        let_the_loop_turn().await?;
        peer.write_all(b"ab")?;
        assert_eq!((first.await?, second.await?), (1, 1));
        let mut drained = 0;
        let mut buf = [0; 65536];
        while drained < filled {
            match peer.read(&mut buf) {
                Ok(n) => drained += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => let_the_loop_turn().await?,
                Err(e) => return Err(e.into()),
            }
        }
        assert_eq!(written.await?, 1);
        Ok(())
    })
}

/// `poll_readable` / `poll_writable` registrations cannot be withdrawn, but
/// `into_inner` and `drop` take them back: the loop does not wait on them.
#[test]
fn into_inner_and_drop_release_waits_registered_by_poll() {
    within(|| {
        let event_loop = EventLoop::new();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let socket = std_udp();
        socket.set_nonblocking(true).unwrap();
        let socket = thenable::io::Async::new(socket).unwrap();
        assert!(socket.poll_readable(&mut cx).is_pending());
        let socket = socket.into_inner();
        event_loop.run().unwrap();
        let socket = thenable::io::Async::new(socket).unwrap();
        assert!(socket.poll_readable(&mut cx).is_pending());
        drop(socket);
        event_loop.run().unwrap();
    });
}

/// An object registered with a loop that its thread drives may be awaited by
/// another executor on another thread: the home loop's poller wakes it.
#[test]
fn an_async_awaited_on_another_thread_is_woken_by_its_home_loop() {
    use std::sync::Arc;
    within(|| {
        let event_loop = EventLoop::new();
        let socket = std_udp();
        let to = socket.local_addr().unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = Arc::new(thenable::io::Async::new(socket).unwrap());
        let (received, resolver) = Promise::<usize>::pending();
        let awaiting = socket.clone();
        let elsewhere = std::thread::spawn(move || {
            let mut buf = [0; 4];
            let read = awaiting.read_with(|s| s.recv(&mut buf));
            resolver.resolve(futures::executor::block_on(read).unwrap());
        });
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            std_udp().send_to(b"xy", to).unwrap();
        });
        assert_eq!(event_loop.block_on(received).unwrap(), 2);
        elsewhere.join().unwrap();
        sender.join().unwrap();
        drop(socket);
        event_loop.run().unwrap();
    });
}

// ---------------------------------------------------------------------------
// Readiness awaited by another executor on a thread where no loop runs
// ---------------------------------------------------------------------------

/// [`within`] with the shorter limit of [`common::within`]: a wait nobody wakes
/// hangs for good here, and the body is done in milliseconds otherwise.
fn within_no_loop(f: impl FnOnce() + Send + 'static) {
    let _shared = sharing_descriptors();
    within_for(common::HANG_LIMIT, f);
}

/// The datagram is there before the wait begins, and nothing drives the loop the
/// wait registers with (this thread's default loop): the poll from
/// `futures::executor` must still see it.
#[test]
fn readiness_there_already_reaches_another_executor_on_a_thread_where_no_loop_runs() {
    within_no_loop(|| {
        let socket = std_udp();
        std_udp()
            .send_to(b"xy", socket.local_addr().unwrap())
            .unwrap();
        futures::executor::block_on(readable(&socket)).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut buf = [0; 4];
        assert_eq!(socket.recv(&mut buf).unwrap(), 2);
    });
}

/// A `TcpStream`'s promises awaited by `futures::executor::block_on` on a thread
/// that runs no loop: the connect, then a read whose bytes come after it began
/// to wait (most likely; either order must work).
#[test]
fn a_tcp_read_awaited_by_another_executor_where_no_loop_runs_is_woken_when_data_comes() {
    within_no_loop(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, wait_for_go) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            wait_for_go.recv().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            socket.write_all(b"hello").unwrap();
            socket // open until joined: the read must not see the end instead
        });
        let stream = futures::executor::block_on(TcpStream::connect(addr)).unwrap();
        go.send(()).unwrap();
        let got = futures::executor::block_on(stream.read_exact(5)).unwrap();
        assert_eq!(got, b"hello");
        drop(peer.join().unwrap());
    });
}

/// The same in a tokio runtime of the current thread, for an accept (a promise)
/// and a `futures-io` read (the stream polled directly, its wait registered with
/// tokio's waker): the peer connects, then writes, while both wait.
#[test]
fn an_accept_and_a_futures_io_read_awaited_in_tokio_where_no_loop_runs_are_woken() {
    within_no_loop(|| {
        use futures::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            socket.write_all(b"ping").unwrap();
            socket
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = runtime
            .block_on(async {
                let (mut stream, _) = listener.accept().await?;
                let mut buf = [0; 4];
                AsyncReadExt::read_exact(&mut stream, &mut buf).await?;
                Ok::<_, Error>(buf)
            })
            .unwrap();
        assert_eq!(&got, b"ping");
        drop(peer.join().unwrap());
    });
}

/// The watcher that stands in for the loop ends with it, even while a wait it
/// watches is still pending: a thread that awaited readiness through another
/// executor leaves no descriptor open once it has ended (its default loop's
/// poller, the watcher's own).
#[test]
fn a_loop_s_watcher_ends_with_the_loop_and_leaves_no_descriptor_behind() {
    use std::future::Future;
    assert_no_descriptor_leak(|| {
        within_for(common::HANG_LIMIT, || {
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            // Pending when polled: the waits are left to the watcher. Nothing
            // is ever sent to the first; its promise is dropped, its task waits
            // on until the thread's loop goes.
            let silent = std_udp();
            let mut never = readable(&silent);
            assert!(std::pin::Pin::new(&mut never).poll(&mut cx).is_pending());
            drop(never);
            let socket = std_udp();
            let mut ready = readable(&socket);
            assert!(std::pin::Pin::new(&mut ready).poll(&mut cx).is_pending());
            std_udp()
                .send_to(b"x", socket.local_addr().unwrap())
                .unwrap();
            futures::executor::block_on(ready).unwrap();
        });
    });
}
