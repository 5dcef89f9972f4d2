//! `as_completed`'s requests cancelled on another thread while its loop hands
//! outcomes to them: an outcome whose request turns out cancelled goes to the next
//! request, so each comes out exactly once, in completion order. Counts and orders
//! only; a hang is turned into a failure by the watchdog of [`within`].

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::within;
use thenable::{as_completed, EventLoop, Promise};

const ROUNDS: u32 = 200;
const INPUTS: u32 = 32;

#[test]
fn requests_cancelled_on_another_thread_lose_and_duplicate_no_outcome() {
    within(|| {
        let event_loop = EventLoop::new();
        for round in 0..ROUNDS {
            let (inputs, resolvers): (Vec<_>, Vec<_>) =
                (0..INPUTS).map(|_| Promise::<u32>::pending()).unzip();
            let mut completed = as_completed(inputs);
            let requests: Vec<_> = (0..INPUTS)
                .map(|_| completed.next_promise().unwrap())
                .collect();
            // Settled in input order: the watchers are queued on this loop in that
            // order, and hand the outcomes over once it runs.
            for (i, resolver) in (0..).zip(&resolvers) {
                resolver.resolve(i);
            }
            let start = Arc::new(Barrier::new(2));
            let go = start.clone();
            let canceller = thread::spawn(move || {
                go.wait();
                // Each odd request is cancelled as soon as the one before it has its
                // outcome: just when the loop is about to hand it the next.
                let cancelled: Vec<bool> = (0..requests.len())
                    .map(|i| {
                        if i % 2 == 0 {
                            return false;
                        }
                        while requests[i - 1].is_pending() {
                            std::hint::spin_loop();
                        }
                        requests[i].cancel()
                    })
                    .collect();
                (requests, cancelled)
            });
            start.wait();
            event_loop.run().unwrap();
            let (requests, cancelled) = canceller.join().unwrap();
            let mut outcomes = Vec::new();
            for (request, cancelled) in requests.into_iter().zip(cancelled) {
                if !cancelled {
                    outcomes.push(event_loop.block_on(request).unwrap());
                }
            }
            // The outcomes of the cancelled requests are left for new ones.
            while let Some(next) = completed.next_promise() {
                outcomes.push(event_loop.block_on(next).unwrap());
            }
            assert_eq!(outcomes, (0..INPUTS).collect::<Vec<_>>(), "round {round}");
        }
    });
}
