//! `as_completed`'s requests cancelled on another thread while its loop hands
//! outcomes to them: an outcome whose request turns out cancelled goes to the next
//! request, so each comes out exactly once, in completion order. Counts and orders
//! only; a hang is turned into a failure by the watchdog of [`within`].

mod common;

use common::{run_cancelling_odd_ones_as_served, within};
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
            let mut outcomes = Vec::new();
            for (request, cancelled) in run_cancelling_odd_ones_as_served(&event_loop, requests) {
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
