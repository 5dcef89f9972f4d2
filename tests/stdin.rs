//! `io::stdin_lines`, tested through child processes: each test runs this test
//! binary again (only `child_process_entry`, chosen by an environment variable) with
//! the standard input under test (a pipe the test writes to, a file, `/dev/null`, a
//! socket), and reads what the child reports, one `child: ...` line per event.
//!
//! No timing assertions: every wait for the child has a generous safety net that
//! turns a hang into a failure.

#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use common::child::{self, report, stdin_from_file, Child};
use futures::StreamExt;
use thenable::io::stdin_lines;
use thenable::{Error, EventLoop};

const CHILD_LIMIT: &str = "THENABLE_STDIN_TEST_LIMIT";

// ---- the parent side: the tests ----

/// This binary as a child in `mode`, its lines cut at `limit` bytes if given.
fn start_child(mode: &str, stdin: Stdio, limit: Option<usize>) -> Child {
    let mut command = child::command(mode);
    if let Some(limit) = limit {
        command.env(CHILD_LIMIT, limit.to_string());
    }
    child::start(command, stdin)
}

/// Writes `input` to the child's stdin on another thread (a pipe holds only so
/// much until the child reads), then closes it.
fn feed(child: &mut Child, input: Vec<u8>) -> thread::JoinHandle<()> {
    let mut stdin = child.process.stdin.take().expect("stdin is a pipe");
    thread::spawn(move || {
        stdin.write_all(&input).unwrap();
    })
}

#[test]
fn a_pipe_gives_lines_as_they_complete_while_the_loop_runs() {
    let mut child = start_child("interactive", Stdio::piped(), None);
    child.write(b"alpha\nbe");
    child.expect(r#"line "alpha""#);
    // Not blocked in a read: its loop runs a timer while "be" waits for the rest.
    child.expect("stdin nonblocking: false"); // a description of its own
    child.expect("timer fired while reading");
    child.write(b"ta\r\n");
    child.expect(r#"line "beta""#);
    child.write(b"\ngamma");
    child.expect(r#"line """#);
    child.close_stdin();
    child.expect(r#"line "gamma""#);
    child.expect("end");
    let rest = child.finish();
    assert_eq!(
        rest,
        ["stdin nonblocking after drop: false", "threads started: 0"],
        "a pipe is read on the loop thread, with no thread per read"
    );
}

#[test]
fn a_regular_file_is_read_to_the_end() {
    let child = start_child("echo", stdin_from_file(b"one\ntwo\r\n\nlast"), None);
    child.expect(r#"line "one""#);
    child.expect("stdin nonblocking: false");
    child.expect(r#"line "two""#);
    child.expect(r#"line """#);
    child.expect(r#"line "last""#);
    child.expect("end");
    child.expect("stdin nonblocking after drop: false");
    child.finish();
}

#[test]
fn dev_null_is_an_immediate_end() {
    let child = start_child("echo", Stdio::null(), None);
    child.expect("end");
    child.expect("stdin nonblocking after drop: false");
    child.finish();
}

#[test]
fn an_empty_pipe_closed_at_once_is_an_end() {
    let mut child = start_child("echo", Stdio::piped(), None);
    child.close_stdin();
    child.expect("end");
    child.finish();
}

#[test]
fn a_socket_is_switched_to_nonblocking_and_back() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut ours = ours;
    let child = start_child("echo", Stdio::from(OwnedFd::from(theirs)), None);
    ours.write_all(b"over a socket\n").unwrap();
    child.expect(r#"line "over a socket""#);
    // A socket cannot be opened again: the description it shares with descriptor 0
    // is switched to non-blocking mode while the lines are read...
    child.expect("stdin nonblocking: true");
    ours.write_all(b"and more").unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    child.expect(r#"line "and more""#);
    child.expect("end");
    // ...and back to blocking mode when they are dropped.
    child.expect("stdin nonblocking after drop: false");
    let rest = child.finish();
    assert_eq!(rest, ["threads started: 0"]);
}

#[test]
fn lines_over_the_limit_are_rejected_and_skipped() {
    let mut input = b"short\n".to_vec();
    input.extend(b"12345678\n"); // exactly the limit: accepted
    input.extend([b'x'; 100]);
    input.extend(b"\nfine\n");
    input.extend(b"123456789\r\n"); // over the limit, however it ends
    input.extend([b'y'; 9]); // over the limit, at the end of input
    let mut child = start_child("echo", Stdio::piped(), Some(8));
    let writer = feed(&mut child, input);
    child.expect(r#"line "short""#);
    child.expect("stdin nonblocking: false");
    child.expect(r#"line "12345678""#);
    child.expect("error InvalidData: standard input: line longer than 8 bytes");
    child.expect(r#"line "fine""#);
    child.expect("error InvalidData: standard input: line longer than 8 bytes");
    child.expect("error InvalidData: standard input: line longer than 8 bytes");
    child.expect("end");
    writer.join().unwrap();
    child.finish();
}

#[test]
fn a_huge_line_is_rejected_without_being_held_and_reading_goes_on() {
    // Four times the default limit, through a pipe that holds less than that: the
    // child must reject it as it arrives.
    let mut input = vec![b'z'; 4 * thenable::io::DEFAULT_MAX_LINE_LENGTH];
    input.extend(b"\nafter the huge one\n");
    let mut child = start_child("echo", Stdio::piped(), None);
    let writer = feed(&mut child, input);
    child.expect(&format!(
        "error InvalidData: standard input: line longer than {} bytes",
        thenable::io::DEFAULT_MAX_LINE_LENGTH
    ));
    child.expect(r#"line "after the huge one""#);
    child.expect("stdin nonblocking: false");
    child.expect("end");
    writer.join().unwrap();
    child.finish();
}

#[test]
fn invalid_utf8_is_rejected_and_the_next_line_is_read() {
    let child = start_child("echo", stdin_from_file(b"\xff\xfe\nok\n"), None);
    child.expect("error InvalidData: standard input: line is not valid UTF-8");
    child.expect(r#"line "ok""#);
    child.expect("stdin nonblocking: false");
    child.expect("end");
    child.finish();
}

#[test]
fn promised_lines_go_to_requests_in_the_order_they_were_made() {
    let child = start_child("promises", stdin_from_file(b"first\nsecond\n"), None);
    child.expect(r#"a=Some("first") b=Some("second") c=None"#);
    child.expect("after the end: None");
    child.finish();
}

#[test]
fn a_cancelled_request_gives_its_line_to_the_next_and_stops_the_wait() {
    let mut child = start_child("cancel", Stdio::piped(), None);
    child.expect("cancelled the first request");
    child.write(b"first\n");
    child.expect(r#"second request got Some("first")"#);
    // A lone request cancelled: `run` returns although no input came.
    child.expect("run returned");
    child.write(b"second\n");
    child.expect(r#"a new request got Some("second")"#);
    child.close_stdin();
    child.finish();
}

#[test]
fn a_second_loop_reads_on_after_the_first_is_dropped() {
    let mut child = start_child("two-loops", Stdio::piped(), None);
    child.write(b"one\n");
    child.expect(r#"first loop got Some("one")"#);
    // Written only now, so the second loop has to wait for it on its own reactor.
    child.write(b"two\n");
    child.expect(r#"second loop got Some("two")"#);
    child.close_stdin();
    child.finish();
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
        "echo" => echo_lines(false),
        "interactive" => echo_lines(true),
        "promises" => serve_promises_in_order(),
        "cancel" => cancel_requests(),
        "two-loops" => read_on_two_loops(),
        other => panic!("unknown child mode {other}"),
    }
}

fn stdin_is_nonblocking() -> bool {
    let flags = rustix::fs::fcntl_getfl(std::io::stdin()).unwrap();
    flags.contains(rustix::fs::OFlags::NONBLOCK)
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Reports each line, error and the end; with `timer`, also a timer set after the
/// first line, which fires only if the loop is not blocked reading.
fn echo_lines(timer: bool) {
    let threads_before = thread_count();
    let mut lines = stdin_lines();
    if let Ok(limit) = std::env::var(CHILD_LIMIT) {
        lines = lines.with_max_line_length(limit.parse().unwrap());
    }
    let event_loop = EventLoop::new();
    event_loop
        .block_on(async {
            let mut first = true;
            while let Some(line) = lines.next().await {
                match line {
                    Ok(line) => report(format!("line {line:?}")),
                    Err(error) => {
                        let kind = error.downcast_ref::<std::io::Error>().unwrap().kind();
                        report(format!("error {kind:?}: {error}"));
                        continue;
                    }
                }
                if std::mem::take(&mut first) {
                    report(format!("stdin nonblocking: {}", stdin_is_nonblocking()));
                    if timer {
                        thenable::set_timeout(Duration::from_millis(10), || {
                            report("timer fired while reading")
                        });
                    }
                }
            }
            report("end");
            Ok::<_, Error>(())
        })
        .unwrap();
    drop(lines);
    report(format!(
        "stdin nonblocking after drop: {}",
        stdin_is_nonblocking()
    ));
    report(format!(
        "threads started: {}",
        thread_count() - threads_before
    ));
}

/// Three requests made at once and awaited in reverse order, then one more.
fn serve_promises_in_order() {
    let lines = stdin_lines();
    let (a, b, c) = (lines.next_line(), lines.next_line(), lines.next_line());
    let c = thenable::block_on(c).unwrap();
    let b = thenable::block_on(b).unwrap();
    let a = thenable::block_on(a).unwrap();
    report(format!("a={a:?} b={b:?} c={c:?}"));
    let after = thenable::block_on(lines.next_line()).unwrap();
    report(format!("after the end: {after:?}"));
}

fn cancel_requests() {
    let event_loop = EventLoop::new();
    let lines = stdin_lines();

    // Two requests; the first is cancelled while both wait: the line the test
    // writes next goes to the second.
    let first = lines.next_line();
    let second = lines.next_line();
    thenable::set_timeout(Duration::from_millis(10), move || {
        assert!(first.cancel());
        report("cancelled the first request");
    });
    let got = event_loop.block_on(second).unwrap();
    report(format!("second request got {got:?}"));

    // A lone request, cancelled while it waits: nothing is left to keep the loop
    // alive, so `run` returns.
    let lone = lines.next_line();
    thenable::set_timeout(Duration::from_millis(10), move || {
        assert!(lone.cancel());
    });
    event_loop.run().unwrap();
    report("run returned");

    let got = event_loop.block_on(lines.next_line()).unwrap();
    report(format!("a new request got {got:?}"));
}

fn read_on_two_loops() {
    let lines = stdin_lines();
    let first = EventLoop::new();
    let got = first.block_on(lines.next_line()).unwrap();
    report(format!("first loop got {got:?}"));
    drop(first);
    let second = EventLoop::new();
    let got = second.block_on(lines.next_line()).unwrap();
    report(format!("second loop got {got:?}"));
}
