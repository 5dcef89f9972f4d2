//! `thenable::net` over loopback: every operation, partial reads and writes, peers
//! that reset, half-close or vanish, refused connections, bad lines, a thousand
//! connections on one loop, and no file descriptor left behind.
//!
//! Every test body runs under [`run`], on a loop of its own, with a safety net that
//! turns a hang into a failure; no test asserts on timing.
#![cfg(unix)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::task::Poll;
use std::time::Duration;

use common::net::{assert_no_descriptor_leak, kind_of, pair_with_std_peer, run, run_exclusive};
use futures::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use thenable::net::{TcpListener, TcpStream, UdpSocket};
use thenable::{sleep, spawn, Error, Promise};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A connected pair over loopback: (client, server).
async fn connected_pair() -> Result<(TcpStream, TcpStream), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?);
    let (server, _) = listener.accept().await?;
    Ok((client.await?, server))
}

/// Serves `echo: <line>` for each line until the peer closes; answers a bad
/// line with an error line, then closes that connection.
async fn echo_lines(conn: TcpStream) -> Result<(), Error> {
    loop {
        match conn.read_line(64).await {
            Ok(Some(line)) => conn.write_all(format!("echo: {line}\n")).await?,
            Ok(None) => return Ok(()),
            Err(e) => {
                conn.write_all(format!("error: {e}\n")).await?;
                return conn.shutdown(Shutdown::Both).await;
            }
        }
    }
}

/// Accepts connections for ever, each served by [`echo_lines`] in its own task;
/// cancel the returned promise to stop.
fn echo_server(listener: TcpListener) -> Promise<()> {
    spawn(async move {
        let mut incoming = listener.incoming();
        while let Some(conn) = incoming.next().await {
            // A connection that fails is that client's problem: log it, serve on.
            // Dropping the promise detaches the task; it does not cancel it.
            drop(spawn(echo_lines(conn?)).catch(|e| {
                eprintln!("an echo connection failed: {e}");
                Ok(())
            }));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Connect, accept, echo
// ---------------------------------------------------------------------------

#[test]
fn connect_accept_and_echo_lines() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = echo_server(listener);
        let client = TcpStream::connect(addr).await?;
        assert_eq!(client.peer_addr()?, addr);
        for word in ["hello", "promises", "on a loop"] {
            client.write_all(format!("{word}\n")).await?;
            let reply = client.read_line(100).await?;
            assert_eq!(reply, Some(format!("echo: {word}")));
        }
        server.cancel();
        Ok(())
    })
}

#[test]
fn accept_reports_the_peer_address_of_the_client() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, peer) = listener.accept().await?;
        assert_eq!(peer, client.local_addr()?);
        assert_eq!(server.peer_addr()?, client.local_addr()?);
        assert_eq!(server.local_addr()?, client.peer_addr()?);
        Ok(())
    })
}

#[test]
fn operations_chain_with_then_without_async() {
    let reply = run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = listener
            .accept()
            .then(|(conn, _)| conn.read_exact(4).map(move |bytes| (conn, bytes)))
            .then(|(conn, mut bytes)| {
                bytes.reverse();
                conn.write_all(bytes)
            });
        let reply = TcpStream::connect(addr)
            .then(|client| client.write_all("abcd").map(move |()| client))
            .then(|client| client.read_exact(4));
        server.await?;
        reply.await
    });
    assert_eq!(reply, b"dcba");
}

// ---------------------------------------------------------------------------
// Partial reads and writes
// ---------------------------------------------------------------------------

#[test]
fn read_returns_what_is_there_up_to_the_limit() {
    run(async {
        let (client, server) = connected_pair().await?;
        client.write_all("hello").await?;
        assert_eq!(server.read(2).await?, b"he");
        assert_eq!(server.read(100).await?, b"llo"); // a short read, not a wait
        assert!(server.read(0).await?.is_empty());
        Ok(())
    })
}

#[test]
fn read_exact_gathers_bytes_that_arrive_piecemeal() {
    run(async {
        let (client, server) = connected_pair().await?;
        let gathered = server.read_exact(10);
        for byte in b"0123456789" {
            client.write_all(vec![*byte]).await?;
            sleep(Duration::from_millis(1)).await?; // separate segments
        }
        assert_eq!(gathered.await?, b"0123456789");
        Ok(())
    })
}

#[test]
fn large_payload_reaches_a_slow_reader_intact() {
    const LEN: usize = 8 << 20;
    run(async {
        let (writer, reader) = connected_pair().await?;
        let payload: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let sent = writer.write_all(payload.clone());
        let closed = writer.shutdown(Shutdown::Write);
        // Nothing has been read: the kernel cannot hold 8 MiB, so the write is
        // necessarily still under way in partial writes (a state, not a timing).
        sleep(Duration::from_millis(20)).await?;
        assert!(sent.is_pending());
        let mut received = Vec::with_capacity(LEN);
        let mut reads = 0;
        loop {
            let chunk = reader.read(16 * 1024).await?;
            if chunk.is_empty() {
                break;
            }
            received.extend_from_slice(&chunk);
            reads += 1;
            if reads % 32 == 0 {
                sleep(Duration::from_millis(1)).await?; // a slow reader
            }
        }
        sent.await?;
        closed.await?;
        assert_eq!(received.len(), LEN);
        assert!(received == payload, "payload corrupted in transit");
        assert!(reads >= LEN / (16 * 1024));
        Ok(())
    })
}

#[test]
fn writes_go_out_in_call_order_even_unawaited() {
    run(async {
        let (client, server) = connected_pair().await?;
        let mut expected = String::new();
        let mut sends = Vec::new();
        for i in 0..200 {
            // Now and then a large write, so that some writes are partial.
            if i % 50 == 0 {
                let filler = "x".repeat(300_000);
                expected.push_str(&filler);
                sends.push(client.write_all(filler));
            }
            let piece = format!("{i},");
            expected.push_str(&piece);
            sends.push(client.write_all(piece));
        }
        let closed = client.shutdown(Shutdown::Write);
        let mut received = Vec::new();
        loop {
            let chunk = server.read(64 * 1024).await?;
            if chunk.is_empty() {
                break;
            }
            received.extend(chunk);
        }
        for send in sends {
            send.await?;
        }
        closed.await?;
        assert!(String::from_utf8(received).unwrap() == expected);
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Peers that reset, half-close, or go away
// ---------------------------------------------------------------------------

#[test]
fn a_peer_that_resets_rejects_the_read_with_connection_reset() {
    run(async {
        let (stream, peer) = pair_with_std_peer().await?;
        stream.write_all("unread").await?;
        // Closing a socket with unread data sends a reset (RST), not a FIN.
        peer.peek(&mut [0; 1])?;
        drop(peer);
        let err = stream.read(100).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::ConnectionReset);
        let err = stream.write_all("anyone there?").await.unwrap_err();
        assert!(
            matches!(
                kind_of(&err),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
        Ok(())
    })
}

#[test]
fn half_close_lets_the_peer_read_to_the_end_and_still_answer() {
    run(async {
        let (client, server) = connected_pair().await?;
        let sent = client.write_all("request body");
        client.shutdown(Shutdown::Write).await?;
        sent.await?; // out before the shutdown, which sends the queue first
        let mut request = Vec::new();
        loop {
            let chunk = server.read(5).await?;
            if chunk.is_empty() {
                break; // the end of the client's half
            }
            request.extend(chunk);
        }
        assert_eq!(request, b"request body");
        server.write_all("response\n").await?;
        drop(server);
        assert_eq!(client.read_line(100).await?.as_deref(), Some("response"));
        assert_eq!(client.read_line(100).await?, None);
        Ok(())
    })
}

#[test]
fn reads_after_the_peer_closed_see_the_end_of_the_stream() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"last words\n")?;
        drop(peer);
        assert_eq!(stream.read_line(100).await?.as_deref(), Some("last words"));
        assert_eq!(stream.read_line(100).await?, None);
        assert!(stream.read(100).await?.is_empty());
        assert!(stream.read(100).await?.is_empty()); // and again
        let err = stream.read_exact(1).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::UnexpectedEof);
        Ok(())
    })
}

#[test]
fn after_a_short_read_later_bytes_and_the_end_of_the_stream_are_seen() {
    // A short read lets the next read skip its system call and wait for readiness
    // straight away: what arrives after it (bytes, then the peer's close, or both in
    // one go) must still wake that wait, through every reading interface.
    run(async {
        let (mut stream, mut peer) = pair_with_std_peer().await?;
        let mut buf = [0u8; 64];
        peer.write_all(b"one")?;
        assert_eq!(AsyncReadExt::read(&mut stream, &mut buf).await?, 3); // short
        let mut writer = peer.try_clone()?;
        let wrote = spawn(async move {
            sleep(Duration::from_millis(5)).await?; // the read below waits by then
            Ok::<_, Error>(writer.write_all(b"two")?)
        });
        let read = AsyncReadExt::read(&mut stream, &mut buf).await?;
        wrote.await?;
        assert_eq!(&buf[..read], b"two"); // short again
        peer.write_all(b"three")?;
        drop(peer); // the close may arrive with the bytes or after them
        assert_eq!(stream.read(100).await?, b"three");
        assert!(stream.read(100).await?.is_empty());
        assert_eq!(AsyncReadExt::read(&mut stream, &mut buf).await?, 0);
        assert_eq!(stream.read_line(100).await?, None);
        let err = stream.read_exact(1).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::UnexpectedEof);
        Ok(())
    })
}

#[test]
fn a_read_into_an_empty_buffer_takes_nothing_from_the_socket() {
    // A read of nothing reads nothing ahead: what the peer sent stays the
    // kernel's, where readiness (and any other reader of the descriptor) sees it.
    run(async {
        let (mut stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"abc")?;
        thenable::io::readable(&stream).await?;
        assert_eq!(AsyncReadExt::read(&mut stream, &mut []).await?, 0);
        let kernel = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
        let mut peeked = [0u8; 8];
        let in_kernel = kernel.peek(&mut peeked).map_err(|e| e.kind());
        assert_eq!(
            in_kernel,
            Ok(3),
            "the empty read took the bytes from the socket"
        );
        assert_eq!(stream.read(10).await?, b"abc");
        Ok(())
    })
}

/// Polls `future` once, with the task's own waker: its outcome, or `Pending`
/// (then it is dropped).
async fn poll_once<F: std::future::Future>(future: F) -> Poll<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// A stream of lowercase letters with a newline now and then, different at every
/// offset (so that a lost, doubled or moved run of bytes shows).
fn letters_and_lines(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match state % 64 {
                0 => b'\n',
                n => b'a' + (n % 26) as u8,
            }
        })
        .collect()
}

#[test]
fn every_way_of_reading_mixed_on_two_handles_delivers_each_byte_once_in_order() {
    // Small and large `poll_read`s (the small ones read ahead), `poll_fill_buf`
    // with partial `consume`s, the promise reads, reads cancelled or dropped
    // half-way, on a stream and its clone, in an order drawn from a fixed seed,
    // with the peer sending pieces in between (so that reads come back short and
    // later ones wait): every byte sent must come out once, in order, and the end
    // of the stream must be seen by every kind of read.
    const LEN: usize = 400_000;
    const BACKLOG: usize = 32 * 1024; // what the kernel holds for sure: writes never block
    run(async {
        let (first, mut peer) = pair_with_std_peer().await?;
        let mut handles = [first.clone(), first];
        let expected = letters_and_lines(LEN);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut draw = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut sent, mut got) = (0, Vec::with_capacity(LEN));
        let mut steps = 0;
        while got.len() < LEN {
            steps += 1;
            let backlog = sent - got.len();
            if sent < LEN && backlog < BACKLOG && (backlog == 0 || draw(3) == 0) {
                let piece = (1 + draw(1200)).min(LEN - sent).min(BACKLOG - backlog);
                peer.write_all(&expected[sent..sent + piece])?;
                sent += piece;
            }
            let available = sent - got.len();
            let which = draw(2);
            let before = got.len();
            if draw(10) == 0 {
                // A copy lent by one handle, overtaken by a read through the
                // other before it is consumed: that consume takes nothing.
                let lent = AsyncBufReadExt::fill_buf(&mut handles[which]).await?.len();
                let mut buf = vec![0u8; 1 + draw(lent)];
                let n = AsyncReadExt::read(&mut handles[1 - which], &mut buf).await?;
                got.extend_from_slice(&buf[..n]);
                AsyncBufReadExt::consume_unpin(&mut handles[which], 1 + draw(lent));
                assert!(got[before..] == expected[before..got.len()], "step {steps}");
                continue;
            }
            let handle = &mut handles[which];
            match draw(9) {
                0 | 1 => {
                    let mut buf = vec![0u8; [1, 3, 64, 700, 2047, 2048, 5000][draw(7)]];
                    let n = AsyncReadExt::read(handle, &mut buf).await?;
                    got.extend_from_slice(&buf[..n]);
                }
                2 => {
                    let lent = AsyncBufReadExt::fill_buf(handle).await?;
                    let take = 1 + draw(lent.len());
                    got.extend_from_slice(&lent[..take]);
                    AsyncBufReadExt::consume_unpin(handle, take);
                }
                3 => got.extend(TcpStream::read(handle, [1, 100, 5000][draw(3)]).await?),
                4 => got.extend(TcpStream::read_exact(handle, 1 + draw(available)).await?),
                5 => {
                    let rest = &expected[got.len()..sent];
                    if let Some(end) = rest.iter().position(|&b| b == b'\n') {
                        let line = TcpStream::read_line(handle, LEN).await?;
                        let line = line.expect("a line was sent");
                        assert_eq!(line.len(), end);
                        got.extend_from_slice(line.as_bytes());
                        got.push(b'\n');
                    }
                }
                6 => {
                    // More than was sent: it gathers what is there, then waits.
                    let gathering = TcpStream::read_exact(handle, available + 1 + draw(4000));
                    sleep(Duration::ZERO).await?;
                    assert!(gathering.cancel(), "it cannot have finished");
                }
                7 => {
                    let mut buf = vec![0u8; [1, 64, 4096][draw(3)]];
                    let polled = poll_once(AsyncReadExt::read(handle, &mut buf)).await;
                    if let Poll::Ready(n) = polled {
                        got.extend_from_slice(&buf[..n?]);
                    } // else dropped while it waited: it took nothing
                }
                _ => {
                    // Started before its bytes are sent, or at least before the
                    // loop has looked at the socket again.
                    let reading = TcpStream::read(handle, 64);
                    sleep(Duration::ZERO).await?;
                    if sent < LEN && sent - got.len() < BACKLOG {
                        let piece = (1 + draw(100)).min(LEN - sent);
                        peer.write_all(&expected[sent..sent + piece])?;
                        sent += piece;
                    }
                    got.extend(reading.await?);
                }
            }
            assert!(got.len() <= sent, "step {steps}: more bytes than were sent");
            assert!(
                got[before..] == expected[before..got.len()],
                "step {steps}: bytes {before}..{} are not the ones sent",
                got.len()
            );
        }
        drop(peer);
        for handle in &mut handles {
            assert_eq!(AsyncReadExt::read(handle, &mut [0u8; 10]).await?, 0);
            assert_eq!(AsyncReadExt::read(handle, &mut [0u8; 4096]).await?, 0);
            assert!(AsyncBufReadExt::fill_buf(handle).await?.is_empty());
            assert!(TcpStream::read(handle, 10).await?.is_empty());
            assert_eq!(TcpStream::read_line(handle, 10).await?, None);
        }
        Ok(())
    })
}

#[test]
fn reads_after_our_own_shutdown_see_the_end_of_the_stream() {
    run(async {
        let (stream, _peer) = pair_with_std_peer().await?;
        stream.shutdown(Shutdown::Both).await?;
        assert!(stream.read(100).await?.is_empty());
        Ok(())
    })
}

#[test]
fn a_peer_gone_mid_message_is_a_clear_rejection_and_keeps_the_bytes() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"complete\npart")?;
        drop(peer);
        assert_eq!(stream.read_line(100).await?.as_deref(), Some("complete"));
        let err = stream.read_line(100).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::UnexpectedEof);
        assert_eq!(stream.read(100).await?, b"part");
        Ok(())
    })
}

#[test]
fn read_exact_cut_short_keeps_the_bytes() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"12345")?;
        drop(peer);
        let err = stream.read_exact(8).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::UnexpectedEof);
        assert_eq!(stream.read_exact(5).await?, b"12345");
        Ok(())
    })
}

#[test]
fn connecting_where_nobody_listens_is_connection_refused() {
    run(async {
        let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let err = TcpStream::connect(free).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::ConnectionRefused);
        Ok(())
    })
}

#[test]
fn connecting_to_a_name_resolves_it_off_the_loop() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let client = TcpStream::connect(format!("localhost:{port}"));
        let (server, _) = listener.accept().await?;
        let client = client.await?;
        assert_eq!(server.peer_addr()?, client.local_addr()?);
        Ok(())
    })
}

#[test]
fn connect_takes_an_address_in_every_form_and_tries_each_in_turn() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let std::net::SocketAddr::V4(v4) = addr else {
            unreachable!("bound to an IPv4 address")
        };
        let refused = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // A list names no single literal address: it goes through the resolving
        // thread, and the first address refuses.
        let list: &'static [std::net::SocketAddr] = Box::leak(Box::new([refused, addr]));
        let clients = [
            TcpStream::connect(addr),
            TcpStream::connect(v4),
            TcpStream::connect((addr.ip(), addr.port())),
            TcpStream::connect(addr.to_string()),
            TcpStream::connect(list),
        ];
        let mut servers = std::collections::HashMap::new();
        for _ in 0..clients.len() {
            let (server, peer) = listener.accept().await?;
            servers.insert(peer, server); // in the order they connected
        }
        for client in clients {
            let client = client.await?;
            assert_eq!(client.peer_addr()?, addr);
            let server = servers.remove(&client.local_addr()?).expect("accepted");
            client.write_all("x").await?;
            assert_eq!(server.read(1).await?, b"x");
        }
        let nowhere: &'static [std::net::SocketAddr] = &[];
        let err = TcpStream::connect(nowhere).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::InvalidInput);
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Lines: limits, bad input, cancellation
// ---------------------------------------------------------------------------

#[test]
fn a_line_over_the_limit_is_invalid_data_and_consumes_nothing() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"ok\r\n0123456789abcdef\nafter\n")?;
        assert_eq!(stream.read_line(10).await?.as_deref(), Some("ok"));
        let err = stream.read_line(10).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::InvalidData);
        // Nothing was consumed: a raw read still sees the long line.
        assert_eq!(stream.read(10).await?, b"0123456789");
        assert_eq!(stream.read_line(10).await?.as_deref(), Some("abcdef"));
        assert_eq!(stream.read_line(10).await?.as_deref(), Some("after"));
        Ok(())
    })
}

#[test]
fn an_endless_line_is_rejected_without_waiting_for_its_end() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        // No newline ever: the limit alone must end the read.
        peer.write_all(&[b'z'; 5000])?;
        let err = stream.read_line(1000).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::InvalidData);
        drop(peer);
        Ok(())
    })
}

#[test]
fn a_line_at_exactly_the_limit_is_accepted() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"12345\r\n12345\n")?;
        assert_eq!(stream.read_line(5).await?.as_deref(), Some("12345"));
        assert_eq!(stream.read_line(5).await?.as_deref(), Some("12345"));
        Ok(())
    })
}

#[test]
fn a_line_that_is_not_utf8_is_invalid_data_and_skipped() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        peer.write_all(b"\xff\xfe\nnext\n")?;
        let err = stream.read_line(100).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::InvalidData);
        assert_eq!(stream.read_line(100).await?.as_deref(), Some("next"));
        Ok(())
    })
}

#[test]
fn a_cancelled_read_line_loses_no_bytes() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        let first = stream.read_line(100);
        peer.write_all(b"hel")?;
        sleep(Duration::from_millis(5)).await?; // let it read the first half
        assert!(first.cancel());
        peer.write_all(b"lo\n")?;
        assert_eq!(stream.read_line(100).await?.as_deref(), Some("hello"));
        Ok(())
    })
}

/// A read cancelled before its task ever ran consumes nothing: the bytes are there
/// for the next read (the same holds for `read_exact`, `accept` and `recv_from`,
/// which run the same way).
#[test]
fn a_read_cancelled_at_once_leaves_the_bytes_for_the_next_one() {
    run(async {
        let (client, server) = connected_pair().await?;
        client.write_all("line one\n").await?;
        // Let the line arrive, so that a read that did run would consume it.
        sleep(Duration::from_millis(10)).await?;
        let cancelled = server.read_line(100);
        assert!(cancelled.cancel());
        assert_eq!(server.read_line(100).await?.as_deref(), Some("line one"));
        Ok(())
    })
}

#[test]
fn a_misbehaving_client_does_not_disturb_the_others() {
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = echo_server(listener);
        let polite = TcpStream::connect(addr).await?;
        let rude = TcpStream::connect(addr).await?;
        polite.write_all("before\n").await?;
        assert_eq!(
            polite.read_line(100).await?.as_deref(),
            Some("echo: before")
        );
        rude.write_all(vec![b'!'; 10_000]).await?;
        let answer = rude.read_line(200).await?.unwrap();
        assert!(answer.starts_with("error: line longer than"), "{answer}");
        // And closed: the end of the stream, or a reset, because the server closed
        // with the rest of the long line unread (which TCP answers with RST).
        match rude.read_line(200).await {
            Ok(None) => {}
            Err(e) => assert_eq!(kind_of(&e), ErrorKind::ConnectionReset),
            Ok(Some(line)) => panic!("unexpected {line:?}"),
        }
        polite.write_all("after\n").await?;
        assert_eq!(polite.read_line(100).await?.as_deref(), Some("echo: after"));
        server.cancel();
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// futures-io traits
// ---------------------------------------------------------------------------

#[test]
fn futures_io_traits_read_lines_and_write() {
    run(async {
        let (mut client, server) = connected_pair().await?;
        AsyncWriteExt::write_all(&mut client, b"alpha\nbeta\n").await?;
        AsyncWriteExt::close(&mut client).await?;
        let lines: Vec<String> = AsyncBufReadExt::lines(server)
            .map(|line| line.unwrap())
            .collect()
            .await;
        assert_eq!(lines, ["alpha", "beta"]);
        Ok(())
    })
}

#[test]
fn buffered_trait_reads_and_promise_reads_share_one_order() {
    run(async {
        let (client, mut server) = connected_pair().await?;
        client.write_all("one\ntwo\nthree\nfour").await?;
        client.shutdown(Shutdown::Write).await?;
        let mut first = String::new();
        AsyncBufReadExt::read_line(&mut server, &mut first).await?;
        assert_eq!(first, "one\n");
        // `poll_fill_buf` took more than one line; the promise read sees the rest.
        assert_eq!(server.read_line(100).await?.as_deref(), Some("two"));
        let mut byte = [0; 1];
        AsyncReadExt::read_exact(&mut server, &mut byte).await?;
        assert_eq!(&byte, b"t");
        let mut rest = Vec::new();
        AsyncReadExt::read_to_end(&mut server, &mut rest).await?;
        assert_eq!(rest, b"hree\nfour");
        Ok(())
    })
}

#[test]
fn trait_writes_keep_their_place_among_queued_writes() {
    run(async {
        let (mut client, server) = connected_pair().await?;
        let first = client.write_all("1");
        AsyncWriteExt::write_all(&mut client, b"2").await?;
        let third = client.write_all("3");
        first.await?;
        third.await?;
        assert_eq!(server.read_exact(3).await?, b"123");
        Ok(())
    })
}

/// Reads `stream` to the end of the stream, on a task of its own.
fn read_to_end(stream: TcpStream) -> Promise<Vec<u8>> {
    spawn(async move {
        let mut received = Vec::new();
        loop {
            let chunk = stream.read(64 * 1024).await?;
            if chunk.is_empty() {
                return Ok(received);
            }
            received.extend(chunk);
        }
    })
}

/// More than the socket buffers of both ends hold, so that writes stay queued.
const MORE_THAN_THE_KERNEL_HOLDS: usize = 8 << 20;

/// `poll_close` (`AsyncWriteExt::close`) is Ready only once the queued writes are
/// out, and the peer sees them all before the end of the stream, as after
/// Node.js's `end()` or tokio's `shutdown()`.
#[test]
fn close_sends_every_queued_write_before_the_end_of_the_stream() {
    run(async {
        let (mut client, server) = connected_pair().await?;
        let payload = letters_and_lines(MORE_THAN_THE_KERNEL_HOLDS);
        let sent = client.write_all(payload.clone());
        let received = read_to_end(server);
        AsyncWriteExt::close(&mut client).await?;
        sent.await?;
        assert!(received.await? == payload, "bytes lost or moved");
        Ok(())
    })
}

/// A write whose promise is dropped (not cancelled) goes on after the last handle
/// is dropped: its task keeps the connection, which closes once the bytes are out.
#[test]
fn a_stream_dropped_with_a_write_in_flight_sends_it_and_then_closes() {
    run(async {
        let (client, server) = connected_pair().await?;
        let payload = letters_and_lines(MORE_THAN_THE_KERNEL_HOLDS);
        drop(client.write_all(payload.clone()));
        drop(client);
        assert!(read_to_end(server).await? == payload, "bytes lost or moved");
        Ok(())
    })
}

/// Queues more than the kernel holds on `client`, lets the write fill the
/// kernel's buffers and wait for room, and cancels it: its bytes stay queued.
/// Gives them back.
async fn queue_and_cancel_a_big_write(client: &TcpStream) -> Result<Vec<u8>, Error> {
    let payload = letters_and_lines(MORE_THAN_THE_KERNEL_HOLDS);
    let first = client.write_all(payload.clone());
    sleep(Duration::from_millis(5)).await?;
    assert!(
        first.cancel(),
        "more than the kernel holds cannot be out yet"
    );
    Ok(payload)
}

/// A write cancelled half-way keeps its place: the bytes it had not sent go out,
/// whole and before later writes, with the next write.
#[test]
fn a_write_cancelled_half_way_goes_out_whole_before_the_next_one() {
    run(async {
        let (client, server) = connected_pair().await?;
        let payload = queue_and_cancel_a_big_write(&client).await?;
        let received = read_to_end(server);
        client.write_all("tail").await?;
        client.shutdown(Shutdown::Write).await?;
        let mut expected = payload;
        expected.extend_from_slice(b"tail");
        assert!(received.await? == expected, "bytes lost or moved");
        Ok(())
    })
}

/// `poll_flush` and `poll_write` after a cancelled write send its bytes first.
#[test]
fn trait_writes_and_flushes_send_a_cancelled_write_first() {
    run(async {
        let (mut client, server) = connected_pair().await?;
        let payload = queue_and_cancel_a_big_write(&client).await?;
        let received = read_to_end(server);
        AsyncWriteExt::flush(&mut client).await?;
        AsyncWriteExt::write_all(&mut client, b"tail").await?;
        AsyncWriteExt::close(&mut client).await?;
        let mut expected = payload;
        expected.extend_from_slice(b"tail");
        assert!(received.await? == expected, "bytes lost or moved");
        Ok(())
    })
}

/// Queues a write on `writer` at every turn of the loop, never waiting for one to
/// finish, until `stop` is set (or a generous cap, so that a bug cannot make it
/// write for ever); returns the promises of its writes.
fn write_on_every_turn(
    writer: TcpStream,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Promise<Vec<Promise<()>>> {
    spawn(async move {
        let mut writes = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) && writes.len() < 10_000 {
            writes.push(writer.write_all(vec![b'!'; 64 * 1024]));
            sleep(Duration::ZERO).await?;
        }
        Ok(writes)
    })
}

/// `shutdown(Write)` sends what was queued when it was called, then the end of
/// the stream: a writer on another handle that keeps writing while the shutdown
/// waits for room neither delays it nor gets its bytes in; each of its writes
/// after the call rejects at once with `BrokenPipe` (Node.js: "write after end").
#[test]
fn shutdown_sends_what_was_queued_when_called_and_later_writes_reject_at_once() {
    run(async {
        let (client, server) = connected_pair().await?;
        let writer = client.clone();
        let payload = letters_and_lines(MORE_THAN_THE_KERNEL_HOLDS);
        let sent = client.write_all(payload.clone());
        let before = writer.write_all("queued before the shutdown");
        let closed = client.shutdown(Shutdown::Write);
        let after = writer.write_all("queued after the shutdown");
        assert!(after.is_rejected(), "a write after shutdown must not wait");
        assert_eq!(kind_of(&after.await.unwrap_err()), ErrorKind::BrokenPipe);
        // Nothing has been read: the kernel cannot hold it all, so the shutdown
        // necessarily still waits for room (a state, not a timing).
        sleep(Duration::from_millis(5)).await?;
        assert!(closed.is_pending());

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = write_on_every_turn(writer.clone(), stop.clone());
        let received = read_to_end(server);
        closed.await?;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let busy_writes = busy.await?;
        assert!(!busy_writes.is_empty(), "the busy writer never ran");
        for write in busy_writes {
            assert!(write.is_rejected(), "a write after shutdown must not wait");
            assert_eq!(kind_of(&write.await.unwrap_err()), ErrorKind::BrokenPipe);
        }
        sent.await?;
        before.await?;
        let mut expected = payload;
        expected.extend_from_slice(b"queued before the shutdown");
        assert!(received.await? == expected, "bytes lost, moved or added");
        Ok(())
    })
}

/// The trait twin: `poll_close` sends what was queued when it was first polled,
/// and a `poll_write` on any handle after that fails with `BrokenPipe` at once.
#[test]
fn close_sends_what_was_queued_when_called_and_later_trait_writes_fail() {
    run(async {
        let (mut client, server) = connected_pair().await?;
        let mut writer = client.clone();
        let payload = letters_and_lines(MORE_THAN_THE_KERNEL_HOLDS);
        let sent = client.write_all(payload.clone());
        let closed: Promise<()> = spawn(async move {
            AsyncWriteExt::close(&mut client).await?;
            Ok(())
        });
        sleep(Duration::from_millis(5)).await?;
        assert!(
            closed.is_pending(),
            "more than the kernel holds cannot be out yet"
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = write_on_every_turn(writer.clone(), stop.clone());
        let trait_write =
            futures::FutureExt::now_or_never(AsyncWriteExt::write_all(&mut writer, b"after"));
        match trait_write {
            Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::BrokenPipe),
            other => panic!("a trait write after close must fail at once: {other:?}"),
        }
        let received = read_to_end(server);
        closed.await?;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for write in busy.await? {
            assert_eq!(kind_of(&write.await.unwrap_err()), ErrorKind::BrokenPipe);
        }
        sent.await?;
        assert!(received.await? == payload, "bytes lost, moved or added");
        Ok(())
    })
}

#[test]
fn clones_share_the_connection_and_its_buffer() {
    run(async {
        let (client, server) = connected_pair().await?;
        let writer = client.clone();
        writer.write_all("ping\nrest").await?;
        drop(writer); // the connection stays open
        assert_eq!(server.read_line(10).await?.as_deref(), Some("ping"));
        let server_clone = server.clone();
        assert_eq!(server_clone.read(10).await?, b"rest");
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Scale and descriptors
// ---------------------------------------------------------------------------

#[test]
fn a_thousand_concurrent_connections_on_one_loop() {
    const CONNECTIONS: usize = 1000;
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = echo_server(listener);
        // All of them open at once...
        let connecting: Vec<Promise<TcpStream>> =
            (0..CONNECTIONS).map(|_| TcpStream::connect(addr)).collect();
        let mut clients = Vec::with_capacity(CONNECTIONS);
        for connection in connecting {
            clients.push(connection.await?);
        }
        // ...each talking concurrently.
        let conversations: Vec<Promise<String>> = clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let client = client.clone();
                spawn(async move {
                    client.write_all(format!("client {i}\n")).await?;
                    let reply = client.read_line(100).await?;
                    Ok(reply.unwrap_or_default())
                })
            })
            .collect();
        for (i, conversation) in conversations.into_iter().enumerate() {
            assert_eq!(conversation.await?, format!("echo: client {i}"));
        }
        drop(clients);
        server.cancel();
        Ok(())
    })
}

#[test]
fn no_descriptor_is_left_open() {
    // Once the loop and every socket are gone, helper threads may still be
    // exiting: the check waits for the count to come back (bounded).
    assert_no_descriptor_leak(|| {
        run_exclusive(async {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let server = echo_server(listener);
            for i in 0..20 {
                let client = TcpStream::connect(addr).await?;
                client.write_all(format!("{i}\n")).await?;
                assert_eq!(client.read_line(100).await?, Some(format!("echo: {i}")));
            }
            // Failure paths close their sockets too.
            let rude = TcpStream::connect(addr).await?;
            rude.write_all(vec![b'x'; 1000]).await?;
            assert!(rude.read_line(200).await?.unwrap().starts_with("error:"));
            let free = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            assert!(TcpStream::connect(free).await.is_err());
            let (stream, peer) = pair_with_std_peer().await?;
            stream.write_all("unread").await?;
            peer.peek(&mut [0; 1])?;
            drop(peer);
            assert!(stream.read(10).await.is_err());
            let pending_read = stream.read(10);
            pending_read.cancel();
            let udp = UdpSocket::bind("127.0.0.1:0")?;
            udp.send_to("self", udp.local_addr()?).await?;
            udp.recv_from(10).await?;
            server.cancel();
            Ok(())
        });
    });
}

// ---------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------

#[test]
fn udp_send_to_and_recv_from_round_trip() {
    run(async {
        let client = UdpSocket::bind("127.0.0.1:0")?;
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let server_addr = server.local_addr()?;
        let answered = spawn({
            let server = server.clone();
            async move {
                let (question, from) = server.recv_from(1500).await?;
                let mut answer = question;
                answer.reverse();
                server.send_to(answer, from).await?;
                Ok::<SocketAddr, Error>(from)
            }
        });
        assert_eq!(client.send_to("stressed", server_addr).await?, 8);
        let (answer, from) = client.recv_from(1500).await?;
        assert_eq!(answer, b"desserts");
        assert_eq!(from, server_addr);
        assert_eq!(answered.await?, client.local_addr()?);
        Ok(())
    })
}

#[test]
fn udp_datagrams_keep_their_boundaries_and_truncate_to_the_limit() {
    run(async {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let me = socket.local_addr()?;
        socket.send_to("first", me).await?;
        socket.send_to("second", me).await?;
        assert_eq!(socket.recv_from(100).await?.0, b"first");
        assert_eq!(socket.recv_from(3).await?.0, b"sec");
        Ok(())
    })
}

#[test]
fn udp_waits_for_a_datagram_without_blocking_the_loop() {
    run(async {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let me = socket.local_addr()?;
        let received = socket.recv_from(100);
        // While the receive waits, the loop runs a timer that sends the datagram.
        let sender = socket.clone();
        thenable::set_timeout(Duration::from_millis(1), move || {
            drop(sender.send_to("late", me)); // detached: it runs on
        });
        assert_eq!(received.await?.0, b"late");
        Ok(())
    })
}

#[test]
fn a_std_peer_reading_slowly_gets_everything() {
    run(async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let expected = payload.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0; 4096];
            loop {
                let n = peer.read(&mut chunk).unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&chunk[..n]);
                std::thread::sleep(Duration::from_micros(50));
            }
        });
        stream.write_all(payload).await?;
        stream.shutdown(Shutdown::Write).await?;
        // Everything is sent and the stream ended: the reader finishes by itself.
        let got = reader.join().expect("reader thread");
        assert!(got == expected, "payload corrupted in transit");
        Ok(())
    })
}
