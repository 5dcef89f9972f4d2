//! Deep recursion without a deep stack: memoized Fibonacci where every call is a task.
//!
//! From seed 001 ("Awaits, how do they work?"), whose last trick is to compute
//! `fib(10000)` by making each recursive call a new task (`add_coro(fib(n - 2))`), so
//! that the recursion lives in the task queue instead of on the call stack. Here
//! `fib` spawns a task per call and awaits the two children's promises; a plain
//! recursive version runs alongside, and both measure how much stack they used.
//!
//! Run it with `cargo run --example fib_tasks`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use thenable::{block_on, spawn_local, Promise};

/// `fib(10_000)` has 2,090 digits. Rather than pull in a bignum crate, every version
/// keeps only the last 18 decimal digits, which stay exact: the sum of two numbers
/// below 10^18 still fits in a `u64`.
const MODULUS: u64 = 1_000_000_000_000_000_000;

const SMALL_STACK: usize = 64 * 1024;
const BIG_STACK: usize = 64 * 1024 * 1024;

/// How far below its creator's frame the stack ever got when `record` was called.
struct StackProbe {
    base: usize,
    deepest: Cell<usize>,
}

impl StackProbe {
    fn new() -> StackProbe {
        StackProbe {
            base: stack_address(),
            deepest: Cell::new(0),
        }
    }

    fn record(&self) {
        let used = self.base.abs_diff(stack_address());
        self.deepest.set(self.deepest.get().max(used));
    }
}

fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(std::ptr::from_ref(&marker)).addr()
}

/// The seed's `recur_fib`, memoized: one stack frame per level, 10,000 levels deep.
fn recursive_fib(n: u64, memo: &mut HashMap<u64, u64>, probe: &StackProbe) -> u64 {
    probe.record();
    if n < 2 {
        return n;
    }
    if let Some(&known) = memo.get(&n) {
        return known;
    }
    let result = (recursive_fib(n - 2, memo, probe) + recursive_fib(n - 1, memo, probe)) % MODULUS;
    memo.insert(n, result);
    result
}

/// What the tasks share: the seed's global `cache`, a task counter and the probe.
/// Every task runs on this one thread, so `Rc` and `RefCell` are enough (hence
/// `spawn_local`, which does not ask for `Send`).
struct Shared {
    memo: RefCell<HashMap<u64, u64>>,
    tasks: Cell<u64>,
    probe: StackProbe,
}

/// The seed's `async def fib(n)` with `add_coro` around each recursive call. It is a
/// plain function returning a promise, so unlike a recursive `async fn` it needs no
/// `Box::pin`; and since `spawn_local` only queues the task, calling it never nests.
fn fib(n: u64, shared: Rc<Shared>) -> Promise<u64> {
    shared.tasks.set(shared.tasks.get() + 1);
    spawn_local(async move {
        shared.probe.record();
        if n < 2 {
            return Ok(n);
        }
        if let Some(&known) = shared.memo.borrow().get(&n) {
            return Ok(known);
        }
        let result =
            (fib(n - 2, shared.clone()).await? + fib(n - 1, shared.clone()).await?) % MODULUS;
        shared.probe.record();
        shared.memo.borrow_mut().insert(n, result);
        Ok(result)
    })
}

fn iterative_fib(n: u64) -> u64 {
    let (mut a, mut b) = (0, 1);
    for _ in 0..n {
        (a, b) = (b, (a + b) % MODULUS);
    }
    a
}

fn on_thread<T: Send + 'static>(stack_size: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::Builder::new().stack_size(stack_size);
    thread.spawn(f).unwrap().join().unwrap()
}

fn kib(bytes: usize) -> String {
    format!("{} KiB", bytes.div_ceil(1024))
}

fn main() {
    println!("fib(n) mod 10^18, by plain recursion and by one task per call\n");
    println!("       n   recursion's stack   tasks' stack   tasks spawned");
    let mut last = (0, 0);
    for n in [100, 1_000, 10_000] {
        // The recursion gets a huge stack, just in case; the tasks get a small one
        // that the recursion would overflow long before n = 10,000.
        let (by_recursion, recursion_stack) = on_thread(BIG_STACK, move || {
            let probe = StackProbe::new();
            let value = recursive_fib(n, &mut HashMap::new(), &probe);
            (value, probe.deepest.get())
        });
        let (by_tasks, tasks_stack, tasks) = on_thread(SMALL_STACK, move || {
            let shared = Rc::new(Shared {
                memo: RefCell::default(),
                tasks: Cell::new(0),
                probe: StackProbe::new(),
            });
            let value = block_on(fib(n, shared.clone())).unwrap();
            (value, shared.probe.deepest.get(), shared.tasks.get())
        });
        assert_eq!(by_recursion, iterative_fib(n));
        assert_eq!(by_tasks, iterative_fib(n));
        println!(
            "  {n:>6}   {:>17}   {:>12}   {tasks:>13}",
            kib(recursion_stack),
            kib(tasks_stack)
        );
        last = (n, by_tasks);
    }
    let (n, value) = last;
    println!("\nfib({n}) = ...{value:018} (the last 18 of its 2,090 digits)");
    println!(
        "The recursion's stack grows with n; the tasks' stays flat, and they ran on a \
         thread with only {} of stack.",
        kib(SMALL_STACK)
    );
}
