//! Combinator inputs and adopted promises settled from other threads while the
//! loop waits: the outcomes recorded by a combinator's collector, a fan-out queued
//! as one batch, and a `then` child following the promise its handler returned
//! must come out right however the threads interleave. Every round checks its
//! values; the safety net turns a hang into a failure. No timing assertions.
//!
//! Also: reactions sent to a loop just as the thread driving it stops, which
//! must still run wherever their chain is awaited, in the order they were
//! settled; and the wakers other executors leave on a promise they stopped
//! polling.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::thread;

use common::{child, within};
use thenable::{all, race, Error, EventLoop, Promise, Resolver};

const ROUNDS: u64 = 40;

/// `n` pending promises and their resolvers.
fn pending(n: usize) -> (Vec<Promise<u64>>, Vec<Resolver<u64>>) {
    (0..n).map(|_| Promise::<u64>::pending()).unzip()
}

/// Resolves `resolvers[i]` with `first + i`, on a thread of its own.
fn resolve_elsewhere(resolvers: Vec<Resolver<u64>>, first: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for (i, resolver) in (first..).zip(&resolvers) {
            resolver.resolve(i);
        }
    })
}

#[test]
fn all_and_race_collect_inputs_settled_on_other_threads() {
    within(|| {
        for round in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (promises, resolvers) = pending(200);
            let everything = all(promises);
            let (racing, racers) = pending(8);
            let first = race(racing);
            let mut threads: Vec<_> = (0..4)
                .map(|t| resolve_elsewhere(resolvers[t * 50..(t + 1) * 50].to_vec(), t as u64 * 50))
                .collect();
            threads.push(resolve_elsewhere(racers, 0));
            let values = event_loop.block_on(everything).unwrap();
            assert_eq!(values, (0..200).collect::<Vec<_>>(), "round {round}");
            assert!(event_loop.block_on(first).unwrap() < 8, "round {round}");
            for thread in threads {
                thread.join().unwrap();
            }
        }
    });
}

#[test]
fn a_race_cancelled_while_its_inputs_settle_elsewhere_leaves_nothing_behind() {
    within(|| {
        for _ in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (promises, resolvers) = pending(50);
            let raced = race(promises);
            let settling = resolve_elsewhere(resolvers, 0);
            raced.cancel();
            settling.join().unwrap();
            // Returns: nothing is left waiting.
            event_loop.run().unwrap();
            // Cancelled, or decided first: an input's outcome delivered while this
            // loop was not running may be run by another thread's idle loop (see
            // "Not done yet" in docs/design.md), which can settle the race before
            // the cancel. Either way it is settled, and the loop finished.
            assert!(raced.is_cancelled() || raced.is_fulfilled());
        }
    });
}

#[test]
fn a_fan_out_of_adoptions_follows_promises_settled_on_another_thread() {
    within(|| {
        for round in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (root, resolve_root) = Promise::<u64>::pending();
            let (inner, inner_resolvers) = pending(300);
            let tails: Vec<_> = (0..)
                .zip(inner)
                .map(|(i, inner)| root.clone().then(move |v| inner.map(move |x| x + v + i)))
                .collect();
            drop(root);
            let settling = resolve_elsewhere(inner_resolvers, 0);
            resolve_root.resolve(1);
            let values = event_loop.block_on(all(tails)).unwrap();
            settling.join().unwrap();
            let expected: Vec<u64> = (0..300).map(|i| 2 * i + 1).collect();
            assert_eq!(values, expected, "round {round}");
        }
    });
}

#[test]
fn an_adoption_cancelled_from_another_thread_lets_the_loop_finish() {
    within(|| {
        for _ in 0..ROUNDS {
            let event_loop = EventLoop::new();
            let (root, resolve_root) = Promise::<u64>::pending();
            let (inner, resolve_inner) = Promise::<u64>::pending();
            let (adopting, adopted) = std::sync::mpsc::channel();
            let tail = root.then(move |_| {
                adopting.send(()).unwrap();
                inner
            });
            resolve_root.resolve(0);
            // Cancelled once the handler has returned the promise to follow (about
            // to follow it, or following it): either way the followed promise, whose
            // only consumer the child is, is cancelled, and its live resolver no
            // longer keeps the loop alive.
            let cancelling = thread::spawn(move || {
                adopted.recv().unwrap();
                tail.cancel();
                tail
            });
            event_loop.run().unwrap();
            let tail = cancelling.join().unwrap();
            drop(resolve_inner);
            event_loop.run().unwrap();
            assert!(tail.is_cancelled());
        }
    });
}

/// Resolves `resolver` with `value` on a thread of its own, and returns once it
/// has: the caller's loop, if it is driven, sees the reaction arrive while it is.
fn resolve_on_another_thread_now(resolver: Resolver<u64>, value: u64) {
    thread::spawn(move || {
        resolver.resolve(value);
    })
    .join()
    .unwrap();
}

/// Makes a chain on a promise whose resolver is settled while `drive` (which
/// drives the thread's default loop) runs, too late for it to look at its
/// queues again; hands the chain over, and parks until `release` (or ends at
/// once without one).
fn chain_settled_as_a_drive_ends(
    drive: fn(Box<dyn FnOnce() + Send>),
    release: Option<mpsc::Receiver<()>>,
) -> (Promise<u64>, thread::JoinHandle<()>) {
    let (chains, chain) = mpsc::channel();
    let maker = thread::spawn(move || {
        let (promise, resolver) = Promise::<u64>::pending();
        chains.send(promise.map(|v| v + 1)).unwrap();
        drive(Box::new(move || resolve_on_another_thread_now(resolver, 1)));
        if let Some(release) = release {
            let _ = release.recv();
        }
    });
    (chain.recv().unwrap(), maker)
}

/// `settle` runs inside the future of a `block_on`, which then completes.
fn in_block_on(settle: Box<dyn FnOnce() + Send>) {
    thenable::block_on(async move {
        settle();
        Ok::<_, Error>(())
    })
    .unwrap();
}

/// `settle` runs in a handler that a poll from another executor runs (it drives
/// the default loop), and the promise polled completes with it.
fn in_a_foreign_poll(settle: Box<dyn FnOnce() + Send>) {
    let polled = Promise::<()>::resolved(()).map(move |()| settle());
    futures::executor::block_on(polled).unwrap();
}

#[test]
fn a_reaction_sent_as_a_block_on_ends_runs_where_its_chain_is_awaited() {
    within(|| {
        for drive in [in_block_on, in_a_foreign_poll] {
            let (release, parked) = mpsc::channel();
            let (chain, maker) = chain_settled_as_a_drive_ends(drive, Some(parked));
            // The maker's thread never drives its loop again while this waits.
            let outcome = futures::executor::block_on(chain);
            drop(release);
            maker.join().unwrap();
            assert_eq!(outcome.unwrap(), 2);
        }
    });
}

#[test]
fn a_reaction_sent_as_a_block_on_ends_outlives_its_thread() {
    within(|| {
        for drive in [in_block_on, in_a_foreign_poll] {
            let (chain, maker) = chain_settled_as_a_drive_ends(drive, None);
            maker.join().unwrap();
            // Not broken with the thread's default loop: it was never that
            // loop's work to abandon.
            assert_eq!(EventLoop::new().block_on(chain).unwrap(), 2);
        }
    });
}

#[test]
fn reactions_settled_before_and_after_a_loop_starts_run_in_settle_order() {
    // In a process of its own: the first reaction is an orphan until the loop
    // starts, which any idle loop or foreign poll of another test could take
    // and run on its own thread meanwhile.
    let output = child::command("settle-order").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child failed: {stderr}");
}

/// Two pending promises whose handlers log their values, the promise of both
/// handlers, and the two resolvers.
#[allow(clippy::type_complexity)]
fn two_logged() -> (
    Arc<Mutex<Vec<u64>>>,
    Promise<Vec<()>>,
    Resolver<u64>,
    Resolver<u64>,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (first, resolve_first) = Promise::<u64>::pending();
    let (second, resolve_second) = Promise::<u64>::pending();
    let logged = |promise: Promise<u64>| {
        let log = log.clone();
        promise.map(move |v| log.lock().unwrap().push(v))
    };
    let both = all([logged(first), logged(second)]);
    (log, both, resolve_first, resolve_second)
}

fn reactions_run_in_settle_order() {
    within(|| {
        let event_loop = EventLoop::new();
        let (log, both, resolve_first, resolve_second) = two_logged();
        // Settled while nobody drives the loop...
        resolve_on_another_thread_now(resolve_first, 1);
        event_loop
            .block_on(async move {
                // ...and once it is driven, before its first turn.
                resolve_on_another_thread_now(resolve_second, 2);
                both.await
            })
            .unwrap();
        assert_eq!(*log.lock().unwrap(), [1, 2]);
    });
}

#[test]
fn reactions_settled_by_one_thread_as_a_drive_ends_run_in_settle_order() {
    // In a process of its own, for the reason above.
    let output = child::command("settle-order-as-a-drive-ends")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the child failed: {stderr}");
}

/// Two promises homed on a loop, settled in order by one thread just as the
/// loop's `block_on` ends: the first may reach the injector while the loop is
/// driven (and be handed to the orphans by the thread that stops driving it),
/// the second may find the loop undriven and go to the orphans itself. Their
/// handlers must run in settle order however the two threads interleave; the
/// sender waits a little longer each round, so that some rounds settle the
/// second promise while the driver hands the first one over.
fn reactions_settled_as_a_drive_ends_run_in_settle_order() {
    within(|| {
        for round in 0..ROUNDS * 100 {
            let event_loop = EventLoop::new();
            let (gate, open) = Promise::<u64>::pending();
            let (log, both, resolve_first, resolve_second) = two_logged();
            let sender = thread::spawn(move || {
                open.resolve(0);
                for _ in 0..round % 4000 {
                    std::hint::spin_loop();
                }
                resolve_first.resolve(1);
                resolve_second.resolve(2);
            });
            event_loop.block_on(gate).unwrap();
            sender.join().unwrap();
            event_loop.block_on(both).unwrap();
            assert_eq!(*log.lock().unwrap(), [1, 2], "round {round}");
        }
    });
}

#[test]
fn child_process_entry_point() {
    let Some(mode) = child::mode() else {
        return;
    };
    match mode.as_str() {
        "settle-order" => reactions_run_in_settle_order(),
        "settle-order-as-a-drive-ends" => reactions_settled_as_a_drive_ends_run_in_settle_order(),
        other => panic!("unknown child mode {other}"),
    }
}

/// A waker that counts the live ones among its kind.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn waker(live: &Arc<AtomicUsize>) -> Waker {
        live.fetch_add(1, Ordering::SeqCst);
        Waker::from(Arc::new(Counted(live.clone())))
    }
}

impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn clones_of_a_pending_promise_polled_and_dropped_do_not_keep_their_wakers() {
    within(|| {
        // A signal cloned into many waits that each give up on it (a `select`'s
        // losing branch, a `FuturesUnordered` member that finished otherwise),
        // each with a waker of its own, while the signal stays pending.
        let live = Arc::new(AtomicUsize::new(0));
        let (signal, resolver) = Promise::<u64>::pending();
        let counting = live.clone();
        let (kept, signal) = EventLoop::new()
            .block_on(async move {
                for _ in 0..1000 {
                    let waker = Counted::waker(&counting);
                    let mut clone = signal.clone();
                    let polled = Pin::new(&mut clone).poll(&mut Context::from_waker(&waker));
                    assert!(polled.is_pending());
                }
                Ok::<_, Error>((counting.load(Ordering::SeqCst), signal))
            })
            .unwrap();
        assert!(kept <= 16, "{kept} wakers of dropped polls kept");

        // A handle still polled, among them, is woken all the same: by the
        // settlement, or earlier, to poll again, if its waker was swept out.
        let (woken, wakes) = mpsc::channel();
        struct Tells(Mutex<mpsc::Sender<()>>);
        impl Wake for Tells {
            fn wake(self: Arc<Self>) {
                let _ = self.0.lock().unwrap().send(());
            }
        }
        let mut awaited = signal.clone();
        let told = Waker::from(Arc::new(Tells(Mutex::new(woken))));
        let value = EventLoop::new()
            .block_on(async move {
                assert!(Pin::new(&mut awaited)
                    .poll(&mut Context::from_waker(&told))
                    .is_pending());
                for _ in 0..1000 {
                    let mut clone = signal.clone();
                    let waker = Counted::waker(&live);
                    let _ = Pin::new(&mut clone).poll(&mut Context::from_waker(&waker));
                }
                resolver.resolve(7);
                assert!(wakes.try_recv().is_ok(), "the live poll was never woken");
                awaited.await
            })
            .unwrap();
        assert_eq!(value, 7);
    });
}

#[test]
fn many_tasks_of_another_executor_awaiting_one_pending_promise_stall_and_then_complete() {
    within(|| {
        // More pollers than the list of foreign pollers holds before it is
        // pruned (64): a pruning that woke live pollers to see which came back
        // kept 65 of them polling each other out for ever (`run_until_stalled`
        // never returned).
        for tasks in [65, 200] {
            let (signal, resolver) = Promise::<u64>::pending();
            let done = Arc::new(AtomicUsize::new(0));
            let mut pool = futures::executor::LocalPool::new();
            for _ in 0..tasks {
                let (waiting, done) = (signal.clone(), done.clone());
                futures::task::LocalSpawnExt::spawn_local(&pool.spawner(), async move {
                    assert_eq!(waiting.await.unwrap(), 7);
                    done.fetch_add(1, Ordering::SeqCst);
                })
                .unwrap();
            }
            pool.run_until_stalled();
            assert_eq!(done.load(Ordering::SeqCst), 0, "none can finish yet");
            assert!(resolver.resolve(7));
            pool.run();
            assert_eq!(done.load(Ordering::SeqCst), tasks);
        }
    });
}
