//! Rule 4: depth never costs stack.

use thenable::{block_on, spawn, Promise};

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
