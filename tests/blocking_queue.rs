//! `spawn_blocking` with the whole pool busy: queued jobs wait their turn, and a
//! job cancelled while it waits never runs.
//!
//! A test binary of its own, because it fills the process-wide pool: tests
//! sharing the pool could be starved by it (or starve it). No timing assertions:
//! every wait has a generous safety net.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::FullPool;
use thenable::{spawn_blocking, Promise};

const SAFETY_NET: Duration = Duration::from_secs(30);

#[test]
fn a_job_cancelled_while_queued_never_runs_and_the_rest_do() {
    let pool = FullPool::fill(SAFETY_NET);

    // Every thread is busy: these wait in the queue.
    let (ran, did_it_run) = mpsc::channel::<()>();
    let cancelled: Promise<()> = spawn_blocking(move || {
        ran.send(()).unwrap();
        Ok(())
    });
    let queued_after: Promise<&str> = spawn_blocking(|| Ok("ran after the pool freed up"));
    assert!(cancelled.cancel());

    pool.release();
    assert_eq!(
        thenable::block_on(queued_after).unwrap(),
        "ran after the pool freed up"
    );
    // The cancelled job's closure is dropped unrun: its sender goes, unused.
    match did_it_run.recv_timeout(SAFETY_NET) {
        Err(mpsc::RecvTimeoutError::Disconnected) => {}
        Ok(()) => panic!("the job cancelled while queued ran"),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the cancelled job was never dequeued"),
    }
    assert!(cancelled.is_cancelled());
}
