//! Time limits, retries, a concurrency limit and a scope, each printing what
//! happened when (milliseconds since its section began).
//!
//! Every section shows a property, and checks it before going on:
//!
//! 1. `timeout` cancels the work it gives up on: the slow query's future is dropped
//!    at the limit and never reaches its end, and its own timer goes with it, so the
//!    loop is idle right after. `timeout_at` puts one deadline on several steps.
//! 2. `retry` with a per-attempt `timeout`: the pauses double (`Backoff`), the
//!    attempts that timed out are cancelled and never answer.
//! 3. `map_concurrent` with a limit of 3: never more than 3 calls in flight, results
//!    in input order although they finish in another order.
//! 4. `scope` (asyncio's `TaskGroup`): one task fails, the others (and the body) are
//!    cancelled at once and never reach their end; the failure is the scope's error.
//!
//! Run it with `cargo run --example timeouts`; it takes about a second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thenable::{
    delay, map_concurrent, retry, scope, sleep, spawn, Backoff, Error, EventLoop, Promise, Scope,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Milliseconds since a section began, for the log lines.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn start(title: &str) -> Clock {
        println!("\n== {title}");
        Clock(Instant::now())
    }

    fn say(self, what: impl std::fmt::Display) {
        println!("[{:>4} ms] {what}", self.0.elapsed().as_millis());
    }
}

/// Says so if dropped before `finished` is set: a cancelled task's future is
/// dropped, and with it this guard.
struct Guard {
    what: String,
    clock: Clock,
    finished: bool,
}

impl Guard {
    fn new(what: impl Into<String>, clock: Clock) -> Guard {
        Guard {
            what: what.into(),
            clock,
            finished: false,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.finished {
            self.clock
                .say(format!("{}: cancelled before its end", self.what));
        }
    }
}

/// A task that works for `work`, then finishes with `value`; `ends` counts the
/// tasks that got to their end.
fn job<T: Send + 'static>(
    what: &str,
    work: Duration,
    value: T,
    clock: Clock,
    ends: &Arc<AtomicUsize>,
) -> Promise<T> {
    let (mut guard, ends) = (Guard::new(what, clock), ends.clone());
    spawn(async move {
        sleep(work).await?;
        guard.finished = true;
        clock.say(format!("{}: finished", guard.what));
        ends.fetch_add(1, Ordering::SeqCst);
        Ok(value)
    })
}

/// Runs the loop until it has nothing left, and says when that was: right after
/// the last thing the section waited for, if nothing cancelled lingers.
fn idle(event_loop: &EventLoop, clock: Clock) {
    event_loop.run().expect("the loop fails only on a deadlock");
    clock.say("the loop is idle: no timer or task is left behind");
}

fn timeouts(event_loop: &EventLoop) {
    let clock = Clock::start("1a. timeout: a 300 ms query limited to 100 ms");
    let ends = Arc::new(AtomicUsize::new(0));
    let query = job("query", ms(300), "rows", clock, &ends).timeout(ms(100));
    match event_loop.block_on(query) {
        Ok(rows) => clock.say(format!("got {rows}")),
        Err(error) => clock.say(format!(
            "gave up: {error} (is_timeout: {})",
            error.is_timeout()
        )),
    }
    idle(event_loop, clock);
    assert_eq!(
        ends.load(Ordering::SeqCst),
        0,
        "the slow query reached its end"
    );

    let clock = Clock::start("1b. timeout: a 20 ms query limited to 100 ms");
    let query = job("query", ms(20), "rows", clock, &ends).timeout(ms(100));
    let rows = event_loop.block_on(query).expect("in time");
    clock.say(format!("got {rows}"));
    idle(event_loop, clock); // the 100 ms limit's timer went when the query won

    let clock = Clock::start("1c. timeout_at: two 60 ms steps, one deadline 100 ms away");
    let deadline = Instant::now() + ms(100);
    let steps = spawn(async move {
        let ends = Arc::new(AtomicUsize::new(0));
        job("step 1", ms(60), (), clock, &ends)
            .timeout_at(deadline)
            .await?;
        job("step 2", ms(60), (), clock, &ends)
            .timeout_at(deadline)
            .await
    });
    if let Err(error) = event_loop.block_on(steps) {
        clock.say(format!("gave up at the deadline: {error}"));
    }
    idle(event_loop, clock);
}

fn retries(event_loop: &EventLoop) {
    let clock =
        Clock::start("2. retry: each attempt limited to 50 ms, pauses from 20 ms, doubling");
    let (calls, ends) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pauses = Backoff::new(ms(20), 2.0, ms(1000))
        .into_iter()
        .inspect(move |pause| clock.say(format!("pause {} ms", pause.as_millis())));
    let (counter, answered) = (calls.clone(), ends.clone());
    let value = retry(5, pauses, move || {
        let attempt = counter.fetch_add(1, Ordering::SeqCst) + 1;
        clock.say(format!("attempt {attempt}"));
        // The service is overloaded for the first two calls.
        let work = if attempt <= 2 { ms(200) } else { ms(10) };
        let call = format!("call {attempt}");
        job(&call, work, attempt, clock, &answered)
            .timeout(ms(50))
            .catch(move |error| {
                clock.say(format!("attempt {attempt}: {error}"));
                Err(error)
            })
    });
    let attempt = event_loop
        .block_on(value)
        .expect("the third attempt answers");
    clock.say(format!("answered by attempt {attempt}"));
    idle(event_loop, clock);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(ends.load(Ordering::SeqCst), 1, "a timed-out call answered");
}

fn concurrency(event_loop: &EventLoop) {
    const LIMIT: usize = 3;
    let clock = Clock::start("3. map_concurrent: 8 items, at most 3 in flight");
    let durations = [120, 40, 80, 30, 100, 50, 60, 20];
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (in_flight.clone(), most.clone());
    let squares = map_concurrent(
        durations.into_iter().enumerate(),
        LIMIT,
        move |(item, work)| {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(running, Ordering::SeqCst);
            clock.say(format!(
                "start item {item} ({work} ms), {running} in flight"
            ));
            let now = now.clone();
            delay(ms(work), item * item).map(move |square| {
                let running = now.fetch_sub(1, Ordering::SeqCst) - 1;
                clock.say(format!("  end item {item}, {running} in flight"));
                square
            })
        },
    );
    let squares = event_loop.block_on(squares).expect("nothing fails");
    clock.say(format!("results, in input order: {squares:?}"));
    let most = most.load(Ordering::SeqCst);
    clock.say(format!("at most {most} were in flight (limit {LIMIT})"));
    assert!(most <= LIMIT);
    assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49]);
    idle(event_loop, clock);
}

fn structured(event_loop: &EventLoop) {
    let clock = Clock::start("4. scope: two downloads and a check that fails at 100 ms");
    let ends = Arc::new(AtomicUsize::new(0));
    let tasks = ends.clone();
    let outcome = scope(move |s: Scope| async move {
        let mut body = Guard::new("the body", clock);
        let a = s.spawn(job("download a.iso", ms(400), 4, clock, &tasks));
        let b = s.spawn(job("download b.iso", ms(300), 3, clock, &tasks));
        drop(s.spawn(async move {
            sleep(ms(100)).await?;
            clock.say("check: checksum mismatch");
            Err::<(), _>(Error::msg("c.iso: checksum mismatch"))
        }));
        let total = a.await? + b.await?;
        body.finished = true;
        Ok(total)
    });
    let error = event_loop.block_on(outcome).expect_err("the check fails");
    clock.say(format!("the scope failed with the first failure: {error}"));
    idle(event_loop, clock);
    assert_eq!(error.to_string(), "c.iso: checksum mismatch");
    assert_eq!(
        ends.load(Ordering::SeqCst),
        0,
        "a cancelled sibling reached its end"
    );
}

fn main() {
    let event_loop = EventLoop::new();
    timeouts(&event_loop);
    retries(&event_loop);
    concurrency(&event_loop);
    structured(&event_loop);
}
