//! Three pretend URL fetches, processed as they complete, then all at once.
//!
//! The Rust twin of the asyncio program in seed 003 ("Relying on the results of
//! multiple independent coroutines"): `get_url` pauses for a random time instead of
//! loading anything. First `as_completed` hands the results over in the order the
//! fetches finish; then `all` (asyncio's `gather`, JavaScript's `Promise.all`) hands
//! them over at once, in the order they were asked for, whatever order they finished
//! in. The same two are then written as plain `then` chains, with no `async` at all,
//! and a last round shows what asyncio's `gather` does not do: when one fetch fails,
//! `all` fails at once and cancels the fetches still running.
//!
//! The "random" pauses come from a small generator with a fixed seed, so every run
//! prints the same story (pass another seed as the first argument for another one).
//! Times are milliseconds since the round began.
//!
//! Run it with `cargo run --example gather` (or `-- 42` for another seed).

use std::time::{Duration, Instant};

use futures::StreamExt;
use thenable::{all, as_completed, block_on, sleep, spawn, AsCompleted, Error, EventLoop, Promise};

const URLS: [&str; 3] = ["URL1", "URL2", "URL3"];

/// A linear congruential generator (Knuth's MMIX constants): enough to pick pauses
/// that look random, with no dependency and the same sequence on every machine.
struct Lcg(u64);

impl Lcg {
    /// A pause of 100 to 400 ms: the article's `randint(1, 4)` seconds, shrunk.
    fn pause(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        100 + (self.0 >> 33) % 301 // the high bits are the random-looking ones
    }
}

/// Milliseconds since a round began, for the log lines.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now())
    }

    fn say(self, what: impl std::fmt::Display) {
        println!("[{:>4} ms] {what}", self.0.elapsed().as_millis());
    }
}

/// The article's `get_url`: pretend to load `url`, taking `wait` ms.
fn get_url(url: &'static str, wait: u64, clock: Clock) -> Promise<(&'static str, u64)> {
    sleep(Duration::from_millis(wait)).map(move |()| {
        clock.say(format!("Done: {url} took {wait} ms to get!"));
        (url, wait)
    })
}

/// Starts the three fetches: each begins at once, so they run side by side.
fn fetch_all(pauses: &mut Lcg, clock: Clock) -> Vec<Promise<(&'static str, u64)>> {
    URLS.iter()
        .map(|&url| get_url(url, pauses.pause(), clock))
        .collect()
}

/// `asyncio.as_completed`: the loop body sees each result as soon as it is there.
async fn process_as_results_come_in(pauses: &mut Lcg) -> Result<(), Error> {
    let clock = Clock::start();
    let mut done = as_completed(fetch_all(pauses, clock));
    while let Some(outcome) = done.next().await {
        let (url, _) = outcome?;
        clock.say(format!("Coroutine for {url} is done"));
    }
    Ok(())
}

/// `asyncio.gather`: one result, every value in input order.
async fn process_once_everything_ready(pauses: &mut Lcg) -> Result<(), Error> {
    let clock = Clock::start();
    let results = all(fetch_all(pauses, clock)).await?;
    clock.say(format!("{results:?}"));
    Ok(())
}

/// The same as `process_as_results_come_in`, as a chain: each `then` asks the
/// `AsCompleted` for the promise of the next result, until there is none.
fn as_completed_chain(mut rest: AsCompleted<(&'static str, u64)>, clock: Clock) -> Promise<()> {
    match rest.next_promise() {
        None => Promise::resolved(()),
        Some(next) => next.then(move |(url, _)| {
            // No coroutine here: the article's line, said by the chain's handler.
            clock.say(format!("Handler for {url} is done"));
            as_completed_chain(rest, clock)
        }),
    }
}

/// Prints, when a fetch's future is dropped before its end, that it was stopped.
struct StopNotice {
    url: &'static str,
    clock: Clock,
    finished: bool,
}

impl Drop for StopNotice {
    fn drop(&mut self) {
        if !self.finished {
            self.clock
                .say(format!("{}: cancelled, its future dropped", self.url));
        }
    }
}

/// `get_url` as a task, like asyncio's coroutines; URL2 fails after 50 ms.
fn get_url_task(url: &'static str, wait: u64, clock: Clock) -> Promise<(&'static str, u64)> {
    spawn(async move {
        let mut notice = StopNotice {
            url,
            clock,
            finished: false,
        };
        let result = if url == "URL2" {
            sleep(Duration::from_millis(50)).await?;
            Err(Error::msg("URL2: connection refused"))
        } else {
            get_url(url, wait, clock).await
        };
        notice.finished = true;
        result
    })
}

/// One fetch fails: `all` rejects at once and cancels the others, which never get
/// to "Done" (asyncio's `gather` would leave them running, unwatched).
fn fail_fast(event_loop: &EventLoop, pauses: &mut Lcg) {
    let clock = Clock::start();
    let fetches = URLS.map(|url| get_url_task(url, pauses.pause(), clock));
    match event_loop.block_on(all(fetches)) {
        Ok(results) => clock.say(format!("unexpected success: {results:?}")),
        Err(error) => clock.say(format!("all failed fast: {error}")),
    }
    // Their timers went with them: nothing is left for the loop to wait for.
    event_loop.run().expect("nothing left to fail");
    clock.say("the loop is idle: no timer of a cancelled fetch is left");
}

fn main() {
    if let Err(e) = run() {
        eprintln!("gather: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed = match &args[..] {
        [] => 113,
        [seed] => seed.parse().map_err(|_| {
            Error::msg(format!(
                "the seed must be a whole number from 0 to {}, not {seed:?}",
                u64::MAX
            ))
        })?,
        _ => return Err(Error::msg("usage: gather [SEED]")),
    };
    let mut pauses = Lcg(seed);
    let event_loop = EventLoop::new();

    println!("First, process results as they come in (as_completed, async/await):");
    block_on(process_as_results_come_in(&mut pauses))?;

    println!("\nNow, process results once they are all ready (all, async/await):");
    block_on(process_once_everything_ready(&mut pauses))?;

    println!("\nThe same two as then-chains, no async anywhere. As they come in:");
    let clock = Clock::start();
    block_on(as_completed_chain(
        as_completed(fetch_all(&mut pauses, clock)),
        clock,
    ))?;
    println!("Once they are all ready:");
    let clock = Clock::start();
    let gathered = all(fetch_all(&mut pauses, clock)).map(move |results| {
        clock.say(format!("{results:?}"));
    });
    block_on(gathered)?;

    println!("\nFinally, when one fetch fails (tasks this time):");
    fail_fast(&event_loop, &mut pauses);
    Ok(())
}
