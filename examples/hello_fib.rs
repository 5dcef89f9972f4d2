//! Prints "Hello world!" every three seconds while it reads numbers from standard
//! input and prints their Fibonacci numbers; `exit` quits.
//!
//! From seed 003 ("Understanding Asynchronous IO With Python 3.4's Asyncio And
//! Node.js"). There, Node.js (`setInterval` plus `process.stdin.on('data')`) and
//! asyncio (`add_reader` plus a sleeping coroutine) compute `fib(n)` on the loop
//! thread, so a large `n` stalls the greetings until it is done. Here the naive,
//! deliberately slow `fib` runs on the blocking pool (`spawn_blocking`) and the loop
//! stays free: the greetings keep coming while it computes.
//!
//! Run it with `cargo run --example hello_fib`, type numbers (35 to 45 take a
//! while; lines are answered in turn, so `exit` waits for the answer in progress),
//! and `exit` or end of input (Ctrl-D) to quit. With `--demo` (which CI uses, as it runs examples
//! without input) it types a few numbers from a built-in list itself, greets five
//! times a second, and exits by itself.

use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, Stream, StreamExt};
use thenable::{block_on, clear_timer, set_interval, sleep, spawn_blocking, Error};

/// The largest `n` accepted: the naive `fib(50)` already takes a minute or more, and
/// each step further 1.6 times longer (the result would fit in a `u64` up to 93).
const LARGEST_N: u32 = 50;

const GREETING_PERIOD: Duration = Duration::from_secs(3);

const DEMO_GREETING_PERIOD: Duration = Duration::from_millis(200);
/// What `--demo` types, one line at a time; nothing after `exit` is read.
const DEMO_INPUT: &[&str] = &["10", "25", "twelve", "38", "exit", "40"];
const DEMO_TYPING_PAUSE: Duration = Duration::from_millis(300);

/// Where the lines come from: standard input, or the demo's typist.
type Lines = Pin<Box<dyn Stream<Item = Result<String, Error>>>>;

fn main() {
    let demo = std::env::args().skip(1).any(|arg| arg == "--demo");
    let (lines, period): (Lines, Duration) = if demo {
        (typed_by_the_demo(), DEMO_GREETING_PERIOD)
    } else {
        (Box::pin(thenable::io::stdin_lines()), GREETING_PERIOD)
    };
    say_hello();
    let greetings = set_interval(period, say_hello);
    let outcome = block_on(answer_each_line(lines));
    // Not needed to quit (`block_on` returns when the answers are done), but a
    // live interval would keep a `run()` of this loop going for ever.
    clear_timer(greetings);
    if let Err(error) = outcome {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn say_hello() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    println!("{} - Hello world!", now.as_secs());
}

/// Reads top-down, like the synchronous program, and never blocks the loop: each
/// `await` lets the greetings run.
async fn answer_each_line(mut lines: Lines) -> Result<(), Error> {
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(line) => line,
            Err(unreadable) => {
                println!("skipped a line: {unreadable}");
                continue;
            }
        };
        let text = line.trim();
        if text == "exit" {
            break;
        }
        if text.is_empty() {
            continue;
        }
        let n = match text.parse::<u32>() {
            Ok(n) if n <= LARGEST_N => n,
            // Also the numbers too large for a `u32`.
            Ok(_) | Err(_) if text.bytes().all(|b| b.is_ascii_digit()) => {
                println!("fib({text}) would take far too long (try up to {LARGEST_N})");
                continue;
            }
            _ => {
                println!("expected a whole number from 0 to {LARGEST_N}, or exit: {text:?}");
                continue;
            }
        };
        let (value, took) = spawn_blocking(move || Ok::<_, Error>(timed(|| fib(n)))).await?;
        println!("Executing fib took {:.3} seconds.", took.as_secs_f64());
        println!("fib({n}) = {value}");
    }
    Ok(())
}

/// The seed's `log_execution_time`: the result and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// The seed's naive recursion, slow on purpose: it is the blocking work.
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// The demo's input: `DEMO_INPUT`, one line per pause, echoed as it is "typed".
fn typed_by_the_demo() -> Lines {
    Box::pin(stream::iter(DEMO_INPUT).then(|line| async move {
        sleep(DEMO_TYPING_PAUSE).await?;
        println!("> {line}");
        Ok(line.to_string())
    }))
}
