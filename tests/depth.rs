//! Rule 4: depth never costs stack.

mod common;

use std::future::Future;

use common::{on_small_stack, Counter, DropCounter, HOUR};
use thenable::{block_on, sleep, spawn, EventLoop, Promise};

#[test]
fn a_million_then_links_settle_without_stack_overflow() {
    let mut p = Promise::<u64>::resolved(0);
    for _ in 0..1_000_000 {
        p = p.then(|v| Ok(v + 1));
    }
    assert_eq!(block_on(p).unwrap(), 1_000_000);
}

#[test]
fn a_million_pending_links_are_dropped_without_stack_overflow() {
    let (root, resolver) = Promise::<u64>::pending();
    let mut p = root;
    for _ in 0..1_000_000 {
        p = p.then(|v| Ok(v + 1));
    }
    drop(p);
    drop(resolver);
    let event_loop = thenable::EventLoop::new();
    drop(event_loop);
}

fn depth(n: u64) -> Promise<u64> {
    spawn(async move {
        if n == 0 {
            Ok(0)
        } else {
            Ok(depth(n - 1).await? + 1)
        }
    })
}

#[test]
fn async_recursion_100_000_deep_through_spawn() {
    assert_eq!(block_on(depth(100_000)).unwrap(), 100_000);
}

fn adopt_depth(n: u64) -> Promise<u64> {
    if n == 0 {
        Promise::resolved(0)
    } else {
        Promise::resolved(n).then(move |_| adopt_depth(n - 1).map(|v| v + 1))
    }
}

#[test]
fn nested_adoption_100_000_deep() {
    assert_eq!(block_on(adopt_depth(100_000)).unwrap(), 100_000);
}

/// A task 100,000 deep in a chain of tasks, each awaiting the next, the last one
/// asleep for an hour once it has told `reached`.
fn waiting_depth(n: u64, reached: thenable::Resolver<()>) -> Promise<u64> {
    spawn(async move {
        if n == 0 {
            reached.resolve(());
            thenable::sleep(std::time::Duration::from_secs(3600)).await?;
            Ok(0)
        } else {
            Ok(waiting_depth(n - 1, reached).await? + 1)
        }
    })
}

#[test]
fn cancelling_a_chain_of_100_000_waiting_tasks_costs_no_stack() {
    // A small stack, so that a cancellation that recursed would overflow it.
    on_small_stack(|| {
        let event_loop = thenable::EventLoop::new();
        let (reached, resolver) = Promise::<()>::pending();
        let root = waiting_depth(100_000, resolver);
        event_loop.block_on(reached).unwrap();
        // Every task drops, one after another, and with the last the sleep's
        // timer: nothing is left to keep the loop alive.
        assert!(root.cancel());
        event_loop.run().unwrap();
        assert!(event_loop.block_on(root).unwrap_err().is_cancelled());
    });
}

#[test]
fn async_recursion_100_000_deep_through_spawn_on_a_small_stack() {
    assert_eq!(
        on_small_stack(|| block_on(depth(100_000))).unwrap(),
        100_000
    );
}

#[test]
fn a_loop_dropped_with_100_000_nested_waiting_tasks_on_a_small_stack() {
    let dropped = on_small_stack(|| {
        let event_loop = EventLoop::new();
        let dropped = Counter::default();
        fn chain(n: u64, dropped: Counter) -> Promise<u64> {
            let guard = DropCounter(dropped.clone());
            spawn(async move {
                let _guard = guard;
                if n == 0 {
                    sleep(HOUR).await?;
                    Ok(0)
                } else {
                    Ok(chain(n - 1, dropped).await? + 1)
                }
            })
        }
        let top = chain(100_000, dropped.clone());
        // Drive every task to its wait without finishing: a foreign poll runs the
        // loop until nothing is ready.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut top = top;
        assert!(Future::poll(std::pin::Pin::new(&mut top), &mut cx).is_pending());
        drop(event_loop);
        let next = EventLoop::new();
        assert!(next.block_on(top).unwrap_err().is_broken());
        dropped.get()
    });
    assert_eq!(dropped, 100_001);
}

#[test]
fn a_million_then_links_on_a_small_stack() {
    let total = on_small_stack(|| {
        let mut p = Promise::<u64>::resolved(0);
        for _ in 0..1_000_000 {
            p = p.then(|v| Ok(v + 1));
        }
        block_on(p)
    });
    assert_eq!(total.unwrap(), 1_000_000);
}
