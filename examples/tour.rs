//! A tour of thenable: one small client flow written three ways.
//!
//! The flow is the one from seed 000 ("From callbacks to promises, from promises to
//! async/await"): connect, send a request, receive the response, and close the
//! connection however things went. It runs against a fake, timer-based connection,
//! first with nested callbacks, then as a promise chain (`then`/`catch`/`finally`),
//! then as an `async fn` spawned as a task. One host answers, the other breaks the
//! pipe, so the error paths run too. All three run at once on one event loop thread,
//! and at the end their logs are printed side by side and checked to be identical.
//!
//! Run it with `cargo run --example tour`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use thenable::{set_timeout, spawn, Error, EventLoop, Promise};

const REQUEST: &str = "GET /";

/// The steps one version took. `Arc<Mutex>` rather than `Rc<RefCell>` because promise
/// handlers must be `Send`.
#[derive(Clone)]
struct Log {
    who: &'static str,
    steps: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn new(who: &'static str) -> Log {
        Log {
            who,
            steps: Arc::default(),
        }
    }

    fn step(&self, step: impl Into<String>) {
        let step = step.into();
        println!("{:>11} | {step}", self.who);
        self.steps.lock().unwrap().push(step);
    }

    fn steps(&self) -> Vec<String> {
        self.steps.lock().unwrap().clone()
    }
}

/// A pretend socket. Its primitives take callbacks and finish on a timer, like the
/// seed's non-blocking socket; a host called "flaky..." breaks the pipe on send.
#[derive(Clone)]
struct Conn {
    host: &'static str,
    log: Log,
}

impl Conn {
    fn connect_cb(host: &'static str, log: Log, done: impl FnOnce(Result<Conn, Error>) + 'static) {
        log.step(format!("connect to {host}"));
        set_timeout(ms(3), move || done(Ok(Conn { host, log })));
    }

    fn send_cb(&self, request: &str, done: impl FnOnce(Result<(), Error>) + 'static) {
        self.log.step(format!("send {request:?}"));
        let outcome = if self.host.starts_with("flaky") {
            Err(Error::msg("broken pipe"))
        } else {
            Ok(())
        };
        set_timeout(ms(2), move || done(outcome));
    }

    fn recv_cb(&self, done: impl FnOnce(Result<String, Error>) + 'static) {
        self.log.step("receive");
        set_timeout(ms(4), move || done(Ok("HTTP/1.1 200 OK".to_string())));
    }

    fn close(&self) {
        self.log.step("close");
    }

    // The promise-returning versions are the callback ones with a resolver as the
    // callback: the seed's `p = Promise(); self._do_connect(addr, p._resolve)`.

    fn connect(host: &'static str, log: Log) -> Promise<Conn> {
        Promise::new(|resolver| {
            Conn::connect_cb(host, log, move |r| {
                resolver.settle(r);
            })
        })
    }

    fn send(&self, request: &str) -> Promise<()> {
        Promise::new(|resolver| {
            self.send_cb(request, move |r| {
                resolver.settle(r);
            })
        })
    }

    fn recv(&self) -> Promise<String> {
        Promise::new(|resolver| {
            self.recv_cb(move |r| {
                resolver.settle(r);
            })
        })
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// (a) Callbacks: read it bottom-up, handle every error by hand, and close the
/// connection in two places that must be kept in sync.
fn with_callbacks(host: &'static str, log: Log) {
    Conn::connect_cb(host, log.clone(), move |conn| {
        let conn = match conn {
            Ok(conn) => conn,
            Err(error) => return log.step(format!("failed: {error}")),
        };
        conn.clone().send_cb(REQUEST, move |sent| {
            if let Err(error) = sent {
                conn.close();
                return conn.log.step(format!("failed: {error}"));
            }
            conn.clone().recv_cb(move |response| {
                conn.close();
                conn.log.step(match response {
                    Ok(response) => format!("got {response:?}"),
                    Err(error) => format!("failed: {error}"),
                });
            });
        });
    });
}

/// (b) A promise chain: flat, one `catch` for every error, one `finally` for the close.
fn with_promises(host: &'static str, log: Log) -> Promise<()> {
    Conn::connect(host, log.clone())
        .then(|conn| {
            let closer = conn.clone();
            conn.send(REQUEST)
                .then(move |()| conn.recv())
                .finally(move || closer.close())
        })
        .map(|response| format!("got {response:?}"))
        .catch(|error| Ok(format!("failed: {error}")))
        .map(move |line| log.step(line))
}

/// (c) async/await: reads like blocking code; `?` does the error plumbing and a drop
/// guard plays `finally`.
async fn with_async(host: &'static str, log: Log) -> Result<(), Error> {
    let outcome = async {
        let conn = Conn::connect(host, log.clone()).await?;
        let _close = CloseOnDrop(conn.clone());
        conn.send(REQUEST).await?;
        conn.recv().await
    }
    .await;
    log.step(match outcome {
        Ok(response) => format!("got {response:?}"),
        Err(error) => format!("failed: {error}"),
    });
    Ok(())
}

struct CloseOnDrop(Conn);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Side by side, a step where the versions differ stands out at once.
fn print_columns(titles: [&str; 3], columns: &[Vec<String>; 3]) {
    let [a, b, c] = titles;
    println!("\n  {a:<30}{b:<30}{c}");
    let rows = columns.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..rows {
        let [a, b, c] = columns
            .each_ref()
            .map(|col| col.get(i).map_or("", String::as_str));
        println!("  {a:<30}{b:<30}{c}");
    }
}

fn main() {
    let event_loop = EventLoop::new();
    for host in ["example.com", "flaky.example"] {
        println!("== {host}: all three versions at once, on one thread ==");
        let logs = [
            Log::new("callbacks"),
            Log::new("promises"),
            Log::new("async"),
        ];
        with_callbacks(host, logs[0].clone());
        let chain = with_promises(host, logs[1].clone());
        let task = spawn(with_async(host, logs[2].clone()));
        // `run` returns once no timer is left, so all three have finished by then.
        event_loop.run().unwrap();
        assert!(chain.is_fulfilled() && task.is_fulfilled());

        let steps = logs.each_ref().map(Log::steps);
        print_columns(logs.each_ref().map(|log| log.who), &steps);
        assert_eq!(steps[0], steps[1], "callbacks and promises differ");
        assert_eq!(steps[1], steps[2], "promises and async differ");
        println!("\n  same {} steps, three ways\n", steps[0].len());
    }
}
