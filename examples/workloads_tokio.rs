//! The eight benchmark workloads of issue #5, written for tokio's current-thread
//! runtime: the contender `examples/workloads.rs` (thenable) is compared with.
//!
//! ```sh
//! cargo run --release --example workloads_tokio -- chain 1000000   # one workload, one size
//! cargo run --example workloads_tokio                              # all of them, small, checked
//! ```
//!
//! One workload prints exactly one line,
//! `workload=<name> impl=tokio n=<n> ms=<timed part> check=<checksum>`,
//! and exits with status 1 (and a message on stderr) if its checksum is wrong.
//!
//! The point is to beat the fastest tokio code a strong tokio user would write for
//! each shape, so every choice below was measured against its alternatives on a
//! 2-core machine (n = 1,000,000; tokio 1.54, glibc's allocator):
//!
//! - Everything runs inside a `LocalSet` on the current-thread runtime, and tasks
//!   are spawned with `spawn_local`: the whole program is single-threaded, and a
//!   `LocalSet` spawns and completes tasks without the runtime's locked task list
//!   (about 20% faster than `tokio::spawn` for 1,000,000 tasks).
//! - Where a workload is about promises rather than tasks (`chain`, `all`,
//!   `fanout`), its "then" handlers are futures driven by one `FuturesUnordered`
//!   instead of one spawned task each: the same independent, separately woken
//!   stages, without a task allocation per stage. `chain` takes 200 ms this way,
//!   280 ms with a `spawn_local` task per link awaiting the previous link's
//!   `JoinHandle`, 600 ms with a `tokio::spawn` task and a oneshot per link;
//!   `fanout` 165 ms, against 380 ms with a task per handler and 620 ms with tasks
//!   awaiting a `watch` channel.
//! - Those `FuturesUnordered`s run under `tokio::task::unconstrained`. Without it,
//!   tokio's cooperative budget makes every future after the 128th return `Pending`
//!   and defers its wake-up, and `FuturesUnordered` then re-polls every remaining
//!   future on each turn: `join_all` over 1,000,000 oneshot receivers takes 280 s
//!   instead of 0.23 s.
//! - `all` is `join_all`, which returns the values in order as `Promise.all` does.
//!   Folding a `FuturesUnordered` of the receivers is 15% faster but yields the
//!   values in completion order, which is not what `all` promises.
//! - Futures are lazy: a stage created on a pending promise first runs when it is
//!   polled, which, written the natural way, is after the root is resolved. That is
//!   what tokio code does, so it is kept for `chain`, `all` and `fanout` (polling
//!   every stage once before resolving, so each one registers a waker and is woken,
//!   costs `chain` 280 ms and `fanout` 275 ms). `tasks` is defined as tasks that
//!   each await a *pending* promise, so there the promises are resolved only once
//!   every task is waiting (600 ms; resolving them before the tasks first run would
//!   take 445 ms).
//! - Waiting for many tasks is a countdown the last one to finish signals, not a
//!   `JoinHandle` per task awaited in turn (about 10% faster at 1,000,000 tasks).
//! - Timers are one tokio-util `DelayQueue` (a timer wheel of its own, driven by
//!   one task), with deadlines computed from one `Instant` taken when scheduling
//!   starts, as Node.js does (its timers count from the loop's cached time). That
//!   takes 210 ms and 56 MiB; a task per timer sleeping until its deadline takes
//!   450 ms and 437 MiB, driving the `Sleep`s from one `FuturesUnordered` 900 ms,
//!   and `sleep(delay)` inside each task 1,500 ms (the clock is read when the task
//!   first runs, stretching the deadlines).
//! - `echo`'s clients read through a `BufReader`: its 8 KiB read of a 64-byte reply
//!   comes back short, which tells tokio the socket is drained (it clears the
//!   readiness), so the next read waits without a `recvfrom` that would fail:
//!   200,010 `recvfrom` instead of 299,960 at n = 2,000, and 293 ms instead of
//!   306 (11 alternating runs). thenable's `TcpStream` reads ahead by itself.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::{spawn_local, unconstrained};

/// A workload: its name, its size when run with no arguments (small enough for a
/// debug build to run them all in a few seconds), and its checksum for size n.
struct Workload {
    name: &'static str,
    smoke_n: u64,
    expected: fn(u64) -> u64,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "chain",
        smoke_n: 10_000,
        expected: |n| n,
    },
    Workload {
        name: "all",
        smoke_n: 10_000,
        expected: sum_below,
    },
    Workload {
        name: "fanout",
        smoke_n: 10_000,
        expected: sum_below,
    },
    Workload {
        name: "doxbee",
        smoke_n: 200,
        expected: |n| n,
    },
    Workload {
        name: "parallel",
        smoke_n: 200,
        expected: |n| n * PARALLEL_OPS,
    },
    Workload {
        name: "timers",
        smoke_n: 10_000,
        expected: |n| n,
    },
    Workload {
        name: "tasks",
        smoke_n: 10_000,
        expected: sum_below,
    },
    Workload {
        name: "echo",
        smoke_n: 20,
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
        let (elapsed, check) = match run(workload.name, n) {
            Ok(outcome) => outcome,
            Err(error) => {
                eprintln!("workload {} failed: {error}", workload.name);
                return ExitCode::FAILURE;
            }
        };
        let expected = (workload.expected)(n);
        if check != expected {
            eprintln!(
                "workload {} n={n}: check={check} but {expected} was expected",
                workload.name
            );
            return ExitCode::FAILURE;
        }
        println!(
            "workload={} impl=tokio n={n} ms={:.3} check={check}",
            workload.name,
            elapsed.as_secs_f64() * 1e3,
        );
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
    eprintln!(
        "{problem}\nusage: workloads_tokio [<workload> <n>]   workloads: {}",
        names.join(", ")
    );
    ExitCode::FAILURE
}

type BoxError = Box<dyn std::error::Error>;

/// Runs one workload on a fresh current-thread runtime; the runtime is built before
/// the workload starts its clock and dropped after it stops.
fn run(name: &str, n: u64) -> Result<(Duration, u64), BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        Ok(match name {
            "chain" => timed(chain(n)).await,
            "all" => timed(all(n)).await,
            "fanout" => timed(fanout(n)).await,
            "doxbee" => timed(doxbee(n)).await,
            "parallel" => timed(parallel(n)).await,
            "timers" => timed(timers(n)).await,
            "tasks" => timed(tasks(n)).await,
            "echo" => echo(n).await?,
            _ => unreachable!("main checked the name"),
        })
    })
}

async fn timed(body: impl Future<Output = u64>) -> (Duration, u64) {
    let start = Instant::now();
    let check = body.await;
    (start.elapsed(), check)
}

/// Drives a set of futures to completion, outside tokio's cooperative budget (see
/// the module documentation for why the budget must not apply here).
async fn drive<F: Future<Output = ()>>(futures: FuturesUnordered<F>) {
    unconstrained(futures.for_each(|()| async {})).await;
}

/// n `then` links on one pending promise, each adding 1; resolve the root with 0.
/// A promise is a oneshot pair; a link is a future awaiting the previous stage's
/// receiver and sending to its own.
async fn chain(n: u64) -> u64 {
    let (root, mut tail) = oneshot::channel::<u64>();
    let links = FuturesUnordered::new();
    for _ in 0..n {
        let (resolve, next) = oneshot::channel();
        let previous = tail;
        links.push(async move {
            if let Ok(v) = previous.await {
                let _ = resolve.send(v + 1);
            }
        });
        tail = next;
    }
    let _ = root.send(0);
    let (value, ()) = unconstrained(futures::future::join(tail, drive(links))).await;
    value.unwrap_or(0)
}

/// One `join_all` over n pending oneshot receivers, resolved in order with their
/// index; the check sums the values it returns.
async fn all(n: u64) -> u64 {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| oneshot::channel()).unzip();
    let everything = unconstrained(futures::future::join_all(receivers));
    for (i, sender) in (0..n).zip(senders) {
        let _ = sender.send(i);
    }
    everything.await.into_iter().map(|v| v.unwrap_or(0)).sum()
}

/// n handlers on one pending promise, each adding its index to a shared counter.
/// A promise with many handlers is a `Shared` oneshot receiver, one clone per
/// handler (20% faster than a `watch` channel when both were awaited from tasks).
async fn fanout(n: u64) -> u64 {
    let (resolve, root) = oneshot::channel::<()>();
    let root = root.shared();
    let counter = Cell::new(0u64);
    let handlers: FuturesUnordered<_> = (0..n)
        .map(|i| {
            let root = root.clone();
            let counter = &counter;
            async move {
                if root.await.is_ok() {
                    counter.set(counter.get() + i);
                }
            }
        })
        .collect();
    drop(root);
    let _ = resolve.send(());
    drive(handlers).await;
    counter.get()
}

/// How many tasks are still running; the last one to finish wakes the waiter.
struct Countdown {
    left: Cell<u64>,
    done: Notify,
}

impl Countdown {
    fn new(n: u64) -> Rc<Self> {
        Rc::new(Countdown {
            left: Cell::new(n),
            done: Notify::new(),
        })
    }

    fn finish_one(&self) {
        self.left.set(self.left.get() - 1);
        if self.left.get() == 0 {
            self.done.notify_one();
        }
    }

    async fn wait(&self) {
        if self.left.get() > 0 {
            self.done.notified().await;
        }
    }
}

/// A fake I/O operation: a 1 ms timer. `Sleep` is itself the future that
/// completes when the timer fires, so no oneshot is needed around it.
fn fake_io() -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(1))
}

/// bluebird's doxbee-sequential shape: two operations in parallel, then five in
/// sequence, as n concurrent tasks; the check counts the uploads that completed.
async fn doxbee(n: u64) -> u64 {
    let done = Countdown::new(n);
    let completed = Rc::new(Cell::new(0u64));
    for _ in 0..n {
        let (done, completed) = (done.clone(), completed.clone());
        spawn_local(async move {
            tokio::join!(fake_io(), fake_io());
            for _ in 0..5 {
                fake_io().await;
            }
            completed.set(completed.get() + 1);
            done.finish_one();
        });
    }
    done.wait().await;
    completed.get()
}

/// Fake operations per request in `parallel`.
const PARALLEL_OPS: u64 = 25;

/// bluebird's madeup-parallel shape: n concurrent tasks, each running 25 operations
/// at once with `join_all`; the check counts the operations that completed.
async fn parallel(n: u64) -> u64 {
    let done = Countdown::new(n);
    let completed = Rc::new(Cell::new(0u64));
    for _ in 0..n {
        let (done, completed) = (done.clone(), completed.clone());
        spawn_local(async move {
            let ops = futures::future::join_all((0..PARALLEL_OPS).map(|_| fake_io())).await;
            completed.set(completed.get() + ops.len() as u64);
            done.finish_one();
        });
    }
    done.wait().await;
    completed.get()
}

/// n one-shot timers, 0 to 99 ms, each a task sleeping until its deadline, counted
/// as they fire. (Driving the `Sleep`s from one `FuturesUnordered` instead of a
/// task each is slower: 1,080 ms against 530 ms.)
async fn timers(n: u64) -> u64 {
    let scheduled = tokio::time::Instant::now();
    let mut queue = tokio_util::time::DelayQueue::with_capacity(n as usize);
    for i in 0..n {
        queue.insert_at(i, scheduled + Duration::from_millis((i * 7919) % 100));
    }
    let mut fired = 0;
    while queue.next().await.is_some() {
        fired += 1;
    }
    fired
}

/// n tasks, each awaiting its own pending oneshot and adding the value to a sum;
/// the promises are resolved, in order, once every task waits on its own.
async fn tasks(n: u64) -> u64 {
    let done = Countdown::new(n);
    let sum = Rc::new(Cell::new(0u64));
    let mut senders = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (sender, receiver) = oneshot::channel::<u64>();
        senders.push(sender);
        let (done, sum) = (done.clone(), sum.clone());
        spawn_local(async move {
            if let Ok(value) = receiver.await {
                sum.set(sum.get() + value);
            }
            done.finish_one();
        });
    }
    // A `LocalSet` runs its tasks in the order they were spawned, so this one runs
    // once every task above has polled its receiver and is waiting.
    spawn_local(async move {
        for (i, sender) in (0..n).zip(senders) {
            let _ = sender.send(i);
        }
    });
    done.wait().await;
    sum.get()
}

/// Client connections in `echo`.
const ECHO_CLIENTS: u64 = 50;
/// Bytes per message in `echo`.
const ECHO_MESSAGE: usize = 64;

/// A server and 50 clients on one runtime; each client sends n 64-byte messages one
/// at a time and waits for each echo. The check counts the bytes echoed back
/// intact. Connecting is timed; binding the listener is not.
async fn echo(n: u64) -> Result<(Duration, u64), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let server = spawn_local(serve(listener));
    let clients: Vec<_> = (0..ECHO_CLIENTS)
        .map(|id| spawn_local(client(addr, id, n)))
        .collect();
    let mut echoed = 0;
    for client in clients {
        echoed += client.await??;
    }
    let elapsed = start.elapsed();
    server.await??;
    Ok((elapsed, echoed))
}

/// Accepts the clients, each served by its own task until it hangs up.
async fn serve(listener: TcpListener) -> std::io::Result<()> {
    for _ in 0..ECHO_CLIENTS {
        let (conn, _) = listener.accept().await?;
        conn.set_nodelay(true)?;
        spawn_local(echo_back(conn));
    }
    Ok(())
}

/// Sends back whatever arrives, until the end of the stream.
async fn echo_back(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let len = conn.read(&mut buf).await?;
        if len == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..len]).await?;
    }
}

/// One client: n round trips of one message, each compared with what was sent.
async fn client(addr: SocketAddr, id: u64, n: u64) -> std::io::Result<u64> {
    let conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    // Writes go straight through; reads come back short once the socket is
    // drained (see the module comment).
    let mut conn = tokio::io::BufReader::new(conn);
    let mut message = [0u8; ECHO_MESSAGE];
    let mut reply = [0u8; ECHO_MESSAGE];
    let mut echoed = 0;
    for i in 0..n {
        message.fill((id * 31 + i) as u8);
        conn.write_all(&message).await?;
        conn.read_exact(&mut reply).await?;
        if reply == message {
            echoed += ECHO_MESSAGE as u64;
        }
    }
    Ok(echoed)
}
