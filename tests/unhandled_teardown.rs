//! Unhandled rejections still tracked when their loop goes away, no microtask
//! drain having followed them: an `EventLoop` dropped, a thread that used its
//! default loop ending, a `block_on` whose future was ready at the first poll.
//! Each is reported once through the thread's hook, as at the end of a drain;
//! what teardown itself rejects (work it abandons) is not.
//!
//! Node.js 20, for reference: after
//! `process.on('unhandledRejection', r => log(r)); Promise.reject('a');
//! Promise.reject('b').catch(() => {})`, the end of the script's drain reports
//! `a` alone, before the process's `exit` event.
//!
//! The hook is per thread, and each test runs on fresh threads, so the tests
//! cannot see each other's reports.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{within, HOUR, MARK};
use thenable::{Error, EventLoop, Promise};

/// What the hook reported; shared with the thread that checks it, since a
/// thread's last reports come from its locals' destructors.
type Seen = Arc<Mutex<Vec<String>>>;

/// Installs on this thread a hook that logs each report.
fn log_reports() -> Seen {
    let seen = Seen::default();
    let log = seen.clone();
    thenable::set_unhandled_rejection_hook(move |e: &Error| {
        log.lock().unwrap().push(e.to_string())
    });
    seen
}

fn entries(seen: &Seen) -> Vec<String> {
    seen.lock().unwrap().clone()
}

/// Runs `body` on a thread of its own, with a logging hook, and returns what
/// the hook reported by the time the thread (and its locals) were gone, and what
/// it had reported when `body` returned.
fn thread_reports(body: impl FnOnce() + Send + 'static) -> (Vec<String>, Vec<String>) {
    within(|| {
        let seen = Seen::default();
        let (log, at_return) = (seen.clone(), Seen::default());
        let before_exit = at_return.clone();
        std::thread::spawn(move || {
            let reported = log.clone();
            thenable::set_unhandled_rejection_hook(move |e: &Error| {
                reported.lock().unwrap().push(e.to_string())
            });
            body();
            *before_exit.lock().unwrap() = entries(&log);
        })
        .join()
        .unwrap();
        (entries(&seen), entries(&at_return))
    })
}

#[test]
fn a_dropped_loop_reports_the_rejections_it_still_tracks() {
    let seen = within(|| {
        let seen = log_reports();
        let event_loop = EventLoop::new();
        drop(Promise::<i32>::rejected(Error::msg("lost")));
        // Handled before the loop goes: its `catch` never runs (abandoned with
        // the loop, its promise breaks: teardown's rejection, not reported).
        let caught = Promise::<i32>::rejected(Error::msg("caught")).catch(|_| Ok(0));
        // Cancellation travelling on is never reported.
        drop(Promise::<i32>::rejected(Error::cancelled()));
        assert!(entries(&seen).is_empty(), "no drain has run yet");
        drop(event_loop);
        let reported = entries(&seen);
        drop(caught);
        thenable::reset_unhandled_rejection_hook();
        reported
    });
    assert_eq!(seen, ["lost"]);
}

#[test]
fn a_rejection_reported_by_a_drain_is_not_reported_again_by_the_drop() {
    let seen = within(|| {
        let seen = log_reports();
        let event_loop = EventLoop::new();
        drop(Promise::<i32>::rejected(Error::msg("drained")));
        event_loop.run().unwrap();
        assert_eq!(entries(&seen), ["drained"]);
        drop(Promise::<i32>::rejected(Error::msg("dropped")));
        drop(event_loop);
        let reported = entries(&seen);
        thenable::reset_unhandled_rejection_hook();
        reported
    });
    assert_eq!(seen, ["drained", "dropped"]);
}

#[test]
fn what_the_teardown_rejects_is_not_reported() {
    // Neither by the drop, nor by a later drain of the thread's default loop,
    // nor when the thread ends.
    let (seen, at_return) = thread_reports(|| {
        let event_loop = EventLoop::new();
        // A task whose future holds a resolver: dropping the future breaks the
        // resolver's promise, and the task's own promise breaks too.
        let (held, resolver) = Promise::<i32>::pending();
        let task = thenable::spawn(async move {
            let _resolver = resolver;
            thenable::sleep(HOUR).await?;
            Ok::<_, Error>(())
        });
        // Started, so that the task holds its resolver when the loop goes.
        event_loop
            .block_on(thenable::sleep(Duration::ZERO))
            .unwrap();
        // A handler queued and never run: its promise breaks.
        let queued = Promise::<i32>::resolved(1).then(|v| Ok(v + 1));
        // A sleep, dropped with its timer: its promise breaks.
        let sleeping = thenable::sleep(HOUR);
        drop(event_loop);
        assert!(
            held.is_rejected() && task.is_rejected(),
            "the task's future was dropped"
        );
        assert!(queued.is_rejected() && sleeping.is_rejected());
        drop((held, task, queued, sleeping));
        thenable::block_on(thenable::sleep(Duration::ZERO)).unwrap();
    });
    assert!(at_return.is_empty(), "reported: {at_return:?}");
    assert!(seen.is_empty(), "reported at the thread's end: {seen:?}");
}

#[test]
fn a_thread_that_ends_reports_what_its_default_loop_still_tracks() {
    let (seen, at_return) = thread_reports(|| {
        drop(Promise::<i32>::rejected(Error::msg("at exit")));
    });
    assert!(at_return.is_empty(), "reported early: {at_return:?}");
    assert_eq!(seen, ["at exit"]);
}

#[test]
fn a_block_on_ready_at_once_leaves_the_report_to_the_end_of_the_thread() {
    let (seen, at_return) = thread_reports(|| {
        drop(Promise::<i32>::rejected(Error::msg("early")));
        // Ready at the first poll: `block_on` returns without a drain.
        assert_eq!(thenable::block_on(async { Ok::<_, Error>(1) }).unwrap(), 1);
    });
    assert!(at_return.is_empty(), "no drain ran: {at_return:?}");
    assert_eq!(seen, ["early"]);
}

#[test]
fn a_loop_whose_block_on_was_ready_at_once_reports_when_dropped() {
    let seen = within(|| {
        let seen = log_reports();
        let event_loop = EventLoop::new();
        drop(Promise::<i32>::rejected(Error::msg("early")));
        assert_eq!(event_loop.block_on(async { Ok::<_, Error>(1) }).unwrap(), 1);
        assert!(entries(&seen).is_empty(), "no drain has run yet");
        drop(event_loop);
        let reported = entries(&seen);
        thenable::reset_unhandled_rejection_hook();
        reported
    });
    assert_eq!(seen, ["early"]);
}

#[test]
fn a_hook_that_panics_in_a_loop_s_drop_is_contained_and_sees_every_rejection() {
    let seen = within(|| {
        let seen = Seen::default();
        let log = seen.clone();
        thenable::set_unhandled_rejection_hook(move |e: &Error| {
            log.lock().unwrap().push(e.to_string());
            panic!("{MARK} the hook");
        });
        let event_loop = EventLoop::new();
        drop(Promise::<i32>::rejected(Error::msg("a")));
        drop(Promise::<i32>::rejected(Error::msg("b")));
        let dropped =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(event_loop)));
        thenable::reset_unhandled_rejection_hook();
        assert!(dropped.is_ok(), "the hook's panic unwound out of the drop");
        entries(&seen)
    });
    assert_eq!(seen, ["a", "b"]);
}

#[test]
fn a_hook_that_panics_at_thread_exit_is_contained() {
    // Unwound out of a thread-local's destructor, the panic would abort the
    // process (and this test binary with it).
    let seen = within(|| {
        let seen = Seen::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            thenable::set_unhandled_rejection_hook(move |e: &Error| {
                log.lock().unwrap().push(e.to_string());
                panic!("{MARK} the hook");
            });
            drop(Promise::<i32>::rejected(Error::msg("a")));
            drop(Promise::<i32>::rejected(Error::msg("b")));
        })
        .join()
        .expect("the hook's panic left the thread");
        entries(&seen)
    });
    assert_eq!(seen, ["a", "b"]);
}

// ---------------------------------------------------------------------------
// A rejection whose promise is still held when its loop goes may yet be
// handled: by another loop of the thread, or on the thread it was handed to
// ---------------------------------------------------------------------------

#[test]
fn a_held_rejection_is_left_to_the_thread_s_next_loop() {
    let seen = within(|| {
        let seen = log_reports();
        let first = EventLoop::new();
        let handled = Promise::<i32>::rejected(Error::msg("handled on the next loop"));
        let dropped = Promise::<i32>::rejected(Error::msg("dropped unhandled"));
        let next = EventLoop::new();
        drop(first);
        assert!(entries(&seen).is_empty(), "both may still be handled");
        drop(dropped);
        assert_eq!(next.block_on(handled.catch(|_| Ok(0))).unwrap(), 0);
        let reported = entries(&seen);
        drop(next);
        thenable::reset_unhandled_rejection_hook();
        reported
    });
    // The next loop's drain decides, as for a rejection made there.
    assert_eq!(seen, ["dropped unhandled"]);
}

#[test]
fn a_rejection_handed_to_another_thread_is_not_reported_by_the_end_of_its_own() {
    let (worker, main) = within(|| {
        let worker_seen = Seen::default();
        let log = worker_seen.clone();
        let rejected = std::thread::spawn(move || {
            thenable::set_unhandled_rejection_hook(move |e: &Error| {
                log.lock().unwrap().push(e.to_string())
            });
            // Tracked on the worker's default loop, which never drains.
            Promise::<i32>::rejected(Error::msg("handled by the receiver"))
        })
        .join()
        .unwrap();
        let main_seen = log_reports();
        assert_eq!(thenable::block_on(rejected.catch(|_| Ok(0))).unwrap(), 0);
        thenable::reset_unhandled_rejection_hook();
        (entries(&worker_seen), entries(&main_seen))
    });
    assert!(
        worker.is_empty(),
        "reported at the worker's end: {worker:?}"
    );
    assert!(main.is_empty(), "reported by the receiver: {main:?}");
}

// ---------------------------------------------------------------------------
// Awaited from another executor: the poll drives the thread's loop before it
// takes the outcome, and that drain's end must see the await as a consumer
// ---------------------------------------------------------------------------

#[test]
fn a_rejection_awaited_by_another_executor_is_not_reported() {
    let seen = within(|| {
        let seen = log_reports();
        let awaited = futures::executor::block_on(Promise::<i32>::rejected(Error::msg("awaited")));
        assert_eq!(awaited.unwrap_err().to_string(), "awaited");
        // The same, the loop being an `EventLoop` of the thread.
        let event_loop = EventLoop::new();
        let awaited = futures::executor::block_on(Promise::<i32>::rejected(Error::msg("again")));
        assert!(awaited.is_err());
        drop(event_loop);
        let reported = entries(&seen);
        thenable::reset_unhandled_rejection_hook();
        reported
    });
    assert!(seen.is_empty(), "reported: {seen:?}");
}
