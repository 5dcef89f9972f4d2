//! The promise core under stress: chaining cycles through resolvers,
//! unhandled-rejection reports (a rejection settled on another thread, made
//! before any loop, let go by a cancelled follower), `Error`'s source chain, deep
//! resolver chains, and orders checked against Node.js 20.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use common::{within, Counter, DropCounter};
use thenable::{Error, EventLoop, Promise};

/// A handler, on a value or an error of any type, that logs `event`.
fn logs<V>(log: &common::Log, event: &'static str) -> impl FnOnce(V) -> Result<(), Error> + Send {
    let log = log.clone();
    move |_| {
        log.push(event);
        Ok(())
    }
}

/// Collects what the unhandled-rejection hook reports on this thread.
fn reports() -> Rc<RefCell<Vec<String>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = seen.clone();
    thenable::set_unhandled_rejection_hook(move |e| log.borrow_mut().push(e.to_string()));
    seen
}

// A ring of resolvers, each following the next one's promise: in JavaScript
// (`r[i](p[i + 1])`, `r[n - 1](p[0])`) it never settles. thenable promises to
// refuse any chaining cycle ("Following a promise that itself waits on this one
// rejects with a chaining-cycle error"), and does for a ring of two; a ring longer
// than the downstream search budget (64) is not seen, because a resolver's
// promise reports no upstream, and the ring is leaked.
#[test]
fn a_ring_of_resolvers_longer_than_the_search_budget_is_a_chaining_cycle() {
    within(|| {
        let event_loop = EventLoop::new();
        let rings = [2usize, 3, 64, 65, 100, 1_000];
        for (ring, backwards) in rings.into_iter().flat_map(|n| [(n, false), (n, true)]) {
            let freed = Counter::default();
            let (promises, resolvers): (Vec<_>, Vec<_>) =
                (0..ring).map(|_| Promise::<i32>::pending()).unzip();
            // Dropped with its closure: tells that the ring's first node was freed.
            let guard = DropCounter(freed.clone());
            resolvers[0].on_cancel(move || drop(guard));
            let mut promises = promises.into_iter();
            let first = promises.next().unwrap();
            let watched = first.clone();
            let mut rest: Vec<Promise<i32>> = promises.collect();
            rest.push(first);
            // Made to follow in either order: the cycle is closed by the first
            // forwarder to attach or by the last.
            let mut pairs: Vec<_> = resolvers.iter().zip(rest).collect();
            if backwards {
                pairs.reverse();
            }
            for (resolver, next) in pairs {
                assert!(resolver.resolve_with(next));
            }
            drop(resolvers);
            let err = event_loop.block_on(watched).unwrap_err();
            assert!(
                err.is_deadlock() && err.to_string().contains("chaining cycle"),
                "ring of {ring} (backwards: {backwards}): {err}"
            );
            event_loop.run().unwrap();
            assert_eq!(
                freed.get(),
                1,
                "ring of {ring} (backwards: {backwards}): not freed"
            );
        }
    });
}

// A resolver's promise in the middle of a `then` chain that closes the ring:
// p follows q.map(..) x 100, q follows p.
#[test]
fn a_cycle_through_a_resolver_and_a_long_then_chain_is_a_chaining_cycle() {
    within(|| {
        let event_loop = EventLoop::new();
        let (p, rp) = Promise::<i32>::pending();
        let (q, rq) = Promise::<i32>::pending();
        let mut tail = q.map(|v| v + 1);
        for _ in 0..100 {
            tail = tail.map(|v| v + 1);
        }
        assert!(rp.resolve_with(tail));
        let watched = p.clone();
        assert!(rq.resolve_with(p));
        let err = event_loop.block_on(watched).unwrap_err();
        assert!(
            err.is_deadlock() && err.to_string().contains("chaining cycle"),
            "{err}"
        );
    });
}

// Node.js reports every rejection nobody handles, whatever settled it:
// `process.on('unhandledRejection', e => log.push(e.message))` logs ["remote"]
// for a promise rejected from a timer with nothing attached. Here the rejection
// comes from another thread (a resolver is `Send`; the blocking pool settles
// that way too): the report is lost, because the rejection is registered with
// the settling thread, which has no loop.
#[test]
fn a_rejection_from_another_thread_that_nobody_handles_is_reported() {
    within(|| {
        let event_loop = EventLoop::new();
        let seen = reports();
        let (p, r) = Promise::<i32>::pending();
        std::thread::spawn(move || r.reject(Error::msg("remote")))
            .join()
            .unwrap();
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), ["remote"]);
        // Handled in time (before the loop drains), it is not reported.
        let (q, r) = Promise::<i32>::pending();
        std::thread::spawn(move || r.reject(Error::msg("caught")))
            .join()
            .unwrap();
        let caught = q.catch(|_| Ok(0));
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), ["remote"]);
        // The blocking pool settles its promises from its own threads too.
        let failed: Promise<i32> = thenable::spawn_blocking(|| Err(Error::msg("pool")));
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), ["remote", "pool"]);
        drop((p, caught, failed));
        thenable::reset_unhandled_rejection_hook();
    });
}

#[test]
fn a_rejection_let_go_by_a_cancelled_follower_is_not_reported() {
    within(|| {
        let event_loop = EventLoop::new();
        let seen = reports();
        // The reference: a `then` on a rejection, cancelled before it ran.
        let child = Promise::<i32>::rejected(Error::msg("then")).then(Ok);
        assert!(child.cancel());
        // A resolver told to follow a rejection, cancelled before it followed.
        let (p, r) = Promise::<i32>::pending();
        assert!(r.resolve_with(Promise::rejected(Error::msg("resolve_with"))));
        assert!(p.cancel());
        // A handler returning a rejection, its promise cancelled before it followed.
        let (gate, open) = Promise::<()>::pending();
        let returned = gate.then(|()| Promise::<i32>::rejected(Error::msg("returned")));
        let cancel_it = returned.clone();
        let _ = open.resolve(());
        thenable::queue_microtask(move || {
            cancel_it.cancel();
        });
        event_loop.run().unwrap();
        assert!(child.is_cancelled() && p.is_cancelled() && returned.is_cancelled());
        assert!(seen.borrow().is_empty(), "reported: {:?}", seen.borrow());
        thenable::reset_unhandled_rejection_hook();
    });
}

// process.on('unhandledRejection', e => log.push('unhandled ' + e.message));
// process.on('rejectionHandled', () => log.push('handled-late'));
// let p;
// setTimeout(() => { p = Promise.reject(new Error('t1')); log.push('t1'); }, 5);
// setTimeout(() => { p.catch(() => log.push('caught')); log.push('t2'); }, 5);
// Node.js: ["t1","unhandled t1","t2","caught","handled-late"]: the report comes
// after the first callback's microtasks, before the second callback handles it.
#[test]
fn a_rejection_handled_only_by_the_next_timer_callback_is_reported_once() {
    within(|| {
        let event_loop = EventLoop::new();
        let seen = reports();
        let slot = Arc::new(std::sync::Mutex::new(None::<Promise<i32>>));
        let log = common::Log::default();
        let (put, l1) = (slot.clone(), log.clone());
        thenable::set_timeout(common::ms(5), move || {
            *put.lock().unwrap() = Some(Promise::rejected(Error::msg("t1")));
            l1.push("t1");
        });
        let (take, l2) = (slot.clone(), log.clone());
        let caught = Arc::new(std::sync::Mutex::new(None));
        let keep = caught.clone();
        thenable::set_timeout(common::ms(5), move || {
            let p = take.lock().unwrap().take().unwrap();
            let l3 = l2.clone();
            *keep.lock().unwrap() = Some(p.catch(move |_| {
                l3.push("caught");
                Ok(0)
            }));
            l2.push("t2");
        });
        event_loop.run().unwrap();
        assert_eq!(*seen.borrow(), ["t1"]);
        assert_eq!(log.entries(), ["t1", "t2", "caught"]);
        thenable::reset_unhandled_rejection_hook();
    });
}

// Where adoption and `finally` meet unhandled-rejection reports: a panicking
// `finally` callback rejects at once (JavaScript's `throw` in it), a follower of
// a rejected promise takes the rejection in two ticks and handles it for the
// followed one, and the reports come after the drain, each once, for the
// promise at the end of the chain only:
//
// process.on('unhandledRejection', (e) => log.push('unhandled ' + e.message));
// Promise.resolve(1).finally(() => { throw new Error('x'); })
//   .catch((e) => log.push('caught'));
// { let ro; const outer = new Promise((r) => { ro = r; });
//   outer.catch((e) => log.push('outer ' + e.message)); ro(Promise.reject(new Error('r'))); }
// Promise.resolve().then(() => log.push('g1'))...then(() => log.push('g5'));
// { let ro; const lone = new Promise((r) => { ro = r; }); ro(Promise.reject(new Error('lone'))); }
// Promise.reject(new Error('a')).then(() => {}).then(() => {});
//
// Node.js: ["g1","caught","g2","outer r","g3","g4","g5","unhandled lone","unhandled a"]
#[test]
fn adoption_finally_and_unhandled_reports_interleave_as_in_node() {
    let order = within(|| {
        let event_loop = EventLoop::new();
        let log = common::Log::default();
        let l = log.clone();
        thenable::set_unhandled_rejection_hook(move |e| l.push(format!("unhandled {e}")));
        let l = log.clone();
        let _f = Promise::<i32>::resolved(1)
            .finally(|| panic!("x"))
            .catch(move |e| {
                assert!(e.is_panic());
                l.push("caught");
                Ok(0)
            });
        let (outer, resolve_outer) = Promise::<i32>::pending();
        let l = log.clone();
        let _o = outer.catch(move |e| {
            l.push(format!("outer {e}"));
            Ok(0)
        });
        assert!(resolve_outer.resolve_with(Promise::rejected(Error::msg("r"))));
        let mut chain = Promise::<()>::resolved(());
        for event in ["g1", "g2", "g3", "g4", "g5"] {
            chain = chain.then(logs(&log, event));
        }
        let (lone, resolve_lone) = Promise::<i32>::pending();
        assert!(resolve_lone.resolve_with(Promise::rejected(Error::msg("lone"))));
        let _a = Promise::<i32>::rejected(Error::msg("a"))
            .then(|_| Ok(()))
            .then(|_| Ok(()));
        event_loop.run().unwrap();
        drop((lone, chain));
        thenable::reset_unhandled_rejection_hook();
        log.entries()
    });
    assert_eq!(
        order,
        [
            "g1",
            "caught",
            "g2",
            "outer r",
            "g3",
            "g4",
            "g5",
            "unhandled lone",
            "unhandled a"
        ]
    );
}

// Pass-through and two-handler forms, a resolver following a promise rejected
// after it was told to, and `finally` on a rejection, interleaved:
//
// Promise.reject(new Error('x')).then(() => log.push('a1')).catch(() => log.push('a2'))
//   .then(() => log.push('a3'));
// Promise.resolve().catch(() => log.push('b1')).then(() => log.push('b2'))
//   .then(() => log.push('b3')).then(() => log.push('b4'));
// { let r; const p = new Promise((_, rj) => { r = rj; });
//   let resolve; const promise = new Promise((res) => { resolve = res; });
//   resolve(p); promise.then(null, () => log.push('c-rejected')); r(new Error('late')); }
// Promise.reject(new Error('y')).then(() => log.push('d-ok'), () => log.push('d-err'))
//   .then(() => log.push('d2'));
// Promise.reject(new Error('z')).finally(() => log.push('e-fin'))
//   .catch(() => log.push('e-caught'));
//
// Node.js: ["d-err","e-fin","a2","b2","d2","a3","b3","c-rejected","b4","e-caught"]
#[test]
fn pass_through_two_handlers_late_rejected_adoption_and_finally_interleave_as_in_node() {
    let order = within(|| {
        let event_loop = EventLoop::new();
        let log = common::Log::default();
        let a = Promise::<()>::rejected(Error::msg("x"))
            .then(logs(&log, "a1"))
            .catch(logs(&log, "a2"))
            .then(logs(&log, "a3"));
        let b = Promise::<()>::resolved(())
            .catch(logs(&log, "b1"))
            .then(logs(&log, "b2"))
            .then(logs(&log, "b3"))
            .then(logs(&log, "b4"));
        let (p, r) = Promise::<()>::pending();
        let (promise, resolver) = Promise::<()>::pending();
        assert!(resolver.resolve_with(p));
        let c = promise.catch(logs(&log, "c-rejected"));
        assert!(r.reject(Error::msg("late")));
        let d = Promise::<()>::rejected(Error::msg("y"))
            .then_or_catch(logs(&log, "d-ok"), logs(&log, "d-err"))
            .then(logs(&log, "d2"));
        let fin = log.clone();
        let e = Promise::<()>::rejected(Error::msg("z"))
            .finally(move || fin.push("e-fin"))
            .catch(logs(&log, "e-caught"));
        event_loop.run().unwrap();
        for done in [a, b, c, d, e] {
            assert!(done.is_fulfilled());
        }
        log.entries()
    });
    assert_eq!(
        order,
        [
            "d-err",
            "e-fin",
            "a2",
            "b2",
            "d2",
            "a3",
            "b3",
            "c-rejected",
            "b4",
            "e-caught"
        ]
    );
}

// A rejection nobody handles, made before this thread ever had a loop (a library
// building promises at start-up), and the thread then drives the free
// `block_on`: Node.js reports every such rejection (there is always a loop).
#[test]
fn a_rejection_made_before_any_loop_existed_is_reported_by_the_first_drain() {
    within(|| {
        let seen = reports();
        drop(Promise::<i32>::rejected(Error::msg("early")));
        let later = Promise::<i32>::resolved(1).map(|v| v + 1);
        assert_eq!(thenable::block_on(later).unwrap(), 2);
        assert_eq!(*seen.borrow(), ["early"]);
        thenable::reset_unhandled_rejection_hook();
    });
}

// Error as a `std::error::Error` (through `Box<dyn Error>`, or inside an
// `io::Error`): a wrapped error's message is already the wrapper's Display, so a
// report that walks the `source()` chain (anyhow's `{:#}`, eyre, `Report`) says
// it twice.
#[test]
fn a_wrapped_error_is_not_repeated_by_its_source_chain() {
    fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![error.to_string()];
        let mut next = error.source();
        while let Some(error) = next {
            out.push(error.to_string());
            next = error.source();
        }
        out
    }
    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
    let boxed: Box<dyn std::error::Error + Send + Sync> = Error::new(io).into();
    assert_eq!(chain(&*boxed), ["no such file"]);
    // The kind survives the trip through `Error` and back into `io::Error`.
    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
    let back: std::io::Error = Error::new(io).into();
    assert_eq!(back.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(back.to_string(), "no such file");
}

// 100,000 resolvers, each following the next one's promise: the value of the
// last reaches the first, a cancellation of the first reaches the last one's
// `on_cancel`, and dropping the chain unsettled breaks it, all without recursion.
#[test]
fn a_hundred_thousand_resolvers_following_each_other_settle_cancel_and_drop_flat() {
    const N: usize = 100_000;
    fn build() -> (Promise<usize>, Vec<thenable::Resolver<usize>>) {
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..N).map(|_| Promise::<usize>::pending()).unzip();
        let mut promises = promises.into_iter();
        let head = promises.next().unwrap();
        for (resolver, next) in resolvers.iter().zip(promises) {
            assert!(resolver.resolve_with(next));
        }
        (head, resolvers)
    }
    within(|| {
        let event_loop = EventLoop::new();
        let (head, resolvers) = build();
        assert!(resolvers[N - 1].resolve(7));
        drop(resolvers);
        assert_eq!(event_loop.block_on(head).unwrap(), 7);

        let (head, resolvers) = build();
        let stopped = Counter::default();
        let flag = stopped.clone();
        resolvers[N - 1].on_cancel(move || flag.bump());
        // Every forwarder attached (the microtasks drain before a timer fires).
        event_loop.block_on(thenable::sleep(common::ms(1))).unwrap();
        assert!(head.cancel());
        assert_eq!(stopped.get(), 1);
        assert!(!resolvers[N - 1].resolve(1));
        drop(resolvers);

        let (head, resolvers) = build();
        drop(resolvers);
        assert!(event_loop.block_on(head).unwrap_err().is_broken());
    });
}
