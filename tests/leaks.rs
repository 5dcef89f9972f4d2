//! Memory given back: a scenario run a thousand times must leave no more memory
//! allocated than it did after a few runs, once everything it made is dropped
//! or settled. Promise nodes, reactions, collectors and task wakers are all
//! reference counted, so a reference cycle, or a list that keeps what nobody
//! needs, would be kept for ever.
//!
//! A global allocator counts the bytes the measuring thread allocates and frees
//! while it measures; the scenarios here run on that thread only, and one test
//! at a time (the registry of loops is process-wide: another test's new loop
//! would free a gone one's entry on its own thread), so the count is exact and
//! the same on every run. (Queues and tables keep the capacity they
//! grew to, which is why each scenario runs as many times before counting.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::StreamExt;
use thenable::{
    all, all_settled, any, as_completed, join, race, scope, shield, sleep, spawn, Error, EventLoop,
    Promise, Resolver, Scope,
};

use common::HOUR;

struct Counting;

thread_local! {
    /// Set while this thread measures. `const`, `Copy` and without destructor, so
    /// reading it from the allocator never allocates.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// Bytes allocated minus bytes freed by this thread while it measured.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let _ = LIVE.try_with(|live| live.set(live.get() + delta));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 1000;

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `scenario` `N` times, then `N` times more, and fails if those `N` runs
/// left memory allocated: less than a byte a run, where keeping even the
/// smallest allocation of each run would leave 16.
fn assert_no_growth(what: &str, mut scenario: impl FnMut()) {
    // The default hook writes to stderr, which the test harness keeps in memory.
    thenable::set_unhandled_rejection_hook(|_| {});
    for _ in 0..N {
        scenario();
    }
    LIVE.with(|live| live.set(0));
    MEASURING.with(|m| m.set(true));
    for _ in 0..N {
        scenario();
    }
    MEASURING.with(|m| m.set(false));
    let grown = LIVE.with(Cell::get);
    assert!(
        grown < N as isize,
        "{what}: {grown} bytes more allocated after {N} runs ({} a run)",
        grown / N as isize
    );
}

fn pending() -> (Promise<u64>, Resolver<u64>) {
    Promise::pending()
}

/// Runs the loop's queued work (a `block_on` of something settled returns at its
/// first poll, before any turn).
fn turn(event_loop: &EventLoop) {
    event_loop.block_on(sleep(Duration::ZERO)).unwrap();
}

/// `scenario` run against one pending promise that outlives all the runs (a
/// shutdown signal, say), whose resolver is kept meanwhile.
fn against_a_long_lived_promise(what: &str, mut scenario: impl FnMut(&EventLoop, &Promise<u64>)) {
    let event_loop = EventLoop::new();
    let (signal, resolver) = pending();
    assert_no_growth(what, || scenario(&event_loop, &signal));
    drop(resolver);
    drop(signal);
    event_loop.run().unwrap();
}

#[test]
fn pending_chains_dropped_or_cancelled_are_given_back() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    assert_no_growth("a chain dropped, then its resolver", || {
        let (root, resolver) = pending();
        drop(root.then(|v| Ok(v + 1)).then(|v| Ok(v + 1)));
        drop(resolver);
        event_loop.run().unwrap();
    });
    assert_no_growth("a chain cancelled", || {
        let (root, resolver) = pending();
        let leaf = root.then(|v| Ok(v + 1)).then(|v| Ok(v + 1));
        assert!(leaf.cancel());
        drop((leaf, resolver));
        event_loop.run().unwrap();
    });
}

#[test]
fn combinators_over_pending_inputs_are_given_back_however_they_end() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    let three = || -> (Vec<Promise<u64>>, Vec<Resolver<u64>>) { (0..3).map(|_| pending()).unzip() };
    assert_no_growth("all, output dropped, then the resolvers", || {
        let (inputs, resolvers) = three();
        drop(all(inputs));
        drop(resolvers);
        event_loop.run().unwrap();
    });
    assert_no_growth("all, output cancelled", || {
        let (inputs, resolvers) = three();
        assert!(all(inputs).cancel());
        turn(&event_loop);
        drop(resolvers);
        event_loop.run().unwrap();
    });
    assert_no_growth(
        "all, rejected by one input, the others kept a while",
        || {
            let (inputs, resolvers) = three();
            let out = all(inputs);
            resolvers[0].reject(Error::msg("no"));
            assert!(event_loop.block_on(out).is_err());
            drop(resolvers);
            event_loop.run().unwrap();
        },
    );
    assert_no_growth("all_settled, output dropped, one input settled", || {
        let (inputs, resolvers) = three();
        drop(all_settled(inputs));
        resolvers[1].resolve(1);
        turn(&event_loop);
        drop(resolvers);
        event_loop.run().unwrap();
    });
    assert_no_growth("race, the loser's resolver dropped after", || {
        let (inputs, resolvers) = three();
        let out = race(inputs);
        resolvers[2].resolve(7);
        assert_eq!(event_loop.block_on(out).unwrap(), 7);
        drop(resolvers);
        event_loop.run().unwrap();
    });
    assert_no_growth("any, output dropped after a rejection", || {
        let (inputs, resolvers) = three();
        let out = any(inputs);
        resolvers[0].reject(Error::msg("no"));
        drop(out);
        turn(&event_loop);
        drop(resolvers);
        event_loop.run().unwrap();
    });
    assert_no_growth("join, output cancelled", || {
        let (a, ra) = pending();
        let (b, rb) = Promise::<String>::pending();
        assert!(join((a, b)).cancel());
        turn(&event_loop);
        drop((ra, rb));
        event_loop.run().unwrap();
    });
    assert_no_growth("join, rejected by one input", || {
        let (a, ra) = pending();
        let (b, rb) = Promise::<String>::pending();
        let out = join((a, b));
        rb.reject(Error::msg("no"));
        assert!(event_loop.block_on(out).is_err());
        drop((ra, rb));
        event_loop.run().unwrap();
    });
}

#[test]
fn combinators_leave_nothing_in_a_long_lived_input() {
    let _serial = serial();
    against_a_long_lived_promise("race", |event_loop, signal| {
        let out = race([signal.clone(), Promise::resolved(1)]);
        assert_eq!(event_loop.block_on(out).unwrap(), 1);
    });
    against_a_long_lived_promise("all", |event_loop, signal| {
        let out = all([signal.clone(), Promise::rejected(Error::msg("no"))]);
        assert!(event_loop.block_on(out).is_err());
    });
    against_a_long_lived_promise("join", |event_loop, signal| {
        let out = join((signal.clone(), Promise::<u8>::rejected(Error::msg("no"))));
        assert!(event_loop.block_on(out).is_err());
    });
    against_a_long_lived_promise("timeout", |event_loop, signal| {
        let out = signal.clone().timeout(Duration::ZERO);
        assert!(event_loop.block_on(out).unwrap_err().is_timeout());
    });
    against_a_long_lived_promise("as_completed", |event_loop, signal| {
        let mut outcomes = as_completed([signal.clone(), Promise::resolved(1)]);
        let first = event_loop
            .block_on(async { Ok::<_, Error>(outcomes.next().await) })
            .unwrap();
        assert_eq!(first.unwrap().unwrap(), 1);
    });
    against_a_long_lived_promise("a then, cancelled", |event_loop, signal| {
        assert!(signal.clone().then(Ok).cancel());
        turn(event_loop);
    });
}

/// A promise every task polls once (a shutdown signal in a `select`) kept a
/// waker for each task that ever polled it, until it settled: the task, its
/// waker and the list's room, 190 bytes a task.
#[test]
fn tasks_that_polled_a_long_lived_promise_leave_nothing_in_it_when_they_end() {
    let _serial = serial();
    against_a_long_lived_promise(
        "a task that polls it once and finishes",
        |event_loop, signal| {
            let mut signal = signal.clone();
            let task = spawn(async move {
                poll_once(&mut signal).await;
                Ok::<_, Error>(())
            });
            event_loop.block_on(task).unwrap();
        },
    );
    against_a_long_lived_promise("a task awaiting it, cancelled", |event_loop, signal| {
        let signal = signal.clone();
        let task = spawn(signal);
        turn(event_loop);
        assert!(task.cancel());
        turn(event_loop);
    });
    against_a_long_lived_promise("block_on polling it once", |event_loop, signal| {
        let mut signal = signal.clone();
        event_loop
            .block_on(async move {
                poll_once(&mut signal).await;
                Ok::<_, Error>(())
            })
            .unwrap();
    });
    against_a_long_lived_promise("a scope member awaiting it", |event_loop, signal| {
        let signal = signal.clone();
        let failed = scope(move |s: Scope| async move {
            drop(s.spawn(signal));
            Err::<u64, _>(Error::msg("no"))
        });
        assert!(event_loop.block_on(failed).is_err());
    });
}

/// Polls `future` once, whatever it returns.
async fn poll_once<F: Future + Unpin>(future: &mut F) {
    std::future::poll_fn(|cx| {
        let _ = Pin::new(&mut *future).poll(cx);
        Poll::Ready(())
    })
    .await
}

#[test]
fn cycles_through_handlers_and_resolvers_are_broken_when_they_end() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    assert_no_growth(
        "a handler holding its own promise's resolver, cancelled",
        || {
            let (root, resolver) = pending();
            let child = root.then(move |v| {
                let _ = &resolver;
                Ok(v)
            });
            assert!(child.cancel());
            drop(child);
            event_loop.run().unwrap();
        },
    );
    assert_no_growth("a handler holding a clone of its own output", || {
        let (root, resolver) = pending();
        let slot: Arc<Mutex<Option<Promise<u64>>>> = Arc::default();
        let held = slot.clone();
        let child = root.then(move |v| {
            drop(held);
            Ok(v)
        });
        *slot.lock().unwrap() = Some(child.clone());
        drop((slot, child, resolver));
        event_loop.run().unwrap();
    });
    assert_no_growth("a promise resolved with its own child", || {
        let (root, resolver) = pending();
        resolver.resolve_with(root.then(|v| Ok(v + 1)));
        drop(resolver);
        event_loop.run().unwrap();
    });
    assert_no_growth("a ring of resolvers", || {
        let (p1, r1) = pending();
        let (p2, r2) = pending();
        let (p3, r3) = pending();
        r1.resolve_with(p2);
        r2.resolve_with(p3);
        r3.resolve_with(p1.clone());
        assert!(event_loop.block_on(p1).unwrap_err().is_deadlock());
        drop((r1, r2, r3));
        event_loop.run().unwrap();
    });
    assert_no_growth("a task holding its promise's resolver, cancelled", || {
        let (awaited, resolver) = pending();
        let task = spawn(async move {
            let _resolver = resolver;
            awaited.await
        });
        turn(&event_loop);
        assert!(task.cancel());
        drop(task);
        event_loop.run().unwrap();
    });
}

#[test]
fn shields_timeouts_and_loops_dropped_with_work_are_given_back() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    assert_no_growth("a shield, its resolver dropped", || {
        let (inner, resolver) = pending();
        drop(shield(inner));
        drop(resolver);
        event_loop.run().unwrap();
    });
    assert_no_growth("a timeout over a promise that never settles", || {
        let (never, resolver) = pending();
        let limited = never.timeout(Duration::ZERO);
        assert!(event_loop.block_on(limited).unwrap_err().is_timeout());
        drop(resolver);
        event_loop.run().unwrap();
    });
    drop(event_loop);
    assert_no_growth(
        "a loop dropped with a task, a sleep and a handler queued",
        || {
            let event_loop = EventLoop::new();
            let (awaited, resolver) = pending();
            drop(spawn(awaited));
            drop(sleep(HOUR));
            drop(Promise::<u64>::resolved(1).then(Ok));
            drop(event_loop);
            drop(resolver);
        },
    );
}

/// A waker that counts the clones of it still alive.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn waker(alive: &Arc<AtomicUsize>) -> Waker {
        alive.fetch_add(1, Ordering::SeqCst);
        Waker::from(Arc::new(Counted(alive.clone())))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

/// Every task of another executor (tokio) that polled a pending promise left
/// its waker in a process-wide list, which only an orphan reaction or work sent
/// to an undriven loop emptied: with tokio, the waker keeps the whole task's
/// memory, 290 bytes a task when awaiting a promise resolved by another thread.
#[test]
fn wakers_of_other_executors_tasks_are_let_go_once_their_promises_settle() {
    let _serial = serial();
    let alive = Arc::new(AtomicUsize::new(0));
    for _ in 0..N {
        // A task of another executor: awaits a promise settled elsewhere, then ends.
        let waker = Counted::waker(&alive);
        let mut cx = Context::from_waker(&waker);
        let (mut awaited, resolver) = pending();
        assert!(Pin::new(&mut awaited).poll(&mut cx).is_pending());
        resolver.resolve(1);
        assert!(Pin::new(&mut awaited).poll(&mut cx).is_ready());
    }
    let kept = alive.load(Ordering::SeqCst);
    // The list is pruned when it has doubled: what it keeps is bounded, not
    // one waker per task.
    assert!(
        kept <= 128,
        "{kept} of {N} finished tasks' wakers are still kept"
    );
}
