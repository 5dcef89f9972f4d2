//! `io::stdin_lines` and the blocking pool under faults: requests that outlive the
//! loop that started serving them, a stream waiting on another thread's server, a
//! panic in the server, a pool read in flight when its loop goes, requests
//! cancelled on another thread as they are served, a panic payload whose drop
//! panics, and pool jobs whose promise was cancelled.
//!
//! Stdin is tested through child processes, as in `tests/stdin.rs`: each test runs
//! this binary again (only `child_process_entry_point`, chosen by an environment
//! variable) with the standard input under test, and reads the `child: ...` lines
//! it reports. No timing assertions: every wait has a safety net that turns a hang
//! into a failure.

#![cfg(target_os = "linux")]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use common::child::{self, report, stdin_from_file, Child};
use common::{run_cancelling_odd_ones_as_served, FullPool};
use futures::future::{select, Either};
use futures::StreamExt;
use thenable::io::stdin_lines;
use thenable::{spawn_blocking, Error, EventLoop, Promise};

/// How long a child waits for a line before it reports a hang (a safety net).
const CHILD_SAFETY_NET: Duration = Duration::from_secs(20);

// ---- the parent side ----

fn start_child(mode: &str, stdin: Stdio) -> Child {
    child::start(child::command(mode), stdin)
}

#[test]
fn a_stream_polled_on_a_dropped_loop_reads_on_with_the_next_loop() {
    let mut child = start_child("stream-after-loop-dropped", Stdio::piped());
    child.expect("first loop gave up and was dropped");
    child.write(b"one\n");
    child.expect(r#"second loop got "one""#);
}

#[test]
fn a_request_whose_serving_loop_was_dropped_breaks_and_its_line_goes_to_the_next() {
    let mut child = start_child("promise-after-loop-dropped", Stdio::piped());
    child.expect("first loop gave up and was dropped");
    // Nobody serves the old request any more: awaiting it is an error, not a hang.
    child.expect("the old request broke");
    child.write(b"one\n");
    child.expect(r#"a new request got Some("one")"#);
}

#[test]
fn a_stream_waiting_on_another_threads_server_serves_itself_once_that_loop_is_dropped() {
    let mut child = start_child("stream-on-another-thread", Stdio::piped());
    child.expect("the stream waits on the other thread");
    child.expect("the serving loop was dropped");
    // The stream's request went with that loop's server: the stream must hear of
    // it, on its own thread, and ask again to be served there.
    child.write(b"one\n");
    child.expect(r#"the stream got "one""#);
}

#[test]
fn a_panic_in_the_server_rejects_every_waiting_and_later_request_with_it() {
    let mut child = start_child("server-panics", Stdio::piped());
    child.expect("three requests wait");
    child.write(b"one\n");
    // The line went to the first request, whose waker then panicked in the server.
    child.expect(r#"the first request got Some("one")"#);
    child.expect("the promised request: panic: panicked: [expected test panic] woken");
    child.expect("the stream's request: panic: panicked: [expected test panic] woken");
    child.expect("the same error for both: true");
    // Reported once, as a read error is: then the stream ends.
    child.expect("then the stream: None");
    child.expect("a later request: panic: panicked: [expected test panic] woken");
    // Standard input itself was released: a new reader reads on.
    child.expect("a new reader waits");
    child.write(b"two\n");
    child.expect(r#"a new reader got Some("two")"#);
    child.close_stdin();
    child.finish();
}

#[test]
fn a_file_read_in_flight_on_the_pool_when_its_loop_is_dropped_loses_no_line() {
    let child = start_child(
        "pool-read-after-loop-dropped",
        stdin_from_file(b"a\nb\nc\n"),
    );
    child.expect("first loop gave up and was dropped");
    child.expect("lines: a,b,c");
}

/// Rounds of [`RACE_REQUESTS`] requests, every other one cancelled on another
/// thread just as the one before it has its line.
const RACE_ROUNDS: usize = 200;
const RACE_REQUESTS: usize = 32;

#[test]
fn requests_cancelled_on_another_thread_as_lines_are_served_lose_no_line() {
    let total = RACE_ROUNDS * RACE_REQUESTS;
    let input: String = (0..total).map(|n| format!("{n}\n")).collect();
    let child = start_child("cancelled-as-served", stdin_from_file(input.as_bytes()));
    child.expect(&format!("{total} lines, the first out of place: None"));
    child.finish();
}

// ---- the blocking pool ----

/// Reports its drop.
struct Tracked(mpsc::Sender<()>);

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[test]
fn the_result_of_a_job_cancelled_while_running_is_dropped_not_leaked() {
    let (cancelled, dropped) = common::within(|| {
        let (started, has_started) = mpsc::channel::<()>();
        let (release, hold) = mpsc::channel::<()>();
        let (drop_report, was_dropped) = mpsc::channel::<()>();
        let job: Promise<Tracked> = spawn_blocking(move || {
            started.send(()).unwrap();
            hold.recv().unwrap();
            Ok(Tracked(drop_report))
        });
        has_started.recv().unwrap();
        assert!(job.cancel());
        release.send(()).unwrap();
        // Only a dropped result reports, then disconnects; a leaked one never does.
        let dropped = was_dropped.recv().is_ok() && was_dropped.recv().is_err();
        let cancelled = thenable::block_on(job)
            .map(|_| ())
            .unwrap_err()
            .is_cancelled();
        (cancelled, dropped)
    });
    assert!(
        cancelled,
        "the cancelled job's promise reports the cancellation"
    );
    assert!(dropped, "the result was dropped once");
}

/// A panic payload whose own drop panics.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("{} the payload's drop", common::MARK);
    }
}

#[test]
fn a_job_panicking_with_a_payload_whose_drop_panics_still_rejects_as_a_panic() {
    let outcome = common::within(|| {
        let job: Promise<()> = spawn_blocking(|| std::panic::panic_any(PanicsWhenDropped));
        thenable::block_on(job).unwrap_err()
    });
    assert!(outcome.is_panic(), "rejected with {outcome}");
    // The pool survives it.
    let next = common::within(|| thenable::block_on(spawn_blocking(|| Ok::<_, Error>(7))));
    assert_eq!(next.unwrap(), 7);
}

// ---- the child side ----

/// Not a test of its own: the entry point of the child processes the tests above
/// start. Run by the test harness without the variable, it does nothing.
#[test]
fn child_process_entry_point() {
    let Some(mode) = child::mode() else {
        return;
    };
    match mode.as_str() {
        "stream-after-loop-dropped" => stream_after_loop_dropped(),
        "promise-after-loop-dropped" => promise_after_loop_dropped(),
        "pool-read-after-loop-dropped" => pool_read_after_loop_dropped(),
        "stream-on-another-thread" => stream_on_another_thread(),
        "cancelled-as-served" => cancelled_as_served(),
        // Inside `within`, which keeps the provoked panic off stderr.
        "server-panics" => common::within_for(2 * CHILD_SAFETY_NET, server_panics),
        other => panic!("unknown child mode {other}"),
    }
}

/// `wanted`, or `None` once the safety net runs out.
async fn or_hang<T>(wanted: impl std::future::Future<Output = T> + Unpin) -> Option<T> {
    match select(wanted, thenable::sleep(CHILD_SAFETY_NET)).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// Polls `future` once, with the waker of the task that awaits this.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

/// No input is written before the first loop gives up, so its short wait always
/// wins: the read is pending when the loop is dropped.
fn stream_after_loop_dropped() {
    let mut lines = stdin_lines();
    let first = EventLoop::new();
    first
        .block_on(async {
            let gave_up = select(lines.next(), thenable::sleep(Duration::from_millis(20))).await;
            assert!(matches!(gave_up, Either::Right(_)), "no input was written");
            Ok::<_, Error>(())
        })
        .unwrap();
    drop(first);
    report("first loop gave up and was dropped");
    let second = EventLoop::new();
    let got = second
        .block_on(async { Ok::<_, Error>(or_hang(lines.next()).await) })
        .unwrap();
    match got {
        Some(Some(Ok(line))) => report(format!("second loop got {line:?}")),
        Some(other) => report(format!("second loop got {other:?}")),
        None => report("second loop waited for ever"),
    }
}

fn promise_after_loop_dropped() {
    let lines = stdin_lines();
    let first = EventLoop::new();
    let request = lines.next_line();
    first
        .block_on(thenable::sleep(Duration::from_millis(20)))
        .unwrap();
    drop(first);
    report("first loop gave up and was dropped");
    let second = EventLoop::new();
    let got = second
        .block_on(async { Ok::<_, Error>(or_hang(request).await) })
        .unwrap();
    match got {
        Some(Err(error)) if error.is_broken() => report("the old request broke"),
        Some(outcome) => report(format!("the old request got {}", show(outcome))),
        None => report("the old request waited for ever"),
    }
    let got = second
        .block_on(async { Ok::<_, Error>(or_hang(lines.next_line()).await) })
        .unwrap();
    match got {
        Some(outcome) => report(format!("a new request got {}", show(outcome))),
        None => report("a new request waited for ever"),
    }
}

fn show(outcome: Result<Option<String>, Error>) -> String {
    match outcome {
        Ok(line) => format!("{line:?}"),
        Err(error) => format!("error: {error}"),
    }
}

/// The request made first starts the server on the first loop; the stream's
/// request, made on another thread, queues behind it. Then the first loop goes.
fn stream_on_another_thread() {
    let mut lines = stdin_lines();
    let first = EventLoop::new();
    let promised = lines.next_line();
    first
        .block_on(thenable::sleep(Duration::from_millis(20)))
        .unwrap();
    // Dropped, not cancelled: the request stays first in line.
    drop(promised);
    let (queued, is_queued) = mpsc::channel();
    let other = thread::spawn(move || {
        let second = EventLoop::new();
        second
            .block_on(async move {
                let mut next = lines.next();
                assert!(
                    poll_once(&mut next).await.is_pending(),
                    "no input was written"
                );
                queued.send(()).unwrap();
                Ok::<_, Error>(or_hang(next).await)
            })
            .unwrap()
    });
    is_queued.recv().unwrap();
    report("the stream waits on the other thread");
    drop(first);
    report("the serving loop was dropped");
    match other.join().unwrap() {
        Some(Some(Ok(line))) => report(format!("the stream got {line:?}")),
        Some(other) => report(format!("the stream got {other:?}")),
        None => report("the stream waited for ever"),
    }
}

/// A waker that panics when woken: the server that settles its request unwinds.
struct PanicsWhenWoken;

impl Wake for PanicsWhenWoken {
    fn wake(self: Arc<Self>) {
        panic!("{} woken", common::MARK);
    }
}

fn describe(outcome: &Result<Option<String>, Error>) -> String {
    match outcome {
        Ok(line) => format!("{line:?}"),
        Err(error) if error.is_panic() => format!("panic: {error}"),
        Err(error) if error.is_broken() => format!("broken: {error}"),
        Err(error) => format!("error: {error}"),
    }
}

/// Three requests wait (one awaited through a waker that panics, one promised,
/// the stream's own); the line the test writes makes the server panic.
fn server_panics() {
    let mut lines = stdin_lines();
    let event_loop = EventLoop::new();
    event_loop
        .block_on(async {
            let mut bomb = lines.next_line();
            let waker = Waker::from(Arc::new(PanicsWhenWoken));
            let polled = Pin::new(&mut bomb).poll(&mut Context::from_waker(&waker));
            assert!(polled.is_pending(), "no input was written");
            // Awaited from the start, as the stream's request is: a rejection
            // nobody waits for would be reported as unhandled.
            let mut promised = lines.next_line();
            assert!(poll_once(&mut promised).await.is_pending());
            let mut streamed = lines.next();
            assert!(poll_once(&mut streamed).await.is_pending());
            report("three requests wait");

            let bomb = or_hang(bomb).await;
            match bomb {
                Some(outcome) => report(format!("the first request got {}", describe(&outcome))),
                None => report("the first request waited for ever"),
            }
            let promised_error = match or_hang(promised).await {
                Some(outcome) => {
                    report(format!("the promised request: {}", describe(&outcome)));
                    outcome.err()
                }
                None => {
                    report("the promised request waited for ever");
                    None
                }
            };
            let streamed_error = match or_hang(streamed).await {
                Some(Some(outcome)) => {
                    let outcome = outcome.map(Some);
                    report(format!("the stream's request: {}", describe(&outcome)));
                    outcome.err()
                }
                Some(None) => {
                    report("the stream's request: the end");
                    None
                }
                None => {
                    report("the stream's request waited for ever");
                    None
                }
            };
            let same = match (promised_error, streamed_error) {
                (Some(a), Some(b)) => a.same_as(&b),
                _ => false,
            };
            report(format!("the same error for both: {same}"));
            match or_hang(lines.next()).await {
                Some(next) => report(format!("then the stream: {next:?}")),
                None => report("then the stream waited for ever"),
            }
            match or_hang(lines.next_line()).await {
                Some(outcome) => report(format!("a later request: {}", describe(&outcome))),
                None => report("a later request waited for ever"),
            }

            let fresh = stdin_lines();
            report("a new reader waits");
            match or_hang(fresh.next_line()).await {
                Some(outcome) => report(format!("a new reader got {}", describe(&outcome))),
                None => report("a new reader waited for ever"),
            }
            Ok::<_, Error>(())
        })
        .unwrap();
}

/// Standard input is a file of numbered lines, read on the pool: whole chunks of
/// lines are served at once, so the odd requests are often cancelled after the
/// server took them from the queue and before their line reached them.
fn cancelled_as_served() {
    let lines = stdin_lines();
    let event_loop = EventLoop::new();
    let mut got = Vec::new();
    let mut take = |outcome: Result<Option<String>, Error>| match outcome {
        Ok(Some(line)) => {
            got.push(line);
            true
        }
        Ok(None) => false,
        Err(error) => {
            got.push(format!("error: {error}"));
            true
        }
    };
    for _ in 0..RACE_ROUNDS {
        let requests: Vec<_> = (0..RACE_REQUESTS).map(|_| lines.next_line()).collect();
        for (request, cancelled) in run_cancelling_odd_ones_as_served(&event_loop, requests) {
            // One cancelled too late has its line.
            if !cancelled {
                take(event_loop.block_on(request));
            }
        }
    }
    // The lines left, the cancelled requests' among them, go to new requests.
    while take(event_loop.block_on(lines.next_line())) {}
    let out_of_place = got
        .iter()
        .enumerate()
        .find(|(n, line)| **line != n.to_string())
        .map(|(n, line)| format!("{line:?} as line {n}"));
    report(format!(
        "{} lines, the first out of place: {out_of_place:?}",
        got.len()
    ));
}

/// Standard input is a file, read on the pool; the pool is full, so the first read
/// waits in its queue while the first loop gives up and is dropped.
fn pool_read_after_loop_dropped() {
    let pool = FullPool::fill(CHILD_SAFETY_NET);

    let mut lines = stdin_lines();
    let first = EventLoop::new();
    first
        .block_on(async {
            let gave_up = select(lines.next(), thenable::sleep(Duration::from_millis(20))).await;
            assert!(
                matches!(gave_up, Either::Right(_)),
                "the read waits behind a full pool"
            );
            Ok::<_, Error>(())
        })
        .unwrap();
    drop(first);
    report("first loop gave up and was dropped");

    pool.release();
    // The queued read, if it still runs, moves the offset descriptor 0 shares.
    let mut waited = Duration::ZERO;
    while offset_of_stdin() == 0 && waited < CHILD_SAFETY_NET {
        thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    }

    let second = EventLoop::new();
    let all = second
        .block_on(async {
            let mut all = Vec::new();
            while let Some(line) = lines.next().await {
                all.push(line?);
            }
            Ok::<_, Error>(all)
        })
        .unwrap();
    report(format!("lines: {}", all.join(",")));
}

fn offset_of_stdin() -> u64 {
    rustix::fs::seek(std::io::stdin(), rustix::fs::SeekFrom::Current(0)).unwrap()
}
