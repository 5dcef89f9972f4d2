//! What the socket tests share: a loop per test body with a safety net, the lock
//! that lets one test count open descriptors while no other test opens any, and
//! small conveniences for I/O errors and peers.

use std::future::Future;
use std::io::ErrorKind;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use futures::future::{select, Either};
use thenable::net::{TcpListener, TcpStream};
use thenable::{sleep, Error, EventLoop};

/// How long a socket test may take before it counts as hung. A safety net only.
pub const SAFETY_NET: Duration = Duration::from_secs(120);

/// Tests of one binary run in parallel threads of one process: a test that counts
/// `/proc/self/fd` takes this for writing (see [`assert_no_descriptor_leak`]), so
/// nothing else opens descriptors meanwhile; every other test holds it shared.
pub static DESCRIPTORS: RwLock<()> = RwLock::new(());

/// Holds [`DESCRIPTORS`] shared: descriptors may be opened until the guard drops.
pub fn sharing_descriptors() -> RwLockReadGuard<'static, ()> {
    DESCRIPTORS.read().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `body` on a new loop, sharing [`DESCRIPTORS`]; panics if it fails or is
/// still running after [`SAFETY_NET`].
pub fn run<T>(body: impl Future<Output = Result<T, Error>>) -> T {
    let _shared = sharing_descriptors();
    run_exclusive(body)
}

/// [`run`] for a caller that already holds [`DESCRIPTORS`] (shared or alone).
pub fn run_exclusive<T>(body: impl Future<Output = Result<T, Error>>) -> T {
    let event_loop = EventLoop::new();
    let outcome = event_loop.block_on(async {
        let net = sleep(SAFETY_NET);
        match select(std::pin::pin!(body), net).await {
            Either::Left((outcome, net)) => {
                net.cancel(); // or the timer would keep the loop alive
                outcome
            }
            Either::Right(_) => panic!("safety net: still running after {SAFETY_NET:?}"),
        }
    });
    outcome.unwrap_or_else(|e| panic!("test failed: {e:?}"))
}

/// Counts open descriptors before and after `test`, which runs alone; waits
/// (bounded) for helper threads such as `TcpStream::connect`'s to finish closing.
/// A leak is more descriptors after than before; fewer is fine (a helper thread of
/// an earlier test may close one meanwhile, which an exact comparison would take
/// for a failure that never ends).
pub fn assert_no_descriptor_leak(test: impl FnOnce()) {
    let _alone = DESCRIPTORS.write().unwrap_or_else(PoisonError::into_inner);
    let before = open_descriptors();
    test();
    let give_up = Instant::now() + SAFETY_NET;
    while open_descriptors() > before && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = open_descriptors();
    assert!(
        after <= before,
        "descriptors left open: {before} before, {after} after"
    );
}

/// The number of descriptors this process has open.
pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("this test counts descriptors in /proc/self/fd")
        .count()
}

/// The `io::ErrorKind` of a rejection that must be an I/O error.
pub fn kind_of(error: &Error) -> ErrorKind {
    error
        .downcast_ref::<std::io::Error>()
        .unwrap_or_else(|| panic!("not an I/O error: {error:?}"))
        .kind()
}

/// A thenable stream and a plain blocking std stream at the other end.
pub async fn pair_with_std_peer() -> Result<(TcpStream, std::net::TcpStream), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let peer = std::net::TcpStream::connect(listener.local_addr()?)?;
    // A safety net for the blocking peer: a bug fails the test instead of hanging.
    peer.set_read_timeout(Some(SAFETY_NET))?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, peer))
}
