//! Heap allocations per promise operation, counted by a global allocator.
//!
//! The design's target: one heap allocation per `then` link in total (the child
//! node carries the handler, and the parent's one-slot `SmallVec` holds the
//! reaction inline). Only allocations made by the measuring thread while a
//! measurement is open are counted, and measurements are serialized, so tests
//! running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use thenable::{EventLoop, Promise, Resolver};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
/// Sizes of the first allocations of the current measurement.
static SIZES: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

thread_local! {
    /// Set while this thread measures. `const`, `Copy` and without destructor, so
    /// reading it from the allocator never allocates.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let n = ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size, Ordering::Relaxed);
        if let Some(slot) = SIZES.get(n) {
            slot.store(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growth is one more trip to the allocator: count it as an allocation.
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What one measurement saw.
#[derive(Debug)]
struct Counted {
    allocs: usize,
    bytes: usize,
    /// Sizes of the first (up to 16) allocations, in order.
    sizes: Vec<usize>,
}

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f`, counting the allocations this thread makes meanwhile.
fn count<R>(f: impl FnOnce() -> R) -> (R, Counted) {
    ALLOCS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    for slot in &SIZES {
        slot.store(0, Ordering::Relaxed);
    }
    MEASURING.with(|m| m.set(true));
    let result = f();
    MEASURING.with(|m| m.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    let sizes = SIZES
        .iter()
        .take(allocs)
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let counted = Counted {
        allocs,
        bytes: BYTES.load(Ordering::Relaxed),
        sizes,
    };
    (result, counted)
}

const N: usize = 1000;

fn chain(root: Promise<u64>) -> Promise<u64> {
    let mut p = root;
    for _ in 0..N {
        p = p.then(|v| Ok(v + 1));
    }
    p
}

/// Runs a few chains of every shape measured here, so that the loop's queues and
/// the thread's lazily created state have their capacity before counting.
fn warm_up(event_loop: &EventLoop) {
    for _ in 0..3 {
        let (root, r) = Promise::<u64>::pending();
        let p = chain(root);
        r.resolve(0);
        assert_eq!(event_loop.block_on(p).unwrap(), N as u64);
        let p = chain(Promise::resolved(0));
        assert_eq!(event_loop.block_on(p).unwrap(), N as u64);
    }
}

#[test]
fn then_on_a_pending_promise_allocates_once_per_link() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);

    let (root, resolver) = Promise::<u64>::pending();
    let (p, built) = count(|| chain(root));
    let (_, settled) = count(|| assert!(resolver.resolve(0)));
    let (value, ran) = count(|| event_loop.block_on(p).unwrap());
    assert_eq!(value, N as u64);

    println!(
        "pending root, {N} then links: construction {} allocs ({:.3}/link, {} bytes/link, \
         node size {:?}); resolve {} allocs; block_on {} allocs ({:.3}/link)",
        built.allocs,
        built.allocs as f64 / N as f64,
        built.bytes / N,
        built.sizes.first(),
        settled.allocs,
        ran.allocs,
        ran.allocs as f64 / N as f64,
    );
    // Target (design): one allocation per then link, the child node with the
    // handler inside; the parent holds the reaction in its inline slot.
    assert_eq!(
        built.allocs, N,
        "target: exactly 1 heap allocation per `then` on a pending promise"
    );
    // Bytes per pending link with a handler that captures nothing: the node (two
    // reference counts, the child's state with its lock, flags and handle count
    // in one word, the one function its types need, the handler's slot holding
    // the parent). Issue #5 aims at 64; this guards what has been reached (88, a
    // 96-byte chunk for glibc; see docs/performance.md).
    assert!(
        built.bytes / N <= 88,
        "a pending then link costs {} bytes",
        built.bytes / N
    );
    // Running the chain must not allocate per link (reactions reuse the node and
    // the warmed-up microtask queue); a few constant allocations are fine.
    assert!(
        ran.allocs + settled.allocs < N / 10,
        "settling and running a {N}-link chain allocated {} + {} times",
        settled.allocs,
        ran.allocs
    );
}

#[test]
fn then_chain_on_a_resolved_promise_allocates_once_per_link() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);

    let (root, made) = count(|| Promise::<u64>::resolved(0));
    let (p, built) = count(|| chain(root));
    let (value, ran) = count(|| event_loop.block_on(p).unwrap());
    assert_eq!(value, N as u64);

    println!(
        "resolved(): {} allocs (sizes {:?}); {N} then links on it: construction {} allocs \
         ({:.3}/link); block_on {} allocs ({:.3}/link)",
        made.allocs,
        made.sizes,
        built.allocs,
        built.allocs as f64 / N as f64,
        ran.allocs,
        ran.allocs as f64 / N as f64,
    );
    assert_eq!(
        made.allocs, 1,
        "target: Promise::resolved is one allocation"
    );
    assert_eq!(
        built.allocs, N,
        "target: exactly 1 heap allocation per `then` (the first one is queued at once, \
         on a microtask queue with capacity)"
    );
    assert!(
        ran.allocs < N / 10,
        "running a {N}-link chain allocated {} times",
        ran.allocs
    );
}

#[test]
fn adopting_a_returned_promise_allocates_nothing_more() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);
    let adopting_chain = |root: Promise<u64>| {
        let mut p = root;
        for _ in 0..N {
            p = p.then(|v| Promise::resolved(v + 1));
        }
        p
    };
    let (root, resolver) = Promise::<u64>::pending();
    let p = adopting_chain(root);
    resolver.resolve(0);
    assert_eq!(event_loop.block_on(p).unwrap(), N as u64); // the queues' capacity

    let (root, resolver) = Promise::<u64>::pending();
    let (p, built) = count(|| adopting_chain(root));
    resolver.resolve(0);
    let (value, ran) = count(|| event_loop.block_on(p).unwrap());
    assert_eq!(value, N as u64);
    println!(
        "{N} links adopting Promise::resolved: construction {} allocs; running {} allocs",
        built.allocs, ran.allocs
    );
    assert_eq!(built.allocs, N);
    // Each handler's own `Promise::resolved`, and nothing to follow it with: the
    // link follows the returned promise itself.
    assert!(
        ran.allocs <= N + 2,
        "running {N} adoptions allocated {} times",
        ran.allocs
    );
}

#[test]
fn a_handler_capturing_two_words_still_fits_a_112_byte_chunk() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);
    let step = std::sync::Arc::new(1u64);
    let (root, resolver) = Promise::<u64>::pending();
    let (p, built) = count(|| {
        let (step, index) = (step.clone(), 2u64);
        root.then(move |v| Ok(v + *step + index))
    });
    resolver.resolve(1);
    assert_eq!(event_loop.block_on(p).unwrap(), 4);
    // glibc serves requests of up to 104 bytes from 112-byte chunks: the node
    // plus the `Arc` and the index the handler captures (the `fanout`
    // workload's handler) must stay within them.
    assert_eq!(built.allocs, 1);
    assert!(built.bytes <= 104, "{} bytes", built.bytes);
}

#[test]
fn pending_promise_and_resolver_allocations() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);

    let ((p, r), made) = count(Promise::<u64>::pending);
    let (clone, cloned) = count(|| r.clone());
    let (p, one_then) = count(|| p.then(|v| Ok(v + 1)));
    let (_, settled) = count(|| r.resolve(1));
    drop(clone);
    let (value, ran) = count(|| event_loop.block_on(p).unwrap());
    assert_eq!(value, 2);

    println!(
        "Promise::pending(): {} allocs, sizes {:?}; \
         Resolver::clone: {} allocs; one then: {} allocs, size {:?}; \
         resolve: {} allocs; block_on: {} allocs, sizes {:?}",
        made.allocs,
        made.sizes,
        cloned.allocs,
        one_then.allocs,
        one_then.sizes,
        settled.allocs,
        ran.allocs,
        ran.sizes,
    );
    // One `Arc`: the resolver points at the promise's own node.
    assert_eq!(
        made.allocs, 1,
        "Promise::pending allocated {} times (sizes {:?})",
        made.allocs, made.sizes
    );
    // A 96-byte chunk for glibc, as a then link's (it was 128 while the
    // cancellation hooks' list sat inline, 112 while the state's lock had a
    // word of its own).
    assert!(
        made.sizes[0] <= 88,
        "a pending promise is {} bytes",
        made.sizes[0]
    );
    assert_eq!(cloned.allocs, 0, "cloning a resolver is a reference count");
    assert_eq!(one_then.allocs, 1, "target: one allocation per then");
}

#[test]
fn spawn_allocations_are_reported() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);
    // Warm the task table too.
    for _ in 0..3 {
        let p = thenable::spawn(async { Ok::<u64, thenable::Error>(1) });
        event_loop.block_on(p).unwrap();
    }

    let (p, spawned) = count(|| thenable::spawn(async { Ok::<u64, thenable::Error>(1) }));
    let (p, chained) = count(|| p.then(|v| Ok(v + 1)));
    let (value, ran) = count(|| event_loop.block_on(p).unwrap());
    assert_eq!(value, 2);
    println!(
        "spawn(async): {} allocs, sizes {:?}; then on it: {} allocs; block_on: {} allocs",
        spawned.allocs, spawned.sizes, chained.allocs, ran.allocs
    );
    // The promise's node (whose link names the task), the task's waker, the boxed
    // future, in that order.
    assert_eq!(spawned.allocs, 3, "sizes {:?}", spawned.sizes);
    // The node is an 80-byte chunk: its link, the task and the loop's id, is two
    // words.
    assert!(spawned.sizes[0] <= 72, "sizes {:?}", spawned.sizes);
    // The boxed future is the `async` block (nothing to keep here) plus the task's
    // wrapper: the settler and a tag, not three copies of the block.
    assert!(
        spawned.sizes[2] <= 3 * std::mem::size_of::<usize>(),
        "sizes {:?}",
        spawned.sizes
    );
    assert_eq!(chained.allocs, 1, "target: one allocation per then");
}

#[test]
fn all_allocates_nothing_per_input_and_nothing_while_settling() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);
    let round = |measure: bool| {
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..N).map(|_| Promise::<u64>::pending()).unzip();
        let (everything, built) = count(|| thenable::all(promises));
        let (values, settled) = count(|| {
            for (i, resolver) in resolvers.iter().enumerate() {
                resolver.resolve(i as u64);
            }
            event_loop.block_on(everything).unwrap()
        });
        assert_eq!(values, (0..N as u64).collect::<Vec<_>>());
        if measure {
            println!(
                "all of {N} pending: construction {} allocs ({} bytes); \
                 resolving and collecting {} allocs ({} bytes, sizes {:?})",
                built.allocs, built.bytes, settled.allocs, settled.bytes, settled.sizes
            );
            // Nothing per input (each input's waiter is the call's state with an
            // index): the output's node, which holds the call's state, and the
            // array of values (the inputs' array is the promises' own, reused in
            // place).
            assert!(
                built.allocs <= 2,
                "all over {N} inputs allocated {} times (sizes {:?})",
                built.allocs,
                built.sizes
            );
            // The values are collected in place: no array of N values is
            // allocated when the last input arrives.
            assert!(
                settled.bytes < N * std::mem::size_of::<u64>(),
                "settling allocated {} bytes (sizes {:?})",
                settled.bytes,
                settled.sizes
            );
        }
    };
    round(false); // the microtask queue grows to N jobs once
    round(true);
}

#[test]
fn a_join_allocates_its_node_its_links_array_and_one_link_per_input() {
    let _serial = serial();
    let event_loop = EventLoop::new();
    warm_up(&event_loop);
    for measure in [false, true] {
        let (number, resolve_number) = Promise::<u64>::pending();
        let (flag, resolve_flag) = Promise::<bool>::pending();
        let (joined, built) = count(|| thenable::all((number, flag)));
        resolve_number.resolve(7);
        resolve_flag.resolve(true);
        assert_eq!(event_loop.block_on(joined).unwrap(), (7, true));
        if measure {
            // The output's node holds the call's state (it was an allocation of
            // its own, with a cancel hook boxed in a list beside it: seven in all).
            assert_eq!(
                built.allocs, 4,
                "a join of two allocated {} times (sizes {:?})",
                built.allocs, built.sizes
            );
        }
    }
}

#[test]
fn promise_handles_are_small() {
    let word = std::mem::size_of::<usize>();
    let promise = std::mem::size_of::<Promise<u64>>();
    let resolver = std::mem::size_of::<Resolver<u64>>();
    println!(
        "size_of Promise<u64> = {promise}, Promise<[u8; 64]> = {}, Option<Promise<u64>> = {}, \
         Resolver<u64> = {resolver}",
        std::mem::size_of::<Promise<[u8; 64]>>(),
        std::mem::size_of::<Option<Promise<u64>>>(),
    );
    // An optional fat `Arc<dyn ...>`: two words, whatever `T` is.
    assert_eq!(promise, 2 * word);
    assert_eq!(std::mem::size_of::<Promise<[u8; 64]>>(), 2 * word);
    assert_eq!(resolver, word);
}
