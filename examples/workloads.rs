//! The eight benchmark workloads of issue #5, written with thenable.
//!
//! Each workload is the idiomatic thenable program for its shape: `then` chains
//! where the workload is about chains (`chain`, `all`, `fanout`, `doxbee`,
//! `parallel`, `timers`), `async`/`await` where it is about tasks (`tasks`, `echo`).
//! The tokio and Node.js twins do the same work, so that one run can compare them.
//!
//! ```sh
//! cargo run --release --example workloads -- chain 1000000   # one workload, one size
//! cargo run --example workloads                              # all of them, small, checked
//! ```
//!
//! One workload prints exactly one line,
//! `workload=<name> impl=thenable n=<n> ms=<timed part> check=<checksum>`,
//! and exits with status 1 (and a message on stderr) if its result is wrong.
//! Only the part each workload's definition names is timed: setting up the loop
//! (and, for `echo`, binding the listener) is not.

use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::io::{AsyncReadExt, AsyncWriteExt};
use thenable::net::{TcpListener, TcpStream};
use thenable::{all, queue_microtask, set_timeout, sleep, spawn_local, Error, EventLoop, Promise};

/// A workload: its name, its size when run with no arguments (small enough for a
/// debug build to run them all in a few seconds), and the program itself.
struct Workload {
    name: &'static str,
    smoke_n: u64,
    run: fn(u64) -> Result<Outcome, Error>,
    /// The checksum a correct run of size `n` produces.
    expected: fn(u64) -> u64,
}

/// What one run measured.
struct Outcome {
    elapsed: Duration,
    check: u64,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "chain",
        smoke_n: 10_000,
        run: chain,
        expected: |n| n,
    },
    Workload {
        name: "all",
        smoke_n: 10_000,
        run: all_of,
        expected: sum_below,
    },
    Workload {
        name: "fanout",
        smoke_n: 10_000,
        run: fanout,
        expected: sum_below,
    },
    Workload {
        name: "doxbee",
        smoke_n: 200,
        run: doxbee,
        expected: |n| n,
    },
    Workload {
        name: "parallel",
        smoke_n: 200,
        run: parallel,
        expected: |n| n * PARALLEL_OPS,
    },
    Workload {
        name: "timers",
        smoke_n: 10_000,
        run: timers,
        expected: |n| n,
    },
    Workload {
        name: "tasks",
        smoke_n: 10_000,
        run: tasks,
        expected: sum_below,
    },
    Workload {
        name: "echo",
        smoke_n: 20,
        run: echo,
        expected: |n| ECHO_CLIENTS * n * ECHO_MESSAGE as u64,
    },
];

/// 0 + 1 + ... + (n - 1).
fn sum_below(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chosen: Vec<(&Workload, u64)> = match args.as_slice() {
        [] => WORKLOADS.iter().map(|w| (w, w.smoke_n)).collect(),
        [name, n] => {
            let Some(workload) = WORKLOADS.iter().find(|w| w.name == name.as_str()) else {
                return usage(&format!("unknown workload {name:?}"));
            };
            match n.replace('_', "").parse::<f64>() {
                // `1e6` and `1_000_000` both work; sizes are whole and positive.
                Ok(n) if n >= 1.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => {
                    vec![(workload, n as u64)]
                }
                _ => return usage(&format!("bad size {n:?}")),
            }
        }
        _ => return usage("expected a workload and a size, or nothing"),
    };
    for (workload, n) in chosen {
        let outcome = match (workload.run)(n) {
            Ok(outcome) => outcome,
            Err(error) => {
                eprintln!("workload {} failed: {error}", workload.name);
                return ExitCode::FAILURE;
            }
        };
        let expected = (workload.expected)(n);
        if outcome.check != expected {
            eprintln!(
                "workload {} n={n}: check={} but {expected} was expected",
                workload.name, outcome.check
            );
            return ExitCode::FAILURE;
        }
        println!(
            "workload={} impl=thenable n={n} ms={:.3} check={}",
            workload.name,
            outcome.elapsed.as_secs_f64() * 1e3,
            outcome.check
        );
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
    eprintln!(
        "{problem}\nusage: workloads [<workload> <n>]   workloads: {}",
        names.join(", ")
    );
    ExitCode::FAILURE
}

/// Runs `body` on a fresh loop and times it; the loop is made before the clock
/// starts and dropped after it stops.
fn timed(body: impl FnOnce(&EventLoop) -> Result<u64, Error>) -> Result<Outcome, Error> {
    let event_loop = EventLoop::new();
    let start = Instant::now();
    let check = body(&event_loop)?;
    let elapsed = start.elapsed();
    drop(event_loop);
    Ok(Outcome { elapsed, check })
}

/// n `then` links on one pending promise, each adding 1; resolve the root with 0.
fn chain(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        let (root, resolver) = Promise::<u64>::pending();
        let mut tail = root;
        for _ in 0..n {
            tail = tail.then(|v| Ok(v + 1));
        }
        resolver.resolve(0);
        event_loop.block_on(tail)
    })
}

/// One `all` over n pending promises, resolved in order with their index.
fn all_of(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        let (promises, resolvers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| Promise::<u64>::pending()).unzip();
        let everything = all(promises);
        for (i, resolver) in (0..n).zip(&resolvers) {
            resolver.resolve(i);
        }
        let values = event_loop.block_on(everything)?;
        Ok(values.iter().sum())
    })
}

thread_local! {
    /// `fanout`'s shared counter. Handlers are `Send` (a promise may be settled
    /// on any thread), so state they share on one loop's thread is a
    /// thread-local: the `Cell` tokio's twin borrows, and Node.js's variable.
    /// An `Arc<AtomicU64>` would cost each handler three locked instructions
    /// (a clone, an add, a drop) and a second captured word.
    static FANOUT_SUM: Cell<u64> = const { Cell::new(0) };
}

/// n handlers on one pending promise, each adding its index to a shared counter.
fn fanout(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        FANOUT_SUM.set(0);
        let (root, resolver) = Promise::<()>::pending();
        for i in 0..n {
            // Dropping a derived promise leaves its handler attached.
            drop(root.clone().then(move |()| {
                FANOUT_SUM.set(FANOUT_SUM.get() + i);
                Ok(())
            }));
        }
        drop(root);
        resolver.resolve(());
        event_loop.run()?;
        Ok(FANOUT_SUM.get())
    })
}

/// A fake I/O operation: a promise a 1 ms timer fulfils.
fn fake_io() -> Promise<()> {
    sleep(Duration::from_millis(1))
}

/// bluebird's doxbee-sequential shape: two operations in parallel, then five in
/// sequence.
fn upload() -> Promise<u64> {
    all([fake_io(), fake_io()])
        .then(|_| fake_io())
        .then(|()| fake_io())
        .then(|()| fake_io())
        .then(|()| fake_io())
        .then(|()| fake_io())
        .map(|()| 1)
}

/// n concurrent uploads; the check counts the ones that completed.
fn doxbee(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        let uploads = all((0..n).map(|_| upload()));
        Ok(event_loop.block_on(uploads)?.iter().sum())
    })
}

/// Fake operations per request in `parallel`.
const PARALLEL_OPS: u64 = 25;

/// bluebird's madeup-parallel shape: 25 operations at once, then done; the request
/// reports how many of them completed.
fn request() -> Promise<u64> {
    all((0..PARALLEL_OPS).map(|_| fake_io())).map(|done| done.len() as u64)
}

/// n concurrent requests; the check counts the operations that completed.
fn parallel(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        let requests = all((0..n).map(|_| request()));
        Ok(event_loop.block_on(requests)?.iter().sum())
    })
}

/// n one-shot timers, 0 to 99 ms, counted as they fire.
fn timers(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        let fired = Rc::new(Cell::new(0u64));
        for i in 0..n {
            let fired = fired.clone();
            let delay = Duration::from_millis((i * 7919) % 100);
            set_timeout(delay, move || fired.set(fired.get() + 1));
        }
        event_loop.run()?;
        Ok(fired.get())
    })
}

/// n tasks, each awaiting its own pending promise and adding the value to a sum;
/// the promises are resolved, in order, once every task waits on its own.
fn tasks(n: u64) -> Result<Outcome, Error> {
    timed(|event_loop| {
        let sum = Rc::new(Cell::new(0u64));
        let mut resolvers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (promise, resolver) = Promise::<u64>::pending();
            resolvers.push(resolver);
            let sum = sum.clone();
            // Detached: the loop runs the task whether or not its promise is kept.
            drop(spawn_local(async move {
                let value = promise.await?;
                sum.set(sum.get() + value);
                Ok::<_, Error>(())
            }));
        }
        // Tasks start from the microtask queue in the order they were spawned, so
        // this runs once every one of them has polled its promise and waits.
        queue_microtask(move || {
            for (i, resolver) in (0..n).zip(&resolvers) {
                resolver.resolve(i);
            }
        });
        event_loop.run()?;
        Ok(sum.get())
    })
}

/// Client connections in `echo`.
const ECHO_CLIENTS: u64 = 50;
/// Bytes per message in `echo`.
const ECHO_MESSAGE: usize = 64;

/// A server and 50 clients on one loop; each client sends n 64-byte messages one at
/// a time and waits for each echo. The check counts the bytes echoed back intact.
/// Connecting is timed; binding the listener is not.
fn echo(n: u64) -> Result<Outcome, Error> {
    // Made before the listener: a socket belongs to the loop current when it is
    // wrapped, and this is the loop that must watch it.
    let event_loop = EventLoop::new();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    drop(spawn_local(serve(listener)));
    let clients = all((0..ECHO_CLIENTS).map(|c| spawn_local(client(addr, c, n))));
    let check = event_loop.block_on(clients)?.iter().sum();
    let elapsed = start.elapsed();
    Ok(Outcome { elapsed, check })
}

/// Accepts the clients, each served by its own task until it hangs up.
async fn serve(listener: TcpListener) -> Result<(), Error> {
    for _ in 0..ECHO_CLIENTS {
        let (conn, _) = listener.accept().await?;
        conn.set_nodelay(true)?;
        drop(spawn_local(echo_back(conn)));
    }
    Ok(())
}

/// Sends back whatever arrives, until the end of the stream.
async fn echo_back(mut conn: TcpStream) -> Result<(), Error> {
    let mut buf = [0u8; 4096];
    loop {
        let len = AsyncReadExt::read(&mut conn, &mut buf).await?;
        if len == 0 {
            return Ok(());
        }
        AsyncWriteExt::write_all(&mut conn, &buf[..len]).await?;
    }
}

/// One client: n round trips of one message, each compared with what was sent.
async fn client(addr: std::net::SocketAddr, id: u64, n: u64) -> Result<u64, Error> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    let mut message = [0u8; ECHO_MESSAGE];
    let mut reply = [0u8; ECHO_MESSAGE];
    let mut echoed = 0;
    for i in 0..n {
        message.fill((id * 31 + i) as u8);
        AsyncWriteExt::write_all(&mut conn, &message).await?;
        AsyncReadExt::read_exact(&mut conn, &mut reply).await?;
        if reply == message {
            echoed += ECHO_MESSAGE as u64;
        }
    }
    Ok(echoed)
}
