//! Micro-benchmarks of thenable's hot paths: `cargo bench --bench micro`.
//!
//! Each benchmark runs a batch of operations per iteration on one loop made outside
//! the measurement, and reports the time per operation (criterion's "thrpt" line is
//! operations per second). Measurement times are short so that the whole file runs
//! in about a minute; pass criterion's own options (`--measurement-time`, a name
//! filter) to look closer at one of them.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use thenable::{
    all, clear_timer, queue_microtask, set_immediate, set_timeout, spawn_blocking, spawn_local,
    Error, EventLoop, Promise, Resolver,
};

/// Operations per iteration in the batched benchmarks.
const BATCH: u64 = 1_000;

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    ops: u64,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(ops));
    group
}

/// A pending promise made and resolved with nothing attached, and one made already
/// settled: the fixed cost of every promise.
fn create_resolve(c: &mut Criterion) {
    let _event_loop = EventLoop::new();
    let mut group = group(c, "create_resolve", 1);
    group.bench_function("pending+resolve", |b| {
        b.iter(|| {
            let (promise, resolver) = Promise::<u64>::pending();
            resolver.resolve(black_box(7));
            promise
        })
    });
    group.bench_function("resolved", |b| {
        b.iter(|| Promise::<u64>::resolved(black_box(7)))
    });
    group.finish();
}

/// A chain of `BATCH` `then` links built on a pending root, resolved, run to the tail.
fn then_link(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut group = group(c, "then_link", BATCH);
    group.bench_function("build+run chain of 1000", |b| {
        b.iter(|| {
            let (root, resolver) = Promise::<u64>::pending();
            let mut tail = root;
            for _ in 0..BATCH {
                tail = tail.then(|v| Ok(v + 1));
            }
            resolver.resolve(0);
            let end = event_loop.block_on(tail).expect("the chain fulfils");
            assert_eq!(end, BATCH);
        })
    });
    group.finish();
}

/// `BATCH` handlers each returning a promise that is still pending when adopted,
/// resolved later (from an immediate, after every adoption has attached).
fn adopt(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut group = group(c, "adopt", BATCH);
    group.bench_function("handler returns pending promise", |b| {
        b.iter(|| {
            let mut inners: Vec<Resolver<u64>> = Vec::with_capacity(BATCH as usize);
            let mut tails = Vec::with_capacity(BATCH as usize);
            for i in 0..BATCH {
                let (inner, resolver) = Promise::<u64>::pending();
                inners.push(resolver);
                tails.push(Promise::<u64>::resolved(i).then(move |_| inner));
            }
            set_immediate(move || {
                for (i, resolver) in (0..).zip(&inners) {
                    resolver.resolve(i);
                }
            });
            event_loop.run().expect("not nested");
            assert!(tails.iter().all(Promise::is_fulfilled));
            tails
        })
    });
    group.finish();
}

/// One `all` over `BATCH` pending promises, resolved in order.
fn all_of_1000(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut group = group(c, "all", BATCH);
    group.bench_function("all of 1000", |b| {
        b.iter(|| {
            let (promises, resolvers): (Vec<_>, Vec<_>) =
                (0..BATCH).map(|_| Promise::<u64>::pending()).unzip();
            let everything = all(promises);
            for (i, resolver) in (0..).zip(&resolvers) {
                resolver.resolve(i);
            }
            let values = event_loop.block_on(everything).expect("all fulfil");
            assert_eq!(values.len() as u64, BATCH);
        })
    });
    group.finish();
}

/// `BATCH` callbacks queued with `queue_microtask`, then drained.
fn microtask_drain(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut group = group(c, "microtask", BATCH);
    group.bench_function("queue_microtask x1000 + drain", |b| {
        let ran = Rc::new(Cell::new(0u64));
        b.iter(|| {
            for _ in 0..BATCH {
                let ran = ran.clone();
                queue_microtask(move || ran.set(ran.get() + 1));
            }
            event_loop.run().expect("not nested");
        });
        assert!(ran.get() >= BATCH);
    });
    group.finish();
}

/// Timers: set then cleared before they fire; and set to fire at once, then run.
fn timers(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut group = group(c, "timer", BATCH);
    group.bench_function("insert+cancel", |b| {
        b.iter(|| {
            // One delay for all, as a per-request timeout would be.
            for _ in 0..BATCH {
                let id = set_timeout(Duration::from_secs(60), || unreachable!());
                assert!(clear_timer(id));
            }
            // A cleared timer leaves its heap entry behind until the loop next looks
            // for a deadline: part of the cost of cancelling, so measured too.
            event_loop.run().expect("not nested");
        })
    });
    group.bench_function("insert+fire", |b| {
        let fired = Rc::new(Cell::new(0u64));
        b.iter(|| {
            for _ in 0..BATCH {
                let fired = fired.clone();
                set_timeout(Duration::ZERO, move || fired.set(fired.get() + 1));
            }
            event_loop.run().expect("not nested");
        });
        assert!(fired.get() >= BATCH);
    });
    group.finish();
}

/// `BATCH` tasks that each wait on a pending promise, woken by its resolution:
/// spawn, first poll, wake, second poll, completion.
fn task_spawn_wake(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut group = group(c, "task", BATCH);
    group.bench_function("spawn+wake", |b| {
        let sum = Rc::new(Cell::new(0u64));
        b.iter(|| {
            let mut resolvers = Vec::with_capacity(BATCH as usize);
            for _ in 0..BATCH {
                let (promise, resolver) = Promise::<u64>::pending();
                resolvers.push(resolver);
                let sum = sum.clone();
                drop(spawn_local(async move {
                    let value = promise.await?;
                    sum.set(sum.get() + value);
                    Ok::<_, Error>(())
                }));
            }
            // Queued after the tasks' first polls: every task waits when this runs.
            queue_microtask(move || {
                for resolver in &resolvers {
                    resolver.resolve(1);
                }
            });
            event_loop.run().expect("not nested");
        });
        assert!(sum.get() >= BATCH);
    });
    group.finish();
}

/// A promise resolved on another thread, awaited on the loop: the injector, the
/// reactor's wake-up and the loop's turn, one round trip per iteration.
fn cross_thread_settle(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let (to_helper, requests) = mpsc::channel::<Resolver<u64>>();
    let helper = std::thread::spawn(move || {
        for resolver in requests {
            resolver.resolve(42);
        }
    });
    let mut group = group(c, "cross_thread", 1);
    group.bench_function("resolve on other thread, await on loop", |b| {
        b.iter(|| {
            let (promise, resolver) = Promise::<u64>::pending();
            to_helper.send(resolver).expect("the helper runs");
            assert_eq!(event_loop.block_on(promise).expect("fulfils"), 42);
        })
    });
    group.finish();
    drop(to_helper);
    helper.join().expect("the helper does not panic");
}

/// Empty jobs on the blocking pool: a batch queued at once and awaited together
/// (the queue, the pool's threads taking turns at it, settling across threads),
/// and one job at a time (a round trip to a pool thread and back).
fn blocking_pool(c: &mut Criterion) {
    let event_loop = EventLoop::new();
    let mut batch = group(c, "spawn_blocking", BATCH);
    batch.bench_function("1000 empty jobs, awaited together", |b| {
        b.iter(|| {
            let jobs: Vec<Promise<()>> = (0..BATCH).map(|_| spawn_blocking(|| Ok(()))).collect();
            event_loop.block_on(all(jobs)).expect("fulfils");
        })
    });
    batch.finish();
    let mut one = group(c, "spawn_blocking_round_trip", 1);
    one.bench_function("one empty job, awaited", |b| {
        b.iter(|| {
            event_loop
                .block_on(spawn_blocking(|| Ok::<_, Error>(())))
                .expect("fulfils")
        })
    });
    one.finish();
}

criterion_group!(
    benches,
    create_resolve,
    then_link,
    adopt,
    all_of_1000,
    microtask_drain,
    timers,
    task_spawn_wake,
    cross_thread_settle,
    blocking_pool
);
criterion_main!(benches);
