//! The reactor keeps a source's level-triggered interest after the wait that
//! armed it, drops a direction reported while nobody waits on it, and registers
//! "no interest" oneshot. These tests drive the paths where that bookkeeping
//! matters and that `tests/net.rs` and `tests/io_issue4.rs` leave alone: a peer
//! that resets or half-closes while the reader sleeps on a timer (so its kept
//! interest is dropped, and a hang-up may use up the oneshot registration) and
//! that the reader's next wait must still see; and a writer done with a socket
//! on which a reader waits (dropping the writer's interest must keep the
//! reader's). (A forgotten `Async` cannot leave the reactor a descriptor number
//! that names another socket: `Async::new` takes only `'static` objects, which
//! its `compile_fail` example checks.)
//!
//! Each body runs under a watchdog that turns a hang into a failure; nothing
//! asserts on timing.
#![cfg(target_os = "linux")]

mod common;

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::net::{kind_of, pair_with_std_peer, sharing_descriptors};
use common::within_for;
use thenable::net::TcpStream;
use thenable::{sleep, Error, EventLoop};

/// How long a body may run before it counts as hung (a safety net: passing bodies
/// take milliseconds).
const WATCHDOG: Duration = Duration::from_secs(10);

/// Runs `body` on a loop of its own, on a fresh thread; fails the test if it
/// fails or is still running after [`WATCHDOG`].
fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Error>>,
{
    let _shared = sharing_descriptors();
    within_for(WATCHDOG, || {
        let event_loop = EventLoop::new();
        event_loop
            .block_on(body())
            .unwrap_or_else(|e| panic!("test failed: {e:?}"));
    });
}

/// Lets the loop poll the reactor while this task sleeps on a timer, so that
/// readiness arriving meanwhile is reported with nobody waiting. Nothing asserts
/// that it was: each test passes either way, and only checks what comes after.
async fn sleep_on_a_timer() -> Result<(), Error> {
    sleep(Duration::from_millis(20)).await
}

/// Reads that each waited before their bytes arrived leave the read interest
/// armed; the last one comes back short, so the stream's next read skips its
/// system call and goes straight to the reactor.
async fn read_twice_after_waiting(
    stream: &TcpStream,
    peer: &mut std::net::TcpStream,
) -> Result<(), Error> {
    for word in ["first", "second"] {
        let read = stream.read(100);
        sleep_on_a_timer().await?; // the read waits by now (not asserted)
        peer.write_all(word.as_bytes())?;
        assert_eq!(read.await?, word.as_bytes());
    }
    Ok(())
}

#[test]
fn a_reset_while_the_reader_sleeps_is_seen_by_its_next_read() {
    // The reset is reported to a read interest nobody uses: it is dropped, and the
    // oneshot "no interest" registration reports the hang-up once more, which
    // disables it. The next read, after a short one, waits without reading
    // first: it must arm the registration again, not trust one that is spent.
    run(|| async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        read_twice_after_waiting(&stream, &mut peer).await?;
        stream.write_all("unread").await?;
        peer.peek(&mut [0; 1])?; // in the peer's buffer: closing sends a reset
        drop(peer);
        sleep_on_a_timer().await?;
        let err = stream.read(100).await.unwrap_err();
        assert_eq!(kind_of(&err), ErrorKind::ConnectionReset);
        Ok(())
    });
}

#[test]
fn a_half_close_while_the_reader_sleeps_is_the_end_and_it_can_still_answer() {
    // A half-close is reported once to the kept read interest (it has no hang-up
    // to report again), which is then dropped; the reader's next wait arms it
    // again and sees the end, and the connection still carries the answer.
    run(|| async {
        let (stream, mut peer) = pair_with_std_peer().await?;
        read_twice_after_waiting(&stream, &mut peer).await?;
        peer.shutdown(Shutdown::Write)?;
        sleep_on_a_timer().await?;
        assert!(stream.read(100).await?.is_empty());
        assert_eq!(stream.read_line(100).await?, None); // and again
        stream.write_all("answer").await?;
        let mut answer = [0; 6];
        peer.read_exact(&mut answer)?;
        assert_eq!(&answer, b"answer");
        Ok(())
    });
}

#[test]
fn a_writer_done_with_a_socket_leaves_the_reader_waiting_on_it_armed() {
    // The writer's interest outlives its wait; the socket stays writable, so it
    // is reported once more with no writer left, and dropped. That must drop the
    // writing direction only: the reader waiting on the same socket all along
    // still gets its line.
    run(|| async {
        let (stream, peer) = pair_with_std_peer().await?;
        let line = stream.read_line(100);
        let big = vec![7u8; 8 << 20]; // more than both socket buffers hold
        let sent = stream.write_all(big.clone());
        sleep_on_a_timer().await?; // nobody reads yet: the write waits for room
        let size = big.len();
        let mut reading_peer = peer.try_clone()?;
        let drain = std::thread::spawn(move || {
            let mut got = vec![0; size];
            reading_peer.read_exact(&mut got).map(|()| got)
        });
        sent.await?;
        sleep_on_a_timer().await?; // the writable socket is reported, nobody writes
        assert!(line.is_pending());
        assert!(drain.join().expect("the draining thread")? == big);
        (&peer).write_all(b"for the reader\n")?;
        assert_eq!(line.await?.as_deref(), Some("for the reader"));
        Ok(())
    });
}
